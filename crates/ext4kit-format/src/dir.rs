//! Linear directory blocks: `struct ext4_dir_entry_2` records chained by
//! `rec_len`, the 12-byte checksum tail (`struct ext4_dir_entry_tail`,
//! `det_reserved_ft` = 0xDE) of metadata_csum filesystems, and builders to
//! create, insert, remove and compact entries.
//!
//! [`DirBlock`] owns one block (or one inline-data region, which has the same
//! format without a tail). Parsing validates every entry like the kernel's
//! `__ext4_check_dir_entry`: `rec_len` ≥ 12 and a multiple of 4, the name fits,
//! the entry stays inside the block, and the chain ends exactly at the end of
//! the entry area (the block end, or the tail). `rec_len` values are decoded
//! for 64 KiB blocks ([`rec_len_from_disk`]).

use alloc::{vec, vec::Vec};

use crate::bytes::{
    read_u8, read_u16le, read_u32le, write_bytes, write_u8, write_u16le, write_u32le,
};
use crate::checksum::{crc32c_raw, inode_csum_seed};
use crate::error::{CorruptKind, FormatError, Result, Structure};
use crate::inode::FileType;

/// Size of the fixed part of an entry (inode, rec_len, name_len, file_type).
pub const DIRENT_HEADER_SIZE: usize = 8;
/// Smallest valid `rec_len` (`EXT4_DIR_REC_LEN(1)`).
pub const MIN_REC_LEN: u32 = 12;
/// Longest name.
pub const MAX_NAME_LEN: usize = 255;
/// Size of the checksum tail.
pub const TAIL_SIZE: usize = 12;
/// `EXT4_FT_DIR_CSUM`: the fake file type marking the tail.
pub const FT_DIR_CSUM: u8 = 0xDE;
/// `EXT4_MAX_REC_LEN`: the on-disk `rec_len` meaning "the whole 64 KiB block".
const MAX_REC_LEN: u16 = 0xFFFF;

/// Decodes an on-disk `rec_len` (`ext4_rec_len_from_disk`): identical below
/// 64 KiB blocks; with 64 KiB (and larger) blocks, 0 and 0xFFFF mean the
/// whole block and the low 2 bits carry bits 16–17.
pub fn rec_len_from_disk(raw: u16, block_size: u32) -> u32 {
    if block_size < 65536 {
        return u32::from(raw);
    }
    if raw == MAX_REC_LEN || raw == 0 {
        return block_size;
    }
    u32::from(raw & 0xFFFC) | (u32::from(raw & 3) << 16)
}

/// Encodes a `rec_len` (`ext4_rec_len_to_disk`); fails for lengths that are
/// not multiples of 4 or exceed the block.
pub fn rec_len_to_disk(len: u32, block_size: u32) -> Result<u16> {
    if len % 4 != 0 || len > block_size || block_size > (1 << 18) {
        return Err(FormatError::unrepresentable(
            Structure::DirectoryBlock,
            "rec_len",
            u64::from(len),
        ));
    }
    if len < 65536 {
        return Ok(len as u16);
    }
    if len == block_size {
        return Ok(if block_size == 65536 { MAX_REC_LEN } else { 0 });
    }
    Ok(((len & 0xFFFC) | ((len >> 16) & 3)) as u16)
}

/// The space an entry with an `n`-byte name needs (`EXT4_DIR_REC_LEN`): 8 + n, rounded up to 4.
pub fn rec_len_for_name(name_len: usize) -> u32 {
    ((DIRENT_HEADER_SIZE + name_len + 3) & !3) as u32
}

/// One directory entry, borrowed from its block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DirEntry<'a> {
    /// Byte offset in the block.
    pub offset: usize,
    /// Inode number (`inode`); 0 marks an unused entry.
    pub inode: u32,
    /// Decoded record length (`rec_len`).
    pub rec_len: u32,
    /// File type code (`file_type`, `EXT2_FT_*`; meaningless without the filetype feature).
    pub file_type: u8,
    /// The name (`name_len` bytes).
    pub name: &'a [u8],
}

impl DirEntry<'_> {
    /// `true` for an unused entry (inode 0).
    pub fn is_unused(&self) -> bool {
        self.inode == 0
    }
    /// The decoded file type.
    pub fn file_type(&self) -> Option<FileType> {
        FileType::from_dirent_code(self.file_type)
    }
    /// Space the entry really needs.
    pub fn needed_len(&self) -> u32 {
        rec_len_for_name(self.name.len())
    }
    /// `true` for `.` and `..`.
    pub fn is_dot_or_dotdot(&self) -> bool {
        self.name == b"." || self.name == b".."
    }
}

/// What a directory block looks like, beyond its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DirBlockOptions {
    /// Filesystem block size (for `rec_len` decoding; also for inline regions).
    pub block_size: u32,
    /// `true` if the block ends with a checksum tail (metadata_csum leaf blocks).
    pub has_tail: bool,
    /// Highest valid inode number (`s_inodes_count`), if entries should be checked against it.
    pub max_inode: Option<u32>,
}

impl DirBlockOptions {
    /// Options for a block of `block_size` with or without a tail.
    pub fn new(block_size: u32, has_tail: bool) -> Self {
        Self {
            block_size,
            has_tail,
            max_inode: None,
        }
    }
}

/// A directory block (or inline-data region) owning its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirBlock {
    raw: Vec<u8>,
    opts: DirBlockOptions,
}

/// Reads the entry header at `off` (no validation).
fn raw_entry(buf: &[u8], off: usize, block_size: u32) -> (u32, u32, u8, u8) {
    (
        read_u32le(buf, off),
        rec_len_from_disk(read_u16le(buf, off + 4), block_size),
        read_u8(buf, off + 6),
        read_u8(buf, off + 7),
    )
}

/// Iterates and validates entries of `buf[..end]`.
fn walk<'a>(buf: &'a [u8], end: usize, opts: &DirBlockOptions) -> Result<Vec<DirEntry<'a>>> {
    let bad = |k| Err(FormatError::corrupt(Structure::DirectoryBlock, k));
    let mut out = Vec::new();
    let mut off = 0usize;
    while off < end {
        if off + DIRENT_HEADER_SIZE > end {
            return bad(CorruptKind::DirentOverrun {
                offset: off,
                rec_len: 0,
            });
        }
        let (inode, rec_len, name_len, file_type) = raw_entry(buf, off, opts.block_size);
        if rec_len < MIN_REC_LEN || rec_len % 4 != 0 {
            return bad(CorruptKind::DirentRecLen {
                offset: off,
                rec_len,
            });
        }
        if rec_len < rec_len_for_name(usize::from(name_len)) {
            return bad(CorruptKind::DirentNameLen {
                offset: off,
                name_len,
                rec_len,
            });
        }
        let next = off + rec_len as usize;
        if next > end {
            return bad(CorruptKind::DirentOverrun {
                offset: off,
                rec_len,
            });
        }
        if let Some(max) = opts.max_inode {
            if inode > max {
                return bad(CorruptKind::DirentInode { offset: off, inode });
            }
        }
        let name = &buf[off + DIRENT_HEADER_SIZE..off + DIRENT_HEADER_SIZE + usize::from(name_len)];
        out.push(DirEntry {
            offset: off,
            inode,
            rec_len,
            file_type,
            name,
        });
        off = next;
    }
    Ok(out)
}

/// `true` if the last 12 bytes of `buf` are a well-formed checksum tail.
pub fn has_tail(buf: &[u8]) -> bool {
    let Some(off) = buf.len().checked_sub(TAIL_SIZE) else {
        return false;
    };
    read_u32le(buf, off) == 0
        && read_u16le(buf, off + 4) == TAIL_SIZE as u16
        && read_u8(buf, off + 6) == 0
        && read_u8(buf, off + 7) == FT_DIR_CSUM
}

impl DirBlock {
    /// Parses and validates a block (the whole chain; with `has_tail`, the tail too).
    pub fn parse(bytes: &[u8], opts: DirBlockOptions) -> Result<Self> {
        let b = Self {
            raw: bytes.to_vec(),
            opts,
        };
        b.validate()?;
        Ok(b)
    }

    /// Wraps bytes without validation (entries() will then report errors).
    pub fn from_bytes_unchecked(bytes: &[u8], opts: DirBlockOptions) -> Self {
        Self {
            raw: bytes.to_vec(),
            opts,
        }
    }

    /// An empty block: one unused entry spanning the entry area (plus the tail if any).
    pub fn new_empty(len: usize, opts: DirBlockOptions) -> Result<Self> {
        let mut b = Self {
            raw: vec![0; len],
            opts,
        };
        let area = b.entry_area_len()?;
        b.write_header(0, 0, area as u32, 0, 0)?;
        if opts.has_tail {
            b.init_tail();
        }
        Ok(b)
    }

    /// The first block of a new directory: `.` → `self_ino`, `..` → `parent_ino`.
    pub fn new_dir(
        len: usize,
        opts: DirBlockOptions,
        self_ino: u32,
        parent_ino: u32,
        with_file_type: bool,
    ) -> Result<Self> {
        let mut b = Self::new_empty(len, opts)?;
        let ft = if with_file_type {
            FileType::Directory.dirent_code()
        } else {
            0
        };
        let area = b.entry_area_len()? as u32;
        b.write_header(0, self_ino, 12, 1, ft)?;
        write_bytes(&mut b.raw, 8, b".");
        b.write_header(12, parent_ino, area - 12, 2, ft)?;
        write_bytes(&mut b.raw, 20, b"..");
        Ok(b)
    }

    /// Builds a block holding `entries` (name, inode, file type code) packed in
    /// order, the last one extended to the end; `Ok(None)` if they do not fit.
    pub fn build(
        len: usize,
        opts: DirBlockOptions,
        entries: &[(&[u8], u32, u8)],
    ) -> Result<Option<Self>> {
        let mut b = Self::new_empty(len, opts)?;
        let area = b.entry_area_len()?;
        if entries.is_empty() {
            return Ok(Some(b));
        }
        let total: usize = entries
            .iter()
            .map(|e| rec_len_for_name(e.0.len()) as usize)
            .sum();
        if total > area {
            return Ok(None);
        }
        let mut off = 0usize;
        for (i, (name, ino, ft)) in entries.iter().enumerate() {
            check_name(name)?;
            let need = rec_len_for_name(name.len()) as usize;
            let rec = if i + 1 == entries.len() {
                area - off
            } else {
                need
            };
            b.write_header(off, *ino, rec as u32, name.len() as u8, *ft)?;
            write_bytes(&mut b.raw, off + DIRENT_HEADER_SIZE, name);
            // Zero the slack so stale bytes do not linger in new blocks.
            b.raw[off + DIRENT_HEADER_SIZE + name.len()..off + need].fill(0);
            off += rec;
        }
        Ok(Some(b))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }
    /// Consumes the block, returning its bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.raw
    }
    /// The options the block was parsed with.
    pub fn options(&self) -> DirBlockOptions {
        self.opts
    }

    /// Length of the entry area (the block, minus the tail if any).
    fn entry_area_len(&self) -> Result<usize> {
        let n = if self.opts.has_tail {
            self.raw.len().checked_sub(TAIL_SIZE)
        } else {
            Some(self.raw.len())
        };
        match n {
            Some(n) if n >= MIN_REC_LEN as usize => Ok(n),
            _ => Err(FormatError::too_short(
                Structure::DirectoryBlock,
                MIN_REC_LEN as usize + TAIL_SIZE,
                self.raw.len(),
            )),
        }
    }

    fn write_header(
        &mut self,
        off: usize,
        inode: u32,
        rec_len: u32,
        name_len: u8,
        ft: u8,
    ) -> Result<()> {
        let r = rec_len_to_disk(rec_len, self.opts.block_size)?;
        write_u32le(&mut self.raw, off, inode);
        write_u16le(&mut self.raw, off + 4, r);
        write_u8(&mut self.raw, off + 6, name_len);
        write_u8(&mut self.raw, off + 7, ft);
        Ok(())
    }

    fn set_rec_len(&mut self, off: usize, rec_len: u32) -> Result<()> {
        let r = rec_len_to_disk(rec_len, self.opts.block_size)?;
        write_u16le(&mut self.raw, off + 4, r);
        Ok(())
    }

    /// Validates the entry chain and the tail.
    pub fn validate(&self) -> Result<()> {
        let area = self.entry_area_len()?;
        if self.opts.has_tail && !has_tail(&self.raw) {
            return Err(FormatError::corrupt(
                Structure::DirectoryBlock,
                CorruptKind::DirentTail,
            ));
        }
        walk(&self.raw, area, &self.opts).map(|_| ())
    }

    /// All entries, unused ones included, in block order.
    pub fn entries(&self) -> Result<Vec<DirEntry<'_>>> {
        walk(&self.raw, self.entry_area_len()?, &self.opts)
    }

    /// Live entries (inode ≠ 0).
    pub fn live_entries(&self) -> Result<Vec<DirEntry<'_>>> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|e| !e.is_unused())
            .collect())
    }

    /// Looks up a live entry by name.
    pub fn find(&self, name: &[u8]) -> Result<Option<DirEntry<'_>>> {
        Ok(self
            .entries()?
            .into_iter()
            .find(|e| !e.is_unused() && e.name == name))
    }

    /// The inode of the live `..` entry (the parent, in a directory's first block).
    pub fn dotdot_inode(&self) -> Result<Option<u32>> {
        Ok(self.find(b"..")?.map(|e| e.inode))
    }

    /// Points the live `..` entry at `parent` (a rename into another directory).
    /// [`CorruptKind::DirectoryDots`] if the block has no live `..` entry. The
    /// checksum is not updated.
    pub fn set_dotdot_inode(&mut self, parent: u32) -> Result<()> {
        let off = self.find(b"..")?.map(|e| e.offset).ok_or_else(dots_error)?;
        write_u32le(&mut self.raw, off, parent);
        Ok(())
    }

    /// Room for an entry of `name_len`: `true` if [`DirBlock::add_entry`] would succeed.
    pub fn has_room_for(&self, name_len: usize) -> Result<bool> {
        Ok(self.find_slot(rec_len_for_name(name_len))?.is_some())
    }

    /// Total bytes not used by live entries' needed lengths.
    pub fn free_bytes(&self) -> Result<usize> {
        let area = self.entry_area_len()?;
        let used: usize = self
            .live_entries()?
            .iter()
            .map(|e| e.needed_len() as usize)
            .sum();
        Ok(area.saturating_sub(used))
    }

    /// First entry with `need` bytes of slack: (offset, needed length of the
    /// existing entry or 0 if unused, its rec_len).
    fn find_slot(&self, need: u32) -> Result<Option<(usize, u32, u32)>> {
        for e in self.entries()? {
            let used = if e.is_unused() { 0 } else { e.needed_len() };
            if e.rec_len - used >= need {
                return Ok(Some((e.offset, used, e.rec_len)));
            }
        }
        Ok(None)
    }

    /// Inserts an entry where it fits (the kernel's `ext4_find_dest_de` +
    /// `ext4_insert_dentry`: reuse an unused entry or split a live entry's
    /// slack). Returns `Ok(false)` if no entry has enough room. Does not check
    /// for an existing entry of the same name; the caller looks it up first.
    pub fn add_entry(&mut self, name: &[u8], inode: u32, file_type: u8) -> Result<bool> {
        check_name(name)?;
        if inode == 0 {
            return Err(FormatError::unrepresentable(
                Structure::DirectoryBlock,
                "inode",
                0,
            ));
        }
        let need = rec_len_for_name(name.len());
        let Some((off, used, rec_len)) = self.find_slot(need)? else {
            return Ok(false);
        };
        let at = if used > 0 {
            self.set_rec_len(off, used)?;
            off + used as usize
        } else {
            off
        };
        let new_len = rec_len - used;
        self.write_header(at, inode, new_len, name.len() as u8, file_type)?;
        write_bytes(&mut self.raw, at + DIRENT_HEADER_SIZE, name);
        let name_end = at + DIRENT_HEADER_SIZE + name.len();
        self.raw[name_end..at + need as usize].fill(0);
        Ok(true)
    }

    /// Removes the live entry `name` (the kernel's `ext4_generic_delete_entry`:
    /// merged into the previous entry, or marked unused if first). Returns its inode.
    pub fn remove_entry(&mut self, name: &[u8]) -> Result<Option<u32>> {
        let entries: Vec<(usize, u32, u32, bool)> = self
            .entries()?
            .iter()
            .map(|e| {
                (
                    e.offset,
                    e.inode,
                    e.rec_len,
                    !e.is_unused() && e.name == name,
                )
            })
            .collect();
        let Some(i) = entries.iter().position(|e| e.3) else {
            return Ok(None);
        };
        let (off, ino, rec_len, _) = entries[i];
        if i == 0 {
            write_u32le(&mut self.raw, off, 0);
        } else {
            let (poff, _, prec, _) = entries[i - 1];
            self.set_rec_len(poff, prec + rec_len)?;
        }
        Ok(Some(ino))
    }

    /// Rewrites the block with the live entries packed at the start (in the
    /// same order) and the last one extended to the end of the entry area.
    /// Returns the free bytes after the last entry's name.
    pub fn compact(&mut self) -> Result<usize> {
        let live: Vec<(Vec<u8>, u32, u8)> = self
            .live_entries()?
            .iter()
            .map(|e| (e.name.to_vec(), e.inode, e.file_type))
            .collect();
        let area = self.entry_area_len()?;
        let refs: Vec<(&[u8], u32, u8)> = live
            .iter()
            .map(|(n, i, f)| (n.as_slice(), *i, *f))
            .collect();
        let fresh = Self::build(self.raw.len(), self.opts, &refs)?.ok_or_else(|| {
            FormatError::unrepresentable(Structure::DirectoryBlock, "rec_len", area as u64)
        })?;
        // Keep the existing tail bytes (checksum updated by the caller).
        self.raw[..area].copy_from_slice(&fresh.raw[..area]);
        let used: usize = live
            .iter()
            .map(|(n, _, _)| rec_len_for_name(n.len()) as usize)
            .sum();
        Ok(area - used)
    }

    // ---- checksum tail ----

    /// Writes a fresh tail (checksum 0) in the last 12 bytes.
    pub fn init_tail(&mut self) {
        if let Some(off) = self.raw.len().checked_sub(TAIL_SIZE) {
            write_u32le(&mut self.raw, off, 0);
            write_u16le(&mut self.raw, off + 4, TAIL_SIZE as u16);
            write_u8(&mut self.raw, off + 6, 0);
            write_u8(&mut self.raw, off + 7, FT_DIR_CSUM);
            write_u32le(&mut self.raw, off + 8, 0);
        }
    }

    /// crc32c over the block up to the tail, seeded with inode number and
    /// generation (`ext4_dirblock_csum`).
    pub fn compute_checksum(&self, fs_csum_seed: u32, ino: u32, generation: u32) -> u32 {
        compute_leaf_checksum(&self.raw, fs_csum_seed, ino, generation)
    }

    /// The checksum stored in the tail.
    pub fn stored_checksum(&self) -> u32 {
        self.raw
            .len()
            .checked_sub(4)
            .map_or(0, |o| read_u32le(&self.raw, o))
    }

    /// Verifies the tail checksum (fails if there is no tail).
    pub fn verify_checksum(&self, fs_csum_seed: u32, ino: u32, generation: u32) -> Result<()> {
        verify_leaf_checksum(&self.raw, fs_csum_seed, ino, generation)
    }

    /// Recomputes the tail checksum (creating the tail fields if missing).
    pub fn update_checksum(&mut self, fs_csum_seed: u32, ino: u32, generation: u32) {
        if !has_tail(&self.raw) {
            self.init_tail();
        }
        let c = self.compute_checksum(fs_csum_seed, ino, generation);
        if let Some(o) = self.raw.len().checked_sub(4) {
            write_u32le(&mut self.raw, o, c);
        }
    }
}

/// crc32c of a leaf block up to its 12-byte tail.
pub fn compute_leaf_checksum(block: &[u8], fs_csum_seed: u32, ino: u32, generation: u32) -> u32 {
    let end = block.len().saturating_sub(TAIL_SIZE);
    crc32c_raw(
        inode_csum_seed(fs_csum_seed, ino, generation),
        &block[..end],
    )
}

/// Verifies the tail checksum of a raw leaf block.
pub fn verify_leaf_checksum(
    block: &[u8],
    fs_csum_seed: u32,
    ino: u32,
    generation: u32,
) -> Result<()> {
    if !has_tail(block) {
        return Err(
            FormatError::corrupt(Structure::DirectoryBlock, CorruptKind::DirentTail)
                .with_inode(ino),
        );
    }
    let c = compute_leaf_checksum(block, fs_csum_seed, ino, generation);
    let stored = read_u32le(block, block.len() - 4);
    if c != stored {
        return Err(FormatError::checksum(Structure::DirectoryBlock, c, stored).with_inode(ino));
    }
    Ok(())
}

fn dots_error() -> FormatError {
    FormatError::corrupt(Structure::DirectoryBlock, CorruptKind::DirectoryDots)
}

/// Byte offset of the `..` entry in a directory's first block, linear or htree.
///
/// An htree root (`struct dx_root`, recognized by [`crate::htree::detect`])
/// keeps `..` as its second fake entry at offset 12, which must be named `..`;
/// nothing else of the root is checked here ([`crate::htree::DxBlock::parse_root`]
/// does that). Any other block is validated as a linear block with `opts` and
/// its live entry named `..` is taken. [`CorruptKind::DirectoryDots`] if there
/// is none.
pub fn dotdot_offset(first_block: &[u8], opts: DirBlockOptions) -> Result<usize> {
    if crate::htree::detect(first_block, opts.block_size) == Some(crate::htree::DxKind::Root) {
        let named_dotdot =
            read_u8(first_block, 18) == 2 && first_block.get(20..22) == Some(&b".."[..]);
        return if named_dotdot {
            Ok(12)
        } else {
            Err(dots_error())
        };
    }
    DirBlock::parse(first_block, opts)?
        .find(b"..")?
        .map(|e| e.offset)
        .ok_or_else(dots_error)
}

/// The inode `..` names in a directory's first block (see [`dotdot_offset`]).
pub fn dotdot_inode(first_block: &[u8], opts: DirBlockOptions) -> Result<u32> {
    let off = dotdot_offset(first_block, opts)?;
    Ok(read_u32le(first_block, off))
}

/// Points `..` of a directory's first block, linear or htree root, at
/// `parent` (see [`dotdot_offset`]). Checksums are not updated: re-checksum
/// the block as a [`DirBlock`] or [`crate::htree::DxBlock`] afterwards. For an
/// inline-data directory see [`crate::inline_data::set_dotdot_inode`].
pub fn set_dotdot_inode(first_block: &mut [u8], opts: DirBlockOptions, parent: u32) -> Result<()> {
    let off = dotdot_offset(first_block, opts)?;
    write_u32le(first_block, off, parent);
    Ok(())
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(FormatError::unrepresentable(
            Structure::DirectoryBlock,
            "name_len",
            name.len() as u64,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rec_len_64k() {
        assert_eq!(rec_len_from_disk(0xFFFF, 65536), 65536);
        assert_eq!(rec_len_from_disk(0, 65536), 65536);
        assert_eq!(rec_len_to_disk(65536, 65536).unwrap(), 0xFFFF);
        for len in [12u32, 4096, 65532, 65540, 131068] {
            let d = rec_len_to_disk(len, 1 << 18).unwrap();
            assert_eq!(rec_len_from_disk(d, 1 << 18), len);
        }
        assert_eq!(rec_len_from_disk(300, 4096), 300);
    }

    #[test]
    fn add_remove_compact() {
        let opts = DirBlockOptions::new(1024, true);
        let mut b = DirBlock::new_dir(1024, opts, 12, 2, true).unwrap();
        for i in 0..20u32 {
            let name = format!("file{i:03}");
            assert!(b.add_entry(name.as_bytes(), 100 + i, 1).unwrap());
        }
        b.validate().unwrap();
        assert_eq!(b.live_entries().unwrap().len(), 22);
        assert_eq!(b.remove_entry(b"file005").unwrap(), Some(105));
        assert_eq!(b.remove_entry(b"file005").unwrap(), None);
        assert!(b.find(b"file006").unwrap().is_some());
        let free = b.compact().unwrap();
        assert_eq!(free, b.free_bytes().unwrap());
        b.validate().unwrap();
        let names: Vec<Vec<u8>> = b
            .live_entries()
            .unwrap()
            .iter()
            .map(|e| e.name.to_vec())
            .collect();
        assert_eq!(names.len(), 21);
        assert_eq!(names[0], b".");
        // Fill up.
        let mut n = 0;
        while b
            .add_entry(format!("longer_name_{n:04}").as_bytes(), 500, 1)
            .unwrap()
        {
            n += 1;
        }
        b.validate().unwrap();
        assert!(b.free_bytes().unwrap() < rec_len_for_name(16) as usize);
        b.update_checksum(7, 12, 0);
        b.verify_checksum(7, 12, 0).unwrap();
    }

    #[test]
    fn dotdot_linear_and_dx_root() {
        use crate::htree::{DxBlock, DxEntry, DxOptions};
        for csum in [false, true] {
            let opts = DirBlockOptions::new(1024, csum);
            let mut b = DirBlock::new_dir(1024, opts, 12, 2, true).unwrap();
            assert!(b.add_entry(b"a", 13, 1).unwrap());
            assert_eq!(dotdot_offset(b.as_bytes(), opts).unwrap(), 12);
            assert_eq!(dotdot_inode(b.as_bytes(), opts).unwrap(), 2);
            assert_eq!(b.dotdot_inode().unwrap(), Some(2));
            b.set_dotdot_inode(40).unwrap();
            assert_eq!(b.dotdot_inode().unwrap(), Some(40));
            let mut raw = b.clone().into_bytes();
            set_dotdot_inode(&mut raw, opts, 41).unwrap();
            assert_eq!(raw[12..16], 41u32.to_le_bytes());
            // Only the inode field changed.
            assert_eq!(raw[16..], b.as_bytes()[16..]);
            DirBlock::parse(&raw, opts).unwrap();

            let dx = DxOptions {
                block_size: 1024,
                has_csum: csum,
                largedir: false,
            };
            let entry = DxEntry { hash: 0, block: 1 };
            let root = DxBlock::new_root(dx, 12, 2, 2, 1, 0, &[entry]).unwrap();
            let mut raw = root.into_bytes();
            assert_eq!(dotdot_inode(&raw, opts).unwrap(), 2);
            set_dotdot_inode(&mut raw, opts, 77).unwrap();
            let parsed = DxBlock::parse_root(&raw, dx).unwrap();
            assert_eq!(parsed.parent_inode(), 77);
        }
    }

    #[test]
    fn dotdot_missing_or_bad() {
        let opts = DirBlockOptions::new(1024, false);
        let e = dotdot_offset(&[0u8; 1024], opts).unwrap_err();
        assert!(e.corrupt_kind().is_some());
        // A valid block without `..`.
        let b = DirBlock::build(1024, opts, &[(b".", 12, 2), (b"x", 13, 1)])
            .unwrap()
            .unwrap();
        let e = dotdot_offset(b.as_bytes(), opts).unwrap_err();
        assert_eq!(e.corrupt_kind(), Some(&CorruptKind::DirectoryDots));
        let mut b2 = b.clone();
        assert!(b2.set_dotdot_inode(5).is_err());
        assert_eq!(b2, b);
        // Short and odd buffers are errors, not panics.
        for len in [0usize, 3, 12, 31, 40] {
            let mut v = vec![0xFFu8; len];
            assert!(set_dotdot_inode(&mut v, opts, 1).is_err());
        }
    }
}
