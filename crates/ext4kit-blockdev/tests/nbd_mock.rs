//! `NbdDevice` against scripted servers on a socket pair: reply order, structured chunks,
//! splitting at the server's maximum, FUA, the handshake fallbacks, and servers that misbehave
//! (which must give errors, never panics or hangs). Needs no NBD server installed.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ext4kit_blockdev::{
    Bio, BioOp, BioVec, BlockDevice, BlockDeviceExt, IoError, NbdDevice, NbdErrorKind,
    NbdHandshake, NbdOptions,
};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const ERR_UNSUP: u32 = (1 << 31) | 1;
const ERR_UNKNOWN: u32 = (1 << 31) | 6;

const F_HAS: u16 = 1;
const F_RO: u16 = 2;
const F_FLUSH: u16 = 4;
const F_FUA: u16 = 8;
const F_TRIM: u16 = 32;
const F_ZEROES: u16 = 64;

fn u16b(s: &mut UnixStream) -> u16 {
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();
    u16::from_be_bytes(b)
}
fn u32b(s: &mut UnixStream) -> u32 {
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    u32::from_be_bytes(b)
}
fn u64b(s: &mut UnixStream) -> u64 {
    let mut b = [0u8; 8];
    s.read_exact(&mut b).unwrap();
    u64::from_be_bytes(b)
}

/// How the scripted server negotiates.
#[derive(Clone, Copy)]
struct Greet {
    size: u64,
    flags: u16,
    structured: bool,
    go: bool,
    block_sizes: Option<(u32, u32, u32)>,
}

impl Greet {
    fn new(size: u64, flags: u16) -> Greet {
        Greet {
            size,
            flags: flags | F_HAS,
            structured: false,
            go: true,
            block_sizes: None,
        }
    }
}

fn opt_reply(s: &mut UnixStream, opt: u32, rep: u32, data: &[u8]) {
    let mut m = Vec::new();
    m.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&rep.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).unwrap();
}

/// Fixed newstyle with NO_ZEROES, then answers options until the client enters transmission.
fn greet(s: &mut UnixStream, g: Greet) -> String {
    let mut m = Vec::new();
    m.extend_from_slice(&NBDMAGIC.to_be_bytes());
    m.extend_from_slice(&IHAVEOPT.to_be_bytes());
    m.extend_from_slice(&3u16.to_be_bytes());
    s.write_all(&m).unwrap();
    assert_eq!(u32b(s), 3, "client flags");
    loop {
        assert_eq!(u64b(s), IHAVEOPT);
        let opt = u32b(s);
        let len = u32b(s);
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).unwrap();
        match opt {
            8 => opt_reply(s, 8, if g.structured { 1 } else { ERR_UNSUP }, &[]),
            7 if g.go => {
                let nlen = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
                let name = String::from_utf8(data[4..4 + nlen].to_vec()).unwrap();
                if let Some((a, b, c)) = g.block_sizes {
                    let mut i = 3u16.to_be_bytes().to_vec();
                    for v in [a, b, c] {
                        i.extend_from_slice(&v.to_be_bytes());
                    }
                    opt_reply(s, 7, 3, &i);
                }
                let mut i = 0u16.to_be_bytes().to_vec();
                i.extend_from_slice(&g.size.to_be_bytes());
                i.extend_from_slice(&g.flags.to_be_bytes());
                opt_reply(s, 7, 3, &i);
                opt_reply(s, 7, 1, &[]);
                return name;
            }
            7 => opt_reply(s, 7, ERR_UNSUP, &[]),
            1 => {
                let mut r = g.size.to_be_bytes().to_vec();
                r.extend_from_slice(&g.flags.to_be_bytes());
                s.write_all(&r).unwrap();
                return String::from_utf8(data).unwrap();
            }
            o => panic!("unexpected option {o}"),
        }
    }
}

#[derive(Debug)]
struct Req {
    flags: u16,
    cmd: u16,
    cookie: u64,
    offset: u64,
    len: u32,
    data: Vec<u8>,
}

fn read_req(s: &mut UnixStream) -> Option<Req> {
    let mut magic = [0u8; 4];
    if s.read_exact(&mut magic).is_err() {
        return None;
    }
    assert_eq!(u32::from_be_bytes(magic), 0x2560_9513);
    let flags = u16b(s);
    let cmd = u16b(s);
    let cookie = u64b(s);
    let offset = u64b(s);
    let len = u32b(s);
    let mut data = Vec::new();
    if cmd == 1 {
        data = vec![0u8; len as usize];
        s.read_exact(&mut data).unwrap();
    }
    Some(Req {
        flags,
        cmd,
        cookie,
        offset,
        len,
        data,
    })
}

fn simple(s: &mut UnixStream, err: u32, cookie: u64, data: &[u8]) {
    let mut m = 0x6744_6698u32.to_be_bytes().to_vec();
    m.extend_from_slice(&err.to_be_bytes());
    m.extend_from_slice(&cookie.to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).unwrap();
}

fn chunk(s: &mut UnixStream, flags: u16, ty: u16, cookie: u64, payload: &[u8]) {
    let mut m = 0x668e_33efu32.to_be_bytes().to_vec();
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&ty.to_be_bytes());
    m.extend_from_slice(&cookie.to_be_bytes());
    m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    m.extend_from_slice(payload);
    s.write_all(&m).unwrap();
}

/// A request as the server saw it: command, flags, offset, length.
type Logged = (u16, u16, u64, u32);

/// Serves `image` with simple replies until the client disconnects; returns the image and the
/// requests (but the disconnect).
fn serve(mut s: UnixStream, mut image: Vec<u8>) -> (Vec<u8>, Vec<Logged>) {
    let mut log = Vec::new();
    while let Some(r) = read_req(&mut s) {
        if r.cmd != 2 {
            log.push((r.cmd, r.flags, r.offset, r.len));
        }
        let (o, n) = (r.offset as usize, r.len as usize);
        match r.cmd {
            0 => {
                let d = image[o..o + n].to_vec();
                simple(&mut s, 0, r.cookie, &d);
            }
            1 => {
                image[o..o + n].copy_from_slice(&r.data);
                simple(&mut s, 0, r.cookie, &[]);
            }
            2 => break,
            4 | 6 => {
                image[o..o + n].fill(0);
                simple(&mut s, 0, r.cookie, &[]);
            }
            _ => simple(&mut s, 0, r.cookie, &[]),
        }
    }
    (image, log)
}

/// A device on a scripted server: `script` runs on the server side after the handshake.
fn with_server<T: Send + 'static>(
    g: Greet,
    opts: &NbdOptions,
    script: impl FnOnce(UnixStream) -> T + Send + 'static,
) -> (
    Result<NbdDevice, ext4kit_blockdev::NbdError>,
    thread::JoinHandle<T>,
) {
    let (a, mut b) = UnixStream::pair().unwrap();
    let h = thread::spawn(move || {
        greet(&mut b, g);
        script(b)
    });
    (NbdDevice::from_unix_stream(a, "exp", opts), h)
}

type Done = mpsc::Receiver<(usize, Bio, Result<(), IoError>)>;

fn submit_tagged(dev: &NbdDevice, bios: Vec<Bio>) -> Done {
    let (tx, rx) = mpsc::channel();
    for (i, bio) in bios.into_iter().enumerate() {
        let tx = tx.clone();
        dev.submit(bio.with_end_io(move |b, r| {
            let _ = tx.send((i, b, r));
        }));
    }
    rx
}

fn read_bio(block: u64, len: usize) -> Bio {
    let mut b = Bio::new(BioOp::Read, block);
    b.push(BioVec::zeroed(len));
    b
}

fn bytes_of(b: &Bio) -> Vec<u8> {
    b.vecs().iter().flat_map(|v| v.bytes().to_vec()).collect()
}

#[test]
fn replies_in_reverse_order_complete_the_right_bios() {
    let (dev, server) = with_server(
        Greet::new(1 << 20, F_FLUSH),
        &NbdOptions::default(),
        |mut s| {
            let mut reqs = Vec::new();
            for _ in 0..16 {
                reqs.push(read_req(&mut s).unwrap());
            }
            let cookies: std::collections::HashSet<u64> = reqs.iter().map(|r| r.cookie).collect();
            assert_eq!(cookies.len(), 16, "cookies must be distinct");
            for r in reqs.iter().rev() {
                simple(
                    &mut s,
                    0,
                    r.cookie,
                    &vec![(r.offset / 4096) as u8; r.len as usize],
                );
            }
            serve(s, vec![0; 1 << 20]);
        },
    );
    let dev = dev.unwrap();
    assert_eq!(dev.info().handshake, NbdHandshake::FixedNewstyleGo);
    assert!(!dev.info().structured_replies);
    let rx = submit_tagged(&dev, (0..16).map(|i| read_bio(i * 8, 4096)).collect());
    let mut order = Vec::new();
    for _ in 0..16 {
        let (i, bio, r) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        r.unwrap();
        assert!(
            bytes_of(&bio).iter().all(|&b| b == i as u8),
            "bio {i} got another's data"
        );
        order.push(i);
    }
    assert_eq!(order, (0..16).rev().collect::<Vec<_>>());
    drop(dev);
    server.join().unwrap();
}

#[test]
fn structured_reads_take_chunks_holes_and_errors() {
    let mut g = Greet::new(1 << 20, F_FLUSH);
    g.structured = true;
    let (dev, server) = with_server(g, &NbdOptions::default(), |mut s| {
        // Read 1: 12 KiB as data (last 4 KiB), hole (middle), data (first 4 KiB, DONE).
        let r = read_req(&mut s).unwrap();
        let mut p = (r.offset + 8192).to_be_bytes().to_vec();
        p.extend_from_slice(&[3u8; 4096]);
        chunk(&mut s, 0, 1, r.cookie, &p);
        let mut p = (r.offset + 4096).to_be_bytes().to_vec();
        p.extend_from_slice(&4096u32.to_be_bytes());
        chunk(&mut s, 0, 2, r.cookie, &p);
        let mut p = r.offset.to_be_bytes().to_vec();
        p.extend_from_slice(&[1u8; 4096]);
        chunk(&mut s, 1, 1, r.cookie, &p);
        // Read 2: an error chunk with a message.
        let r = read_req(&mut s).unwrap();
        let mut p = 1u32.to_be_bytes().to_vec();
        p.extend_from_slice(&4u16.to_be_bytes());
        p.extend_from_slice(b"nope");
        chunk(&mut s, 1, 0x8001, r.cookie, &p);
        // Read 3: DONE without covering the request.
        let r = read_req(&mut s).unwrap();
        let mut p = r.offset.to_be_bytes().to_vec();
        p.extend_from_slice(&[9u8; 512]);
        chunk(&mut s, 0, 1, r.cookie, &p);
        chunk(&mut s, 1, 0, r.cookie, &[]);
        // A write: simple replies are allowed for non-reads.
        let r = read_req(&mut s).unwrap();
        simple(&mut s, 0, r.cookie, &[]);
        // Flush: NONE chunk.
        let r = read_req(&mut s).unwrap();
        assert_eq!(r.cmd, 3);
        chunk(&mut s, 1, 0, r.cookie, &[]);
        serve(s, vec![0; 1 << 20]);
    });
    let dev = dev.unwrap();
    assert!(dev.info().structured_replies);
    // Lent memory full of garbage: the hole must be zeroed, not left.
    let mut b = Bio::new(BioOp::Read, 16);
    b.push(BioVec::new(
        ext4kit_blockdev::BioBuf::Lent(Box::new(vec![0xeeu8; 12288])),
        0,
        12288,
    ));
    let (b, r) = dev.submit_and_wait(b);
    r.unwrap();
    let got = bytes_of(&b);
    assert!(got[..4096].iter().all(|&x| x == 1));
    assert!(got[4096..8192].iter().all(|&x| x == 0));
    assert!(got[8192..].iter().all(|&x| x == 3));
    let (_, r) = dev.submit_and_wait(read_bio(0, 4096));
    assert_eq!(r.unwrap_err().errno(), libc::EPERM);
    let msg = dev.last_error_message().unwrap();
    assert!(msg.contains("nope") && msg.contains("read"), "{msg}");
    let (_, r) = dev.submit_and_wait(read_bio(0, 4096));
    assert_eq!(
        r.unwrap_err().errno(),
        libc::EIO,
        "an uncovered read must fail"
    );
    dev.write_blocks(0, &[5u8; 512]).unwrap();
    dev.flush().unwrap();
    assert!(
        !dev.is_broken(),
        "error replies do not break the connection"
    );
    drop(dev);
    server.join().unwrap();
}

#[test]
fn bios_split_at_the_server_maximum_and_complete_together() {
    let mut g = Greet::new(1 << 20, F_FLUSH);
    g.block_sizes = Some((512, 4096, 8192));
    let (tx_seen, rx_seen) = mpsc::channel();
    let (dev, server) = with_server(g, &NbdOptions::default(), move |mut s| {
        let mut reqs = Vec::new();
        for _ in 0..8 {
            reqs.push(read_req(&mut s).unwrap());
        }
        for r in &reqs[..7] {
            simple(&mut s, 0, r.cookie, &[]);
        }
        tx_seen
            .send(reqs.iter().map(|r| (r.offset, r.len)).collect::<Vec<_>>())
            .unwrap();
        thread::sleep(Duration::from_millis(200));
        simple(&mut s, 0, reqs[7].cookie, &[]);
        serve(s, vec![0; 1 << 20]);
    });
    let dev = dev.unwrap();
    assert_eq!(dev.info().max_request, 8192);
    assert!(dev.info().block_sizes_advertised);
    let mut bio = Bio::new(BioOp::Write, 8);
    bio.push(BioVec::from_vec(vec![7u8; 65536]));
    let rx = submit_tagged(&dev, vec![bio]);
    let pieces = rx_seen.recv_timeout(Duration::from_secs(20)).unwrap();
    let want: Vec<(u64, u32)> = (0..8).map(|i| (4096 + i * 8192, 8192)).collect();
    assert_eq!(pieces, want);
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "the bio completed before its last piece"
    );
    let (_, _, r) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    r.unwrap();
    drop(dev);
    server.join().unwrap();
}

#[test]
fn a_device_block_below_the_minimum_is_refused() {
    let mut g = Greet::new(1 << 20, F_FLUSH);
    g.block_sizes = Some((4096, 4096, 1 << 20));
    let (dev, server) = with_server(g, &NbdOptions::default(), drop);
    let e = dev.unwrap_err();
    assert!(matches!(e.kind, NbdErrorKind::InvalidOptions(_)), "{e}");
    server.join().unwrap();
}

#[test]
fn fua_is_sent_or_emulated_with_a_flush() {
    for (flags, want) in [
        (F_FLUSH | F_FUA, vec![(1, 1)]),
        (F_FLUSH, vec![(1, 0), (3, 0)]),
        (0, vec![(1, 0)]),
    ] {
        let (dev, server) = with_server(Greet::new(1 << 20, flags), &NbdOptions::default(), |s| {
            serve(s, vec![0; 1 << 20]).1
        });
        let dev = dev.unwrap();
        let mut bio = Bio::new(BioOp::Write, 0);
        bio.push(BioVec::from_vec(vec![1u8; 4096]));
        let (tx, rx) = mpsc::channel();
        dev.submit_fua(bio.with_end_io(move |_, r| tx.send(r).unwrap()));
        rx.recv_timeout(Duration::from_secs(20)).unwrap().unwrap();
        // A flush without SEND_FLUSH completes at once, with nothing sent.
        dev.flush().unwrap();
        drop(dev);
        let log = server.join().unwrap();
        let mut seen: Vec<(u16, u16)> = log.iter().map(|l| (l.0, l.1)).collect();
        if flags & F_FLUSH != 0 {
            assert_eq!(seen.pop(), Some((3, 0)), "the plain flush");
        }
        assert_eq!(seen, want, "flags {flags:#x}");
    }
}

#[test]
fn read_only_exports_refuse_writes_with_erofs() {
    let (dev, server) = with_server(
        Greet::new(1 << 20, F_RO | F_FLUSH | F_TRIM),
        &NbdOptions::default(),
        |s| serve(s, vec![0x42; 1 << 20]).1,
    );
    let dev = dev.unwrap();
    assert!(dev.is_read_only());
    assert!(BlockDevice::is_read_only(&dev));
    let e = dev.write_blocks(0, &[0u8; 512]).unwrap_err();
    assert_eq!(e, IoError::ReadOnly);
    assert_eq!(e.errno(), libc::EROFS);
    assert_eq!(dev.trim(0, 8).unwrap_err().errno(), libc::EROFS);
    let mut buf = vec![0u8; 512];
    dev.read_blocks(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0x42));
    drop(dev);
    let log = server.join().unwrap();
    assert!(
        log.iter().all(|l| l.0 == 0 || l.0 == 2),
        "a write reached the server: {log:?}"
    );
}

#[test]
fn trim_and_zeroes_use_the_server_or_fall_back() {
    // With WRITE_ZEROES and TRIM offered.
    let (dev, server) = with_server(
        Greet::new(1 << 20, F_FLUSH | F_TRIM | F_ZEROES),
        &NbdOptions::default(),
        |s| serve(s, vec![0x11; 1 << 20]),
    );
    let dev = dev.unwrap();
    dev.write_zeroes(8, 16).unwrap();
    dev.trim(100, 4).unwrap();
    assert!(dev.trim(2047, 2).is_err(), "out of range");
    drop(dev);
    let (img, log) = server.join().unwrap();
    assert!(img[4096..12288].iter().all(|&b| b == 0));
    assert!(log.iter().any(|l| l.0 == 6) && log.iter().any(|l| l.0 == 4));
    // Without: zeroes are written, trim says EOPNOTSUPP.
    let (dev, server) = with_server(Greet::new(1 << 20, F_FLUSH), &NbdOptions::default(), |s| {
        serve(s, vec![0x11; 1 << 20])
    });
    let dev = dev.unwrap();
    dev.write_zeroes(8, 16).unwrap();
    assert_eq!(dev.trim(0, 1).unwrap_err().errno(), libc::EOPNOTSUPP);
    drop(dev);
    let (img, log) = server.join().unwrap();
    assert!(img[4096..12288].iter().all(|&b| b == 0));
    assert!(img[..4096].iter().all(|&b| b == 0x11));
    assert!(log.iter().all(|l| l.0 != 6 && l.0 != 4));
}

#[test]
fn end_functions_may_submit_with_a_full_window() {
    let opts = NbdOptions {
        max_in_flight: 1,
        ..NbdOptions::default()
    };
    let (dev, server) = with_server(Greet::new(1 << 20, F_FLUSH), &opts, |s| {
        serve(s, (0..1 << 20).map(|i| (i / 512) as u8).collect())
    });
    let dev = std::sync::Arc::new(dev.unwrap());
    let (tx, rx) = mpsc::channel();
    fn chain(dev: std::sync::Arc<NbdDevice>, n: u64, tx: mpsc::Sender<u64>) {
        let d2 = std::sync::Arc::clone(&dev);
        dev.submit(read_bio(n, 512).with_end_io(move |b, r| {
            r.unwrap();
            assert_eq!(bytes_of(&b)[0], n as u8);
            if n == 99 {
                tx.send(n).unwrap();
            } else {
                // Submitting from the reader thread while the window (1) is still held by
                // this very request.
                chain(d2, n + 1, tx);
            }
        }));
    }
    chain(std::sync::Arc::clone(&dev), 0, tx);
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), 99);
    drop(dev);
    server.join().unwrap();
}

#[test]
fn export_name_fallback_when_the_server_has_no_go() {
    let mut g = Greet::new(1 << 20, F_FLUSH);
    g.go = false;
    let (dev, server) = with_server(g, &NbdOptions::default(), |s| serve(s, vec![3; 1 << 20]));
    let dev = dev.unwrap();
    assert_eq!(dev.info().handshake, NbdHandshake::FixedNewstyleExportName);
    assert_eq!(dev.geometry().nr_blocks, 2048);
    let mut buf = vec![0u8; 1024];
    dev.read_blocks(1, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 3));
    drop(dev);
    server.join().unwrap();
}

#[test]
fn refusals_and_broken_handshakes_are_errors() {
    // No such export, with a message.
    let (a, mut b) = UnixStream::pair().unwrap();
    let h = thread::spawn(move || {
        let mut m = NBDMAGIC.to_be_bytes().to_vec();
        m.extend_from_slice(&IHAVEOPT.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        b.write_all(&m).unwrap();
        assert_eq!(u32b(&mut b), 1);
        for _ in 0..2 {
            assert_eq!(u64b(&mut b), IHAVEOPT);
            let opt = u32b(&mut b);
            let len = u32b(&mut b);
            let mut d = vec![0u8; len as usize];
            b.read_exact(&mut d).unwrap();
            match opt {
                8 => opt_reply(&mut b, 8, 1, &[]),
                7 => opt_reply(&mut b, 7, ERR_UNKNOWN, b"no export 'exp' here"),
                o => panic!("{o}"),
            }
        }
    });
    let e = NbdDevice::from_unix_stream(a, "exp", &NbdOptions::default()).unwrap_err();
    assert!(matches!(e.kind, NbdErrorKind::Refused { .. }), "{e}");
    assert!(e.to_string().contains("no export 'exp' here"), "{e}");
    h.join().unwrap();

    // Not an NBD server.
    let (a, mut b) = UnixStream::pair().unwrap();
    let h = thread::spawn(move || b.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").unwrap());
    let e = NbdDevice::from_unix_stream(a, "", &NbdOptions::default()).unwrap_err();
    assert!(matches!(e.kind, NbdErrorKind::Protocol(_)), "{e}");
    h.join().unwrap();

    // Closes in the middle of the greeting.
    let (a, mut b) = UnixStream::pair().unwrap();
    let h = thread::spawn(move || b.write_all(&NBDMAGIC.to_be_bytes()).unwrap());
    let e = NbdDevice::from_unix_stream(a, "", &NbdOptions::default()).unwrap_err();
    assert!(matches!(e.kind, NbdErrorKind::Closed { .. }), "{e}");
    h.join().unwrap();

    // Never answers: the connect timeout ends it.
    let (a, b) = UnixStream::pair().unwrap();
    let t = Instant::now();
    let opts = NbdOptions {
        connect_timeout: Duration::from_millis(300),
        ..NbdOptions::default()
    };
    let e = NbdDevice::from_unix_stream(a, "", &opts).unwrap_err();
    assert!(matches!(e.kind, NbdErrorKind::Io { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));
    drop(b);
}

/// A misbehaving server after the handshake: every in-flight bio fails with EIO, later ones at
/// once, nothing panics or hangs.
fn misbehave(
    structured: bool,
    script: impl FnOnce(&mut UnixStream, Vec<Req>) + Send + 'static,
) -> String {
    let mut g = Greet::new(1 << 20, F_FLUSH);
    g.structured = structured;
    let (dev, server) = with_server(g, &NbdOptions::default(), move |mut s| {
        let reqs = (0..4).map(|_| read_req(&mut s).unwrap()).collect();
        script(&mut s, reqs);
        // Keep the socket open: the client must notice by itself.
        thread::sleep(Duration::from_millis(500));
    });
    let dev = dev.unwrap();
    let rx = submit_tagged(&dev, (0..4).map(|i| read_bio(i * 8, 4096)).collect());
    for _ in 0..4 {
        let (_, _, r) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a bio hung");
        assert_eq!(r.unwrap_err().errno(), libc::EIO);
    }
    assert!(dev.is_broken());
    let t = Instant::now();
    let (_, r) = dev.submit_and_wait(read_bio(0, 512));
    assert_eq!(r.unwrap_err().errno(), libc::EIO);
    assert!(t.elapsed() < Duration::from_secs(1));
    let why = dev.failure().unwrap();
    drop(dev);
    server.join().unwrap();
    why
}

#[test]
fn misbehaving_servers_fail_the_bios_not_the_process() {
    let why = misbehave(false, |s, r| simple(s, 0, r[0].cookie ^ 0xdead_beef, &[]));
    assert!(why.contains("not in flight"), "{why}");
    let why = misbehave(false, |s, _| {
        s.write_all(&[0xde, 0xad, 0xbe, 0xef]).unwrap()
    });
    assert!(why.contains("magic"), "{why}");
    let why = misbehave(false, |s, r| {
        // Half the data, then the connection drops.
        simple(s, 0, r[0].cookie, &[0u8; 2048]);
        s.shutdown(std::net::Shutdown::Both).unwrap();
    });
    assert!(why.contains("closed"), "{why}");
    let why = misbehave(true, |s, r| {
        let mut p = (r[0].offset + 4096).to_be_bytes().to_vec();
        p.extend_from_slice(&[0u8; 16]);
        chunk(s, 1, 1, r[0].cookie, &p);
    });
    assert!(why.contains("outside the request"), "{why}");
    let why = misbehave(true, |s, r| chunk(s, 1, 77, r[0].cookie, &[]));
    assert!(why.contains("unknown reply chunk"), "{why}");
    let why = misbehave(true, |s, r| simple(s, 0, r[0].cookie, &[]));
    assert!(why.contains("simple reply to a read"), "{why}");
    let why = misbehave(false, |s, r| chunk(s, 1, 0, r[0].cookie, &[]));
    assert!(why.contains("structured reply without"), "{why}");
    let why = misbehave(true, |s, r| {
        // An error chunk claiming a 4 GiB payload.
        let mut m = 0x668e_33efu32.to_be_bytes().to_vec();
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&0x8001u16.to_be_bytes());
        m.extend_from_slice(&r[0].cookie.to_be_bytes());
        m.extend_from_slice(&u32::MAX.to_be_bytes());
        m.extend_from_slice(&5u32.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&m).unwrap();
    });
    assert!(why.contains("error chunk"), "{why}");
}

#[test]
fn a_request_without_reply_times_out() {
    let opts = NbdOptions {
        request_timeout: Duration::from_millis(300),
        ..NbdOptions::default()
    };
    let (dev, server) = with_server(Greet::new(1 << 20, F_FLUSH), &opts, |mut s| {
        let r = read_req(&mut s).unwrap();
        thread::sleep(Duration::from_secs(2));
        r
    });
    let dev = dev.unwrap();
    let t = Instant::now();
    let (_, r) = dev.submit_and_wait(read_bio(0, 4096));
    let took = t.elapsed();
    assert_eq!(r.unwrap_err().errno(), libc::EIO);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(
        dev.failure().unwrap().contains("no reply within"),
        "{:?}",
        dev.failure()
    );
    drop(dev);
    server.join().unwrap();
}

#[test]
fn dropping_the_device_waits_for_bios_then_disconnects() {
    let (dev, server) = with_server(
        Greet::new(1 << 20, F_FLUSH),
        &NbdOptions::default(),
        |mut s| {
            let r = read_req(&mut s).unwrap();
            thread::sleep(Duration::from_millis(300));
            simple(&mut s, 0, r.cookie, &[8u8; 4096]);
            let r = read_req(&mut s).unwrap();
            assert_eq!(r.cmd, 2, "NBD_CMD_DISC expected");
            assert!(read_req(&mut s).is_none());
        },
    );
    let dev = dev.unwrap();
    let rx = submit_tagged(&dev, vec![read_bio(0, 4096)]);
    drop(dev);
    let (_, b, r) = rx
        .try_recv()
        .expect("drop returned before the bio completed");
    r.unwrap();
    assert!(bytes_of(&b).iter().all(|&x| x == 8));
    server.join().unwrap();
}
