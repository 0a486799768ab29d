//! The ext4kit writeback engine.
//!
//! A page cache whose pages hold several filesystem blocks, with delayed allocation and the
//! buffered-writeback IO path of Linux ext4 as Jan Kara reworked it in 2013 ("ext4: Make
//! ext4_bio_write_page() use BH_Async_Write flags instead page pointers from ext4_io_end" and
//! the series after it). The code is organised so that it can be read beside
//! `fs/ext4/page-io.c` and the writeback part of `fs/ext4/inode.c`:
//!
//! | kernel | here |
//! |---|---|
//! | `ext4_da_write_begin` / `ext4_da_write_end` | [`Mapping::write_begin`] / [`Mapping::write_end`] |
//! | `ext4_writepages` → `mpage_prepare_extent_to_map` → `mpage_map_and_submit_extent` | [`Mapping::writepages`] → `writeback::prepare_extent_to_map` → `writeback::map_and_submit_extent` |
//! | `ext4_bio_write_folio` (mark loop, then submit loop) | `writeback::bio_write_page` |
//! | `io_submit_add_bh`, `io_submit_init_bio`, `ext4_io_submit` | `writeback::io_submit_add_block`, `io_submit_init_bio`, `io_submit` |
//! | `ext4_io_end` (refcounted, shared by the bios of an extent) | `ioend::IoEnd` behind an `Arc` |
//! | `ext4_end_bio` / `ext4_finish_bio` / `ext4_release_io_end` | `ioend::end_bio` / `finish_bio` / `release_io_end` |
//! | rsv-conversion workqueue, `ext4_end_io_end` | the conversion worker thread, `ioend::end_io_end` |
//! | `mapping_set_error`, `file_check_and_advance_wb_err` | [`ErrSeq`], [`FileHandle::fsync`] |
//!
//! The engine knows nothing of ext4's on-disk format: it asks a [`BlockMapper`] (implemented by
//! the filesystem) to reserve, allocate, convert and record sizes, and it talks to storage only
//! through an `ext4kit_blockdev::BlockDevice`.
//!
//! # Guarantees (kernel-io-path.md §3.4)
//! - Every block a page will write is marked ASYNC_WRITE before the first one enters a bio.
//! - Each ASYNC_WRITE bit is cleared exactly once, under the page's state lock, by the
//!   completion of the bio segment that carries it; the page's writeback ends when none is left,
//!   exactly once per writeback cycle.
//! - One `IoEnd` per mapped extent, shared by its bios (the writer holds one reference, each
//!   bio one); unwritten ranges are converted only after every bio completed and none failed,
//!   and the pages stay under writeback until the conversion returned. One predicate
//!   (`IoEnd::defer_completion`) decides whether completion is deferred.
//! - A failed write sets WRITE_IO_ERROR on its blocks and records the error on the mapping; each
//!   handle's `fsync` reports it once. A failed page is not redirtied; a failure before
//!   submission puts DIRTY back.
//! - Pages are stable while under writeback: writers wait for writeback to end.

#![deny(unsafe_code)]

mod errseq;
mod flusher;
mod ioend;
mod mapper;
mod mapping;
mod page;
mod state;
pub mod testing;
mod tree;
mod writeback;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::{self, JoinHandle, ThreadId};

use crossbeam_channel::{Sender, unbounded};
use ext4kit_blockdev::{BlockDevice, IoError};
use parking_lot::Mutex;

pub use errseq::ErrSeq;
pub use mapper::{BlockMapper, Extent, ExtentKind, MapError, MapFlags, UnwrittenRange};
pub use mapping::{FileHandle, Mapping, WeakMapping, WriteGuard};
pub use page::{INVALID_PBLK, PageSnapshot};
pub use state::{BlockState, PageFlags};
pub use writeback::{SyncMode, WritebackControl};

use ioend::IoEnd;
pub use ioend::io_end_size;
use mapping::MappingInner;

/// The longest extent writeback maps at once, in blocks (`MAX_WRITEPAGES_EXTENT_LEN`).
pub const MAX_WRITEPAGES_EXTENT_LEN: u64 = 2048;

/// Geometry and policy of a page cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Bytes per page: 4 KiB to 64 KiB, a power of two.
    pub page_size: usize,
    /// Bytes per filesystem block: 1 KiB up to the page size, a power of two.
    pub block_size: usize,
    /// Largest bio writeback builds, in bytes (default 1 MiB).
    pub max_bio_bytes: usize,
    /// Writeback allocates unwritten extents and converts them after the data IO succeeded
    /// (ext4's dioread_nolock). Without it, new blocks are allocated written.
    pub alloc_unwritten: bool,
    /// When a file's dirty data passes this many bytes, `write` hands it to the flusher thread
    /// for background writeback, and waits for it past twice as much (`balance_dirty_pages`).
    /// `None`: only explicit writeback, no flusher thread.
    pub dirty_limit_bytes: Option<usize>,
    /// When the cache holds more than this many bytes of pages, clean pages are evicted (those
    /// of other files first) down to half of it. `None`: pages stay until invalidated.
    pub cache_limit_bytes: Option<usize>,
}

impl Config {
    /// A configuration with defaults for everything but the geometry.
    pub fn new(page_size: usize, block_size: usize) -> Config {
        Config {
            page_size,
            block_size,
            max_bio_bytes: 1 << 20,
            alloc_unwritten: false,
            dirty_limit_bytes: None,
            cache_limit_bytes: None,
        }
    }

    /// Blocks per page.
    pub fn blocks_per_page(&self) -> usize {
        self.page_size / self.block_size
    }

    fn validate(&self, dev_block: u32) -> Result<(), Error> {
        let pow2 = |v: usize| v.is_power_of_two();
        let ok = pow2(self.page_size)
            && (4096..=65536).contains(&self.page_size)
            && pow2(self.block_size)
            && (1024..=self.page_size).contains(&self.block_size)
            && self.block_size % dev_block as usize == 0
            && self.max_bio_bytes >= self.block_size;
        if ok {
            Ok(())
        } else {
            Err(Error::BadConfig(format!(
                "page size {} / block size {} / bio size {} / device block {} is not a supported geometry",
                self.page_size, self.block_size, self.max_bio_bytes, dev_block
            )))
        }
    }
}

/// errno of corrupt filesystem metadata: Linux's `EFSCORRUPTED` (`EUCLEAN`), `EIO` where the
/// platform has no `EUCLEAN`.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub const EFSCORRUPTED: i32 = libc::EUCLEAN;
/// errno of corrupt filesystem metadata: Linux's `EFSCORRUPTED` (`EUCLEAN`), `EIO` where the
/// platform has no `EUCLEAN`.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub const EFSCORRUPTED: i32 = libc::EIO;

/// Errors of the engine.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Device IO the caller waited for failed (a read, a flush).
    #[error(transparent)]
    Io(#[from] IoError),
    /// The filesystem refused (no space, corrupt metadata, ...): its own error, see
    /// [`MapError::downcast`].
    #[error(transparent)]
    Map(#[from] MapError),
    /// The filesystem answered a lookup or an allocation with an extent that does not cover
    /// the block asked for (or with a hole where it was to allocate).
    #[error("inode {ino}: mapping block {lblk} returned {got:?}")]
    BadMapping {
        /// Inode.
        ino: u64,
        /// The block asked for.
        lblk: u64,
        /// What the filesystem returned.
        got: Extent,
    },
    /// Writeback of this file failed since this handle last checked (reported once).
    #[error("writeback failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Writeback {
        /// errno of the failure.
        errno: i32,
    },
    /// Preparing IO failed before anything was submitted; the data stays dirty.
    #[error("could not submit writeback IO: {}", std::io::Error::from_raw_os_error(*errno))]
    Submit {
        /// errno of the failure.
        errno: i32,
    },
    /// The configuration does not fit the device.
    #[error("{0}")]
    BadConfig(String),
    /// An offset or size beyond what a file can have.
    #[error("file offset {0} is too large")]
    TooLarge(u64),
}

impl Error {
    /// The errno this error maps to.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io(e) => e.errno(),
            Error::Map(e) => e.errno(),
            Error::BadMapping { .. } => EFSCORRUPTED,
            Error::Writeback { errno } | Error::Submit { errno } => *errno,
            Error::BadConfig(_) => libc::EINVAL,
            Error::TooLarge(_) => libc::EFBIG,
        }
    }
}

/// Something the engine did, reported to an [`Observer`] (tests and tracing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A page entered writeback.
    WritebackStart {
        /// Inode.
        ino: u64,
        /// Page index.
        index: u64,
    },
    /// A page left writeback.
    WritebackEnd {
        /// Inode.
        ino: u64,
        /// Page index.
        index: u64,
    },
    /// A write bio went to the device.
    BioSubmit {
        /// Inode.
        ino: u64,
        /// First physical block.
        pblk: u64,
        /// Blocks in the bio.
        nr_blocks: u64,
        /// Segments in the bio.
        nr_segments: usize,
    },
    /// A write bio completed.
    BioComplete {
        /// Inode.
        ino: u64,
        /// First physical block.
        pblk: u64,
        /// Blocks in the bio.
        nr_blocks: u64,
        /// Whether it succeeded.
        ok: bool,
    },
    /// Unwritten ranges were handed to the filesystem for conversion.
    Convert {
        /// Inode.
        ino: u64,
        /// The ranges.
        ranges: Vec<UnwrittenRange>,
        /// Whether the conversion succeeded.
        ok: bool,
        /// Whether it ran in the writer's put (inline) rather than on the worker.
        inline: bool,
    },
    /// An io_end with unwritten ranges had a failed bio: nothing was converted.
    ConversionSkipped {
        /// Inode.
        ino: u64,
        /// The ranges left unwritten.
        ranges: Vec<UnwrittenRange>,
    },
}

/// Receives [`Event`]s, on whatever thread caused them.
pub trait Observer: Send + Sync {
    /// Called for every event.
    fn event(&self, ev: &Event);
}

/// Counters of the whole cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Write bios submitted.
    pub bios_submitted: u64,
    /// Bytes in those bios.
    pub bytes_submitted: u64,
    /// Io_ends allocated.
    pub io_ends: u64,
    /// Invariant violations detected at run time (must stay 0).
    pub violations: u64,
    /// Pages cached over all files.
    pub cached_pages: u64,
}

pub(crate) struct Shared {
    pub(crate) cfg: Config,
    pub(crate) bpp: usize,
    pub(crate) dev_per_block: u64,
    pub(crate) dev: Arc<dyn BlockDevice>,
    pub(crate) mapper: Arc<dyn BlockMapper>,
    pub(crate) observer: Option<Arc<dyn Observer>>,
    pub(crate) flusher: flusher::Flusher,
    worker_tx: Mutex<Option<Sender<IoEnd>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    worker_id: Mutex<Option<ThreadId>>,
    mappings: Mutex<HashMap<u64, Weak<MappingInner>>>,
    pub(crate) bios_submitted: AtomicU64,
    pub(crate) bytes_submitted: AtomicU64,
    pub(crate) io_ends: AtomicU64,
    pub(crate) violations: AtomicU64,
    /// Fail the n-th `bio_write_page` between its mark and submit passes (test hook).
    pub(crate) fail_submit_at: Mutex<Option<u64>>,
    pub(crate) bio_write_page_calls: AtomicU64,
    /// Pages cached over all files.
    pub(crate) cached_pages: AtomicUsize,
    /// No eviction pass below this many cached pages (set after a pass that fell short).
    shrink_floor: AtomicUsize,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageCache")
            .field("cfg", &self.cfg)
            .field("dev", &self.dev.kind())
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn emit(&self, ev: impl FnOnce() -> Event) {
        if let Some(o) = &self.observer {
            o.event(&ev());
        }
    }

    pub(crate) fn violation(&self, what: &str) {
        self.violations.fetch_add(1, Ordering::Relaxed);
        debug_assert!(false, "writeback invariant violated: {what}");
    }

    /// Evicts clean pages when the cache is over its limit: other files first, `current` last.
    /// `after_sync`: pages were just cleaned, so try even below the floor.
    pub(crate) fn shrink_if_needed(&self, current: u64, after_sync: bool) {
        let Some(limit) = self.cfg.cache_limit_bytes else {
            return;
        };
        let ps = self.cfg.page_size;
        let now = self.cached_pages.load(Ordering::Relaxed);
        // After a pass that could not get under the limit (everything dirty or under IO),
        // the next one waits until a sixteenth of the limit more is cached: scanning the same
        // unevictable pages at every write would cost more than the memory.
        if now * ps <= limit || (!after_sync && now < self.shrink_floor.load(Ordering::Relaxed)) {
            return;
        }
        // Evict an eighth: small batches keep the freed buffers within the page buffer pool.
        let target = (limit - limit / 8) / ps;
        let mut maps: Vec<(u64, Arc<MappingInner>)> = self
            .mappings
            .lock()
            .iter()
            .filter_map(|(ino, w)| w.upgrade().map(|m| (*ino, m)))
            .collect();
        maps.sort_by_key(|(ino, _)| *ino == current);
        for (_, m) in maps {
            let cached = self.cached_pages.load(Ordering::Relaxed);
            if cached <= target {
                break;
            }
            m.evict_clean(cached - target, false);
        }
        let after = self.cached_pages.load(Ordering::Relaxed);
        let floor = if after * ps > limit {
            after + (limit / 16 / ps).max(1)
        } else {
            0
        };
        self.shrink_floor.store(floor, Ordering::Relaxed);
    }

    /// Hands a completed io_end with unwritten ranges to the conversion worker (or converts it
    /// here once the worker has stopped).
    pub(crate) fn queue_conversion(&self, io_end: IoEnd) {
        let tx = self.worker_tx.lock().clone();
        match tx {
            Some(tx) => {
                if let Err(e) = tx.send(io_end) {
                    ioend::end_io_end(e.0, false);
                }
            }
            None => ioend::end_io_end(io_end, false),
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.flusher.stop();
        self.worker_tx.lock().take();
        let me = thread::current().id();
        if let Some(h) = self.worker.lock().take() {
            // The last reference may be dropped by the worker itself (it held the last io_end).
            if *self.worker_id.lock() != Some(me) {
                let _ = h.join();
            }
        }
    }
}

/// A page cache over one device, for the files of one filesystem.
#[derive(Clone, Debug)]
pub struct PageCache {
    shared: Arc<Shared>,
}

impl PageCache {
    /// A cache over `dev`, asking `mapper` for block mappings.
    pub fn new(
        cfg: Config,
        dev: Arc<dyn BlockDevice>,
        mapper: Arc<dyn BlockMapper>,
    ) -> Result<PageCache, Error> {
        PageCache::with_observer(cfg, dev, mapper, None)
    }

    /// Like [`PageCache::new`], reporting events to `observer`.
    pub fn with_observer(
        cfg: Config,
        dev: Arc<dyn BlockDevice>,
        mapper: Arc<dyn BlockMapper>,
        observer: Option<Arc<dyn Observer>>,
    ) -> Result<PageCache, Error> {
        let dev_block = dev.geometry().block_size;
        cfg.validate(dev_block)?;
        let (tx, rx) = unbounded::<IoEnd>();
        let shared = Arc::new(Shared {
            bpp: cfg.blocks_per_page(),
            dev_per_block: (cfg.block_size / dev_block as usize) as u64,
            cfg,
            dev,
            mapper,
            observer,
            flusher: flusher::Flusher::default(),
            worker_tx: Mutex::new(Some(tx)),
            worker: Mutex::new(None),
            worker_id: Mutex::new(None),
            mappings: Mutex::new(HashMap::new()),
            bios_submitted: AtomicU64::new(0),
            bytes_submitted: AtomicU64::new(0),
            io_ends: AtomicU64::new(0),
            violations: AtomicU64::new(0),
            fail_submit_at: Mutex::new(None),
            bio_write_page_calls: AtomicU64::new(0),
            cached_pages: AtomicUsize::new(0),
            shrink_floor: AtomicUsize::new(0),
        });
        // The conversion worker ("ext4-rsv-conversion"): converts io_ends whose last bio
        // completed on a device thread, in the order they arrive.
        let handle = thread::Builder::new()
            .name("ext4kit-convert".into())
            .spawn(move || {
                for io_end in rx {
                    ioend::end_io_end(io_end, false);
                }
            })
            .map_err(|e| Error::BadConfig(format!("cannot start the conversion worker: {e}")))?;
        *shared.worker_id.lock() = Some(handle.thread().id());
        *shared.worker.lock() = Some(handle);
        if shared.cfg.dirty_limit_bytes.is_some() {
            flusher::start(&shared)
                .map_err(|e| Error::BadConfig(format!("cannot start the flusher: {e}")))?;
        }
        Ok(PageCache { shared })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.shared.cfg
    }

    /// The device.
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.shared.dev
    }

    /// The cache of inode `ino`, created with the given sizes if it is not cached yet.
    /// `i_size` is the file size, `disksize` the size recorded on disk.
    pub fn mapping(&self, ino: u64, i_size: u64, disksize: u64) -> Mapping {
        let mut maps = self.shared.mappings.lock();
        if let Some(m) = maps.get(&ino).and_then(Weak::upgrade) {
            return Mapping::from_inner(m);
        }
        let inner = Arc::new(MappingInner::new(
            ino,
            Arc::clone(&self.shared),
            i_size,
            disksize,
        ));
        maps.insert(ino, Arc::downgrade(&inner));
        if maps.len() > 64 && maps.len().is_power_of_two() {
            maps.retain(|_, w| w.strong_count() > 0);
        }
        Mapping::from_inner(inner)
    }

    /// Writes back every cached file (sync mode) and waits for it; returns the first error.
    /// An error of any file is also recorded on that file, for its next fsync.
    pub fn sync_all(&self) -> Result<(), Error> {
        let maps: Vec<Arc<MappingInner>> = self
            .shared
            .mappings
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        let mut first = Ok(());
        for m in maps {
            let m = Mapping::from_inner(m);
            let r = m.writepages(&mut WritebackControl::sync_all());
            m.wait_writeback();
            if let Err(e) = &r {
                m.inner.set_error(e.errno());
            }
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Stops the conversion worker after it has finished what is queued. Later conversions run
    /// inline on the completing thread. Call after all writeback has been waited for.
    pub fn shutdown(&self) {
        self.shared.flusher.stop();
        self.shared.worker_tx.lock().take();
        let h = self.shared.worker.lock().take();
        if let Some(h) = h {
            let _ = h.join();
        }
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        Stats {
            bios_submitted: s.bios_submitted.load(Ordering::Relaxed),
            bytes_submitted: s.bytes_submitted.load(Ordering::Relaxed),
            io_ends: s.io_ends.load(Ordering::Relaxed),
            violations: s.violations.load(Ordering::Relaxed),
            cached_pages: s.cached_pages.load(Ordering::Relaxed) as u64,
        }
    }

    /// Test hook: the `nth` (0-based, counted from now) page submission fails after its mark
    /// pass and before anything is submitted, as a bounce-buffer allocation can fail in the
    /// kernel. `None` disarms it.
    pub fn fail_submission_at(&self, nth: Option<u64>) {
        let base = self.shared.bio_write_page_calls.load(Ordering::SeqCst);
        *self.shared.fail_submit_at.lock() = nth.map(|n| base + n);
    }
}
