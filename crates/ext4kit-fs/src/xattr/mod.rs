//! Extended attributes: reading them (in-inode area, xattr block, values in EA inodes),
//! writing them (in the inode's extra space first, the rest in one block), and the POSIX ACLs
//! stored among them.
//!
//! | file | owns |
//! |---|---|
//! | `read.rs` | [`Xattr`], listing and getting attributes; `system.data` hidden; stored ACLs shown in the getxattr(2) form ([`acl_from_disk`]) |
//! | `write.rs` | replacing an inode's set (in-inode area, then one block with `h_refcount`), `Fs::set_xattr`, `Fs::remove_xattr`; dropping a reference to a (shared) xattr block |
//! | `acl.rs` | POSIX ACLs written: getxattr form → disk form, inheritance at create, chmod |

pub mod acl;
pub mod read;
pub mod write;

pub use read::{Xattr, acl_from_disk, is_user_xattr};
pub use write::XattrPair;
