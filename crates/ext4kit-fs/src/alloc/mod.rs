//! The mutable state of a filesystem open for writing, and everything that changes it at the
//! block level: group descriptors and bitmaps, block and inode allocation, the cache of changed
//! inodes, delalloc reservations, and writing it all back.
//!
//! # Locking
//! One mutex (`WriteState::meta`) guards every metadata change (the kernel spreads this over
//! `i_data_sem`, group locks and journal handles; one lock is enough for a userspace engine
//! whose data path — the page cache — runs outside it). Rules:
//! - never call into the page cache while holding it (the page cache calls the mapper, which
//!   takes it: deadlock);
//! - never wait for page writeback while holding it (the conversion worker needs it to end
//!   writeback);
//! - metadata IO (metadata cache reads) is fine under it: completions need no lock of ours.
//!
//! # Bitmaps
//! Bitmap blocks live in the metadata cache like every other block. A group whose bitmap was
//! never initialised (BLOCK_UNINIT / INODE_UNINIT) gets one built the first time something is
//! allocated in it: its own and other groups' metadata inside it are marked used (flex_bg puts
//! many groups' bitmaps and inode tables in one group), the padding past the end of the
//! filesystem too; then the flag is cleared.
//!
//! # Frees wait for the commit
//! When syncs go through the journal, blocks freed since the last sync stay marked in use
//! (`deferred_frees`) until `write_back` puts the frees into the next transaction, so nothing
//! reuses — and overwrites — a block that the last committed state still owns (the kernel's
//! `ext4_free_blocks` hands freed extents to the allocator only at commit). Out of space, they
//! are released at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use ext4kit_format::bitmap;
use ext4kit_format::extent::MAX_INIT_LEN;
use ext4kit_format::group_desc::{GroupDesc, GroupFlags};
use ext4kit_format::inode::Inode;
use ext4kit_format::superblock::SUPERBLOCK_OFFSET;
use ext4kit_format::{RoCompatFeatures, Structure, Superblock};
use parking_lot::Mutex;

use crate::error::{Corruption, Error, Result, ResultExt};
use crate::fs::Core;
use crate::metacache::MetaBlock;

/// Blocks kept free for metadata (extent tree blocks, directory growth) when reserving for
/// delayed allocation: a reservation that would eat into them fails with ENOSPC.
const METADATA_MARGIN_BLOCKS: u64 = 64;

/// Shortest free run (in bytes) on which a stream starts a new extent (shorter ones are left to
/// small files unless the request fits): mballoc's largest normalised request.
const MIN_STREAM_RUN_BYTES: u64 = 8 << 20;

/// The write side of an open filesystem.
#[derive(Debug)]
pub struct WriteState {
    pub(crate) meta: Mutex<MetaState>,
    /// Page caches of files written since the last sync (kept alive until it).
    pub(crate) open_mappings: Mutex<HashMap<u32, ext4kit_pagecache::Mapping>>,
    /// The journal writer, when syncs commit through the journal (lock order: journal, meta).
    pub(crate) journal: Option<Mutex<crate::journal::commit::JournalWriter>>,
}

/// Metadata being changed (guarded by `WriteState::meta`).
#[derive(Debug)]
pub struct MetaState {
    pub(crate) sb: Superblock,
    pub(crate) groups: Vec<GroupDesc>,
    pub(crate) dirty_groups: BTreeSet<u32>,
    /// Inodes read or changed while writing; the dirty ones are written back at sync.
    pub(crate) inodes: HashMap<u32, Inode>,
    pub(crate) dirty_inodes: BTreeSet<u32>,
    /// Blocks reserved for delayed allocation, over all files and per file.
    pub(crate) reserved: u64,
    pub(crate) reserved_by: HashMap<u32, u64>,
    /// Next group to try for a new directory (spreads directories over flex groups).
    pub(crate) next_dir_group: u32,
    /// Generation numbers handed out (deterministic).
    pub(crate) next_generation: u32,
    /// Blocks freed since the last sync, not allocatable before it commits (`Some` when syncs
    /// go through the journal; see the module docs).
    pub(crate) deferred_frees: Option<Vec<(u64, u64)>>,
    /// Open [`crate::journal::commit::CommitHold`]s: while any is, nothing commits early
    /// and deferred frees are not handed out for space (see `release_for_space`).
    pub(crate) holds: usize,
    /// Blocks no file may be given whatever the bitmaps say (see [`MetaState::system_zone`]),
    /// built at the first allocation.
    pub(crate) zone: Option<Vec<(u64, u64)>>,
    /// Groups whose block bitmap was checked against the zone.
    pub(crate) zone_checked: BTreeSet<u32>,
    /// Blocks found free in a bitmap but claimed by the system zone (marked in use).
    pub(crate) zone_fixed: u64,
}

impl WriteState {
    pub(crate) fn new(sb: &Superblock, groups: &[GroupDesc]) -> WriteState {
        WriteState {
            meta: Mutex::new(MetaState {
                sb: sb.clone(),
                groups: groups.to_vec(),
                dirty_groups: BTreeSet::new(),
                inodes: HashMap::new(),
                dirty_inodes: BTreeSet::new(),
                reserved: 0,
                reserved_by: HashMap::new(),
                next_dir_group: 0,
                next_generation: 1,
                deferred_frees: None,
                holds: 0,
                zone: None,
                zone_checked: BTreeSet::new(),
                zone_fixed: 0,
            }),
            open_mappings: Mutex::new(HashMap::new()),
            journal: None,
        }
    }
}

fn no_space(what: &str) -> Error {
    Error::NoSpace(what.to_string())
}

impl MetaState {
    // ---- geometry helpers ----

    fn bpg(&self) -> u64 {
        u64::from(self.sb.blocks_per_group())
    }

    fn ipg(&self) -> u32 {
        self.sb.inodes_per_group()
    }

    fn first_data_block(&self) -> u64 {
        u64::from(self.sb.first_data_block())
    }

    /// Group of a block.
    pub(crate) fn group_of(&self, block: u64) -> u32 {
        ((block.saturating_sub(self.first_data_block())) / self.bpg()) as u32
    }

    /// Blocks in group `g` (the last group may be short).
    fn group_len(&self, g: u32) -> u64 {
        let first = self.first_data_block() + u64::from(g) * self.bpg();
        (self.sb.blocks_count() - first).min(self.bpg())
    }

    fn group_first(&self, g: u32) -> u64 {
        self.first_data_block() + u64::from(g) * self.bpg()
    }

    /// Free blocks (superblock view: sum of the groups).
    pub(crate) fn free_blocks(&self) -> u64 {
        self.groups
            .iter()
            .map(|g| u64::from(g.free_blocks_count()))
            .sum()
    }

    fn mark_group(&mut self, g: u32) {
        self.dirty_groups.insert(g);
    }

    // ---- inodes ----

    /// The inode `ino` as the writer sees it (changed copy, else read from its table).
    pub(crate) fn inode(&mut self, core: &Core, ino: u32) -> Result<&mut Inode> {
        if !self.inodes.contains_key(&ino) {
            let inode = core.read_inode_from_table(ino, &self.groups)?;
            self.inodes.insert(ino, inode);
        }
        self.inodes
            .get_mut(&ino)
            .ok_or_else(|| Error::corrupt(Structure::Inode, Corruption::InodeOutOfRange { ino }))
    }

    /// Marks `ino` changed.
    pub(crate) fn dirty_inode(&mut self, ino: u32) {
        self.dirty_inodes.insert(ino);
    }

    /// Adds `delta` (may be negative) 512-byte sectors' worth of blocks to `ino`'s `i_blocks`.
    pub(crate) fn add_blocks(&mut self, core: &Core, ino: u32, blocks: i64) -> Result<()> {
        let huge = self.sb.has_ro_compat(RoCompatFeatures::HUGE_FILE);
        let bits = self.sb.block_size_bits();
        let per = i64::from(self.sb.block_size() / 512);
        let inode = self.inode(core, ino)?;
        let cur = inode.block_count_512(huge, bits) as i64;
        let new = (cur + blocks * per).max(0) as u64;
        inode
            .set_block_count_512(new, huge, bits)
            .map_err(Error::from)?;
        self.dirty_inode(ino);
        Ok(())
    }

    /// A fresh generation number.
    pub(crate) fn generation(&mut self) -> u32 {
        let g = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(0x9E37_79B9).max(1);
        g
    }

    // ---- bitmaps ----

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

    /// The inode bitmap of group `g`, built first if the group was never initialised.
    fn inode_bitmap(&mut self, core: &Core, g: u32) -> Result<Arc<MetaBlock>> {
        let gd = &self.groups[g as usize];
        let loc = gd.inode_bitmap();
        if !gd.flags().contains(GroupFlags::INODE_UNINIT) {
            return core.cache.get(loc).ctx_group(g);
        }
        let bs = self.sb.block_size() as usize;
        let mut bits = vec![0u8; bs];
        bitmap::mark_padding(&mut bits, self.ipg() as usize);
        let blk = core.cache.get_new(loc);
        blk.write().copy_from_slice(&bits);
        blk.mark_dirty();
        let gd = &mut self.groups[g as usize];
        let mut f = gd.flags();
        f.remove(GroupFlags::INODE_UNINIT);
        gd.set_flags(f);
        self.mark_group(g);
        Ok(blk)
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

    // ---- inode allocation ----

    /// Allocates an inode near `parent` (directories spread over groups). Returns its number.
    pub(crate) fn alloc_inode(&mut self, core: &Core, parent: u32, is_dir: bool) -> Result<u32> {
        let ngroups = self.groups.len() as u32;
        let ipg = self.ipg();
        let parent_group = (parent.saturating_sub(1)) / ipg;
        let start = if is_dir {
            // Next group (by flex group) with free inodes and blocks above average.
            let flex = 1u32 << self.sb.log_groups_per_flex().min(16);
            let avg_inodes = self
                .groups
                .iter()
                .map(|g| u64::from(g.free_inodes_count()))
                .sum::<u64>()
                / u64::from(ngroups);
            let mut pick = parent_group;
            for k in 0..ngroups {
                let g = (self.next_dir_group + k * flex) % ngroups;
                if u64::from(self.groups[g as usize].free_inodes_count()) >= avg_inodes.max(1) {
                    pick = g;
                    break;
                }
            }
            self.next_dir_group = (pick + flex) % ngroups;
            pick
        } else {
            parent_group
        };
        for k in 0..ngroups {
            let g = (start + k) % ngroups;
            if self.groups[g as usize].free_inodes_count() == 0 {
                continue;
            }
            let bm = self.inode_bitmap(core, g)?;
            let first_allowed = if g == 0 {
                self.sb.first_ino().saturating_sub(1) as usize
            } else {
                0
            };
            let bit = bitmap::find_first_zero(&bm.read(), first_allowed, ipg as usize);
            let Some(bit) = bit else { continue };
            self.check_free_slot(core, g, bit as u32)?;
            bitmap::set(&mut bm.write(), bit);
            bm.mark_dirty();
            let ino = g * ipg + bit as u32 + 1;
            self.expose_inode_slot(core, g, bit as u32)?;
            let gd = &mut self.groups[g as usize];
            gd.set_free_inodes_count(gd.free_inodes_count().saturating_sub(1))
                .map_err(Error::from)?;
            if is_dir {
                gd.set_used_dirs_count(gd.used_dirs_count() + 1)
                    .map_err(Error::from)?;
            }
            self.mark_group(g);
            return Ok(ino);
        }
        Err(no_space("no free inodes"))
    }

    /// Refuses to hand out slot `bit` of group `g` when the inode bitmap calls it free but the
    /// inode there is plainly in use (a file type, links, no deletion time): a damaged bitmap,
    /// and a second file on that inode would destroy the first. Slots in a table's never-used
    /// tail (`itable_unused`) are not looked at.
    fn check_free_slot(&self, core: &Core, g: u32, bit: u32) -> Result<()> {
        let ipg = self.ipg();
        let ino = g * ipg + bit + 1;
        let (mode, links, dtime) = if let Some(i) = self.inodes.get(&ino) {
            (i.mode(), i.links_count(), i.dtime())
        } else {
            let gd = &self.groups[g as usize];
            if self.sb.has_group_desc_csum()
                && (gd.flags().contains(GroupFlags::INODE_UNINIT)
                    || bit >= ipg - gd.itable_unused().min(ipg))
            {
                return Ok(());
            }
            let (isz, bs) = (
                u64::from(self.sb.inode_size()),
                u64::from(self.sb.block_size()),
            );
            let off = u64::from(bit) * isz;
            let blk = core.cache.get(gd.inode_table() + off / bs).ctx_group(g)?;
            let raw = blk.read();
            let o = (off % bs) as usize;
            // The record as it is on disk, unvalidated: only a few fields are looked at.
            let Some(rec) = raw
                .get(o..o + isz as usize)
                .and_then(|r| Inode::from_bytes_unchecked(r).ok())
            else {
                return Ok(());
            };
            (rec.mode(), rec.links_count(), rec.dtime())
        };
        if mode & 0o170000 != 0 && links != 0 && dtime == 0 {
            return Err(Error::corrupt(
                Structure::InodeBitmap,
                Corruption::LiveInodeMarkedFree { ino, links },
            )
            .with_group(g));
        }
        Ok(())
    }

    /// Lowers `itable_unused` so that slot `bit` of group `g` is inside the used part, zeroing
    /// the newly exposed slots of a table that was never zeroed.
    fn expose_inode_slot(&mut self, core: &Core, g: u32, bit: u32) -> Result<()> {
        if !self.sb.has_group_desc_csum() {
            return Ok(());
        }
        let ipg = self.ipg();
        let gd = &self.groups[g as usize];
        let used = ipg - gd.itable_unused().min(ipg);
        if bit < used {
            return Ok(());
        }
        if !gd.flags().contains(GroupFlags::ITABLE_ZEROED) {
            let isz = u64::from(self.sb.inode_size());
            let bs = u64::from(self.sb.block_size());
            let table = gd.inode_table();
            for slot in used..=bit {
                let off = u64::from(slot) * isz;
                let blk = core.cache.get(table + off / bs).ctx_group(g)?;
                let o = (off % bs) as usize;
                blk.write()[o..o + isz as usize].fill(0);
                blk.mark_dirty();
            }
        }
        let gd = &mut self.groups[g as usize];
        gd.set_itable_unused(ipg - bit - 1).map_err(Error::from)?;
        self.mark_group(g);
        Ok(())
    }

    /// Frees inode `ino` (its blocks must already be freed).
    pub(crate) fn free_inode(&mut self, core: &Core, ino: u32, was_dir: bool) -> Result<()> {
        let ipg = self.ipg();
        let g = (ino - 1) / ipg;
        let bit = (ino - 1) % ipg;
        let bm = self.inode_bitmap(core, g)?;
        bitmap::clear(&mut bm.write(), bit as usize);
        bm.mark_dirty();
        let gd = &mut self.groups[g as usize];
        gd.set_free_inodes_count((gd.free_inodes_count() + 1).min(ipg))
            .map_err(Error::from)?;
        if was_dir {
            gd.set_used_dirs_count(gd.used_dirs_count().saturating_sub(1))
                .map_err(Error::from)?;
        }
        self.mark_group(g);
        Ok(())
    }

    // ---- write-back ----

    /// Writes changed inodes, group descriptors (with bitmap checksums) and the superblock into
    /// their blocks in the metadata cache (marking them dirty).
    pub(crate) fn write_back(&mut self, core: &Core) -> Result<()> {
        self.release_deferred_frees(core)?;
        let seed = self.sb.has_metadata_csum().then(|| self.sb.csum_seed());
        let isz = u64::from(self.sb.inode_size());
        let bs = u64::from(self.sb.block_size());
        let ipg = self.ipg();
        let dirty: Vec<u32> = std::mem::take(&mut self.dirty_inodes).into_iter().collect();
        for ino in dirty {
            let Some(inode) = self.inodes.get_mut(&ino) else {
                continue;
            };
            if let Some(seed) = seed {
                inode.update_checksum(ino, seed);
            }
            let g = (ino - 1) / ipg;
            let off = u64::from((ino - 1) % ipg) * isz;
            let table = self.groups[g as usize].inode_table();
            let blk = core.cache.get(table + off / bs).ctx_inode(ino)?;
            let o = (off % bs) as usize;
            let raw = inode.as_bytes();
            blk.write()[o..o + raw.len()].copy_from_slice(raw);
            blk.mark_dirty();
        }
        // Keep the inode cache from growing without bound: clean inodes can be read again.
        if self.inodes.len() > 65_536 {
            self.inodes.clear();
        }
        let groups: Vec<u32> = std::mem::take(&mut self.dirty_groups).into_iter().collect();
        for g in groups {
            let gd = self.groups[g as usize].clone();
            let mut gd = gd;
            if self.sb.has_metadata_csum() {
                if !gd.flags().contains(GroupFlags::BLOCK_UNINIT) {
                    let bm = core.cache.get(gd.block_bitmap()).ctx_group(g)?;
                    gd.set_block_bitmap_checksum(&self.sb, &bm.read());
                }
                if !gd.flags().contains(GroupFlags::INODE_UNINIT) {
                    let bm = core.cache.get(gd.inode_bitmap()).ctx_group(g)?;
                    gd.set_inode_bitmap_checksum(&self.sb, &bm.read());
                }
            }
            gd.update_checksum(&self.sb, g);
            let (index, off) = self.sb.group_desc_position(g);
            let block = self.sb.group_desc_block_location(index);
            let blk = core.cache.get(block).ctx_group(g)?;
            let raw = gd.as_bytes();
            blk.write()[off..off + raw.len()].copy_from_slice(raw);
            blk.mark_dirty();
            self.groups[g as usize] = gd;
        }
        // Superblock counters follow the groups.
        let free_blocks = self.free_blocks();
        let free_inodes: u64 = self
            .groups
            .iter()
            .map(|g| u64::from(g.free_inodes_count()))
            .sum();
        self.sb.set_free_blocks_count(free_blocks);
        self.sb.set_free_inodes_count(free_inodes as u32);
        self.sb.update_checksum();
        let sb_block = SUPERBLOCK_OFFSET / bs;
        let sb_off = (SUPERBLOCK_OFFSET % bs) as usize;
        let blk = core.cache.get(sb_block)?;
        let raw = self.sb.as_bytes();
        blk.write()[sb_off..sb_off + raw.len()].copy_from_slice(raw);
        blk.mark_dirty();
        Ok(())
    }
}
