//! Inodes: what an inode says about itself (`stat`, `readlink`).

pub mod stat;

pub use stat::{SYMLINK_MAX, Stat};
