//! `NbdDevice` against real servers: `nbdkit` (memory and file plugins, the error, delay,
//! blocksize-policy, fua, nozero and log filters) and `qemu-nbd` on a raw file, over Unix
//! sockets and TCP.
//!
//! Random writes and reads at random offsets, many bios in flight, checked against a model;
//! images byte-compared after the server exits; read-only exports; injected errors; delays
//! (requests must overlap); a server killed mid-run.
//!
//! The servers come from Debian's `nbdkit` and `qemu-utils`. Without them the tests print a
//! note and pass, unless `EXT4KIT_REQUIRE_KERNEL=1` (CI), where they fail.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use ext4kit_blockdev::{
    Bio, BioBuf, BioOp, BioVec, BlockDevice, BlockDeviceExt, IoError, NbdDevice, NbdErrorKind,
    NbdHandshake, NbdOptions, NbdTarget,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn required() -> bool {
    std::env::var("EXT4KIT_REQUIRE_KERNEL").is_ok_and(|v| v == "1")
}

/// Whether `prog` runs; a missing one fails under `EXT4KIT_REQUIRE_KERNEL=1`, else skips.
fn have(test: &str, prog: &str) -> bool {
    let ok = Command::new(prog)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if required() {
            panic!(
                "{test}: EXT4KIT_REQUIRE_KERNEL=1 but {prog} is missing (apt-get install nbdkit qemu-utils)"
            );
        }
        eprintln!("{test}: {prog} not installed, test skipped");
    }
    ok
}

/// A server process, killed when dropped (even when the test panics).
struct Server {
    child: Option<Child>,
    dir: tempfile::TempDir,
    sock: PathBuf,
    port: Option<u16>,
}

impl Server {
    fn spawn(
        mut cmd: Command,
        dir: tempfile::TempDir,
        sock: PathBuf,
        ready: PathBuf,
        port: Option<u16>,
    ) -> Server {
        let err = File::create(dir.path().join("stderr")).unwrap();
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
        let child = cmd.spawn().unwrap();
        let mut s = Server {
            child: Some(child),
            dir,
            sock,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{cmd:?} exited ({st}) before it was ready: {}", s.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "{cmd:?} not ready after 30 s: {}",
                s.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
        s
    }

    /// `nbdkit -U SOCKET ARGS...` (ARGS: filters, plugin, parameters), ready when its pid
    /// file appears (nbdkit writes it once it listens; the socket exists a moment earlier).
    fn nbdkit(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("nbd.sock");
        let pidfile = dir.path().join("pid");
        let mut cmd = Command::new("nbdkit");
        cmd.args(["-f", "--exit-with-parent", "-U"])
            .arg(&sock)
            .arg("-P")
            .arg(&pidfile)
            .args(args);
        Server::spawn(cmd, dir, sock, pidfile, None)
    }

    /// `nbdkit -p PORT -i 127.0.0.1 ARGS...`, ready when its pid file appears.
    fn nbdkit_tcp(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new("nbdkit");
        cmd.args(["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .arg("-P")
            .arg(&pidfile)
            .args(args);
        Server::spawn(cmd, dir, PathBuf::new(), pidfile, Some(port))
    }

    /// `qemu-nbd -k SOCKET -f raw FILE EXTRA...`.
    fn qemu_nbd(file: &Path, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("nbd.sock");
        let mut cmd = Command::new("qemu-nbd");
        cmd.arg("-k")
            .arg(&sock)
            .args(["-f", "raw"])
            .args(extra)
            .arg(file);
        Server::spawn(cmd, dir, sock.clone(), sock, None)
    }

    fn target(&self, export: &str) -> NbdTarget {
        match self.port {
            Some(p) => NbdTarget::tcp("127.0.0.1", p, export),
            None => NbdTarget::unix(&self.sock, export),
        }
    }

    /// Connects; the socket may exist a moment before the server accepts.
    fn connect_export(&self, export: &str, opts: &NbdOptions) -> NbdDevice {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match NbdDevice::connect(&self.target(export), opts) {
                Ok(d) => return d,
                Err(e)
                    if matches!(e.kind, NbdErrorKind::Connect(_)) && Instant::now() < deadline =>
                {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("{e}: {}", self.stderr()),
            }
        }
    }

    fn connect(&self, opts: &NbdOptions) -> NbdDevice {
        self.connect_export("", opts)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    fn signal(&self, sig: rustix::process::Signal) {
        if let Some(c) = &self.child {
            let _ = rustix::process::kill_process(rustix::process::Pid::from_child(c), sig);
        }
    }

    /// Waits (bounded) for the server to exit by itself; false if it did not.
    fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let Some(c) = self.child.as_mut() else {
            return true;
        };
        loop {
            if c.try_wait().unwrap().is_some() {
                self.child = None;
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then SIGKILL if it lingers; waits for the exit.
    fn stop(&mut self) {
        self.signal(rustix::process::Signal::TERM);
        if !self.wait_exit(Duration::from_secs(10)) {
            self.kill();
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

type Done = mpsc::Receiver<(usize, Bio, Result<(), IoError>)>;

fn submit_all(dev: &NbdDevice, bios: Vec<Bio>) -> Done {
    let (tx, rx) = mpsc::channel();
    for (i, bio) in bios.into_iter().enumerate() {
        let tx = tx.clone();
        dev.submit(bio.with_end_io(move |b, r| {
            let _ = tx.send((i, b, r));
        }));
    }
    rx
}

fn wait_all(rx: &Done, n: usize, limit: Duration) -> Vec<(usize, Bio, Result<(), IoError>)> {
    let deadline = Instant::now() + limit;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(x) => v.push(x),
            Err(_) => panic!(
                "{} of {n} bios still not complete after {limit:?}",
                n - v.len()
            ),
        }
    }
    v
}

fn bytes_of(b: &Bio) -> Vec<u8> {
    b.vecs().iter().flat_map(|v| v.bytes().to_vec()).collect()
}

fn read_bio(block: u64, len: usize) -> Bio {
    let mut b = Bio::new(BioOp::Read, block);
    b.push(BioVec::zeroed(len));
    b
}

/// Splits `len` bytes into 1–3 segments at random byte positions.
fn cuts(rng: &mut StdRng, len: usize) -> Vec<usize> {
    let mut c: Vec<usize> = (0..rng.random_range(0..3))
        .map(|_| rng.random_range(0..=len))
        .collect();
    c.push(0);
    c.push(len);
    c.sort_unstable();
    c.dedup();
    c
}

/// Rounds of random reads and writes (and flushes) at random, disjoint extents, all of a round
/// in flight at once, checked against `model`; then the whole device is read back.
fn exercise(
    dev: &NbdDevice,
    model: &mut [u8],
    rounds: usize,
    per_round: usize,
    max_blocks: u64,
    seed: u64,
) {
    exercise_with(dev, model, rounds, per_round, max_blocks, seed, true);
}

/// [`exercise`], with or without flushes.
fn exercise_with(
    dev: &NbdDevice,
    model: &mut [u8],
    rounds: usize,
    per_round: usize,
    max_blocks: u64,
    seed: u64,
    flushes: bool,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let bs = dev.geometry().block_size as usize;
    let nr = dev.geometry().nr_blocks;
    assert_eq!(model.len(), nr as usize * bs);
    for round in 0..rounds {
        let mut taken: Vec<(u64, u64)> = Vec::new();
        let mut bios = Vec::new();
        let mut plan = Vec::new(); // (is_write, start, data)
        for _ in 0..per_round {
            if flushes && rng.random_bool(0.05) {
                bios.push(Bio::flush());
                plan.push(None);
                continue;
            }
            let n = if rng.random_bool(0.1) {
                rng.random_range(1..=max_blocks)
            } else {
                rng.random_range(1..=16u64.min(max_blocks))
            };
            let Some(start) = (0..10)
                .map(|_| rng.random_range(0..=nr - n))
                .find(|&s| taken.iter().all(|&(a, b)| s + n <= a || s >= b))
            else {
                continue;
            };
            taken.push((start, start + n));
            let len = n as usize * bs;
            let c = cuts(&mut rng, len);
            if rng.random_bool(0.5) {
                let mut data = vec![0u8; len];
                rng.fill(&mut data[..]);
                let mut bio = Bio::new(BioOp::Write, start);
                for w in c.windows(2) {
                    if rng.random_bool(0.5) {
                        bio.push(BioVec::from_vec(data[w[0]..w[1]].to_vec()));
                    } else {
                        // Shared memory, with bytes around the segment.
                        let mut buf = vec![0xa5u8; w[1] - w[0] + 100];
                        buf[50..50 + w[1] - w[0]].copy_from_slice(&data[w[0]..w[1]]);
                        let buf: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(buf);
                        bio.push(BioVec::new(BioBuf::Shared(buf), 50, w[1] - w[0]));
                    }
                }
                bios.push(bio);
                plan.push(Some((true, start, data)));
            } else {
                let mut bio = Bio::new(BioOp::Read, start);
                for w in c.windows(2) {
                    if rng.random_bool(0.5) {
                        bio.push(BioVec::zeroed(w[1] - w[0]));
                    } else {
                        bio.push(BioVec::new(
                            BioBuf::Lent(Box::new(vec![0x5au8; w[1] - w[0]])),
                            0,
                            w[1] - w[0],
                        ));
                    }
                }
                bios.push(bio);
                plan.push(Some((false, start, Vec::new())));
            }
        }
        let n = bios.len();
        let rx = submit_all(dev, bios);
        let mut done = wait_all(&rx, n, Duration::from_secs(120));
        done.sort_by_key(|d| d.0);
        for ((i, bio, r), p) in done.into_iter().zip(&plan) {
            r.unwrap_or_else(|e| panic!("round {round} bio {i}: {e} ({:?})", dev.failure()));
            if let Some((false, start, _)) = p {
                let at = *start as usize * bs;
                let got = bytes_of(&bio);
                assert!(
                    got == model[at..at + got.len()],
                    "round {round}: read at block {start} differs"
                );
            }
        }
        for (w, start, data) in plan.into_iter().flatten() {
            if w {
                let at = start as usize * bs;
                model[at..at + data.len()].copy_from_slice(&data);
            }
        }
    }
    if flushes {
        dev.flush().unwrap();
    }
    let chunk = 1 << 20;
    let bios: Vec<Bio> = (0..model.len().div_ceil(chunk))
        .map(|i| read_bio((i * chunk / bs) as u64, chunk.min(model.len() - i * chunk)))
        .collect();
    let n = bios.len();
    let rx = submit_all(dev, bios);
    for (i, bio, r) in wait_all(&rx, n, Duration::from_secs(120)) {
        r.unwrap();
        assert!(
            bytes_of(&bio) == model[i * chunk..i * chunk + bio.len_bytes()],
            "final read of MiB {i} differs"
        );
    }
}

fn random_file(len: usize, seed: u64) -> (tempfile::NamedTempFile, Vec<u8>) {
    let mut data = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill(&mut data[..]);
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &data).unwrap();
    (f, data)
}

#[test]
fn nbdkit_memory_random_io_matches_a_model() {
    if !have("nbdkit_memory_random_io_matches_a_model", "nbdkit") {
        return;
    }
    let srv = Server::nbdkit(&["memory", "64M"]);
    let dev = srv.connect(&NbdOptions::default());
    let info = dev.info().clone();
    assert_eq!(info.size, 64 << 20);
    assert_eq!(info.handshake, NbdHandshake::FixedNewstyleGo);
    assert!(info.structured_replies);
    assert!(info.can_flush() && info.can_trim() && info.can_write_zeroes());
    assert!(!dev.is_read_only());
    assert_eq!(dev.geometry().nr_blocks, (64 << 20) / 512);
    assert_eq!(dev.kind(), "nbd");
    let mut model = vec![0u8; 64 << 20];
    exercise(&dev, &mut model, 30, 128, 2048, 1);
    assert!(!dev.is_broken());
}

#[test]
fn nbdkit_over_tcp_with_several_connections() {
    if !have("nbdkit_over_tcp_with_several_connections", "nbdkit") {
        return;
    }
    let srv = Server::nbdkit_tcp(&["memory", "16M"]);
    let uri = format!("nbd://127.0.0.1:{}/", srv.port.unwrap());
    // nbdkit memory allows several connections (CAN_MULTI_CONN).
    let opts = NbdOptions {
        connections: 4,
        block_size: 4096,
        ..NbdOptions::default()
    };
    let dev = NbdDevice::open(&uri, &opts).unwrap();
    assert!(dev.info().can_multi_conn());
    assert_eq!(dev.info().connections, 4);
    let mut model = vec![0u8; 16 << 20];
    exercise(&dev, &mut model, 20, 96, 256, 2);
}

#[test]
fn nbdkit_file_image_matches_after_the_server_exits() {
    if !have("nbdkit_file_image_matches_after_the_server_exits", "nbdkit") {
        return;
    }
    let (img, mut model) = random_file(24 << 20, 3);
    let mut srv = Server::nbdkit(&["file", img.path().to_str().unwrap()]);
    let dev = srv.connect(&NbdOptions::default());
    exercise(&dev, &mut model, 20, 128, 4096, 4);
    drop(dev);
    srv.stop();
    assert!(
        std::fs::read(img.path()).unwrap() == model,
        "the image differs from the model"
    );
}

#[test]
fn qemu_nbd_raw_image_matches_after_the_server_exits() {
    if !have(
        "qemu_nbd_raw_image_matches_after_the_server_exits",
        "qemu-nbd",
    ) {
        return;
    }
    let (img, mut model) = random_file(24 << 20, 5);
    // An unknown export is refused with a message; -t keeps the server for the next client.
    let mut srv = Server::qemu_nbd(img.path(), &["-x", "disk", "-t"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let e = loop {
        match NbdDevice::connect(&srv.target("nope"), &NbdOptions::default()) {
            Err(e) if matches!(e.kind, NbdErrorKind::Connect(_)) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10))
            }
            Err(e) => break e,
            Ok(_) => panic!("export 'nope' accepted"),
        }
    };
    assert!(matches!(e.kind, NbdErrorKind::Refused { .. }), "{e}");
    let dev = srv.connect_export("disk", &NbdOptions::default());
    assert!(dev.info().structured_replies);
    exercise(&dev, &mut model, 20, 128, 4096, 6);
    drop(dev);
    srv.stop();
    assert!(
        std::fs::read(img.path()).unwrap() == model,
        "the image differs from the model"
    );

    // Without -t qemu-nbd serves one client and exits when it disconnects.
    let mut srv = Server::qemu_nbd(img.path(), &[]);
    let dev = srv.connect(&NbdOptions::default());
    exercise(&dev, &mut model, 5, 64, 64, 7);
    drop(dev);
    assert!(
        srv.wait_exit(Duration::from_secs(20)),
        "qemu-nbd did not exit after the disconnect"
    );
    assert!(
        std::fs::read(img.path()).unwrap() == model,
        "the image differs from the model"
    );
}

#[test]
fn handshake_variants_and_simple_replies() {
    if !have("handshake_variants_and_simple_replies", "nbdkit") {
        return;
    }
    // (server flags, handshake, structured replies asked, structured replies got)
    let cases: [(&[&str], NbdHandshake, bool, bool); 5] = [
        (&["--no-sr"], NbdHandshake::FixedNewstyleGo, true, false),
        (
            &["--mask-handshake=0"],
            NbdHandshake::NewstyleExportName,
            true,
            false,
        ),
        (&["-o"], NbdHandshake::Oldstyle, true, false),
        (&[], NbdHandshake::FixedNewstyleGo, false, false),
        (&[], NbdHandshake::FixedNewstyleGo, true, true),
    ];
    for (i, (flags, hs, sr, got_sr)) in cases.into_iter().enumerate() {
        let mut args = flags.to_vec();
        args.extend(["memory", "4M"]);
        let srv = Server::nbdkit(&args);
        let opts = NbdOptions {
            structured_replies: sr,
            ..NbdOptions::default()
        };
        let dev = srv.connect(&opts);
        assert_eq!(dev.info().handshake, hs, "{args:?}");
        assert_eq!(dev.info().structured_replies, got_sr, "{args:?}");
        let mut model = vec![0u8; 4 << 20];
        // nbdkit 1.32 advertises FLUSH on an oldstyle export but refuses it (EINVAL).
        let flushes = hs != NbdHandshake::Oldstyle;
        exercise_with(&dev, &mut model, 5, 64, 64, 10 + i as u64, flushes);
    }
}

#[test]
fn the_servers_block_size_limits_are_obeyed() {
    if !have("the_servers_block_size_limits_are_obeyed", "nbdkit") {
        return;
    }
    let srv = Server::nbdkit(&[
        "--filter=blocksize-policy",
        "memory",
        "8M",
        "blocksize-minimum=4096",
        "blocksize-preferred=16384",
        "blocksize-maximum=65536",
        "blocksize-error-policy=error",
    ]);
    let e = NbdDevice::connect(&srv.target(""), &NbdOptions::default()).unwrap_err();
    assert!(matches!(e.kind, NbdErrorKind::InvalidOptions(_)), "{e}");
    let dev = srv.connect(&NbdOptions {
        block_size: 4096,
        ..NbdOptions::default()
    });
    let i = dev.info();
    assert!(i.block_sizes_advertised);
    assert_eq!(
        (i.min_block, i.preferred_block, i.max_payload, i.max_request),
        (4096, 16384, 65536, 65536)
    );
    // Bios of up to 1 MiB: split into 64 KiB requests, which the server accepts.
    let mut model = vec![0u8; 8 << 20];
    exercise(&dev, &mut model, 10, 64, 256, 20);
}

#[test]
fn read_only_exports_refuse_writes_with_erofs() {
    if !have("read_only_exports_refuse_writes_with_erofs", "nbdkit") {
        return;
    }
    let srv = Server::nbdkit(&["-r", "pattern", "1M"]);
    let dev = srv.connect(&NbdOptions::default());
    assert!(dev.info().read_only());
    assert!(dev.is_read_only());
    let as_dyn: &dyn BlockDevice = &dev;
    assert!(as_dyn.is_read_only());
    let e = dev.write_blocks(0, &[0u8; 512]).unwrap_err();
    assert_eq!(e.errno(), libc::EROFS);
    assert_eq!(dev.write_zeroes(0, 1).unwrap_err().errno(), libc::EROFS);
    // Reads work: the pattern plugin stores each 8-byte offset big-endian.
    let mut buf = vec![0u8; 4096];
    dev.read_blocks(8, &mut buf).unwrap();
    assert_eq!(u64::from_be_bytes(buf[8..16].try_into().unwrap()), 4096 + 8);
    dev.flush().unwrap();
    assert!(!dev.is_broken());
}

#[test]
fn injected_errors_fail_some_bios_with_their_errno() {
    if !have("injected_errors_fail_some_bios_with_their_errno", "nbdkit") {
        return;
    }
    // EIO on about a fifth of the requests: those bios fail, the others succeed.
    let srv = Server::nbdkit(&[
        "--filter=error",
        "memory",
        "16M",
        "error=EIO",
        "error-rate=20%",
    ]);
    let dev = srv.connect(&NbdOptions::default());
    let mut bios = Vec::new();
    for i in 0..400u64 {
        if i % 2 == 0 {
            let mut b = Bio::new(BioOp::Write, i * 8);
            b.push(BioVec::from_vec(vec![i as u8; 4096]));
            bios.push(b);
        } else {
            bios.push(read_bio(i * 8, 4096));
        }
    }
    let rx = submit_all(&dev, bios);
    let done = wait_all(&rx, 400, Duration::from_secs(60));
    let failed = done.iter().filter(|d| d.2.is_err()).count();
    for d in &done {
        if let Err(e) = &d.2 {
            assert_eq!(e.errno(), libc::EIO, "{e}");
        }
    }
    eprintln!("error-rate=20%: {failed} of 400 bios failed");
    assert!(failed > 20 && failed < 200, "{failed} of 400 failed");
    assert!(
        !dev.is_broken(),
        "error replies must not break the connection"
    );
    assert!(dev.last_error_message().is_some());
    drop(dev);
    drop(srv);

    // Every write fails with ENOSPC, EPERM, EINVAL; reads still work.
    for (name, errno) in [
        ("ENOSPC", libc::ENOSPC),
        ("EPERM", libc::EPERM),
        ("EINVAL", libc::EINVAL),
    ] {
        let err = format!("error-pwrite={name}");
        let srv = Server::nbdkit(&[
            "--filter=error",
            "memory",
            "1M",
            &err,
            "error-pwrite-rate=100%",
        ]);
        let dev = srv.connect(&NbdOptions::default());
        let e = dev.write_blocks(4, &[1u8; 1024]).unwrap_err();
        assert_eq!(e.errno(), errno, "{name}: {e}");
        assert!(
            matches!(
                e,
                IoError::Os {
                    op: BioOp::Write,
                    block: 4,
                    ..
                }
            ),
            "{e:?}"
        );
        let msg = dev.last_error_message().unwrap();
        assert!(msg.contains("write of 1024 bytes at offset 2048"), "{msg}");
        let mut buf = vec![1u8; 512];
        dev.read_blocks(0, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }
}

/// Writes then reads `total` bytes in `bio` byte bios, all submitted at once (the device keeps
/// `max_in_flight` in flight); MiB/s of each.
fn throughput(dev: &NbdDevice, total: usize, bio: usize) -> (f64, f64) {
    let bs = dev.geometry().block_size as usize;
    let n = total / bio;
    let data: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(vec![0x77u8; bio]);
    let t = Instant::now();
    let bios = (0..n)
        .map(|i| {
            let mut b = Bio::new(BioOp::Write, (i * bio / bs) as u64);
            b.push(BioVec::new(BioBuf::Shared(Arc::clone(&data)), 0, bio));
            b
        })
        .collect();
    let rx = submit_all(dev, bios);
    for d in wait_all(&rx, n, Duration::from_secs(300)) {
        d.2.unwrap();
    }
    let w = t.elapsed();
    let t = Instant::now();
    let rx = submit_all(
        dev,
        (0..n)
            .map(|i| read_bio((i * bio / bs) as u64, bio))
            .collect(),
    );
    for d in wait_all(&rx, n, Duration::from_secs(300)) {
        d.2.unwrap();
    }
    let r = t.elapsed();
    let mib = total as f64 / (1 << 20) as f64;
    (mib / w.as_secs_f64(), mib / r.as_secs_f64())
}

#[test]
fn delayed_requests_overlap() {
    if !have("delayed_requests_overlap", "nbdkit") {
        return;
    }
    let srv = Server::nbdkit(&[
        "--threads=128",
        "--filter=delay",
        "memory",
        "64M",
        "delay-read=2ms",
        "delay-write=2ms",
    ]);
    let dev = srv.connect(&NbdOptions::default());
    // 64 reads of 4 KiB: one at a time they take at least 64 × 2 ms.
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let rx = submit_all(&dev, (0..64).map(|i| read_bio(i * 8, 4096)).collect());
        for d in wait_all(&rx, 64, Duration::from_secs(60)) {
            d.2.unwrap();
        }
        best = best.min(t.elapsed());
    }
    eprintln!("64 x 4 KiB reads with 2 ms delay each: {best:?} (serial would be >= 128 ms)");
    assert!(
        best < Duration::from_millis(64),
        "requests did not overlap: {best:?}"
    );
    // The writes still complete and read back.
    let mut model = vec![0u8; 64 << 20];
    exercise(&dev, &mut model, 3, 64, 64, 30);
}

#[test]
fn throughput_at_0_and_2_ms_per_request() {
    if !have("throughput_at_0_and_2_ms_per_request", "nbdkit") {
        return;
    }
    let mut rows = Vec::new();
    for delay in ["0ms", "2ms"] {
        let dr = format!("delay-read={delay}");
        let dw = format!("delay-write={delay}");
        let srv = Server::nbdkit(&[
            "--threads=128",
            "--filter=delay",
            "memory",
            "256M",
            &dr,
            &dw,
        ]);
        for in_flight in [1usize, 16, 128] {
            let dev = srv.connect(&NbdOptions {
                max_in_flight: in_flight,
                ..NbdOptions::default()
            });
            let total = if delay == "0ms" {
                128 << 20
            } else if in_flight == 1 {
                8 << 20
            } else {
                64 << 20
            };
            let (w, r) = throughput(&dev, total, 256 << 10);
            eprintln!(
                "nbdkit memory, delay {delay}, 256 KiB bios, {in_flight:3} in flight: write {w:7.1} MiB/s, read {r:7.1} MiB/s"
            );
            rows.push((delay, in_flight, w, r));
        }
    }
    // At 2 ms, deep pipelining must beat a request at a time by far.
    let at = |d: &str, n: usize| {
        rows.iter()
            .find(|x| x.0 == d && x.1 == n)
            .map(|x| x.3)
            .unwrap()
    };
    assert!(at("2ms", 128) > 3.0 * at("2ms", 1), "{rows:?}");
}

#[test]
fn killing_the_server_fails_in_flight_bios_with_eio() {
    if !have("killing_the_server_fails_in_flight_bios_with_eio", "nbdkit") {
        return;
    }
    let mut srv = Server::nbdkit(&[
        "--threads=64",
        "--filter=delay",
        "memory",
        "16M",
        "delay-read=500ms",
        "delay-write=500ms",
    ]);
    let dev = srv.connect(&NbdOptions {
        request_timeout: Duration::from_secs(10),
        ..NbdOptions::default()
    });
    let mut bios: Vec<Bio> = (0..32).map(|i| read_bio(i * 8, 4096)).collect();
    for i in 0..32u64 {
        let mut b = Bio::new(BioOp::Write, 1024 + i * 8);
        b.push(BioVec::from_vec(vec![1u8; 4096]));
        bios.push(b);
    }
    let rx = submit_all(&dev, bios);
    let deadline = Instant::now() + Duration::from_secs(10);
    while dev.in_flight() < 64 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    srv.kill();
    let done = wait_all(&rx, 64, Duration::from_secs(10));
    let took = t.elapsed();
    let failed: Vec<_> = done.iter().filter_map(|d| d.2.as_ref().err()).collect();
    eprintln!(
        "server killed: {} of 64 bios failed, in {took:?}",
        failed.len()
    );
    assert!(
        !failed.is_empty(),
        "no bio was in flight when the server died"
    );
    assert!(failed.iter().all(|e| e.errno() == libc::EIO), "{failed:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(dev.is_broken());
    // A dead server closes the socket, or resets it when our writes were still arriving.
    let why = dev.failure().unwrap_or_default();
    assert!(why.contains("closed") || why.contains("reset"), "{why:?}");
    // Later bios fail at once.
    let t = Instant::now();
    let e = dev.write_blocks(0, &[0u8; 512]).unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    let mut buf = [0u8; 512];
    assert_eq!(dev.read_blocks(0, &mut buf).unwrap_err().errno(), libc::EIO);
    assert_eq!(dev.flush().unwrap_err().errno(), libc::EIO);
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_server_that_stops_answering_times_out() {
    if !have("a_server_that_stops_answering_times_out", "nbdkit") {
        return;
    }
    let srv = Server::nbdkit(&["--filter=delay", "memory", "1M", "delay-read=60"]);
    let dev = srv.connect(&NbdOptions {
        request_timeout: Duration::from_millis(500),
        ..NbdOptions::default()
    });
    let t = Instant::now();
    let mut buf = [0u8; 512];
    let e = dev.read_blocks(0, &mut buf).unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.errno(), libc::EIO);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(
        dev.failure().unwrap().contains("no reply within"),
        "{:?}",
        dev.failure()
    );
}

#[test]
fn trim_zeroes_and_fua_reach_the_server() {
    if !have("trim_zeroes_and_fua_reach_the_server", "nbdkit") {
        return;
    }
    // The log filter records each request as the client sent it.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let logfile = format!("logfile={}", log.display());
    let srv = Server::nbdkit(&["--filter=log", "memory", "4M", &logfile]);
    let dev = srv.connect(&NbdOptions::default());
    assert!(dev.info().can_fua());
    dev.write_blocks(0, &vec![9u8; 65536]).unwrap();
    dev.write_zeroes(8, 8).unwrap();
    dev.trim(64, 16).unwrap();
    let mut bio = Bio::new(BioOp::Write, 200);
    bio.push(BioVec::from_vec(vec![1u8; 4096]));
    let (tx, rx) = mpsc::channel();
    dev.submit_fua(bio.with_end_io(move |_, r| tx.send(r).unwrap()));
    rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    let mut buf = vec![1u8; 8192];
    dev.read_blocks(4, &mut buf).unwrap();
    assert!(buf[..2048].iter().all(|&b| b == 9) && buf[2048..6144].iter().all(|&b| b == 0));
    assert!(buf[6144..].iter().all(|&b| b == 9));
    drop(dev);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("Zero id="), "{text}");
    assert!(text.contains("Trim id="), "{text}");
    assert!(
        text.lines().any(|l| l.contains("Write id=")
            && l.contains("offset=0x19000")
            && l.contains("fua=1")),
        "{text}"
    );
    drop(srv);

    // A server without FUA or WRITE_ZEROES: the FUA write is followed by a flush, zeroes are
    // written.
    let log = dir.path().join("log2");
    let logfile = format!("logfile={}", log.display());
    let srv = Server::nbdkit(&[
        "--filter=log",
        "--filter=fua",
        "--filter=nozero",
        "memory",
        "4M",
        &logfile,
    ]);
    let dev = srv.connect(&NbdOptions::default());
    assert!(!dev.info().can_fua() && !dev.info().can_write_zeroes() && dev.info().can_flush());
    dev.write_blocks(0, &vec![9u8; 8192]).unwrap();
    dev.write_zeroes(4, 4).unwrap();
    let mut bio = Bio::new(BioOp::Write, 200);
    bio.push(BioVec::from_vec(vec![1u8; 4096]));
    let (tx, rx) = mpsc::channel();
    dev.submit_fua(bio.with_end_io(move |_, r| tx.send(r).unwrap()));
    rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    let mut buf = vec![1u8; 8192];
    dev.read_blocks(0, &mut buf).unwrap();
    assert!(buf[..2048].iter().all(|&b| b == 9) && buf[2048..4096].iter().all(|&b| b == 0));
    drop(dev);
    let text = std::fs::read_to_string(&log).unwrap();
    let after = text
        .split("offset=0x19000")
        .nth(1)
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        after.contains("Flush id="),
        "no flush after the FUA write: {text}"
    );
    assert!(!text.contains("Zero id="), "{text}");
}
