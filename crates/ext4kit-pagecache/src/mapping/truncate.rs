//! Truncation and invalidation (the kernel's `mm/truncate.c` with ext4's truncate, punch-hole
//! and fallocate paths): dropping clean pages, changing the size, zeroing partial blocks at the
//! edges of a range, punching holes and preallocating.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{MAX_OFFSET, Mapping, MappingInner};
use crate::Error;
use crate::page::{INVALID_PBLK, Page};
use crate::state::{BlockState, PageFlags};
use crate::writeback::WritebackControl;

impl MappingInner {
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
}

impl Mapping {
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
    pub(super) fn zero_before_extension(&self, new_end: u64) -> Result<(), Error> {
        let old = self.size();
        let bs = self.inner.cache.cfg.block_size;
        if new_end > old && old % bs as u64 != 0 {
            self.zero_eof_block(old, bs, false)?;
        }
        Ok(())
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
