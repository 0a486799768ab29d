//! Names: path resolution, and the operations that create, remove and move names.

pub mod create;
pub mod path;
pub mod remove;

pub use path::MAX_SYMLINKS;
