//! Writeback benchmark: the engine against the device limit, measured in the same run.
//!
//! (a) sequential: 1 GiB written in 1 MiB `write`s + fsync, through the engine (4 KiB blocks on
//!     4 KiB pages) vs. the same bytes with `pwrite` + `fdatasync` on a file in the same
//!     directory (the device limit);
//! (b) the same with 1 KiB blocks on 4 KiB pages, and with 64 KiB pages;
//! (c) 20,000 random 4 KiB overwrites of a prepared 256 MiB file + fsync vs. `pwrite` +
//!     `fdatasync`, with 4 KiB and with 1 KiB blocks;
//! (d) bios per MiB written; (e) the size of an io_end and the state bytes per block.
//!
//! Runs are interleaved and medians reported (these machines are noisy). Ratios are
//! throughput(engine) / throughput(raw): 1.0 means "as fast as the device allows".
//! Knobs: EXT4KIT_BENCH_RUNS (5), EXT4KIT_BENCH_SEQ_MIB (1024), EXT4KIT_BENCH_DIR (the
//! target directory), EXT4KIT_NO_URING=1 to use the thread-pool device.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ext4kit_blockdev::open_file_device;
use ext4kit_pagecache::testing::SimpleMapper;
use ext4kit_pagecache::{Config, PageCache, io_end_size};

const MIB: u64 = 1 << 20;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn fresh_file(path: &Path, size: u64) -> File {
    let _ = std::fs::remove_file(path);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create bench file");
    f.set_len(size).expect("size bench file");
    f
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Dir(PathBuf);

impl Dir {
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

/// Flushes everything the host has dirty and lets the disk settle (`EXT4KIT_BENCH_SETTLE_MS`,
/// default 1000), so a measurement starts on a quiet disk: on a VM the virtual disk keeps
/// working for a while after a flush returns, and whichever variant ran next paid for it.
fn quiesce() {
    rustix::fs::sync();
    std::thread::sleep(std::time::Duration::from_millis(env_u64(
        "EXT4KIT_BENCH_SETTLE_MS",
        1000,
    )));
}

/// Raw: 1 MiB pwrites of `total` bytes, then fdatasync. Returns seconds.
fn raw_seq(dir: &Dir, total: u64, buf: &[u8]) -> f64 {
    let path = dir.file("raw-seq.img");
    let f = fresh_file(&path, total);
    quiesce();
    let t = Instant::now();
    let mut off = 0;
    while off < total {
        f.write_all_at(buf, off).expect("pwrite");
        off += buf.len() as u64;
    }
    rustix::fs::fdatasync(&f).expect("fdatasync");
    let s = t.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    s
}

struct EngineRun {
    secs: f64,
    bios: u64,
    bytes: u64,
}

fn engine_cache(
    path: &Path,
    dev_bytes: u64,
    ps: usize,
    bs: usize,
) -> (PageCache, Arc<SimpleMapper>) {
    let _ = fresh_file(path, dev_bytes);
    let (dev, why) = open_file_device(path, true, 512).expect("open device");
    if let Some(why) = why {
        eprintln!("note: {why}; using the thread-pool file device");
    }
    let nr_blocks = dev_bytes / bs as u64;
    let mapper = Arc::new(SimpleMapper::new(0, nr_blocks));
    let mut cfg = Config::new(ps, bs);
    cfg.dirty_limit_bytes = Some(64 << 20);
    (
        PageCache::new(cfg, dev, mapper.clone()).expect("cache"),
        mapper,
    )
}

/// Engine: the same writes through the page cache, then fsync.
fn engine_seq(dir: &Dir, total: u64, buf: &[u8], ps: usize, bs: usize) -> EngineRun {
    let path = dir.file("engine-seq.img");
    let (cache, _mapper) = engine_cache(&path, total + 16 * MIB, ps, bs);
    let m = cache.mapping(12, 0, 0);
    let h = m.open();
    quiesce();
    let t = Instant::now();
    let mut off = 0;
    while off < total {
        m.write(off, buf).expect("engine write");
        off += buf.len() as u64;
    }
    h.fsync().expect("engine fsync");
    let secs = t.elapsed().as_secs_f64();
    let st = cache.stats();
    assert_eq!(st.violations, 0);
    cache.shutdown();
    drop((m, h, cache));
    let _ = std::fs::remove_file(&path);
    EngineRun {
        secs,
        bios: st.bios_submitted,
        bytes: st.bytes_submitted,
    }
}

const RAND_FILE: u64 = 256 * MIB;
const RAND_OPS: usize = 20_000;

fn offsets(seed: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..RAND_OPS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (RAND_FILE / 4096)) * 4096
        })
        .collect()
}

fn raw_rand(dir: &Dir, offs: &[u64], block: &[u8], fill: &[u8]) -> f64 {
    let path = dir.file("raw-rand.img");
    let f = fresh_file(&path, RAND_FILE);
    let mut off = 0;
    while off < RAND_FILE {
        f.write_all_at(fill, off).expect("prepare");
        off += fill.len() as u64;
    }
    rustix::fs::fdatasync(&f).expect("fdatasync");
    quiesce();
    let t = Instant::now();
    for &o in offs {
        f.write_all_at(block, o).expect("pwrite");
    }
    rustix::fs::fdatasync(&f).expect("fdatasync");
    let s = t.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    s
}

fn engine_rand(dir: &Dir, offs: &[u64], block: &[u8], fill: &[u8], bs: usize) -> EngineRun {
    let path = dir.file("engine-rand.img");
    let (cache, _mapper) = engine_cache(&path, RAND_FILE + 16 * MIB, 4096, bs);
    let m = cache.mapping(13, 0, 0);
    let h = m.open();
    let mut off = 0;
    while off < RAND_FILE {
        m.write(off, fill).expect("prepare");
        off += fill.len() as u64;
    }
    h.fsync().expect("prepare fsync");
    let before = cache.stats();
    quiesce();
    let t = Instant::now();
    for &o in offs {
        m.write(o, block).expect("engine write");
    }
    h.fsync().expect("engine fsync");
    let secs = t.elapsed().as_secs_f64();
    let st = cache.stats();
    assert_eq!(st.violations, 0);
    cache.shutdown();
    drop((m, h, cache));
    let _ = std::fs::remove_file(&path);
    EngineRun {
        secs,
        bios: st.bios_submitted - before.bios_submitted,
        bytes: st.bytes_submitted - before.bytes_submitted,
    }
}

fn main() {
    // `cargo bench` passes "--bench"; ignore arguments.
    let runs = env_u64("EXT4KIT_BENCH_RUNS", 5).max(1) as usize;
    let seq_mib = env_u64("EXT4KIT_BENCH_SEQ_MIB", 1024).max(16);
    let dir = Dir(std::env::var_os("EXT4KIT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR"))));
    std::fs::create_dir_all(&dir.0).expect("bench dir");
    let total = seq_mib * MIB;
    let buf = data(MIB as usize, 7);
    let fill = data(MIB as usize, 9);
    let block = data(4096, 11);
    println!(
        "writeback bench: {runs} interleaved runs, {seq_mib} MiB sequential, {RAND_OPS} random 4 KiB writes into 256 MiB, in {}",
        dir.0.display()
    );

    let (mut raw, mut e4k, mut e1k, mut e64k) = (vec![], vec![], vec![], vec![]);
    let (mut rraw, mut r4k, mut r1k) = (vec![], vec![], vec![]);
    let (mut bios, mut bytes) = (0u64, 0u64);
    for run in 0..runs {
        // Rotate the order so no variant always runs first (or right after another).
        let mut secs = [0f64; 4];
        let mut seq_runs: Vec<Option<EngineRun>> = vec![None, None, None, None];
        for k in 0..4 {
            let which = (k + run) % 4;
            match which {
                0 => secs[0] = raw_seq(&dir, total, &buf),
                1 => seq_runs[1] = Some(engine_seq(&dir, total, &buf, 4096, 4096)),
                2 => seq_runs[2] = Some(engine_seq(&dir, total, &buf, 4096, 1024)),
                _ => seq_runs[3] = Some(engine_seq(&dir, total, &buf, 65536, 4096)),
            }
        }
        let a = secs[0];
        let [_, b, c, d] = [
            seq_runs[0].take(),
            seq_runs[1].take(),
            seq_runs[2].take(),
            seq_runs[3].take(),
        ];
        let (b, c, d) = (b.expect("run"), c.expect("run"), d.expect("run"));
        bios += b.bios;
        bytes += b.bytes;
        let offs = offsets(run as u64 + 1);
        let (ra, rb, rc) = if run % 2 == 0 {
            let ra = raw_rand(&dir, &offs, &block, &fill);
            let rb = engine_rand(&dir, &offs, &block, &fill, 4096);
            let rc = engine_rand(&dir, &offs, &block, &fill, 1024);
            (ra, rb, rc)
        } else {
            let rc = engine_rand(&dir, &offs, &block, &fill, 1024);
            let rb = engine_rand(&dir, &offs, &block, &fill, 4096);
            let ra = raw_rand(&dir, &offs, &block, &fill);
            (ra, rb, rc)
        };
        println!(
            "run {run}: seq raw {:.0} MB/s | engine 4K/4K {:.0} MB/s ({:.2}) 1K/4K {:.0} MB/s ({:.2}) 4K/64K {:.0} MB/s ({:.2}) || rand raw {:.0} ops/s | engine 4K {:.0} ops/s ({:.2}) 1K {:.0} ops/s ({:.2})",
            total as f64 / a / 1e6,
            total as f64 / b.secs / 1e6,
            a / b.secs,
            total as f64 / c.secs / 1e6,
            a / c.secs,
            total as f64 / d.secs / 1e6,
            a / d.secs,
            RAND_OPS as f64 / ra,
            RAND_OPS as f64 / rb.secs,
            ra / rb.secs,
            RAND_OPS as f64 / rc.secs,
            ra / rc.secs,
        );
        raw.push(a);
        e4k.push(b.secs);
        e1k.push(c.secs);
        e64k.push(d.secs);
        rraw.push(ra);
        r4k.push(rb.secs);
        r1k.push(rc.secs);
    }
    let (mraw, m4k, m1k, m64k) = (
        median(&mut raw),
        median(&mut e4k),
        median(&mut e1k),
        median(&mut e64k),
    );
    let (mrraw, mr4k, mr1k) = (median(&mut rraw), median(&mut r4k), median(&mut r1k));
    println!(
        "medians: seq raw {:.2}s, engine 4K/4K {:.2}s, 1K/4K {:.2}s, 4K/64K {:.2}s (ratio {:.2}); rand raw {:.3}s, engine 4K {:.3}s, 1K {:.3}s",
        mraw,
        m4k,
        m1k,
        m64k,
        mraw / m64k,
        mrraw,
        mr4k,
        mr1k
    );
    let bios_per_mib = bios as f64 / (bytes as f64 / MIB as f64);
    let bytes_per_block = std::mem::size_of::<u8>() + std::mem::size_of::<u64>();
    println!(
        "memory: io_end {} bytes (+16 per unwritten range), {} bytes of state per block",
        io_end_size(),
        bytes_per_block
    );
    println!(
        "writeback: seq_ratio={:.2} seq_1k_ratio={:.2} rand_ratio={:.2} rand_1k_ratio={:.2} bios_per_mib={:.2} ioend_bytes={}",
        mraw / m4k,
        mraw / m1k,
        mrraw / mr4k,
        mrraw / mr1k,
        bios_per_mib,
        io_end_size()
    );
}
