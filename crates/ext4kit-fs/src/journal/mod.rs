//! The jbd2 journal — the structure that makes a sync atomic.
//!
//! | file | owns |
//! |---|---|
//! | `replay.rs` | reading the log (scan, revoke, replay of jbd2 v2/v3 and crc32 v1 checksums) into a map served by [`OverlayDevice`]; [`ReplayReport`]; the journal inode's block map (`JournalMap`) |
//! | `commit.rs` | the writer: each sync's metadata as one transaction (`JournalWriter`, [`commit::JournalStats`]); recovery onto the image at a writable open ([`commit::RecoveryReport`]) |

pub mod commit;
pub mod replay;

pub(crate) use replay::JournalMap;
pub use replay::{OverlayDevice, ReplayReport, replay};
