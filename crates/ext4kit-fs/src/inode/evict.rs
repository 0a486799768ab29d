//! Freeing an inode whose last link is gone, with everything it owns (`ext4_evict_inode`):
//! data and extent-tree blocks, one reference to its xattr block, its delayed-allocation
//! reservations, then the inode itself (`i_dtime`, bitmap bit, group counters).

use ext4kit_format::inode::{FileType, InodeFlags};

use crate::alloc::MetaState;
use crate::error::{Error, Result};
use crate::extent::store::with_tree;
use crate::fs::Core;
use crate::inode::now;
use crate::xattr::write::release_xattr_block;

/// Frees inode `ino` and everything it owns (its links must be gone): data and extent-tree
/// blocks, its xattr block reference, delayed-allocation reservations, then the inode (dtime,
/// bitmap, group counters). Takes it off the orphan list. No page cache may hold it.
pub(crate) fn evict_inode(meta: &mut MetaState, core: &Core, ino: u32) -> Result<()> {
    let inode = meta.inode(core, ino)?.clone();
    let is_dir = inode.is_dir();
    let ft = inode.file_type();
    let mapped = matches!(
        ft,
        Some(FileType::Regular | FileType::Directory | FileType::Symlink)
    );
    if mapped && inode.flags().contains(InodeFlags::EXTENTS) {
        with_tree(core, meta, ino, 0, |t| t.remove_range(0, 1 << 32))?;
    } else if mapped && !inode.flags().contains(InodeFlags::INLINE_DATA) {
        // Fast symlinks keep their target in i_block; anything else mapped without extents
        // uses ext2/ext3 indirect blocks.
        let fast_symlink = ft == Some(FileType::Symlink)
            && ext4kit_format::inline_data::symlink_storage(&inode, &meta.sb)
                == ext4kit_format::inline_data::SymlinkStorage::Fast;
        if !fast_symlink && inode.block_area().iter().any(|b| *b != 0) {
            return Err(Error::unsupported(crate::error::Unsupported::Other(
                format!(
                    "inode {ino} maps its blocks indirectly (ext2/ext3); deleting it is not supported"
                ),
            )));
        }
    }
    if inode.file_acl() != 0 {
        release_xattr_block(meta, core, ino, inode.file_acl())?;
    }
    // Delayed blocks nobody will write any more.
    if let Some(r) = meta.reserved_by.remove(&ino) {
        meta.reserved = meta.reserved.saturating_sub(r);
    }
    crate::orphan::forget(meta, core, ino)?;
    let huge = meta
        .sb
        .has_ro_compat(ext4kit_format::RoCompatFeatures::HUGE_FILE);
    let bits = meta.sb.block_size_bits();
    let t = now();
    {
        let inode = meta.inode(core, ino)?;
        inode.set_links_count(0);
        inode.set_size(0);
        inode.set_dtime(u32::try_from(t.seconds).unwrap_or(u32::MAX).max(1));
        inode
            .set_block_count_512(0, huge, bits)
            .map_err(Error::from)?;
        if inode.flags().contains(InodeFlags::EXTENTS) {
            crate::extent::tree::ExtentTree::<crate::extent::store::TreeIo<'_>>::init_root(
                inode.block_area_mut(),
            );
        }
    }
    meta.dirty_inode(ino);
    meta.free_inode(core, ino, is_dir)
}
