//! Extended attributes: reading (in-inode area, xattr block, EA inodes) and writing them.

pub mod read;
pub mod write;

pub use read::{Xattr, acl_from_disk, is_user_xattr};
pub use write::XattrPair;
