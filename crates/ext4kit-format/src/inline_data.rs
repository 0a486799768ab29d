//! Inline data (incompat `inline_data`) and symlink storage.
//!
//! An inode with `EXT4_INLINE_DATA_FL` keeps its first 60 bytes in `i_block`
//! and the rest in the value of the in-inode xattr `system.data` (index 7,
//! name `data`). Inline directories start `i_block` with the parent's inode
//! number (4 bytes) followed by a 56-byte dirent region; the `system.data`
//! value, if non-empty, is a second dirent region. `.` and `..` are implicit.
//!
//! Symlinks are fast (target in `i_block`, no data blocks), inline (inline
//! data), or slow (target in a data block). [`symlink_storage`] decides like the
//! kernel's `ext4_inode_is_fast_symlink`.

use alloc::vec::Vec;

use crate::dir::{DirBlock, DirBlockOptions};
use crate::error::{CorruptKind, FormatError, Result, Structure};
use crate::features::{IncompatFeatures, RoCompatFeatures};
use crate::inode::{I_BLOCK_SIZE, Inode, InodeFlags};
use crate::superblock::Superblock;
use crate::xattr::{INDEX_SYSTEM, parse_ibody, value_of};

/// Bytes of inline data held in `i_block` (`EXT4_MIN_INLINE_DATA_SIZE`).
pub const MIN_INLINE_DATA_SIZE: usize = I_BLOCK_SIZE;
/// Size of the parent inode number at the start of an inline directory.
pub const INLINE_DOTDOT_SIZE: usize = 4;
/// Name suffix of the inline data xattr (`system.data`).
pub const SYSTEM_DATA_NAME: &[u8] = b"data";
/// Longest fast symlink target (the target plus its NUL must fit 60 bytes).
pub const FAST_SYMLINK_MAX_LEN: usize = I_BLOCK_SIZE - 1;

/// The `system.data` value of an inode, if present.
pub fn system_data(inode: &Inode, ea_inode_feature: bool) -> Result<Option<Vec<u8>>> {
    let area = inode.xattr_area();
    let entries = parse_ibody(area, ea_inode_feature)?;
    Ok(entries
        .iter()
        .find(|e| e.name_index == INDEX_SYSTEM && e.name == SYSTEM_DATA_NAME)
        .map(|e| value_of(area, e).to_vec()))
}

/// Capacity of an inode's inline data: 60 + the `system.data` value length.
pub fn inline_capacity(inode: &Inode, ea_inode_feature: bool) -> Result<usize> {
    Ok(MIN_INLINE_DATA_SIZE + system_data(inode, ea_inode_feature)?.map_or(0, |v| v.len()))
}

/// The inline contents of a regular file or symlink (`i_size` bytes); fails
/// if `i_size` exceeds the inline capacity.
pub fn read_inline_data(inode: &Inode, ea_inode_feature: bool) -> Result<Vec<u8>> {
    let extra = system_data(inode, ea_inode_feature)?.unwrap_or_default();
    let size = inode.size();
    if size > (MIN_INLINE_DATA_SIZE + extra.len()) as u64 {
        return Err(FormatError::corrupt(
            Structure::InlineData,
            CorruptKind::InlineDataSize(size),
        ));
    }
    let mut data = inode.block_area().to_vec();
    data.extend_from_slice(&extra);
    data.truncate(size as usize);
    Ok(data)
}

/// Splits file contents into the `i_block` part (zero padded) and the
/// `system.data` value (empty if the data fits in 60 bytes).
pub fn split_inline_data(data: &[u8]) -> ([u8; I_BLOCK_SIZE], Vec<u8>) {
    let mut head = [0u8; I_BLOCK_SIZE];
    let n = data.len().min(I_BLOCK_SIZE);
    head[..n].copy_from_slice(&data[..n]);
    (head, data.get(I_BLOCK_SIZE..).unwrap_or(&[]).to_vec())
}

/// An inline directory: parent inode and one or two dirent regions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineDir {
    /// Inode of `..`.
    pub parent: u32,
    /// The 56-byte region in `i_block` after the parent.
    pub head: DirBlock,
    /// The `system.data` region, if non-empty.
    pub tail: Option<DirBlock>,
}

impl InlineDir {
    /// Parses an inline directory inode.
    pub fn parse(inode: &Inode, block_size: u32, ea_inode_feature: bool) -> Result<Self> {
        let opts = DirBlockOptions::new(block_size, false);
        let ib = inode.block_area();
        let parent = dotdot_of_i_block(ib);
        let head = DirBlock::parse(&ib[INLINE_DOTDOT_SIZE..], opts)
            .map_err(|e| with_structure(e, Structure::InlineData))?;
        let tail = match system_data(inode, ea_inode_feature)? {
            Some(v) if !v.is_empty() => Some(
                DirBlock::parse(&v, opts).map_err(|e| with_structure(e, Structure::InlineData))?,
            ),
            _ => None,
        };
        Ok(InlineDir { parent, head, tail })
    }

    /// `i_block` contents for a new empty inline directory with parent `parent`.
    pub fn new_i_block(parent: u32, block_size: u32) -> Result<[u8; I_BLOCK_SIZE]> {
        let mut ib = [0u8; I_BLOCK_SIZE];
        ib[..4].copy_from_slice(&parent.to_le_bytes());
        let region = DirBlock::new_empty(
            I_BLOCK_SIZE - INLINE_DOTDOT_SIZE,
            DirBlockOptions::new(block_size, false),
        )?;
        ib[INLINE_DOTDOT_SIZE..].copy_from_slice(region.as_bytes());
        Ok(ib)
    }
}

fn dotdot_of_i_block(ib: &[u8; I_BLOCK_SIZE]) -> u32 {
    u32::from_le_bytes([ib[0], ib[1], ib[2], ib[3]])
}

/// Whether `inode` is a directory whose entries are inline data.
fn is_inline_dir(inode: &Inode) -> bool {
    inode.is_dir() && inode.flags().contains(InodeFlags::INLINE_DATA)
}

/// The parent (`..`) of an inline-data directory: the le32 at the start of
/// `i_block`. [`CorruptKind::DirectoryDots`] if `inode` is not an inline-data
/// directory.
pub fn dotdot_inode(inode: &Inode) -> Result<u32> {
    if !is_inline_dir(inode) {
        return Err(FormatError::corrupt(
            Structure::InlineData,
            CorruptKind::DirectoryDots,
        ));
    }
    Ok(dotdot_of_i_block(inode.block_area()))
}

/// Points `..` of an inline-data directory at `parent` (the block-based
/// forms are [`crate::dir::set_dotdot_inode`]). The inode checksum is not
/// updated. [`CorruptKind::DirectoryDots`] if `inode` is not an inline-data
/// directory.
pub fn set_dotdot_inode(inode: &mut Inode, parent: u32) -> Result<()> {
    if !is_inline_dir(inode) {
        return Err(FormatError::corrupt(
            Structure::InlineData,
            CorruptKind::DirectoryDots,
        ));
    }
    inode.block_area_mut()[..INLINE_DOTDOT_SIZE].copy_from_slice(&parent.to_le_bytes());
    Ok(())
}

fn with_structure(e: FormatError, s: Structure) -> FormatError {
    match e {
        FormatError::Corrupt { what, context, .. } => FormatError::Corrupt {
            structure: s,
            what,
            context,
        },
        other => other,
    }
}

/// How a symlink stores its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SymlinkStorage {
    /// In `i_block` (fast symlink).
    Fast,
    /// As inline data.
    Inline,
    /// In data blocks (slow symlink).
    Blocks,
}

/// Decides how a symlink inode stores its target, like the kernel: inline
/// data if flagged; otherwise, without ea_inode, fast iff it has no blocks
/// besides an xattr block; with ea_inode, fast iff 0 < size < 60.
pub fn symlink_storage(inode: &Inode, sb: &Superblock) -> SymlinkStorage {
    if inode.flags().contains(InodeFlags::INLINE_DATA) {
        return SymlinkStorage::Inline;
    }
    let fast = if sb.has_incompat(IncompatFeatures::EA_INODE) {
        inode.size() > 0 && inode.size() < I_BLOCK_SIZE as u64
    } else {
        let ea_blocks = if inode.file_acl() != 0 {
            u64::from(sb.cluster_size() >> 9)
        } else {
            0
        };
        let blocks = inode.block_count_512(
            sb.has_ro_compat(RoCompatFeatures::HUGE_FILE),
            sb.block_size_bits(),
        );
        blocks.saturating_sub(ea_blocks) == 0
    };
    if fast {
        SymlinkStorage::Fast
    } else {
        SymlinkStorage::Blocks
    }
}

/// The target of a fast symlink; fails like the kernel ("invalid fast
/// symlink length") if the size is 0, ≥ 60, or the target contains a NUL.
pub fn fast_symlink_target(inode: &Inode) -> Result<&[u8]> {
    let size = inode.size();
    let bad = || FormatError::corrupt(Structure::Symlink, CorruptKind::FastSymlink(size));
    if size == 0 || size >= I_BLOCK_SIZE as u64 {
        return Err(bad());
    }
    let t = &inode.block_area()[..size as usize];
    if t.contains(&0) {
        return Err(bad());
    }
    Ok(t)
}

/// Stores `target` as a fast symlink: `i_block` holds it NUL-padded, `i_size`
/// its length, and the EXTENTS flag is cleared. Fails if it is empty or longer
/// than 59 bytes (use a data block then).
pub fn set_fast_symlink(inode: &mut Inode, target: &[u8]) -> Result<()> {
    if target.is_empty() || target.len() > FAST_SYMLINK_MAX_LEN || target.contains(&0) {
        return Err(FormatError::unrepresentable(
            Structure::Symlink,
            "i_block",
            target.len() as u64,
        ));
    }
    let ib = inode.block_area_mut();
    ib.fill(0);
    ib[..target.len()].copy_from_slice(target);
    inode.set_size(target.len() as u64);
    let mut f = inode.flags();
    f.remove(InodeFlags::EXTENTS);
    inode.set_flags(f);
    Ok(())
}

/// `true` if a symlink target of this length must go in a data block.
pub fn symlink_needs_block(target_len: usize) -> bool {
    target_len > FAST_SYMLINK_MAX_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_symlink() {
        let mut i = Inode::new(256, 32).unwrap();
        i.set_mode(0o120777);
        set_fast_symlink(&mut i, b"/some/target").unwrap();
        assert_eq!(fast_symlink_target(&i).unwrap(), b"/some/target");
        assert!(set_fast_symlink(&mut i, &[b'a'; 60]).is_err());
        set_fast_symlink(&mut i, &[b'a'; 59]).unwrap();
        i.set_size(60);
        assert_eq!(
            fast_symlink_target(&i).unwrap_err().corrupt_kind(),
            Some(&CorruptKind::FastSymlink(60))
        );
    }

    #[test]
    fn inline_split() {
        let (h, t) = split_inline_data(&[7u8; 70]);
        assert_eq!(h, [7u8; 60]);
        assert_eq!(t.len(), 10);
        let ib = InlineDir::new_i_block(2, 4096).unwrap();
        assert_eq!(&ib[..4], &2u32.to_le_bytes());
    }

    #[test]
    fn inline_dotdot() {
        let mut i = Inode::new(256, 32).unwrap();
        i.set_mode(0o040755);
        // Not inline: refused, nothing changes.
        assert!(dotdot_inode(&i).is_err());
        assert!(set_dotdot_inode(&mut i, 5).is_err());
        assert_eq!(i.block_area(), &[0u8; I_BLOCK_SIZE]);
        let mut f = i.flags();
        f.insert(InodeFlags::INLINE_DATA);
        i.set_flags(f);
        i.block_area_mut()
            .copy_from_slice(&InlineDir::new_i_block(2, 4096).unwrap());
        assert_eq!(dotdot_inode(&i).unwrap(), 2);
        let before = *i.block_area();
        set_dotdot_inode(&mut i, 0x0102_0304).unwrap();
        assert_eq!(dotdot_inode(&i).unwrap(), 0x0102_0304);
        assert_eq!(i.block_area()[..4], [4, 3, 2, 1]);
        assert_eq!(i.block_area()[4..], before[4..]);
        assert_eq!(
            InlineDir::parse(&i, 4096, false).unwrap().parent,
            0x0102_0304
        );
    }
}
