//! Property test: random sequences of write / overwrite / truncate / fallocate / writepages /
//! fsync (with cache drops), random completion order and injected write errors, for every
//! (page size, block size) pair in {4K, 16K, 64K} × {1K, 2K, 4K}, on three devices: a memory
//! device whose completions a background thread releases in a random order, a FileDevice
//! (thread pool) and a UringDevice. Checked against a model after every fsync:
//! - fsync reports an error exactly when a write failed since that handle's last fsync;
//! - no page is under writeback, no block keeps ASYNC_WRITE, every page's writeback ended as
//!   many times as it started (and the engine saw no double end);
//! - reads equal the model; on the device every block whose write succeeded equals the model,
//!   holes are zero, and data that only an unwritten extent holds exists only after a failure;
//! - every conversion happened after all writes of its blocks completed, none failed;
//! - reservations are back to zero.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{geometries, pattern};
use ext4kit_blockdev::{
    Bio, BioOp, BlockDevice, FileDevice, Geometry, IoError, MemDevice, UringDevice,
};
use ext4kit_pagecache::testing::SimpleMapper;
use ext4kit_pagecache::{BlockState, Config, PageCache, PageFlags, WritebackControl};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestRunner};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FS_BYTES: u64 = 4 << 20;
const MAX_FILE: u64 = 256 << 10;

#[derive(Debug, Clone)]
enum Op {
    Write { off: u64, len: usize, seed: u64 },
    Truncate { size: u64 },
    Fallocate { off: u64, len: u64, keep: bool },
    Punch { off: u64, len: u64 },
    Writepages { sync: bool, nr: i64 },
    Fsync { handle: usize, drop_cache: bool },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..MAX_FILE, 1usize..24_000, any::<u64>()).prop_map(|(off, len, seed)| Op::Write { off, len, seed }),
        1 => (0..MAX_FILE).prop_map(|size| Op::Truncate { size }),
        1 => (0..MAX_FILE, 1..40_000u64, any::<bool>()).prop_map(|(off, len, keep)| Op::Fallocate { off, len, keep }),
        1 => (0..MAX_FILE, 1..40_000u64).prop_map(|(off, len)| Op::Punch { off, len }),
        2 => (any::<bool>(), 1..40i64).prop_map(|(sync, nr)| Op::Writepages { sync, nr }),
        2 => (0..2usize, any::<bool>()).prop_map(|(handle, drop_cache)| Op::Fsync { handle, drop_cache }),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    ops: Vec<Op>,
    /// Per write bio, in submission order: fail it?
    fails: Vec<bool>,
    seed: u64,
    alloc_unwritten: bool,
    max_alloc: Option<u64>,
    gap: u64,
    /// Dirty limit for the flusher thread (background writeback racing the test's ops).
    dirty_limit: Option<usize>,
    /// Cache limit (clean pages evicted behind the test's back).
    cache_limit: Option<usize>,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(op_strategy(), 1..24),
        prop::collection::vec(prop::bool::weighted(0.12), 0..64),
        any::<u64>(),
        any::<bool>(),
        prop::option::of(1..9u64),
        0..3u64,
        prop::option::of(4096usize..65536),
        prop::option::of(65536usize..262_144),
    )
        .prop_map(
            |(ops, fails, seed, alloc_unwritten, max_alloc, gap, dirty_limit, cache_limit)| Case {
                ops,
                fails,
                seed,
                alloc_unwritten,
                max_alloc,
                gap,
                dirty_limit,
                cache_limit,
            },
        )
}

/// Tracks writes per physical block and fails write bios according to the plan; with
/// `shuffle`, holds bios and completes them from a background thread in a random order.
struct Chaos {
    inner: Arc<dyn BlockDevice>,
    dev_per_fs: u64,
    plan: Mutex<VecDeque<bool>>,
    track: Mutex<Track>,
    nr_failed: AtomicU64,
    step: AtomicU64,
    history: Mutex<Vec<(u64, u64, String)>>,
    queue: Option<Arc<BioQueue>>,
    stop: Arc<AtomicBool>,
}

#[derive(Default)]
struct Track {
    in_flight: HashMap<u64, u32>,
    failed: HashSet<u64>,
}

impl std::fmt::Debug for Chaos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Chaos")
    }
}

impl Chaos {
    fn new(
        inner: Arc<dyn BlockDevice>,
        bs: u64,
        plan: Vec<bool>,
        shuffle_seed: Option<u64>,
    ) -> Arc<Chaos> {
        let dev_per_fs = bs / u64::from(inner.geometry().block_size);
        let stop = Arc::new(AtomicBool::new(false));
        let queue = shuffle_seed.map(|seed| {
            let q: Arc<BioQueue> = Arc::default();
            let (q2, inner2, stop2) = (Arc::clone(&q), Arc::clone(&inner), Arc::clone(&stop));
            thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed);
                loop {
                    let item = {
                        let mut items = q2.0.lock().unwrap();
                        if items.is_empty() {
                            if stop2.load(Ordering::Acquire) {
                                return;
                            }
                            let _ = q2.1.wait_timeout(items, Duration::from_millis(1)).unwrap();
                            continue;
                        }
                        if items.len() < 3 && rng.random_bool(0.7) {
                            // Let a few pile up so the order can be mixed.
                            drop(items);
                            thread::sleep(Duration::from_micros(50));
                            continue;
                        }
                        let i = rng.random_range(0..items.len());
                        items.swap_remove(i)
                    };
                    let (bio, fail) = item;
                    if fail {
                        let op = bio.op();
                        bio.complete(Err(IoError::Injected { op, block: 0 }));
                    } else {
                        inner2.submit(bio);
                    }
                }
            });
            q
        });
        Arc::new(Chaos {
            inner,
            dev_per_fs,
            plan: Mutex::new(plan.into()),
            track: Mutex::new(Track::default()),
            nr_failed: AtomicU64::new(0),
            step: AtomicU64::new(0),
            history: Mutex::new(Vec::new()),
            queue,
            stop,
        })
    }

    fn nr_failed(&self) -> u64 {
        self.nr_failed.load(Ordering::SeqCst)
    }

    /// Whether a block is being written or its last write failed.
    fn unsafe_to_convert(&self, pblk: u64) -> Option<&'static str> {
        let t = self.track.lock().unwrap();
        if t.in_flight.get(&pblk).copied().unwrap_or(0) > 0 {
            return Some("write still in flight");
        }
        if t.failed.contains(&pblk) {
            return Some("last write failed");
        }
        None
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

struct ChaosRef(Arc<Chaos>);

impl std::fmt::Debug for ChaosRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChaosRef")
    }
}

impl BlockDevice for ChaosRef {
    fn geometry(&self) -> Geometry {
        self.0.inner.geometry()
    }

    fn submit(&self, mut bio: Bio) {
        let c = &self.0;
        let mut fail = false;
        if bio.op() == BioOp::Write {
            fail = c.plan.lock().unwrap().pop_front().unwrap_or(false);
            let bs = u64::from(c.inner.geometry().block_size) * c.dev_per_fs;
            let first = bio.start_block() / c.dev_per_fs;
            let n = bio.len_bytes() as u64 / bs;
            {
                let mut t = c.track.lock().unwrap();
                for p in first..first + n {
                    *t.in_flight.entry(p).or_default() += 1;
                }
            }
            let orig = bio.take_end_io().unwrap();
            let c2 = Arc::clone(c);
            let step = c.step.load(Ordering::SeqCst);
            let summary: Vec<(u64, String)> = {
                let bsz = bs as usize;
                let all: Vec<u8> = bio
                    .vecs()
                    .iter()
                    .flat_map(|v| v.bytes().iter().copied())
                    .collect();
                (0..n)
                    .map(|k| {
                        let blk = &all[k as usize * bsz..(k as usize + 1) * bsz];
                        let nz = blk.iter().rposition(|&x| x != 0).map_or(0, |p| p + 1);
                        (first + k, format!("last-nonzero-end={nz}"))
                    })
                    .collect()
            };
            bio.set_end_io(Box::new(move |bio, status| {
                {
                    let mut t = c2.track.lock().unwrap();
                    for p in first..first + n {
                        *t.in_flight.get_mut(&p).unwrap() -= 1;
                        if status.is_err() {
                            t.failed.insert(p);
                        } else {
                            t.failed.remove(&p);
                        }
                    }
                }
                if status.is_err() {
                    c2.nr_failed.fetch_add(1, Ordering::SeqCst);
                }
                {
                    let mut h = c2.history.lock().unwrap();
                    for (p, d) in &summary {
                        h.push((
                            *p,
                            step,
                            format!(
                                "{d} ok={} done-at-step={}",
                                status.is_ok(),
                                c2.step.load(Ordering::SeqCst)
                            ),
                        ));
                    }
                }
                orig(bio, status)
            }));
        }
        match &c.queue {
            Some(q) => {
                q.0.lock().unwrap().push((bio, fail));
                q.1.notify_one();
            }
            None if fail => {
                let op = bio.op();
                bio.complete(Err(IoError::Injected { op, block: 0 }));
            }
            None => c.inner.submit(bio),
        }
    }

    fn kind(&self) -> &'static str {
        "chaos"
    }
}

/// Makes `mapper` check, at every conversion, that all writes of the converted blocks
/// completed and none failed; returns where it writes what it found.
fn check_conversions(mapper: &SimpleMapper, chaos: Arc<Chaos>) -> Arc<Mutex<Vec<String>>> {
    let problems = Arc::new(Mutex::new(Vec::new()));
    let found = Arc::clone(&problems);
    mapper.on_convert(move |m, ino, ranges| {
        for r in ranges {
            for lblk in r.lblk..r.lblk + r.len {
                if let Some((pblk, _)) = m.lookup(ino, lblk) {
                    if let Some(why) = chaos.unsafe_to_convert(pblk) {
                        found
                            .lock()
                            .unwrap()
                            .push(format!("converted block {lblk} (pblk {pblk}): {why}"));
                    }
                }
            }
        }
        Ok(())
    });
    problems
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    ShuffledMemory,
    File,
    Uring,
}

const INO: u64 = 42;

/// Bios held back by the shuffling device (with "fail it?"), and its wake-up.
type BioQueue = (Mutex<Vec<(Bio, bool)>>, std::sync::Condvar);

/// Reads one block of the device by number (to explain a mismatch).
type DeviceReader = Box<dyn Fn(u64) -> Vec<u8>>;

struct EventLog {
    tx: Mutex<std::sync::mpsc::Sender<ext4kit_pagecache::Event>>,
    /// Kept so that sends never fail; the events that matter are copied into `steps`.
    _rx: Mutex<std::sync::mpsc::Receiver<ext4kit_pagecache::Event>>,
    steps: Mutex<Vec<String>>,
}

impl Default for EventLog {
    fn default() -> EventLog {
        let (tx, rx) = std::sync::mpsc::channel();
        EventLog {
            tx: Mutex::new(tx),
            _rx: Mutex::new(rx),
            steps: Mutex::new(Vec::new()),
        }
    }
}

thread_local! {
    static TX: std::cell::RefCell<Option<(usize, std::sync::mpsc::Sender<ext4kit_pagecache::Event>)>> = const { std::cell::RefCell::new(None) };
}

impl ext4kit_pagecache::Observer for EventLog {
    fn event(&self, ev: &ext4kit_pagecache::Event) {
        let me = self as *const EventLog as usize;
        TX.with(|t| {
            let mut t = t.borrow_mut();
            if t.as_ref().is_none_or(|(id, _)| *id != me) {
                *t = Some((me, self.tx.lock().unwrap().clone()));
            }
            if let Some((_, tx)) = t.as_ref() {
                let _ = tx.send(ev.clone());
            }
        });
    }
}

struct Harness {
    log: Arc<EventLog>,
    bs: usize,
    ps: usize,
    cache: PageCache,
    chaos: Arc<Chaos>,
    mapper: Arc<SimpleMapper>,
    /// What the conversion check found.
    problems: Arc<Mutex<Vec<String>>>,
    read_dev: DeviceReader,
    _tmp: Option<tempfile::NamedTempFile>,
}

fn harness(ps: usize, bs: usize, backend: Backend, case: &Case) -> Result<Harness, TestCaseError> {
    let nr_fs = FS_BYTES / bs as u64;
    let (inner, read_dev, tmp): (Arc<dyn BlockDevice>, DeviceReader, _) = match backend {
        Backend::ShuffledMemory => {
            let mem = MemDevice::new(512, FS_BYTES / 512);
            let m2 = mem.clone();
            let read: Box<dyn Fn(u64) -> Vec<u8>> = Box::new(move |pblk| {
                m2.with_image(|img| img[pblk as usize * bs..(pblk as usize + 1) * bs].to_vec())
            });
            (Arc::new(mem), read, None)
        }
        Backend::File | Backend::Uring => {
            let tmp = tempfile::NamedTempFile::new().unwrap();
            tmp.as_file().set_len(FS_BYTES).unwrap();
            let dev: Arc<dyn BlockDevice> = if matches!(backend, Backend::File) {
                Arc::new(FileDevice::open(tmp.path(), true, 512).unwrap())
            } else {
                match UringDevice::open(tmp.path(), true, 512) {
                    Ok(d) => Arc::new(d),
                    Err(e) => {
                        if std::env::var_os("EXT4KIT_REQUIRE_URING").is_some() {
                            panic!("io_uring required: {e}");
                        }
                        return Err(TestCaseError::reject(format!("no io_uring: {e}")));
                    }
                }
            };
            let path = tmp.path().to_path_buf();
            let read: Box<dyn Fn(u64) -> Vec<u8>> = Box::new(move |pblk| {
                use std::os::unix::fs::FileExt;
                let f = std::fs::File::open(&path).unwrap();
                let mut b = vec![0u8; bs];
                f.read_exact_at(&mut b, pblk * bs as u64).unwrap();
                b
            });
            (dev, read, Some(tmp))
        }
    };
    let shuffle = matches!(backend, Backend::ShuffledMemory).then_some(case.seed);
    let chaos = Chaos::new(inner, bs as u64, case.fails.clone(), shuffle);
    let mapper = Arc::new(SimpleMapper::new(8, nr_fs - 8));
    let problems = check_conversions(&mapper, Arc::clone(&chaos));
    mapper.set_max_alloc(case.max_alloc);
    mapper.set_gap(case.gap);
    let mut cfg = Config::new(ps, bs);
    cfg.alloc_unwritten = case.alloc_unwritten;
    cfg.max_bio_bytes = 32 << 10;
    cfg.dirty_limit_bytes = case.dirty_limit;
    cfg.cache_limit_bytes = case.cache_limit;
    let log = Arc::new(EventLog::default());
    let cache = PageCache::with_observer(
        cfg,
        Arc::new(ChaosRef(Arc::clone(&chaos))),
        mapper.clone(),
        Some(log.clone()),
    )
    .unwrap();
    Ok(Harness {
        log,
        bs,
        ps,
        cache,
        chaos,
        mapper,
        problems,
        read_dev,
        _tmp: tmp,
    })
}

fn model_block(model: &[u8], bs: usize, b: u64) -> Vec<u8> {
    let start = (b as usize * bs).min(model.len());
    let end = ((b as usize + 1) * bs).min(model.len());
    let mut v = model[start..end].to_vec();
    v.resize(bs, 0);
    v
}

/// The checks of a quiescent point (right after fsync).
///
/// `adopted` are blocks whose contents the model took from the disk after a failed write was
/// evicted: whatever the disk held there (in written-allocation mode, old contents of the block)
/// may also lie past EOF, so only the bytes inside the file are compared.
fn check_quiescent(
    h: &Harness,
    m: &ext4kit_pagecache::Mapping,
    model: &[u8],
    adopted: &HashSet<u64>,
    ctx: &str,
) -> Result<(), TestCaseError> {
    let bs = h.bs;
    prop_assert_eq!(
        h.cache.stats().violations,
        0,
        "{}: engine invariant violations",
        ctx
    );
    let problems = h.problems.lock().unwrap().clone();
    prop_assert!(
        problems.is_empty(),
        "{}: conversion before IO finished: {:?}",
        ctx,
        problems
    );
    prop_assert!(
        h.mapper.errors().is_empty(),
        "{}: mapper: {:?}",
        ctx,
        h.mapper.errors()
    );
    prop_assert_eq!(m.size(), model.len() as u64, "{}", ctx);
    let mut err_blocks = HashSet::new();
    for s in m.snapshots() {
        prop_assert!(
            !s.flags.contains(PageFlags::WRITEBACK),
            "{}: page {} still under writeback",
            ctx,
            s.index
        );
        prop_assert_eq!(
            s.wb_started,
            s.wb_ended,
            "{}: page {} writeback started {} ended {}",
            ctx,
            s.index,
            s.wb_started,
            s.wb_ended
        );
        for (i, b) in s.blocks.iter().enumerate() {
            prop_assert!(
                !b.contains(BlockState::ASYNC_WRITE),
                "{}: page {} block {} kept ASYNC_WRITE",
                ctx,
                s.index,
                i
            );
            prop_assert!(
                !b.intersects(BlockState::DIRTY | BlockState::DELAY),
                "{}: page {} block {} {:?} after fsync",
                ctx,
                s.index,
                i,
                b
            );
            if b.contains(BlockState::WRITE_IO_ERROR) {
                err_blocks.insert(s.index * (h.ps / bs) as u64 + i as u64);
            }
        }
    }
    prop_assert_eq!((m.nr_dirty(), m.nr_towrite()), (0, 0), "{}", ctx);
    prop_assert_eq!(m.reserved_blocks(), 0, "{}", ctx);
    prop_assert_eq!(h.mapper.total_reserved(), 0, "{}", ctx);
    let mut back = vec![0u8; model.len()];
    m.read(0, &mut back)
        .map_err(|e| TestCaseError::fail(format!("{ctx}: read: {e}")))?;
    if back != model {
        let d: Vec<usize> = (0..model.len()).filter(|&i| back[i] != model[i]).collect();
        let b0 = (d[0] / bs) as u64;
        let disk = h
            .mapper
            .lookup(INO, b0)
            .map(|(p, u)| (p, u, (h.read_dev)(p)[d[0] % bs]));
        let hist: Vec<(u64, u64, String)> = match disk {
            Some((p, _, _)) => h
                .chaos
                .history
                .lock()
                .unwrap()
                .iter()
                .filter(|x| x.0 == p)
                .cloned()
                .collect(),
            None => vec![],
        };
        eprintln!(
            "HISTORY of block {b0}: {hist:?}\nEXTENTS {:?}",
            h.mapper.extents(INO)
        );
        prop_assert!(
            false,
            "{}: read differs from the model at {} bytes, {:?}..{:?}; block {}: read {} model {} disk {:?}; page {:?}",
            ctx,
            d.len(),
            d.first(),
            d.last(),
            b0,
            back[d[0]],
            model[d[0]],
            disk,
            m.page_snapshot(d[0] as u64 / h.ps as u64)
        );
    }
    for b in 0..(model.len() as u64).div_ceil(bs as u64) {
        let want = model_block(model, bs, b);
        match h.mapper.lookup(INO, b) {
            Some((pblk, false)) => {
                if !err_blocks.contains(&b) {
                    let mut disk = (h.read_dev)(pblk);
                    let mut want = want.clone();
                    if adopted.contains(&b) {
                        let inside = (model.len() - (b as usize * bs).min(model.len())).min(bs);
                        disk.truncate(inside);
                        want.truncate(inside);
                    }
                    prop_assert!(
                        disk == want,
                        "{}: block {} (pblk {}) on disk differs from the model",
                        ctx,
                        b,
                        pblk
                    );
                }
            }
            Some((_, true)) => {
                if !err_blocks.contains(&b) && want.iter().any(|&x| x != 0) {
                    prop_assert!(
                        h.chaos.nr_failed() > 0,
                        "{}: block {} holds data only in an unwritten extent, yet no write failed",
                        ctx,
                        b
                    );
                }
            }
            None => prop_assert!(
                want.iter().all(|&x| x == 0),
                "{}: block {} is a hole but the model has data",
                ctx,
                b
            ),
        }
    }
    Ok(())
}

fn run_case(ps: usize, bs: usize, backend: Backend, case: &Case) -> Result<(), TestCaseError> {
    let h = harness(ps, bs, backend, case)?;
    let m = h.cache.mapping(INO, 0, 0);
    let handles = [m.open(), m.open()];
    let mut seen = [0u64; 2];
    let mut model: Vec<u8> = Vec::new();
    let mut adopted: HashSet<u64> = HashSet::new();
    for (step, op) in case.ops.iter().enumerate() {
        let ctx = format!("{ps}/{bs} {backend:?} step {step} {op:?}");
        h.chaos.step.store(step as u64, Ordering::SeqCst);
        h.log
            .steps
            .lock()
            .unwrap()
            .push(format!("STEP {step} {op:?}"));
        match op {
            Op::Write { off, len, seed } => {
                let data = pattern(*seed, *len);
                m.write(*off, &data)
                    .map_err(|e| TestCaseError::fail(format!("{ctx}: {e}")))?;
                let end = *off as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[*off as usize..end].copy_from_slice(&data);
            }
            Op::Truncate { size } => {
                m.truncate(*size)
                    .map_err(|e| TestCaseError::fail(format!("{ctx}: {e}")))?;
                model.resize(*size as usize, 0);
            }
            Op::Fallocate { off, len, keep } => {
                m.fallocate(*off, *len, *keep)
                    .map_err(|e| TestCaseError::fail(format!("{ctx}: {e}")))?;
                let end = (off + len) as usize;
                if !keep && model.len() < end {
                    model.resize(end, 0);
                }
            }
            Op::Punch { off, len } => {
                m.punch_hole(*off, *len)
                    .map_err(|e| TestCaseError::fail(format!("{ctx}: {e}")))?;
                let end = ((off + len) as usize).min(model.len());
                if (*off as usize) < end {
                    model[*off as usize..end].fill(0);
                }
            }
            Op::Writepages { sync, nr } => {
                let mut wbc = if *sync {
                    WritebackControl::sync_all()
                } else {
                    WritebackControl::background(*nr)
                };
                m.writepages(&mut wbc)
                    .map_err(|e| TestCaseError::fail(format!("{ctx}: {e}")))?;
            }
            Op::Fsync { handle, drop_cache } => {
                let r = handles[*handle].fsync();
                let total = h.chaos.nr_failed();
                let expect_err = total > seen[*handle];
                seen[*handle] = total;
                prop_assert_eq!(
                    r.is_err(),
                    expect_err,
                    "{}: fsync returned {:?} with {} failures",
                    ctx,
                    r,
                    total
                );
                check_quiescent(&h, &m, &model, &adopted, &ctx)?;
                if *drop_cache {
                    let err_blocks: HashSet<u64> = m
                        .snapshots()
                        .iter()
                        .flat_map(|s| {
                            let bpp = (ps / bs) as u64;
                            s.blocks
                                .iter()
                                .enumerate()
                                .filter(|(_, b)| b.contains(BlockState::WRITE_IO_ERROR))
                                .map(move |(i, _)| s.index * bpp + i as u64)
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    m.invalidate_clean();
                    prop_assert_eq!(m.nr_pages(), 0, "{}: a clean page survived the drop", ctx);
                    // What the disk holds is now the truth; it may differ from the model only
                    // where a write failed.
                    for b in 0..(model.len() as u64).div_ceil(bs as u64) {
                        let disk = match h.mapper.lookup(INO, b) {
                            Some((pblk, false)) => (h.read_dev)(pblk),
                            _ => vec![0u8; bs],
                        };
                        let want = model_block(&model, bs, b);
                        if disk != want {
                            prop_assert!(
                                h.chaos.nr_failed() > 0 || err_blocks.contains(&b),
                                "{}: block {} lost without a failure",
                                ctx,
                                b
                            );
                            let start = b as usize * bs;
                            let end = (start + bs).min(model.len());
                            model[start..end].copy_from_slice(&disk[..end - start]);
                            adopted.insert(b);
                        }
                    }
                    let mut back = vec![0u8; model.len()];
                    m.read(0, &mut back)
                        .map_err(|e| TestCaseError::fail(format!("{ctx}: read: {e}")))?;
                    prop_assert!(
                        back == model,
                        "{}: read after drop differs from the disk",
                        ctx
                    );
                }
            }
        }
    }
    // Final: no more failures; both handles sync; everything the model holds is on disk.
    h.chaos.plan.lock().unwrap().clear();
    for (i, hd) in handles.iter().enumerate() {
        let r = hd.fsync();
        let total = h.chaos.nr_failed();
        prop_assert_eq!(r.is_err(), total > seen[i], "final fsync {}: {:?}", i, r);
        seen[i] = total;
    }
    check_quiescent(
        &h,
        &m,
        &model,
        &adopted,
        &format!("{ps}/{bs} {backend:?} final"),
    )?;
    h.cache.shutdown();
    Ok(())
}

fn run_backend(backend: Backend, cases: u32) {
    for (ps, bs) in geometries() {
        let shrink = std::env::var("EXT4KIT_MODEL_SHRINK")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256);
        let mut runner = TestRunner::new(PtConfig {
            cases,
            failure_persistence: None,
            max_shrink_iters: shrink,
            ..PtConfig::default()
        });
        let result = runner.run(&case_strategy(), |case| run_case(ps, bs, backend, &case));
        if let Err(e) = result {
            panic!("{ps}/{bs} {backend:?}: {e}");
        }
    }
}

fn cases() -> u32 {
    std::env::var("EXT4KIT_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

#[test]
fn model_shuffled_memory_device() {
    run_backend(Backend::ShuffledMemory, cases());
}

#[test]
fn model_file_device_threads() {
    run_backend(Backend::File, cases() / 2);
}

#[test]
fn model_uring_device() {
    run_backend(Backend::Uring, cases() / 2);
}
