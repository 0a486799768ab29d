//! Writing extended attributes: in the inode's extra space first, the rest in one xattr block
//! (like the kernel: small attributes in the inode body, what does not fit in a block of its own
//! with `h_refcount` 1).
//!
//! [`Fs::set_xattrs`] replaces an inode's whole set; [`Fs::set_xattr`] / [`Fs::remove_xattr`]
//! change one attribute of the current set. Values are as setxattr(2) takes them: POSIX ACLs
//! in the getxattr(2) form are stored in ext4's own (version 1) form.

use ext4kit_format::Structure;
use ext4kit_format::xattr::{
    XattrBlock, XattrSpec, build_block, build_ibody, has_ibody_magic, parse_ibody, value_of,
};

use crate::alloc::MetaState;
use crate::error::{Error, PathBytes, Result, ResultExt};
use crate::fs::{Core, Fs};
use crate::xattr::acl::acls_to_disk;

/// An attribute: full name (`user.foo`) and value.
pub type XattrPair = (Vec<u8>, Vec<u8>);

/// Reads the attributes of `ino` under the metadata lock.
pub(crate) fn read_all(core: &Core, meta: &mut MetaState, ino: u32) -> Result<Vec<XattrPair>> {
    let inode = meta.inode(core, ino)?.clone();
    let mut out = Vec::new();
    let area = inode.xattr_area();
    if has_ibody_magic(area) {
        for e in parse_ibody(area, false).ctx_inode(ino)? {
            if let Some(name) = e.full_name() {
                out.push((name, value_of(area, &e).to_vec()));
            }
        }
    }
    let blk = inode.file_acl();
    if blk != 0 {
        let b = core.cache.get(blk).ctx_inode(ino)?;
        let x = XattrBlock::parse(&b.read(), false)
            .ctx_inode(ino)
            .ctx_block(blk)?;
        for e in x.entries() {
            if let Some(name) = e.full_name() {
                out.push((name, x.value(e).to_vec()));
            }
        }
    }
    Ok(out)
}

/// `h_refcount` of xattr block `blk` of `ino`.
fn xattr_block_refcount(core: &Core, ino: u32, blk: u64) -> Result<u32> {
    let b = core.cache.get(blk).ctx_inode(ino)?;
    let x = XattrBlock::parse(&b.read(), core.ea_inode)
        .ctx_inode(ino)
        .ctx_block(blk)?;
    Ok(x.refcount())
}

/// Replaces every attribute of `ino` with `attrs` (under the metadata lock). POSIX ACLs may
/// come in the getxattr(2) form and are stored in ext4's ([`acls_to_disk`]).
pub(crate) fn write_all(
    core: &Core,
    meta: &mut MetaState,
    ino: u32,
    attrs: &[XattrPair],
) -> Result<()> {
    let bs = core.block_size as usize;
    let (area_len, old_block, is_dir) = {
        let inode = meta.inode(core, ino)?;
        (inode.xattr_area().len(), inode.file_acl(), inode.is_dir())
    };
    let attrs = acls_to_disk(attrs, is_dir)?;
    let mut body: Vec<XattrSpec> = Vec::new();
    let mut block: Vec<XattrSpec> = Vec::new();
    for (name, value) in &attrs {
        if name.len() > 255 || value.len() > bs {
            return Err(Error::InvalidArgument(format!(
                "attribute {} is too large",
                String::from_utf8_lossy(name)
            )));
        }
        let spec = XattrSpec::inline(name, value);
        let mut trial = body.clone();
        trial.push(spec.clone());
        if area_len >= 8 && build_ibody(area_len, &trial)?.is_some() {
            body = trial;
        } else {
            block.push(spec);
        }
    }
    // The inode body.
    {
        let raw = if body.is_empty() {
            vec![0u8; area_len]
        } else {
            build_ibody(area_len, &body)?.unwrap_or_else(|| vec![0u8; area_len])
        };
        let inode = meta.inode(core, ino)?;
        inode.xattr_area_mut().copy_from_slice(&raw);
    }
    // The block: rewrite in place when this inode is its only user, else (none, or one shared
    // with other inodes, h_refcount > 1) drop the reference and allocate a block of its own.
    let old_block = if old_block != 0
        && (block.is_empty() || xattr_block_refcount(core, ino, old_block)? > 1)
    {
        release_xattr_block(meta, core, ino, old_block)?;
        0
    } else {
        old_block
    };
    if !block.is_empty() {
        let mut b = build_block(bs, &block, false)?.ok_or_else(|| {
            Error::NoSpace(format!("inode {ino}: attributes do not fit one block"))
        })?;
        let pblk = if old_block != 0 {
            old_block
        } else {
            let ipg = meta.sb.inodes_per_group();
            let goal = meta
                .groups
                .get(((ino - 1) / ipg) as usize)
                .map_or(0, |g| g.inode_table());
            let (p, _) = meta.alloc_blocks(core, goal, 1)?;
            meta.add_blocks(core, ino, 1)?;
            meta.inode(core, ino)?.set_file_acl(p)?;
            p
        };
        if let Some(seed) = core.csum_seed {
            b.update_checksum(seed, pblk);
        }
        let blk = core.cache.get_new(pblk);
        blk.write().copy_from_slice(b.as_bytes());
        blk.mark_dirty();
    }
    meta.dirty_inode(ino);
    Ok(())
}

impl Fs {
    /// Replaces all extended attributes of `ino`.
    pub fn set_xattrs(&self, ino: u32, attrs: &[XattrPair]) -> Result<()> {
        let core = &self.core;
        let w = core.writer("set attributes")?;
        let mut meta = w.meta.lock();
        write_all(core, &mut meta, ino, attrs)?;
        drop(meta);
        self.commit_if_full()
    }

    /// Sets one extended attribute of `ino` (adding or replacing it).
    pub fn set_xattr(&self, ino: u32, name: &[u8], value: &[u8]) -> Result<()> {
        let core = &self.core;
        let w = core.writer("set attribute")?;
        let mut meta = w.meta.lock();
        let mut all = read_all(core, &mut meta, ino)?;
        match all.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.to_vec(),
            None => all.push((name.to_vec(), value.to_vec())),
        }
        write_all(core, &mut meta, ino, &all)?;
        drop(meta);
        self.commit_if_full()
    }

    /// Removes one extended attribute of `ino`.
    pub fn remove_xattr(&self, ino: u32, name: &[u8]) -> Result<()> {
        let core = &self.core;
        let w = core.writer("remove attribute")?;
        let mut meta = w.meta.lock();
        let mut all = read_all(core, &mut meta, ino)?;
        let before = all.len();
        all.retain(|(n, _)| n != name);
        if all.len() == before {
            return Err(Error::NoXattr {
                ino,
                name: PathBytes(name.to_vec()),
            });
        }
        write_all(core, &mut meta, ino, &all)?;
        drop(meta);
        self.commit_if_full()
    }
}

/// Drops one reference to xattr block `blk` of `ino`: frees it when it was the last, else
/// lowers its `h_refcount` (a block shared by several inodes, as the kernel's mbcache makes).
/// Clears `i_file_acl` and takes the block out of `i_blocks`.
pub(crate) fn release_xattr_block(
    meta: &mut MetaState,
    core: &Core,
    ino: u32,
    blk: u64,
) -> Result<()> {
    core.check_range(Structure::XattrBlock, blk, 1)
        .ctx_inode(ino)?;
    let mb = core.cache.get(blk).ctx_inode(ino)?;
    let mut x = XattrBlock::parse(&mb.read(), core.ea_inode)
        .ctx_inode(ino)
        .ctx_block(blk)?;
    let rc = x.refcount();
    if rc > 1 {
        x.set_refcount(rc - 1);
        if let Some(seed) = core.csum_seed {
            x.update_checksum(seed, blk);
        }
        mb.write().copy_from_slice(x.as_bytes());
        mb.mark_dirty();
    } else {
        drop(mb);
        meta.free_blocks_range(core, blk, 1)?;
    }
    meta.add_blocks(core, ino, -1)?;
    meta.inode(core, ino)?.set_file_acl(0)?;
    meta.dirty_inode(ino);
    Ok(())
}
