//! Allocation — group descriptors, block and inode bitmaps — and the metadata state of a
//! filesystem open for writing ([`MetaState`]): descriptors and counters, the cache of changed
//! inodes, delalloc reservations, and writing it all back into the metadata cache.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`MetaState`] (what one lock guards), the inode cache, write-back of inodes, descriptors and the superblock; [`Space`] |
//! | `blocks.rs` | block bitmaps, the system zone, block allocation (streams, tree blocks), frees (deferred until the commit), reservations |
//! | `inodes.rs` | inode bitmaps, inode allocation and its damage checks, freeing inodes |
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

mod blocks;
mod inodes;

use std::collections::{BTreeSet, HashMap};

use ext4kit_format::Superblock;
use ext4kit_format::group_desc::{GroupDesc, GroupFlags};
use ext4kit_format::inode::Inode;
use ext4kit_format::superblock::SUPERBLOCK_OFFSET;

use crate::error::{Result, ResultExt};
use crate::fs::{Core, Fs};

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
    /// Open [`crate::sync::CommitHold`]s: while any is, nothing commits early
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

impl MetaState {
    /// The state of a filesystem just opened for writing, with superblock `sb` and
    /// descriptors `groups`.
    pub(crate) fn new(sb: &Superblock, groups: &[GroupDesc]) -> MetaState {
        MetaState {
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
        }
    }
}

impl MetaState {
    // ---- geometry ----

    pub(crate) fn bpg(&self) -> u64 {
        u64::from(self.sb.blocks_per_group())
    }

    pub(crate) fn ipg(&self) -> u32 {
        self.sb.inodes_per_group()
    }

    pub(crate) fn first_data_block(&self) -> u64 {
        u64::from(self.sb.first_data_block())
    }

    /// Group of a block.
    pub(crate) fn group_of(&self, block: u64) -> u32 {
        ((block.saturating_sub(self.first_data_block())) / self.bpg()) as u32
    }

    /// Blocks in group `g` (the last group may be short).
    pub(crate) fn group_len(&self, g: u32) -> u64 {
        let first = self.first_data_block() + u64::from(g) * self.bpg();
        (self.sb.blocks_count() - first).min(self.bpg())
    }

    pub(crate) fn group_first(&self, g: u32) -> u64 {
        self.first_data_block() + u64::from(g) * self.bpg()
    }

    /// Free blocks (superblock view: sum of the groups).
    pub(crate) fn free_blocks(&self) -> u64 {
        self.groups
            .iter()
            .map(|g| u64::from(g.free_blocks_count()))
            .sum()
    }

    /// Free inodes (superblock view: sum of the groups).
    pub(crate) fn free_inodes(&self) -> u64 {
        self.groups
            .iter()
            .map(|g| u64::from(g.free_inodes_count()))
            .sum()
    }

    pub(crate) fn mark_group(&mut self, g: u32) {
        self.dirty_groups.insert(g);
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
        let free_inodes = self.free_inodes();
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

/// Room left in an image for new data and inodes (see [`Fs::space`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes per block.
    pub block_size: u32,
    /// Free blocks as the group descriptors count them now.
    pub free_blocks: u64,
    /// Of those, blocks promised to delayed-allocation writes not yet written back.
    pub reserved_blocks: u64,
    /// Blocks freed since the last commit: they become free with the next sync (and sooner,
    /// out of space, unless a [`CommitHold`](crate::sync::CommitHold) is open).
    pub awaiting_commit: u64,
    /// Blocks new file data can take now: free, less the reservations and the margin kept for
    /// metadata (what a write checks its reservation against).
    pub available_blocks: u64,
    /// Free inodes.
    pub free_inodes: u64,
}

impl Space {
    /// [`Space::available_blocks`] in bytes.
    pub fn available_bytes(&self) -> u64 {
        self.available_blocks * u64::from(self.block_size)
    }
}

impl Fs {
    /// The room left for new data and inodes, as the next write sees it.
    pub fn space(&self) -> Space {
        let block_size = self.core.block_size;
        match &self.core.write {
            Some(w) => {
                let m = w.meta.lock();
                let free_blocks = m.free_blocks();
                let free_inodes = m.free_inodes();
                let awaiting_commit = m
                    .deferred_frees
                    .as_ref()
                    .map_or(0, |d| d.iter().map(|(_, n)| *n).sum());
                Space {
                    block_size,
                    free_blocks,
                    reserved_blocks: m.reserved,
                    awaiting_commit,
                    available_blocks: m.available_blocks(),
                    free_inodes,
                }
            }
            None => {
                let gd = self.group_descs();
                let free_blocks = gd.iter().map(|g| u64::from(g.free_blocks_count())).sum();
                Space {
                    block_size,
                    free_blocks,
                    reserved_blocks: 0,
                    awaiting_commit: 0,
                    available_blocks: 0,
                    free_inodes: gd.iter().map(|g| u64::from(g.free_inodes_count())).sum(),
                }
            }
        }
    }
}
