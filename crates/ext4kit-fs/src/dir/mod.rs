//! Directories: reading entries and looking names up (linear, htree, inline), adding and
//! removing entries, building whole directories.

pub mod read;
pub mod write;

pub(crate) use read::DirInode;
pub use read::{DirEntry, NAME_MAX};
