//! Integration tests of ext4kit-format against real images made by mke2fs /
//! e2fsck / the kernel at test time, with debugfs / dumpe2fs as oracles.
//!
//! Images are generated into temporary directories (never committed). When
//! e2fsprogs (or, for the kernel-written fixtures, loop mounting) is missing,
//! tests print a note and pass, unless `EXT4KIT_REQUIRE_KERNEL=1` is set, in
//! which case they fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixtures;

mod dirs;
mod extents;
mod fuzz;
mod group_desc;
mod hashes;
mod inodes;
mod journal;
mod superblock;
mod xattrs;
