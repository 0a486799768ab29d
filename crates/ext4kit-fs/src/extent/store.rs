//! The extent-tree and directory algorithms bound to a real filesystem: tree blocks and
//! directory blocks through the metadata cache (checksums set on write), blocks from the
//! allocator, `i_blocks` and `i_size` kept in the inode.
//!
//! Both stores borrow the locked [`MetaState`]; the extent tree works on a copy of the inode's
//! root, written back into the inode when the operation ends (`with_tree`).

use ext4kit_format::Structure;
use ext4kit_format::dir::DirBlock;
use ext4kit_format::extent::{Extent, ExtentNode};
use ext4kit_format::hash::{DirHash, dirhash};
use ext4kit_format::htree::DxBlock;
use ext4kit_format::inode::InodeFlags;

use crate::alloc::MetaState;
use crate::dir::write::DirStore;
use crate::error::{Corruption, Error, Result, ResultExt};
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

/// A directory's blocks (metadata, through the metadata cache).
pub(crate) struct DirIo<'a> {
    pub(crate) core: &'a Core,
    pub(crate) meta: &'a mut MetaState,
    pub(crate) ino: u32,
    pub(crate) parent: u32,
}

impl DirIo<'_> {
    fn pblk_of(&mut self, lblk: u32) -> Result<u64> {
        let ino = self.ino;
        let e = with_tree(self.core, self.meta, ino, 0, |t| t.lookup(lblk))?;
        match e {
            Some(e) if !e.unwritten => Ok(e.physical_block + u64::from(lblk - e.logical_block)),
            _ => Err(Error::corrupt(
                Structure::DirectoryBlock,
                Corruption::DirectoryHole {
                    lblk: u64::from(lblk),
                },
            )
            .with_inode(ino)),
        }
    }

    fn generation(&mut self) -> Result<u32> {
        Ok(self.meta.inode(self.core, self.ino)?.generation())
    }
}

impl DirStore for DirIo<'_> {
    fn block_size(&self) -> u32 {
        self.core.block_size
    }

    fn has_csum(&self) -> bool {
        self.core.csum_seed.is_some()
    }

    fn can_index(&self) -> bool {
        self.meta
            .sb
            .has_compat(ext4kit_format::CompatFeatures::DIR_INDEX)
    }

    fn hash(&self, name: &[u8]) -> Result<DirHash> {
        let v = self.meta.sb.default_hash_version().ok_or_else(|| {
            Error::unsupported(crate::error::Unsupported::Other(format!(
                "hash version {} of the superblock",
                self.meta.sb.def_hash_version()
            )))
        })?;
        Ok(dirhash(name, v, &self.meta.sb.hash_seed())?)
    }

    fn root_hash_version(&self) -> u8 {
        self.meta.sb.def_hash_version()
    }

    fn inos(&self) -> (u32, u32) {
        (self.ino, self.parent)
    }

    fn nblocks(&self) -> u32 {
        let bs = u64::from(self.core.block_size);
        self.meta
            .inodes
            .get(&self.ino)
            .map_or(0, |i| (i.size() / bs) as u32)
    }

    fn read_block(&mut self, lblk: u32) -> Result<Vec<u8>> {
        let pblk = self.pblk_of(lblk)?;
        let blk = self.core.cache.get(pblk).ctx_inode(self.ino)?;
        let v = blk.read().to_vec();
        Ok(v)
    }

    fn write_leaf(&mut self, lblk: u32, mut block: DirBlock) -> Result<()> {
        let pblk = self.pblk_of(lblk)?;
        if let Some(seed) = self.core.csum_seed {
            let generation = self.generation()?;
            block.init_tail();
            block.update_checksum(seed, self.ino, generation);
        }
        let blk = self.core.cache.get_new(pblk);
        blk.write().copy_from_slice(block.as_bytes());
        blk.mark_dirty();
        Ok(())
    }

    fn write_dx(&mut self, lblk: u32, mut block: DxBlock) -> Result<()> {
        let pblk = self.pblk_of(lblk)?;
        if let Some(seed) = self.core.csum_seed {
            let generation = self.generation()?;
            block.update_checksum(seed, self.ino, generation);
        }
        let blk = self.core.cache.get_new(pblk);
        blk.write().copy_from_slice(block.as_bytes());
        blk.mark_dirty();
        Ok(())
    }

    fn append_block(&mut self) -> Result<u32> {
        let lblk = self.nblocks();
        let ino = self.ino;
        let core = self.core;
        // Right after the directory's last block, else near its inode.
        let goal = if lblk > 0 {
            self.pblk_of(lblk - 1).map(|p| p + 1).unwrap_or(0)
        } else {
            let ipg = self.meta.sb.inodes_per_group();
            let g = (ino - 1) / ipg;
            self.meta
                .groups
                .get(g as usize)
                .map_or(0, |gd| gd.inode_table())
        };
        let (pblk, _) = self.meta.alloc_blocks(core, goal, 1)?;
        self.meta.add_blocks(core, ino, 1)?;
        with_tree(core, self.meta, ino, pblk, |t| {
            t.insert(Extent {
                logical_block: lblk,
                len: 1,
                physical_block: pblk,
                unwritten: false,
            })
        })?;
        let bs = u64::from(core.block_size);
        let inode = self.meta.inode(core, ino)?;
        inode.set_size(u64::from(lblk + 1) * bs);
        self.meta.dirty_inode(ino);
        Ok(lblk)
    }

    fn is_indexed(&self) -> bool {
        self.meta
            .inodes
            .get(&self.ino)
            .is_some_and(|i| i.flags().contains(InodeFlags::INDEX))
    }

    fn set_indexed(&mut self, on: bool) {
        let core = self.core;
        if let Ok(inode) = self.meta.inode(core, self.ino) {
            let mut f = inode.flags();
            if on {
                f.insert(InodeFlags::INDEX);
            } else {
                f.remove(InodeFlags::INDEX);
            }
            inode.set_flags(f);
            self.meta.dirty_inode(self.ino);
        }
    }
}
