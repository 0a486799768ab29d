//! Inode records: the 128-byte base (`struct ext4_inode`) plus the extra
//! fields up to `i_extra_isize`, and the rest of the `s_inode_size` record
//! (where in-inode xattrs live).
//!
//! [`Inode`] owns the whole record. Getters combine `_lo` / `_hi` halves (uid,
//! gid, size, file ACL block, i_blocks, version, checksum); timestamps decode
//! the `_extra` words exactly like the kernel (2 epoch bits extending the
//! signed 32-bit seconds, 30 bits of nanoseconds) and fields beyond
//! `i_extra_isize` read as absent. Also: file type and permissions, named
//! flags, device numbers (old and new encoding in `i_block`), and the crc32c
//! checksum (16 bits when the inode has no room for `i_checksum_hi`).

use alloc::{vec, vec::Vec};

use crate::bytes::{read_u16le, read_u32le, write_u16le, write_u32le};
use crate::checksum::{crc32c_raw, inode_csum_seed};
use crate::error::{CorruptKind, FormatError, Result, Structure};
use crate::macros::field;

/// Size of the base inode (`EXT2_GOOD_OLD_INODE_SIZE`).
pub const GOOD_OLD_INODE_SIZE: usize = 128;
/// Size of `i_block` in bytes (15 words).
pub const I_BLOCK_SIZE: usize = 60;
/// Offset of `i_block`.
pub const I_BLOCK_OFFSET: usize = 0x28;
/// Largest extra size the kernel knows (`sizeof(struct ext4_inode) - 128`).
pub const MAX_KNOWN_EXTRA_ISIZE: u16 = 32;

/// Special inode numbers.
pub mod ino {
    /// Bad blocks inode.
    pub const BAD: u32 = 1;
    /// Root directory.
    pub const ROOT: u32 = 2;
    /// User quota.
    pub const USR_QUOTA: u32 = 3;
    /// Group quota.
    pub const GRP_QUOTA: u32 = 4;
    /// Boot loader.
    pub const BOOT_LOADER: u32 = 5;
    /// Undelete directory.
    pub const UNDEL_DIR: u32 = 6;
    /// Reserved GDT blocks (resize_inode).
    pub const RESIZE: u32 = 7;
    /// Journal.
    pub const JOURNAL: u32 = 8;
    /// Exclude inode (snapshots).
    pub const EXCLUDE: u32 = 9;
    /// Replica inode.
    pub const REPLICA: u32 = 10;
}

/// The file type bits of `i_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// `S_IFIFO`
    Fifo,
    /// `S_IFCHR`
    CharDevice,
    /// `S_IFDIR`
    Directory,
    /// `S_IFBLK`
    BlockDevice,
    /// `S_IFREG`
    Regular,
    /// `S_IFLNK`
    Symlink,
    /// `S_IFSOCK`
    Socket,
}

impl FileType {
    /// `S_IFMT` mask.
    pub const MASK: u16 = 0xF000;

    /// From `i_mode`; `None` for an unknown type.
    pub fn from_mode(mode: u16) -> Option<Self> {
        Some(match mode & Self::MASK {
            0x1000 => FileType::Fifo,
            0x2000 => FileType::CharDevice,
            0x4000 => FileType::Directory,
            0x6000 => FileType::BlockDevice,
            0x8000 => FileType::Regular,
            0xA000 => FileType::Symlink,
            0xC000 => FileType::Socket,
            _ => return None,
        })
    }

    /// The `S_IF*` bits.
    pub fn mode_bits(self) -> u16 {
        match self {
            FileType::Fifo => 0x1000,
            FileType::CharDevice => 0x2000,
            FileType::Directory => 0x4000,
            FileType::BlockDevice => 0x6000,
            FileType::Regular => 0x8000,
            FileType::Symlink => 0xA000,
            FileType::Socket => 0xC000,
        }
    }

    /// The directory entry file type code (`EXT2_FT_*`, 1..=7).
    pub fn dirent_code(self) -> u8 {
        match self {
            FileType::Regular => 1,
            FileType::Directory => 2,
            FileType::CharDevice => 3,
            FileType::BlockDevice => 4,
            FileType::Fifo => 5,
            FileType::Socket => 6,
            FileType::Symlink => 7,
        }
    }

    /// From a directory entry file type code; `None` for 0 (unknown) or > 7.
    pub fn from_dirent_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => FileType::Regular,
            2 => FileType::Directory,
            3 => FileType::CharDevice,
            4 => FileType::BlockDevice,
            5 => FileType::Fifo,
            6 => FileType::Socket,
            7 => FileType::Symlink,
            _ => return None,
        })
    }
}

macro_rules! inode_flags {
    ($( $(#[$m:meta])* $name:ident = $bit:expr, $label:literal; )*) => {
        /// `i_flags` bits.
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
        pub struct InodeFlags(pub u32);

        impl InodeFlags {
            $( $(#[$m])* pub const $name: Self = Self($bit); )*

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
            /// Names of the set bits (kernel flag names without `EXT4_` / `_FL`).
            pub fn names(self) -> Vec<&'static str> {
                let mut v = Vec::new();
                $( if self.0 & $bit != 0 { v.push($label); } )*
                v
            }
        }

        impl core::fmt::Debug for InodeFlags {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "InodeFlags({:#x}: {})", self.0, self.names().join("|"))
            }
        }
    };
}

inode_flags! {
    /// `EXT4_SECRM_FL`
    SECRM = 0x0000_0001, "SECRM";
    /// `EXT4_UNRM_FL`
    UNRM = 0x0000_0002, "UNRM";
    /// `EXT4_COMPR_FL`
    COMPR = 0x0000_0004, "COMPR";
    /// `EXT4_SYNC_FL`
    SYNC = 0x0000_0008, "SYNC";
    /// `EXT4_IMMUTABLE_FL`
    IMMUTABLE = 0x0000_0010, "IMMUTABLE";
    /// `EXT4_APPEND_FL`
    APPEND = 0x0000_0020, "APPEND";
    /// `EXT4_NODUMP_FL`
    NODUMP = 0x0000_0040, "NODUMP";
    /// `EXT4_NOATIME_FL`
    NOATIME = 0x0000_0080, "NOATIME";
    /// `EXT4_DIRTY_FL`
    DIRTY = 0x0000_0100, "DIRTY";
    /// `EXT4_COMPRBLK_FL`
    COMPRBLK = 0x0000_0200, "COMPRBLK";
    /// `EXT4_NOCOMPR_FL`
    NOCOMPR = 0x0000_0400, "NOCOMPR";
    /// `EXT4_ENCRYPT_FL`
    ENCRYPT = 0x0000_0800, "ENCRYPT";
    /// `EXT4_INDEX_FL`: hash-indexed (htree) directory.
    INDEX = 0x0000_1000, "INDEX";
    /// `EXT4_IMAGIC_FL`
    IMAGIC = 0x0000_2000, "IMAGIC";
    /// `EXT4_JOURNAL_DATA_FL`
    JOURNAL_DATA = 0x0000_4000, "JOURNAL_DATA";
    /// `EXT4_NOTAIL_FL`
    NOTAIL = 0x0000_8000, "NOTAIL";
    /// `EXT4_DIRSYNC_FL`
    DIRSYNC = 0x0001_0000, "DIRSYNC";
    /// `EXT4_TOPDIR_FL`
    TOPDIR = 0x0002_0000, "TOPDIR";
    /// `EXT4_HUGE_FILE_FL`: `i_blocks` counts filesystem blocks, not 512-byte units.
    HUGE_FILE = 0x0004_0000, "HUGE_FILE";
    /// `EXT4_EXTENTS_FL`: `i_block` holds an extent tree root.
    EXTENTS = 0x0008_0000, "EXTENTS";
    /// `EXT4_VERITY_FL`
    VERITY = 0x0010_0000, "VERITY";
    /// `EXT4_EA_INODE_FL`: the inode stores a large xattr value.
    EA_INODE = 0x0020_0000, "EA_INODE";
    /// `EXT4_NOCOW_FL`
    NOCOW = 0x0080_0000, "NOCOW";
    /// `EXT4_DAX_FL`
    DAX = 0x0200_0000, "DAX";
    /// `EXT4_INLINE_DATA_FL`: data lives in `i_block` and `system.data`.
    INLINE_DATA = 0x1000_0000, "INLINE_DATA";
    /// `EXT4_PROJINHERIT_FL`
    PROJINHERIT = 0x2000_0000, "PROJINHERIT";
    /// `EXT4_CASEFOLD_FL`
    CASEFOLD = 0x4000_0000, "CASEFOLD";
    /// `EXT4_RESERVED_FL`
    RESERVED = 0x8000_0000, "RESERVED";
}

/// A timestamp: seconds since the epoch (may be negative) and nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since 1970-01-01 UTC.
    pub seconds: i64,
    /// Nanoseconds (0..1e9 for well-formed values).
    pub nanoseconds: u32,
}

/// Earliest representable time (`EXT4_TIMESTAMP_MIN`).
pub const TIMESTAMP_MIN: i64 = i32::MIN as i64;
/// Latest time with the extra fields (`EXT4_EXTRA_TIMESTAMP_MAX`, year 2446).
pub const EXTRA_TIMESTAMP_MAX: i64 = (1i64 << 34) - 1 + i32::MIN as i64;
/// Latest time without extra fields (`EXT4_NON_EXTRA_TIMESTAMP_MAX`, 2038).
pub const NON_EXTRA_TIMESTAMP_MAX: i64 = i32::MAX as i64;

impl Timestamp {
    /// Decodes a base word and an optional `_extra` word (`ext4_decode_extra_time`).
    pub fn decode(base: u32, extra: Option<u32>) -> Self {
        let mut seconds = i64::from(base as i32);
        let mut nanoseconds = 0;
        if let Some(extra) = extra {
            seconds += i64::from(extra & 3) << 32;
            nanoseconds = extra >> 2;
        }
        Timestamp {
            seconds,
            nanoseconds,
        }
    }

    /// Encodes into (base, extra) like `ext4_encode_extra_time`, after clamping
    /// to [`TIMESTAMP_MIN`]..=[`EXTRA_TIMESTAMP_MAX`] and nanoseconds to < 1e9.
    pub fn encode(self) -> (u32, u32) {
        let s = self.seconds.clamp(TIMESTAMP_MIN, EXTRA_TIMESTAMP_MAX);
        let base = s as i32;
        let epoch = (((s - i64::from(base)) >> 32) & 3) as u32;
        let ns = self.nanoseconds.min(999_999_999);
        (base as u32, epoch | (ns << 2))
    }

    /// The base word alone (no extra field): seconds clamped to i32.
    pub fn encode_base_only(self) -> u32 {
        self.seconds.clamp(TIMESTAMP_MIN, NON_EXTRA_TIMESTAMP_MAX) as i32 as u32
    }
}

/// Offsets of fields in the extra part, with their end offsets.
const EXTRA_ISIZE: usize = 0x80;
const CHECKSUM_HI: usize = 0x82;
const CTIME_EXTRA: usize = 0x84;
const MTIME_EXTRA: usize = 0x88;
const ATIME_EXTRA: usize = 0x8C;
const CRTIME: usize = 0x90;
const CRTIME_EXTRA: usize = 0x94;
const VERSION_HI: usize = 0x98;
const PROJID: usize = 0x9C;
const CHECKSUM_LO: usize = 0x7C;

/// An inode record, owning its `s_inode_size` bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Inode {
    raw: Vec<u8>,
}

impl core::fmt::Debug for Inode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Inode")
            .field("mode", &format_args!("{:#o}", self.mode()))
            .field("size", &self.size())
            .field("links", &self.links_count())
            .field("flags", &self.flags())
            .finish_non_exhaustive()
    }
}

impl Inode {
    /// Parses an inode record (the whole `s_inode_size` bytes) and checks
    /// `i_extra_isize` and `i_size`. The checksum is checked separately
    /// ([`Inode::verify_checksum`]) because it needs the inode number.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < GOOD_OLD_INODE_SIZE {
            return Err(FormatError::too_short(
                Structure::Inode,
                GOOD_OLD_INODE_SIZE,
                bytes.len(),
            ));
        }
        let inode = Self {
            raw: bytes.to_vec(),
        };
        inode.validate()?;
        Ok(inode)
    }

    /// Parses and, when `csum_seed` is given (metadata_csum), verifies the checksum.
    pub fn parse_checked(bytes: &[u8], ino: u32, csum_seed: Option<u32>) -> Result<Self> {
        let inode = Self::parse(bytes).map_err(|e| e.with_inode(ino))?;
        if let Some(seed) = csum_seed {
            inode.verify_checksum(seed, ino)?;
        }
        Ok(inode)
    }

    /// Copies the bytes without validation.
    pub fn from_bytes_unchecked(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < GOOD_OLD_INODE_SIZE {
            return Err(FormatError::too_short(
                Structure::Inode,
                GOOD_OLD_INODE_SIZE,
                bytes.len(),
            ));
        }
        Ok(Self {
            raw: bytes.to_vec(),
        })
    }

    /// A zeroed inode of `inode_size` bytes with `i_extra_isize` set (use 32,
    /// or `s_want_extra_isize`, for new inodes; 0 for 128-byte inodes).
    pub fn new(inode_size: usize, extra_isize: u16) -> Result<Self> {
        let size = inode_size.max(GOOD_OLD_INODE_SIZE);
        let mut inode = Self { raw: vec![0; size] };
        if size > GOOD_OLD_INODE_SIZE {
            if extra_isize % 4 != 0 || GOOD_OLD_INODE_SIZE + usize::from(extra_isize) > size {
                return Err(FormatError::unrepresentable(
                    Structure::Inode,
                    "i_extra_isize",
                    u64::from(extra_isize),
                ));
            }
            write_u16le(&mut inode.raw, EXTRA_ISIZE, extra_isize);
        }
        Ok(inode)
    }

    /// Checks `i_extra_isize` (multiple of 4, inside the record) and that
    /// `i_size` is not negative.
    pub fn validate(&self) -> Result<()> {
        if self.raw.len() > GOOD_OLD_INODE_SIZE {
            let e = self.extra_isize();
            if e % 4 != 0 || GOOD_OLD_INODE_SIZE + usize::from(e) > self.raw.len() {
                return Err(FormatError::corrupt(
                    Structure::Inode,
                    CorruptKind::InodeExtraIsize(e),
                ));
            }
        }
        if self.size() > i64::MAX as u64 {
            return Err(FormatError::corrupt(
                Structure::Inode,
                CorruptKind::InodeSize64(self.size()),
            ));
        }
        Ok(())
    }

    /// The raw record.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }
    /// Mutable raw record.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw
    }
    /// Record size (`s_inode_size`).
    pub fn record_size(&self) -> usize {
        self.raw.len()
    }

    // ---- base fields ----
    field!(
        mode,
        set_mode,
        u16le,
        0x00,
        "i_mode",
        "File type and permission bits."
    );
    field!(
        uid_lo,
        set_uid_lo,
        u16le,
        0x02,
        "i_uid",
        "Low 16 bits of the owner uid."
    );
    field!(
        size_lo,
        set_size_lo,
        u32le,
        0x04,
        "i_size_lo",
        "Low 32 bits of the size."
    );
    field!(
        atime_raw,
        set_atime_raw,
        u32le,
        0x08,
        "i_atime",
        "Access time, base seconds."
    );
    field!(
        ctime_raw,
        set_ctime_raw,
        u32le,
        0x0C,
        "i_ctime",
        "Change time, base seconds."
    );
    field!(
        mtime_raw,
        set_mtime_raw,
        u32le,
        0x10,
        "i_mtime",
        "Modification time, base seconds."
    );
    field!(
        dtime,
        set_dtime,
        u32le,
        0x14,
        "i_dtime",
        "Deletion time (also the orphan list link)."
    );
    field!(
        gid_lo,
        set_gid_lo,
        u16le,
        0x18,
        "i_gid",
        "Low 16 bits of the group id."
    );
    field!(
        links_count,
        set_links_count,
        u16le,
        0x1A,
        "i_links_count",
        "Hard link count (1 also means 'many' for dir_nlink directories)."
    );
    field!(
        blocks_lo,
        set_blocks_lo,
        u32le,
        0x1C,
        "i_blocks_lo",
        "Low 32 bits of the block count."
    );
    field!(
        version_lo,
        set_version_lo,
        u32le,
        0x24,
        "l_i_version",
        "Low 32 bits of the inode version (osd1)."
    );
    field!(
        generation,
        set_generation,
        u32le,
        0x64,
        "i_generation",
        "File generation (NFS), also part of the checksum seeds."
    );
    field!(
        file_acl_lo,
        set_file_acl_lo,
        u32le,
        0x68,
        "i_file_acl_lo",
        "Low 32 bits of the xattr block."
    );
    field!(
        size_high,
        set_size_high,
        u32le,
        0x6C,
        "i_size_high",
        "High 32 bits of the size."
    );
    field!(
        obso_faddr,
        set_obso_faddr,
        u32le,
        0x70,
        "i_obso_faddr",
        "Obsolete fragment address."
    );
    field!(
        blocks_high,
        set_blocks_high,
        u16le,
        0x74,
        "l_i_blocks_high",
        "High 16 bits of the block count (huge_file)."
    );
    field!(
        file_acl_high,
        set_file_acl_high,
        u16le,
        0x76,
        "l_i_file_acl_high",
        "High 16 bits of the xattr block."
    );
    field!(
        uid_high,
        set_uid_high,
        u16le,
        0x78,
        "l_i_uid_high",
        "High 16 bits of the uid."
    );
    field!(
        gid_high,
        set_gid_high,
        u16le,
        0x7A,
        "l_i_gid_high",
        "High 16 bits of the gid."
    );
    field!(
        checksum_lo,
        set_checksum_lo,
        u16le,
        CHECKSUM_LO,
        "l_i_checksum_lo",
        "Low 16 bits of the checksum."
    );

    /// Flags (`i_flags`).
    pub fn flags(&self) -> InodeFlags {
        InodeFlags(read_u32le(&self.raw, 0x20))
    }
    /// Sets `i_flags`.
    pub fn set_flags(&mut self, f: InodeFlags) {
        write_u32le(&mut self.raw, 0x20, f.0)
    }

    /// `i_extra_isize` (0 for 128-byte records).
    pub fn extra_isize(&self) -> u16 {
        if self.raw.len() > GOOD_OLD_INODE_SIZE + 1 {
            read_u16le(&self.raw, EXTRA_ISIZE)
        } else {
            0
        }
    }

    /// Sets `i_extra_isize` (bytes after it are left as they are).
    pub fn set_extra_isize(&mut self, v: u16) -> Result<()> {
        if v % 4 != 0 || GOOD_OLD_INODE_SIZE + usize::from(v) > self.raw.len() {
            return Err(FormatError::unrepresentable(
                Structure::Inode,
                "i_extra_isize",
                u64::from(v),
            ));
        }
        write_u16le(&mut self.raw, EXTRA_ISIZE, v);
        Ok(())
    }

    /// `true` if the extra field ending at `end` is covered by `i_extra_isize`
    /// (the kernel's `EXT4_FITS_IN_INODE`).
    pub fn fits(&self, end: usize) -> bool {
        self.raw.len() > GOOD_OLD_INODE_SIZE
            && end <= GOOD_OLD_INODE_SIZE + usize::from(self.extra_isize())
            && end <= self.raw.len()
    }

    fn extra_u32(&self, off: usize) -> Option<u32> {
        self.fits(off + 4).then(|| read_u32le(&self.raw, off))
    }
    fn set_extra_u32(&mut self, off: usize, v: u32) -> bool {
        if self.fits(off + 4) {
            write_u32le(&mut self.raw, off, v);
            true
        } else {
            false
        }
    }

    /// Offset where in-inode xattrs start (`128 + i_extra_isize`), if the record has room.
    pub fn xattr_area_offset(&self) -> Option<usize> {
        (self.raw.len() > GOOD_OLD_INODE_SIZE)
            .then(|| GOOD_OLD_INODE_SIZE + usize::from(self.extra_isize()))
    }
    /// The bytes after `128 + i_extra_isize` (in-inode xattr area, starting with the magic).
    pub fn xattr_area(&self) -> &[u8] {
        match self.xattr_area_offset() {
            Some(o) => self.raw.get(o..).unwrap_or(&[]),
            None => &[],
        }
    }
    /// Mutable in-inode xattr area.
    pub fn xattr_area_mut(&mut self) -> &mut [u8] {
        match self.xattr_area_offset() {
            Some(o) => self.raw.get_mut(o..).unwrap_or(&mut []),
            None => &mut [],
        }
    }

    // ---- composite fields ----

    /// File type from `i_mode`.
    pub fn file_type(&self) -> Option<FileType> {
        FileType::from_mode(self.mode())
    }
    /// Permission bits (`i_mode & 0o7777`).
    pub fn permissions(&self) -> u16 {
        self.mode() & 0o7777
    }
    /// `true` for directories.
    pub fn is_dir(&self) -> bool {
        self.file_type() == Some(FileType::Directory)
    }
    /// `true` for regular files.
    pub fn is_regular(&self) -> bool {
        self.file_type() == Some(FileType::Regular)
    }
    /// `true` for symlinks.
    pub fn is_symlink(&self) -> bool {
        self.file_type() == Some(FileType::Symlink)
    }

    /// Owner uid (`i_uid` | `l_i_uid_high` << 16).
    pub fn uid(&self) -> u32 {
        u32::from(self.uid_lo()) | u32::from(self.uid_high()) << 16
    }
    /// Sets both uid halves.
    pub fn set_uid(&mut self, uid: u32) {
        self.set_uid_lo(uid as u16);
        self.set_uid_high((uid >> 16) as u16);
    }
    /// Group id (`i_gid` | `l_i_gid_high` << 16).
    pub fn gid(&self) -> u32 {
        u32::from(self.gid_lo()) | u32::from(self.gid_high()) << 16
    }
    /// Sets both gid halves.
    pub fn set_gid(&mut self, gid: u32) {
        self.set_gid_lo(gid as u16);
        self.set_gid_high((gid >> 16) as u16);
    }
    /// File size in bytes (`i_size_lo` | `i_size_high` << 32).
    pub fn size(&self) -> u64 {
        u64::from(self.size_lo()) | u64::from(self.size_high()) << 32
    }
    /// Sets the size (both halves).
    pub fn set_size(&mut self, size: u64) {
        self.set_size_lo(size as u32);
        self.set_size_high((size >> 32) as u32);
    }
    /// Extended attribute block (`i_file_acl_lo` | `l_i_file_acl_high` << 32).
    pub fn file_acl(&self) -> u64 {
        u64::from(self.file_acl_lo()) | u64::from(self.file_acl_high()) << 32
    }
    /// Sets the xattr block; fails above 48 bits.
    pub fn set_file_acl(&mut self, block: u64) -> Result<()> {
        if block >> 48 != 0 {
            return Err(FormatError::unrepresentable(
                Structure::Inode,
                "i_file_acl",
                block,
            ));
        }
        self.set_file_acl_lo(block as u32);
        self.set_file_acl_high((block >> 32) as u16);
        Ok(())
    }

    /// The raw 48-bit block counter (`i_blocks_lo` | `l_i_blocks_high` << 32),
    /// in the unit [`Inode::block_count_512`] explains.
    pub fn blocks_raw(&self) -> u64 {
        u64::from(self.blocks_lo()) | u64::from(self.blocks_high()) << 32
    }

    /// Space used, in 512-byte units, like the kernel's `ext4_inode_blocks`:
    /// without huge_file only `i_blocks_lo` counts; with it the high half counts
    /// too, and with `EXT4_HUGE_FILE_FL` the counter is in filesystem blocks.
    pub fn block_count_512(&self, huge_file_feature: bool, block_size_bits: u32) -> u64 {
        if !huge_file_feature {
            return u64::from(self.blocks_lo());
        }
        let n = self.blocks_raw();
        if self.flags().contains(InodeFlags::HUGE_FILE) {
            n.checked_shl(block_size_bits.saturating_sub(9))
                .unwrap_or(u64::MAX)
        } else {
            n
        }
    }

    /// Stores a count of 512-byte units like `ext4_inode_blocks_set`, choosing
    /// the representation (and the HUGE_FILE flag). Fails (the kernel's
    /// `EFBIG`) when the count needs huge_file and the feature is off, or is
    /// too large for any representation.
    pub fn set_block_count_512(
        &mut self,
        n: u64,
        huge_file_feature: bool,
        block_size_bits: u32,
    ) -> Result<()> {
        let mut flags = self.flags();
        if n <= u64::from(u32::MAX) {
            self.set_blocks_lo(n as u32);
            self.set_blocks_high(0);
            flags.remove(InodeFlags::HUGE_FILE);
        } else if !huge_file_feature {
            return Err(FormatError::unrepresentable(
                Structure::Inode,
                "i_blocks",
                n,
            ));
        } else if n <= 0xFFFF_FFFF_FFFF {
            self.set_blocks_lo(n as u32);
            self.set_blocks_high((n >> 32) as u16);
            flags.remove(InodeFlags::HUGE_FILE);
        } else {
            let shifted = n >> block_size_bits.saturating_sub(9);
            if shifted > 0xFFFF_FFFF_FFFF {
                return Err(FormatError::unrepresentable(
                    Structure::Inode,
                    "i_blocks",
                    n,
                ));
            }
            self.set_blocks_lo(shifted as u32);
            self.set_blocks_high((shifted >> 32) as u16);
            flags.insert(InodeFlags::HUGE_FILE);
        }
        self.set_flags(flags);
        Ok(())
    }

    /// Access time (`i_atime` + `i_atime_extra`).
    pub fn access_time(&self) -> Timestamp {
        Timestamp::decode(self.atime_raw(), self.extra_u32(ATIME_EXTRA))
    }
    /// Change time (`i_ctime` + `i_ctime_extra`).
    pub fn change_time(&self) -> Timestamp {
        Timestamp::decode(self.ctime_raw(), self.extra_u32(CTIME_EXTRA))
    }
    /// Modification time (`i_mtime` + `i_mtime_extra`).
    pub fn modification_time(&self) -> Timestamp {
        Timestamp::decode(self.mtime_raw(), self.extra_u32(MTIME_EXTRA))
    }
    /// Creation time (`i_crtime` + `i_crtime_extra`), if the inode has room for it.
    pub fn creation_time(&self) -> Option<Timestamp> {
        let base = self.extra_u32(CRTIME)?;
        Some(Timestamp::decode(base, self.extra_u32(CRTIME_EXTRA)))
    }

    fn set_time(&mut self, base_off: usize, extra_off: usize, t: Timestamp) {
        if self.fits(extra_off + 4) {
            let (base, extra) = t.encode();
            write_u32le(&mut self.raw, base_off, base);
            write_u32le(&mut self.raw, extra_off, extra);
        } else {
            write_u32le(&mut self.raw, base_off, t.encode_base_only());
        }
    }
    /// Sets the access time (with nanoseconds and epoch bits when the extra field fits).
    pub fn set_access_time(&mut self, t: Timestamp) {
        self.set_time(0x08, ATIME_EXTRA, t)
    }
    /// Sets the change time.
    pub fn set_change_time(&mut self, t: Timestamp) {
        self.set_time(0x0C, CTIME_EXTRA, t)
    }
    /// Sets the modification time.
    pub fn set_modification_time(&mut self, t: Timestamp) {
        self.set_time(0x10, MTIME_EXTRA, t)
    }
    /// Sets the creation time; returns `false` if the inode has no room for it.
    pub fn set_creation_time(&mut self, t: Timestamp) -> bool {
        if !self.fits(CRTIME + 4) {
            return false;
        }
        self.set_time(CRTIME, CRTIME_EXTRA, t);
        true
    }

    /// 64-bit inode version (`l_i_version` | `i_version_hi` << 32).
    pub fn version(&self) -> u64 {
        u64::from(self.version_lo()) | u64::from(self.extra_u32(VERSION_HI).unwrap_or(0)) << 32
    }
    /// Sets the version (the high half only if it fits).
    pub fn set_version(&mut self, v: u64) {
        self.set_version_lo(v as u32);
        self.set_extra_u32(VERSION_HI, (v >> 32) as u32);
    }
    /// Project id (`i_projid`), 0 if the inode has no room for it.
    pub fn project_id(&self) -> u32 {
        self.extra_u32(PROJID).unwrap_or(0)
    }
    /// Sets the project id; fails if the inode has no room for it.
    pub fn set_project_id(&mut self, id: u32) -> Result<()> {
        if self.set_extra_u32(PROJID, id) {
            Ok(())
        } else {
            Err(FormatError::unrepresentable(
                Structure::Inode,
                "i_projid",
                u64::from(id),
            ))
        }
    }

    /// The 60 bytes of `i_block` (extent root, block map, fast symlink, inline data, device).
    pub fn block_area(&self) -> &[u8; I_BLOCK_SIZE] {
        self.raw[I_BLOCK_OFFSET..I_BLOCK_OFFSET + I_BLOCK_SIZE]
            .try_into()
            .unwrap_or(&[0; I_BLOCK_SIZE])
    }
    /// Mutable `i_block`.
    pub fn block_area_mut(&mut self) -> &mut [u8; I_BLOCK_SIZE] {
        let s = &mut self.raw[I_BLOCK_OFFSET..I_BLOCK_OFFSET + I_BLOCK_SIZE];
        s.try_into()
            .unwrap_or_else(|_| unreachable!("i_block slice has a fixed length"))
    }
    /// `i_block[i]` as a little-endian word (i < 15).
    pub fn block_word(&self, i: usize) -> u32 {
        if i < 15 {
            read_u32le(&self.raw, I_BLOCK_OFFSET + 4 * i)
        } else {
            0
        }
    }
    /// Sets `i_block[i]` (i < 15; ignored otherwise).
    pub fn set_block_word(&mut self, i: usize, v: u32) {
        if i < 15 {
            write_u32le(&mut self.raw, I_BLOCK_OFFSET + 4 * i, v)
        }
    }

    /// Device number of a character / block device inode, as (major, minor):
    /// the old 8:8 encoding in `i_block[0]` if nonzero, else the new encoding in `i_block[1]`.
    pub fn device_number(&self) -> (u32, u32) {
        let old = self.block_word(0);
        if old != 0 {
            ((old >> 8) & 0xFF, old & 0xFF)
        } else {
            let new = self.block_word(1);
            (
                (new & 0xF_FF00) >> 8,
                (new & 0xFF) | ((new >> 12) & 0x000F_FF00),
            )
        }
    }

    /// Stores a device number like the kernel: the old encoding when major and
    /// minor are both below 256, else the new one (12-bit major, 20-bit minor).
    pub fn set_device_number(&mut self, major: u32, minor: u32) -> Result<()> {
        if major < 256 && minor < 256 {
            self.set_block_word(0, (major << 8) | minor);
            self.set_block_word(1, 0);
        } else {
            if major > 0xFFF || minor > 0xF_FFFF {
                return Err(FormatError::unrepresentable(
                    Structure::Inode,
                    "i_block (device number)",
                    u64::from(major) << 32 | u64::from(minor),
                ));
            }
            self.set_block_word(0, 0);
            self.set_block_word(1, (minor & 0xFF) | (major << 8) | ((minor & !0xFF) << 12));
            self.set_block_word(2, 0);
        }
        Ok(())
    }

    // ---- checksum ----

    /// `true` if the record has `i_checksum_hi` (inode size > 128 and
    /// `i_extra_isize` ≥ 4).
    pub fn has_checksum_hi(&self) -> bool {
        self.fits(CHECKSUM_HI + 2)
    }

    /// The stored checksum (16 bits when there is no `i_checksum_hi`).
    pub fn stored_checksum(&self) -> u32 {
        let lo = u32::from(self.checksum_lo());
        if self.has_checksum_hi() {
            lo | u32::from(read_u16le(&self.raw, CHECKSUM_HI)) << 16
        } else {
            lo
        }
    }

    /// The checksum this inode should carry (`ext4_inode_csum`): crc32c over
    /// the per-inode seed (fs seed, inode number, generation) and the whole
    /// record with the checksum fields taken as zero; truncated to 16 bits
    /// when there is no `i_checksum_hi`.
    pub fn compute_checksum(&self, fs_csum_seed: u32, ino: u32) -> u32 {
        let seed = inode_csum_seed(fs_csum_seed, ino, self.generation());
        let mut crc = crc32c_raw(seed, &self.raw[..CHECKSUM_LO]);
        crc = crc32c_raw(crc, &[0, 0]);
        let has_hi = self.has_checksum_hi();
        if has_hi {
            crc = crc32c_raw(crc, &self.raw[CHECKSUM_LO + 2..CHECKSUM_HI]);
            crc = crc32c_raw(crc, &[0, 0]);
            crc = crc32c_raw(crc, &self.raw[CHECKSUM_HI + 2..]);
            crc
        } else {
            crc = crc32c_raw(crc, &self.raw[CHECKSUM_LO + 2..]);
            crc & 0xFFFF
        }
    }

    /// Verifies the checksum (call only with metadata_csum). An inode whose
    /// first 128 bytes are all zero (never used) is accepted, as e2fsprogs does.
    pub fn verify_checksum(&self, fs_csum_seed: u32, ino: u32) -> Result<()> {
        let computed = self.compute_checksum(fs_csum_seed, ino);
        let stored = self.stored_checksum();
        if computed == stored || self.raw[..GOOD_OLD_INODE_SIZE].iter().all(|&b| b == 0) {
            return Ok(());
        }
        Err(FormatError::checksum(Structure::Inode, computed, stored).with_inode(ino))
    }

    /// Recomputes and stores the checksum (call only with metadata_csum).
    pub fn update_checksum(&mut self, fs_csum_seed: u32, ino: u32) {
        let c = self.compute_checksum(fs_csum_seed, ino);
        self.set_checksum_lo(c as u16);
        if self.has_checksum_hi() {
            write_u16le(&mut self.raw, CHECKSUM_HI, (c >> 16) as u16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_codec_matches_kernel() {
        // (seconds, expected base, expected epoch bits)
        let cases: [(i64, u32, u32); 6] = [
            (0, 0, 0),
            (-1, 0xFFFF_FFFF, 0),
            (i64::from(i32::MIN), 0x8000_0000, 0),
            (1i64 << 31, 0x8000_0000, 1),
            ((1i64 << 32) + 5, 5, 1),
            (EXTRA_TIMESTAMP_MAX, 0x7FFF_FFFF, 3),
        ];
        for (s, base, epoch) in cases {
            let (b, e) = Timestamp {
                seconds: s,
                nanoseconds: 7,
            }
            .encode();
            assert_eq!((b, e & 3, e >> 2), (base, epoch, 7), "seconds {s}");
            assert_eq!(
                Timestamp::decode(b, Some(e)),
                Timestamp {
                    seconds: s,
                    nanoseconds: 7
                }
            );
        }
        // Out of range clamps.
        let (b, e) = Timestamp {
            seconds: i64::MAX,
            nanoseconds: 0,
        }
        .encode();
        assert_eq!(Timestamp::decode(b, Some(e)).seconds, EXTRA_TIMESTAMP_MAX);
        assert_eq!(
            Timestamp {
                seconds: -(1i64 << 40),
                nanoseconds: 0
            }
            .encode_base_only(),
            0x8000_0000
        );
    }

    #[test]
    fn device_numbers() {
        let mut i = Inode::new(256, 32).unwrap();
        i.set_device_number(8, 1).unwrap();
        assert_eq!(i.block_word(0), 0x801);
        assert_eq!(i.device_number(), (8, 1));
        i.set_device_number(259, 70000).unwrap();
        assert_eq!(i.block_word(0), 0);
        assert_eq!(i.device_number(), (259, 70000));
    }

    #[test]
    fn huge_file_blocks() {
        let mut i = Inode::new(256, 32).unwrap();
        i.set_block_count_512(1 << 40, true, 12).unwrap();
        assert!(!i.flags().contains(InodeFlags::HUGE_FILE));
        assert_eq!(i.block_count_512(true, 12), 1 << 40);
        assert!(i.set_block_count_512(1 << 40, false, 12).is_err());
        i.set_block_count_512(1 << 50, true, 12).unwrap();
        assert!(i.flags().contains(InodeFlags::HUGE_FILE));
        assert_eq!(i.blocks_raw(), 1 << 47);
        assert_eq!(i.block_count_512(true, 12), 1 << 50);
        i.set_block_count_512(8, true, 12).unwrap();
        assert!(!i.flags().contains(InodeFlags::HUGE_FILE));
    }

    #[test]
    fn checksum_round_trip() {
        let mut i = Inode::new(256, 32).unwrap();
        i.set_mode(0o100644);
        i.set_generation(77);
        i.update_checksum(0x1234_5678, 12);
        i.verify_checksum(0x1234_5678, 12).unwrap();
        assert!(i.verify_checksum(0x1234_5678, 13).is_err());
        let mut small = Inode::new(128, 0).unwrap();
        small.set_mode(0o100644);
        small.update_checksum(1, 12);
        assert!(small.stored_checksum() <= 0xFFFF);
        small.verify_checksum(1, 12).unwrap();
    }
}
