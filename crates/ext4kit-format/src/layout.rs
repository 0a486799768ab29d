//! Group geometry derived from the superblock: how many groups there are,
//! which blocks a group covers, which groups carry superblock backups
//! (sparse_super, sparse_super2 or all), where the group descriptor table and
//! the reserved GDT blocks lie (classic layout and meta_bg), and where an inode
//! record lives.
//!
//! All functions assume a superblock that passed [`Superblock::validate`]; on
//! invalid values they return saturated or `None` results, never panic.

use crate::features::{CompatFeatures, IncompatFeatures, RoCompatFeatures};
use crate::superblock::Superblock;

/// Where the metadata at the start of a group lies (absolute block numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupMetadata {
    /// Block holding a superblock copy (for group 0 with 1 KiB blocks this is
    /// block 1; with larger blocks block 0, the superblock being at byte 1024).
    pub superblock: Option<u64>,
    /// First block and length of the classic group descriptor table copy.
    pub gdt: Option<(u64, u32)>,
    /// First block and length of the reserved GDT blocks (resize_inode).
    pub reserved_gdt: Option<(u64, u32)>,
    /// The meta_bg descriptor block held by this group, if any.
    pub meta_bg_gdt: Option<u64>,
}

impl GroupMetadata {
    /// Number of blocks used by the superblock copy and descriptor blocks.
    pub fn block_count(&self) -> u32 {
        u32::from(self.superblock.is_some())
            + self.gdt.map_or(0, |g| g.1)
            + self.reserved_gdt.map_or(0, |g| g.1)
            + u32::from(self.meta_bg_gdt.is_some())
    }
}

/// `true` if `n` is a power of `base` (`n` ≥ 1; `base^0 = 1` counts).
fn is_power_of(mut n: u32, base: u32) -> bool {
    if n == 0 {
        return false;
    }
    while n % base == 0 {
        n /= base;
    }
    n == 1
}

impl Superblock {
    /// Number of block groups: ceil((blocks - first_data_block) / blocks_per_group).
    pub fn group_count(&self) -> u32 {
        let bpg = u64::from(self.blocks_per_group().max(1));
        let n = self
            .blocks_count()
            .saturating_sub(u64::from(self.first_data_block()))
            .div_ceil(bpg);
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// First block of group `group`.
    pub fn group_first_block(&self, group: u32) -> u64 {
        u64::from(self.first_data_block())
            .saturating_add(u64::from(group).saturating_mul(u64::from(self.blocks_per_group())))
    }

    /// Number of blocks in group `group` (the last group may be shorter).
    pub fn group_block_count(&self, group: u32) -> u32 {
        let first = self.group_first_block(group);
        let end = first
            .saturating_add(u64::from(self.blocks_per_group()))
            .min(self.blocks_count());
        u32::try_from(end.saturating_sub(first)).unwrap_or(u32::MAX)
    }

    /// The group a block belongs to and its index within the group, or `None`
    /// if the block is before `s_first_data_block` or beyond the filesystem.
    pub fn block_group(&self, block: u64) -> Option<(u32, u32)> {
        if block >= self.blocks_count() {
            return None;
        }
        let rel = block.checked_sub(u64::from(self.first_data_block()))?;
        let bpg = u64::from(self.blocks_per_group());
        if bpg == 0 {
            return None;
        }
        Some((u32::try_from(rel / bpg).ok()?, (rel % bpg) as u32))
    }

    /// The group of inode `ino` and its index within the group (inodes start at 1).
    pub fn inode_group(&self, ino: u32) -> Option<(u32, u32)> {
        let ipg = self.inodes_per_group();
        if ino == 0 || ino > self.inodes_count() || ipg == 0 {
            return None;
        }
        let rel = ino - 1;
        Some((rel / ipg, rel % ipg))
    }

    /// Byte offset of inode `ino`'s record within its group's inode table.
    pub fn inode_table_offset(&self, ino: u32) -> Option<(u32, u64)> {
        let (group, index) = self.inode_group(ino)?;
        Some((group, u64::from(index) * u64::from(self.inode_size())))
    }

    /// Inodes per block.
    pub fn inodes_per_block(&self) -> u32 {
        self.block_size() / u32::from(self.inode_size().max(1))
    }

    /// Blocks taken by one group's inode table.
    pub fn inode_table_blocks(&self) -> u32 {
        let bytes = u64::from(self.inodes_per_group()) * u64::from(self.inode_size());
        u32::try_from(bytes.div_ceil(u64::from(self.block_size().max(1)))).unwrap_or(u32::MAX)
    }

    /// Group descriptors per block.
    pub fn desc_per_block(&self) -> u32 {
        self.block_size() / u32::from(self.desc_size().max(1))
    }

    /// Number of blocks of the (primary) group descriptor table.
    pub fn gdt_block_count(&self) -> u32 {
        self.group_count().div_ceil(self.desc_per_block().max(1))
    }

    /// Which group descriptor block holds group `group`'s descriptor, and the
    /// byte offset inside that block.
    pub fn group_desc_position(&self, group: u32) -> (u32, usize) {
        let per = self.desc_per_block().max(1);
        (
            group / per,
            (group % per) as usize * usize::from(self.desc_size()),
        )
    }

    /// `true` if group `group` holds a superblock backup (group 0 always holds
    /// the primary). sparse_super2 uses `s_backup_bgs`; sparse_super uses
    /// groups 0, 1 and powers of 3, 5 and 7; otherwise every group.
    pub fn group_has_superblock(&self, group: u32) -> bool {
        if group == 0 {
            return true;
        }
        if self.has_compat(CompatFeatures::SPARSE_SUPER2) {
            let b = self.backup_bgs();
            return group == b[0] || group == b[1];
        }
        if group <= 1 || !self.has_ro_compat(RoCompatFeatures::SPARSE_SUPER) {
            return true;
        }
        if group % 2 == 0 {
            return false;
        }
        is_power_of(group, 3) || is_power_of(group, 5) || is_power_of(group, 7)
    }

    /// The superblock and descriptor blocks at the start of group `group`
    /// (what `ext2fs_super_and_bgd_loc2` reports).
    pub fn group_metadata(&self, group: u32) -> GroupMetadata {
        let mut first = self.group_first_block(group);
        if first == 0 && self.block_size() == 1024 {
            // 1 KiB blocks with bigalloc: block 0 is not part of the filesystem proper.
            first = 1;
        }
        let mut m = GroupMetadata::default();
        let has_super = self.group_has_superblock(group);
        if has_super {
            m.superblock = Some(first);
        }
        let meta_bg = self.has_incompat(IncompatFeatures::META_BG);
        let per = self.desc_per_block().max(1);
        let meta_group = group / per;
        if !meta_bg || meta_group < self.first_meta_bg() {
            if has_super {
                let gdt_blocks = if meta_bg {
                    self.first_meta_bg()
                } else {
                    self.gdt_block_count()
                };
                m.gdt = Some((first + 1, gdt_blocks));
                let reserved = u32::from(self.reserved_gdt_blocks());
                if reserved > 0 && !meta_bg {
                    m.reserved_gdt = Some((first + 1 + u64::from(gdt_blocks), reserved));
                }
            }
        } else {
            let idx = group % per;
            if idx == 0 || idx == 1 || idx == per - 1 {
                m.meta_bg_gdt = Some(first + u64::from(has_super));
            }
        }
        m
    }

    /// Absolute block of the primary copy of descriptor block `index`
    /// (the kernel's `descriptor_loc` for the primary superblock).
    pub fn group_desc_block_location(&self, index: u32) -> u64 {
        let sb_block = u64::from(self.first_data_block());
        let bigalloc_1k = self.block_size() == 1024 && self.first_data_block() == 0;
        if !self.has_incompat(IncompatFeatures::META_BG) || index < self.first_meta_bg() {
            return sb_block + u64::from(index) + 1 + u64::from(bigalloc_1k);
        }
        let group = index.saturating_mul(self.desc_per_block());
        let mut has_super = u64::from(self.group_has_superblock(group));
        if bigalloc_1k && index == 0 {
            has_super += 1;
        }
        self.group_first_block(group) + has_super
    }

    /// First group of the flex group containing `group`.
    pub fn flex_group_first(&self, group: u32) -> u32 {
        let n = self.groups_per_flex().max(1);
        group - group % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powers() {
        let expect = [0u32, 1, 3, 5, 7, 9, 25, 27, 49, 81, 125, 243, 343];
        let mut sb = Superblock::new_zeroed();
        sb.set_feature_ro_compat(RoCompatFeatures::SPARSE_SUPER);
        let got: Vec<u32> = (0..400).filter(|&g| sb.group_has_superblock(g)).collect();
        assert_eq!(got, expect);
        sb.set_feature_compat(CompatFeatures::SPARSE_SUPER2);
        sb.set_backup_bgs([1, 17]);
        let got: Vec<u32> = (0..400).filter(|&g| sb.group_has_superblock(g)).collect();
        assert_eq!(got, [0, 1, 17]);
    }
}
