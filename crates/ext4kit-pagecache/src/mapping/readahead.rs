//! Readahead (the kernel's `mm/readahead.c` and `mpage_readahead`): many pages read with as
//! few and as large bios as the physical layout allows, synchronously for a read that needs
//! them now, asynchronously ahead of a sequential reader and for [`Mapping::prefetch`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ext4kit_blockdev::{Bio, BioOp, BioVec};

use super::{Mapping, MappingInner};
use crate::Error;
use crate::mapper::{ExtentKind, MapFlags};
use crate::page::{INVALID_PBLK, Page, PageDataMut};
use crate::state::{BlockState, PageFlags};

impl MappingInner {
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
    pub(super) fn readahead(&self, first: u64, last: u64) -> Result<(), Error> {
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
}

impl Mapping {
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

    /// For a sequential reader now at page `at`: when fewer than half a `window` of pages ahead
    /// are queued, queues the next window for asynchronous readahead (up to EOF).
    pub(super) fn async_readahead_after(&self, at: u64, window: u64, sequential: bool) {
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
}
