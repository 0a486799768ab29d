//! The ext2/3/4 superblock: the 1024 bytes at byte offset 1024 of the device
//! (and the backups at the start of some groups).
//!
//! [`Superblock`] owns those bytes. Typed getters and setters cover every field
//! (the kernel name is in each doc comment), reserved bytes round-trip
//! untouched, [`Superblock::parse`] validates the geometry and the checksum, and
//! [`Superblock::update_checksum`] recomputes `s_checksum` after changes.
//! Geometry helpers (groups, backups, descriptor locations) live in
//! [`crate::layout`].

use alloc::{boxed::Box, string::String};

use crate::bytes::{read_array, read_u32le, write_bytes, write_u32le};
use crate::checksum::{CRC32C_INITIAL, crc32c_raw};
use crate::error::{
    CorruptKind, FormatError, IncompatibleKind, Result, Structure, UnknownFeatures,
};
use crate::features::{CompatFeatures, IncompatFeatures, RoCompatFeatures};
use crate::hash::HashVersion;
use crate::macros::field;

/// Byte offset of the primary superblock on the device.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// Size of the superblock structure.
pub const SUPERBLOCK_SIZE: usize = 1024;
/// `EXT2_SUPER_MAGIC`.
pub const SUPER_MAGIC: u16 = 0xEF53;
/// Offset of `s_checksum`.
pub const CHECKSUM_OFFSET: usize = 0x3FC;
/// `EXT2_GOOD_OLD_REV`: fixed 128-byte inodes, first inode 11.
pub const REV_GOOD_OLD: u32 = 0;
/// `EXT2_DYNAMIC_REV`.
pub const REV_DYNAMIC: u32 = 1;
/// First non-reserved inode of revision 0 filesystems.
pub const GOOD_OLD_FIRST_INO: u32 = 11;
/// Inode size of revision 0 filesystems.
pub const GOOD_OLD_INODE_SIZE: u16 = 128;
/// `EXT2_CRC32C_CHKSUM`, the only defined `s_checksum_type`.
pub const CHECKSUM_TYPE_CRC32C: u8 = 1;
/// Number of words in `s_jnl_blocks` (15 `i_block` words, `i_size_high`, `i_size`).
pub const JNL_BLOCKS_LEN: usize = 17;

/// `s_state` bits.
pub mod state {
    /// `EXT2_VALID_FS`: cleanly unmounted.
    pub const VALID: u16 = 0x0001;
    /// `EXT2_ERROR_FS`: errors detected.
    pub const ERROR: u16 = 0x0002;
    /// `EXT3_ORPHAN_FS`: orphans being recovered.
    pub const ORPHAN: u16 = 0x0004;
    /// `EXT4_FC_REPLAY`: fast-commit replay ongoing.
    pub const FC_REPLAY: u16 = 0x0020;
}

/// `s_errors` values.
pub mod errors_behaviour {
    /// `EXT2_ERRORS_CONTINUE`
    pub const CONTINUE: u16 = 1;
    /// `EXT2_ERRORS_RO`
    pub const REMOUNT_RO: u16 = 2;
    /// `EXT2_ERRORS_PANIC`
    pub const PANIC: u16 = 3;
}

/// `s_creator_os` values.
pub mod creator_os {
    /// `EXT2_OS_LINUX`
    pub const LINUX: u32 = 0;
    /// `EXT2_OS_HURD`
    pub const HURD: u32 = 1;
    /// `EXT2_OBSO_OS_MASIX`
    pub const MASIX: u32 = 2;
    /// `EXT2_OS_FREEBSD`
    pub const FREEBSD: u32 = 3;
    /// `EXT2_OS_LITES`
    pub const LITES: u32 = 4;
}

/// `s_flags` bits.
pub mod flags {
    /// `EXT2_FLAGS_SIGNED_HASH`: directory hashes treat bytes as signed char.
    pub const SIGNED_HASH: u32 = 0x0001;
    /// `EXT2_FLAGS_UNSIGNED_HASH`: directory hashes treat bytes as unsigned char.
    pub const UNSIGNED_HASH: u32 = 0x0002;
    /// `EXT2_FLAGS_TEST_FILESYS`
    pub const TEST_FILESYS: u32 = 0x0004;
}

/// `s_default_mount_opts` bits.
pub mod default_mount_opts {
    /// `EXT2_DEFM_DEBUG`
    pub const DEBUG: u32 = 0x0001;
    /// `EXT2_DEFM_BSDGROUPS`
    pub const BSDGROUPS: u32 = 0x0002;
    /// `EXT2_DEFM_XATTR_USER`
    pub const XATTR_USER: u32 = 0x0004;
    /// `EXT2_DEFM_ACL`
    pub const ACL: u32 = 0x0008;
    /// `EXT2_DEFM_UID16`
    pub const UID16: u32 = 0x0010;
    /// `EXT3_DEFM_JMODE` mask.
    pub const JMODE: u32 = 0x0060;
    /// `EXT3_DEFM_JMODE_DATA`
    pub const JMODE_DATA: u32 = 0x0020;
    /// `EXT3_DEFM_JMODE_ORDERED`
    pub const JMODE_ORDERED: u32 = 0x0040;
    /// `EXT3_DEFM_JMODE_WBACK`
    pub const JMODE_WBACK: u32 = 0x0060;
    /// `EXT4_DEFM_NOBARRIER`
    pub const NOBARRIER: u32 = 0x0100;
    /// `EXT4_DEFM_BLOCK_VALIDITY`
    pub const BLOCK_VALIDITY: u32 = 0x0200;
    /// `EXT4_DEFM_DISCARD`
    pub const DISCARD: u32 = 0x0400;
    /// `EXT4_DEFM_NODELALLOC`
    pub const NODELALLOC: u32 = 0x0800;
}

/// The superblock, owning its 1024 raw bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Superblock {
    pub(crate) raw: Box<[u8; SUPERBLOCK_SIZE]>,
}

impl core::fmt::Debug for Superblock {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Superblock")
            .field("blocks_count", &self.blocks_count())
            .field("inodes_count", &self.inodes_count())
            .field("block_size", &self.block_size())
            .field("compat", &self.feature_compat())
            .field("incompat", &self.feature_incompat())
            .field("ro_compat", &self.feature_ro_compat())
            .finish_non_exhaustive()
    }
}

/// Joins a 32-bit low part and an 8-bit high part of a superblock time.
fn time_with_hi(lo: u32, hi: u8) -> i64 {
    i64::from(lo) | (i64::from(hi) << 32)
}

impl Superblock {
    /// Parses and validates a superblock (the first 1024 bytes of `bytes`).
    ///
    /// Checks, in this order: length, magic, checksum type and checksum (with
    /// metadata_csum), revision level, then the geometry rules of
    /// [`Superblock::validate`]. Unknown feature bits are *not* rejected here;
    /// see [`Superblock::check_features`].
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let sb = Self::from_bytes_unchecked(bytes)?;
        if sb.magic() != SUPER_MAGIC {
            return Err(FormatError::corrupt(
                Structure::Superblock,
                CorruptKind::SuperblockMagic(sb.magic()),
            ));
        }
        sb.verify_checksum()?;
        sb.validate()?;
        Ok(sb)
    }

    /// Copies the bytes without any validation (for tools that inspect damaged
    /// filesystems, and for building a new superblock field by field).
    pub fn from_bytes_unchecked(bytes: &[u8]) -> Result<Self> {
        let src = bytes.get(..SUPERBLOCK_SIZE).ok_or_else(|| {
            FormatError::too_short(Structure::Superblock, SUPERBLOCK_SIZE, bytes.len())
        })?;
        let mut raw = Box::new([0u8; SUPERBLOCK_SIZE]);
        raw.copy_from_slice(src);
        Ok(Self { raw })
    }

    /// An all-zero superblock with the magic set, for writers (mkfs) to fill in.
    pub fn new_zeroed() -> Self {
        let mut sb = Self {
            raw: Box::new([0u8; SUPERBLOCK_SIZE]),
        };
        sb.set_magic(SUPER_MAGIC);
        sb.set_rev_level(REV_DYNAMIC);
        sb
    }

    /// The raw bytes, exactly as they go to disk.
    pub fn as_bytes(&self) -> &[u8; SUPERBLOCK_SIZE] {
        &self.raw
    }

    /// Mutable access to the raw bytes (reserved fields, tools).
    pub fn as_bytes_mut(&mut self) -> &mut [u8; SUPERBLOCK_SIZE] {
        &mut self.raw
    }

    // ------------------------------------------------------------------
    // Raw fields, in on-disk order.
    // ------------------------------------------------------------------

    field!(
        inodes_count,
        set_inodes_count,
        u32le,
        0x00,
        "s_inodes_count",
        "Total number of inodes."
    );
    field!(
        blocks_count_lo,
        set_blocks_count_lo,
        u32le,
        0x04,
        "s_blocks_count_lo",
        "Low 32 bits of the block count."
    );
    field!(
        reserved_blocks_count_lo,
        set_reserved_blocks_count_lo,
        u32le,
        0x08,
        "s_r_blocks_count_lo",
        "Low 32 bits of the reserved block count."
    );
    field!(
        free_blocks_count_lo,
        set_free_blocks_count_lo,
        u32le,
        0x0C,
        "s_free_blocks_count_lo",
        "Low 32 bits of the free block count."
    );
    field!(
        free_inodes_count,
        set_free_inodes_count,
        u32le,
        0x10,
        "s_free_inodes_count",
        "Free inode count."
    );
    field!(
        first_data_block,
        set_first_data_block,
        u32le,
        0x14,
        "s_first_data_block",
        "Block holding the primary superblock (1 with 1 KiB blocks, else 0)."
    );
    field!(
        log_block_size,
        set_log_block_size,
        u32le,
        0x18,
        "s_log_block_size",
        "Block size is 1024 << this."
    );
    field!(
        log_cluster_size,
        set_log_cluster_size,
        u32le,
        0x1C,
        "s_log_cluster_size",
        "Cluster size is 1024 << this (bigalloc; equals the block size otherwise)."
    );
    field!(
        blocks_per_group,
        set_blocks_per_group,
        u32le,
        0x20,
        "s_blocks_per_group",
        "Blocks per group."
    );
    field!(
        clusters_per_group,
        set_clusters_per_group,
        u32le,
        0x24,
        "s_clusters_per_group",
        "Clusters per group (equals blocks per group without bigalloc)."
    );
    field!(
        inodes_per_group,
        set_inodes_per_group,
        u32le,
        0x28,
        "s_inodes_per_group",
        "Inodes per group."
    );
    field!(
        mount_time_lo,
        set_mount_time_lo,
        u32le,
        0x2C,
        "s_mtime",
        "Low 32 bits of the last mount time."
    );
    field!(
        write_time_lo,
        set_write_time_lo,
        u32le,
        0x30,
        "s_wtime",
        "Low 32 bits of the last write time."
    );
    field!(
        mount_count,
        set_mount_count,
        u16le,
        0x34,
        "s_mnt_count",
        "Mounts since the last check."
    );
    field!(
        max_mount_count_raw,
        set_max_mount_count_raw,
        u16le,
        0x36,
        "s_max_mnt_count",
        "Mounts allowed between checks, as stored (signed; -1 disables)."
    );
    field!(
        magic,
        set_magic,
        u16le,
        0x38,
        "s_magic",
        "Magic number, 0xEF53."
    );
    field!(
        state,
        set_state,
        u16le,
        0x3A,
        "s_state",
        "State bits, see [`state`]."
    );
    field!(
        errors_behaviour,
        set_errors_behaviour,
        u16le,
        0x3C,
        "s_errors",
        "What to do on errors, see [`errors_behaviour`]."
    );
    field!(
        minor_rev_level,
        set_minor_rev_level,
        u16le,
        0x3E,
        "s_minor_rev_level",
        "Minor revision level."
    );
    field!(
        last_check_time_lo,
        set_last_check_time_lo,
        u32le,
        0x40,
        "s_lastcheck",
        "Low 32 bits of the last check time."
    );
    field!(
        check_interval,
        set_check_interval,
        u32le,
        0x44,
        "s_checkinterval",
        "Maximum seconds between checks."
    );
    field!(
        creator_os,
        set_creator_os,
        u32le,
        0x48,
        "s_creator_os",
        "Creator OS, see [`creator_os`]."
    );
    field!(
        rev_level,
        set_rev_level,
        u32le,
        0x4C,
        "s_rev_level",
        "Revision level (0 good old, 1 dynamic)."
    );
    field!(
        default_reserved_uid,
        set_default_reserved_uid,
        u16le,
        0x50,
        "s_def_resuid",
        "Default uid allowed to use reserved blocks."
    );
    field!(
        default_reserved_gid,
        set_default_reserved_gid,
        u16le,
        0x52,
        "s_def_resgid",
        "Default gid allowed to use reserved blocks."
    );
    field!(
        first_ino_raw,
        set_first_ino,
        u32le,
        0x54,
        "s_first_ino",
        "First non-reserved inode, as stored (see [`Superblock::first_ino`])."
    );
    field!(
        inode_size_raw,
        set_inode_size,
        u16le,
        0x58,
        "s_inode_size",
        "Inode record size, as stored (see [`Superblock::inode_size`])."
    );
    field!(
        block_group_nr,
        set_block_group_nr,
        u16le,
        0x5A,
        "s_block_group_nr",
        "Group number of this superblock copy."
    );
    field!(uuid, set_uuid, [u8; 16], 0x68, "s_uuid", "Filesystem UUID.");
    field!(
        volume_name,
        set_volume_name,
        [u8; 16],
        0x78,
        "s_volume_name",
        "Volume label, NUL-padded (see [`Superblock::label`])."
    );
    field!(
        last_mounted,
        set_last_mounted,
        [u8; 64],
        0x88,
        "s_last_mounted",
        "Directory where last mounted, NUL-padded."
    );
    field!(
        algorithm_usage_bitmap,
        set_algorithm_usage_bitmap,
        u32le,
        0xC8,
        "s_algorithm_usage_bitmap",
        "Compression algorithms (unused)."
    );
    field!(
        prealloc_blocks,
        set_prealloc_blocks,
        u8,
        0xCC,
        "s_prealloc_blocks",
        "Blocks to preallocate for files."
    );
    field!(
        prealloc_dir_blocks,
        set_prealloc_dir_blocks,
        u8,
        0xCD,
        "s_prealloc_dir_blocks",
        "Blocks to preallocate for directories."
    );
    field!(
        reserved_gdt_blocks,
        set_reserved_gdt_blocks,
        u16le,
        0xCE,
        "s_reserved_gdt_blocks",
        "Blocks reserved after the GDT for online growth (resize_inode)."
    );
    field!(
        journal_uuid,
        set_journal_uuid,
        [u8; 16],
        0xD0,
        "s_journal_uuid",
        "UUID of the journal superblock (external journal)."
    );
    field!(
        journal_inum,
        set_journal_inum,
        u32le,
        0xE0,
        "s_journal_inum",
        "Inode of the internal journal (normally 8)."
    );
    field!(
        journal_dev,
        set_journal_dev,
        u32le,
        0xE4,
        "s_journal_dev",
        "Device number of an external journal."
    );
    field!(
        last_orphan,
        set_last_orphan,
        u32le,
        0xE8,
        "s_last_orphan",
        "Head of the orphan inode list."
    );
    field!(
        def_hash_version,
        set_def_hash_version,
        u8,
        0xFC,
        "s_def_hash_version",
        "Default directory hash version (0 legacy, 1 half_md4, 2 tea)."
    );
    field!(
        jnl_backup_type,
        set_jnl_backup_type,
        u8,
        0xFD,
        "s_jnl_backup_type",
        "1 if `s_jnl_blocks` holds a copy of the journal inode's block map."
    );
    field!(
        desc_size_raw,
        set_desc_size,
        u16le,
        0xFE,
        "s_desc_size",
        "Group descriptor size with 64bit, as stored (see [`Superblock::desc_size`])."
    );
    field!(
        default_mount_opts,
        set_default_mount_opts,
        u32le,
        0x100,
        "s_default_mount_opts",
        "Default mount options, see [`default_mount_opts`]."
    );
    field!(
        first_meta_bg,
        set_first_meta_bg,
        u32le,
        0x104,
        "s_first_meta_bg",
        "First meta block group (meta_bg)."
    );
    field!(
        mkfs_time_lo,
        set_mkfs_time_lo,
        u32le,
        0x108,
        "s_mkfs_time",
        "Low 32 bits of the creation time."
    );
    field!(
        blocks_count_hi,
        set_blocks_count_hi,
        u32le,
        0x150,
        "s_blocks_count_hi",
        "High 32 bits of the block count (64bit)."
    );
    field!(
        reserved_blocks_count_hi,
        set_reserved_blocks_count_hi,
        u32le,
        0x154,
        "s_r_blocks_count_hi",
        "High 32 bits of the reserved block count."
    );
    field!(
        free_blocks_count_hi,
        set_free_blocks_count_hi,
        u32le,
        0x158,
        "s_free_blocks_count_hi",
        "High 32 bits of the free block count."
    );
    field!(
        min_extra_isize,
        set_min_extra_isize,
        u16le,
        0x15C,
        "s_min_extra_isize",
        "All inodes have at least this many extra bytes."
    );
    field!(
        want_extra_isize,
        set_want_extra_isize,
        u16le,
        0x15E,
        "s_want_extra_isize",
        "New inodes should reserve this many extra bytes."
    );
    field!(
        flags,
        set_flags,
        u32le,
        0x160,
        "s_flags",
        "Miscellaneous flags, see [`flags`]."
    );
    field!(
        raid_stride,
        set_raid_stride,
        u16le,
        0x164,
        "s_raid_stride",
        "RAID stride in blocks."
    );
    field!(
        mmp_update_interval,
        set_mmp_update_interval,
        u16le,
        0x166,
        "s_mmp_update_interval",
        "Seconds between MMP updates."
    );
    field!(
        mmp_block,
        set_mmp_block,
        u64le,
        0x168,
        "s_mmp_block",
        "Block holding the MMP structure."
    );
    field!(
        raid_stripe_width,
        set_raid_stripe_width,
        u32le,
        0x170,
        "s_raid_stripe_width",
        "RAID stripe width in blocks."
    );
    field!(
        log_groups_per_flex,
        set_log_groups_per_flex,
        u8,
        0x174,
        "s_log_groups_per_flex",
        "Groups per flex group is 1 << this."
    );
    field!(
        checksum_type,
        set_checksum_type,
        u8,
        0x175,
        "s_checksum_type",
        "Metadata checksum algorithm (1 = crc32c)."
    );
    field!(
        encryption_level,
        set_encryption_level,
        u8,
        0x176,
        "s_encryption_level",
        "Encryption versioning level."
    );
    field!(
        kbytes_written,
        set_kbytes_written,
        u64le,
        0x178,
        "s_kbytes_written",
        "KiB written over the filesystem's lifetime."
    );
    field!(
        snapshot_inum,
        set_snapshot_inum,
        u32le,
        0x180,
        "s_snapshot_inum",
        "Inode of the active snapshot."
    );
    field!(
        snapshot_id,
        set_snapshot_id,
        u32le,
        0x184,
        "s_snapshot_id",
        "ID of the active snapshot."
    );
    field!(
        snapshot_reserved_blocks_count,
        set_snapshot_reserved_blocks_count,
        u64le,
        0x188,
        "s_snapshot_r_blocks_count",
        "Blocks reserved for the active snapshot."
    );
    field!(
        snapshot_list,
        set_snapshot_list,
        u32le,
        0x190,
        "s_snapshot_list",
        "Head of the snapshot list."
    );
    field!(
        error_count,
        set_error_count,
        u32le,
        0x194,
        "s_error_count",
        "Number of errors seen."
    );
    field!(
        first_error_time_lo,
        set_first_error_time_lo,
        u32le,
        0x198,
        "s_first_error_time",
        "Low 32 bits of the first error time."
    );
    field!(
        first_error_ino,
        set_first_error_ino,
        u32le,
        0x19C,
        "s_first_error_ino",
        "Inode of the first error."
    );
    field!(
        first_error_block,
        set_first_error_block,
        u64le,
        0x1A0,
        "s_first_error_block",
        "Block of the first error."
    );
    field!(
        first_error_func,
        set_first_error_func,
        [u8; 32],
        0x1A8,
        "s_first_error_func",
        "Kernel function of the first error, NUL-padded."
    );
    field!(
        first_error_line,
        set_first_error_line,
        u32le,
        0x1C8,
        "s_first_error_line",
        "Source line of the first error."
    );
    field!(
        last_error_time_lo,
        set_last_error_time_lo,
        u32le,
        0x1CC,
        "s_last_error_time",
        "Low 32 bits of the last error time."
    );
    field!(
        last_error_ino,
        set_last_error_ino,
        u32le,
        0x1D0,
        "s_last_error_ino",
        "Inode of the last error."
    );
    field!(
        last_error_line,
        set_last_error_line,
        u32le,
        0x1D4,
        "s_last_error_line",
        "Source line of the last error."
    );
    field!(
        last_error_block,
        set_last_error_block,
        u64le,
        0x1D8,
        "s_last_error_block",
        "Block of the last error."
    );
    field!(
        last_error_func,
        set_last_error_func,
        [u8; 32],
        0x1E0,
        "s_last_error_func",
        "Kernel function of the last error, NUL-padded."
    );
    field!(
        mount_opts,
        set_mount_opts,
        [u8; 64],
        0x200,
        "s_mount_opts",
        "Default mount option string, NUL-padded."
    );
    field!(
        usr_quota_inum,
        set_usr_quota_inum,
        u32le,
        0x240,
        "s_usr_quota_inum",
        "User quota inode."
    );
    field!(
        grp_quota_inum,
        set_grp_quota_inum,
        u32le,
        0x244,
        "s_grp_quota_inum",
        "Group quota inode."
    );
    field!(
        overhead_clusters,
        set_overhead_clusters,
        u32le,
        0x248,
        "s_overhead_clusters",
        "Overhead clusters (0 = compute)."
    );
    field!(
        encrypt_algos,
        set_encrypt_algos,
        [u8; 4],
        0x254,
        "s_encrypt_algos",
        "Encryption algorithms in use."
    );
    field!(
        encrypt_pw_salt,
        set_encrypt_pw_salt,
        [u8; 16],
        0x258,
        "s_encrypt_pw_salt",
        "Salt for string2key."
    );
    field!(
        lpf_ino,
        set_lpf_ino,
        u32le,
        0x268,
        "s_lpf_ino",
        "lost+found inode."
    );
    field!(
        prj_quota_inum,
        set_prj_quota_inum,
        u32le,
        0x26C,
        "s_prj_quota_inum",
        "Project quota inode."
    );
    field!(
        checksum_seed,
        set_checksum_seed,
        u32le,
        0x270,
        "s_checksum_seed",
        "crc32c(uuid) kept fixed when the csum_seed feature is set."
    );
    field!(
        write_time_hi,
        set_write_time_hi,
        u8,
        0x274,
        "s_wtime_hi",
        "High 8 bits of the last write time."
    );
    field!(
        mount_time_hi,
        set_mount_time_hi,
        u8,
        0x275,
        "s_mtime_hi",
        "High 8 bits of the last mount time."
    );
    field!(
        mkfs_time_hi,
        set_mkfs_time_hi,
        u8,
        0x276,
        "s_mkfs_time_hi",
        "High 8 bits of the creation time."
    );
    field!(
        last_check_time_hi,
        set_last_check_time_hi,
        u8,
        0x277,
        "s_lastcheck_hi",
        "High 8 bits of the last check time."
    );
    field!(
        first_error_time_hi,
        set_first_error_time_hi,
        u8,
        0x278,
        "s_first_error_time_hi",
        "High 8 bits of the first error time."
    );
    field!(
        last_error_time_hi,
        set_last_error_time_hi,
        u8,
        0x279,
        "s_last_error_time_hi",
        "High 8 bits of the last error time."
    );
    field!(
        first_error_errcode,
        set_first_error_errcode,
        u8,
        0x27A,
        "s_first_error_errcode",
        "errno of the first error."
    );
    field!(
        last_error_errcode,
        set_last_error_errcode,
        u8,
        0x27B,
        "s_last_error_errcode",
        "errno of the last error."
    );
    field!(
        encoding,
        set_encoding,
        u16le,
        0x27C,
        "s_encoding",
        "Filename charset encoding (casefold; 1 = utf8-12.1)."
    );
    field!(
        encoding_flags,
        set_encoding_flags,
        u16le,
        0x27E,
        "s_encoding_flags",
        "Filename encoding flags."
    );
    field!(
        orphan_file_inum,
        set_orphan_file_inum,
        u32le,
        0x280,
        "s_orphan_file_inum",
        "Orphan file inode."
    );
    field!(
        checksum,
        set_checksum,
        u32le,
        CHECKSUM_OFFSET,
        "s_checksum",
        "crc32c of the superblock (metadata_csum)."
    );

    // ------------------------------------------------------------------
    // Composite fields.
    // ------------------------------------------------------------------

    /// Compatible features (`s_feature_compat`).
    pub fn feature_compat(&self) -> CompatFeatures {
        CompatFeatures(read_u32le(&self.raw[..], 0x5C))
    }
    /// Sets `s_feature_compat`.
    pub fn set_feature_compat(&mut self, f: CompatFeatures) {
        write_u32le(&mut self.raw[..], 0x5C, f.0)
    }
    /// Incompatible features (`s_feature_incompat`).
    pub fn feature_incompat(&self) -> IncompatFeatures {
        IncompatFeatures(read_u32le(&self.raw[..], 0x60))
    }
    /// Sets `s_feature_incompat`.
    pub fn set_feature_incompat(&mut self, f: IncompatFeatures) {
        write_u32le(&mut self.raw[..], 0x60, f.0)
    }
    /// Read-only-compatible features (`s_feature_ro_compat`).
    pub fn feature_ro_compat(&self) -> RoCompatFeatures {
        RoCompatFeatures(read_u32le(&self.raw[..], 0x64))
    }
    /// Sets `s_feature_ro_compat`.
    pub fn set_feature_ro_compat(&mut self, f: RoCompatFeatures) {
        write_u32le(&mut self.raw[..], 0x64, f.0)
    }

    /// `true` if the compat feature is set.
    pub fn has_compat(&self, f: CompatFeatures) -> bool {
        self.feature_compat().contains(f)
    }
    /// `true` if the incompat feature is set.
    pub fn has_incompat(&self, f: IncompatFeatures) -> bool {
        self.feature_incompat().contains(f)
    }
    /// `true` if the ro_compat feature is set.
    pub fn has_ro_compat(&self, f: RoCompatFeatures) -> bool {
        self.feature_ro_compat().contains(f)
    }

    /// `true` with the 64bit feature (64-bit block numbers, large descriptors).
    pub fn is_64bit(&self) -> bool {
        self.has_incompat(IncompatFeatures::BIT64)
    }
    /// `true` with metadata_csum.
    pub fn has_metadata_csum(&self) -> bool {
        self.has_ro_compat(RoCompatFeatures::METADATA_CSUM)
    }
    /// `true` if group descriptors carry a checksum (metadata_csum or uninit_bg / GDT_CSUM).
    pub fn has_group_desc_csum(&self) -> bool {
        self.feature_ro_compat()
            .intersects(RoCompatFeatures::METADATA_CSUM | RoCompatFeatures::GDT_CSUM)
    }

    /// Feature names as `dumpe2fs` prints them after `Filesystem features:`.
    pub fn feature_names(&self) -> String {
        crate::features::dumpe2fs_feature_list(
            self.feature_compat(),
            self.feature_incompat(),
            self.feature_ro_compat(),
        )
    }

    /// Unknown incompat bits (a kernel that sees them refuses to mount).
    pub fn unknown_incompat(&self) -> IncompatFeatures {
        self.feature_incompat().unknown()
    }
    /// Unknown ro_compat bits (a kernel that sees them mounts read-only).
    pub fn unknown_ro_compat(&self) -> RoCompatFeatures {
        self.feature_ro_compat().unknown()
    }
    /// Unknown compat bits (harmless for reading and writing).
    pub fn unknown_compat(&self) -> CompatFeatures {
        self.feature_compat().unknown()
    }

    /// Refuses feature bits this crate does not know: unknown incompat bits
    /// always, unknown ro_compat bits when `for_write` is set.
    pub fn check_features(&self, for_write: bool) -> Result<()> {
        let incompat = self.unknown_incompat().0;
        let ro_compat = if for_write {
            self.unknown_ro_compat().0
        } else {
            0
        };
        if incompat != 0 || ro_compat != 0 {
            return Err(FormatError::incompatible(
                Structure::Superblock,
                IncompatibleKind::Features(UnknownFeatures {
                    compat: 0,
                    incompat,
                    ro_compat,
                }),
            ));
        }
        Ok(())
    }

    /// Total block count (`s_blocks_count_lo` + `s_blocks_count_hi` with 64bit).
    pub fn blocks_count(&self) -> u64 {
        let hi = if self.is_64bit() {
            u64::from(self.blocks_count_hi())
        } else {
            0
        };
        u64::from(self.blocks_count_lo()) | (hi << 32)
    }
    /// Sets the block count (both halves).
    pub fn set_blocks_count(&mut self, v: u64) {
        self.set_blocks_count_lo(v as u32);
        self.set_blocks_count_hi((v >> 32) as u32);
    }
    /// Reserved block count (`s_r_blocks_count_lo` / `_hi`).
    pub fn reserved_blocks_count(&self) -> u64 {
        let hi = if self.is_64bit() {
            u64::from(self.reserved_blocks_count_hi())
        } else {
            0
        };
        u64::from(self.reserved_blocks_count_lo()) | (hi << 32)
    }
    /// Sets the reserved block count (both halves).
    pub fn set_reserved_blocks_count(&mut self, v: u64) {
        self.set_reserved_blocks_count_lo(v as u32);
        self.set_reserved_blocks_count_hi((v >> 32) as u32);
    }
    /// Free block count (`s_free_blocks_count_lo` / `s_free_blocks_hi`).
    pub fn free_blocks_count(&self) -> u64 {
        let hi = if self.is_64bit() {
            u64::from(self.free_blocks_count_hi())
        } else {
            0
        };
        u64::from(self.free_blocks_count_lo()) | (hi << 32)
    }
    /// Sets the free block count (both halves).
    pub fn set_free_blocks_count(&mut self, v: u64) {
        self.set_free_blocks_count_lo(v as u32);
        self.set_free_blocks_count_hi((v >> 32) as u32);
    }

    /// Block size in bytes (`1024 << s_log_block_size`); 0 if the field is invalid.
    pub fn block_size(&self) -> u32 {
        let log = self.log_block_size();
        if log > 6 { 0 } else { 1024u32 << log }
    }
    /// log2 of the block size (10..=16).
    pub fn block_size_bits(&self) -> u32 {
        self.log_block_size().saturating_add(10)
    }
    /// Cluster size in bytes (`1024 << s_log_cluster_size`); 0 if the field is invalid.
    pub fn cluster_size(&self) -> u32 {
        let log = self.log_cluster_size();
        if log > 19 { 0 } else { 1024u32 << log }
    }
    /// Blocks per cluster (1 without bigalloc).
    pub fn cluster_ratio(&self) -> u32 {
        if self.has_ro_compat(RoCompatFeatures::BIGALLOC) {
            let bits = self
                .log_cluster_size()
                .saturating_sub(self.log_block_size());
            1u32.checked_shl(bits).unwrap_or(1)
        } else {
            1
        }
    }

    /// Inode record size: 128 for revision 0, else `s_inode_size`.
    pub fn inode_size(&self) -> u16 {
        if self.rev_level() == REV_GOOD_OLD {
            GOOD_OLD_INODE_SIZE
        } else {
            self.inode_size_raw()
        }
    }
    /// First non-reserved inode: 11 for revision 0, else `s_first_ino`.
    pub fn first_ino(&self) -> u32 {
        if self.rev_level() == REV_GOOD_OLD {
            GOOD_OLD_FIRST_INO
        } else {
            self.first_ino_raw()
        }
    }
    /// Group descriptor size: `s_desc_size` with 64bit, else 32.
    pub fn desc_size(&self) -> u16 {
        if self.is_64bit() {
            self.desc_size_raw()
        } else {
            32
        }
    }

    /// `s_max_mnt_count` as the signed value it is.
    pub fn max_mount_count(&self) -> i16 {
        self.max_mount_count_raw() as i16
    }
    /// Sets `s_max_mnt_count`.
    pub fn set_max_mount_count(&mut self, v: i16) {
        self.set_max_mount_count_raw(v as u16)
    }

    /// Last mount time in seconds (`s_mtime` + `s_mtime_hi`).
    pub fn mount_time(&self) -> i64 {
        time_with_hi(self.mount_time_lo(), self.mount_time_hi())
    }
    /// Sets the last mount time (clamped to the 40-bit range).
    pub fn set_mount_time(&mut self, t: i64) {
        let (lo, hi) = split_time(t);
        self.set_mount_time_lo(lo);
        self.set_mount_time_hi(hi);
    }
    /// Last write time (`s_wtime` + `s_wtime_hi`).
    pub fn write_time(&self) -> i64 {
        time_with_hi(self.write_time_lo(), self.write_time_hi())
    }
    /// Sets the last write time.
    pub fn set_write_time(&mut self, t: i64) {
        let (lo, hi) = split_time(t);
        self.set_write_time_lo(lo);
        self.set_write_time_hi(hi);
    }
    /// Creation time (`s_mkfs_time` + `s_mkfs_time_hi`).
    pub fn mkfs_time(&self) -> i64 {
        time_with_hi(self.mkfs_time_lo(), self.mkfs_time_hi())
    }
    /// Sets the creation time.
    pub fn set_mkfs_time(&mut self, t: i64) {
        let (lo, hi) = split_time(t);
        self.set_mkfs_time_lo(lo);
        self.set_mkfs_time_hi(hi);
    }
    /// Last check time (`s_lastcheck` + `s_lastcheck_hi`).
    pub fn last_check_time(&self) -> i64 {
        time_with_hi(self.last_check_time_lo(), self.last_check_time_hi())
    }
    /// Sets the last check time.
    pub fn set_last_check_time(&mut self, t: i64) {
        let (lo, hi) = split_time(t);
        self.set_last_check_time_lo(lo);
        self.set_last_check_time_hi(hi);
    }
    /// First error time (`s_first_error_time` + `_hi`).
    pub fn first_error_time(&self) -> i64 {
        time_with_hi(self.first_error_time_lo(), self.first_error_time_hi())
    }
    /// Sets the first error time.
    pub fn set_first_error_time(&mut self, t: i64) {
        let (lo, hi) = split_time(t);
        self.set_first_error_time_lo(lo);
        self.set_first_error_time_hi(hi);
    }
    /// Last error time (`s_last_error_time` + `_hi`).
    pub fn last_error_time(&self) -> i64 {
        time_with_hi(self.last_error_time_lo(), self.last_error_time_hi())
    }
    /// Sets the last error time.
    pub fn set_last_error_time(&mut self, t: i64) {
        let (lo, hi) = split_time(t);
        self.set_last_error_time_lo(lo);
        self.set_last_error_time_hi(hi);
    }

    /// The volume label up to the first NUL (lossy UTF-8).
    pub fn label(&self) -> String {
        nul_terminated_lossy(&self.volume_name())
    }
    /// Sets the label; fails if longer than 16 bytes.
    pub fn set_label(&mut self, label: &str) -> Result<()> {
        let b = label.as_bytes();
        if b.len() > 16 {
            return Err(FormatError::unrepresentable(
                Structure::Superblock,
                "s_volume_name",
                b.len() as u64,
            ));
        }
        let mut a = [0u8; 16];
        a[..b.len()].copy_from_slice(b);
        self.set_volume_name(a);
        Ok(())
    }
    /// The last mount point up to the first NUL (lossy UTF-8).
    pub fn last_mounted_path(&self) -> String {
        nul_terminated_lossy(&self.last_mounted())
    }

    /// Directory hash seed (`s_hash_seed`, four le32 words).
    pub fn hash_seed(&self) -> [u32; 4] {
        let mut s = [0u32; 4];
        for (i, w) in s.iter_mut().enumerate() {
            *w = read_u32le(&self.raw[..], 0xEC + 4 * i);
        }
        s
    }
    /// Sets `s_hash_seed`.
    pub fn set_hash_seed(&mut self, seed: [u32; 4]) {
        for (i, w) in seed.iter().enumerate() {
            write_u32le(&mut self.raw[..], 0xEC + 4 * i, *w);
        }
    }
    /// `s_hash_seed` as its 16 raw bytes (how tools print it, as a UUID).
    pub fn hash_seed_bytes(&self) -> [u8; 16] {
        read_array(&self.raw[..], 0xEC)
    }
    /// Sets `s_hash_seed` from its 16 raw bytes (a UUID's bytes, as mke2fs stores it).
    pub fn set_hash_seed_bytes(&mut self, seed: [u8; 16]) {
        write_bytes(&mut self.raw[..], 0xEC, &seed);
    }
    /// `true` if `s_flags` says directory hashes use unsigned chars
    /// (otherwise signed, which is also the kernel's choice on x86 when neither bit is set).
    pub fn hash_is_unsigned(&self) -> bool {
        self.flags() & flags::UNSIGNED_HASH != 0
    }
    /// Effective hash version for a stored version (`s_def_hash_version` or a
    /// dx_root's `hash_version`): adds the unsigned variant the way the kernel does.
    pub fn effective_hash_version(&self, stored: u8) -> Option<HashVersion> {
        HashVersion::from_disk(stored, self.hash_is_unsigned())
    }
    /// Hash version new directories should use.
    pub fn default_hash_version(&self) -> Option<HashVersion> {
        self.effective_hash_version(self.def_hash_version())
    }

    /// Backup of the journal inode's `i_block`, size_hi, size (`s_jnl_blocks`).
    pub fn jnl_blocks(&self) -> [u32; JNL_BLOCKS_LEN] {
        let mut s = [0u32; JNL_BLOCKS_LEN];
        for (i, w) in s.iter_mut().enumerate() {
            *w = read_u32le(&self.raw[..], 0x10C + 4 * i);
        }
        s
    }
    /// Sets `s_jnl_blocks`.
    pub fn set_jnl_blocks(&mut self, v: [u32; JNL_BLOCKS_LEN]) {
        for (i, w) in v.iter().enumerate() {
            write_u32le(&mut self.raw[..], 0x10C + 4 * i, *w);
        }
    }
    /// Groups holding backups with sparse_super2 (`s_backup_bgs`).
    pub fn backup_bgs(&self) -> [u32; 2] {
        [
            read_u32le(&self.raw[..], 0x24C),
            read_u32le(&self.raw[..], 0x250),
        ]
    }
    /// Sets `s_backup_bgs`.
    pub fn set_backup_bgs(&mut self, v: [u32; 2]) {
        write_u32le(&mut self.raw[..], 0x24C, v[0]);
        write_u32le(&mut self.raw[..], 0x250, v[1]);
    }

    /// Groups per flex group (`1 << s_log_groups_per_flex` with flex_bg, else 1).
    pub fn groups_per_flex(&self) -> u32 {
        if self.has_incompat(IncompatFeatures::FLEX_BG) {
            1u32.checked_shl(u32::from(self.log_groups_per_flex()))
                .unwrap_or(1)
        } else {
            1
        }
    }

    /// The seed of every metadata_csum checksum: `s_checksum_seed` with the
    /// csum_seed feature, else `crc32c_raw(!0, s_uuid)`.
    pub fn csum_seed(&self) -> u32 {
        if self.has_incompat(IncompatFeatures::CSUM_SEED) {
            self.checksum_seed()
        } else {
            crc32c_raw(CRC32C_INITIAL, &self.uuid())
        }
    }

    // ------------------------------------------------------------------
    // Checksum.
    // ------------------------------------------------------------------

    /// crc32c of bytes 0..0x3FC (`ext4_superblock_csum`).
    pub fn compute_checksum(&self) -> u32 {
        crc32c_raw(CRC32C_INITIAL, &self.raw[..CHECKSUM_OFFSET])
    }

    /// Verifies `s_checksum_type` and `s_checksum` when metadata_csum is set
    /// (without it there is nothing to verify and this returns `Ok`).
    pub fn verify_checksum(&self) -> Result<()> {
        if !self.has_metadata_csum() {
            return Ok(());
        }
        if self.checksum_type() != CHECKSUM_TYPE_CRC32C {
            return Err(FormatError::incompatible(
                Structure::Superblock,
                IncompatibleKind::ChecksumType(self.checksum_type()),
            ));
        }
        let computed = self.compute_checksum();
        if computed != self.checksum() {
            return Err(FormatError::checksum(
                Structure::Superblock,
                computed,
                self.checksum(),
            ));
        }
        Ok(())
    }

    /// Recomputes `s_checksum` (when metadata_csum is set; otherwise leaves it).
    pub fn update_checksum(&mut self) {
        if self.has_metadata_csum() {
            let c = self.compute_checksum();
            self.set_checksum(c);
        }
    }

    // ------------------------------------------------------------------
    // Validation.
    // ------------------------------------------------------------------

    /// Checks the geometry and counts (everything [`Superblock::parse`] checks
    /// except magic and checksum).
    pub fn validate(&self) -> Result<()> {
        let bad = |k| Err(FormatError::corrupt(Structure::Superblock, k));
        if self.magic() != SUPER_MAGIC {
            return bad(CorruptKind::SuperblockMagic(self.magic()));
        }
        if self.rev_level() > REV_DYNAMIC {
            return Err(FormatError::incompatible(
                Structure::Superblock,
                IncompatibleKind::RevisionLevel(self.rev_level()),
            ));
        }
        let log_bs = self.log_block_size();
        if log_bs > 6 {
            return bad(CorruptKind::LogBlockSize(log_bs));
        }
        let block_size = 1024u32 << log_bs;
        let bigalloc = self.has_ro_compat(RoCompatFeatures::BIGALLOC);
        let log_cs = self.log_cluster_size();
        if log_cs > 19 || log_cs < log_bs || (!bigalloc && log_cs != log_bs) {
            return bad(CorruptKind::LogClusterSize(log_cs));
        }
        let max_per_group = block_size.saturating_mul(8);
        let cpg = self.clusters_per_group();
        if cpg == 0 || cpg > max_per_group {
            return bad(CorruptKind::ClustersPerGroup(cpg));
        }
        let bpg = self.blocks_per_group();
        let ratio_bits = log_cs - log_bs;
        if bpg == 0 || u64::from(bpg) != u64::from(cpg) << ratio_bits {
            return bad(CorruptKind::BlocksPerGroup(bpg));
        }
        let isz = self.inode_size();
        if isz < GOOD_OLD_INODE_SIZE || !isz.is_power_of_two() || u32::from(isz) > block_size {
            return bad(CorruptKind::InodeSize(isz));
        }
        if self.is_64bit() {
            let ds = self.desc_size_raw();
            if !(64..=1024).contains(&ds) || !ds.is_power_of_two() {
                return bad(CorruptKind::DescSize(ds));
            }
        }
        if self.has_incompat(IncompatFeatures::JOURNAL_DEV) {
            // An external journal device has no block groups to check.
            return Ok(());
        }
        let ipg = self.inodes_per_group();
        let inodes_per_block = block_size / u32::from(isz);
        if ipg == 0 || ipg > max_per_group || ipg < inodes_per_block {
            return bad(CorruptKind::InodesPerGroup(ipg));
        }
        let fdb = self.first_data_block();
        let expected_fdb = u32::from(log_bs == 0 && ratio_bits == 0);
        if fdb != expected_fdb {
            return bad(CorruptKind::FirstDataBlock(fdb));
        }
        let blocks = self.blocks_count();
        if blocks <= u64::from(fdb) {
            return bad(CorruptKind::BlocksCount(blocks));
        }
        let groups = (blocks - u64::from(fdb)).div_ceil(u64::from(bpg));
        if groups > u64::from(u32::MAX) {
            return bad(CorruptKind::GroupCount(groups));
        }
        let expected_inodes = groups * u64::from(ipg);
        if u64::from(self.inodes_count()) != expected_inodes {
            return bad(CorruptKind::InodesCount {
                found: self.inodes_count(),
                expected: expected_inodes,
            });
        }
        let first_ino = self.first_ino();
        if first_ino < GOOD_OLD_FIRST_INO || first_ino > self.inodes_count() {
            return bad(CorruptKind::FirstIno(first_ino));
        }
        if self.free_blocks_count() > blocks {
            return bad(CorruptKind::FreeBlocksCount(self.free_blocks_count()));
        }
        if self.reserved_blocks_count() > blocks {
            return bad(CorruptKind::ReservedBlocksCount(
                self.reserved_blocks_count(),
            ));
        }
        if self.free_inodes_count() > self.inodes_count() {
            return bad(CorruptKind::FreeInodesCount(self.free_inodes_count()));
        }
        if u32::from(self.reserved_gdt_blocks()) > block_size / 4 {
            return bad(CorruptKind::ReservedGdtBlocks(self.reserved_gdt_blocks()));
        }
        if self.has_incompat(IncompatFeatures::META_BG) {
            let desc_per_block = block_size / u32::from(self.desc_size());
            let desc_blocks = groups.div_ceil(u64::from(desc_per_block));
            if u64::from(self.first_meta_bg()) > desc_blocks {
                return bad(CorruptKind::FirstMetaBg(self.first_meta_bg()));
            }
        }
        if self.has_incompat(IncompatFeatures::FLEX_BG) && self.log_groups_per_flex() > 31 {
            return bad(CorruptKind::LogGroupsPerFlex(self.log_groups_per_flex()));
        }
        Ok(())
    }
}

/// Splits seconds into the 32-bit low part and 8-bit high part, clamping to 0..2^40.
fn split_time(t: i64) -> (u32, u8) {
    let t = t.clamp(0, (1i64 << 40) - 1) as u64;
    (t as u32, (t >> 32) as u8)
}

fn nul_terminated_lossy(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_hi_round_trip() {
        let mut sb = Superblock::new_zeroed();
        sb.set_write_time(0x12_3456_789A);
        assert_eq!(sb.write_time_lo(), 0x3456_789A);
        assert_eq!(sb.write_time_hi(), 0x12);
        assert_eq!(sb.write_time(), 0x12_3456_789A);
    }

    #[test]
    fn hash_seed_bytes_are_the_le32_words() {
        let mut sb = Superblock::new_zeroed();
        let bytes: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        sb.set_hash_seed_bytes(bytes);
        assert_eq!(sb.hash_seed()[0], 0x0403_0201);
        assert_eq!(sb.hash_seed()[3], 0x100F_0E0D);
        assert_eq!(sb.hash_seed_bytes(), bytes);
        assert_eq!(sb.as_bytes()[0xEC..0xFC], bytes);
    }

    #[test]
    fn short_buffer() {
        let e = Superblock::parse(&[0u8; 100]).unwrap_err();
        assert_eq!(
            e.corrupt_kind(),
            Some(&CorruptKind::TooShort {
                needed: 1024,
                got: 100
            })
        );
    }
}
