//! Directories — the structure that maps names to inodes.
//!
//! | file | owns |
//! |---|---|
//! | `read.rs` | [`DirEntry`]; reading linear, htree and inline directories; lookups (dx probe + collision chain); `..` |
//! | `write.rs` | adding and removing entries in linear and htree directories, making a directory indexed, building a whole directory (over any `DirStore`) |
//! | `store.rs` | the directory store bound to the metadata cache and the extent tree (`DirIo`); the writer's view of a directory (lookup, `..`, emptiness) |

pub mod read;
pub mod store;
pub mod write;

pub(crate) use read::DirInode;
pub use read::{DirEntry, NAME_MAX};
