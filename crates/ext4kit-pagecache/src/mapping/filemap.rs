//! Pages of one file and reading and writing through them (the kernel's `mm/filemap.c` with
//! ext4's `write_begin` / `write_end`): page lookup and insertion, the block lookup behind a
//! page (with its hole hint), `readpage`, the buffered write path (`ext4_da_write_begin`,
//! `ext4_da_write_end`, `balance_dirty_pages`), stores through a shared mapping, and `read`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ext4kit_blockdev::{Bio, BioOp, BioVec};
use parking_lot::RawRwLock;
use parking_lot::lock_api::ArcRwLockWriteGuard;

use super::{HOLE_LOOKUP_BLOCKS, MAX_OFFSET, Mapping, MappingInner, Tree};
use crate::Error;
use crate::mapper::{ExtentKind, MapFlags};
use crate::page::{INVALID_PBLK, Page, PageBytes};
use crate::state::{BlockState, PageFlags};

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

impl MappingInner {
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

    fn grab_page(&self, index: u64) -> Arc<Page> {
        self.grab_page_with(index, true)
    }

    /// [`MappingInner::grab_page`]; `zero: false` lets a new page keep a recycled buffer's
    /// old bytes, for a caller that overwrites the whole page before unlocking it. (Nothing
    /// can see them even if it does not: a block's bytes are only read once it is UPTODATE,
    /// and reading a page fills or zeroes every block that is not.)
    pub(super) fn grab_page_with(&self, index: u64, zero: bool) -> Arc<Page> {
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
    pub(super) fn remove_page(&self, tree: &mut Tree, index: u64) {
        if tree.pages.remove(index).is_some() {
            self.cache.cached_pages.fetch_sub(1, Ordering::Relaxed);
        }
        tree.dirty.remove(index);
        tree.towrite.remove(index);
    }

    pub(super) fn find_page(&self, index: u64) -> Option<Arc<Page>> {
        self.tree.lock().pages.get(index).cloned()
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

    /// Marks a locked page dirty and tags it.
    pub(super) fn set_page_dirty(&self, page: &Page) {
        {
            let mut st = page.state.lock();
            st.flags.insert(PageFlags::DIRTY);
        }
        self.tree.lock().dirty.insert(page.index());
    }
}

impl Mapping {
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

    /// Page `index`, locked, out of writeback, and up to date (read in if it was not).
    pub(super) fn lock_page_uptodate(&self, index: u64) -> Result<Arc<Page>, Error> {
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
}
