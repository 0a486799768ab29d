//! The crate's one error type, [`Error`], its detail enums and the errno table.
//!
//! Families are kept apart because they lead to different actions:
//!
//! * [`Error::Corrupt`] / [`Error::ChecksumMismatch`]: the image breaks a rule of the format
//!   (run e2fsck). The detail is a [`Corruption`]: either a rule of `ext4kit-format`
//!   ([`Corruption::Format`]) or one only the filesystem layer can see (a block pointer beyond
//!   the filesystem, a cycle in a tree, ...). Both carry the [`Structure`] and an
//!   [`ErrorContext`] (inode, block, group) so that messages read
//!   `inode 12, block 345: extent tree: extent header magic 0x0000 (expected 0xf30a)`.
//! * [`Error::Unsupported`]: a valid image using something we cannot handle (unknown incompat
//!   features, encryption, an external journal, ...).
//! * [`Error::Io`]: the device failed.
//! * Path errors ([`Error::NotFound`], [`Error::NotDir`], ...) carry the path as far as it was
//!   resolved when the error happened.
//!
//! [`Error::errno`] is the single errno table (FUSE front ends call it); `From<Error> for
//! std::io::Error` keeps the errno.

use std::fmt;

use ext4kit_blockdev::IoError;
use ext4kit_format::error::IncompatibleKind;
use ext4kit_format::{CorruptKind, ErrorContext, FormatError, Structure};

/// Shorthand for `Result<T, Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A rule of the on-disk format that an image breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Corruption {
    /// A rule checked by `ext4kit-format` while parsing one structure.
    Format(CorruptKind),
    /// A block number points outside the filesystem (or into block 0 / before
    /// `s_first_data_block`).
    BlockOutOfRange {
        /// The block number found.
        block: u64,
    },
    /// An inode number outside `1..=s_inodes_count`.
    InodeOutOfRange {
        /// The inode number found.
        ino: u32,
    },
    /// An inode in the never-initialized tail of a group's inode table (`bg_itable_unused`,
    /// `INODE_UNINIT`), referenced as if it were in use.
    InodeUninitialized {
        /// The inode number.
        ino: u32,
    },
    /// A directory entry refers to an inode with no links (deleted).
    DeletedInode {
        /// The inode number.
        ino: u32,
    },
    /// `i_mode` has no valid file type.
    BadFileType {
        /// `i_mode`.
        mode: u16,
    },
    /// A file maps a logical block twice or its extent tree visits a block twice.
    TreeCycle {
        /// The block visited again.
        block: u64,
    },
    /// The htree index leads to a block that is not a leaf (a dx node or the root), or to the
    /// same block twice on one path.
    HtreeCycle {
        /// Logical block of the directory.
        lblk: u64,
    },
    /// The htree index points past the end of the directory.
    HtreeBlockBeyondEnd {
        /// Logical block named by the index.
        lblk: u64,
    },
    /// A hole where a directory needs a block (an htree node or leaf).
    DirectoryHole {
        /// Logical block of the directory.
        lblk: u64,
    },
    /// A directory's first block does not start with `.` and `..`.
    DirectoryDots,
    /// A directory entry name that cannot exist (empty, or containing `/` or NUL).
    BadName {
        /// Offset of the entry in its block.
        offset: usize,
        /// The name as stored.
        name: Vec<u8>,
    },
    /// A slow symlink whose size does not fit one block, or is zero.
    SymlinkSize {
        /// `i_size`.
        size: u64,
    },
    /// Inline data on a filesystem without the inline_data feature, or an inline inode that
    /// is not a file, directory or symlink.
    InlineData,
    /// The file needs more blocks than a file can have (size beyond 2^32 blocks).
    FileTooLarge {
        /// `i_size`.
        size: u64,
    },
    /// An extent tree or block map has more nodes than the filesystem has blocks.
    TooManyNodes,
    /// The journal inode or its geometry is unusable.
    Journal(String),
    /// A POSIX ACL value in ext4's on-disk format that does not parse (version, truncated or
    /// unknown entry).
    Acl {
        /// Byte offset in the value.
        offset: usize,
    },
    /// The orphan list (`s_last_orphan` and the `i_dtime` links) names an inode that cannot
    /// be on it (out of range, reserved, or reached twice).
    OrphanList {
        /// The inode named.
        ino: u32,
    },
    /// An orphan file block is malformed.
    OrphanFile {
        /// The block.
        block: u64,
        /// What is wrong.
        reason: String,
    },
    /// A block bitmap marks one of its group's own metadata blocks (bitmaps, inode table) free.
    MetadataMarkedFree {
        /// The first such block.
        block: u64,
    },
    /// An inode bitmap marks an inode free that is in use (file type, links, no dtime).
    LiveInodeMarkedFree {
        /// The inode.
        ino: u32,
        /// Its link count.
        links: u16,
    },
    /// The image is shorter than the filesystem it holds.
    Truncated {
        /// Bytes the filesystem needs.
        needed: u64,
        /// Bytes the device has.
        device: u64,
    },
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Corruption as C;
        match self {
            C::Format(k) => k.fmt(f),
            C::BlockOutOfRange { block } => write!(f, "block {block} outside the filesystem"),
            C::InodeOutOfRange { ino } => write!(f, "inode number {ino} out of range"),
            C::InodeUninitialized { ino } => {
                write!(
                    f,
                    "inode {ino} lies in the uninitialized part of its inode table"
                )
            }
            C::DeletedInode { ino } => write!(f, "entry refers to deleted inode {ino}"),
            C::BadFileType { mode } => write!(f, "invalid file type in i_mode {mode:#o}"),
            C::TreeCycle { block } => write!(f, "block {block} reached twice (cycle)"),
            C::HtreeCycle { lblk } => {
                write!(
                    f,
                    "htree index leads to directory block {lblk}, which is not a leaf"
                )
            }
            C::HtreeBlockBeyondEnd { lblk } => {
                write!(
                    f,
                    "htree index points at block {lblk}, past the end of the directory"
                )
            }
            C::DirectoryHole { lblk } => write!(f, "hole at directory block {lblk}"),
            C::DirectoryDots => f.write_str("directory does not start with '.' and '..'"),
            C::BadName { offset, name } => {
                write!(
                    f,
                    "directory entry at {offset}: invalid name {:?}",
                    String::from_utf8_lossy(name)
                )
            }
            C::SymlinkSize { size } => write!(f, "invalid symlink size {size}"),
            C::InlineData => f.write_str("inline data where it cannot be"),
            C::FileTooLarge { size } => write!(f, "size {size} beyond the largest file"),
            C::TooManyNodes => f.write_str("more tree nodes than the filesystem has blocks"),
            C::Journal(s) => f.write_str(s),
            C::Acl { offset } => write!(f, "malformed POSIX ACL at byte {offset}"),
            C::OrphanList { ino } => write!(
                f,
                "orphan list names inode {ino}, which cannot be an orphan"
            ),
            C::OrphanFile { block, reason } => write!(f, "orphan file block {block}: {reason}"),
            C::MetadataMarkedFree { block } => write!(
                f,
                "metadata block {block} (a bitmap or the inode table) is marked free; run e2fsck"
            ),
            C::LiveInodeMarkedFree { ino, links } => write!(
                f,
                "inode {ino} is marked free but in use ({links} links); run e2fsck"
            ),
            C::Truncated { needed, device } => write!(
                f,
                "image truncated: the filesystem needs {needed} bytes, the device has {device}"
            ),
        }
    }
}

/// What a valid image uses that we cannot handle.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unsupported {
    /// Something `ext4kit-format` refuses (unknown features, revision, checksum type, ...).
    Format(IncompatibleKind),
    /// Known incompat features this reader cannot handle (names as `dumpe2fs` prints them).
    Features(Vec<String>),
    /// The journal lives on another device.
    ExternalJournal,
    /// Encrypted files or names.
    Encrypted,
    /// Anything else, described.
    Other(String),
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsupported::Format(k) => k.fmt(f),
            Unsupported::Features(v) => write!(f, "unsupported features: {}", v.join(" ")),
            Unsupported::ExternalJournal => f.write_str("external journal device"),
            Unsupported::Encrypted => f.write_str("encrypted file"),
            Unsupported::Other(s) => f.write_str(s),
        }
    }
}

/// Prints a path held as bytes (lossy for non-UTF-8 names).
#[derive(Clone, PartialEq, Eq)]
pub struct PathBytes(pub Vec<u8>);

impl fmt::Display for PathBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for PathBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl From<&[u8]> for PathBytes {
    fn from(p: &[u8]) -> Self {
        PathBytes(p.to_vec())
    }
}

/// The error of every fallible function in this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The image breaks a rule of the on-disk format.
    #[error("{context}{structure}: {what}")]
    Corrupt {
        /// The structure being read.
        structure: Structure,
        /// The rule that is broken.
        what: Corruption,
        /// Inode / block / group, as far as known.
        context: ErrorContext,
    },
    /// A stored checksum disagrees with the data.
    #[error(
        "{context}{structure} checksum mismatch: stored {found:#010x}, computed {expected:#010x}"
    )]
    ChecksumMismatch {
        /// The structure whose checksum failed.
        structure: Structure,
        /// The checksum computed from the data.
        expected: u32,
        /// The checksum stored on disk.
        found: u32,
        /// Inode / block / group, as far as known.
        context: ErrorContext,
    },
    /// The image is valid but uses something this crate cannot handle.
    #[error("{context}unsupported: {what}")]
    Unsupported {
        /// What is not supported.
        what: Unsupported,
        /// Inode / block / group, as far as known.
        context: ErrorContext,
    },
    /// The device failed.
    #[error("{context}I/O error: {source}")]
    Io {
        /// The device error.
        source: IoError,
        /// Inode / block, as far as known.
        context: ErrorContext,
    },
    /// Opening the image file failed (the OS error, with its errno).
    #[error("{path}: cannot open: {message}")]
    Open {
        /// The image path.
        path: String,
        /// The OS error message.
        message: String,
        /// Its errno.
        errno: i32,
    },
    /// No such file or directory.
    #[error("{path}: no such file or directory")]
    NotFound {
        /// The path up to the missing component.
        path: PathBytes,
    },
    /// A path component that must be a directory is not one.
    #[error("{path}: not a directory")]
    NotDir {
        /// The path up to that component.
        path: PathBytes,
    },
    /// A directory where a file is needed.
    #[error("{path}: is a directory")]
    IsDir {
        /// The path.
        path: PathBytes,
    },
    /// Too many symlinks while resolving a path.
    #[error("{path}: too many levels of symbolic links")]
    SymlinkLoop {
        /// The path being resolved.
        path: PathBytes,
    },
    /// A name longer than 255 bytes.
    #[error("{path}: file name too long")]
    NameTooLong {
        /// The path being resolved.
        path: PathBytes,
    },
    /// `readlink` on something that is not a symlink, and similar misuse.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No extended attribute of that name.
    #[error("inode {ino}: no attribute {name}")]
    NoXattr {
        /// The inode.
        ino: u32,
        /// The attribute name.
        name: PathBytes,
    },
    /// A write was asked of a read-only filesystem.
    #[error("read-only filesystem: {0}")]
    ReadOnly(String),
    /// Writing a file's data back failed: an error of writeback nobody was waiting for (the
    /// background flusher), reported once to the next sync, or a submission that failed
    /// before any IO started. The error of an allocation this call made itself is returned as
    /// what it is ([`Error::NoSpace`], [`Error::Corrupt`], ...), never as this.
    #[error("inode {ino}: writeback failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Writeback {
        /// The inode.
        ino: u32,
        /// errno of the failure.
        errno: i32,
    },
    /// An offset or size beyond what the page cache can hold for a file.
    #[error("inode {ino}: file offset {offset} is too large")]
    FileTooLarge {
        /// The inode.
        ino: u32,
        /// The offset.
        offset: u64,
    },
    /// Something that cannot happen did (the page cache and the block map disagree): a bug.
    #[error("internal error: {0}")]
    Internal(String),
    /// No room left: free blocks, free inodes, or a directory index that cannot grow.
    #[error("no space left on device: {0}")]
    NoSpace(String),
    /// A path whose last component cannot be created, removed or renamed (empty, `.`, `..`).
    #[error("{path}: not a name that can be created")]
    InvalidName {
        /// The path as given.
        path: PathBytes,
    },
    /// The name exists already.
    #[error("{path}: file exists")]
    Exists {
        /// The path (or name).
        path: PathBytes,
    },
    /// The directory is not empty.
    #[error("{path}: directory not empty")]
    NotEmpty {
        /// The path.
        path: PathBytes,
    },
    /// Too many links to an inode (or subdirectories in a directory without dir_nlink).
    #[error("{path}: too many links")]
    TooManyLinks {
        /// The path.
        path: PathBytes,
    },
}

// errno values, from the platform's headers. Corruption is EFSCORRUPTED (EUCLEAN on Linux, EIO
// where there is no EUCLEAN).
use ext4kit_pagecache::EFSCORRUPTED;
use libc::{
    EBADMSG, EEXIST, EFBIG, EINVAL, EIO, EISDIR, ELOOP, EMLINK, ENAMETOOLONG, ENODATA, ENOENT,
    ENOSPC, ENOTDIR, ENOTEMPTY, EOPNOTSUPP, EROFS,
};

impl Error {
    /// A corruption error without context.
    pub fn corrupt(structure: Structure, what: Corruption) -> Self {
        Error::Corrupt {
            structure,
            what,
            context: ErrorContext::default(),
        }
    }

    /// An unsupported-feature error without context.
    pub fn unsupported(what: Unsupported) -> Self {
        Error::Unsupported {
            what,
            context: ErrorContext::default(),
        }
    }

    /// An IO error at `block` (filesystem block), if known.
    pub fn io(source: IoError, block: Option<u64>) -> Self {
        Error::Io {
            source,
            context: ErrorContext {
                block,
                ..ErrorContext::default()
            },
        }
    }

    /// The errno this error maps to (EUCLEAN for corruption, EBADMSG for checksums,
    /// EOPNOTSUPP for unsupported, EIO for IO, ENOENT, ENOTDIR, ...).
    pub fn errno(&self) -> i32 {
        match self {
            Error::Corrupt { .. } => EFSCORRUPTED,
            Error::ChecksumMismatch { .. } => EBADMSG,
            Error::Unsupported { .. } => EOPNOTSUPP,
            Error::Io { source, .. } => {
                let e = source.errno();
                if e > 0 { e } else { EIO }
            }
            Error::Open { errno, .. } => *errno,
            Error::NotFound { .. } => ENOENT,
            Error::NotDir { .. } => ENOTDIR,
            Error::IsDir { .. } => EISDIR,
            Error::SymlinkLoop { .. } => ELOOP,
            Error::NameTooLong { .. } => ENAMETOOLONG,
            Error::InvalidArgument(_) => EINVAL,
            Error::NoXattr { .. } => ENODATA,
            Error::ReadOnly(_) => EROFS,
            Error::NoSpace(_) => ENOSPC,
            Error::InvalidName { .. } => EINVAL,
            Error::Exists { .. } => EEXIST,
            Error::NotEmpty { .. } => ENOTEMPTY,
            Error::TooManyLinks { .. } => EMLINK,
            Error::Writeback { errno, .. } => {
                if *errno > 0 {
                    *errno
                } else {
                    EIO
                }
            }
            Error::FileTooLarge { .. } => EFBIG,
            Error::Internal(_) => EIO,
        }
    }

    /// The error of a page cache call on inode `ino`. When the cache failed because the block
    /// mapper (this crate) did, that is the error the mapper returned, taken back out of the
    /// cache's [`ext4kit_pagecache::MapError`] unchanged (a [`Error::NoSpace`] stays one, a
    /// corruption keeps its structure and context); the cache's own errors become the variant
    /// that says the same.
    pub(crate) fn from_cache(ino: u32, e: ext4kit_pagecache::Error) -> Error {
        use ext4kit_pagecache::Error as C;
        match e {
            C::Io(io) => Error::io(io, None).with_inode(ino),
            C::Map(m) => match m.downcast::<Error>() {
                Ok(e) => e,
                Err(m) => Error::Internal(format!(
                    "inode {ino}: a block mapper error of unknown origin: {m}"
                )),
            },
            C::Writeback { errno } | C::Submit { errno } => Error::Writeback { ino, errno },
            C::TooLarge(offset) => Error::FileTooLarge { ino, offset },
            C::BadConfig(msg) => Error::InvalidArgument(msg),
            other => Error::Internal(other.to_string()),
        }
    }

    /// `true` for [`Error::Corrupt`] and [`Error::ChecksumMismatch`] (run e2fsck).
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corrupt { .. } | Error::ChecksumMismatch { .. })
    }

    /// The structure a corruption / checksum error is about.
    pub fn structure(&self) -> Option<Structure> {
        match self {
            Error::Corrupt { structure, .. } | Error::ChecksumMismatch { structure, .. } => {
                Some(*structure)
            }
            _ => None,
        }
    }

    /// The corruption detail, if this is [`Error::Corrupt`].
    pub fn corruption(&self) -> Option<&Corruption> {
        match self {
            Error::Corrupt { what, .. } => Some(what),
            _ => None,
        }
    }

    /// The context (inode / block / group) attached so far.
    pub fn context(&self) -> ErrorContext {
        match self {
            Error::Corrupt { context, .. }
            | Error::ChecksumMismatch { context, .. }
            | Error::Unsupported { context, .. }
            | Error::Io { context, .. } => *context,
            _ => ErrorContext::default(),
        }
    }

    fn context_mut(&mut self) -> Option<&mut ErrorContext> {
        match self {
            Error::Corrupt { context, .. }
            | Error::ChecksumMismatch { context, .. }
            | Error::Unsupported { context, .. }
            | Error::Io { context, .. } => Some(context),
            _ => None,
        }
    }

    /// Attaches the inode number (keeps one already attached).
    #[must_use]
    pub fn with_inode(mut self, ino: u32) -> Self {
        if let Some(c) = self.context_mut() {
            c.inode.get_or_insert(ino);
        }
        self
    }

    /// Attaches the block number (keeps one already attached).
    #[must_use]
    pub fn with_block(mut self, block: u64) -> Self {
        if let Some(c) = self.context_mut() {
            c.block.get_or_insert(block);
        }
        self
    }

    /// Attaches the group number (keeps one already attached).
    #[must_use]
    pub fn with_group(mut self, group: u32) -> Self {
        if let Some(c) = self.context_mut() {
            c.group.get_or_insert(group);
        }
        self
    }
}

impl From<FormatError> for Error {
    fn from(e: FormatError) -> Self {
        match e {
            FormatError::Corrupt {
                structure,
                what,
                context,
            } => Error::Corrupt {
                structure,
                what: Corruption::Format(what),
                context,
            },
            FormatError::ChecksumMismatch {
                structure,
                expected,
                found,
                context,
            } => Error::ChecksumMismatch {
                structure,
                expected,
                found,
                context,
            },
            FormatError::Incompatible { what, context, .. } => Error::Unsupported {
                what: Unsupported::Format(what),
                context,
            },
            other => Error::InvalidArgument(other.to_string()),
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        let kind = std::io::Error::from_raw_os_error(e.errno()).kind();
        std::io::Error::new(kind, e)
    }
}

/// Attaching context to results.
pub trait ResultExt<T> {
    /// Attaches the inode number to the error, if any.
    fn ctx_inode(self, ino: u32) -> Result<T>;
    /// Attaches the block number to the error, if any.
    fn ctx_block(self, block: u64) -> Result<T>;
    /// Attaches the group number to the error, if any.
    fn ctx_group(self, group: u32) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn ctx_inode(self, ino: u32) -> Result<T> {
        self.map_err(|e| e.into().with_inode(ino))
    }
    fn ctx_block(self, block: u64) -> Result<T> {
        self.map_err(|e| e.into().with_block(block))
    }
    fn ctx_group(self, group: u32) -> Result<T> {
        self.map_err(|e| e.into().with_group(group))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_errors_keep_structure_and_context() {
        let e: Error = FormatError::corrupt(Structure::ExtentTree, CorruptKind::ExtentMagic(0))
            .with_inode(12)
            .into();
        let e = e.with_block(345).with_inode(99);
        assert_eq!(
            e.to_string(),
            "inode 12, block 345: extent tree: extent header magic 0x0000 (expected 0xf30a)"
        );
        assert_eq!(e.errno(), EFSCORRUPTED);
        assert_eq!(e.structure(), Some(Structure::ExtentTree));
        let io: std::io::Error = e.into();
        assert_eq!(io.raw_os_error(), None);
        let e = Error::NotFound {
            path: PathBytes(b"/a/b".to_vec()),
        };
        assert_eq!(e.to_string(), "/a/b: no such file or directory");
        assert_eq!(std::io::Error::from(e).kind(), std::io::ErrorKind::NotFound);
    }
}
