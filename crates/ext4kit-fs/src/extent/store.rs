//! The extent-tree algorithms of [`crate::extent::tree`] bound to a real filesystem: tree
//! blocks through the metadata cache (checksums set on write), blocks from the allocator,
//! `i_blocks` kept in the inode.
//!
//! The store borrows the locked [`MetaState`]; the tree works on a copy of the inode's root,
//! written back into the inode when the operation ends (`with_tree`).

use ext4kit_format::extent::ExtentNode;
use ext4kit_format::inode::InodeFlags;

use crate::alloc::MetaState;
use crate::error::{Error, Result};
use crate::extent::tree::{ExtentTree, NodeStore, ROOT_BYTES};
use crate::fs::Core;

/// Tree blocks of inode `ino`.
pub(crate) struct TreeIo<'a> {
    pub(crate) core: &'a Core,
    pub(crate) meta: &'a mut MetaState,
    pub(crate) ino: u32,
    pub(crate) generation: u32,
}

impl NodeStore for TreeIo<'_> {
    fn read_node(&mut self, pblk: u64, depth: u16) -> Result<ExtentNode> {
        self.core
            .read_extent_block(self.ino, self.generation, pblk, depth)
    }

    fn node_limit(&self) -> u64 {
        self.core.sb.blocks_count()
    }

    fn write_node(&mut self, pblk: u64, node: &ExtentNode) -> Result<()> {
        let mut node = node.clone();
        if let Some(seed) = self.core.csum_seed {
            node.update_checksum(seed, self.ino, self.generation);
        }
        let blk = self.core.cache.get_new(pblk);
        blk.write().copy_from_slice(node.as_bytes());
        blk.mark_dirty();
        Ok(())
    }

    fn alloc_node(&mut self, _goal: u64) -> Result<u64> {
        let b = self.meta.alloc_meta_block(self.core)?;
        self.meta.add_blocks(self.core, self.ino, 1)?;
        Ok(b)
    }

    fn free_node(&mut self, pblk: u64) -> Result<()> {
        self.meta.free_blocks_range(self.core, pblk, 1)?;
        self.meta.add_blocks(self.core, self.ino, -1)
    }

    fn free_data(&mut self, pblk: u64, len: u64) -> Result<()> {
        self.meta.free_blocks_range(self.core, pblk, len)?;
        self.meta.add_blocks(self.core, self.ino, -(len as i64))
    }
}

/// Runs `f` on the extent tree of `ino` and stores the (changed) root back in the inode.
pub(crate) fn with_tree<T>(
    core: &Core,
    meta: &mut MetaState,
    ino: u32,
    goal: u64,
    f: impl FnOnce(&mut ExtentTree<'_, TreeIo<'_>>) -> Result<T>,
) -> Result<T> {
    let inode = meta.inode(core, ino)?;
    if !inode.flags().contains(InodeFlags::EXTENTS) {
        return Err(Error::unsupported(crate::error::Unsupported::Other(
            format!(
                "inode {ino} maps its blocks indirectly (ext2/ext3); writing it is not supported"
            ),
        )));
    }
    let generation = inode.generation();
    let mut root = [0u8; ROOT_BYTES];
    root.copy_from_slice(&inode.block_area()[..ROOT_BYTES]);
    let before = root;
    let bs = core.block_size as usize;
    let result = {
        let mut io = TreeIo {
            core,
            meta,
            ino,
            generation,
        };
        let mut tree = ExtentTree::new(&mut root, &mut io, bs, goal);
        f(&mut tree)
    };
    if root != before {
        let inode = meta.inode(core, ino)?;
        inode.block_area_mut()[..ROOT_BYTES].copy_from_slice(&root);
        meta.dirty_inode(ino);
    }
    result
}
