//! A one-line progress meter on stderr for long copies: files and bytes done and the rate,
//! redrawn at most ten times a second, only when stderr is a terminal. (`EXT4KIT_PROGRESS_MS`
//! changes the interval; the tests set 0 to see every redraw.)

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Meter {
    label: &'static str,
    interval: Duration,
    on: bool,
    started: Instant,
    last: Instant,
    files: u64,
    bytes: u64,
    drawn: bool,
}

impl Meter {
    /// A meter for `label` ("copying"); silent unless stderr is a terminal and `quiet` is false.
    pub fn new(label: &'static str, quiet: bool) -> Meter {
        let now = Instant::now();
        let ms = std::env::var("EXT4KIT_PROGRESS_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100);
        Meter {
            label,
            interval: Duration::from_millis(ms),
            on: !quiet && std::io::stderr().is_terminal(),
            started: now,
            last: now,
            files: 0,
            bytes: 0,
            drawn: false,
        }
    }

    pub fn file(&mut self) {
        self.files += 1;
        self.tick();
    }

    pub fn bytes(&mut self, n: u64) {
        self.bytes += n;
        self.tick();
    }

    fn tick(&mut self) {
        if !self.on || self.last.elapsed() < self.interval {
            return;
        }
        self.last = Instant::now();
        self.draw(self.label);
    }

    fn draw(&mut self, what: &str) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let mib = self.bytes as f64 / f64::from(1u32 << 20);
        let _ = write!(
            std::io::stderr(),
            "\r\x1b[K{what}: {} files, {mib:.1} MiB, {:.0} MiB/s",
            self.files,
            mib / secs
        );
        self.drawn = true;
    }

    /// Says what comes next (the final sync) on the same line.
    pub fn phase(&mut self, what: &'static str) {
        if self.on && self.drawn {
            self.draw(what);
        }
    }

    /// Clears the line.
    pub fn finish(&mut self) {
        if self.on && self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            self.drawn = false;
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.finish();
    }
}
