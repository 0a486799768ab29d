//! Extent trees and block maps: logical → physical mapping (extent trees and ext2/ext3 indirect
//! maps, data runs and holes), changing extent trees, and the tree store bound to the metadata
//! cache and the allocator.

pub mod map;
pub mod store;
pub mod tree;

pub use map::EXTENT_LBLK_END;
