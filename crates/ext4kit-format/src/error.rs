//! The crate's one error type, [`FormatError`], and its detail enums.
//!
//! Three families are kept apart because they lead to different actions:
//!
//! * [`FormatError::Corrupt`]: the bytes break a rule of the on-disk format
//!   (the kernel would say `EFSCORRUPTED`); the detail is a [`CorruptKind`] that
//!   tests match exactly and that prints the offending value.
//! * [`FormatError::ChecksumMismatch`]: the stored checksum disagrees with the one
//!   computed from the data (the kernel's `EFSBADCRC`).
//! * [`FormatError::Incompatible`]: the structure is valid but uses something this
//!   crate does not understand (unknown feature bits, an unknown checksum type).
//!
//! [`FormatError::Unrepresentable`] is returned by setters and builders when a
//! value does not fit its on-disk field; it says nothing about the disk.
//!
//! The format crate rarely knows which inode, block or group it is looking at;
//! callers attach that with [`FormatError::with_inode`], [`FormatError::with_block`]
//! and [`FormatError::with_group`], so that the message reads
//! `inode 12: extent header magic 0x0000 (expected 0xf30a)`.

use core::fmt;

/// Which on-disk structure an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Structure {
    /// The ext2/3/4 superblock.
    Superblock,
    /// A block group descriptor.
    GroupDescriptor,
    /// A block allocation bitmap.
    BlockBitmap,
    /// An inode allocation bitmap.
    InodeBitmap,
    /// An inode record.
    Inode,
    /// An extent tree node (in `i_block` or in a tree block).
    ExtentTree,
    /// An indirect block map.
    IndirectMap,
    /// A linear directory block (or an inline-data directory region).
    DirectoryBlock,
    /// An htree (dx) root or interior node.
    HtreeNode,
    /// In-inode extended attributes.
    XattrInode,
    /// An extended attribute block.
    XattrBlock,
    /// Inline data (`system.data` + `i_block`).
    InlineData,
    /// A symbolic link.
    Symlink,
    /// The jbd2 journal superblock.
    JournalSuperblock,
    /// A jbd2 descriptor block.
    JournalDescriptor,
    /// A jbd2 commit block.
    JournalCommit,
    /// A jbd2 revoke block.
    JournalRevoke,
    /// A data block logged in the journal (its tag checksum).
    JournalDataBlock,
    /// A block of the orphan file (compat `orphan_file`).
    OrphanFileBlock,
}

impl fmt::Display for Structure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Structure::Superblock => "superblock",
            Structure::GroupDescriptor => "group descriptor",
            Structure::BlockBitmap => "block bitmap",
            Structure::InodeBitmap => "inode bitmap",
            Structure::Inode => "inode",
            Structure::ExtentTree => "extent tree",
            Structure::IndirectMap => "indirect block map",
            Structure::DirectoryBlock => "directory block",
            Structure::HtreeNode => "htree node",
            Structure::XattrInode => "in-inode xattrs",
            Structure::XattrBlock => "xattr block",
            Structure::InlineData => "inline data",
            Structure::Symlink => "symlink",
            Structure::OrphanFileBlock => "orphan file block",
            Structure::JournalSuperblock => "journal superblock",
            Structure::JournalDescriptor => "journal descriptor block",
            Structure::JournalCommit => "journal commit block",
            Structure::JournalRevoke => "journal revoke block",
            Structure::JournalDataBlock => "journal data block",
        };
        f.write_str(s)
    }
}

/// Where an error happened, as far as the caller knows.
///
/// Every field is optional; the format crate fills what it knows (rarely
/// anything) and the filesystem layer adds the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ErrorContext {
    /// Inode number the structure belongs to.
    pub inode: Option<u32>,
    /// Filesystem (or journal) block number the structure was read from.
    pub block: Option<u64>,
    /// Block group number.
    pub group: Option<u32>,
}

impl ErrorContext {
    fn is_empty(&self) -> bool {
        self.inode.is_none() && self.block.is_none() && self.group.is_none()
    }
}

impl fmt::Display for ErrorContext {
    /// Prints `inode 12, block 345: ` (with the trailing separator) or nothing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return Ok(());
        }
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| -> fmt::Result {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            Ok(())
        };
        if let Some(g) = self.group {
            sep(f)?;
            write!(f, "group {g}")?;
        }
        if let Some(i) = self.inode {
            sep(f)?;
            write!(f, "inode {i}")?;
        }
        if let Some(b) = self.block {
            sep(f)?;
            write!(f, "block {b}")?;
        }
        f.write_str(": ")
    }
}

/// Unknown feature bits, by field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct UnknownFeatures {
    /// Unknown bits of the compatible set (`s_feature_compat`).
    pub compat: u32,
    /// Unknown bits of the incompatible set (`s_feature_incompat`).
    pub incompat: u32,
    /// Unknown bits of the read-only-compatible set (`s_feature_ro_compat`).
    pub ro_compat: u32,
}

impl fmt::Display for UnknownFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (letter, bits) in [
            ('C', self.compat),
            ('I', self.incompat),
            ('R', self.ro_compat),
        ] {
            for bit in 0..32 {
                if bits & (1 << bit) != 0 {
                    if !first {
                        f.write_str(" ")?;
                    }
                    first = false;
                    write!(f, "FEATURE_{letter}{bit}")?;
                }
            }
        }
        Ok(())
    }
}

/// Why a valid structure cannot be handled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IncompatibleKind {
    /// Feature bits this crate does not know.
    Features(UnknownFeatures),
    /// `s_rev_level` above the dynamic revision (1).
    RevisionLevel(u32),
    /// `s_checksum_type` (or the journal's) is not crc32c.
    ChecksumType(u8),
    /// A directory hash version this crate cannot compute.
    HashVersion(u8),
    /// Unknown journal feature bits (`s_feature_*` of the journal superblock).
    JournalFeatures(UnknownFeatures),
    /// Journal superblock version (`h_blocktype`) other than v1 / v2.
    JournalVersion(u32),
}

impl fmt::Display for IncompatibleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IncompatibleKind::Features(u) => write!(f, "unknown features: {u}"),
            IncompatibleKind::RevisionLevel(r) => write!(f, "unsupported revision level {r}"),
            IncompatibleKind::ChecksumType(t) => write!(f, "unknown checksum type {t}"),
            IncompatibleKind::HashVersion(v) => write!(f, "unsupported directory hash version {v}"),
            IncompatibleKind::JournalFeatures(u) => write!(f, "unknown journal features: {u}"),
            IncompatibleKind::JournalVersion(v) => write!(f, "unknown journal superblock type {v}"),
        }
    }
}

/// The exact rule a corrupt structure breaks, with the offending values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CorruptKind {
    /// The buffer is shorter than the structure.
    TooShort {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
    },

    // ---- superblock ----
    /// `s_magic` is not 0xEF53.
    SuperblockMagic(u16),
    /// `s_log_block_size` gives a block size outside 1 KiB..=64 KiB.
    LogBlockSize(u32),
    /// `s_log_cluster_size` is invalid (smaller than the block size, too large, or
    /// different from the block size without bigalloc).
    LogClusterSize(u32),
    /// `s_blocks_per_group` is zero, above 8 × block size, or inconsistent with clusters.
    BlocksPerGroup(u32),
    /// `s_clusters_per_group` is zero or above 8 × block size.
    ClustersPerGroup(u32),
    /// `s_inodes_per_group` is zero, above 8 × block size, or below one block of inodes.
    InodesPerGroup(u32),
    /// `s_first_data_block` does not match the block size (1 for 1 KiB blocks, else 0).
    FirstDataBlock(u32),
    /// `s_blocks_count` is not above `s_first_data_block`.
    BlocksCount(u64),
    /// `s_inode_size` is not a power of two in 128..=block size.
    InodeSize(u16),
    /// `s_desc_size` is invalid for a 64bit filesystem.
    DescSize(u16),
    /// `s_inodes_count` is not groups × inodes per group.
    InodesCount {
        /// `s_inodes_count`.
        found: u32,
        /// groups × `s_inodes_per_group`.
        expected: u64,
    },
    /// The number of groups does not fit 32 bits.
    GroupCount(u64),
    /// `s_first_ino` is below 11 or beyond the inode count.
    FirstIno(u32),
    /// `s_free_blocks_count` is above `s_blocks_count`.
    FreeBlocksCount(u64),
    /// `s_r_blocks_count` is above `s_blocks_count`.
    ReservedBlocksCount(u64),
    /// `s_free_inodes_count` is above `s_inodes_count`.
    FreeInodesCount(u32),
    /// `s_reserved_gdt_blocks` is above block size / 4.
    ReservedGdtBlocks(u16),
    /// `s_first_meta_bg` is beyond the number of descriptor blocks.
    FirstMetaBg(u32),
    /// `s_log_groups_per_flex` is too large for a shift.
    LogGroupsPerFlex(u8),

    // ---- group descriptors ----
    /// The block bitmap lies outside the allowed range.
    GroupBlockBitmap(u64),
    /// The inode bitmap lies outside the allowed range.
    GroupInodeBitmap(u64),
    /// The inode table lies (partly) outside the allowed range.
    GroupInodeTable(u64),
    /// A free count is above the group's size.
    GroupFreeCount {
        /// `true` for the inode count, `false` for blocks.
        inodes: bool,
        /// The stored value.
        found: u32,
    },

    // ---- inodes ----
    /// `i_extra_isize` is not a multiple of 4 or overruns the inode.
    InodeExtraIsize(u16),
    /// `i_size` is negative as a signed 64-bit value.
    InodeSize64(u64),

    // ---- extents ----
    /// `eh_magic` is not 0xF30A.
    ExtentMagic(u16),
    /// `eh_max` is zero or larger than the space holds.
    ExtentMax {
        /// `eh_max`.
        found: u16,
        /// Entries that fit in the space.
        capacity: u16,
    },
    /// `eh_entries` is above `eh_max`.
    ExtentEntries {
        /// `eh_entries`.
        entries: u16,
        /// `eh_max`.
        max: u16,
    },
    /// `eh_depth` is above 5, or differs from the depth the parent implies.
    ExtentDepth(u16),
    /// An index node (depth > 0) has no entries.
    ExtentEmptyIndex,
    /// A leaf extent has length zero.
    ExtentZeroLength {
        /// Entry index in the node.
        index: u16,
    },
    /// A leaf extent runs past logical block 2^32 - 1.
    ExtentLogicalOverflow {
        /// Entry index in the node.
        index: u16,
    },
    /// Entries are not sorted by logical block, or leaf extents overlap.
    ExtentOrder {
        /// Index of the first entry out of order.
        index: u16,
    },

    // ---- indirect maps ----
    /// The logical block is beyond what a triple-indirect map can address.
    IndirectBlockOutOfRange(u64),

    // ---- directories ----
    /// `rec_len` below 12 or not a multiple of 4.
    DirentRecLen {
        /// Byte offset of the entry in the block.
        offset: usize,
        /// The decoded `rec_len`.
        rec_len: u32,
    },
    /// `name_len` does not fit in `rec_len`.
    DirentNameLen {
        /// Byte offset of the entry.
        offset: usize,
        /// `name_len`.
        name_len: u8,
        /// `rec_len`.
        rec_len: u32,
    },
    /// The entry runs past the end of the block (or of the entry area).
    DirentOverrun {
        /// Byte offset of the entry.
        offset: usize,
        /// The decoded `rec_len`.
        rec_len: u32,
    },
    /// The inode number is above `s_inodes_count`.
    DirentInode {
        /// Byte offset of the entry.
        offset: usize,
        /// The inode number.
        inode: u32,
    },
    /// The checksum tail (`det_reserved_ft` 0xDE) is missing or malformed.
    DirentTail,

    // ---- htree ----
    /// The fake `.` / `..` entries of a dx root, or the fake entry of a dx node, are wrong.
    DxFakeDirent,
    /// `dx_root_info.info_length` is not 8 or `reserved_zero` is not zero.
    DxRootInfo,
    /// `dx_root_info.hash_version` is unknown.
    DxHashVersion(u8),
    /// `dx_root_info.unused_flags` has the incompat bit set.
    DxUnusedFlags(u8),
    /// `indirect_levels` is too deep (1 without largedir, 2 with).
    DxLevels(u8),
    /// `limit` does not match the space in the block.
    DxLimit {
        /// The stored limit.
        found: u16,
        /// The limit computed from the block size.
        expected: u16,
    },
    /// `count` is zero or above `limit`.
    DxCount {
        /// The stored count.
        count: u16,
        /// The stored limit.
        limit: u16,
    },
    /// Hashes of the dx entries are not in increasing order.
    DxHashOrder {
        /// Index of the first entry out of order.
        index: u16,
    },

    // ---- xattrs ----
    /// The xattr magic (`h_magic` or the in-inode magic) is not 0xEA020000.
    XattrMagic(u32),
    /// `h_blocks` of an xattr block is not 1.
    XattrBlocks(u32),
    /// An entry (or its name) runs past the area, or the terminator is missing.
    XattrEntryBounds {
        /// Byte offset of the entry in the area.
        offset: usize,
    },
    /// A name contains a NUL byte or is empty.
    XattrName {
        /// Byte offset of the entry.
        offset: usize,
    },
    /// A value lies outside the value area or overlaps the entry table.
    XattrValueBounds {
        /// Byte offset of the entry.
        offset: usize,
    },
    /// Two values overlap.
    XattrValueOverlap {
        /// Byte offset of the second entry.
        offset: usize,
    },
    /// `e_value_size` above the 16 MiB limit.
    XattrValueSize(u32),
    /// `e_value_inum` set without the ea_inode feature, or invalid.
    XattrValueInode(u32),

    // ---- inline data / symlinks ----
    /// The inline data size is inconsistent with `i_size` or `system.data`.
    InlineDataSize(u64),
    /// A fast symlink's length is invalid or its target contains a NUL.
    FastSymlink(u64),

    // ---- jbd2 ----
    /// `h_magic` is not 0xC03B3998.
    JournalMagic(u32),
    /// `h_blocktype` is not what the structure requires.
    JournalBlockType(u32),
    /// `s_blocksize` of the journal is not a power of two in 1 KiB..=64 KiB.
    JournalBlockSize(u32),
    /// `s_first` / `s_maxlen` / `s_start` are inconsistent.
    JournalGeometry,
    /// Two mutually exclusive checksum features are both set.
    JournalChecksumFeatures,
    /// `s_nr_users` is above 48.
    JournalUsers(u32),
    /// A descriptor tag runs past the end of the block.
    JournalTagOverrun {
        /// Byte offset of the tag.
        offset: usize,
    },
    /// `r_count` of a revoke block is out of range.
    JournalRevokeCount(u32),

    // ---- directories (whole) ----
    /// A directory's first block has no `..` entry where it belongs (linear
    /// blocks: no live `..` entry; dx roots: the second fake entry is not `..`).
    DirectoryDots,

    // ---- orphan file ----
    /// `ob_magic` of an orphan file block is not 0x0B10CA04.
    OrphanBlockMagic(u32),
}

impl fmt::Display for CorruptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CorruptKind as K;
        match self {
            K::TooShort { needed, got } => {
                write!(f, "buffer too short: {got} bytes, need {needed}")
            }
            K::SuperblockMagic(m) => write!(f, "superblock magic {m:#06x} (expected 0xef53)"),
            K::LogBlockSize(v) => write!(f, "invalid s_log_block_size {v}"),
            K::LogClusterSize(v) => write!(f, "invalid s_log_cluster_size {v}"),
            K::BlocksPerGroup(v) => write!(f, "invalid s_blocks_per_group {v}"),
            K::ClustersPerGroup(v) => write!(f, "invalid s_clusters_per_group {v}"),
            K::InodesPerGroup(v) => write!(f, "invalid s_inodes_per_group {v}"),
            K::FirstDataBlock(v) => write!(f, "invalid s_first_data_block {v}"),
            K::BlocksCount(v) => write!(f, "invalid s_blocks_count {v}"),
            K::InodeSize(v) => write!(f, "invalid s_inode_size {v}"),
            K::DescSize(v) => write!(f, "invalid s_desc_size {v}"),
            K::InodesCount { found, expected } => {
                write!(f, "s_inodes_count {found} (expected {expected})")
            }
            K::GroupCount(v) => write!(f, "too many block groups ({v})"),
            K::FirstIno(v) => write!(f, "invalid s_first_ino {v}"),
            K::FreeBlocksCount(v) => write!(f, "free blocks count {v} above blocks count"),
            K::ReservedBlocksCount(v) => write!(f, "reserved blocks count {v} above blocks count"),
            K::FreeInodesCount(v) => write!(f, "free inodes count {v} above inodes count"),
            K::ReservedGdtBlocks(v) => write!(f, "s_reserved_gdt_blocks {v} too large"),
            K::FirstMetaBg(v) => write!(f, "s_first_meta_bg {v} beyond the descriptor blocks"),
            K::LogGroupsPerFlex(v) => write!(f, "s_log_groups_per_flex {v} too large"),
            K::GroupBlockBitmap(b) => write!(f, "block bitmap at block {b} out of range"),
            K::GroupInodeBitmap(b) => write!(f, "inode bitmap at block {b} out of range"),
            K::GroupInodeTable(b) => write!(f, "inode table at block {b} out of range"),
            K::GroupFreeCount { inodes, found } => write!(
                f,
                "free {} count {found} above the group size",
                if *inodes { "inodes" } else { "blocks" }
            ),
            K::InodeExtraIsize(v) => write!(f, "invalid i_extra_isize {v}"),
            K::InodeSize64(v) => write!(f, "negative i_size {v:#x}"),
            K::ExtentMagic(m) => write!(f, "extent header magic {m:#06x} (expected 0xf30a)"),
            K::ExtentMax { found, capacity } => {
                write!(f, "extent header eh_max {found} (space holds {capacity})")
            }
            K::ExtentEntries { entries, max } => {
                write!(f, "extent header eh_entries {entries} above eh_max {max}")
            }
            K::ExtentDepth(d) => write!(f, "invalid extent tree depth {d}"),
            K::ExtentEmptyIndex => f.write_str("extent index node without entries"),
            K::ExtentZeroLength { index } => write!(f, "extent {index} has length 0"),
            K::ExtentLogicalOverflow { index } => {
                write!(f, "extent {index} runs past logical block 2^32-1")
            }
            K::ExtentOrder { index } => {
                write!(f, "extent entry {index} out of order or overlapping")
            }
            K::IndirectBlockOutOfRange(b) => {
                write!(f, "logical block {b} beyond the triple-indirect range")
            }
            K::DirentRecLen { offset, rec_len } => {
                write!(f, "directory entry at {offset}: invalid rec_len {rec_len}")
            }
            K::DirentNameLen {
                offset,
                name_len,
                rec_len,
            } => write!(
                f,
                "directory entry at {offset}: name_len {name_len} does not fit rec_len {rec_len}"
            ),
            K::DirentOverrun { offset, rec_len } => write!(
                f,
                "directory entry at {offset}: rec_len {rec_len} runs past the end of the block"
            ),
            K::DirentInode { offset, inode } => {
                write!(f, "directory entry at {offset}: inode {inode} out of range")
            }
            K::DirentTail => f.write_str("directory block checksum tail missing or malformed"),
            K::DxFakeDirent => f.write_str("htree node: malformed fake directory entries"),
            K::DxRootInfo => f.write_str("htree root: malformed dx_root_info"),
            K::DxHashVersion(v) => write!(f, "htree root: unknown hash version {v}"),
            K::DxUnusedFlags(v) => write!(f, "htree root: unsupported flags {v:#04x}"),
            K::DxLevels(v) => write!(f, "htree root: too many indirect levels ({v})"),
            K::DxLimit { found, expected } => {
                write!(f, "htree node: limit {found} (expected {expected})")
            }
            K::DxCount { count, limit } => write!(f, "htree node: count {count} (limit {limit})"),
            K::DxHashOrder { index } => write!(f, "htree node: hash of entry {index} out of order"),
            K::XattrMagic(m) => write!(f, "xattr magic {m:#010x} (expected 0xea020000)"),
            K::XattrBlocks(v) => write!(f, "xattr block h_blocks {v} (expected 1)"),
            K::XattrEntryBounds { offset } => write!(f, "xattr entry at {offset} out of bounds"),
            K::XattrName { offset } => write!(f, "xattr entry at {offset}: bad name"),
            K::XattrValueBounds { offset } => {
                write!(f, "xattr entry at {offset}: value out of bounds")
            }
            K::XattrValueOverlap { offset } => {
                write!(f, "xattr entry at {offset}: value overlaps another value")
            }
            K::XattrValueSize(v) => write!(f, "xattr value size {v} too large"),
            K::XattrValueInode(v) => write!(f, "invalid xattr value inode {v}"),
            K::InlineDataSize(v) => write!(f, "inline data size {v} inconsistent"),
            K::FastSymlink(v) => write!(f, "invalid fast symlink (size {v})"),
            K::JournalMagic(m) => write!(f, "journal magic {m:#010x} (expected 0xc03b3998)"),
            K::JournalBlockType(t) => write!(f, "unexpected journal block type {t}"),
            K::JournalBlockSize(v) => write!(f, "invalid journal block size {v}"),
            K::JournalGeometry => f.write_str("journal s_first / s_maxlen / s_start inconsistent"),
            K::JournalChecksumFeatures => {
                f.write_str("journal has mutually exclusive checksum features")
            }
            K::JournalUsers(v) => write!(f, "journal s_nr_users {v} above 48"),
            K::JournalTagOverrun { offset } => {
                write!(f, "journal descriptor tag at {offset} runs past the block")
            }
            K::JournalRevokeCount(v) => write!(f, "journal revoke r_count {v} out of range"),
            K::DirectoryDots => f.write_str("directory does not start with '.' and '..'"),
            K::OrphanBlockMagic(m) => {
                write!(f, "orphan file block magic {m:#010x} (expected 0x0b10ca04)")
            }
        }
    }
}

/// The error of every fallible function in this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The bytes break a rule of the on-disk format.
    #[error("{context}{what}")]
    Corrupt {
        /// The structure being parsed.
        structure: Structure,
        /// The rule that is broken.
        what: CorruptKind,
        /// Inode / block / group, as far as known.
        context: ErrorContext,
    },
    /// The stored checksum disagrees with the computed one.
    #[error(
        "{context}{structure} checksum mismatch: stored {found:#010x}, computed {expected:#010x}"
    )]
    ChecksumMismatch {
        /// The structure whose checksum failed.
        structure: Structure,
        /// The checksum computed from the data (what the field should hold).
        expected: u32,
        /// The checksum stored on disk.
        found: u32,
        /// Inode / block / group, as far as known.
        context: ErrorContext,
    },
    /// The structure is valid but uses something this crate does not support.
    #[error("{context}{structure}: {what}")]
    Incompatible {
        /// The structure.
        structure: Structure,
        /// What is not supported.
        what: IncompatibleKind,
        /// Inode / block / group, as far as known.
        context: ErrorContext,
    },
    /// A value given to a setter or builder does not fit its on-disk field.
    #[error("{context}{structure}: {field} cannot hold {value}")]
    Unrepresentable {
        /// The structure being built.
        structure: Structure,
        /// The on-disk field (kernel name) or quantity.
        field: &'static str,
        /// The value that does not fit.
        value: u64,
        /// Inode / block / group, as far as known.
        context: ErrorContext,
    },
}

/// Shorthand for `Result<T, FormatError>`.
pub type Result<T, E = FormatError> = core::result::Result<T, E>;

impl FormatError {
    /// A [`FormatError::Corrupt`] without context.
    pub fn corrupt(structure: Structure, what: CorruptKind) -> Self {
        FormatError::Corrupt {
            structure,
            what,
            context: ErrorContext::default(),
        }
    }

    /// A [`FormatError::ChecksumMismatch`] without context.
    pub fn checksum(structure: Structure, expected: u32, found: u32) -> Self {
        FormatError::ChecksumMismatch {
            structure,
            expected,
            found,
            context: ErrorContext::default(),
        }
    }

    /// A [`FormatError::Incompatible`] without context.
    pub fn incompatible(structure: Structure, what: IncompatibleKind) -> Self {
        FormatError::Incompatible {
            structure,
            what,
            context: ErrorContext::default(),
        }
    }

    /// A [`FormatError::Unrepresentable`] without context.
    pub fn unrepresentable(structure: Structure, field: &'static str, value: u64) -> Self {
        FormatError::Unrepresentable {
            structure,
            field,
            value,
            context: ErrorContext::default(),
        }
    }

    /// A [`CorruptKind::TooShort`] error.
    pub(crate) fn too_short(structure: Structure, needed: usize, got: usize) -> Self {
        Self::corrupt(structure, CorruptKind::TooShort { needed, got })
    }

    fn context_mut(&mut self) -> &mut ErrorContext {
        match self {
            FormatError::Corrupt { context, .. }
            | FormatError::ChecksumMismatch { context, .. }
            | FormatError::Incompatible { context, .. }
            | FormatError::Unrepresentable { context, .. } => context,
        }
    }

    /// The context attached so far.
    pub fn context(&self) -> ErrorContext {
        match self {
            FormatError::Corrupt { context, .. }
            | FormatError::ChecksumMismatch { context, .. }
            | FormatError::Incompatible { context, .. }
            | FormatError::Unrepresentable { context, .. } => *context,
        }
    }

    /// Attaches the inode number.
    #[must_use]
    pub fn with_inode(mut self, inode: u32) -> Self {
        self.context_mut().inode = Some(inode);
        self
    }

    /// Attaches the block number.
    #[must_use]
    pub fn with_block(mut self, block: u64) -> Self {
        self.context_mut().block = Some(block);
        self
    }

    /// Attaches the block group number.
    #[must_use]
    pub fn with_group(mut self, group: u32) -> Self {
        self.context_mut().group = Some(group);
        self
    }

    /// The structure the error is about.
    pub fn structure(&self) -> Structure {
        match self {
            FormatError::Corrupt { structure, .. }
            | FormatError::ChecksumMismatch { structure, .. }
            | FormatError::Incompatible { structure, .. }
            | FormatError::Unrepresentable { structure, .. } => *structure,
        }
    }

    /// The corruption detail, if this is a [`FormatError::Corrupt`].
    pub fn corrupt_kind(&self) -> Option<&CorruptKind> {
        match self {
            FormatError::Corrupt { what, .. } => Some(what),
            _ => None,
        }
    }

    /// `true` for [`FormatError::Corrupt`] and [`FormatError::ChecksumMismatch`]
    /// (the kernel's `EFSCORRUPTED` / `EFSBADCRC`; both mean "run fsck").
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            FormatError::Corrupt { .. } | FormatError::ChecksumMismatch { .. }
        )
    }
}

/// Extension for attaching context to a `Result`.
pub trait ResultExt<T> {
    /// Attaches the inode number to the error, if any.
    fn with_inode(self, inode: u32) -> Result<T>;
    /// Attaches the block number to the error, if any.
    fn with_block(self, block: u64) -> Result<T>;
    /// Attaches the group number to the error, if any.
    fn with_group(self, group: u32) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn with_inode(self, inode: u32) -> Result<T> {
        self.map_err(|e| e.with_inode(inode))
    }
    fn with_block(self, block: u64) -> Result<T> {
        self.map_err(|e| e.with_block(block))
    }
    fn with_group(self, group: u32) -> Result<T> {
        self.map_err(|e| e.with_group(group))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_with_context() {
        let e =
            FormatError::corrupt(Structure::ExtentTree, CorruptKind::ExtentMagic(0)).with_inode(12);
        assert_eq!(
            e.to_string(),
            "inode 12: extent header magic 0x0000 (expected 0xf30a)"
        );
        let e = FormatError::checksum(Structure::Inode, 0x1234, 0x5678)
            .with_inode(3)
            .with_block(9);
        assert_eq!(
            e.to_string(),
            "inode 3, block 9: inode checksum mismatch: stored 0x00005678, computed 0x00001234"
        );
        let e = FormatError::incompatible(
            Structure::Superblock,
            IncompatibleKind::Features(UnknownFeatures {
                compat: 0,
                incompat: 1 << 20,
                ro_compat: 1 << 31,
            }),
        );
        assert_eq!(
            e.to_string(),
            "superblock: unknown features: FEATURE_I20 FEATURE_R31"
        );
    }
}
