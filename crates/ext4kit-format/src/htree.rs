//! Hash-indexed directories (htree / dx): the root block (`struct dx_root`:
//! fake `.` and `..` entries, `dx_root_info`, then the count/limit header and
//! `dx_entry` array), interior nodes (`struct dx_node`: one fake empty entry
//! spanning the block, then count/limit and entries), and the `dx_tail`
//! checksum of metadata_csum filesystems.
//!
//! [`DxBlock`] owns a root or node block. Parsing validates like the kernel's
//! `dx_probe` plus e2fsck (fake entries, root info, hash version, levels,
//! `limit` equal to what the block holds, `1 ≤ count ≤ limit`, hashes in
//! order). The checksum covers the header and the first `count` entries plus
//! the tail's reserved word, exactly as `ext4_dx_csum` does.
//! [`split_leaf`] splits a full leaf block by hash the way `do_split` does.

use alloc::{vec, vec::Vec};

use crate::bytes::{
    read_u8, read_u16le, read_u32le, write_bytes, write_u8, write_u16le, write_u32le,
};
use crate::checksum::{crc32c_raw, inode_csum_seed};
use crate::dir::{DirBlock, rec_len_for_name, rec_len_from_disk, rec_len_to_disk};
use crate::error::{CorruptKind, FormatError, Result, Structure};
use crate::hash::DirHash;

/// Size of one `dx_entry` (hash, block).
pub const DX_ENTRY_SIZE: usize = 8;
/// Size of `dx_tail`.
pub const DX_TAIL_SIZE: usize = 8;
/// Offset of count/limit in a root block (after `.`, `..` and an 8-byte root info).
pub const ROOT_COUNT_OFFSET: usize = 32;
/// Offset of count/limit in an interior node.
pub const NODE_COUNT_OFFSET: usize = 8;
/// `dx_root_info.info_length`.
pub const ROOT_INFO_LENGTH: u8 = 8;
/// Incompatible bit of `dx_root_info.unused_flags`.
pub const UNUSED_FLAG_INCOMPAT: u8 = 1;
/// Mask of the block number in a dx entry (the top 4 bits are reserved).
pub const DX_BLOCK_MASK: u32 = 0x0FFF_FFFF;

/// One index entry: leaf or node `block` (logical, in the directory) holds
/// names whose hash is ≥ `hash`. Entry 0's hash is implicit (0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DxEntry {
    /// Lowest hash of the child (bit 0 set = collision continued from the previous child).
    pub hash: u32,
    /// Logical block of the child within the directory.
    pub block: u32,
}

/// `dx_root_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DxRootInfo {
    /// `reserved_zero`.
    pub reserved_zero: u32,
    /// `hash_version` (0 legacy, 1 half_md4, 2 tea, 6 siphash).
    pub hash_version: u8,
    /// `info_length` (8).
    pub info_length: u8,
    /// `indirect_levels`: 0 = the root points at leaves.
    pub indirect_levels: u8,
    /// `unused_flags`.
    pub unused_flags: u8,
}

/// Root or interior node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DxKind {
    /// The first block of the directory.
    Root,
    /// An interior node.
    Node,
}

/// What the block looks like beyond its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DxOptions {
    /// Filesystem block size.
    pub block_size: u32,
    /// metadata_csum: a `dx_tail` follows the entries, reducing the limit by one.
    pub has_csum: bool,
    /// largedir: a third level (indirect_levels up to 2) is allowed.
    pub largedir: bool,
}

/// The limit a block of `block_size` holds at `count_offset`.
pub fn expected_limit(block_size: u32, count_offset: usize, has_csum: bool) -> u16 {
    let space = (block_size as usize)
        .saturating_sub(count_offset + if has_csum { DX_TAIL_SIZE } else { 0 });
    u16::try_from(space / DX_ENTRY_SIZE).unwrap_or(u16::MAX)
}

/// Recognizes a dx block from its first entries (like e2fsprogs'
/// `__get_dx_countlimit`): a single empty entry spanning the block is a node;
/// `.` of 12 bytes followed by `..` spanning the rest with a root info of
/// length 8 is a root.
pub fn detect(block: &[u8], block_size: u32) -> Option<DxKind> {
    if block.len() < ROOT_COUNT_OFFSET + 4 {
        return None;
    }
    let rec0 = rec_len_from_disk(read_u16le(block, 4), block_size);
    if rec0 as usize == block.len() && read_u8(block, 6) == 0 {
        return Some(DxKind::Node);
    }
    if rec0 == 12 {
        let rec1 = rec_len_from_disk(read_u16le(block, 16), block_size) as usize;
        if rec1 == block.len() - 12
            && read_u32le(block, 24) == 0
            && read_u8(block, 29) == ROOT_INFO_LENGTH
        {
            return Some(DxKind::Root);
        }
    }
    None
}

/// A dx root or node block, owning its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DxBlock {
    raw: Vec<u8>,
    kind: DxKind,
    opts: DxOptions,
}

impl DxBlock {
    /// Parses and validates a root block.
    pub fn parse_root(bytes: &[u8], opts: DxOptions) -> Result<Self> {
        let b = Self {
            raw: bytes.to_vec(),
            kind: DxKind::Root,
            opts,
        };
        b.validate()?;
        Ok(b)
    }

    /// Parses and validates an interior node.
    pub fn parse_node(bytes: &[u8], opts: DxOptions) -> Result<Self> {
        let b = Self {
            raw: bytes.to_vec(),
            kind: DxKind::Node,
            opts,
        };
        b.validate()?;
        Ok(b)
    }

    /// A new root block: `.` → `self_ino`, `..` → `parent_ino`, the given
    /// on-disk hash version and levels, and `entries` (entry 0's hash ignored).
    #[allow(clippy::too_many_arguments)]
    pub fn new_root(
        opts: DxOptions,
        self_ino: u32,
        parent_ino: u32,
        dir_file_type: u8,
        hash_version: u8,
        indirect_levels: u8,
        entries: &[DxEntry],
    ) -> Result<Self> {
        let bs = opts.block_size;
        let mut raw = vec![0u8; bs as usize];
        write_u32le(&mut raw, 0, self_ino);
        write_u16le(&mut raw, 4, 12);
        write_u8(&mut raw, 6, 1);
        write_u8(&mut raw, 7, dir_file_type);
        write_bytes(&mut raw, 8, b".");
        write_u32le(&mut raw, 12, parent_ino);
        write_u16le(&mut raw, 16, rec_len_to_disk(bs - 12, bs)?);
        write_u8(&mut raw, 18, 2);
        write_u8(&mut raw, 19, dir_file_type);
        write_bytes(&mut raw, 20, b"..");
        write_u8(&mut raw, 28, hash_version);
        write_u8(&mut raw, 29, ROOT_INFO_LENGTH);
        write_u8(&mut raw, 30, indirect_levels);
        let mut b = Self {
            raw,
            kind: DxKind::Root,
            opts,
        };
        b.set_limit(expected_limit(bs, ROOT_COUNT_OFFSET, opts.has_csum));
        b.set_entries(entries)?;
        Ok(b)
    }

    /// A new interior node holding `entries`.
    pub fn new_node(opts: DxOptions, entries: &[DxEntry]) -> Result<Self> {
        let bs = opts.block_size;
        let mut raw = vec![0u8; bs as usize];
        write_u16le(&mut raw, 4, rec_len_to_disk(bs, bs)?);
        let mut b = Self {
            raw,
            kind: DxKind::Node,
            opts,
        };
        b.set_limit(expected_limit(bs, NODE_COUNT_OFFSET, opts.has_csum));
        b.set_entries(entries)?;
        Ok(b)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }
    /// Consumes the block.
    pub fn into_bytes(self) -> Vec<u8> {
        self.raw
    }
    /// Root or node.
    pub fn kind(&self) -> DxKind {
        self.kind
    }

    /// Offset of count/limit.
    pub fn count_offset(&self) -> usize {
        match self.kind {
            DxKind::Root => 24 + usize::from(read_u8(&self.raw, 29)),
            DxKind::Node => NODE_COUNT_OFFSET,
        }
    }

    /// The root info (meaningless for nodes).
    pub fn root_info(&self) -> DxRootInfo {
        DxRootInfo {
            reserved_zero: read_u32le(&self.raw, 24),
            hash_version: read_u8(&self.raw, 28),
            info_length: read_u8(&self.raw, 29),
            indirect_levels: read_u8(&self.raw, 30),
            unused_flags: read_u8(&self.raw, 31),
        }
    }
    /// Sets `indirect_levels` (roots only).
    pub fn set_indirect_levels(&mut self, levels: u8) {
        if self.kind == DxKind::Root {
            write_u8(&mut self.raw, 30, levels);
        }
    }
    /// Inode of `.` (roots only: the directory itself; 0 for nodes).
    pub fn self_inode(&self) -> u32 {
        if self.kind == DxKind::Root {
            read_u32le(&self.raw, 0)
        } else {
            0
        }
    }
    /// Inode of `..` (roots only).
    pub fn parent_inode(&self) -> u32 {
        read_u32le(&self.raw, 12)
    }
    /// Sets the inode of `..` (roots only, e.g. after a rename).
    pub fn set_parent_inode(&mut self, ino: u32) {
        if self.kind == DxKind::Root {
            write_u32le(&mut self.raw, 12, ino);
        }
    }

    /// `limit`.
    pub fn limit(&self) -> u16 {
        read_u16le(&self.raw, self.count_offset())
    }
    fn set_limit(&mut self, l: u16) {
        let o = self.count_offset();
        write_u16le(&mut self.raw, o, l);
    }
    /// `count` (entry 0 included).
    pub fn count(&self) -> u16 {
        read_u16le(&self.raw, self.count_offset() + 2)
    }
    /// `true` if no further entry fits.
    pub fn is_full(&self) -> bool {
        self.count() >= self.limit()
    }

    /// The entries (entry 0 reported with hash 0).
    pub fn entries(&self) -> Vec<DxEntry> {
        let base = self.count_offset();
        let n = usize::from(self.count().min(self.max_fit()));
        (0..n)
            .map(|i| {
                let off = base + i * DX_ENTRY_SIZE;
                let hash = if i == 0 {
                    0
                } else {
                    read_u32le(&self.raw, off)
                };
                DxEntry {
                    hash,
                    block: read_u32le(&self.raw, off + 4),
                }
            })
            .collect()
    }

    /// Entries that physically fit after count/limit.
    fn max_fit(&self) -> u16 {
        u16::try_from(self.raw.len().saturating_sub(self.count_offset()) / DX_ENTRY_SIZE)
            .unwrap_or(u16::MAX)
    }

    /// Replaces the entries (sets `count`; entry 0's hash is not stored).
    pub fn set_entries(&mut self, entries: &[DxEntry]) -> Result<()> {
        if entries.len() > usize::from(self.limit()) {
            return Err(FormatError::unrepresentable(
                Structure::HtreeNode,
                "count",
                entries.len() as u64,
            ));
        }
        let base = self.count_offset();
        for (i, e) in entries.iter().enumerate() {
            let off = base + i * DX_ENTRY_SIZE;
            if i > 0 {
                write_u32le(&mut self.raw, off, e.hash);
            }
            write_u32le(&mut self.raw, off + 4, e.block);
        }
        write_u16le(&mut self.raw, base + 2, entries.len() as u16);
        Ok(())
    }

    /// Inserts an entry after position `after` (as `dx_insert_block` does
    /// after the entry that was split); `Ok(false)` if the block is full.
    pub fn insert_after(&mut self, after: usize, entry: DxEntry) -> Result<bool> {
        if self.is_full() {
            return Ok(false);
        }
        let mut v = self.entries();
        let at = (after + 1).min(v.len());
        v.insert(at, entry);
        self.set_entries(&v)?;
        Ok(true)
    }

    /// Index of the entry to follow for `hash` (the last entry whose hash is
    /// ≤ `hash`; entry 0 covers everything below entry 1).
    pub fn lookup(&self, hash: u32) -> usize {
        let e = self.entries();
        let pos = e.iter().skip(1).take_while(|x| x.hash <= hash).count();
        pos.min(e.len().saturating_sub(1))
    }

    /// Validates the block.
    pub fn validate(&self) -> Result<()> {
        let bad = |k| Err(FormatError::corrupt(Structure::HtreeNode, k));
        let bs = self.opts.block_size;
        if self.raw.len() != bs as usize || self.raw.len() < ROOT_COUNT_OFFSET + DX_ENTRY_SIZE {
            return Err(FormatError::too_short(
                Structure::HtreeNode,
                bs as usize,
                self.raw.len(),
            ));
        }
        match self.kind {
            DxKind::Root => {
                let rec0 = rec_len_from_disk(read_u16le(&self.raw, 4), bs);
                let rec1 = rec_len_from_disk(read_u16le(&self.raw, 16), bs);
                if rec0 != 12
                    || read_u8(&self.raw, 6) != 1
                    || rec1 != bs - 12
                    || read_u8(&self.raw, 18) != 2
                {
                    return bad(CorruptKind::DxFakeDirent);
                }
                let info = self.root_info();
                if info.reserved_zero != 0 || info.info_length != ROOT_INFO_LENGTH {
                    return bad(CorruptKind::DxRootInfo);
                }
                if !matches!(info.hash_version, 0 | 1 | 2 | 6) {
                    return bad(CorruptKind::DxHashVersion(info.hash_version));
                }
                if info.unused_flags & UNUSED_FLAG_INCOMPAT != 0 {
                    return bad(CorruptKind::DxUnusedFlags(info.unused_flags));
                }
                let max_levels = if self.opts.largedir { 3 } else { 2 };
                if info.indirect_levels >= max_levels {
                    return bad(CorruptKind::DxLevels(info.indirect_levels));
                }
            }
            DxKind::Node => {
                let rec0 = rec_len_from_disk(read_u16le(&self.raw, 4), bs);
                if rec0 != bs || read_u8(&self.raw, 6) != 0 {
                    return bad(CorruptKind::DxFakeDirent);
                }
            }
        }
        let expected = expected_limit(bs, self.count_offset(), self.opts.has_csum);
        if self.limit() != expected {
            return bad(CorruptKind::DxLimit {
                found: self.limit(),
                expected,
            });
        }
        let count = self.count();
        if count == 0 || count > self.limit() {
            return bad(CorruptKind::DxCount {
                count,
                limit: self.limit(),
            });
        }
        let e = self.entries();
        for i in 2..e.len() {
            if e[i].hash < e[i - 1].hash {
                return bad(CorruptKind::DxHashOrder { index: i as u16 });
            }
        }
        Ok(())
    }

    // ---- checksum ----

    /// Offset of the dx_tail (right after `limit` entries).
    pub fn tail_offset(&self) -> usize {
        self.count_offset() + usize::from(self.limit()) * DX_ENTRY_SIZE
    }

    /// The checksum the tail should hold (`ext4_dx_csum`): crc32c seeded with
    /// inode number and generation over count/limit and `count` entries, then
    /// over the tail's `dt_reserved` and four zero bytes.
    pub fn compute_checksum(&self, fs_csum_seed: u32, ino: u32, generation: u32) -> u32 {
        let size = self.count_offset() + usize::from(self.count()) * DX_ENTRY_SIZE;
        let tail = self.tail_offset();
        let mut crc = inode_csum_seed(fs_csum_seed, ino, generation);
        crc = crc32c_raw(crc, self.raw.get(..size).unwrap_or(&self.raw));
        crc = crc32c_raw(crc, self.raw.get(tail..tail + 4).unwrap_or(&[]));
        crc32c_raw(crc, &[0; 4])
    }

    /// The checksum stored in the tail.
    pub fn stored_checksum(&self) -> u32 {
        let o = self.tail_offset() + 4;
        if o + 4 <= self.raw.len() {
            read_u32le(&self.raw, o)
        } else {
            0
        }
    }

    /// Verifies the tail (call with metadata_csum only).
    pub fn verify_checksum(&self, fs_csum_seed: u32, ino: u32, generation: u32) -> Result<()> {
        let c = self.compute_checksum(fs_csum_seed, ino, generation);
        if self.tail_offset() + DX_TAIL_SIZE > self.raw.len() || c != self.stored_checksum() {
            return Err(
                FormatError::checksum(Structure::HtreeNode, c, self.stored_checksum())
                    .with_inode(ino),
            );
        }
        Ok(())
    }

    /// Recomputes the tail (no-op if the block has no room for one).
    pub fn update_checksum(&mut self, fs_csum_seed: u32, ino: u32, generation: u32) {
        let o = self.tail_offset();
        if o + DX_TAIL_SIZE <= self.raw.len() {
            let c = self.compute_checksum(fs_csum_seed, ino, generation);
            write_u32le(&mut self.raw, o + 4, c);
        }
    }
}

/// Where a leaf split put the boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeafSplit {
    /// Lowest hash moved to the new block.
    pub split_hash: u32,
    /// `true` if the entry before the split has the same hash (the new index
    /// entry must then be `split_hash | 1`).
    pub continued: bool,
    /// Number of entries moved to the new block.
    pub moved: usize,
}

impl LeafSplit {
    /// The hash to put in the parent's new index entry (`hash2 + continued`).
    pub fn index_hash(&self) -> u32 {
        self.split_hash | u32::from(self.continued)
    }
}

/// Splits a full leaf: live entries are ordered by hash, the upper part (as
/// much as fits in half a block, else half the entries, like the kernel's
/// `do_split`) moves to a fresh block built with the same options, and both
/// blocks are compacted. `hash` computes a name's hash. The caller updates the
/// checksums and inserts `index_hash()` → new block into the parent.
pub fn split_leaf(
    old: &mut DirBlock,
    hash: impl Fn(&[u8]) -> Result<DirHash>,
) -> Result<(DirBlock, LeafSplit)> {
    let opts = old.options();
    let block_size = old.as_bytes().len();
    let mut map: Vec<(u32, Vec<u8>, u32, u8)> = Vec::new();
    for e in old.live_entries()? {
        map.push((hash(e.name)?.major, e.name.to_vec(), e.inode, e.file_type));
    }
    if map.len() < 2 {
        return Err(FormatError::unrepresentable(
            Structure::DirectoryBlock,
            "entries to split",
            map.len() as u64,
        ));
    }
    map.sort_by_key(|m| m.0);
    let count = map.len();
    let mut size = 0usize;
    let mut moved = 0usize;
    let mut stopped = false;
    for m in map.iter().rev() {
        let sz = rec_len_for_name(m.1.len()) as usize;
        if size + sz / 2 > block_size / 2 {
            stopped = true;
            break;
        }
        size += sz;
        moved += 1;
    }
    let mut split = if stopped { count - moved } else { count / 2 };
    if split == 0 {
        split = 1;
    }
    let split_hash = map[split].0;
    let continued = split_hash == map[split - 1].0;
    let keep: Vec<(&[u8], u32, u8)> = map[..split]
        .iter()
        .map(|m| (m.1.as_slice(), m.2, m.3))
        .collect();
    let give: Vec<(&[u8], u32, u8)> = map[split..]
        .iter()
        .map(|m| (m.1.as_slice(), m.2, m.3))
        .collect();
    let overflow =
        || FormatError::unrepresentable(Structure::DirectoryBlock, "rec_len", block_size as u64);
    let new = DirBlock::build(block_size, opts, &give)?.ok_or_else(overflow)?;
    let kept = DirBlock::build(block_size, opts, &keep)?.ok_or_else(overflow)?;
    // Keep the old block's tail bytes; replace the entry area.
    let mut bytes = old.as_bytes().to_vec();
    let area = if opts.has_tail {
        block_size - crate::dir::TAIL_SIZE
    } else {
        block_size
    };
    bytes[..area].copy_from_slice(&kept.as_bytes()[..area]);
    *old = DirBlock::from_bytes_unchecked(&bytes, opts);
    Ok((
        new,
        LeafSplit {
            split_hash,
            continued,
            moved: count - split,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dir::DirBlockOptions;
    use crate::hash::{HashVersion, dirhash};

    #[test]
    fn root_build_parse_checksum() {
        let opts = DxOptions {
            block_size: 4096,
            has_csum: true,
            largedir: false,
        };
        let e = [
            DxEntry { hash: 0, block: 1 },
            DxEntry {
                hash: 0x100,
                block: 2,
            },
        ];
        let mut r = DxBlock::new_root(opts, 12, 2, 2, 1, 0, &e).unwrap();
        assert_eq!(r.limit(), (4096 - 32 - 8) / 8);
        r.update_checksum(5, 12, 0);
        let p = DxBlock::parse_root(r.as_bytes(), opts).unwrap();
        p.verify_checksum(5, 12, 0).unwrap();
        assert_eq!(p.entries(), e);
        assert_eq!(detect(p.as_bytes(), 4096), Some(DxKind::Root));
        assert_eq!(p.lookup(0x50), 0);
        assert_eq!(p.lookup(0x100), 1);
        assert_eq!((p.self_inode(), p.parent_inode()), (12, 2));
        let n = DxBlock::new_node(opts, &e).unwrap();
        assert_eq!(n.self_inode(), 0);
        assert_eq!(detect(n.as_bytes(), 4096), Some(DxKind::Node));
        DxBlock::parse_node(n.as_bytes(), opts).unwrap();
    }

    #[test]
    fn split() {
        let opts = DirBlockOptions::new(1024, true);
        let mut b = DirBlock::new_empty(1024, opts).unwrap();
        let mut i = 0;
        while b
            .add_entry(format!("name-{i}").as_bytes(), 20 + i, 1)
            .unwrap()
        {
            i += 1;
        }
        let h = |n: &[u8]| dirhash(n, HashVersion::HalfMd4, &[0; 4]);
        let (new, s) = split_leaf(&mut b, h).unwrap();
        b.validate().unwrap();
        new.validate().unwrap();
        let total = b.live_entries().unwrap().len() + new.live_entries().unwrap().len();
        assert_eq!(total, i as usize);
        for e in new.live_entries().unwrap() {
            assert!(h(e.name).unwrap().major >= s.split_hash);
        }
        for e in b.live_entries().unwrap() {
            assert!(h(e.name).unwrap().major <= s.split_hash);
        }
        assert!(b.free_bytes().unwrap() > 300 && new.free_bytes().unwrap() > 300);
    }
}
