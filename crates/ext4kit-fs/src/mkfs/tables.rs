//! Where each group's block bitmap, inode bitmap and inode table go.
//!
//! With flex_bg, mke2fs packs the metadata of 16 groups at the start of the
//! flex group: all block bitmaps, then (`table_offset` blocks after the first
//! block bitmap) all inode bitmaps, then all inode tables, stepping over
//! superblock backups it meets. This module reproduces that placement
//! (the facts come from e2fsprogs' `lib/ext2fs/alloc_tables.c`:
//! `flexbg_offset` and `ext2fs_allocate_group_table`), so that the layout
//! matches `mkfs.ext4`'s block for block.

use super::MkfsError;
use super::blockset::BlockSet;
use super::geometry::{GROUPS_PER_FLEX, Geometry};

/// Locations of one group's bitmaps and inode table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupTables {
    pub block_bitmap: u64,
    pub inode_bitmap: u64,
    pub inode_table: u64,
}

fn no_space(what: &'static str) -> MkfsError {
    MkfsError::NoSpace { what }
}

/// `flexbg_offset`: where to start looking for `elem_size` blocks of the
/// metadata of `group`, given the block just after the previous group's copy.
fn flexbg_offset(
    geo: &Geometry,
    used: &BlockSet,
    group: u32,
    start_blk: u64,
    rem_groups: u32,
    elem_size: u64,
) -> u64 {
    let flex_first = group - group % GROUPS_PER_FLEX;
    let size = (u64::from(rem_groups) * elem_size).min(u64::from(geo.blocks_per_group / 4));
    if start_blk != 0 && start_blk < geo.blocks_count {
        if let Some(b) = used.get_free_blocks(start_blk, start_blk + size, elem_size) {
            return b;
        }
    }
    let start = geo.group_first_block(flex_first);
    let last_blk = geo.group_last_block(geo.flex_last_group(group));
    used.get_free_blocks(start, last_blk, size)
        .or_else(|| used.get_free_blocks(start, last_blk, elem_size))
        .or_else(|| used.get_free_blocks(0, last_blk, elem_size))
        .unwrap_or(0)
}

/// Places every group's tables, marking them in `used` (which already holds
/// the superblock and descriptor copies).
pub(crate) fn allocate_tables(
    geo: &Geometry,
    used: &mut BlockSet,
) -> Result<Vec<GroupTables>, MkfsError> {
    let itb = u64::from(geo.inode_table_blocks);
    let mut out: Vec<GroupTables> = Vec::with_capacity(geo.group_count as usize);
    for group in 0..geo.group_count {
        let group_blk = geo.group_first_block(group);
        let last_grp = geo.flex_last_group(group);
        let rem_groups = last_grp - group + 1;
        let last_blk = geo.group_last_block(last_grp);
        let prev = out.last().copied();
        let mut table_offset = u64::from(GROUPS_PER_FLEX);
        if group % GROUPS_PER_FLEX == 0 && last_grp == geo.group_count - 1 {
            // The last flex group keeps its tables contiguous.
            table_offset = u64::from(last_grp % GROUPS_PER_FLEX);
            table_offset = if table_offset == 0 {
                u64::from(GROUPS_PER_FLEX)
            } else {
                table_offset + 1
            };
        }

        // Block bitmap.
        let hint = match prev {
            Some(p) if group % GROUPS_PER_FLEX != 0 => p.block_bitmap + 1,
            _ => 0,
        };
        let start = flexbg_offset(geo, used, group, hint, rem_groups, 1);
        let block_bitmap = used
            .get_free_blocks(start, last_blk, 1)
            .or_else(|| used.get_free_blocks(group_blk, last_blk, 1))
            .ok_or_else(|| no_space("a block bitmap"))?;
        if !used.insert(block_bitmap, 1) {
            return Err(MkfsError::Internal(format!(
                "block bitmap of group {group} at a used block"
            )));
        }

        // Inode bitmap.
        let hint = match prev {
            Some(p) if group % GROUPS_PER_FLEX != 0 => p.inode_bitmap + 1,
            _ => block_bitmap + table_offset,
        };
        let start = flexbg_offset(geo, used, group, hint, rem_groups, 1);
        let inode_bitmap = used
            .get_free_blocks(start, last_blk, 1)
            .or_else(|| used.get_free_blocks(group_blk, last_blk, 1))
            .ok_or_else(|| no_space("an inode bitmap"))?;
        if !used.insert(inode_bitmap, 1) {
            return Err(MkfsError::Internal(format!(
                "inode bitmap of group {group} at a used block"
            )));
        }

        // Inode table.
        let hint = match prev {
            Some(p) if group % GROUPS_PER_FLEX != 0 => p.inode_table + itb,
            _ => inode_bitmap + table_offset,
        };
        let start = flexbg_offset(geo, used, group, hint, rem_groups, itb);
        let inode_table = used
            .get_free_blocks(start, last_blk, itb)
            .ok_or_else(|| no_space("an inode table"))?;
        if !used.insert(inode_table, itb) {
            return Err(MkfsError::Internal(format!(
                "inode table of group {group} at a used block"
            )));
        }
        out.push(GroupTables {
            block_bitmap,
            inode_bitmap,
            inode_table,
        });
    }
    Ok(out)
}
