//! [`Mapping`]: the cache of one file (the kernel's `address_space`), and its fsync path.
//!
//! The paths through it are split as the kernel splits them:
//! - [`filemap`]: page lookup and insertion, `readpage`, the buffered write path
//!   (`write_begin` / `write_end`), `read`;
//! - [`readahead`]: reading many pages with few large bios, synchronously or ahead of a reader;
//! - [`truncate`]: dropping clean pages, truncate, punch hole, fallocate;
//! - writeback lives in `crate::writeback`.
//!
//! # What it owns
//! - the page tree (index → page), the DIRTY and TOWRITE tags (sets of page indices);
//! - the file size (`i_size`) and the last on-disk size handed to the filesystem (`disksize`);
//! - the error sequence that `fsync` reports from;
//! - a count of pages under writeback, for whole-file waits.
//!
//! # Locks
//! - `inode_lock` (i_rwsem): held by write, truncate and fallocate. Writeback does not take it.
//! - `writepages_lock`: one writeback pass per file at a time.
//! - page LOCKED → page `state` mutex; `tree` is taken on its own, never inside a page's state.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ext4kit_blockdev::{BlockDeviceExt, IoError};
use parking_lot::{Condvar, Mutex};

use crate::errseq::ErrSeq;
use crate::page::{Page, PageSnapshot};
use crate::tree::{PageTree, TagSet};
use crate::writeback::{SyncMode, WritebackControl};
use crate::{Error, Shared};

mod filemap;
mod readahead;
mod truncate;

pub use filemap::WriteGuard;

/// Largest file offset the cache accepts (the ext4 extent format limit, 2^32 blocks, is lower
/// for small blocks; the filesystem enforces its own).
const MAX_OFFSET: u64 = 1 << 60;

#[derive(Default)]
pub(crate) struct Tree {
    pub(crate) pages: PageTree,
    pub(crate) dirty: TagSet,
    pub(crate) towrite: TagSet,
}

pub(crate) struct MappingInner {
    pub(crate) ino: u64,
    pub(crate) cache: Arc<Shared>,
    pub(crate) tree: Mutex<Tree>,
    pub(crate) i_size: AtomicU64,
    pub(crate) disksize: Mutex<u64>,
    pub(crate) wb_err: ErrSeq,
    pub(crate) inode_lock: Mutex<()>,
    pub(crate) writepages_lock: Mutex<()>,
    nr_writeback: Mutex<u64>,
    wb_cond: Condvar,
    /// Delayed blocks reserved and not yet allocated or released.
    pub(crate) reserved: AtomicU64,
    /// The last hole the filesystem reported (a one-entry extent status cache), so writing a
    /// new file does not look its blocks up page by page.
    hole_hint: Mutex<HoleHint>,
    /// Sequential-read state (the kernel's file_ra_state, reduced): where the last read ended
    /// (bytes) and the first page not yet queued for asynchronous readahead.
    ra_prev_end: AtomicU64,
    ra_queued_end: AtomicU64,
}

/// A run of logical blocks known to be a hole, valid while `generation` has not moved.
#[derive(Default)]
struct HoleHint {
    start: u64,
    end: u64,
    generation: u64,
}

/// Blocks asked for when looking up a hole (the answer stops at the next mapped block).
const HOLE_LOOKUP_BLOCKS: u64 = 1 << 20;

impl Drop for MappingInner {
    fn drop(&mut self) {
        let n = self.tree.get_mut().pages.len();
        self.cache.cached_pages.fetch_sub(n, Ordering::Relaxed);
    }
}

impl MappingInner {
    pub(crate) fn new(ino: u64, cache: Arc<Shared>, i_size: u64, disksize: u64) -> MappingInner {
        MappingInner {
            ino,
            cache,
            tree: Mutex::new(Tree::default()),
            i_size: AtomicU64::new(i_size),
            disksize: Mutex::new(disksize),
            wb_err: ErrSeq::default(),
            inode_lock: Mutex::new(()),
            writepages_lock: Mutex::new(()),
            nr_writeback: Mutex::new(0),
            wb_cond: Condvar::new(),
            reserved: AtomicU64::new(0),
            hole_hint: Mutex::new(HoleHint::default()),
            ra_prev_end: AtomicU64::new(0),
            ra_queued_end: AtomicU64::new(0),
        }
    }

    /// Forgets the hole hint; called before and after every call that may map blocks (so a
    /// lookup racing with it cannot store a hint from before the change).
    pub(crate) fn forget_holes(&self) {
        let mut h = self.hole_hint.lock();
        h.generation += 1;
        h.start = 0;
        h.end = 0;
    }

    pub(crate) fn page_size(&self) -> u64 {
        self.cache.cfg.page_size as u64
    }

    /// Records a writeback error (`mapping_set_error`).
    pub(crate) fn set_error(&self, errno: i32) {
        self.wb_err.set(errno);
    }

    pub(crate) fn writeback_started(&self) {
        *self.nr_writeback.lock() += 1;
    }

    pub(crate) fn writeback_ended(&self) {
        let mut n = self.nr_writeback.lock();
        if *n == 0 {
            drop(n);
            self.cache.violation("writeback count underflow");
            return;
        }
        *n -= 1;
        if *n == 0 {
            self.wb_cond.notify_all();
        }
    }

    pub(crate) fn wait_all_writeback(&self) {
        let mut n = self.nr_writeback.lock();
        while *n > 0 {
            self.wb_cond.wait(&mut n);
        }
    }

    /// Raises the on-disk size to `size` (never above i_size), telling the filesystem.
    pub(crate) fn update_disksize(&self, size: u64) -> Result<(), Error> {
        let size = size.min(self.i_size.load(Ordering::Acquire));
        let mut ds = self.disksize.lock();
        if size > *ds {
            self.cache.mapper.update_disksize(self.ino, size)?;
            *ds = size;
        }
        Ok(())
    }
}

/// The cache of one file. Cloning gives another handle to the same cache.
#[derive(Clone)]
pub struct Mapping {
    pub(crate) inner: Arc<MappingInner>,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("ino", &self.inner.ino)
            .field("i_size", &self.inner.i_size.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Mapping {
    pub(crate) fn from_inner(inner: Arc<MappingInner>) -> Mapping {
        Mapping { inner }
    }

    /// Inode number.
    pub fn ino(&self) -> u64 {
        self.inner.ino
    }

    /// File size.
    pub fn size(&self) -> u64 {
        self.inner.i_size.load(Ordering::Acquire)
    }

    /// Size last recorded on disk through [`crate::BlockMapper::update_disksize`].
    pub fn disksize(&self) -> u64 {
        *self.inner.disksize.lock()
    }

    /// Delayed blocks reserved and not yet allocated or released.
    pub fn reserved_blocks(&self) -> u64 {
        self.inner.reserved.load(Ordering::Relaxed)
    }

    /// A new open file description, sampling the error sequence now.
    pub fn open(&self) -> FileHandle {
        FileHandle {
            mapping: self.clone(),
            cursor: Mutex::new(self.inner.wb_err.sample()),
        }
    }

    /// Pages cached.
    pub fn nr_pages(&self) -> usize {
        self.inner.tree.lock().pages.len()
    }

    /// Pages tagged dirty.
    pub fn nr_dirty(&self) -> usize {
        self.inner.tree.lock().dirty.len()
    }

    /// Pages tagged to-write (left over from a sync writeback that could not finish them).
    pub fn nr_towrite(&self) -> usize {
        self.inner.tree.lock().towrite.len()
    }

    /// The state of page `index`, if cached.
    pub fn page_snapshot(&self, index: u64) -> Option<PageSnapshot> {
        self.inner.find_page(index).map(|p| p.snapshot())
    }

    /// The states of every cached page, in index order.
    pub fn snapshots(&self) -> Vec<PageSnapshot> {
        let pages: Vec<Arc<Page>> = self.inner.tree.lock().pages.collect_from(0);
        pages.iter().map(|p| p.snapshot()).collect()
    }

    /// Records a writeback error on the file, as a failed bio does.
    pub fn set_error(&self, errno: i32) {
        self.inner.set_error(errno);
    }

    /// A handle that does not keep the file's cache alive.
    pub fn downgrade(&self) -> WeakMapping {
        WeakMapping(Arc::downgrade(&self.inner))
    }

    /// Writes back dirty pages in the range of `wbc` (see [`WritebackControl`]).
    pub fn writepages(&self, wbc: &mut WritebackControl) -> Result<(), Error> {
        crate::writeback::writepages(&self.inner, wbc)
    }

    /// Waits until no page of the file is under writeback (including unwritten conversion).
    pub fn wait_writeback(&self) {
        self.inner.wait_all_writeback();
    }
}

/// A [`Mapping`] handle that does not keep it alive.
#[derive(Debug, Clone)]
pub struct WeakMapping(std::sync::Weak<MappingInner>);

impl WeakMapping {
    /// The mapping, if anything still holds it.
    pub fn upgrade(&self) -> Option<Mapping> {
        self.0.upgrade().map(Mapping::from_inner)
    }
}

/// An open file description: fsync reports each writeback error once per handle.
#[derive(Debug)]
pub struct FileHandle {
    mapping: Mapping,
    cursor: Mutex<u64>,
}

impl FileHandle {
    /// The file.
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// Writes back the whole file in sync mode, waits for its writeback (and unwritten
    /// conversion), flushes the device, and reports the first writeback error this handle has
    /// not seen yet.
    pub fn fsync(&self) -> Result<(), Error> {
        let m = &self.mapping;
        let submitted = m.writepages(&mut WritebackControl::sync_all());
        m.wait_writeback();
        if let Err(e) = m.inner.cache.dev.flush() {
            m.inner.set_error(e.errno());
        }
        let err = m.inner.wb_err.check_and_advance(&mut self.cursor.lock());
        m.inner.cache.shrink_if_needed(m.inner.ino, true);
        submitted?;
        match err {
            Some(errno) => Err(Error::Writeback { errno }),
            None => Ok(()),
        }
    }

    /// Reports (and consumes) a pending writeback error without writing anything.
    pub fn check_error(&self) -> Result<(), Error> {
        match self
            .mapping
            .inner
            .wb_err
            .check_and_advance(&mut self.cursor.lock())
        {
            Some(errno) => Err(Error::Writeback { errno }),
            None => Ok(()),
        }
    }
}

impl SyncMode {
    pub(crate) fn is_all(self) -> bool {
        self == SyncMode::All
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<Mapping>();
    f::<FileHandle>();
    let _ = IoError::Shutdown;
}
