//! File data — reading and writing the bytes of regular files.
//!
//! | file | owns |
//! |---|---|
//! | `read.rs` | [`FileReader`] (block-mapped data through the page cache; inline data from the inode), `Fs::file_runs`, `Fs::map_block` |
//! | `write.rs` | `Fs::data_mapping`, `write_at`, `set_size`, `fallocate`, `punch_hole`, `close_file` (through the page cache) |
//! | `mapper.rs` | the page cache's `BlockMapper`: lookups, reservations, allocation at writeback, unwritten conversion, truncate |
//! | `direct.rs` | the direct path for new files (`Fs::write_from_file`: allocate, then copy inside the kernel) |

pub mod direct;
pub mod mapper;
pub mod read;
pub mod write;

pub use read::FileReader;
