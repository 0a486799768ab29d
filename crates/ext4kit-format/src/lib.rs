//! On-disk structures of ext2/ext3/ext4 and jbd2: bytes ↔ validated
//! structures, checksums and directory hashes. No IO, no `unsafe`, no panics on
//! any input.
//!
//! Every record type owns its raw bytes and exposes typed getters and setters
//! (descriptive names; the kernel field name is in each doc comment). Parsing
//! validates and returns [`FormatError`]; serializing gives back exactly the
//! bytes that were parsed, unknown and reserved bytes included. Checksums can be
//! computed, verified and updated for every structure that has one.
//!
//! The crate is `no_std` + `alloc` when its default `std` feature is off; `std`
//! only brings hardware-accelerated crc32c (the `crc32c` crate) and
//! `std::error::Error` through thiserror (the error type implements
//! `core::error::Error` either way).
//!
//! | module | owns |
//! |---|---|
//! | [`superblock`] | the superblock, its fields, validation, checksum |
//! | [`features`] | compat / incompat / ro_compat feature sets and names |
//! | [`layout`] | group geometry: backups, descriptor tables, inode locations |
//! | [`group_desc`] | 32/64-byte group descriptors, crc16/crc32c checksums, bitmap checksums |
//! | [`inode`] | inode records, timestamps, flags, modes, device numbers, checksum |
//! | [`extent`] | extent tree nodes, tail checksum, builders |
//! | [`indirect`] | ext2/ext3 indirect block map paths |
//! | [`dir`] | linear directory blocks, checksum tail, builders |
//! | [`htree`] | dx_root / dx_node blocks, dx tail checksum, leaf split |
//! | [`hash`] | legacy / half-MD4 / TEA directory hashes |
//! | [`xattr`] | in-inode and block extended attributes, hashes, builders |
//! | [`acl`] | POSIX ACL values: ext4's disk form ↔ the getxattr(2) form |
//! | [`inline_data`] | inline data and symlink storage helpers |
//! | [`journal`] | jbd2 superblock, descriptor / commit / revoke blocks |
//! | [`orphan`] | orphan file blocks: inode slots, tail magic and checksum |
//! | [`bitmap`] | bit operations over block / inode bitmaps |
//! | [`checksum`] | crc32c (ext4 convention), crc16, crc32_be |
//! | [`bytes`] | little- and big-endian field access |
//! | [`error`] | [`FormatError`] and its detail enums |
//!
//! Checksums follow ext4's convention exactly: [`checksum::crc32c_raw`] is the
//! raw CRC-32C register without the usual inversions, seeded with
//! [`Superblock::csum_seed`] (and, per inode, with inode number and
//! generation). Every checksummed structure has `compute_checksum`,
//! `verify_checksum` and `update_checksum`.
//!
//! ```
//! use ext4kit_format::extent::{Extent, ExtentNode, NodeLocation};
//! use ext4kit_format::inode::{FileType, Inode, InodeFlags, Timestamp};
//!
//! // A new extent-mapped regular file, as a writer would build it.
//! let mut inode = Inode::new(256, 32)?;
//! inode.set_mode(FileType::Regular.mode_bits() | 0o644);
//! inode.set_links_count(1);
//! inode.set_size(8192);
//! inode.set_modification_time(Timestamp { seconds: 5_000_000_000, nanoseconds: 7 });
//! let root = ExtentNode::build_leaf(60, NodeLocation::Inode, &[Extent {
//!     logical_block: 0, len: 2, physical_block: 1234, unwritten: false,
//! }])?;
//! inode.block_area_mut().copy_from_slice(root.as_bytes());
//! let mut flags = inode.flags();
//! flags.insert(InodeFlags::EXTENTS);
//! inode.set_flags(flags);
//! inode.update_checksum(0xDEAD_BEEF, 12);
//!
//! // ... and as a reader gets it back.
//! let parsed = Inode::parse_checked(inode.as_bytes(), 12, Some(0xDEAD_BEEF))?;
//! let extents = ExtentNode::parse_root(parsed.block_area())?.extents();
//! assert_eq!(extents[0].physical_block, 1234);
//! assert_eq!(parsed.modification_time().seconds, 5_000_000_000);
//! # Ok::<(), ext4kit_format::FormatError>(())
//! ```
// Unit tests always have std (the test harness needs it); without the `std` feature they
// still run the portable code paths.
#![cfg_attr(not(any(feature = "std", test)), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

extern crate alloc;

mod macros;

pub mod acl;
pub mod bitmap;
pub mod bytes;
pub mod checksum;
pub mod dir;
pub mod error;
pub mod extent;
pub mod features;
pub mod group_desc;
pub mod hash;
pub mod htree;
pub mod indirect;
pub mod inline_data;
pub mod inode;
pub mod journal;
pub mod layout;
pub mod orphan;
pub mod superblock;
pub mod xattr;

pub use error::{
    CorruptKind, ErrorContext, FormatError, IncompatibleKind, Result, ResultExt, Structure,
};
pub use features::{CompatFeatures, IncompatFeatures, RoCompatFeatures};
pub use hash::{DirHash, HashVersion, dirhash};
pub use superblock::Superblock;
