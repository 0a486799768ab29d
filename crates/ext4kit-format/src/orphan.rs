//! Blocks of the orphan file (compat `orphan_file`, inode `s_orphan_file_inum`).
//!
//! Each block of the orphan file is an array of le32 inode numbers (0 = free
//! slot) followed by an 8-byte tail (`struct ext4_orphan_block_tail`):
//!
//! | offset | field | |
//! |---|---|---|
//! | `0 .. 4·n` | entries | `n = (block_size − 8) / 4` inode numbers |
//! | `block_size − 8` | `ob_magic` | [`ORPHAN_BLOCK_MAGIC`] |
//! | `block_size − 4` | `ob_checksum` | metadata_csum only |
//!
//! The checksum is the raw crc32c register, seeded with the orphan file's
//! per-inode seed ([`inode_csum_seed`] of its inode number and generation),
//! advanced over the block's (physical) number as le64 and then over the
//! entries — the tail is not covered.
//!
//! ```
//! use ext4kit_format::orphan::OrphanBlock;
//!
//! let mut b = OrphanBlock::new(1024)?;
//! b.set_entry(3, 12)?;
//! b.update_checksum(0xDEAD_BEEF, 11, 7, 5000);
//! let parsed = OrphanBlock::parse(b.as_bytes())?;
//! parsed.verify_checksum(0xDEAD_BEEF, 11, 7, 5000)?;
//! assert_eq!(parsed.inodes(), vec![12]);
//! # Ok::<(), ext4kit_format::FormatError>(())
//! ```

use alloc::{vec, vec::Vec};

use crate::bytes::{read_u32le, write_u32le};
use crate::checksum::{crc32c_raw, inode_csum_seed};
use crate::error::{CorruptKind, FormatError, Result, Structure};

/// `ob_magic` of every orphan file block (`EXT4_ORPHAN_BLOCK_MAGIC`).
pub const ORPHAN_BLOCK_MAGIC: u32 = 0x0B10_CA04;

/// Size of the block tail (`ob_magic` + `ob_checksum`).
pub const TAIL_SIZE: usize = 8;

/// Size of one entry (an le32 inode number).
pub const ENTRY_SIZE: usize = 4;

/// Entry slots in an orphan file block of `block_size` bytes.
pub fn entries_per_block(block_size: usize) -> usize {
    block_size.saturating_sub(TAIL_SIZE) / ENTRY_SIZE
}

/// One orphan file block, owning its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanBlock {
    raw: Vec<u8>,
}

impl OrphanBlock {
    /// Wraps a block, checking only that it is large enough for one entry and
    /// the tail (the magic is left to [`OrphanBlock::validate`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let needed = TAIL_SIZE + ENTRY_SIZE;
        if bytes.len() < needed {
            return Err(FormatError::too_short(
                Structure::OrphanFileBlock,
                needed,
                bytes.len(),
            ));
        }
        Ok(Self {
            raw: bytes.to_vec(),
        })
    }

    /// Wraps a block and checks its magic.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let b = Self::from_bytes(bytes)?;
        b.validate()?;
        Ok(b)
    }

    /// A block of `block_size` bytes with every slot free, the magic set and
    /// a zero checksum (see [`OrphanBlock::update_checksum`]).
    pub fn new(block_size: usize) -> Result<Self> {
        let mut b = Self::from_bytes(&vec![0; block_size])?;
        let at = b.tail_offset();
        write_u32le(&mut b.raw, at, ORPHAN_BLOCK_MAGIC);
        Ok(b)
    }

    /// The raw block.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// Consumes the block, returning its bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.raw
    }

    /// Byte offset of the tail (`block_size − 8`).
    pub fn tail_offset(&self) -> usize {
        self.raw.len() - TAIL_SIZE
    }

    /// `ob_magic`.
    pub fn magic(&self) -> u32 {
        read_u32le(&self.raw, self.tail_offset())
    }

    /// `ob_checksum`.
    pub fn stored_checksum(&self) -> u32 {
        read_u32le(&self.raw, self.tail_offset() + 4)
    }

    /// Checks `ob_magic`.
    pub fn validate(&self) -> Result<()> {
        let m = self.magic();
        if m != ORPHAN_BLOCK_MAGIC {
            return Err(FormatError::corrupt(
                Structure::OrphanFileBlock,
                CorruptKind::OrphanBlockMagic(m),
            ));
        }
        Ok(())
    }

    /// Number of entry slots.
    pub fn capacity(&self) -> usize {
        entries_per_block(self.raw.len())
    }

    /// The entry bytes (what the checksum covers).
    pub fn entry_bytes(&self) -> &[u8] {
        &self.raw[..self.capacity() * ENTRY_SIZE]
    }

    /// The inode number in slot `slot` (0: free), `None` past the last slot.
    pub fn entry(&self, slot: usize) -> Option<u32> {
        (slot < self.capacity()).then(|| read_u32le(&self.raw, slot * ENTRY_SIZE))
    }

    /// Puts `ino` (0 frees the slot) into slot `slot`.
    pub fn set_entry(&mut self, slot: usize, ino: u32) -> Result<()> {
        if slot >= self.capacity() {
            return Err(FormatError::unrepresentable(
                Structure::OrphanFileBlock,
                "orphan file slot",
                slot as u64,
            ));
        }
        write_u32le(&mut self.raw, slot * ENTRY_SIZE, ino);
        Ok(())
    }

    /// The first free slot, if any.
    pub fn free_slot(&self) -> Option<usize> {
        self.entry_bytes()
            .chunks_exact(ENTRY_SIZE)
            .position(|c| c == [0; ENTRY_SIZE])
    }

    /// The inode numbers in the block (non-zero entries), in slot order.
    pub fn inodes(&self) -> Vec<u32> {
        self.entry_bytes()
            .chunks_exact(ENTRY_SIZE)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .filter(|&v| v != 0)
            .collect()
    }

    /// `true` if no slot holds an inode.
    pub fn is_empty(&self) -> bool {
        self.entry_bytes().iter().all(|&b| b == 0)
    }

    /// Frees every slot (the tail stays; the checksum is not updated).
    pub fn clear(&mut self) {
        let n = self.capacity() * ENTRY_SIZE;
        self.raw[..n].fill(0);
    }

    /// The checksum the block should carry: crc32c of the orphan file's inode
    /// seed, over `le64(block_nr)` and the entries.
    pub fn compute_checksum(
        &self,
        fs_csum_seed: u32,
        orphan_file_ino: u32,
        generation: u32,
        block_nr: u64,
    ) -> u32 {
        let seed = inode_csum_seed(fs_csum_seed, orphan_file_ino, generation);
        crc32c_raw(
            crc32c_raw(seed, &block_nr.to_le_bytes()),
            self.entry_bytes(),
        )
    }

    /// Checks `ob_checksum`.
    pub fn verify_checksum(
        &self,
        fs_csum_seed: u32,
        orphan_file_ino: u32,
        generation: u32,
        block_nr: u64,
    ) -> Result<()> {
        let computed = self.compute_checksum(fs_csum_seed, orphan_file_ino, generation, block_nr);
        let stored = self.stored_checksum();
        if computed != stored {
            return Err(FormatError::checksum(
                Structure::OrphanFileBlock,
                computed,
                stored,
            ));
        }
        Ok(())
    }

    /// Recomputes and stores `ob_checksum`.
    pub fn update_checksum(
        &mut self,
        fs_csum_seed: u32,
        orphan_file_ino: u32,
        generation: u32,
        block_nr: u64,
    ) {
        let c = self.compute_checksum(fs_csum_seed, orphan_file_ino, generation, block_nr);
        let at = self.tail_offset() + 4;
        write_u32le(&mut self.raw, at, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(entries_per_block(1024), 254);
        assert_eq!(entries_per_block(4096), 1022);
        assert_eq!(entries_per_block(4), 0);
        let mut b = OrphanBlock::new(4096).unwrap();
        assert_eq!(b.capacity(), 1022);
        assert_eq!(b.as_bytes()[4088..4092], 0x0B10_CA04u32.to_le_bytes());
        assert!(b.is_empty());
        assert_eq!(b.free_slot(), Some(0));
        b.set_entry(0, 12).unwrap();
        b.set_entry(1021, 13).unwrap();
        assert!(b.set_entry(1022, 14).is_err());
        assert_eq!(b.as_bytes()[0..4], 12u32.to_le_bytes());
        assert_eq!(b.as_bytes()[4084..4088], 13u32.to_le_bytes());
        assert_eq!(b.entry(1021), Some(13));
        assert_eq!(b.entry(1022), None);
        assert_eq!(b.free_slot(), Some(1));
        assert_eq!(b.inodes(), vec![12, 13]);
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.magic(), ORPHAN_BLOCK_MAGIC);
    }

    #[test]
    fn checksum_covers_block_number_and_entries() {
        let mut b = OrphanBlock::new(1024).unwrap();
        b.set_entry(5, 77).unwrap();
        b.update_checksum(0x1234_5678, 11, 3, 900);
        // By hand: inode seed, then le64(block), then the 1016 entry bytes.
        let seed = inode_csum_seed(0x1234_5678, 11, 3);
        let want = crc32c_raw(
            crc32c_raw(seed, &900u64.to_le_bytes()),
            &b.as_bytes()[..1016],
        );
        assert_eq!(b.stored_checksum(), want);
        assert_eq!(b.as_bytes()[1020..], want.to_le_bytes());
        b.verify_checksum(0x1234_5678, 11, 3, 900).unwrap();
        assert!(b.verify_checksum(0x1234_5678, 11, 3, 901).is_err());
        assert!(b.verify_checksum(0x1234_5678, 11, 4, 900).is_err());
        // The tail is not covered: changing the magic keeps the checksum.
        let mut raw = b.as_bytes().to_vec();
        raw[1016] ^= 1;
        let c = OrphanBlock::from_bytes(&raw).unwrap();
        assert_eq!(c.compute_checksum(0x1234_5678, 11, 3, 900), want);
        assert!(c.validate().is_err());
    }

    #[test]
    fn bad_bytes_are_errors() {
        assert!(OrphanBlock::from_bytes(&[0; 11]).is_err());
        assert!(OrphanBlock::parse(&[0; 1024]).is_err());
        let e = OrphanBlock::parse(&[0; 1024]).unwrap_err();
        assert_eq!(e.corrupt_kind(), Some(&CorruptKind::OrphanBlockMagic(0)));
        // A block size that is not a multiple of 4 still works (slots round down).
        let b = OrphanBlock::new(1027).unwrap();
        assert_eq!(b.capacity(), 254);
        assert_eq!(b.magic(), ORPHAN_BLOCK_MAGIC);
        assert!(b.inodes().is_empty());
    }
}
