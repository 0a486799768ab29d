//! The ext4kit filesystem: read and write ext2/ext3/ext4 images without the kernel and without
//! root — make them ([`mkfs()`], [`build_image`]), open them ([`Fs::open_path`], or
//! [`Fs::open`] on any [`blockdev::BlockDevice`]), read everything in them, and change them:
//! create, write, truncate, preallocate and punch files; make directories, symlinks, device
//! nodes and hard links; unlink, rename; set owners, modes, times, xattrs and POSIX ACLs.
//!
//! # Writing
//!
//! ```
//! use ext4kit_fs::{Fs, MkfsOptions, NewInode, OpenOptions, Timestamp, mkfs_path};
//!
//! let img = std::env::temp_dir().join(format!("ext4kit-doc-write-{}.img", std::process::id()));
//! mkfs_path(&img, &MkfsOptions { size_bytes: 32 << 20, ..MkfsOptions::default() })?;
//!
//! let fs = Fs::open_path(&img, &OpenOptions { writable: true, ..OpenOptions::default() })?;
//! let t = Timestamp { seconds: 1_700_000_000, nanoseconds: 0 };
//! fs.mkdir_all(b"/etc/app", &NewInode::with_time(0o755, t))?;
//! fs.write_path(b"/etc/app/config", b"verbose = true\n", &NewInode::with_time(0o644, t))?;
//! // Nothing is on the image before a sync; `close` syncs and returns the sync's error.
//! fs.close()?;
//! # std::fs::remove_file(&img)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Changes live in memory (file data in a page cache, metadata in a metadata cache) until
//! [`Fs::sync`] or [`Fs::close`], which write the data, then the metadata — as one jbd2
//! transaction when the image has a journal, so that a crash leaves the image as it was
//! before the sync or after it. Dropping a writable [`Fs`] does not sync (debug builds warn
//! when changes are lost that way; [`Fs::discard`] gives them up on purpose).
//!
//! Paths are byte strings (`b"/etc/app"`): the path calls ([`Fs::create_path`],
//! [`Fs::mkdir_all`], [`Fs::remove`], [`Fs::remove_all`], [`Fs::rename_path`],
//! [`Fs::read_path`], [`Fs::write_path`]) sit on inode-level ones ([`Fs::create`],
//! [`Fs::write_at`], [`Fs::unlink`], [`Fs::rename`], ...) that take a directory's inode number
//! and a name.
//!
//! # Reading
//!
//! ```
//! use ext4kit_fs::{Fs, OpenOptions};
//! # use ext4kit_fs::{MkfsOptions, NewInode, Timestamp, mkfs_path};
//! # let img = std::env::temp_dir().join(format!("ext4kit-doc-read-{}.img", std::process::id()));
//! # mkfs_path(&img, &MkfsOptions { size_bytes: 32 << 20, ..MkfsOptions::default() })?;
//! # let w = Fs::open_path(&img, &OpenOptions { writable: true, ..OpenOptions::default() })?;
//! # let t = Timestamp { seconds: 1_700_000_000, nanoseconds: 0 };
//! # w.mkdir_all(b"/etc", &NewInode::with_time(0o755, t))?;
//! # w.write_path(b"/etc/hostname", b"example\n", &NewInode::with_time(0o644, t))?;
//! # w.close()?;
//! let fs = Fs::open_path(&img, &OpenOptions::default())?;
//! let ino = fs.resolve(b"/etc/hostname", true)?;
//! let data = fs.open_file(ino)?.read_to_end(1 << 20)?;
//! assert_eq!(data, b"example\n");
//! println!("{} bytes, mode {:o}", fs.stat(ino)?.size, fs.stat(ino)?.mode);
//! for e in fs.read_dir(fs.resolve(b"/etc", true)?)? {
//!     println!("{} {}", e.ino, String::from_utf8_lossy(&e.name));
//! }
//! # std::fs::remove_file(&img)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Reading never panics and never loops forever on a corrupt image: every structure is
//! validated (and its checksum verified) as it is read, every tree walk is bounded, and a
//! corrupt structure yields [`Error::Corrupt`] / [`Error::ChecksumMismatch`] naming the
//! structure, inode and block. A journal that needs recovery is replayed in memory for
//! reading ([`Fs::journal_replay`]); the image is not written.
//!
//! # The API
//!
//! Everything public is listed below (the crate's modules are private, except the [`mkfs`](mod@mkfs)
//! and [`build`] namespaces and [`host`]): the handle [`Fs`] and its [`OpenOptions`]; what
//! reading returns ([`DirEntry`], [`Stat`], [`Xattr`], [`FileReader`], [`Extent`]); what
//! creating takes ([`NewInode`], [`NewKind`]); writing's helpers ([`Space`], [`CommitHold`],
//! [`JournalStats`]); errors ([`Error`], [`Corruption`], [`Unsupported`]); and the on-disk
//! format ([`format`](mod@format)) and device ([`blockdev`]) crates.
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
pub use mkfs::{MkfsError, MkfsOptions, MkfsReport, mkfs, mkfs_path};
pub use namei::{MAX_SYMLINKS, names_dir, split_parent};
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
