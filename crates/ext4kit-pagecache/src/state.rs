//! Per-block and per-page state bits.
//!
//! A block's state is one byte ([`BlockState`]), the buffer_head `b_state` bits the writeback
//! path uses; a page's state is one byte of [`PageFlags`]. Both live inside the page's state
//! mutex, which plays the role of the kernel's per-folio `b_uptodate_lock`: every change to a
//! block's bits happens under it, so completion accounting can never see a torn update
//! (invariant 13 of kernel-io-path.md §3.4).

use std::fmt;

/// The state of one block inside a page (one byte).
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct BlockState(u8);

impl BlockState {
    /// Data in the page is valid (BH_Uptodate).
    pub const UPTODATE: BlockState = BlockState(1 << 0);
    /// Data is newer than the disk (BH_Dirty).
    pub const DIRTY: BlockState = BlockState(1 << 1);
    /// The block has a disk address or a delayed reservation (BH_Mapped).
    pub const MAPPED: BlockState = BlockState(1 << 2);
    /// The mapping was just created: parts not written must be zeroed (BH_New).
    pub const NEW: BlockState = BlockState(1 << 3);
    /// Delayed allocation: reserved, not yet allocated (BH_Delay).
    pub const DELAY: BlockState = BlockState(1 << 4);
    /// Backed by an unwritten extent (BH_Unwritten).
    pub const UNWRITTEN: BlockState = BlockState(1 << 5);
    /// Queued in a bio; cleared exactly once by the completion covering it (BH_Async_Write).
    pub const ASYNC_WRITE: BlockState = BlockState(1 << 6);
    /// The last write of this block failed (BH_Write_EIO).
    pub const WRITE_IO_ERROR: BlockState = BlockState(1 << 7);

    /// No bits.
    pub const fn empty() -> BlockState {
        BlockState(0)
    }

    /// The raw byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// From a raw byte.
    pub const fn from_bits(b: u8) -> BlockState {
        BlockState(b)
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: BlockState) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any bit of `other` is set.
    pub const fn intersects(self, other: BlockState) -> bool {
        self.0 & other.0 != 0
    }

    /// Sets the bits of `other`.
    pub fn insert(&mut self, other: BlockState) {
        self.0 |= other.0;
    }

    /// Clears the bits of `other`.
    pub fn remove(&mut self, other: BlockState) {
        self.0 &= !other.0;
    }
}

impl std::ops::BitOr for BlockState {
    type Output = BlockState;
    fn bitor(self, rhs: BlockState) -> BlockState {
        BlockState(self.0 | rhs.0)
    }
}

impl fmt::Debug for BlockState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 8] = [
            "Uptodate",
            "Dirty",
            "Mapped",
            "New",
            "Delay",
            "Unwritten",
            "AsyncWrite",
            "WriteEIO",
        ];
        let mut first = true;
        f.write_str("[")?;
        for (i, n) in NAMES.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(n)?;
                first = false;
            }
        }
        f.write_str("]")
    }
}

/// The flags of one page (one byte).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct PageFlags(u8);

impl PageFlags {
    /// Held by the task working on the page (PG_locked).
    pub const LOCKED: PageFlags = PageFlags(1 << 0);
    /// Some block is dirty (PG_dirty).
    pub const DIRTY: PageFlags = PageFlags(1 << 1);
    /// Under writeback, from the start of the submit pass until the last block completes, or
    /// until unwritten conversion finished (PG_writeback).
    pub const WRITEBACK: PageFlags = PageFlags(1 << 2);
    /// Every block of the page is uptodate (PG_uptodate).
    pub const UPTODATE: PageFlags = PageFlags(1 << 3);

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: PageFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Sets the bits of `other`.
    pub fn insert(&mut self, other: PageFlags) {
        self.0 |= other.0;
    }

    /// Clears the bits of `other`.
    pub fn remove(&mut self, other: PageFlags) {
        self.0 &= !other.0;
    }
}

impl fmt::Debug for PageFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 4] = ["Locked", "Dirty", "Writeback", "Uptodate"];
        let v: Vec<&str> = NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, n)| *n)
            .collect();
        write!(f, "[{}]", v.join("|"))
    }
}
