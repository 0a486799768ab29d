//! Blocks: bitmaps (built for groups never initialised, checked against the system zone),
//! allocation — single runs, streams that keep a file's extents long (`alloc_stream`), tree
//! blocks from the end of the filesystem — frees (deferred until the commit when syncs go
//! through the journal), and delayed-allocation reservations.

use std::sync::Arc;

use ext4kit_format::Structure;
use ext4kit_format::bitmap;
use ext4kit_format::extent::MAX_INIT_LEN;
use ext4kit_format::group_desc::GroupFlags;

use crate::alloc::MetaState;
use crate::error::{Corruption, Error, Result, ResultExt};
use crate::fs::Core;
use crate::metacache::MetaBlock;

/// Blocks kept free for metadata (extent tree blocks, directory growth) when reserving for
/// delayed allocation: a reservation that would eat into them fails with ENOSPC.
const METADATA_MARGIN_BLOCKS: u64 = 64;

/// Shortest free run (in bytes) on which a stream starts a new extent (shorter ones are left to
/// small files unless the request fits): mballoc's largest normalised request.
const MIN_STREAM_RUN_BYTES: u64 = 8 << 20;

pub(super) fn no_space(what: &str) -> Error {
    Error::NoSpace(what.to_string())
}

impl MetaState {
    /// The block bitmap of group `g`, built first if the group was never initialised.
    fn block_bitmap(&mut self, core: &Core, g: u32) -> Result<Arc<MetaBlock>> {
        let gd = &self.groups[g as usize];
        let loc = gd.block_bitmap();
        if !gd.flags().contains(GroupFlags::BLOCK_UNINIT) {
            let blk = core.cache.get(loc).ctx_group(g)?;
            self.check_block_bitmap(g, &blk.read())?;
            self.protect_zone(core, g, &blk)?;
            return Ok(blk);
        }
        // Build it: metadata of any group that lies in g, plus padding.
        let first = self.group_first(g);
        let len = self.group_len(g);
        let end = first + len;
        let bs = self.sb.block_size() as usize;
        let mut bits = vec![0u8; bs];
        let mut mark = |start: u64, n: u64| {
            let (s, e) = (start.max(first), (start + n).min(end));
            if s < e {
                bitmap::set_range(&mut bits, (s - first) as usize, (e - s) as usize);
            }
        };
        let md = self.sb.group_metadata(g);
        if let Some(b) = md.superblock {
            mark(b, 1);
        }
        if let Some((b, n)) = md.gdt {
            mark(b, u64::from(n));
        }
        if let Some((b, n)) = md.reserved_gdt {
            mark(b, u64::from(n));
        }
        if let Some(b) = md.meta_bg_gdt {
            mark(b, 1);
        }
        let itb = u64::from(self.sb.inode_table_blocks());
        for other in &self.groups {
            mark(other.block_bitmap(), 1);
            mark(other.inode_bitmap(), 1);
            mark(other.inode_table(), itb);
        }
        bitmap::mark_padding(&mut bits, len as usize);
        let used = bitmap::count_set(&bits, 0, len as usize) as u64;
        let blk = core.cache.get_new(loc);
        blk.write().copy_from_slice(&bits);
        blk.mark_dirty();
        let gd = &mut self.groups[g as usize];
        let mut f = gd.flags();
        f.remove(GroupFlags::BLOCK_UNINIT);
        gd.set_flags(f);
        // The descriptor's free count already describes this state; keep it honest.
        let free = (len - used) as u32;
        if gd.free_blocks_count() != free {
            gd.set_free_blocks_count(free).map_err(Error::from)?;
        }
        self.mark_group(g);
        self.protect_zone(core, g, &blk)?;
        Ok(blk)
    }

    /// The blocks the kernel never hands out whatever a bitmap says (its system zone,
    /// `ext4_setup_system_zone`, and `ext4_inode_block_valid`): every group's superblock
    /// and descriptor copies, reserved descriptor blocks, bitmaps and inode table; the
    /// journal inode's blocks; and the blocks of the bad-blocks inode (inode 1). Sorted,
    /// merged (start, len) runs.
    fn system_zone(&mut self, core: &Core) -> Result<&[(u64, u64)]> {
        if self.zone.is_some() {
            return Ok(self.zone.as_deref().unwrap_or_default());
        }
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let itb = u64::from(self.sb.inode_table_blocks());
        for g in 0..self.groups.len() as u32 {
            let md = self.sb.group_metadata(g);
            runs.extend(md.superblock.map(|b| (b, 1)));
            runs.extend(md.gdt.map(|(b, n)| (b, u64::from(n))));
            runs.extend(md.reserved_gdt.map(|(b, n)| (b, u64::from(n))));
            runs.extend(md.meta_bg_gdt.map(|b| (b, 1)));
            let gd = &self.groups[g as usize];
            runs.extend([
                (gd.block_bitmap(), 1),
                (gd.inode_bitmap(), 1),
                (gd.inode_table(), itb),
            ]);
        }
        let bs = u64::from(self.sb.block_size());
        let journal = if self
            .sb
            .has_compat(ext4kit_format::CompatFeatures::HAS_JOURNAL)
        {
            self.sb.journal_inum()
        } else {
            0
        };
        for ino in [1, journal] {
            if ino == 0 {
                continue;
            }
            let inode = self.inode(core, ino)?.clone();
            // The bad-blocks inode's size need not cover its blocks: take the larger.
            let end = inode
                .size()
                .div_ceil(bs)
                .max(inode.blocks_raw().saturating_mul(512) / bs);
            for e in core.runs(ino, &inode, end)? {
                if e.kind == ext4kit_pagecache::ExtentKind::Written {
                    runs.push((e.pblk, e.len));
                }
            }
        }
        runs.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, n) in runs {
            match merged.last_mut() {
                Some((ms, mn)) if s <= *ms + *mn => *mn = (*mn).max(s + n - *ms),
                _ => merged.push((s, n)),
            }
        }
        self.zone = Some(merged);
        Ok(self.zone.as_deref().unwrap_or_default())
    }

    /// Marks in use, in group `g`'s bitmap, the system-zone blocks it calls free (a damaged
    /// bitmap: the kernel fixes the bitmap the same way when it finds it about to allocate
    /// such a block), once per group, before anything is allocated from it.
    fn protect_zone(&mut self, core: &Core, g: u32, blk: &MetaBlock) -> Result<()> {
        if self.zone_checked.contains(&g) {
            return Ok(());
        }
        self.zone_checked.insert(g);
        let (first, len) = (self.group_first(g), self.group_len(g));
        let end = first + len;
        let zone = self.system_zone(core)?;
        // Only the runs that reach into this group.
        let from = zone.partition_point(|&(s, n)| s + n <= first);
        let upto = zone.partition_point(|&(s, _)| s < end);
        let runs: Vec<(u64, u64)> = zone[from..upto.max(from)].to_vec();
        let mut fixed = 0u32;
        {
            let mut bits = blk.write();
            for &(s, n) in &runs {
                let (a, b) = (s.max(first), (s + n).min(end));
                for x in a..b {
                    let i = (x - first) as usize;
                    if bitmap::test(&bits, i) == Some(false) {
                        bitmap::set(&mut bits, i);
                        fixed += 1;
                    }
                }
            }
        }
        if fixed > 0 {
            blk.mark_dirty();
            let gd = &mut self.groups[g as usize];
            let free = gd.free_blocks_count().saturating_sub(fixed);
            gd.set_free_blocks_count(free).map_err(Error::from)?;
            self.mark_group(g);
            self.zone_fixed += u64::from(fixed);
        }
        Ok(())
    }

    /// Refuses a block bitmap that calls the group's own bitmaps or inode table free (where
    /// they lie in the group), as the kernel's `ext4_valid_block_bitmap` does: allocating from
    /// it would hand out metadata blocks.
    fn check_block_bitmap(&self, g: u32, bits: &[u8]) -> Result<()> {
        let (first, len) = (self.group_first(g), self.group_len(g));
        let gd = &self.groups[g as usize];
        let itb = u64::from(self.sb.inode_table_blocks());
        for (start, n) in [
            (gd.block_bitmap(), 1),
            (gd.inode_bitmap(), 1),
            (gd.inode_table(), itb),
        ] {
            if start < first || start + n > first + len {
                continue;
            }
            let (s, e) = ((start - first) as usize, (start - first + n) as usize);
            if bitmap::count_set(bits, s, e) != e - s {
                let free = (s..e)
                    .find(|&b| bitmap::test(bits, b) == Some(false))
                    .map_or(start, |b| first + b as u64);
                return Err(Error::corrupt(
                    Structure::BlockBitmap,
                    Corruption::MetadataMarkedFree { block: free },
                )
                .with_group(g)
                .with_block(gd.block_bitmap()));
            }
        }
        Ok(())
    }

    // ---- block allocation ----

    /// Allocates up to `want` contiguous blocks, as close after `goal` as possible: the free
    /// run at the goal if it holds `want` blocks (counted across group ends), else the first
    /// run of `want` free blocks from the goal on, else the first free blocks from the goal on.
    /// Returns (first block, count ≥ 1).
    pub(crate) fn alloc_blocks(&mut self, core: &Core, goal: u64, want: u64) -> Result<(u64, u64)> {
        self.alloc_stream(core, goal, want, 0, 0)
    }

    /// [`MetaState::alloc_blocks`] for a file expected to grow by about `stream` blocks beyond
    /// this request (its size so far, as mballoc's request normalisation guesses), whose extent
    /// ending at `goal` can take `room` more blocks. At the goal, blocks that fit that extent
    /// are always taken; a new extent starts at the goal only if the free run there (counted
    /// across group ends) is long — `want` or the stream, up to 8 MiB. Otherwise
    /// the search wants a run that long too, and takes the first `want` blocks of it, so short
    /// runs are left to small files, as mballoc does.
    pub(crate) fn alloc_stream(
        &mut self,
        core: &Core,
        goal: u64,
        want: u64,
        stream: u64,
        room: u64,
    ) -> Result<(u64, u64)> {
        match self.alloc_stream_once(core, goal, want, stream, room) {
            Err(Error::NoSpace(_)) if self.release_for_space(core)? > 0 => {
                self.alloc_stream_once(core, goal, want, stream, room)
            }
            r => r,
        }
    }

    fn alloc_stream_once(
        &mut self,
        core: &Core,
        goal: u64,
        want: u64,
        stream: u64,
        room: u64,
    ) -> Result<(u64, u64)> {
        let want = want.max(1);
        let min_stream_run = MIN_STREAM_RUN_BYTES / u64::from(self.sb.block_size());
        // A stream of a whole extent or more passes over runs that would make short extents.
        let long = if stream >= u64::from(MAX_INIT_LEN) {
            min_stream_run.max(u64::from(MAX_INIT_LEN) * 3 / 8)
        } else {
            want.max(stream).min(min_stream_run)
        };
        let ngroups = self.groups.len() as u32;
        let goal = goal.clamp(
            self.first_data_block(),
            self.sb.blocks_count().saturating_sub(1),
        );
        let start_group = self.group_of(goal).min(ngroups.saturating_sub(1));
        let (run, total) = self.free_run_at(core, goal, want.max(long))?;
        let take = if total >= long {
            run.min(want)
        } else {
            run.min(want).min(room)
        };
        if take > 0 {
            let g = start_group;
            let bm = self.block_bitmap(core, g)?;
            let at = (goal - self.group_first(g)) as usize;
            bitmap::set_range(&mut bm.write(), at, take as usize);
            bm.mark_dirty();
            let gd = &mut self.groups[g as usize];
            let free = gd.free_blocks_count().saturating_sub(take as u32);
            gd.set_free_blocks_count(free).map_err(Error::from)?;
            self.mark_group(g);
            return Ok((goal, take));
        }
        // Two passes: first a full run of `want` anywhere from the goal, then any free block.
        for pass in 0..2 {
            for k in 0..ngroups {
                let g = (start_group + k) % ngroups;
                if self.groups[g as usize].free_blocks_count() == 0 {
                    continue;
                }
                let bm = self.block_bitmap(core, g)?;
                let first = self.group_first(g);
                let len = self.group_len(g) as usize;
                let from = if k == 0 { (goal - first) as usize } else { 0 };
                let mut tail = None;
                let found = {
                    let bits = bm.read();
                    let need = (long as usize).min(len);
                    if pass == 0 {
                        let hit = bitmap::find_zero_run(&bits, from, len, need)
                            .or_else(|| {
                                if from > 0 {
                                    bitmap::find_zero_run(&bits, 0, from, need)
                                } else {
                                    None
                                }
                            })
                            .map(|s| {
                                // The whole run from there, up to `want`.
                                let stop = (s + want as usize).min(len);
                                (
                                    s,
                                    bitmap::find_first_set(&bits, s, stop).unwrap_or(stop) - s,
                                )
                            });
                        if hit.is_none() && bitmap::test(&bits, len - 1) == Some(false) {
                            // A shorter run at the group's end may go on into the next group.
                            let mut t = len - 1;
                            while t > 0 && bitmap::test(&bits, t - 1) == Some(false) {
                                t -= 1;
                            }
                            tail = Some(t);
                        }
                        hit
                    } else {
                        bitmap::find_first_zero(&bits, from, len)
                            .or_else(|| bitmap::find_first_zero(&bits, 0, from))
                            .map(|s| {
                                let mut n = 1;
                                while n < want as usize
                                    && s + n < len
                                    && bitmap::test(&bits, s + n) == Some(false)
                                {
                                    n += 1;
                                }
                                (s, n)
                            })
                    }
                };
                let found = match (found, tail) {
                    (None, Some(t)) => {
                        let (run, total) =
                            self.free_run_at(core, first + t as u64, want.max(long))?;
                        (total >= long).then_some((t, run.min(want) as usize))
                    }
                    (found, _) => found,
                };
                let Some((s, n)) = found else { continue };
                bitmap::set_range(&mut bm.write(), s, n);
                bm.mark_dirty();
                let gd = &mut self.groups[g as usize];
                let free = gd.free_blocks_count().saturating_sub(n as u32);
                gd.set_free_blocks_count(free).map_err(Error::from)?;
                self.mark_group(g);
                return Ok((first + s as u64, n as u64));
            }
        }
        Err(no_space("no free blocks"))
    }

    /// The free run starting at `goal`, at most `want` long: (its length inside the goal's
    /// group, its length across the following groups too).
    fn free_run_at(&mut self, core: &Core, goal: u64, want: u64) -> Result<(u64, u64)> {
        let mut total = 0;
        let mut in_group = None;
        let mut b = goal;
        while total < want {
            let g = self.group_of(b);
            if g as usize >= self.groups.len() || self.groups[g as usize].free_blocks_count() == 0 {
                break;
            }
            let bm = self.block_bitmap(core, g)?;
            let first = self.group_first(g);
            let len = self.group_len(g) as usize;
            let at = (b - first) as usize;
            let bits = bm.read();
            if at >= len || bitmap::test(&bits, at) != Some(false) {
                break;
            }
            let stop = (at as u64 + (want - total)).min(len as u64) as usize;
            let n = (bitmap::find_first_set(&bits, at, stop).unwrap_or(stop) - at) as u64;
            total += n;
            in_group.get_or_insert(n);
            if at + n as usize != len {
                break;
            }
            b = first + len as u64;
        }
        Ok((in_group.unwrap_or(0), total))
    }

    /// Allocates one block for file metadata (an extent tree node): the last free block of the
    /// filesystem, so nodes stay out of the way of data streams, which grow forward from their
    /// goals (mballoc keeps small requests apart from streams, too).
    pub(crate) fn alloc_meta_block(&mut self, core: &Core) -> Result<u64> {
        match self.alloc_meta_block_once(core) {
            Err(Error::NoSpace(_)) if self.release_for_space(core)? > 0 => {
                self.alloc_meta_block_once(core)
            }
            r => r,
        }
    }

    fn alloc_meta_block_once(&mut self, core: &Core) -> Result<u64> {
        for g in (0..self.groups.len() as u32).rev() {
            if self.groups[g as usize].free_blocks_count() == 0 {
                continue;
            }
            let bm = self.block_bitmap(core, g)?;
            let len = self.group_len(g) as usize;
            let found = {
                let bits = bm.read();
                (0..len)
                    .rev()
                    .find(|&i| bitmap::test(&bits, i) == Some(false))
            };
            if let Some(i) = found {
                bitmap::set(&mut bm.write(), i);
                bm.mark_dirty();
                let gd = &mut self.groups[g as usize];
                let free = gd.free_blocks_count().saturating_sub(1);
                gd.set_free_blocks_count(free).map_err(Error::from)?;
                self.mark_group(g);
                return Ok(self.group_first(g) + i as u64);
            }
        }
        Err(no_space("no free blocks"))
    }

    /// Returns blocks `start..start+len` to the free pool (at the next sync when frees wait for
    /// the commit).
    pub(crate) fn free_blocks_range(&mut self, core: &Core, start: u64, len: u64) -> Result<()> {
        if self.deferred_frees.is_some() {
            let end = start
                .checked_add(len)
                .filter(|e| *e <= self.sb.blocks_count());
            if start < self.first_data_block() || end.is_none() {
                return Err(Error::corrupt(
                    Structure::BlockBitmap,
                    Corruption::BlockOutOfRange { block: start },
                ));
            }
            // A freed metadata block must not be written back over whatever reuses it.
            for k in start..start + len {
                core.cache.forget(k);
            }
            if let Some(d) = self.deferred_frees.as_mut() {
                d.push((start, len));
            }
            return Ok(());
        }
        self.apply_free(core, start, len)
    }

    /// Out of space: hands the deferred frees to the allocator now, unless a commit hold is
    /// open — then the blocks the last committed state still owns (an overwritten file's old
    /// contents) must not receive new data before the commit, and the allocation fails.
    /// Returns the number of blocks freed.
    pub(crate) fn release_for_space(&mut self, core: &Core) -> Result<u64> {
        if self.holds > 0 {
            return Ok(0);
        }
        self.release_deferred_frees(core)
    }

    /// Hands the deferred frees to the allocator now (bitmaps, counters). Returns the number of
    /// blocks freed.
    pub(crate) fn release_deferred_frees(&mut self, core: &Core) -> Result<u64> {
        let Some(d) = self.deferred_frees.as_mut() else {
            return Ok(0);
        };
        let ranges = std::mem::take(d);
        let mut n = 0;
        for (start, len) in ranges {
            self.apply_free(core, start, len)?;
            n += len;
        }
        Ok(n)
    }

    /// Clears blocks `start..start+len` in the bitmaps and counts them free.
    fn apply_free(&mut self, core: &Core, start: u64, len: u64) -> Result<()> {
        let mut b = start;
        let end = start + len;
        while b < end {
            let g = self.group_of(b);
            if g as usize >= self.groups.len() {
                return Err(Error::corrupt(
                    Structure::BlockBitmap,
                    Corruption::BlockOutOfRange { block: b },
                ));
            }
            let first = self.group_first(g);
            let glen = self.group_len(g);
            let n = (end - b).min(first + glen - b);
            let bm = self.block_bitmap(core, g)?;
            {
                let mut bits = bm.write();
                bitmap::clear_range(&mut bits, (b - first) as usize, n as usize);
            }
            bm.mark_dirty();
            // A freed metadata block must not be written back over whatever reuses it.
            for k in b..b + n {
                core.cache.forget(k);
            }
            let gd = &mut self.groups[g as usize];
            let free = (u64::from(gd.free_blocks_count()) + n).min(glen) as u32;
            gd.set_free_blocks_count(free).map_err(Error::from)?;
            self.mark_group(g);
            b += n;
        }
        Ok(())
    }

    // ---- delalloc reservations ----

    /// Reserves `count` blocks for delayed allocation by `ino`.
    pub(crate) fn reserve(&mut self, ino: u32, count: u64) -> Result<()> {
        let free = self.free_blocks();
        if self.reserved + count + METADATA_MARGIN_BLOCKS > free {
            return Err(no_space("delayed allocation"));
        }
        self.reserved += count;
        *self.reserved_by.entry(ino).or_default() += count;
        Ok(())
    }

    /// Blocks a reservation can still take (see [`MetaState::reserve`]).
    pub(crate) fn available_blocks(&self) -> u64 {
        self.free_blocks()
            .saturating_sub(self.reserved + METADATA_MARGIN_BLOCKS)
    }

    /// Gives back `count` reserved blocks of `ino`.
    pub(crate) fn release(&mut self, ino: u32, count: u64) {
        let r = self.reserved_by.entry(ino).or_default();
        let n = count.min(*r);
        *r -= n;
        self.reserved -= n.min(self.reserved);
    }
}
