//! The write side of the filesystem: allocation, extent trees, directories, inodes, and the
//! page cache's writable `BlockMapper`.
//!
//! | module | owns |
//! |---|---|
//! | [`extent_tree`] | inserting, converting and removing mappings in extent trees |

pub mod extent_tree;
