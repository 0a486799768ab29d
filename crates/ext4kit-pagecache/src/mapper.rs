//! [`BlockMapper`]: what the page cache asks of the filesystem.
//!
//! The engine knows files only as inode numbers and logical blocks. Everything about where
//! blocks live on disk — reservation for delayed allocation, allocation, unwritten extents and
//! their conversion, the on-disk file size — belongs to the filesystem, which implements this
//! trait (`ext4kit-fs`; [`crate::testing::SimpleMapper`] in tests). It mirrors the calls ext4's
//! writeback path makes into the rest of ext4: `ext4_da_reserve_space`/`release_space`,
//! `ext4_map_blocks`, `ext4_convert_unwritten_io_end_vec`, the i_disksize update.
//!
//! # Calling context
//! `convert_unwritten` runs on the engine's conversion worker while pages are under writeback;
//! it must not wait for writeback of the same file (the kernel's reason for reserved journal
//! handles). `map_blocks` with [`MapFlags::CREATE`] runs inside writepages with pages locked; it
//! must not write pages of the same file through the cache.

use std::fmt;

/// How a range of logical blocks is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtentKind {
    /// No blocks: reads as zeros.
    Hole,
    /// Allocated and initialised.
    Written,
    /// Allocated, not initialised: reads as zeros until converted.
    Unwritten,
}

/// A mapped range: `len` logical blocks from `lblk`, at physical blocks from `pblk`
/// (meaningless for holes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extent {
    /// First logical block.
    pub lblk: u64,
    /// Number of blocks (at least 1).
    pub len: u64,
    /// First physical block (filesystem blocks).
    pub pblk: u64,
    /// Backing.
    pub kind: ExtentKind,
}

/// Flags of a [`BlockMapper::map_blocks`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct MapFlags(u8);

impl MapFlags {
    /// Only look up; allocate nothing.
    pub const LOOKUP: MapFlags = MapFlags(0);
    /// Allocate blocks for holes in the range (EXT4_GET_BLOCKS_CREATE).
    pub const CREATE: MapFlags = MapFlags(1);
    /// The range was reserved by [`BlockMapper::reserve`]: allocation consumes the reservation.
    pub const DELALLOC: MapFlags = MapFlags(2);
    /// Allocate as unwritten extents (EXT4_GET_BLOCKS_UNWRIT_EXT, dioread_nolock).
    pub const UNWRITTEN: MapFlags = MapFlags(4);

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: MapFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for MapFlags {
    type Output = MapFlags;
    fn bitor(self, rhs: MapFlags) -> MapFlags {
        MapFlags(self.0 | rhs.0)
    }
}

/// A range of logical blocks to convert from unwritten to written (an `io_end_vec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UnwrittenRange {
    /// First logical block.
    pub lblk: u64,
    /// Number of blocks.
    pub len: u64,
}

/// Why the filesystem could not do what the engine asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// No free blocks (or no reservation left).
    #[error("no space left on device")]
    NoSpace,
    /// The filesystem's metadata IO failed.
    #[error("metadata I/O failed: {0}")]
    Io(String),
    /// The filesystem found corrupt metadata.
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    /// Anything else, with its errno.
    #[error("{msg}")]
    Other {
        /// errno to report.
        errno: i32,
        /// What happened.
        msg: String,
    },
}

impl MapError {
    /// The errno this error maps to.
    pub fn errno(&self) -> i32 {
        match self {
            MapError::NoSpace => 28,     // ENOSPC
            MapError::Io(_) => 5,        // EIO
            MapError::Corrupt(_) => 117, // EUCLEAN
            MapError::Other { errno, .. } => *errno,
        }
    }
}

/// The filesystem side of the engine.
pub trait BlockMapper: Send + Sync + fmt::Debug {
    /// Reserves `count` blocks of `ino` for delayed allocation (write_begin on holes).
    fn reserve(&self, ino: u64, count: u64) -> Result<(), MapError>;

    /// Returns `count` reserved blocks that will never be allocated (truncated or discarded).
    fn release(&self, ino: u64, count: u64);

    /// Maps logical blocks from `lblk` (at most `len`). Without [`MapFlags::CREATE`], returns
    /// how the range starting at `lblk` is backed (a hole is reported up to the next extent).
    /// With it, allocates holes and returns the extent now covering `lblk`; it may map fewer
    /// blocks than asked. An existing unwritten extent is returned as
    /// [`ExtentKind::Unwritten`]; the engine converts it after the data IO succeeded.
    fn map_blocks(
        &self,
        ino: u64,
        lblk: u64,
        len: u64,
        flags: MapFlags,
    ) -> Result<Extent, MapError>;

    /// Converts `ranges` from unwritten to written: called after every bio of the io_end
    /// completed without error, before the pages' writeback ends.
    fn convert_unwritten(&self, ino: u64, ranges: &[UnwrittenRange]) -> Result<(), MapError>;

    /// Raises the on-disk size of `ino` to `size` (i_disksize): called after the IO for those
    /// bytes was submitted.
    fn update_disksize(&self, ino: u64, size: u64) -> Result<(), MapError>;

    /// Frees every block of `ino` at or past logical block `first_lblk` and sets the on-disk
    /// size to `new_size` (truncate down).
    fn truncate(&self, ino: u64, first_lblk: u64, new_size: u64) -> Result<(), MapError>;

    /// Allocates unwritten extents for the holes in `lblk..lblk+len` (fallocate).
    fn fallocate(&self, ino: u64, lblk: u64, len: u64) -> Result<(), MapError>;

    /// Frees the blocks of `ino` in `lblk..lblk+len` (punch hole); the size does not change.
    fn punch_hole(&self, ino: u64, lblk: u64, len: u64) -> Result<(), MapError>;
}
