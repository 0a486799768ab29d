//! [`Cli`]: runs of a command-line binary under test, with the checks every CLI test makes.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A binary under test. [`ext4kit_cli!`](crate::ext4kit_cli) gives the ext4kit one.
#[derive(Debug, Clone)]
pub struct Cli {
    bin: OsString,
    error_prefix: String,
}

/// The `ext4kit` binary as a [`Cli`]: `$EXT4KIT_BIN` when set, else the one cargo built for
/// this test crate (`CARGO_BIN_EXE_ext4kit`, so only in the ext4kit crate's tests and benches).
#[macro_export]
macro_rules! ext4kit_cli {
    () => {
        $crate::Cli::new(
            ::std::env::var_os("EXT4KIT_BIN")
                .unwrap_or_else(|| ::std::ffi::OsString::from(env!("CARGO_BIN_EXE_ext4kit"))),
        )
        .error_prefix("ext4kit: ")
    };
}

impl Cli {
    /// The binary at `bin`; its error lines are not checked for a prefix.
    pub fn new(bin: impl Into<OsString>) -> Cli {
        Cli {
            bin: bin.into(),
            error_prefix: String::new(),
        }
    }

    /// What [`fails`](Cli::fails) requires the one error line to start with.
    pub fn error_prefix(mut self, prefix: &str) -> Cli {
        self.error_prefix = prefix.into();
        self
    }

    /// The binary's path.
    pub fn bin(&self) -> &OsStr {
        &self.bin
    }

    /// A [`Command`] for the binary, to add arguments, a directory, pipes to.
    pub fn command(&self) -> Command {
        Command::new(&self.bin)
    }

    /// Runs the binary with `args` (stdin empty), collecting its output.
    pub fn output<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.output_in(None, args, None)
    }

    /// Runs the binary with `args` in `cwd` (if given), feeding it `stdin` (if given; a broken
    /// pipe is fine: the command may stop reading).
    pub fn output_in<S: AsRef<OsStr>>(
        &self,
        cwd: Option<&Path>,
        args: &[S],
        stdin: Option<&[u8]>,
    ) -> Output {
        let mut c = self.command();
        c.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(d) = cwd {
            c.current_dir(d);
        }
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", self.bin));
        if let Some(data) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            let _ = pipe.write_all(data);
        }
        child.wait_with_output().unwrap()
    }

    /// Runs the binary: (exit code, stdout, stderr), the code -1 when a signal ended it.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> (i32, String, String) {
        let out = self.output(args);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs the binary, which must exit 0 (else a panic with its stderr); returns stdout.
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "{:?} {:?} failed: {err}", self.bin, show(args));
        out
    }

    /// Runs the binary, which must exit non-zero with exactly one line on stderr, starting with
    /// the [error prefix](Cli::error_prefix); returns that line (with its newline).
    pub fn fails<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let (code, _, err) = self.run(args);
        check_failure(&self.error_prefix, code, &err, args);
        err
    }

    /// [`fails`](Cli::fails) for an [`Output`] run some other way (in a directory, with stdin).
    pub fn failure_line<S: AsRef<OsStr>>(&self, out: &Output, args: &[S]) -> String {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        check_failure(
            &self.error_prefix,
            out.status.code().unwrap_or(-1),
            &err,
            args,
        );
        err
    }
}

fn show<S: AsRef<OsStr>>(args: &[S]) -> Vec<&OsStr> {
    args.iter().map(AsRef::as_ref).collect()
}

fn check_failure<S: AsRef<OsStr>>(prefix: &str, code: i32, err: &str, args: &[S]) {
    let args = show(args);
    assert_ne!(code, 0, "{args:?} should fail");
    assert_eq!(
        err.lines().count(),
        1,
        "{args:?}: one-line error expected, got {err:?}"
    );
    assert!(
        err.starts_with(prefix),
        "{args:?}: the error should start with {prefix:?}: {err:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::Cli;

    #[test]
    fn ok_returns_stdout_and_fails_returns_the_one_error_line() {
        let sh = Cli::new("sh").error_prefix("sh-test: ");
        assert_eq!(sh.ok(&["-c", "echo out; echo err >&2"]), "out\n");
        assert_eq!(
            sh.fails(&["-c", "echo 'sh-test: bad' >&2; exit 3"]),
            "sh-test: bad\n"
        );
    }

    #[test]
    #[should_panic(expected = "one-line error expected")]
    fn fails_rejects_two_error_lines() {
        Cli::new("sh").fails(&["-c", "echo a >&2; echo b >&2; exit 1"]);
    }

    #[test]
    #[should_panic(expected = "should fail")]
    fn fails_rejects_success() {
        Cli::new("sh").fails(&["-c", "echo a >&2"]);
    }

    #[test]
    #[should_panic(expected = "should start with")]
    fn fails_rejects_a_line_without_the_prefix() {
        Cli::new("sh")
            .error_prefix("x: ")
            .fails(&["-c", "echo a >&2; exit 1"]);
    }
}
