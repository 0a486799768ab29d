//! Extent trees and block maps — the structure that says where a file's blocks are.
//!
//! | file | owns |
//! |---|---|
//! | `map.rs` | logical → physical lookups in extent trees and ext2/ext3 indirect maps; a file's data runs and holes (`Core::runs`, `Core::extent_runs`) |
//! | `tree.rs` | changing extent trees: insert, convert unwritten ranges, remove ranges, pack (the algorithms, over any [`tree::NodeStore`]) |
//! | `store.rs` | the tree store bound to the metadata cache and the allocator (`store::with_tree`) |

pub mod map;
pub mod store;
pub mod tree;
