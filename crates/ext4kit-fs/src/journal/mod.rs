//! The jbd2 journal: replay in memory for reading, and crash-safe commits for writing.

pub mod commit;
pub mod replay;

pub(crate) use replay::JournalMap;
pub use replay::{OverlayDevice, ReplayReport, ReplayedBlocks, replay};
