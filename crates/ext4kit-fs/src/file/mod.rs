//! File data: reading, the page cache's block mapper, and the direct copy path.

pub mod direct;
pub mod mapper;
pub mod read;

pub use read::FileReader;
