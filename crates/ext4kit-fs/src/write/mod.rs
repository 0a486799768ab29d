//! The write side of the filesystem: allocation, extent trees, directories, inodes, and the
//! page cache's writable `BlockMapper`.
//!
//! | module | owns |
//! |---|---|
//! | [`extent_tree`] | inserting, converting and removing mappings in extent trees |
//! | [`direct`] | image building's bulk data path (source file to allocated blocks, no page cache) |
//! | [`dir_write`] | adding and removing directory entries, linear and htree; bulk-built directories |
//! | [`modify`] | unlink, rmdir, rename, symlink, fallocate, punch hole; freeing inodes |
//! | [`orphan`] | unlinked-but-open inodes, and orphans left in an image (cleaned at open) |
//! | [`journal_write`] | crash-safe sync: each sync's metadata as one jbd2 transaction; journal recovery at a writable open |

pub mod dir_write;
pub mod direct;
pub mod extent_tree;
pub mod journal_write;
pub mod mapper;
pub mod modify;
pub mod ops;
pub mod orphan;
pub mod state;
pub mod stores;
pub mod xattr_write;
