//! Indirect block maps of ext2/ext3 (and non-extent ext4 files): the path from
//! a logical block through `i_block[0..12]` (direct), `i_block[12]` (single
//! indirect), `i_block[13]` (double) and `i_block[14]` (triple) to the block
//! pointer, for a given block size. Pure arithmetic, no IO.

use crate::bytes::read_u32le;
use crate::error::{CorruptKind, FormatError, Result, Structure};

/// Number of direct pointers (`EXT4_NDIR_BLOCKS`).
pub const DIRECT_BLOCKS: u32 = 12;
/// `i_block` slot of the single indirect block.
pub const IND_SLOT: usize = 12;
/// `i_block` slot of the double indirect block.
pub const DIND_SLOT: usize = 13;
/// `i_block` slot of the triple indirect block.
pub const TIND_SLOT: usize = 14;

/// The route to a logical block's pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndirectPath {
    /// `i_block[slot]` holds the block directly (slot < 12).
    Direct {
        /// Slot in `i_block`.
        slot: usize,
    },
    /// `i_block[12]` → pointer `offsets[0]`.
    Single {
        /// Offsets (in pointers) at each level.
        offsets: [u32; 1],
    },
    /// `i_block[13]` → `offsets[0]` → `offsets[1]`.
    Double {
        /// Offsets at each level.
        offsets: [u32; 2],
    },
    /// `i_block[14]` → `offsets[0]` → `offsets[1]` → `offsets[2]`.
    Triple {
        /// Offsets at each level.
        offsets: [u32; 3],
    },
}

impl IndirectPath {
    /// The `i_block` slot the path starts from.
    pub fn slot(&self) -> usize {
        match self {
            IndirectPath::Direct { slot } => *slot,
            IndirectPath::Single { .. } => IND_SLOT,
            IndirectPath::Double { .. } => DIND_SLOT,
            IndirectPath::Triple { .. } => TIND_SLOT,
        }
    }

    /// The offsets inside indirect blocks, outermost first (empty for direct).
    pub fn offsets(&self) -> &[u32] {
        match self {
            IndirectPath::Direct { .. } => &[],
            IndirectPath::Single { offsets } => offsets,
            IndirectPath::Double { offsets } => offsets,
            IndirectPath::Triple { offsets } => offsets,
        }
    }

    /// Number of indirect blocks traversed (0..=3).
    pub fn depth(&self) -> usize {
        self.offsets().len()
    }
}

/// Pointers per indirect block (block size / 4).
pub fn pointers_per_block(block_size: u32) -> u64 {
    u64::from(block_size / 4)
}

/// Number of logical blocks an indirect map can address (12 + p + p² + p³).
pub fn max_blocks(block_size: u32) -> u64 {
    let p = pointers_per_block(block_size);
    u64::from(DIRECT_BLOCKS) + p + p * p + p * p * p
}

/// The path to `logical_block` for `block_size`; fails beyond the triple
/// indirect range (or for block sizes below 1024).
pub fn path_for(logical_block: u64, block_size: u32) -> Result<IndirectPath> {
    let p = pointers_per_block(block_size);
    let out = || {
        FormatError::corrupt(
            Structure::IndirectMap,
            CorruptKind::IndirectBlockOutOfRange(logical_block),
        )
    };
    if p < 256 {
        return Err(out());
    }
    let mut b = logical_block;
    if b < u64::from(DIRECT_BLOCKS) {
        return Ok(IndirectPath::Direct { slot: b as usize });
    }
    b -= u64::from(DIRECT_BLOCKS);
    if b < p {
        return Ok(IndirectPath::Single {
            offsets: [b as u32],
        });
    }
    b -= p;
    if b < p * p {
        return Ok(IndirectPath::Double {
            offsets: [(b / p) as u32, (b % p) as u32],
        });
    }
    b -= p * p;
    if b < p * p * p {
        return Ok(IndirectPath::Triple {
            offsets: [(b / (p * p)) as u32, ((b / p) % p) as u32, (b % p) as u32],
        });
    }
    Err(out())
}

/// Reads pointer `index` of an indirect block (0 if out of range = hole).
pub fn pointer(block: &[u8], index: u32) -> u32 {
    let off = index as usize * 4;
    if off + 4 <= block.len() {
        read_u32le(block, off)
    } else {
        0
    }
}

/// All pointers of an indirect block.
pub fn pointers(block: &[u8]) -> impl Iterator<Item = u32> + '_ {
    block.chunks_exact(4).map(|c| read_u32le(c, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_1k() {
        assert_eq!(path_for(0, 1024).unwrap(), IndirectPath::Direct { slot: 0 });
        assert_eq!(
            path_for(11, 1024).unwrap(),
            IndirectPath::Direct { slot: 11 }
        );
        assert_eq!(
            path_for(12, 1024).unwrap(),
            IndirectPath::Single { offsets: [0] }
        );
        assert_eq!(
            path_for(12 + 255, 1024).unwrap(),
            IndirectPath::Single { offsets: [255] }
        );
        assert_eq!(
            path_for(12 + 256, 1024).unwrap(),
            IndirectPath::Double { offsets: [0, 0] }
        );
        assert_eq!(
            path_for(12 + 256 + 257, 1024).unwrap(),
            IndirectPath::Double { offsets: [1, 1] }
        );
        let t = 12 + 256 + 65536;
        assert_eq!(
            path_for(t, 1024).unwrap(),
            IndirectPath::Triple { offsets: [0, 0, 0] }
        );
        assert_eq!(
            path_for(max_blocks(1024) - 1, 1024).unwrap(),
            IndirectPath::Triple {
                offsets: [255, 255, 255]
            }
        );
        assert!(path_for(max_blocks(1024), 1024).is_err());
    }
}
