//! Block group descriptors (`struct ext4_group_desc`), 32 bytes or
//! `s_desc_size` bytes (≥ 64) with the 64bit feature.
//!
//! [`GroupDesc`] owns the descriptor's raw bytes; the 64-bit fields combine
//! the `_lo` and `_hi` halves (the `_hi` halves read as 0 in 32-byte
//! descriptors). Checksums: crc16 for `GDT_CSUM` (uninit_bg) and the low 16
//! bits of crc32c for metadata_csum ([`GroupDesc::compute_checksum`]).
//! The descriptor also stores the block and inode bitmap checksums
//! ([`GroupDesc::set_block_bitmap_checksum`] and friends).

use alloc::{vec, vec::Vec};

use crate::bytes::{read_u16le, read_u32le, write_u16le, write_u32le};
use crate::checksum::{crc16, crc32c_le32, crc32c_raw};
use crate::error::{CorruptKind, FormatError, Result, Structure};
use crate::features::{IncompatFeatures, RoCompatFeatures};
use crate::macros::field;
use crate::superblock::Superblock;

/// Size of a descriptor without 64bit.
pub const DESC_SIZE_32: usize = 32;
/// Minimum descriptor size with 64bit.
pub const DESC_SIZE_64: usize = 64;
/// Offset of `bg_checksum`.
const CHECKSUM_OFFSET: usize = 0x1E;

/// `bg_flags` bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct GroupFlags(pub u16);

impl GroupFlags {
    /// `EXT4_BG_INODE_UNINIT`: inode table and bitmap not initialized.
    pub const INODE_UNINIT: Self = Self(0x0001);
    /// `EXT4_BG_BLOCK_UNINIT`: block bitmap not initialized.
    pub const BLOCK_UNINIT: Self = Self(0x0002);
    /// `EXT4_BG_INODE_ZEROED`: the inode table is zeroed on disk.
    pub const ITABLE_ZEROED: Self = Self(0x0004);

    /// `true` if all bits of `other` are set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
    /// Sets bits.
    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }
    /// Clears bits.
    pub fn remove(&mut self, other: Self) {
        self.0 &= !other.0;
    }
}

/// One group descriptor, owning its raw bytes (32 or `s_desc_size`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDesc {
    raw: Vec<u8>,
}

impl GroupDesc {
    /// Takes the first `desc_size` bytes of `bytes` (desc_size is
    /// [`Superblock::desc_size`]). Only the length is checked; location checks
    /// need the superblock ([`GroupDesc::validate`]).
    pub fn parse(bytes: &[u8], desc_size: usize) -> Result<Self> {
        if desc_size < DESC_SIZE_32 {
            return Err(FormatError::too_short(
                Structure::GroupDescriptor,
                DESC_SIZE_32,
                desc_size,
            ));
        }
        let src = bytes.get(..desc_size).ok_or_else(|| {
            FormatError::too_short(Structure::GroupDescriptor, desc_size, bytes.len())
        })?;
        Ok(Self { raw: src.to_vec() })
    }

    /// An all-zero descriptor of the given size.
    pub fn new_zeroed(desc_size: usize) -> Self {
        Self {
            raw: vec![0; desc_size.max(DESC_SIZE_32)],
        }
    }

    /// Parses every descriptor of a descriptor-table block.
    pub fn parse_block(block: &[u8], desc_size: usize) -> Result<Vec<Self>> {
        if desc_size < DESC_SIZE_32 {
            return Err(FormatError::too_short(
                Structure::GroupDescriptor,
                DESC_SIZE_32,
                desc_size,
            ));
        }
        block
            .chunks_exact(desc_size)
            .map(|c| Self::parse(c, desc_size))
            .collect()
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// Descriptor size in bytes.
    pub fn size(&self) -> usize {
        self.raw.len()
    }

    fn hi16(&self, off: usize) -> u16 {
        if self.raw.len() >= off + 2 {
            read_u16le(&self.raw, off)
        } else {
            0
        }
    }
    fn hi32(&self, off: usize) -> u32 {
        if self.raw.len() >= off + 4 {
            read_u32le(&self.raw, off)
        } else {
            0
        }
    }
    fn set_hi16(&mut self, off: usize, v: u16) {
        if self.raw.len() >= off + 2 {
            write_u16le(&mut self.raw, off, v)
        }
    }
    fn set_hi32(&mut self, off: usize, v: u32) {
        if self.raw.len() >= off + 4 {
            write_u32le(&mut self.raw, off, v)
        }
    }
    fn get64(&self, lo: usize, hi: usize) -> u64 {
        u64::from(read_u32le(&self.raw, lo)) | u64::from(self.hi32(hi)) << 32
    }
    fn set64(&mut self, lo: usize, hi: usize, v: u64) -> Result<()> {
        if self.raw.len() < DESC_SIZE_64 && v > u64::from(u32::MAX) {
            return Err(FormatError::unrepresentable(
                Structure::GroupDescriptor,
                "bg_*_lo",
                v,
            ));
        }
        write_u32le(&mut self.raw, lo, v as u32);
        self.set_hi32(hi, (v >> 32) as u32);
        Ok(())
    }
    fn get32(&self, lo: usize, hi: usize) -> u32 {
        u32::from(read_u16le(&self.raw, lo)) | u32::from(self.hi16(hi)) << 16
    }
    fn set32(&mut self, lo: usize, hi: usize, v: u32) -> Result<()> {
        if self.raw.len() < DESC_SIZE_64 && v > u32::from(u16::MAX) {
            return Err(FormatError::unrepresentable(
                Structure::GroupDescriptor,
                "bg_*_count_lo",
                u64::from(v),
            ));
        }
        write_u16le(&mut self.raw, lo, v as u16);
        self.set_hi16(hi, (v >> 16) as u16);
        Ok(())
    }

    /// Block bitmap location (`bg_block_bitmap_lo` / `_hi`).
    pub fn block_bitmap(&self) -> u64 {
        self.get64(0x00, 0x20)
    }
    /// Sets the block bitmap location; fails above 2^32 in a 32-byte descriptor.
    pub fn set_block_bitmap(&mut self, b: u64) -> Result<()> {
        self.set64(0x00, 0x20, b)
    }
    /// Inode bitmap location (`bg_inode_bitmap_lo` / `_hi`).
    pub fn inode_bitmap(&self) -> u64 {
        self.get64(0x04, 0x24)
    }
    /// Sets the inode bitmap location.
    pub fn set_inode_bitmap(&mut self, b: u64) -> Result<()> {
        self.set64(0x04, 0x24, b)
    }
    /// First block of the inode table (`bg_inode_table_lo` / `_hi`).
    pub fn inode_table(&self) -> u64 {
        self.get64(0x08, 0x28)
    }
    /// Sets the inode table location.
    pub fn set_inode_table(&mut self, b: u64) -> Result<()> {
        self.set64(0x08, 0x28, b)
    }
    /// Free blocks (clusters) in the group (`bg_free_blocks_count_lo` / `_hi`).
    pub fn free_blocks_count(&self) -> u32 {
        self.get32(0x0C, 0x2C)
    }
    /// Sets the free block count.
    pub fn set_free_blocks_count(&mut self, v: u32) -> Result<()> {
        self.set32(0x0C, 0x2C, v)
    }
    /// Free inodes in the group (`bg_free_inodes_count_lo` / `_hi`).
    pub fn free_inodes_count(&self) -> u32 {
        self.get32(0x0E, 0x2E)
    }
    /// Sets the free inode count.
    pub fn set_free_inodes_count(&mut self, v: u32) -> Result<()> {
        self.set32(0x0E, 0x2E, v)
    }
    /// Directories in the group (`bg_used_dirs_count_lo` / `_hi`).
    pub fn used_dirs_count(&self) -> u32 {
        self.get32(0x10, 0x30)
    }
    /// Sets the directory count.
    pub fn set_used_dirs_count(&mut self, v: u32) -> Result<()> {
        self.set32(0x10, 0x30, v)
    }
    /// Inodes at the end of the table never used (`bg_itable_unused_lo` / `_hi`).
    pub fn itable_unused(&self) -> u32 {
        self.get32(0x1C, 0x32)
    }
    /// Sets the unused inode count.
    pub fn set_itable_unused(&mut self, v: u32) -> Result<()> {
        self.set32(0x1C, 0x32, v)
    }
    /// Snapshot exclude bitmap location (`bg_exclude_bitmap_lo` / `_hi`).
    pub fn exclude_bitmap(&self) -> u64 {
        self.get64(0x14, 0x34)
    }
    /// Sets the exclude bitmap location.
    pub fn set_exclude_bitmap(&mut self, b: u64) -> Result<()> {
        self.set64(0x14, 0x34, b)
    }

    /// Flags (`bg_flags`).
    pub fn flags(&self) -> GroupFlags {
        GroupFlags(read_u16le(&self.raw, 0x12))
    }
    /// Sets `bg_flags`.
    pub fn set_flags(&mut self, f: GroupFlags) {
        write_u16le(&mut self.raw, 0x12, f.0)
    }

    field!(
        block_bitmap_csum_lo,
        set_block_bitmap_csum_lo,
        u16le,
        0x18,
        "bg_block_bitmap_csum_lo",
        "Low 16 bits of the block bitmap checksum."
    );
    field!(
        inode_bitmap_csum_lo,
        set_inode_bitmap_csum_lo,
        u16le,
        0x1A,
        "bg_inode_bitmap_csum_lo",
        "Low 16 bits of the inode bitmap checksum."
    );
    field!(
        checksum,
        set_checksum,
        u16le,
        CHECKSUM_OFFSET,
        "bg_checksum",
        "Descriptor checksum (crc16 or low 16 bits of crc32c)."
    );

    /// High 16 bits of the block bitmap checksum (`bg_block_bitmap_csum_hi`; 0 in 32-byte descriptors).
    pub fn block_bitmap_csum_hi(&self) -> u16 {
        self.hi16(0x38)
    }
    /// High 16 bits of the inode bitmap checksum (`bg_inode_bitmap_csum_hi`).
    pub fn inode_bitmap_csum_hi(&self) -> u16 {
        self.hi16(0x3A)
    }

    // ---- descriptor checksum ----

    /// The checksum the descriptor of group `group` should carry, or `None`
    /// if the filesystem has neither metadata_csum nor uninit_bg.
    pub fn compute_checksum(&self, sb: &Superblock, group: u32) -> Option<u16> {
        if sb.has_metadata_csum() {
            let mut crc = crc32c_le32(sb.csum_seed(), group);
            crc = crc32c_raw(crc, &self.raw[..CHECKSUM_OFFSET]);
            crc = crc32c_raw(crc, &[0, 0]);
            crc = crc32c_raw(crc, &self.raw[CHECKSUM_OFFSET + 2..]);
            Some(crc as u16)
        } else if sb.has_ro_compat(RoCompatFeatures::GDT_CSUM) {
            let mut crc = crc16(!0, &sb.uuid());
            crc = crc16(crc, &group.to_le_bytes());
            crc = crc16(crc, &self.raw[..CHECKSUM_OFFSET]);
            if sb.has_incompat(IncompatFeatures::BIT64) {
                crc = crc16(crc, &self.raw[CHECKSUM_OFFSET + 2..]);
            }
            Some(crc)
        } else {
            None
        }
    }

    /// Verifies `bg_checksum` (Ok when the filesystem has no descriptor checksums).
    pub fn verify_checksum(&self, sb: &Superblock, group: u32) -> Result<()> {
        match self.compute_checksum(sb, group) {
            Some(c) if c != self.checksum() => Err(FormatError::checksum(
                Structure::GroupDescriptor,
                u32::from(c),
                u32::from(self.checksum()),
            )
            .with_group(group)),
            _ => Ok(()),
        }
    }

    /// Recomputes `bg_checksum` (no-op without descriptor checksums).
    pub fn update_checksum(&mut self, sb: &Superblock, group: u32) {
        if let Some(c) = self.compute_checksum(sb, group) {
            self.set_checksum(c);
        }
    }

    // ---- bitmap checksums ----

    /// crc32c of a block bitmap: `clusters_per_group / 8` bytes, fs seed.
    pub fn compute_block_bitmap_checksum(sb: &Superblock, bitmap: &[u8]) -> u32 {
        let n = (sb.clusters_per_group() / 8) as usize;
        crc32c_raw(sb.csum_seed(), &bitmap[..n.min(bitmap.len())])
    }

    /// crc32c of an inode bitmap: `inodes_per_group / 8` bytes, fs seed.
    pub fn compute_inode_bitmap_checksum(sb: &Superblock, bitmap: &[u8]) -> u32 {
        let n = (sb.inodes_per_group() / 8) as usize;
        crc32c_raw(sb.csum_seed(), &bitmap[..n.min(bitmap.len())])
    }

    /// The stored block bitmap checksum and how many of its bits are stored (16 or 32).
    pub fn block_bitmap_checksum(&self) -> (u32, u32) {
        if self.raw.len() >= 0x3A {
            (
                u32::from(self.block_bitmap_csum_lo())
                    | u32::from(self.block_bitmap_csum_hi()) << 16,
                32,
            )
        } else {
            (u32::from(self.block_bitmap_csum_lo()), 16)
        }
    }

    /// The stored inode bitmap checksum and its width in bits (16 or 32).
    pub fn inode_bitmap_checksum(&self) -> (u32, u32) {
        if self.raw.len() >= 0x3C {
            (
                u32::from(self.inode_bitmap_csum_lo())
                    | u32::from(self.inode_bitmap_csum_hi()) << 16,
                32,
            )
        } else {
            (u32::from(self.inode_bitmap_csum_lo()), 16)
        }
    }

    /// Stores the checksum of `bitmap` (no-op without metadata_csum).
    pub fn set_block_bitmap_checksum(&mut self, sb: &Superblock, bitmap: &[u8]) {
        if !sb.has_metadata_csum() {
            return;
        }
        let c = Self::compute_block_bitmap_checksum(sb, bitmap);
        self.set_block_bitmap_csum_lo(c as u16);
        self.set_hi16(0x38, (c >> 16) as u16);
    }

    /// Stores the checksum of `bitmap` (no-op without metadata_csum).
    pub fn set_inode_bitmap_checksum(&mut self, sb: &Superblock, bitmap: &[u8]) {
        if !sb.has_metadata_csum() {
            return;
        }
        let c = Self::compute_inode_bitmap_checksum(sb, bitmap);
        self.set_inode_bitmap_csum_lo(c as u16);
        self.set_hi16(0x3A, (c >> 16) as u16);
    }

    /// Verifies a block bitmap against the stored checksum (Ok without metadata_csum).
    pub fn verify_block_bitmap_checksum(&self, sb: &Superblock, bitmap: &[u8]) -> Result<()> {
        if !sb.has_metadata_csum() {
            return Ok(());
        }
        let (stored, bits) = self.block_bitmap_checksum();
        let c = Self::compute_block_bitmap_checksum(sb, bitmap);
        let c = if bits == 16 { c & 0xFFFF } else { c };
        if c != stored {
            return Err(FormatError::checksum(Structure::BlockBitmap, c, stored));
        }
        Ok(())
    }

    /// Verifies an inode bitmap against the stored checksum (Ok without metadata_csum).
    pub fn verify_inode_bitmap_checksum(&self, sb: &Superblock, bitmap: &[u8]) -> Result<()> {
        if !sb.has_metadata_csum() {
            return Ok(());
        }
        let (stored, bits) = self.inode_bitmap_checksum();
        let c = Self::compute_inode_bitmap_checksum(sb, bitmap);
        let c = if bits == 16 { c & 0xFFFF } else { c };
        if c != stored {
            return Err(FormatError::checksum(Structure::InodeBitmap, c, stored));
        }
        Ok(())
    }

    // ---- validation ----

    /// Checks locations and counts like the kernel's `ext4_check_descriptors`:
    /// bitmaps and inode table inside the filesystem (inside the group without
    /// flex_bg), not on the primary superblock / descriptor table, and free
    /// counts not above the group size. Does not check the checksum.
    pub fn validate(&self, sb: &Superblock, group: u32) -> Result<()> {
        let bad = |k| Err(FormatError::corrupt(Structure::GroupDescriptor, k).with_group(group));
        let flex = sb.has_incompat(IncompatFeatures::FLEX_BG);
        let last_group = group.saturating_add(1) >= sb.group_count();
        let (first, last) = if flex {
            (
                u64::from(sb.first_data_block()),
                sb.blocks_count().saturating_sub(1),
            )
        } else {
            let f = sb.group_first_block(group);
            let l = if last_group {
                sb.blocks_count().saturating_sub(1)
            } else {
                f.saturating_add(u64::from(sb.blocks_per_group()))
                    .saturating_sub(1)
            };
            (f, l)
        };
        let sb_block = u64::from(sb.first_data_block());
        let m0 = sb.group_metadata(0);
        let gdt_end =
            sb_block + u64::from(m0.gdt.map_or(0, |g| g.1) + u32::from(m0.meta_bg_gdt.is_some()));
        let on_primary_meta = |b: u64| b >= sb_block && b <= gdt_end;
        let bb = self.block_bitmap();
        if bb < first || bb > last || on_primary_meta(bb) {
            return bad(CorruptKind::GroupBlockBitmap(bb));
        }
        let ib = self.inode_bitmap();
        if ib < first || ib > last || on_primary_meta(ib) {
            return bad(CorruptKind::GroupInodeBitmap(ib));
        }
        let it = self.inode_table();
        let it_end = it
            .saturating_add(u64::from(sb.inode_table_blocks()))
            .saturating_sub(1);
        if it < first || it_end > last || on_primary_meta(it) {
            return bad(CorruptKind::GroupInodeTable(it));
        }
        if self.free_blocks_count() > sb.clusters_per_group() {
            return bad(CorruptKind::GroupFreeCount {
                inodes: false,
                found: self.free_blocks_count(),
            });
        }
        if self.free_inodes_count() > sb.inodes_per_group() {
            return bad(CorruptKind::GroupFreeCount {
                inodes: true,
                found: self.free_inodes_count(),
            });
        }
        Ok(())
    }
}
