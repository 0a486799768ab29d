//! The ext4kit filesystem: open ext2/ext3/ext4 images and read everything in them, without the
//! kernel and without root.
//!
//! ```no_run
//! use ext4kit_fs::{Fs, OpenOptions};
//! let fs = Fs::open_path("disk.img".as_ref(), &OpenOptions::default())?;
//! let ino = fs.resolve(b"/etc/hostname", true)?;
//! let data = fs.open_file(ino)?.read_to_end(1 << 20)?;
//! for e in fs.read_dir(fs.resolve(b"/etc", true)?)? {
//!     println!("{} {}", e.ino, String::from_utf8_lossy(&e.name));
//! }
//! # Ok::<(), ext4kit_fs::Error>(())
//! ```
//!
//! Reading never panics and never loops forever on a corrupt image: every structure is
//! validated (and its checksum verified) as it is read, every tree walk is bounded, and a
//! corrupt structure yields [`Error::Corrupt`] / [`Error::ChecksumMismatch`] naming the
//! structure, inode and block.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

// The core every structure reads.
mod error;
mod fs;
mod image_lock;
mod metacache;
mod salvage;

// The on-disk structures, each reading and writing (see docs/architecture.md for the order).
mod alloc;
mod dir;
mod extent;
mod inode;
mod journal;
mod orphan;
mod xattr;

// Operations over several structures.
pub mod build;
mod file;
pub mod mkfs;
mod namei;
mod open;
mod sync;

pub use alloc::Space;
pub use build::{BuildOptions, BuildReport, build_image};
pub use dir::{DirEntry, NAME_MAX};
pub use error::{Corruption, Error, PathBytes, Result, Unsupported};
pub use ext4kit_format::inode::{FileType, Timestamp};
pub use ext4kit_pagecache::{Extent, ExtentKind, Mapping};
pub use file::FileReader;
pub use fs::{Fs, JournalMode, OpenOptions, ROOT_INO};
pub use image_lock::check_not_in_use;
pub use inode::{LINK_MAX, NewInode, NewKind, SYMLINK_MAX, Stat};
pub use journal::ReplayReport;
pub use journal::commit::JournalStats;
pub use mkfs::{MkfsError, MkfsOptions, MkfsReport, mkfs};
pub use namei::MAX_SYMLINKS;
pub use sync::CommitHold;
pub use xattr::{Xattr, XattrPair, acl_from_disk, is_user_xattr};

/// The on-disk format crate, re-exported for callers that need its types.
pub use ext4kit_format as format;

/// The block device crate, re-exported for callers that open an image on a device of their own
/// ([`Fs::open`]: memory, files, test devices).
pub use ext4kit_blockdev as blockdev;

/// The host side of importing a tree into an image (what `build` and `cp` into an image read
/// from the host beyond the bytes): extended attributes, data and hole regions, metadata,
/// device numbers.
pub mod host {
    pub use crate::build::host::{
        DataRegions, HostMeta, data_regions, device_numbers, read_xattrs,
    };
}
