//! Shared rig for the engine tests: a cache over a memory device (optionally deferred or
//! faulty), a SimpleMapper, and an observer that records every event.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use ext4kit_blockdev::{BlockDevice, DeferredDevice, MemDevice};
use ext4kit_pagecache::testing::SimpleMapper;
use ext4kit_pagecache::{Config, Event, Mapping, Observer, PageCache};

/// Records events.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<Event>>);

impl Observer for Recorder {
    fn event(&self, ev: &Event) {
        self.0.lock().unwrap().push(ev.clone());
    }
}

impl Recorder {
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
    pub fn count(&self, f: impl Fn(&Event) -> bool) -> usize {
        self.0.lock().unwrap().iter().filter(|e| f(e)).count()
    }
    /// (starts, ends) of writeback for page `index` of `ino`.
    pub fn wb_cycles(&self, ino: u64, index: u64) -> (usize, usize) {
        let s = self.count(
            |e| matches!(e, Event::WritebackStart { ino: i, index: x } if *i == ino && *x == index),
        );
        let n = self.count(
            |e| matches!(e, Event::WritebackEnd { ino: i, index: x } if *i == ino && *x == index),
        );
        (s, n)
    }
}

/// Device blocks are 512 bytes; the filesystem owns blocks 16.. of `nr_fs_blocks`.
pub struct Rig {
    pub cfg: Config,
    pub mem: MemDevice,
    pub dev: Arc<dyn BlockDevice>,
    pub mapper: Arc<SimpleMapper>,
    pub rec: Arc<Recorder>,
    pub cache: PageCache,
}

pub const FIRST_DATA_BLOCK: u64 = 16;

impl Rig {
    pub fn new(
        cfg: Config,
        nr_fs_blocks: u64,
        wrap: impl FnOnce(MemDevice) -> Arc<dyn BlockDevice>,
    ) -> Rig {
        let mem = MemDevice::new(512, nr_fs_blocks * (cfg.block_size as u64 / 512));
        let dev = wrap(mem.clone());
        let mapper = Arc::new(SimpleMapper::new(
            FIRST_DATA_BLOCK,
            nr_fs_blocks - FIRST_DATA_BLOCK,
        ));
        let rec = Arc::new(Recorder::default());
        let cache = PageCache::with_observer(
            cfg.clone(),
            Arc::clone(&dev),
            mapper.clone(),
            Some(rec.clone()),
        )
        .unwrap();
        Rig {
            cfg,
            mem,
            dev,
            mapper,
            rec,
            cache,
        }
    }

    /// A rig whose device parks every bio until the test releases it.
    pub fn deferred(cfg: Config, nr_fs_blocks: u64) -> (Rig, DeferredDevice) {
        let mut slot = None;
        let rig = Rig::new(cfg, nr_fs_blocks, |mem| {
            let d = DeferredDevice::new(Arc::new(mem));
            slot = Some(d.clone());
            Arc::new(d)
        });
        (rig, slot.unwrap())
    }

    pub fn inline(cfg: Config, nr_fs_blocks: u64) -> Rig {
        Rig::new(cfg, nr_fs_blocks, |mem| Arc::new(mem))
    }

    /// The bytes of physical block `pblk` on the device.
    pub fn disk_block(&self, pblk: u64) -> Vec<u8> {
        let bs = self.cfg.block_size;
        self.mem
            .with_image(|img| img[pblk as usize * bs..(pblk as usize + 1) * bs].to_vec())
    }

    /// The bytes of `ino`'s logical block `lblk` on disk (zeros for holes and unwritten blocks).
    pub fn disk_file_block(&self, ino: u64, lblk: u64) -> Vec<u8> {
        match self.mapper.lookup(ino, lblk) {
            Some((pblk, false)) => self.disk_block(pblk),
            _ => vec![0; self.cfg.block_size],
        }
    }

    /// The file's contents as the disk has them, for `len` bytes.
    pub fn disk_file(&self, ino: u64, len: u64) -> Vec<u8> {
        let bs = self.cfg.block_size as u64;
        let mut out = Vec::new();
        for lblk in 0..len.div_ceil(bs) {
            out.extend(self.disk_file_block(ino, lblk));
        }
        out.truncate(len as usize);
        out
    }

    pub fn mapping(&self, ino: u64) -> Mapping {
        self.cache.mapping(ino, 0, 0)
    }
}

pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn geometries() -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    for ps in [4096, 16384, 65536] {
        for bs in [1024, 2048, 4096] {
            v.push((ps, bs));
        }
    }
    v
}
