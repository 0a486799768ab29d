//! Extent trees (`struct ext4_extent_header`, `ext4_extent`, `ext4_extent_idx`).
//!
//! A node is a 12-byte header followed by 12-byte entries: leaf extents at
//! depth 0, index entries above. The root lives in the inode's 60-byte
//! `i_block` (4 entries); other nodes fill a block and end with a 4-byte crc32c
//! tail right after `eh_max` entries (seeded with inode number and
//! generation). Leaf lengths above 32768 mean "unwritten" (length - 32768);
//! physical block numbers are 48 bits.
//!
//! [`ExtentNode`] owns the node's bytes; [`ExtentNode::parse`] validates like
//! the kernel's `__ext4_ext_check` (magic, max within the space, entries ≤ max,
//! depth ≤ 5, lengths > 0, sorted and non-overlapping); builders write entries
//! back, leaving the bytes past the entries untouched.

use alloc::{vec, vec::Vec};

use crate::bytes::{read_u16le, read_u32le, write_u16le, write_u32le};
use crate::checksum::{crc32c_raw, inode_csum_seed};
use crate::error::{CorruptKind, FormatError, Result, Structure};

/// `EXT4_EXT_MAGIC`.
pub const EXTENT_MAGIC: u16 = 0xF30A;
/// Size of the header and of each entry.
pub const ENTRY_SIZE: usize = 12;
/// Maximum tree depth the kernel accepts (`EXT4_MAX_EXTENT_DEPTH`).
pub const MAX_DEPTH: u16 = 5;
/// Longest initialized extent (`EXT_INIT_MAX_LEN`).
pub const MAX_INIT_LEN: u32 = 32768;
/// Longest unwritten extent (`EXT_UNWRITTEN_MAX_LEN`).
pub const MAX_UNWRITTEN_LEN: u32 = 32767;
/// Largest physical block (48 bits).
pub const MAX_PHYSICAL_BLOCK: u64 = (1 << 48) - 1;
/// Size of the tail checksum.
pub const TAIL_SIZE: usize = 4;

/// The extent header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExtentHeader {
    /// `eh_entries`: valid entries.
    pub entries: u16,
    /// `eh_max`: capacity.
    pub max: u16,
    /// `eh_depth`: 0 for a leaf.
    pub depth: u16,
    /// `eh_generation` (unused by the kernel).
    pub generation: u32,
}

impl ExtentHeader {
    /// Reads a header without checking anything but the length (magic included
    /// as raw value in the returned tuple).
    pub fn read(bytes: &[u8]) -> Result<(u16, Self)> {
        if bytes.len() < ENTRY_SIZE {
            return Err(FormatError::too_short(
                Structure::ExtentTree,
                ENTRY_SIZE,
                bytes.len(),
            ));
        }
        Ok((
            read_u16le(bytes, 0),
            ExtentHeader {
                entries: read_u16le(bytes, 2),
                max: read_u16le(bytes, 4),
                depth: read_u16le(bytes, 6),
                generation: read_u32le(bytes, 8),
            },
        ))
    }

    /// Writes the header (with the magic).
    pub fn write(&self, bytes: &mut [u8]) {
        write_u16le(bytes, 0, EXTENT_MAGIC);
        write_u16le(bytes, 2, self.entries);
        write_u16le(bytes, 4, self.max);
        write_u16le(bytes, 6, self.depth);
        write_u32le(bytes, 8, self.generation);
    }
}

/// A leaf entry: a run of logical blocks mapped to physical blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extent {
    /// First logical block (`ee_block`).
    pub logical_block: u32,
    /// Number of blocks (decoded from `ee_len`, 1..=32768).
    pub len: u32,
    /// First physical block (`ee_start_hi` << 32 | `ee_start_lo`).
    pub physical_block: u64,
    /// `true` if the extent is preallocated but unwritten (reads as zeros).
    pub unwritten: bool,
}

impl Extent {
    /// Logical block just past the extent.
    pub fn logical_end(&self) -> u64 {
        u64::from(self.logical_block) + u64::from(self.len)
    }

    /// Decodes a 12-byte leaf entry.
    pub fn decode(b: &[u8]) -> Self {
        let raw_len = u32::from(read_u16le(b, 4));
        let (len, unwritten) = if raw_len > MAX_INIT_LEN {
            (raw_len - MAX_INIT_LEN, true)
        } else {
            (raw_len, false)
        };
        Extent {
            logical_block: read_u32le(b, 0),
            len,
            physical_block: u64::from(read_u16le(b, 6)) << 32 | u64::from(read_u32le(b, 8)),
            unwritten,
        }
    }

    /// Encodes into a 12-byte entry; fails for lengths 0, above 32768 (32767
    /// unwritten), or physical blocks above 48 bits.
    pub fn encode(&self, b: &mut [u8]) -> Result<()> {
        let max = if self.unwritten {
            MAX_UNWRITTEN_LEN
        } else {
            MAX_INIT_LEN
        };
        if self.len == 0 || self.len > max {
            return Err(FormatError::unrepresentable(
                Structure::ExtentTree,
                "ee_len",
                u64::from(self.len),
            ));
        }
        if self.physical_block > MAX_PHYSICAL_BLOCK {
            return Err(FormatError::unrepresentable(
                Structure::ExtentTree,
                "ee_start",
                self.physical_block,
            ));
        }
        let raw_len = if self.unwritten {
            self.len + MAX_INIT_LEN
        } else {
            self.len
        };
        write_u32le(b, 0, self.logical_block);
        write_u16le(b, 4, raw_len as u16);
        write_u16le(b, 6, (self.physical_block >> 32) as u16);
        write_u32le(b, 8, self.physical_block as u32);
        Ok(())
    }
}

/// An index entry: the child node covering logical blocks from `logical_block`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExtentIndex {
    /// First logical block covered (`ei_block`).
    pub logical_block: u32,
    /// Block of the child node (`ei_leaf_hi` << 32 | `ei_leaf_lo`).
    pub child_block: u64,
    /// `ei_unused`, kept for round trips.
    pub unused: u16,
}

impl ExtentIndex {
    /// Decodes a 12-byte index entry.
    pub fn decode(b: &[u8]) -> Self {
        ExtentIndex {
            logical_block: read_u32le(b, 0),
            child_block: u64::from(read_u16le(b, 8)) << 32 | u64::from(read_u32le(b, 4)),
            unused: read_u16le(b, 10),
        }
    }

    /// Encodes into a 12-byte entry; fails above 48-bit child blocks.
    pub fn encode(&self, b: &mut [u8]) -> Result<()> {
        if self.child_block > MAX_PHYSICAL_BLOCK {
            return Err(FormatError::unrepresentable(
                Structure::ExtentTree,
                "ei_leaf",
                self.child_block,
            ));
        }
        write_u32le(b, 0, self.logical_block);
        write_u32le(b, 4, self.child_block as u32);
        write_u16le(b, 8, (self.child_block >> 32) as u16);
        write_u16le(b, 10, self.unused);
        Ok(())
    }
}

/// Where a node lives, which decides its capacity and whether it has a tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeLocation {
    /// The root in the inode's 60-byte `i_block` (4 entries, no tail).
    Inode,
    /// A tree block ((block size - 12) / 12 entries, checksum tail).
    Block,
}

/// Entries a space of `len` bytes can hold.
pub fn capacity(len: usize) -> u16 {
    u16::try_from(len.saturating_sub(ENTRY_SIZE) / ENTRY_SIZE).unwrap_or(u16::MAX)
}

/// An extent tree node owning its bytes (60 for the root, a block otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentNode {
    raw: Vec<u8>,
    location: NodeLocation,
}

impl ExtentNode {
    /// Parses and validates a node (see the module docs for the rules).
    /// `expected_depth` is the depth the parent implies (`None` for the root).
    pub fn parse(
        bytes: &[u8],
        location: NodeLocation,
        expected_depth: Option<u16>,
    ) -> Result<Self> {
        let node = Self {
            raw: bytes.to_vec(),
            location,
        };
        node.validate(expected_depth)?;
        Ok(node)
    }

    /// Parses the root from an inode's `i_block`.
    pub fn parse_root(i_block: &[u8]) -> Result<Self> {
        Self::parse(i_block, NodeLocation::Inode, None)
    }

    /// An empty leaf (the root of a new extent-mapped inode, or a new tree block).
    pub fn new_leaf(len: usize, location: NodeLocation) -> Self {
        let mut raw = vec![0u8; len];
        ExtentHeader {
            entries: 0,
            max: capacity(len),
            depth: 0,
            generation: 0,
        }
        .write(&mut raw);
        Self { raw, location }
    }

    /// Builds a leaf node holding `extents` (must be sorted, non-overlapping).
    pub fn build_leaf(len: usize, location: NodeLocation, extents: &[Extent]) -> Result<Self> {
        let mut n = Self::new_leaf(len, location);
        n.set_extents(extents)?;
        Ok(n)
    }

    /// Builds an index node at `depth` (≥ 1) holding `indexes`.
    pub fn build_index(
        len: usize,
        location: NodeLocation,
        depth: u16,
        indexes: &[ExtentIndex],
    ) -> Result<Self> {
        if depth == 0 || depth > MAX_DEPTH {
            return Err(FormatError::unrepresentable(
                Structure::ExtentTree,
                "eh_depth",
                u64::from(depth),
            ));
        }
        let mut n = Self::new_leaf(len, location);
        let mut h = n.header();
        h.depth = depth;
        h.write(&mut n.raw);
        n.set_indexes(indexes)?;
        Ok(n)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }
    /// Consumes the node, returning its bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.raw
    }
    /// Where the node lives.
    pub fn location(&self) -> NodeLocation {
        self.location
    }

    /// The header.
    pub fn header(&self) -> ExtentHeader {
        ExtentHeader::read(&self.raw)
            .map(|(_, h)| h)
            .unwrap_or(ExtentHeader {
                entries: 0,
                max: 0,
                depth: 0,
                generation: 0,
            })
    }
    /// Tree depth of this node (0 = leaf).
    pub fn depth(&self) -> u16 {
        self.header().depth
    }
    /// `true` for a leaf.
    pub fn is_leaf(&self) -> bool {
        self.depth() == 0
    }
    /// Number of entries.
    pub fn entry_count(&self) -> usize {
        usize::from(self.header().entries)
    }
    /// Capacity (`eh_max`).
    pub fn max_entries(&self) -> usize {
        usize::from(self.header().max)
    }
    /// `true` if another entry fits.
    pub fn is_full(&self) -> bool {
        self.entry_count() >= self.max_entries()
    }
    /// Sets `eh_generation`.
    pub fn set_generation(&mut self, g: u32) {
        write_u32le(&mut self.raw, 8, g);
    }

    fn entry_bytes(&self, i: usize) -> &[u8] {
        let off = ENTRY_SIZE * (i + 1);
        self.raw
            .get(off..off + ENTRY_SIZE)
            .unwrap_or(&[0; ENTRY_SIZE])
    }

    /// The leaf extents (empty for an index node).
    pub fn extents(&self) -> Vec<Extent> {
        if !self.is_leaf() {
            return Vec::new();
        }
        (0..self.entry_count())
            .map(|i| Extent::decode(self.entry_bytes(i)))
            .collect()
    }

    /// The index entries (empty for a leaf).
    pub fn indexes(&self) -> Vec<ExtentIndex> {
        if self.is_leaf() {
            return Vec::new();
        }
        (0..self.entry_count())
            .map(|i| ExtentIndex::decode(self.entry_bytes(i)))
            .collect()
    }

    fn check_count(&self, n: usize) -> Result<()> {
        if n > self.max_entries() {
            return Err(FormatError::unrepresentable(
                Structure::ExtentTree,
                "eh_entries",
                n as u64,
            ));
        }
        Ok(())
    }

    /// Replaces the entries of a leaf (sets `eh_entries`; bytes past the new
    /// entries are left as they were).
    pub fn set_extents(&mut self, extents: &[Extent]) -> Result<()> {
        self.check_count(extents.len())?;
        for (i, e) in extents.iter().enumerate() {
            let off = ENTRY_SIZE * (i + 1);
            e.encode(&mut self.raw[off..off + ENTRY_SIZE])?;
        }
        write_u16le(&mut self.raw, 2, extents.len() as u16);
        Ok(())
    }

    /// Replaces the entries of an index node.
    pub fn set_indexes(&mut self, indexes: &[ExtentIndex]) -> Result<()> {
        self.check_count(indexes.len())?;
        for (i, e) in indexes.iter().enumerate() {
            let off = ENTRY_SIZE * (i + 1);
            e.encode(&mut self.raw[off..off + ENTRY_SIZE])?;
        }
        write_u16le(&mut self.raw, 2, indexes.len() as u16);
        Ok(())
    }

    /// Validates the node; `expected_depth` is the depth its parent implies.
    pub fn validate(&self, expected_depth: Option<u16>) -> Result<()> {
        let bad = |k| Err(FormatError::corrupt(Structure::ExtentTree, k));
        let (magic, h) = ExtentHeader::read(&self.raw)?;
        if magic != EXTENT_MAGIC {
            return bad(CorruptKind::ExtentMagic(magic));
        }
        let cap = capacity(self.raw.len());
        if h.max == 0 || h.max > cap {
            return bad(CorruptKind::ExtentMax {
                found: h.max,
                capacity: cap,
            });
        }
        if h.entries > h.max {
            return bad(CorruptKind::ExtentEntries {
                entries: h.entries,
                max: h.max,
            });
        }
        if h.depth > MAX_DEPTH || expected_depth.is_some_and(|d| d != h.depth) {
            return bad(CorruptKind::ExtentDepth(h.depth));
        }
        if h.depth > 0 {
            if h.entries == 0 {
                return bad(CorruptKind::ExtentEmptyIndex);
            }
            let mut prev: Option<u32> = None;
            for (i, e) in self.indexes().iter().enumerate() {
                if prev.is_some_and(|p| e.logical_block <= p) {
                    return bad(CorruptKind::ExtentOrder { index: i as u16 });
                }
                prev = Some(e.logical_block);
            }
        } else {
            let mut prev_end: u64 = 0;
            for (i, e) in self.extents().iter().enumerate() {
                let idx = i as u16;
                if e.len == 0 {
                    return bad(CorruptKind::ExtentZeroLength { index: idx });
                }
                if e.logical_end() > 1 << 32 {
                    return bad(CorruptKind::ExtentLogicalOverflow { index: idx });
                }
                if i > 0 && u64::from(e.logical_block) < prev_end {
                    return bad(CorruptKind::ExtentOrder { index: idx });
                }
                prev_end = e.logical_end();
            }
        }
        Ok(())
    }

    /// Index of the entry covering `logical_block` (binary search; for an
    /// index node, the last entry starting at or before it).
    pub fn find(&self, logical_block: u32) -> Option<usize> {
        let starts: Vec<u32> = (0..self.entry_count())
            .map(|i| read_u32le(self.entry_bytes(i), 0))
            .collect();
        let pos = starts.partition_point(|&s| s <= logical_block);
        let i = pos.checked_sub(1)?;
        if self.is_leaf() {
            let e = Extent::decode(self.entry_bytes(i));
            (u64::from(logical_block) < e.logical_end()).then_some(i)
        } else {
            Some(i)
        }
    }

    // ---- tail checksum ----

    /// Offset of the tail checksum (`12 + 12 * eh_max`).
    pub fn tail_offset(&self) -> usize {
        ENTRY_SIZE * (1 + self.max_entries())
    }

    /// The crc32c a tree block should carry (`ext4_extent_block_csum`).
    pub fn compute_checksum(&self, fs_csum_seed: u32, ino: u32, generation: u32) -> u32 {
        let seed = inode_csum_seed(fs_csum_seed, ino, generation);
        crc32c_raw(
            seed,
            self.raw.get(..self.tail_offset()).unwrap_or(&self.raw),
        )
    }

    /// The stored tail checksum (0 if the tail does not fit).
    pub fn stored_checksum(&self) -> u32 {
        let off = self.tail_offset();
        if off + TAIL_SIZE <= self.raw.len() {
            read_u32le(&self.raw, off)
        } else {
            0
        }
    }

    /// Verifies the tail of a tree block (call with metadata_csum only; roots
    /// in the inode have no tail and always pass).
    pub fn verify_checksum(&self, fs_csum_seed: u32, ino: u32, generation: u32) -> Result<()> {
        if self.location == NodeLocation::Inode {
            return Ok(());
        }
        let c = self.compute_checksum(fs_csum_seed, ino, generation);
        if self.tail_offset() + TAIL_SIZE > self.raw.len() || c != self.stored_checksum() {
            return Err(
                FormatError::checksum(Structure::ExtentTree, c, self.stored_checksum())
                    .with_inode(ino),
            );
        }
        Ok(())
    }

    /// Recomputes the tail of a tree block (no-op for roots).
    pub fn update_checksum(&mut self, fs_csum_seed: u32, ino: u32, generation: u32) {
        if self.location == NodeLocation::Inode {
            return;
        }
        let c = self.compute_checksum(fs_csum_seed, ino, generation);
        let off = self.tail_offset();
        if off + TAIL_SIZE <= self.raw.len() {
            write_u32le(&mut self.raw, off, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwritten_encoding() {
        let mut b = [0u8; 12];
        let e = Extent {
            logical_block: 5,
            len: 10,
            physical_block: 0x1_0000_0002,
            unwritten: true,
        };
        e.encode(&mut b).unwrap();
        assert_eq!(read_u16le(&b, 4), 32778);
        assert_eq!(Extent::decode(&b), e);
        let full = Extent {
            logical_block: 0,
            len: 32768,
            physical_block: 1,
            unwritten: false,
        };
        full.encode(&mut b).unwrap();
        assert_eq!(Extent::decode(&b), full);
        assert!(
            Extent {
                len: 32768,
                unwritten: true,
                ..full
            }
            .encode(&mut b)
            .is_err()
        );
    }

    #[test]
    fn build_and_find() {
        let exts = [
            Extent {
                logical_block: 0,
                len: 4,
                physical_block: 100,
                unwritten: false,
            },
            Extent {
                logical_block: 10,
                len: 2,
                physical_block: 200,
                unwritten: false,
            },
        ];
        let n = ExtentNode::build_leaf(60, NodeLocation::Inode, &exts).unwrap();
        let p = ExtentNode::parse_root(n.as_bytes()).unwrap();
        assert_eq!(p.extents(), exts);
        assert_eq!(p.find(3), Some(0));
        assert_eq!(p.find(5), None);
        assert_eq!(p.find(11), Some(1));
        assert_eq!(p.header().max, 4);
        let mut blk = ExtentNode::build_index(
            1024,
            NodeLocation::Block,
            1,
            &[ExtentIndex {
                logical_block: 0,
                child_block: 9,
                unused: 0,
            }],
        )
        .unwrap();
        blk.update_checksum(1, 2, 3);
        blk.verify_checksum(1, 2, 3).unwrap();
        assert_eq!(blk.tail_offset(), 12 + 12 * 84);
    }
}
