//! Extended attributes: the in-inode area (after `128 + i_extra_isize`,
//! starting with the magic 0xEA020000) and xattr blocks (32-byte
//! `ext4_xattr_header`, then entries). Entries (`ext4_xattr_entry`) carry a
//! name index (prefix), the name suffix, and either an inline value
//! (`e_value_offs` into the value area) or an EA inode (`e_value_inum`).
//!
//! Parsing validates like the kernel's `check_xattrs`: entries and names
//! inside the area, a terminator, names without NUL, values inside the area and
//! after the entry table, plus (stricter than the kernel) values that do not
//! overlap each other. Hashes: [`entry_hash`] (name and value words, the
//! kernel's `ext4_xattr_hash_entry`, and the old signed-char variant),
//! [`block_hash`] (`ext4_xattr_rehash`). Builders lay out entries from the
//! front and values from the back: [`build_block`] (sorted by index, name
//! length, name, as the kernel expects in blocks) and [`build_ibody`].

use alloc::{vec, vec::Vec};

use crate::bytes::{
    read_u8, read_u16le, read_u32le, write_bytes, write_u8, write_u16le, write_u32le,
};
use crate::checksum::crc32c_raw;
use crate::error::{CorruptKind, FormatError, Result, Structure};

/// `EXT4_XATTR_MAGIC`.
pub const XATTR_MAGIC: u32 = 0xEA02_0000;
/// Size of the block header.
pub const BLOCK_HEADER_SIZE: usize = 32;
/// Size of the fixed part of an entry.
pub const ENTRY_HEADER_SIZE: usize = 16;
/// Largest value size the kernel accepts (`EXT4_XATTR_SIZE_MAX`).
pub const XATTR_SIZE_MAX: u32 = 1 << 24;
/// Offset of `h_checksum` in the block header.
const H_CHECKSUM: usize = 16;

/// The name index → prefix table. Posix ACL and richacl names are the whole
/// name (stored with an empty suffix).
pub const NAME_PREFIXES: &[(u8, &str)] = &[
    (2, "system.posix_acl_access"),
    (3, "system.posix_acl_default"),
    (8, "system.richacl"),
    (1, "user."),
    (4, "trusted."),
    (6, "security."),
    (7, "system."),
];

/// Index of `system.` (and so of `system.data`, which holds inline data).
pub const INDEX_SYSTEM: u8 = 7;

fn is_whole_name_index(idx: u8) -> bool {
    matches!(idx, 2 | 3 | 8)
}

/// Splits a full attribute name into (name index, suffix), longest prefix first.
/// Names without a known prefix get index 0 and keep the whole name.
pub fn split_name(full: &[u8]) -> (u8, &[u8]) {
    for &(idx, prefix) in NAME_PREFIXES {
        if is_whole_name_index(idx) && full == prefix.as_bytes() {
            return (idx, &[]);
        }
    }
    for &(idx, prefix) in NAME_PREFIXES {
        if is_whole_name_index(idx) {
            continue;
        }
        if let Some(rest) = full.strip_prefix(prefix.as_bytes()) {
            return (idx, rest);
        }
    }
    (0, full)
}

/// The full name of an entry (prefix + suffix); `None` for an unknown index.
pub fn full_name(index: u8, suffix: &[u8]) -> Option<Vec<u8>> {
    if index == 0 {
        return Some(suffix.to_vec());
    }
    let prefix = NAME_PREFIXES.iter().find(|p| p.0 == index)?.1;
    let mut v = prefix.as_bytes().to_vec();
    v.extend_from_slice(suffix);
    Some(v)
}

/// Size of an entry with an `n`-byte name (`EXT4_XATTR_LEN`).
pub fn entry_len(name_len: usize) -> usize {
    (ENTRY_HEADER_SIZE + name_len + 3) & !3
}

/// Value size padded to 4 (`EXT4_XATTR_SIZE`).
pub fn padded_value_len(size: usize) -> usize {
    (size + 3) & !3
}

/// One parsed entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct XattrEntry {
    /// Offset of the entry in the buffer it was parsed from.
    pub offset: usize,
    /// `e_name_index`.
    pub name_index: u8,
    /// The name suffix (`e_name`, `e_name_len` bytes).
    pub name: Vec<u8>,
    /// `e_value_offs`: offset of the value from the value base.
    pub value_offset: u16,
    /// `e_value_inum`: EA inode holding the value, or 0.
    pub value_inum: u32,
    /// `e_value_size`.
    pub value_size: u32,
    /// `e_hash`.
    pub hash: u32,
    /// Absolute offset of the value in the parsed buffer (`None` for EA-inode or empty values).
    pub value_pos: Option<usize>,
}

impl XattrEntry {
    /// The full name (prefix + suffix), if the index is known.
    pub fn full_name(&self) -> Option<Vec<u8>> {
        full_name(self.name_index, &self.name)
    }
}

/// Walks and validates entries of `buf`: entries start at `first`, value
/// offsets count from `value_base`, everything ends at `end`.
fn walk(
    buf: &[u8],
    first: usize,
    value_base: usize,
    end: usize,
    ea_inode: bool,
    structure: Structure,
) -> Result<Vec<XattrEntry>> {
    let bad = |k| Err(FormatError::corrupt(structure, k));
    let mut out = Vec::new();
    let mut off = first;
    loop {
        if off + 4 > end {
            return bad(CorruptKind::XattrEntryBounds { offset: off });
        }
        if read_u32le(buf, off) == 0 {
            break;
        }
        let name_len = usize::from(read_u8(buf, off));
        let next = off + entry_len(name_len);
        if off + ENTRY_HEADER_SIZE > end || next >= end {
            return bad(CorruptKind::XattrEntryBounds { offset: off });
        }
        let name = &buf[off + ENTRY_HEADER_SIZE..off + ENTRY_HEADER_SIZE + name_len];
        if name.contains(&0) {
            return bad(CorruptKind::XattrName { offset: off });
        }
        out.push(XattrEntry {
            offset: off,
            name_index: read_u8(buf, off + 1),
            name: name.to_vec(),
            value_offset: read_u16le(buf, off + 2),
            value_inum: read_u32le(buf, off + 4),
            value_size: read_u32le(buf, off + 8),
            hash: read_u32le(buf, off + 12),
            value_pos: None,
        });
        off = next;
    }
    let terminator = off;
    let mut ranges: Vec<(usize, usize, usize)> = Vec::new();
    for e in &mut out {
        if e.value_inum != 0 && !ea_inode {
            return bad(CorruptKind::XattrValueInode(e.value_inum));
        }
        if e.value_size > XATTR_SIZE_MAX {
            return bad(CorruptKind::XattrValueSize(e.value_size));
        }
        if e.value_size != 0 && e.value_inum == 0 {
            let start = value_base + usize::from(e.value_offset);
            let size = e.value_size as usize;
            if start > end
                || start < terminator + 4
                || size > end - start
                || padded_value_len(size) > end - start
            {
                return bad(CorruptKind::XattrValueBounds { offset: e.offset });
            }
            e.value_pos = Some(start);
            ranges.push((start, start + size, e.offset));
        }
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return bad(CorruptKind::XattrValueOverlap { offset: w[1].2 });
        }
    }
    Ok(out)
}

/// The value bytes of an inline entry parsed from `buf` (empty for EA-inode values).
pub fn value_of<'a>(buf: &'a [u8], e: &XattrEntry) -> &'a [u8] {
    match e.value_pos {
        Some(p) => buf.get(p..p + e.value_size as usize).unwrap_or(&[]),
        None => &[],
    }
}

/// Whether an in-inode xattr area (the bytes after `128 + i_extra_isize`)
/// starts with [`XATTR_MAGIC`], i.e. holds attributes at all.
pub fn has_ibody_magic(area: &[u8]) -> bool {
    area.len() >= 4 && read_u32le(area, 0) == XATTR_MAGIC
}

/// Parses an in-inode xattr area (the bytes after `128 + i_extra_isize`).
/// Returns an empty list when the area does not start with the magic (the
/// inode simply has no in-inode xattrs).
pub fn parse_ibody(area: &[u8], ea_inode_feature: bool) -> Result<Vec<XattrEntry>> {
    if !has_ibody_magic(area) {
        return Ok(Vec::new());
    }
    walk(
        area,
        4,
        4,
        area.len(),
        ea_inode_feature,
        Structure::XattrInode,
    )
}

/// An xattr block, owning its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XattrBlock {
    raw: Vec<u8>,
    entries: Vec<XattrEntry>,
}

impl XattrBlock {
    /// Parses and validates an xattr block (magic, `h_blocks` = 1, entries, values).
    pub fn parse(bytes: &[u8], ea_inode_feature: bool) -> Result<Self> {
        let bad = |k| Err(FormatError::corrupt(Structure::XattrBlock, k));
        if bytes.len() < BLOCK_HEADER_SIZE + 4 {
            return Err(FormatError::too_short(
                Structure::XattrBlock,
                BLOCK_HEADER_SIZE + 4,
                bytes.len(),
            ));
        }
        let magic = read_u32le(bytes, 0);
        if magic != XATTR_MAGIC {
            return bad(CorruptKind::XattrMagic(magic));
        }
        let blocks = read_u32le(bytes, 8);
        if blocks != 1 {
            return bad(CorruptKind::XattrBlocks(blocks));
        }
        let entries = walk(
            bytes,
            BLOCK_HEADER_SIZE,
            0,
            bytes.len(),
            ea_inode_feature,
            Structure::XattrBlock,
        )?;
        Ok(Self {
            raw: bytes.to_vec(),
            entries,
        })
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }
    /// The entries in block order.
    pub fn entries(&self) -> &[XattrEntry] {
        &self.entries
    }
    /// An entry's inline value.
    pub fn value(&self, e: &XattrEntry) -> &[u8] {
        value_of(&self.raw, e)
    }
    /// Looks up an entry by name index and suffix.
    pub fn find(&self, index: u8, name: &[u8]) -> Option<&XattrEntry> {
        self.entries
            .iter()
            .find(|e| e.name_index == index && e.name == name)
    }

    /// `h_refcount`: inodes sharing the block.
    pub fn refcount(&self) -> u32 {
        read_u32le(&self.raw, 4)
    }
    /// Sets `h_refcount`.
    pub fn set_refcount(&mut self, v: u32) {
        write_u32le(&mut self.raw, 4, v)
    }
    /// `h_blocks` (always 1).
    pub fn blocks(&self) -> u32 {
        read_u32le(&self.raw, 8)
    }
    /// `h_hash`: hash of all entry hashes (0 = not shareable).
    pub fn hash(&self) -> u32 {
        read_u32le(&self.raw, 12)
    }
    /// `h_checksum`.
    pub fn checksum(&self) -> u32 {
        read_u32le(&self.raw, H_CHECKSUM)
    }
    /// The block hash recomputed from the entries' stored hashes.
    pub fn compute_block_hash(&self) -> u32 {
        block_hash(self.entries.iter().map(|e| e.hash))
    }
    /// Recomputes `h_hash` from the stored entry hashes.
    pub fn update_block_hash(&mut self) {
        let h = self.compute_block_hash();
        write_u32le(&mut self.raw, 12, h);
    }
    /// `true` if every inline entry's stored hash matches its name and value
    /// (either the unsigned or the old signed-char variant, as the kernel accepts).
    pub fn entry_hashes_ok(&self) -> bool {
        self.entries.iter().all(|e| {
            if e.value_inum != 0 {
                return true;
            }
            let v = self.value(e);
            e.hash == entry_hash(&e.name, v, false) || e.hash == entry_hash(&e.name, v, true)
        })
    }

    /// crc32c over le64(block number) and the block with `h_checksum` zeroed,
    /// fs seed (`ext4_xattr_block_csum`).
    pub fn compute_checksum(&self, fs_csum_seed: u32, block_nr: u64) -> u32 {
        compute_block_checksum(&self.raw, fs_csum_seed, block_nr)
    }
    /// Verifies `h_checksum` (call with metadata_csum only).
    pub fn verify_checksum(&self, fs_csum_seed: u32, block_nr: u64) -> Result<()> {
        let c = self.compute_checksum(fs_csum_seed, block_nr);
        if c != self.checksum() {
            return Err(
                FormatError::checksum(Structure::XattrBlock, c, self.checksum())
                    .with_block(block_nr),
            );
        }
        Ok(())
    }
    /// Recomputes `h_checksum`.
    pub fn update_checksum(&mut self, fs_csum_seed: u32, block_nr: u64) {
        let c = self.compute_checksum(fs_csum_seed, block_nr);
        write_u32le(&mut self.raw, H_CHECKSUM, c);
    }
}

/// The checksum of a raw xattr block.
pub fn compute_block_checksum(block: &[u8], fs_csum_seed: u32, block_nr: u64) -> u32 {
    let mut crc = crc32c_raw(fs_csum_seed, &block_nr.to_le_bytes());
    crc = crc32c_raw(crc, block.get(..H_CHECKSUM).unwrap_or(block));
    crc = crc32c_raw(crc, &[0; 4]);
    crc32c_raw(crc, block.get(H_CHECKSUM + 4..).unwrap_or(&[]))
}

const NAME_HASH_SHIFT: u32 = 5;
const VALUE_HASH_SHIFT: u32 = 16;
const BLOCK_HASH_SHIFT: u32 = 16;

fn hash_name(name: &[u8], signed: bool) -> u32 {
    name.iter().fold(0u32, |h, &c| {
        let c = if signed {
            i32::from(c as i8) as u32
        } else {
            u32::from(c)
        };
        h.rotate_left(NAME_HASH_SHIFT) ^ c
    })
}

/// Entry hash (`ext4_xattr_hash_entry`): name bytes (rotate 5), then the value
/// as little-endian words padded to 4 bytes with zeros (rotate 16). `signed`
/// selects the old variant that sign-extended name bytes.
pub fn entry_hash(name: &[u8], value: &[u8], signed: bool) -> u32 {
    let mut h = hash_name(name, signed);
    for chunk in value.chunks(4) {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        h = h.rotate_left(VALUE_HASH_SHIFT) ^ u32::from_le_bytes(w);
    }
    h
}

/// Entry hash for a value stored in an EA inode: the name, then the EA
/// inode's value hash (stored in its `i_atime`) as one word.
pub fn entry_hash_ea_inode(name: &[u8], ea_inode_hash: u32) -> u32 {
    hash_name(name, false).rotate_left(VALUE_HASH_SHIFT) ^ ea_inode_hash
}

/// The value hash an EA inode carries in `i_atime` (`ext4_xattr_inode_hash`):
/// crc32c of the value with the fs seed.
pub fn ea_inode_value_hash(fs_csum_seed: u32, value: &[u8]) -> u32 {
    crc32c_raw(fs_csum_seed, value)
}

/// Block hash (`ext4_xattr_rehash`) over entry hashes; 0 if any entry hash is 0.
pub fn block_hash(hashes: impl IntoIterator<Item = u32>) -> u32 {
    let mut h = 0u32;
    for e in hashes {
        if e == 0 {
            return 0;
        }
        h = h.rotate_left(BLOCK_HASH_SHIFT) ^ e;
    }
    h
}

/// Where an attribute's value lives, for the builders.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum XattrValue {
    /// Stored next to the entries.
    Inline(Vec<u8>),
    /// Stored in an EA inode.
    Inode {
        /// The EA inode.
        inum: u32,
        /// Value size.
        size: u32,
        /// The EA inode's value hash ([`ea_inode_value_hash`]).
        hash: u32,
    },
}

/// One attribute to lay out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct XattrSpec {
    /// Name index.
    pub name_index: u8,
    /// Name suffix (≤ 255 bytes, no NUL).
    pub name: Vec<u8>,
    /// The value.
    pub value: XattrValue,
}

impl XattrSpec {
    /// An inline attribute from its full name (`user.foo`).
    pub fn inline(full_name: &[u8], value: &[u8]) -> Self {
        let (name_index, name) = split_name(full_name);
        XattrSpec {
            name_index,
            name: name.to_vec(),
            value: XattrValue::Inline(value.to_vec()),
        }
    }

    /// Bytes this attribute takes (entry + padded inline value).
    pub fn space(&self) -> usize {
        entry_len(self.name.len())
            + match &self.value {
                XattrValue::Inline(v) => padded_value_len(v.len()),
                XattrValue::Inode { .. } => 0,
            }
    }
}

/// Order of entries inside xattr blocks: (index, name length, name).
pub fn block_order(a: &XattrSpec, b: &XattrSpec) -> core::cmp::Ordering {
    (a.name_index, a.name.len(), &a.name).cmp(&(b.name_index, b.name.len(), &b.name))
}

/// `true` if parsed entries are in block order.
pub fn is_block_ordered(entries: &[XattrEntry]) -> bool {
    entries.windows(2).all(|w| {
        (w[0].name_index, w[0].name.len(), &w[0].name)
            <= (w[1].name_index, w[1].name.len(), &w[1].name)
    })
}

/// Writes entries and values into `buf[first..end]`, value offsets relative to
/// `value_base`. Returns `false` if they do not fit.
fn lay_out(
    buf: &mut [u8],
    first: usize,
    value_base: usize,
    end: usize,
    specs: &[XattrSpec],
    hashes: bool,
) -> Result<bool> {
    let total: usize = specs.iter().map(XattrSpec::space).sum();
    if first + total + 4 > end {
        return Ok(false);
    }
    buf[first..end].fill(0);
    let mut off = first;
    let mut vend = end;
    for s in specs {
        if s.name.len() > 255 || s.name.contains(&0) {
            return Err(FormatError::unrepresentable(
                Structure::XattrBlock,
                "e_name_len",
                s.name.len() as u64,
            ));
        }
        write_u8(buf, off, s.name.len() as u8);
        write_u8(buf, off + 1, s.name_index);
        write_bytes(buf, off + ENTRY_HEADER_SIZE, &s.name);
        let hash = match &s.value {
            XattrValue::Inline(v) => {
                if v.len() as u64 > u64::from(XATTR_SIZE_MAX) {
                    return Err(FormatError::unrepresentable(
                        Structure::XattrBlock,
                        "e_value_size",
                        v.len() as u64,
                    ));
                }
                if !v.is_empty() {
                    vend -= padded_value_len(v.len());
                    write_bytes(buf, vend, v);
                    let rel = u16::try_from(vend - value_base).map_err(|_| {
                        FormatError::unrepresentable(
                            Structure::XattrBlock,
                            "e_value_offs",
                            (vend - value_base) as u64,
                        )
                    })?;
                    write_u16le(buf, off + 2, rel);
                }
                write_u32le(buf, off + 8, v.len() as u32);
                if hashes {
                    entry_hash(&s.name, v, false)
                } else {
                    0
                }
            }
            XattrValue::Inode { inum, size, hash } => {
                write_u32le(buf, off + 4, *inum);
                write_u32le(buf, off + 8, *size);
                entry_hash_ea_inode(&s.name, *hash)
            }
        };
        write_u32le(buf, off + 12, hash);
        off += entry_len(s.name.len());
    }
    Ok(true)
}

/// Builds an xattr block of `block_size` holding `specs` (sorted into block
/// order), with entry hashes, `h_refcount` = 1, `h_blocks` = 1 and the block
/// hash; the checksum is left 0 (see [`XattrBlock::update_checksum`]).
/// `Ok(None)` if they do not fit.
pub fn build_block(
    block_size: usize,
    specs: &[XattrSpec],
    ea_inode_feature: bool,
) -> Result<Option<XattrBlock>> {
    let mut sorted = specs.to_vec();
    sorted.sort_by(block_order);
    let mut raw = vec![0u8; block_size];
    if block_size < BLOCK_HEADER_SIZE + 4
        || !lay_out(&mut raw, BLOCK_HEADER_SIZE, 0, block_size, &sorted, true)?
    {
        return Ok(None);
    }
    write_u32le(&mut raw, 0, XATTR_MAGIC);
    write_u32le(&mut raw, 4, 1);
    write_u32le(&mut raw, 8, 1);
    let mut b = XattrBlock::parse(&raw, ea_inode_feature)?;
    b.update_block_hash();
    Ok(Some(b))
}

/// Builds an in-inode xattr area of `area_len` bytes (magic, entries in the
/// given order, values at the end; hashes 0 for inline values, as the kernel
/// writes them). `Ok(None)` if they do not fit.
pub fn build_ibody(area_len: usize, specs: &[XattrSpec]) -> Result<Option<Vec<u8>>> {
    let mut raw = vec![0u8; area_len];
    if area_len < 8 {
        return Ok(specs.is_empty().then_some(raw));
    }
    if !lay_out(&mut raw, 4, 4, area_len, specs, false)? {
        return Ok(None);
    }
    write_u32le(&mut raw, 0, XATTR_MAGIC);
    Ok(Some(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(split_name(b"user.foo"), (1, &b"foo"[..]));
        assert_eq!(split_name(b"system.posix_acl_access"), (2, &b""[..]));
        assert_eq!(split_name(b"system.data"), (7, &b"data"[..]));
        assert_eq!(split_name(b"security.selinux"), (6, &b"selinux"[..]));
        assert_eq!(full_name(3, b"").unwrap(), b"system.posix_acl_default");
    }

    #[test]
    fn ibody_magic() {
        assert_eq!(XATTR_MAGIC.to_le_bytes(), [0x00, 0x00, 0x02, 0xEA]);
        assert!(has_ibody_magic(&[0x00, 0x00, 0x02, 0xEA, 0, 0, 0, 0]));
        assert!(!has_ibody_magic(&[0x00, 0x00, 0x02]));
        assert!(!has_ibody_magic(&[0; 96]));
        assert!(parse_ibody(&[0; 96], false).unwrap().is_empty());
    }

    #[test]
    fn block_round_trip() {
        let specs = vec![
            XattrSpec::inline(b"user.zz", b"value-1"),
            XattrSpec::inline(b"user.a", b"v"),
            XattrSpec::inline(b"trusted.t", &[0xFF; 100]),
        ];
        let mut b = build_block(1024, &specs, false).unwrap().unwrap();
        assert_eq!(b.entries().len(), 3);
        assert!(is_block_ordered(b.entries()));
        assert_eq!(b.entries()[0].name, b"a");
        let e1 = b.entries()[1].clone();
        assert_eq!(b.value(&e1), b"value-1");
        assert!(b.entry_hashes_ok());
        assert_ne!(b.hash(), 0);
        b.update_checksum(9, 1234);
        let p = XattrBlock::parse(b.as_bytes(), false).unwrap();
        p.verify_checksum(9, 1234).unwrap();
        assert!(p.verify_checksum(9, 1235).is_err());
        let area = build_ibody(100, &specs[..2]).unwrap().unwrap();
        let e = parse_ibody(&area, false).unwrap();
        assert_eq!(value_of(&area, &e[0]), b"value-1");
        assert!(build_ibody(40, &specs).unwrap().is_none());
    }
}
