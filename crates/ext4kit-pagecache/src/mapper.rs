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

/// Why the filesystem could not do what the engine asked: the filesystem's own error, boxed,
/// with the errno it maps to.
///
/// The engine never looks inside; it hands the error back unchanged to the call that made it
/// ask (a write, a read, a writeback pass), so the filesystem can take its typed error back
/// with [`MapError::downcast`]. Writeback the caller did not start (the flusher) records only
/// the errno, in the file's error sequence, for the next fsync.
#[derive(Debug)]
pub struct MapError {
    errno: i32,
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl MapError {
    /// The filesystem's error `source`, reported as `errno`.
    pub fn new(errno: i32, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        MapError {
            errno,
            source: source.into(),
        }
    }

    /// An error that is nothing but `errno` (its source is the OS error of that number).
    pub fn from_errno(errno: i32) -> Self {
        MapError::new(errno, std::io::Error::from_raw_os_error(errno))
    }

    /// No free blocks (or no reservation left): `ENOSPC`.
    pub fn no_space() -> Self {
        MapError::from_errno(libc::ENOSPC)
    }

    /// The errno this error maps to.
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// Whether this is a lack of space (`ENOSPC`).
    pub fn is_no_space(&self) -> bool {
        self.errno == libc::ENOSPC
    }

    /// The filesystem's error.
    pub fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }

    /// The filesystem's error, if it is an `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.source.downcast_ref::<E>()
    }

    /// The filesystem's error as the `E` it was made from; the `MapError` itself otherwise.
    pub fn downcast<E: std::error::Error + Send + Sync + 'static>(self) -> Result<E, MapError> {
        let errno = self.errno;
        match self.source.downcast::<E>() {
            Ok(e) => Ok(*e),
            Err(source) => Err(MapError { errno, source }),
        }
    }

    /// The filesystem's error, boxed.
    pub fn into_inner(self) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self.source
    }
}

/// Equal when both carry the same errno and say the same thing: the sources are trait objects,
/// compared by their messages (so tests can compare engine results).
impl PartialEq for MapError {
    fn eq(&self, other: &MapError) -> bool {
        self.errno == other.errno && self.source.to_string() == other.source.to_string()
    }
}

impl Eq for MapError {}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Transparent: the filesystem's message is the message.
        fmt::Display::fmt(&self.source, f)
    }
}

impl std::error::Error for MapError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.source()
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
