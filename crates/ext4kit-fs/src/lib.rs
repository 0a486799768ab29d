//! The ext4kit filesystem: open ext2/ext3/ext4 images and read everything in them, without the
//! kernel and without root.
//!
//! | module | owns |
//! |---|---|
//! | [`fs`] | [`Fs`], [`OpenOptions`], [`fs::Core`] (superblock, descriptors, metadata cache, write state) |
//! | [`metacache`] | the metadata block cache (read-through; dirty tracking) |
//! | [`error`] | [`Error`], its details, the errno table |
//! | [`alloc`] | block and inode bitmaps, group descriptors, allocation, reservations |
//! | [`extent`] | extent trees and indirect maps: lookups, changes, the tree store |
//! | [`dir`] | directory entries: reading, lookups (linear, htree, inline), adding, removing |
//! | [`xattr`] | extended attributes and POSIX ACLs |
//! | [`inode`] | reading inodes, [`Stat`], new inodes, attributes, freeing inodes |
//! | [`journal`] | journal replay (in memory) and crash-safe commits |
//! | [`orphan`] | unlinked-but-open inodes, and orphans left in an image |
//! | [`namei`] | path resolution; create, link, unlink, rmdir, rename |
//! | [`mod@file`] | [`FileReader`], writing through the page cache, the block mapper, the direct path |
//! | [`sync`] | `sync`, early commits, commit holds |
//! | [`mkfs`], [`build`] | making images |
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

pub mod alloc;
pub mod build;
pub mod dir;
pub mod error;
pub mod extent;
pub mod file;
pub mod fs;
pub mod image_lock;
pub mod inode;
pub mod journal;
pub mod metacache;
pub mod mkfs;
pub mod namei;
mod open;
pub mod orphan;
pub(crate) mod salvage;
pub mod sync;
pub mod xattr;

pub use alloc::Space;
/// The host side of importing a tree (`build`, and `cp` into an image).
pub use build::host;
pub use dir::DirEntry;
pub use error::{Corruption, Error, PathBytes, Result, Unsupported};
pub use ext4kit_format::inode::{FileType, Timestamp};
pub use ext4kit_pagecache::{Extent, ExtentKind};
pub use file::FileReader;
pub use fs::{Fs, JournalMode, OpenOptions, ROOT_INO};
pub use inode::Stat;
pub use inode::{NewInode, NewKind};
pub use journal::ReplayReport;
pub use xattr::Xattr;

/// The on-disk format crate, re-exported for callers that need its types.
pub use ext4kit_format as format;
