//! The directory algorithms of [`crate::dir::write`] bound to a real filesystem: directory
//! blocks through the metadata cache (checksums set on write), new blocks from the allocator
//! mapped through the directory's extent tree, `i_size` kept in the inode; and the writer's
//! view of a directory (lookups, `..`, emptiness) on its copy of the inode.
//!
//! The store borrows the locked [`MetaState`].

use ext4kit_format::dir::{DirBlock, DirBlockOptions};
use ext4kit_format::extent::Extent;
use ext4kit_format::hash::{DirHash, dirhash};
use ext4kit_format::htree::{DxBlock, DxOptions};
use ext4kit_format::inode::{FileType, InodeFlags};
use ext4kit_format::{CorruptKind, Structure};

use crate::alloc::MetaState;
use crate::dir::DirInode;
use crate::dir::write::DirStore;
use crate::error::{Corruption, Error, PathBytes, Result, ResultExt};
use crate::extent::store::with_tree;
use crate::fs::{Core, ROOT_INO};

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

fn dir_opts(core: &Core) -> DirBlockOptions {
    DirBlockOptions::new(core.block_size, core.csum_seed.is_some())
}

fn dx_opts(core: &Core) -> DxOptions {
    DxOptions {
        block_size: core.block_size,
        has_csum: core.csum_seed.is_some(),
        largedir: false,
    }
}

/// Loads directory `dir` into the writer's inode cache (the directory stores need it there) and
/// checks that it is a directory.
pub(crate) fn load_dir(
    meta: &mut MetaState,
    core: &Core,
    dir: u32,
    name_for_error: &[u8],
) -> Result<()> {
    let inode = meta.inode(core, dir)?;
    if !inode.is_dir() {
        return Err(Error::NotDir {
            path: PathBytes(name_for_error.to_vec()),
        });
    }
    if inode.links_count() == 0 {
        return Err(Error::NotFound {
            path: PathBytes(name_for_error.to_vec()),
        });
    }
    Ok(())
}

/// The parent (`..`) of directory `dir`, as the writer sees it: the read side's one `..`
/// lookup ([`Core::dir_parent`]) on the writer's copy of the inode.
pub(crate) fn dotdot(meta: &mut MetaState, core: &Core, dir: u32) -> Result<u32> {
    if dir == ROOT_INO {
        return Ok(dir);
    }
    let inode = meta.inode(core, dir)?.clone();
    core.dir_parent(&DirInode {
        ino: dir,
        inode: &inode,
    })
}

/// Looks `name` up in directory `dir` as the writer sees it: (inode, dirent file type). The
/// read side's one lookup engine ([`Core::lookup_entry`], linear, htree and inline) on the
/// writer's copy of the inode; its blocks are the metadata cache's, changed ones included.
pub(crate) fn lookup(
    meta: &mut MetaState,
    core: &Core,
    dir: u32,
    name: &[u8],
) -> Result<Option<(u32, u8)>> {
    let inode = meta.inode(core, dir)?.clone();
    Ok(core
        .lookup_entry(
            &DirInode {
                ino: dir,
                inode: &inode,
            },
            name,
        )?
        .map(|e| (e.ino, e.file_type.map_or(0, FileType::dirent_code))))
}

/// Whether loaded directory `dir` holds nothing but `.` and `..`.
pub(crate) fn dir_is_empty(meta: &mut MetaState, core: &Core, dir: u32) -> Result<bool> {
    let mut io = DirIo {
        core,
        meta,
        ino: dir,
        parent: 0,
    };
    let indexed = io.is_indexed();
    let bs = core.block_size;
    for lblk in 0..io.nblocks() {
        let raw = io.read_block(lblk)?;
        // The dx root holds only `.` and `..`; dx nodes hold no entries.
        if indexed && (lblk == 0 || ext4kit_format::htree::detect(&raw, bs).is_some()) {
            continue;
        }
        let b = DirBlock::parse(&raw, dir_opts(core)).ctx_inode(dir)?;
        if b.live_entries()
            .ctx_inode(dir)?
            .iter()
            .any(|e| !e.is_dot_or_dotdot())
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Points `..` of loaded directory `dir` at `parent` (in the dx root when indexed).
pub(crate) fn set_dotdot(meta: &mut MetaState, core: &Core, dir: u32, parent: u32) -> Result<()> {
    let mut io = DirIo {
        core,
        meta,
        ino: dir,
        parent,
    };
    let raw = io.read_block(0)?;
    if io.is_indexed() {
        let mut root = DxBlock::parse_root(&raw, dx_opts(core)).ctx_inode(dir)?;
        root.set_parent_inode(parent);
        return io.write_dx(0, root);
    }
    let mut b = DirBlock::parse(&raw, dir_opts(core)).ctx_inode(dir)?;
    match b.set_dotdot_inode(parent) {
        Err(e) if e.corrupt_kind() == Some(&CorruptKind::DirectoryDots) => {
            return Err(
                Error::corrupt(Structure::DirectoryBlock, Corruption::DirectoryDots)
                    .with_inode(dir),
            );
        }
        r => r.ctx_inode(dir)?,
    }
    io.write_leaf(0, b)
}
