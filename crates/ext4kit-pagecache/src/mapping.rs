//! [`Mapping`]: the cache of one file (the kernel's `address_space`), and its write, read,
//! truncate, fallocate and fsync paths.
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

use ext4kit_blockdev::{Bio, BioOp, BioVec, BlockDeviceExt, IoError};
use parking_lot::lock_api::ArcRwLockWriteGuard;
use parking_lot::{Condvar, Mutex, RawRwLock};

use crate::errseq::ErrSeq;
use crate::mapper::{ExtentKind, MapFlags};
use crate::page::{INVALID_PBLK, Page, PageBytes, PageDataMut, PageSnapshot};
use crate::state::{BlockState, PageFlags};
use crate::tree::{PageTree, TagSet};
use crate::writeback::{SyncMode, WritebackControl};
use crate::{Error, Shared};

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

    /// Looks `lblk` up (at most `len` blocks), through the hole hint.
    fn lookup_block(&self, lblk: u64, len: u64) -> Result<crate::Extent, Error> {
        let generation = {
            let h = self.hole_hint.lock();
            if h.start <= lblk && lblk < h.end {
                return Ok(crate::Extent {
                    lblk,
                    len: (h.end - lblk).min(len),
                    pblk: 0,
                    kind: ExtentKind::Hole,
                });
            }
            h.generation
        };
        let ext = self.cache.mapper.map_blocks(
            self.ino,
            lblk,
            len.max(HOLE_LOOKUP_BLOCKS),
            MapFlags::LOOKUP,
        )?;
        if ext.kind == ExtentKind::Hole && ext.lblk <= lblk && lblk < ext.lblk + ext.len {
            let mut h = self.hole_hint.lock();
            if h.generation == generation {
                h.start = ext.lblk;
                h.end = ext.lblk + ext.len;
            }
        }
        Ok(ext)
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

    fn grab_page(&self, index: u64) -> Arc<Page> {
        self.grab_page_with(index, true)
    }

    /// [`MappingInner::grab_page`]; `zero: false` lets a new page keep a recycled buffer's
    /// old bytes, for a caller that overwrites the whole page before unlocking it. (Nothing
    /// can see them even if it does not: a block's bytes are only read once it is UPTODATE,
    /// and reading a page fills or zeroes every block that is not.)
    fn grab_page_with(&self, index: u64, zero: bool) -> Arc<Page> {
        let mut tree = self.tree.lock();
        let cfg = &self.cache.cfg;
        let bpp = self.cache.bpp;
        let before = tree.pages.len();
        let page = Arc::clone(
            tree.pages
                .get_or_insert_with(index, || Page::new(index, cfg.page_size, bpp, zero)),
        );
        if tree.pages.len() != before {
            self.cache.cached_pages.fetch_add(1, Ordering::Relaxed);
        }
        page
    }

    /// Drops page `index` from the tree and its tags.
    fn remove_page(&self, tree: &mut Tree, index: u64) {
        if tree.pages.remove(index).is_some() {
            self.cache.cached_pages.fetch_sub(1, Ordering::Relaxed);
        }
        tree.dirty.remove(index);
        tree.towrite.remove(index);
    }

    /// Drops up to `max` clean pages (unlocked, not under writeback, nothing dirty or delayed);
    /// returns how many. Unless `with_errors`, pages holding blocks whose write failed are kept:
    /// their data exists nowhere else, so only an explicit invalidation drops it.
    pub(crate) fn evict_clean(&self, max: usize, with_errors: bool) -> usize {
        let mut dropped = 0;
        let mut next = 0;
        // In batches, so the evicted pages' buffers are freed (pooled) as we go and a large
        // cache is not cloned whole.
        while dropped < max {
            let batch: Vec<Arc<Page>> = self.tree.lock().pages.collect(next, 256);
            let Some(last) = batch.last() else { break };
            next = last.index() + 1;
            dropped += self.evict_batch(batch, max - dropped, with_errors);
        }
        dropped
    }

    fn evict_batch(&self, pages: Vec<Arc<Page>>, max: usize, with_errors: bool) -> usize {
        let mut dropped = 0;
        for page in pages {
            if dropped >= max {
                break;
            }
            if !page.try_lock() {
                continue;
            }
            let clean = {
                let st = page.state.lock();
                let busy = if with_errors {
                    BlockState::DIRTY | BlockState::DELAY
                } else {
                    BlockState::DIRTY | BlockState::DELAY | BlockState::WRITE_IO_ERROR
                };
                !st.flags.contains(PageFlags::WRITEBACK)
                    && !st.flags.contains(PageFlags::DIRTY)
                    && !st.blocks.iter().any(|b| b.intersects(busy))
            };
            if clean {
                let mut tree = self.tree.lock();
                self.remove_page(&mut tree, page.index());
                dropped += 1;
            }
            page.unlock();
        }
        dropped
    }

    fn find_page(&self, index: u64) -> Option<Arc<Page>> {
        self.tree.lock().pages.get(index).cloned()
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

    /// Reads `runs` of (page block, pblk, count) synchronously into the page's data.
    fn read_blocks_into(&self, data: &mut [u8], runs: &[(usize, u64, usize)]) -> Result<(), Error> {
        let bs = self.cache.cfg.block_size;
        let mut waits = Vec::with_capacity(runs.len());
        for &(b, pblk, n) in runs {
            let mut bio = Bio::new(BioOp::Read, pblk * self.cache.dev_per_block);
            bio.push(BioVec::zeroed(n * bs));
            let done = ext4kit_blockdev::Completion::new();
            done.attach(&mut bio);
            self.cache.dev.submit(bio);
            waits.push((b, n, done));
        }
        let mut first: Result<(), Error> = Ok(());
        for (b, n, done) in waits {
            let (mut bio, status) = done.wait();
            match status {
                Ok(()) => {
                    if let Some(buf) = bio.take_vecs().pop().and_then(BioVec::into_owned) {
                        data[b * bs..(b + n) * bs].copy_from_slice(&buf);
                    }
                }
                Err(e) => {
                    if first.is_ok() {
                        first = Err(Error::Io(e));
                    }
                }
            }
        }
        first
    }

    /// Looks up blocks `from..to` of a locked page that have no mapping yet. Holes and
    /// unwritten blocks stay unmapped for reads (`for_write == false`); for writes, holes
    /// become delayed (reserved) and unwritten blocks become MAPPED|NEW|UNWRITTEN.
    fn map_page_blocks(
        &self,
        page: &Page,
        from: usize,
        to: usize,
        for_write: bool,
    ) -> Result<(), Error> {
        let bpp = self.cache.bpp as u64;
        let base = page.index() * bpp;
        let todo: Vec<usize> = {
            let st = page.state.lock();
            (from..to)
                .filter(|&b| !st.blocks[b].contains(BlockState::MAPPED))
                .collect()
        };
        let mut i = 0;
        while i < todo.len() {
            // A run of consecutive unmapped blocks.
            let start = todo[i];
            let mut end = start + 1;
            while i + (end - start) < todo.len() && todo[i + (end - start)] == end {
                end += 1;
            }
            i += end - start;
            let mut b = start;
            while b < end {
                let lblk = base + b as u64;
                let ext = self.lookup_block(lblk, (end - b) as u64)?;
                if ext.lblk > lblk || ext.lblk + ext.len <= lblk {
                    return Err(Error::BadMapping {
                        ino: self.ino,
                        lblk,
                        got: ext,
                    });
                }
                let off = lblk - ext.lblk;
                let n = ((ext.len - off) as usize).min(end - b);
                match (ext.kind, for_write) {
                    (ExtentKind::Hole, true) => {
                        self.cache.mapper.reserve(self.ino, n as u64)?;
                        self.reserved.fetch_add(n as u64, Ordering::Relaxed);
                        let mut st = page.state.lock();
                        for k in b..b + n {
                            st.blocks[k]
                                .insert(BlockState::MAPPED | BlockState::NEW | BlockState::DELAY);
                            st.pblk[k] = INVALID_PBLK;
                        }
                    }
                    (ExtentKind::Unwritten, true) => {
                        let mut st = page.state.lock();
                        for k in b..b + n {
                            st.blocks[k].insert(
                                BlockState::MAPPED | BlockState::NEW | BlockState::UNWRITTEN,
                            );
                            st.pblk[k] = ext.pblk + off + (k - b) as u64;
                        }
                    }
                    (ExtentKind::Written, _) => {
                        let mut st = page.state.lock();
                        for k in b..b + n {
                            st.blocks[k].insert(BlockState::MAPPED);
                            st.pblk[k] = ext.pblk + off + (k - b) as u64;
                        }
                    }
                    (ExtentKind::Hole | ExtentKind::Unwritten, false) => {
                        // Reads as zeros; leave it unmapped so a later write looks it up again.
                        let mut data = page.data.write();
                        let bs = self.cache.cfg.block_size;
                        data[b * bs..(b + n) * bs].fill(0);
                        let mut st = page.state.lock();
                        for k in b..b + n {
                            st.blocks[k].insert(BlockState::UPTODATE);
                        }
                    }
                }
                b += n;
            }
        }
        Ok(())
    }

    /// Fills every non-uptodate block of a locked page (`readpage`).
    fn read_page(&self, page: &Page) -> Result<(), Error> {
        let bpp = self.cache.bpp;
        let bs = self.cache.cfg.block_size;
        let size = self.i_size.load(Ordering::Acquire);
        let eof_block = size.div_ceil(bs as u64);
        let base = page.index() * bpp as u64;
        // Blocks past EOF read as zeros.
        let first_past = eof_block.saturating_sub(base).min(bpp as u64) as usize;
        {
            let mut data = page.data.write();
            let mut st = page.state.lock();
            for b in first_past..bpp {
                if !st.blocks[b].contains(BlockState::UPTODATE) {
                    data[b * bs..(b + 1) * bs].fill(0);
                    st.blocks[b].insert(BlockState::UPTODATE);
                }
            }
        }
        self.map_page_blocks(page, 0, first_past, false)?;
        let mut data = page.data.write();
        let runs = {
            let st = page.state.lock();
            let mut runs: Vec<(usize, u64, usize)> = Vec::new();
            for b in 0..bpp {
                let s = st.blocks[b];
                if s.contains(BlockState::UPTODATE) {
                    continue;
                }
                if s.intersects(BlockState::DELAY | BlockState::UNWRITTEN)
                    || st.pblk[b] == INVALID_PBLK
                {
                    data[b * bs..(b + 1) * bs].fill(0);
                    continue;
                }
                match runs.last_mut() {
                    Some((rb, rp, n)) if *rb + *n == b && *rp + *n as u64 == st.pblk[b] => *n += 1,
                    _ => runs.push((b, st.pblk[b], 1)),
                }
            }
            runs
        };
        self.read_blocks_into(&mut data, &runs)?;
        let mut st = page.state.lock();
        for b in 0..bpp {
            st.blocks[b].insert(BlockState::UPTODATE);
        }
        st.flags.insert(PageFlags::UPTODATE);
        Ok(())
    }

    /// The pages of `first..=last` that are not uptodate, created where missing, each locked
    /// here (pages someone else has locked are left out).
    fn lock_pages_to_read(&self, first: u64, last: u64) -> Vec<Arc<Page>> {
        let mut pages: Vec<Arc<Page>> = Vec::new();
        for index in first..=last {
            // New pages need no zeroing: map_for_read zeroes or reads every block not uptodate.
            let page = self.grab_page_with(index, false);
            if page.state.lock().flags.contains(PageFlags::UPTODATE) || !page.try_lock() {
                continue;
            }
            if page.state.lock().flags.contains(PageFlags::UPTODATE) {
                page.unlock();
                continue;
            }
            pages.push(page);
        }
        pages
    }

    /// Reads every page of `first..=last` that is not uptodate, with as few and as large bios as
    /// the physical layout allows (`mpage_readahead`): one mapping lookup per extent, blocks
    /// merged across pages while physically contiguous, all bios in flight at once. Pages
    /// locked by someone else are left for the caller.
    fn readahead(&self, first: u64, last: u64) -> Result<(), Error> {
        let bpp = self.cache.bpp;
        let bs = self.cache.cfg.block_size;
        let size = self.i_size.load(Ordering::Acquire);
        let eof_block = size.div_ceil(bs as u64);
        let pages = self.lock_pages_to_read(first, last);
        if pages.is_empty() {
            return Ok(());
        }
        let result = self.readahead_locked(&pages, bpp, bs, eof_block);
        for p in &pages {
            p.unlock();
        }
        result
    }

    /// Starts reading every page of `first..=last` that is not uptodate and not locked, and
    /// returns without waiting (`page_cache_async_ra`): each bio's completion marks its pages'
    /// blocks uptodate and unlocks them, so a reader waits on the page lock. Falls back to
    /// reading synchronously when a page's blocks would be split between bios. Errors are not
    /// reported here: a page left not uptodate is read again, synchronously, by whoever needs it.
    fn readahead_async(&self, first: u64, last: u64) {
        let bpp = self.cache.bpp;
        let bs = self.cache.cfg.block_size;
        let size = self.i_size.load(Ordering::Acquire);
        let eof_block = size.div_ceil(bs as u64);
        let pages = self.lock_pages_to_read(first, last);
        if pages.is_empty() {
            return;
        }
        let to_read = match self.map_for_read(&pages, bpp, bs, eof_block) {
            Ok(t) => t,
            Err(_) => {
                for p in &pages {
                    p.unlock();
                }
                return;
            }
        };
        let runs = self.read_runs(&to_read, bs);
        // Each page in one segment of one bio, or the synchronous path.
        let mut owner: Vec<Option<usize>> = vec![None; pages.len()];
        let mut split = false;
        for (ri, &(start, n)) in runs.iter().enumerate() {
            let mut prev: Option<(usize, usize)> = None;
            for &(pi, b, _) in &to_read[start..start + n] {
                let continues = matches!(prev, Some((ppi, pb)) if ppi == pi && pb + 1 == b);
                if !continues && owner[pi].is_some() {
                    split = true;
                }
                owner[pi].get_or_insert(ri);
                prev = Some((pi, b));
            }
        }
        if split {
            let _ = self.read_locked_runs(&pages, &to_read, &runs, bs);
            for p in &pages {
                p.unlock();
            }
            return;
        }
        // Pages with nothing to read are done now.
        for (pi, page) in pages.iter().enumerate() {
            if owner[pi].is_none() {
                let mut st = page.state.lock();
                if st.blocks.iter().all(|b| b.contains(BlockState::UPTODATE)) {
                    st.flags.insert(PageFlags::UPTODATE);
                }
                drop(st);
                page.unlock();
            }
        }
        for &(start, n) in &runs {
            let mut bio = Bio::new(BioOp::Read, to_read[start].2 * self.cache.dev_per_block);
            let mut mine: Vec<(Arc<Page>, Vec<usize>)> = Vec::new();
            for &(pi, b, _) in &to_read[start..start + n] {
                match mine.last_mut() {
                    Some((p, blocks)) if Arc::ptr_eq(p, &pages[pi]) => {
                        blocks.push(b);
                        if let Some(v) = bio.last_vec_mut() {
                            v.extend(bs);
                        }
                    }
                    _ => {
                        let guard = PageDataMut(pages[pi].data.write_arc());
                        bio.push(BioVec::new(
                            ext4kit_blockdev::BioBuf::Lent(Box::new(guard)),
                            b * bs,
                            bs,
                        ));
                        mine.push((Arc::clone(&pages[pi]), vec![b]));
                    }
                }
            }
            bio.set_end_io(Box::new(move |mut bio, status| {
                // Release the lent page memory before anyone can be woken to read it.
                drop(bio.take_vecs());
                drop(bio);
                for (page, blocks) in mine {
                    {
                        let mut st = page.state.lock();
                        if status.is_ok() {
                            for b in blocks {
                                st.blocks[b].insert(BlockState::UPTODATE);
                            }
                            if st.blocks.iter().all(|b| b.contains(BlockState::UPTODATE)) {
                                st.flags.insert(PageFlags::UPTODATE);
                            }
                        }
                    }
                    page.unlock();
                }
            }));
            self.cache.dev.submit(bio);
        }
    }

    /// Step 1 of a read: looks the blocks of locked `pages` up (one lookup per extent), zeroes
    /// holes, unwritten and delayed blocks and those past EOF (marking them uptodate), and
    /// returns (page number in `pages`, block, pblk) of every block to read from the device.
    fn map_for_read(
        &self,
        pages: &[Arc<Page>],
        bpp: usize,
        bs: usize,
        eof_block: u64,
    ) -> Result<Vec<(usize, usize, u64)>, Error> {
        // 1. Mapping, one lookup per extent. No page lock is held while the filesystem maps
        //    (it may do IO whose completion needs other pages' state locks).
        let mut ext: Option<crate::Extent> = None;
        // (page number in `pages`, block, pblk) of every block to read.
        let mut to_read: Vec<(usize, usize, u64)> = Vec::new();
        for (pi, page) in pages.iter().enumerate() {
            let base = page.index() * bpp as u64;
            let todo: Vec<(usize, BlockState, u64)> = {
                let st = page.state.lock();
                (0..bpp)
                    .filter(|&b| !st.blocks[b].contains(BlockState::UPTODATE))
                    .map(|b| (b, st.blocks[b], st.pblk[b]))
                    .collect()
            };
            let mut zero: Vec<usize> = Vec::new();
            let mut mapped: Vec<(usize, u64)> = Vec::new();
            for (b, s, pblk) in todo {
                let lblk = base + b as u64;
                if lblk >= eof_block || s.intersects(BlockState::DELAY | BlockState::UNWRITTEN) {
                    zero.push(b);
                    continue;
                }
                if s.contains(BlockState::MAPPED) && pblk != INVALID_PBLK {
                    to_read.push((pi, b, pblk));
                    continue;
                }
                let covers = |e: &crate::Extent| e.lblk <= lblk && lblk < e.lblk + e.len;
                if !ext.as_ref().is_some_and(covers) {
                    let e = self.cache.mapper.map_blocks(
                        self.ino,
                        lblk,
                        eof_block - lblk,
                        MapFlags::LOOKUP,
                    )?;
                    if !covers(&e) {
                        return Err(Error::BadMapping {
                            ino: self.ino,
                            lblk,
                            got: e,
                        });
                    }
                    ext = Some(e);
                }
                let Some(e) = ext else { continue };
                if e.kind == ExtentKind::Written {
                    let pblk = e.pblk + (lblk - e.lblk);
                    mapped.push((b, pblk));
                    to_read.push((pi, b, pblk));
                } else {
                    zero.push(b);
                }
            }
            if !zero.is_empty() || !mapped.is_empty() {
                let mut data = page.data.write();
                let mut st = page.state.lock();
                for b in zero {
                    data[b * bs..(b + 1) * bs].fill(0);
                    st.blocks[b].insert(BlockState::UPTODATE);
                }
                for (b, pblk) in mapped {
                    st.blocks[b].insert(BlockState::MAPPED);
                    st.pblk[b] = pblk;
                }
            }
        }
        Ok(to_read)
    }

    /// Runs of physically contiguous blocks of `to_read`, each at most one bio:
    /// (start in `to_read`, count).
    fn read_runs(&self, to_read: &[(usize, usize, u64)], bs: usize) -> Vec<(usize, usize)> {
        let max_blocks = (self.cache.cfg.max_bio_bytes / bs).max(1);
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for i in 0..to_read.len() {
            match runs.last_mut() {
                Some((start, n))
                    if *n < max_blocks && to_read[*start + *n - 1].2 + 1 == to_read[i].2 =>
                {
                    *n += 1
                }
                _ => runs.push((i, 1)),
            }
        }
        runs
    }

    fn readahead_locked(
        &self,
        pages: &[Arc<Page>],
        bpp: usize,
        bs: usize,
        eof_block: u64,
    ) -> Result<(), Error> {
        let to_read = self.map_for_read(pages, bpp, bs, eof_block)?;
        let runs = self.read_runs(&to_read, bs);
        self.read_locked_runs(pages, &to_read, &runs, bs)
    }

    /// Reads `runs` of `to_read` into locked `pages` and waits; marks what was read uptodate.
    fn read_locked_runs(
        &self,
        pages: &[Arc<Page>],
        to_read: &[(usize, usize, u64)],
        runs: &[(usize, usize)],
        bs: usize,
    ) -> Result<(), Error> {
        // The device reads into the pages themselves: each page's bytes are lent (write guard)
        // to the first bio that needs them; a page needed again by a later segment (its blocks
        // split between runs) gets a bounce segment, copied in after the lending bio is done.
        let mut waits = Vec::with_capacity(runs.len());
        let mut lent = vec![false; pages.len()];
        for &(start, n) in runs {
            let mut bio = Bio::new(BioOp::Read, to_read[start].2 * self.cache.dev_per_block);
            // (first index in to_read, blocks) of each bounce segment, in segment order.
            let mut bounced: Vec<(usize, usize)> = Vec::new();
            let mut prev: Option<(usize, usize, bool)> = None; // (page, last block, lent)
            for (i, &(pi, b, _)) in to_read[start..start + n].iter().enumerate() {
                match prev {
                    Some((ppi, pb, true)) if ppi == pi && pb + 1 == b => {
                        if let Some(v) = bio.last_vec_mut() {
                            v.extend(bs);
                        }
                        prev = Some((pi, b, true));
                    }
                    _ => {
                        if lent[pi] {
                            bio.push(BioVec::zeroed(bs));
                            bounced.push((start + i, 1));
                            prev = Some((pi, b, false));
                        } else {
                            lent[pi] = true;
                            let guard = PageDataMut(pages[pi].data.write_arc());
                            bio.push(BioVec::new(
                                ext4kit_blockdev::BioBuf::Lent(Box::new(guard)),
                                b * bs,
                                bs,
                            ));
                            prev = Some((pi, b, true));
                        }
                    }
                }
            }
            let done = ext4kit_blockdev::Completion::new();
            done.attach(&mut bio);
            self.cache.dev.submit(bio);
            waits.push((start, n, bounced, done));
        }
        let mut first_err = None;
        let mut bounce_data: Vec<(usize, usize, Box<[u8]>)> = Vec::new();
        for (start, n, bounced, done) in waits {
            let (mut bio, status) = done.wait();
            let vecs = bio.take_vecs();
            if let Err(e) = status {
                first_err.get_or_insert(Error::Io(e));
                continue;
            }
            // Owned segments are the bounced ones, in order.
            let owned = vecs.into_iter().filter_map(BioVec::into_owned);
            for ((first, count), buf) in bounced.into_iter().zip(owned) {
                bounce_data.push((first, count, buf));
            }
            for &(pi, b, _) in &to_read[start..start + n] {
                pages[pi].state.lock().blocks[b].insert(BlockState::UPTODATE);
            }
        }
        // Every lending bio is dropped: the bounced blocks can be copied in.
        for (first, count, buf) in bounce_data {
            for (k, &(pi, b, _)) in to_read[first..first + count].iter().enumerate() {
                pages[pi].data.write()[b * bs..(b + 1) * bs]
                    .copy_from_slice(&buf[k * bs..(k + 1) * bs]);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        for page in pages {
            let mut st = page.state.lock();
            if st.blocks.iter().all(|b| b.contains(BlockState::UPTODATE)) {
                st.flags.insert(PageFlags::UPTODATE);
            }
        }
        Ok(())
    }

    /// Marks a locked page dirty and tags it.
    fn set_page_dirty(&self, page: &Page) {
        {
            let mut st = page.state.lock();
            st.flags.insert(PageFlags::DIRTY);
        }
        self.tree.lock().dirty.insert(page.index());
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

/// A page held between [`Mapping::write_begin`] and [`Mapping::write_end`]: locked, with its
/// blocks in the range mapped or reserved and the bytes around the range prepared.
pub struct WriteGuard {
    page: Arc<Page>,
    data: ArcRwLockWriteGuard<RawRwLock, PageBytes>,
    from: usize,
    to: usize,
}

impl WriteGuard {
    /// The bytes `from..to` of the page, to copy the new data into.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.from..self.to]
    }

    /// Page index.
    pub fn index(&self) -> u64 {
        self.page.index()
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

    /// Prepares bytes `pos..pos+len` of one page for writing (`ext4_da_write_begin`). The range
    /// must lie inside one page. Blocks in it that are holes get a delayed reservation
    /// (MAPPED|NEW|DELAY), blocks on unwritten extents become MAPPED|NEW|UNWRITTEN, partially
    /// written blocks that are neither are read first, and around NEW blocks the bytes outside
    /// the range are zeroed. The caller must hold no other page of this file locked.
    pub fn write_begin(&self, pos: u64, len: usize) -> Result<WriteGuard, Error> {
        self.write_begin_with(pos, len, true)
    }

    /// [`Mapping::write_begin`]; `zero: false` when the caller fills the whole page.
    fn write_begin_with(&self, pos: u64, len: usize, zero: bool) -> Result<WriteGuard, Error> {
        let ps = self.inner.page_size();
        if pos.checked_add(len as u64).is_none_or(|e| e > MAX_OFFSET) {
            return Err(Error::TooLarge(pos));
        }
        let index = pos / ps;
        let from = (pos % ps) as usize;
        let to = from + len;
        assert!(to as u64 <= ps, "write_begin range crosses a page");
        let page = self.inner.grab_page_with(index, zero || len as u64 != ps);
        {
            let mut st = page.lock();
            // Stable pages: the device may still be reading this page.
            page.wait_writeback_locked(&mut st);
        }
        match self.prepare_write(&page, from, to) {
            Ok(data) => Ok(WriteGuard {
                page,
                data,
                from,
                to,
            }),
            Err(e) => {
                page.unlock();
                Err(e)
            }
        }
    }

    fn prepare_write(
        &self,
        page: &Arc<Page>,
        from: usize,
        to: usize,
    ) -> Result<ArcRwLockWriteGuard<RawRwLock, PageBytes>, Error> {
        let bs = self.inner.cache.cfg.block_size;
        let (b0, b1) = (from / bs, to.div_ceil(bs));
        self.inner.map_page_blocks(page, b0, b1, true)?;
        let mut data = page.data.write_arc();
        let (reads, page_uptodate) = {
            let mut st = page.state.lock();
            let page_uptodate = st.flags.contains(PageFlags::UPTODATE);
            let mut reads = Vec::new();
            for b in b0..b1 {
                let (bstart, bend) = (b * bs, (b + 1) * bs);
                let partial = bstart < from || bend > to;
                let s = st.blocks[b];
                if s.contains(BlockState::NEW) {
                    if page_uptodate {
                        // The cached bytes are valid zeros already.
                        st.blocks[b].remove(BlockState::NEW);
                        st.blocks[b].insert(BlockState::UPTODATE);
                    } else if partial && !s.contains(BlockState::UPTODATE) {
                        data[bstart..from.max(bstart)].fill(0);
                        data[to.min(bend)..bend].fill(0);
                    }
                    continue;
                }
                if partial && !s.contains(BlockState::UPTODATE) {
                    reads.push((b, st.pblk[b], 1usize));
                }
            }
            (reads, page_uptodate)
        };
        let _ = page_uptodate;
        if !reads.is_empty() {
            self.inner.read_blocks_into(&mut data, &reads)?;
            let mut st = page.state.lock();
            for (b, _, _) in reads {
                st.blocks[b].insert(BlockState::UPTODATE);
            }
        }
        Ok(data)
    }

    /// Commits a write prepared by [`Mapping::write_begin`] (`ext4_da_write_end`): the blocks
    /// in the range become UPTODATE|DIRTY, NEW is cleared on the page, the page is dirtied and
    /// i_size grows (under the page lock) if the write ends past it. Returns `copied`.
    pub fn write_end(&self, guard: WriteGuard, copied: usize) -> Result<usize, Error> {
        let WriteGuard {
            page,
            data,
            from,
            to,
        } = guard;
        drop(data);
        let bs = self.inner.cache.cfg.block_size;
        let to = if copied < to - from {
            from + copied
        } else {
            to
        };
        let (b0, b1) = (from / bs, to.div_ceil(bs));
        let new_end = page.index() * self.inner.page_size() + to as u64;
        let mut update_disksize = false;
        {
            let mut st = page.state.lock();
            for b in b0..b1 {
                st.blocks[b].insert(BlockState::UPTODATE | BlockState::DIRTY);
            }
            for s in st.blocks.iter_mut() {
                s.remove(BlockState::NEW);
            }
            if st.blocks.iter().all(|s| s.contains(BlockState::UPTODATE)) {
                st.flags.insert(PageFlags::UPTODATE);
            }
            if new_end > self.inner.i_size.load(Ordering::Acquire) {
                self.inner.i_size.store(new_end, Ordering::Release);
                // The new EOF is inside an allocated, written block: no writeback will raise
                // the on-disk size for it, so do it now.
                let last = (to - 1) / bs;
                let s = st.blocks[last];
                update_disksize = s.contains(BlockState::MAPPED)
                    && !s.intersects(BlockState::DELAY | BlockState::UNWRITTEN);
            }
        }
        if b1 > b0 {
            self.inner.set_page_dirty(&page);
        }
        page.unlock();
        if update_disksize {
            self.inner.update_disksize(new_end)?;
        }
        Ok(copied)
    }

    /// Writes `data` at `offset` through the cache; returns the bytes written. May start
    /// background writeback when the file has more dirty data than the configured limit.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<usize, Error> {
        let _inode = self.inner.inode_lock.lock();
        let ps = self.inner.page_size();
        if !data.is_empty() {
            self.zero_before_extension(offset)?;
        }
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let n = ((ps - pos % ps) as usize).min(data.len() - done);
            // A whole page written needs no zeroed buffer first.
            let mut g = self.write_begin_with(pos, n, false)?;
            g.data_mut().copy_from_slice(&data[done..done + n]);
            self.write_end(g, n)?;
            done += n;
        }
        drop(_inode);
        if let Some(limit) = self.inner.cache.cfg.dirty_limit_bytes {
            self.balance_dirty_pages(limit);
        }
        self.inner.cache.shrink_if_needed(self.inner.ino, false);
        Ok(done)
    }

    /// Past `limit` dirty bytes, hands the file to the flusher thread for background writeback;
    /// past twice the limit, waits for the flusher to catch up (`balance_dirty_pages`).
    fn balance_dirty_pages(&self, limit: usize) {
        let ps = self.inner.page_size() as usize;
        let dirty = self.nr_dirty() * ps;
        if dirty <= limit {
            return;
        }
        let cache = &self.inner.cache;
        cache.flusher.queue(&self.inner);
        let mut before = self.nr_dirty();
        while before * ps > 2 * limit {
            cache.flusher.queue(&self.inner);
            if !cache.flusher.wait_pass(&self.inner) {
                break;
            }
            let now = self.nr_dirty();
            if now >= before {
                // No progress (pages busy or not writable in the background): stop waiting.
                break;
            }
            before = now;
        }
    }

    /// What a store through a shared memory map does when nothing calls `page_mkwrite`:
    /// changes cached bytes of one page (creating and reading it first) and marks the touched
    /// blocks and the page dirty, without touching i_size or any mapping. Writeback must clean
    /// what it cannot write: bytes at or beyond EOF and blocks that are holes never reach the
    /// disk.
    pub fn mmap_write(&self, pos: u64, bytes: &[u8]) -> Result<(), Error> {
        let ps = self.inner.page_size();
        let index = pos / ps;
        let from = (pos % ps) as usize;
        assert!(
            from + bytes.len() <= ps as usize,
            "mmap_write range crosses a page"
        );
        let page = self.inner.grab_page(index);
        {
            let mut st = page.lock();
            page.wait_writeback_locked(&mut st);
            let uptodate = st.flags.contains(PageFlags::UPTODATE);
            drop(st);
            if !uptodate {
                if let Err(e) = self.inner.read_page(&page) {
                    page.unlock();
                    return Err(e);
                }
            }
        }
        page.data.write()[from..from + bytes.len()].copy_from_slice(bytes);
        let bs = self.inner.cache.cfg.block_size;
        {
            let mut st = page.state.lock();
            for b in from / bs..(from + bytes.len()).div_ceil(bs) {
                st.blocks[b].insert(BlockState::DIRTY);
            }
        }
        self.inner.set_page_dirty(&page);
        page.unlock();
        Ok(())
    }

    /// A handle that does not keep the file's cache alive.
    pub fn downgrade(&self) -> WeakMapping {
        WeakMapping(Arc::downgrade(&self.inner))
    }

    /// Starts reading `offset..offset + len` (clipped to EOF) into the cache and returns
    /// without waiting (`page_cache_async_ra` for a file about to be read): a later
    /// [`Mapping::read`] finds the pages uptodate or waits for their bios. Errors are left for
    /// that read to meet.
    pub fn prefetch(&self, offset: u64, len: u64) {
        let end = self.size().min(offset.saturating_add(len));
        if offset >= end {
            return;
        }
        let ps = self.inner.page_size();
        self.inner.readahead_async(offset / ps, (end - 1) / ps);
    }

    /// Reads up to `buf.len()` bytes at `offset`, stopping at EOF; returns the bytes read. Holes
    /// and unwritten blocks read as zeros.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        let size = self.size();
        if offset >= size {
            return Ok(0);
        }
        let end = size.min(offset.saturating_add(buf.len() as u64));
        let ps = self.inner.page_size();
        // Read ahead in windows, so a huge read does not lock its whole range at once.
        let window = ((4 << 20) / ps).max(1);
        let last_page = (end - 1) / ps;
        let mut ra_next = offset / ps;
        let mut pos = offset;
        // A read that starts where the last one ended (or at 0) is part of a sequential stream.
        let sequential = offset == self.inner.ra_prev_end.load(Ordering::Relaxed);
        while pos < end {
            if pos / ps >= ra_next {
                let to = (ra_next + window - 1).min(last_page);
                self.inner.readahead(ra_next, to)?;
                ra_next = to + 1;
            }
            let index = pos / ps;
            let from = (pos % ps) as usize;
            let n = ((ps - pos % ps).min(end - pos)) as usize;
            let page = self.inner.grab_page(index);
            if !page.state.lock().flags.contains(PageFlags::UPTODATE) {
                let uptodate = page.lock().flags.contains(PageFlags::UPTODATE);
                if !uptodate {
                    if let Err(e) = self.inner.read_page(&page) {
                        page.unlock();
                        return Err(e);
                    }
                }
                page.unlock();
            }
            let data = page.data.read();
            let at = (pos - offset) as usize;
            buf[at..at + n].copy_from_slice(&data[from..from + n]);
            pos += n as u64;
            // Sequential reading: keep a window being read ahead while we copy.
            if pos == end {
                self.async_readahead_after(pos / ps, window, sequential);
            }
        }
        self.inner.ra_prev_end.store(end, Ordering::Relaxed);
        self.inner.cache.shrink_if_needed(self.inner.ino, false);
        Ok((end - offset) as usize)
    }

    /// For a sequential reader now at page `at`: when fewer than half a `window` of pages ahead
    /// are queued, queues the next window for asynchronous readahead (up to EOF).
    fn async_readahead_after(&self, at: u64, window: u64, sequential: bool) {
        if !sequential {
            return;
        }
        let ps = self.inner.page_size();
        let size = self.size();
        if size == 0 {
            return;
        }
        let eof_page = (size - 1) / ps;
        let queued = self.inner.ra_queued_end.load(Ordering::Relaxed).max(at);
        if queued > eof_page || queued >= at + window / 2 {
            return;
        }
        let to = (queued + window - 1).min(eof_page);
        self.inner.ra_queued_end.store(to + 1, Ordering::Relaxed);
        self.inner.readahead_async(queued, to);
    }

    /// Writes back dirty pages in the range of `wbc` (see [`WritebackControl`]).
    pub fn writepages(&self, wbc: &mut WritebackControl) -> Result<(), Error> {
        crate::writeback::writepages(&self.inner, wbc)
    }

    /// Waits until no page of the file is under writeback (including unwritten conversion).
    pub fn wait_writeback(&self) {
        self.inner.wait_all_writeback();
    }

    /// Drops every cached page that is clean, unlocked and not under writeback ("drop
    /// caches"); returns how many were dropped.
    pub fn invalidate_clean(&self) -> usize {
        self.inner.evict_clean(usize::MAX, true)
    }

    /// Changes the file size. Shrinking drops cached pages past the new EOF (releasing their
    /// delayed reservations), zeroes the tail of the page that holds the new EOF (dirtying the
    /// EOF block if it is on disk, so the zeros reach it) and asks the filesystem to free the
    /// blocks past it. Growing zeroes the old EOF block's tail and raises the on-disk size.
    pub fn truncate(&self, new_size: u64) -> Result<(), Error> {
        if new_size > MAX_OFFSET {
            return Err(Error::TooLarge(new_size));
        }
        let _inode = self.inner.inode_lock.lock();
        let old = self.size();
        let ps = self.inner.page_size();
        let bs = self.inner.cache.cfg.block_size as u64;
        if new_size < old {
            self.inner.i_size.store(new_size, Ordering::Release);
            // Whole pages past the new EOF.
            let first_gone = new_size.div_ceil(ps);
            let gone: Vec<Arc<Page>> = self.inner.tree.lock().pages.collect_from(first_gone);
            let mut released = 0u64;
            for page in gone {
                let mut st = page.lock();
                page.wait_writeback_locked(&mut st);
                for s in st.blocks.iter_mut() {
                    if s.contains(BlockState::DELAY) {
                        released += 1;
                    }
                    *s = BlockState::empty();
                }
                drop(st);
                {
                    let mut tree = self.inner.tree.lock();
                    self.inner.remove_page(&mut tree, page.index());
                }
                page.unlock();
            }
            // The page holding the new EOF: zero past it (ext4_block_truncate_page).
            if new_size % ps != 0 {
                released += self.zero_eof_block(new_size, ps as usize, true)?;
            }
            if released > 0 {
                self.inner.cache.mapper.release(self.inner.ino, released);
                self.inner.reserved.fetch_sub(released, Ordering::Relaxed);
            }
            self.inner
                .cache
                .mapper
                .truncate(self.inner.ino, new_size.div_ceil(bs), new_size)?;
            let mut ds = self.inner.disksize.lock();
            *ds = (*ds).min(new_size);
        } else if new_size > old {
            self.zero_before_extension(new_size)?;
            self.inner.i_size.store(new_size, Ordering::Release);
            self.inner.update_disksize(new_size)?;
        }
        Ok(())
    }

    /// Before the file grows past `new_end` with a gap after the current EOF: the bytes
    /// between the EOF and the end of its block become file data and must read as zeros,
    /// whatever the cache (an mmap store) or the disk (a tail whose zeroing write failed) holds
    /// there. Zeroes them in the cache and dirties the block so the disk gets the zeros too.
    fn zero_before_extension(&self, new_end: u64) -> Result<(), Error> {
        let old = self.size();
        let bs = self.inner.cache.cfg.block_size;
        if new_end > old && old % bs as u64 != 0 {
            self.zero_eof_block(old, bs, false)?;
        }
        Ok(())
    }

    /// Page `index`, locked, out of writeback, and up to date (read in if it was not).
    fn lock_page_uptodate(&self, index: u64) -> Result<Arc<Page>, Error> {
        let page = self.inner.grab_page(index);
        let uptodate = {
            let mut st = page.lock();
            page.wait_writeback_locked(&mut st);
            st.flags.contains(PageFlags::UPTODATE)
        };
        if !uptodate {
            if let Err(e) = self.inner.read_page(&page) {
                page.unlock();
                return Err(e);
            }
        }
        Ok(page)
    }

    /// Zeroes the page holding byte `eof` from `eof` up to the next multiple of `upto` (the
    /// page end when truncating down, the block end when growing), reading the page first if
    /// it is not cached, and dirties the EOF block if it is on disk so the zeros reach it. When
    /// `discard` is set, blocks wholly past `eof` are discarded (unmapped, clean). Returns the
    /// delayed blocks discarded.
    fn zero_eof_block(&self, eof: u64, upto: usize, discard: bool) -> Result<u64, Error> {
        let ps = self.inner.page_size();
        let bs = self.inner.cache.cfg.block_size;
        let page = self.lock_page_uptodate(eof / ps)?;
        let from = (eof % ps) as usize;
        let to = from.div_ceil(upto) * upto;
        page.data.write()[from..to].fill(0);
        let mut released = 0;
        let eof_block = from / bs;
        let dirty = {
            let mut st = page.state.lock();
            if discard {
                let first_past = from.div_ceil(bs);
                for b in first_past..st.blocks.len() {
                    if st.blocks[b].contains(BlockState::DELAY) {
                        released += 1;
                    }
                    // block_invalidate_folio: unmapped, clean, zero.
                    st.blocks[b] = BlockState::UPTODATE;
                    st.pblk[b] = INVALID_PBLK;
                }
            }
            let on_disk = st.blocks[eof_block].contains(BlockState::MAPPED);
            if on_disk {
                st.blocks[eof_block].insert(BlockState::DIRTY | BlockState::UPTODATE);
            }
            on_disk
        };
        if dirty {
            self.inner.set_page_dirty(&page);
        }
        page.unlock();
        Ok(released)
    }

    /// Punches a hole in `offset..offset+len` (the size stays), as ext4_punch_hole: writes back
    /// and waits for the range, zeroes the partly covered blocks at its edges through the cache
    /// (reading them in if needed and dirtying them, so the disk gets the zeros), drops the
    /// cached pages wholly inside, forgets the wholly covered blocks of the edge pages, and asks
    /// the filesystem to free the wholly covered blocks.
    pub fn punch_hole(&self, offset: u64, len: u64) -> Result<(), Error> {
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= MAX_OFFSET)
            .ok_or(Error::TooLarge(offset))?;
        if len == 0 {
            return Ok(());
        }
        let _inode = self.inner.inode_lock.lock();
        let ps = self.inner.page_size();
        let bs = self.inner.cache.cfg.block_size as u64;
        // The range is clipped at the end of the block holding EOF (the kernel clips at the
        // end of its page); blocks preallocated past that stay.
        let size = self.inner.i_size.load(Ordering::Acquire);
        if offset >= size {
            return Ok(());
        }
        let end = end.min(size.div_ceil(bs) * bs);
        self.writepages(&mut WritebackControl::sync_range(offset, end - 1))?;
        self.wait_writeback();
        // Partial edge blocks (ext4_zero_partial_blocks).
        let head_end = end.min(offset.div_ceil(bs) * bs);
        if offset % bs != 0 {
            self.zero_partial_block(offset, head_end - offset)?;
        }
        let tail_start = end / bs * bs;
        if end % bs != 0 && tail_start >= head_end {
            self.zero_partial_block(tail_start, end - tail_start)?;
        }
        let (first, last) = (offset.div_ceil(bs), end / bs);
        if last <= first {
            return Ok(());
        }
        // Whole blocks (truncate_pagecache_range).
        let (from_byte, to_byte) = (first * bs, last * bs);
        let pages: Vec<Arc<Page>> = self.inner.tree.lock().pages.collect_from(from_byte / ps);
        for page in pages {
            let pos = page.index() * ps;
            if pos >= to_byte {
                break;
            }
            let mut st = page.lock();
            page.wait_writeback_locked(&mut st);
            drop(st);
            let (from, to) = (from_byte.max(pos) - pos, to_byte.min(pos + ps) - pos);
            if from == 0 && to == ps {
                let mut tree = self.inner.tree.lock();
                self.inner.remove_page(&mut tree, page.index());
                drop(tree);
                page.unlock();
                continue;
            }
            page.data.write()[from as usize..to as usize].fill(0);
            {
                let mut st = page.state.lock();
                for b in (from / bs) as usize..(to / bs) as usize {
                    // Unmapped, clean, zero (block_invalidate_folio).
                    st.blocks[b] = BlockState::UPTODATE;
                    st.pblk[b] = INVALID_PBLK;
                }
            }
            page.unlock();
        }
        self.inner
            .cache
            .mapper
            .punch_hole(self.inner.ino, first, last - first)?;
        Ok(())
    }

    /// Zeroes `pos..pos+len` (within one block) through the cache: reads the page in if it is
    /// not up to date and dirties the block if it is on disk (ext4_block_zero_page_range).
    fn zero_partial_block(&self, pos: u64, len: u64) -> Result<(), Error> {
        let ps = self.inner.page_size();
        let bs = self.inner.cache.cfg.block_size as u64;
        let page = self.lock_page_uptodate(pos / ps)?;
        let from = pos % ps;
        page.data.write()[from as usize..(from + len) as usize].fill(0);
        let block = (from / bs) as usize;
        let dirty = {
            let mut st = page.state.lock();
            let on_disk = st.blocks[block].contains(BlockState::MAPPED);
            if on_disk {
                st.blocks[block].insert(BlockState::DIRTY | BlockState::UPTODATE);
            }
            on_disk
        };
        if dirty {
            self.inner.set_page_dirty(&page);
        }
        page.unlock();
        Ok(())
    }

    /// Allocates unwritten extents for the holes in `offset..offset+len` (delayed blocks in the
    /// range are written back first), and grows the file to cover the range unless
    /// `keep_size`.
    pub fn fallocate(&self, offset: u64, len: u64, keep_size: bool) -> Result<(), Error> {
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= MAX_OFFSET)
            .ok_or(Error::TooLarge(offset))?;
        if len == 0 {
            return Ok(());
        }
        let _inode = self.inner.inode_lock.lock();
        let bs = self.inner.cache.cfg.block_size as u64;
        let mut wbc = WritebackControl::sync_range(offset, end - 1);
        self.writepages(&mut wbc)?;
        self.wait_writeback();
        let (first, last) = (offset / bs, end.div_ceil(bs));
        self.inner.forget_holes();
        let r = self
            .inner
            .cache
            .mapper
            .fallocate(self.inner.ino, first, last - first);
        self.inner.forget_holes();
        r?;
        if !keep_size {
            self.zero_before_extension(end)?;
        }
        if !keep_size && end > self.size() {
            self.inner.i_size.store(end, Ordering::Release);
            self.inner.update_disksize(end)?;
        }
        Ok(())
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
