//! Profiling aid: one engine workload on a file device (default /dev/shm), for `perf record`.
//! Usage: profile_writeback seq|rand [block_size] [page_size]
use std::sync::Arc;
use std::time::Instant;

use ext4kit_blockdev::open_file_device;
use ext4kit_pagecache::testing::SimpleMapper;
use ext4kit_pagecache::{Config, PageCache};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("seq");
    let bs: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(4096);
    let ps: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(4096);
    let path_s =
        std::env::var("PROFILE_IMG").unwrap_or_else(|_| "/dev/shm/ext4kit-profile.img".into());
    let path = std::path::Path::new(&path_s);
    let size: u64 = 1100 << 20;
    let f = std::fs::File::create(path).expect("create");
    f.set_len(size).expect("size");
    let (dev, _) = open_file_device(path, true, 512).expect("dev");
    let mapper = Arc::new(SimpleMapper::new(0, size / bs as u64));
    let mut cfg = Config::new(ps, bs);
    cfg.dirty_limit_bytes = Some(
        std::env::var("DIRTY_MB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64usize)
            << 20,
    );
    cfg.cache_limit_bytes = std::env::var("CACHE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(|m: usize| m << 20);
    let cache = PageCache::new(cfg, dev, mapper).expect("cache");
    let m = cache.mapping(1, 0, 0);
    let h = m.open();
    let buf = vec![0x5au8; 1 << 20];
    if mode == "mem" {
        // Cached overwrites only: no IO at all.
        let dev = Arc::new(ext4kit_blockdev::MemDevice::new(512, 600 << 11));
        let mapper = Arc::new(SimpleMapper::new(0, (300 << 20) / bs as u64));
        let cache = PageCache::new(Config::new(ps, bs), dev, mapper).expect("cache");
        let m = cache.mapping(1, 0, 0);
        let t = Instant::now();
        for i in 0..256u64 {
            m.write(i << 20, &buf).expect("write");
        }
        println!("fill 256 MiB into cache: {:.3}s", t.elapsed().as_secs_f64());
        let t = Instant::now();
        m.open().fsync().expect("fsync");
        println!(
            "fsync 256 MiB to memory device: {:.3}s",
            t.elapsed().as_secs_f64()
        );
        let mut x = 12345u64;
        let t = Instant::now();
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            m.write((x % 65536) * 4096, &buf[..4096]).expect("write");
        }
        println!(
            "200k cached 4K overwrites: {:.3}s",
            t.elapsed().as_secs_f64()
        );
        return;
    }
    if mode == "seq3" {
        // Three runs in one process: the later ones see a warm heap (as the bench's later runs).
        drop((m, h, cache));
        for _ in 0..3 {
            let f = std::fs::File::create(path).expect("create");
            f.set_len(size).expect("size");
            drop(f);
            let (dev, _) = open_file_device(path, true, 512).expect("dev");
            let mapper = Arc::new(SimpleMapper::new(0, size / bs as u64));
            let mut cfg = Config::new(ps, bs);
            cfg.dirty_limit_bytes = Some(64 << 20);
            let cache = PageCache::new(cfg, dev, mapper).expect("cache");
            let m = cache.mapping(1, 0, 0);
            let h = m.open();
            rustix::fs::sync();
            let t = Instant::now();
            for i in 0..1024u64 {
                m.write(i << 20, &buf).expect("write");
            }
            let w = t.elapsed().as_secs_f64();
            m.writepages(&mut ext4kit_pagecache::WritebackControl::sync_all())
                .expect("writepages");
            let sub = t.elapsed().as_secs_f64();
            m.wait_writeback();
            let io = t.elapsed().as_secs_f64();
            h.fsync().expect("fsync");
            println!(
                "seq: {:.3}s (writes {w:.3}s, submitted {sub:.3}s, IO done {io:.3}s)",
                t.elapsed().as_secs_f64()
            );
            cache.shutdown();
        }
        return;
    }
    if mode == "seq" {
        rustix::fs::sync();
        let t = Instant::now();
        for i in 0..1024u64 {
            m.write(i << 20, &buf).expect("write");
        }
        let w = t.elapsed().as_secs_f64();
        h.fsync().expect("fsync");
        println!("seq: {:.3}s (writes {w:.3}s)", t.elapsed().as_secs_f64());
    } else {
        for i in 0..256u64 {
            m.write(i << 20, &buf).expect("write");
        }
        h.fsync().expect("fsync");
        let mut x = 12345u64;
        let t = Instant::now();
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            m.write((x % 65536) * 4096, &buf[..4096]).expect("write");
        }
        let w = t.elapsed().as_secs_f64();
        h.fsync().expect("fsync");
        println!(
            "rand: writes {:.3}s total {:.3}s",
            w,
            t.elapsed().as_secs_f64()
        );
    }
    let _ = std::fs::remove_file(path);
}

#[allow(dead_code)]
fn unused() {}
