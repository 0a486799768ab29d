//! A new inode's fields (mode, owner, times, generation, links, an empty extent root) and where
//! a symlink keeps its target: in `i_block` when shorter than 60 bytes (fast), else in one
//! extent-mapped block.

use ext4kit_format::extent::{ExtentNode, NodeLocation};
use ext4kit_format::inline_data::set_fast_symlink;
use ext4kit_format::inode::{Inode, InodeFlags};

use crate::alloc::MetaState;
use crate::error::{Error, PathBytes, Result};
use crate::inode::{NewInode, NewKind};

/// Sets up the fields every new inode has.
pub(crate) fn init_inode_no_blocks(
    meta: &mut MetaState,
    core: &crate::fs::Core,
    ino: u32,
    kind: &NewKind,
    attrs: &NewInode,
) -> Result<()> {
    let isz = usize::from(meta.sb.inode_size());
    let extra = if isz > 128 { 32 } else { 0 };
    let mut inode = Inode::new(isz, extra)?;
    inode.set_mode(kind.file_type().mode_bits() | (attrs.perm & 0o7777));
    inode.set_uid(attrs.uid);
    inode.set_gid(attrs.gid);
    inode.set_access_time(attrs.atime);
    inode.set_modification_time(attrs.mtime);
    inode.set_change_time(attrs.ctime);
    inode.set_creation_time(attrs.crtime);
    let generation = meta.generation();
    inode.set_generation(generation);
    let is_dir = matches!(kind, NewKind::Directory);
    inode.set_links_count(if is_dir { 2 } else { 1 });
    let mut flags = InodeFlags::default();
    match kind {
        NewKind::Regular | NewKind::Directory => {
            flags.insert(InodeFlags::EXTENTS);
            let root = ExtentNode::new_leaf(60, NodeLocation::Inode);
            inode.block_area_mut()[..60].copy_from_slice(root.as_bytes());
        }
        NewKind::Symlink(_) => {}
        NewKind::CharDevice(maj, min) | NewKind::BlockDevice(maj, min) => {
            inode.set_device_number(*maj, *min)?
        }
        NewKind::Fifo | NewKind::Socket => {}
    }
    inode.set_flags(flags);
    let _ = core;
    meta.inodes.insert(ino, inode);
    meta.dirty_inode(ino);
    Ok(())
}

/// Stores a symlink target: in `i_block` when short (fast symlink), else in a block.
pub(crate) fn write_symlink(
    meta: &mut MetaState,
    core: &crate::fs::Core,
    ino: u32,
    target: &[u8],
) -> Result<()> {
    let bs = core.block_size as usize;
    if target.is_empty() || target.len() >= bs || target.contains(&0) {
        // The link's path is the caller's to add; the target itself can be 4 KiB long.
        return Err(Error::NameTooLong {
            path: PathBytes(
                format!(
                    "symlink target of {} bytes (at most {} fit)",
                    target.len(),
                    bs - 1
                )
                .into_bytes(),
            ),
        });
    }
    if target.len() < 60 {
        let inode = meta.inode(core, ino)?;
        set_fast_symlink(inode, target)?;
        inode.set_size(target.len() as u64);
        meta.dirty_inode(ino);
        return Ok(());
    }
    // Slow symlink: an extent-mapped data block holding the target.
    {
        let inode = meta.inode(core, ino)?;
        let mut f = inode.flags();
        f.insert(InodeFlags::EXTENTS);
        inode.set_flags(f);
        let root = ExtentNode::new_leaf(60, NodeLocation::Inode);
        inode.block_area_mut()[..60].copy_from_slice(root.as_bytes());
    }
    let ipg = meta.sb.inodes_per_group();
    let goal = meta
        .groups
        .get(((ino - 1) / ipg) as usize)
        .map_or(0, |g| g.inode_table());
    let (pblk, _) = meta.alloc_blocks(core, goal, 1)?;
    meta.add_blocks(core, ino, 1)?;
    crate::extent::store::with_tree(core, meta, ino, pblk, |t| {
        t.insert(ext4kit_format::extent::Extent {
            logical_block: 0,
            len: 1,
            physical_block: pblk,
            unwritten: false,
        })
    })?;
    let blk = core.cache.get_new(pblk);
    blk.write()[..target.len()].copy_from_slice(target);
    blk.mark_dirty();
    let inode = meta.inode(core, ino)?;
    inode.set_size(target.len() as u64);
    meta.dirty_inode(ino);
    Ok(())
}
