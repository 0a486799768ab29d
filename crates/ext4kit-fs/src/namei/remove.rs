//! Changing what already exists: remove names (`unlink`, `rmdir`), move them (`rename`), and
//! free an inode once its last name is gone — at once, or when the last user of its page cache
//! lets go (an orphan, see [`crate::orphan`]); plus symlinks, preallocation and hole
//! punching on top of the page cache.
//!
//! Follows fs/ext4/namei.c and inode.c:
//! - a removed entry is merged into the entry before it, or marked unused when it is the first
//!   of its block; blocks left empty stay in the directory (linear and htree alike), which is
//!   what the kernel does and what e2fsck accepts;
//! - `rename` adds the new name (or points an existing one at the moved inode), removes the old
//!   one, rewrites `..` of a directory moved to another parent, and fixes the link counts of
//!   both parents (directories past [`LINK_MAX`] keep the dir_nlink count 1, "many");
//! - an inode whose last link goes is freed with everything it owns: data blocks, extent tree
//!   blocks, its xattr block (or one reference to a shared one), its delayed-allocation
//!   reservations, then the inode itself (`i_dtime` set, bitmap bit and group counters). While
//!   something still holds its page cache (a [`Mapping`] or [`crate::FileReader`]), it stays on
//!   the orphan list instead and is freed at [`Fs::close_file`] or [`Fs::sync`].
//!
//! Directory operations set the changed directories' mtime and ctime, and the moved or unlinked
//! inode's ctime, to the current time. File data operations (`fallocate`, `punch_hole`, like
//! `write_at` and `set_size`) leave times to the caller ([`Fs::set_times`]).
//!
//! Locks: the metadata lock for directory and inode changes; never held while calling into the
//! page cache (see [`crate::alloc`]). The orphan list ([`crate::orphan`]) is
//! locked inside the metadata lock, never the other way round.

use ext4kit_format::dir::{DirBlock, DirBlockOptions};
use ext4kit_format::extent::{EXTENT_MAGIC, ExtentHeader};
use ext4kit_format::htree::{DxBlock, DxOptions};
use ext4kit_format::inode::{FileType, InodeFlags, Timestamp};
use ext4kit_format::xattr::XattrBlock;
use ext4kit_format::{CorruptKind, Structure};
use ext4kit_pagecache::Mapping;

use crate::alloc::MetaState;
use crate::dir::DirInode;
use crate::dir::write::{self as dir_write, DirStore};
use crate::error::{Corruption, Error, PathBytes, Result, ResultExt};
use crate::extent::store::{DirIo, with_tree};
use crate::fs::{Core, Fs, ROOT_INO};
use crate::namei::create::{LINK_MAX, NewInode, NewKind};

/// The current time (directory and inode change times).
pub(crate) fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanoseconds: d.subsec_nanos(),
    }
}

/// A name that can be removed or be the target of a rename (one component, not `.`/`..`).
fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > 255 {
        return Err(Error::NameTooLong {
            path: PathBytes(name.to_vec()),
        });
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".."
    {
        return Err(Error::InvalidArgument(format!(
            "{:?} is not a name that can be removed or renamed",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
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
fn load_dir(meta: &mut MetaState, core: &Core, dir: u32, name_for_error: &[u8]) -> Result<()> {
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
fn dir_is_empty(meta: &mut MetaState, core: &Core, dir: u32) -> Result<bool> {
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
fn set_dotdot(meta: &mut MetaState, core: &Core, dir: u32, parent: u32) -> Result<()> {
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

/// Whether directory `dir` is `ancestor` or lies below it (walking `..` up to the root).
fn is_within(meta: &mut MetaState, core: &Core, dir: u32, ancestor: u32) -> Result<bool> {
    let mut at = dir;
    let limit = meta.sb.inodes_count();
    for _ in 0..=limit {
        if at == ancestor {
            return Ok(true);
        }
        if at == ROOT_INO {
            return Ok(false);
        }
        meta.inode(core, at)?;
        at = dotdot(meta, core, at)?;
    }
    // More steps than inodes: the `..` chain loops.
    Err(Error::corrupt(
        Structure::DirectoryBlock,
        Corruption::TreeCycle {
            block: u64::from(at),
        },
    )
    .with_inode(dir))
}

/// A directory lost a subdirectory (`ext4_dec_count`: a count of 1 or 2 stays).
fn dec_dir_links(meta: &mut MetaState, core: &Core, dir: u32) -> Result<()> {
    let inode = meta.inode(core, dir)?;
    let l = inode.links_count();
    if l > 2 {
        inode.set_links_count(l - 1);
    }
    meta.dirty_inode(dir);
    Ok(())
}

/// A directory gained a subdirectory (`ext4_inc_count`: past [`LINK_MAX`], or from 1, it is 1).
fn inc_dir_links(meta: &mut MetaState, core: &Core, dir: u32) -> Result<()> {
    let inode = meta.inode(core, dir)?;
    let l = inode.links_count();
    inode.set_links_count(if l <= 1 || l + 1 >= LINK_MAX {
        1
    } else {
        l + 1
    });
    meta.dirty_inode(dir);
    Ok(())
}

/// Sets mtime and ctime of `ino` to `t`.
fn touch(meta: &mut MetaState, core: &Core, ino: u32, t: Timestamp) -> Result<()> {
    let inode = meta.inode(core, ino)?;
    inode.set_modification_time(t);
    inode.set_change_time(t);
    meta.dirty_inode(ino);
    Ok(())
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

/// Before a sync writes the metadata: frees the orphans nobody holds any more, and packs the
/// extent trees of changed inodes that e2fsck would find wider or deeper than needed (after
/// punches, truncates, deletes and mid-leaf splits), as its pass 1E would rebuild them.
pub(crate) fn prepare_sync(fs: &Fs) -> Result<()> {
    crate::orphan::release_at_sync(&fs.core)?;
    let core = &fs.core;
    let w = core.writer("sync")?;
    let mut meta = w.meta.lock();
    let candidates: Vec<u32> = meta
        .dirty_inodes
        .iter()
        .copied()
        .filter(|ino| {
            meta.inodes.get(ino).is_some_and(|i| {
                let b = i.block_area();
                i.links_count() > 0
                    && i.flags().contains(InodeFlags::EXTENTS)
                    && ExtentHeader::read(b)
                        .is_ok_and(|(magic, h)| magic == EXTENT_MAGIC && h.depth >= 1)
            })
        })
        .collect();
    for ino in candidates {
        with_tree(core, &mut meta, ino, 0, |t| {
            if t.needs_packing()? {
                t.rebuild_packed()
            } else {
                Ok(())
            }
        })?;
    }
    Ok(())
}

/// What happened to the inode a name pointed at when the name went away.
enum Unlinked {
    /// Still linked elsewhere, or freed already.
    Done,
    /// No links left: free it unless its page cache is in use.
    LastLink(u32),
}

impl Fs {
    /// Removes the name `name` (not a directory) from directory `dir`. The inode is freed when
    /// that was its last link, unless its page cache is still in use: then it becomes an orphan,
    /// freed by [`Fs::close_file`] or [`Fs::sync`] once nothing holds it.
    pub fn unlink(&self, dir: u32, name: &[u8]) -> Result<()> {
        check_name(name)?;
        let core = &self.core;
        let w = core.writer("unlink")?;
        let last = {
            let mut meta = w.meta.lock();
            load_dir(&mut meta, core, dir, name)?;
            let parent = dotdot(&mut meta, core, dir)?;
            let (ino, _) = lookup(&mut meta, core, dir, name)?.ok_or_else(|| Error::NotFound {
                path: PathBytes(name.to_vec()),
            })?;
            if meta.inode(core, ino)?.is_dir() {
                return Err(Error::IsDir {
                    path: PathBytes(name.to_vec()),
                });
            }
            dir_write::remove_entry(
                &mut DirIo {
                    core,
                    meta: &mut meta,
                    ino: dir,
                    parent,
                },
                name,
            )?;
            let t = now();
            touch(&mut meta, core, dir, t)?;
            drop_link(&mut meta, core, ino, t)?
        };
        self.finish_unlinked(last)?;
        self.commit_if_full()
    }

    /// Removes the empty directory `name` from directory `dir` and frees it.
    pub fn rmdir(&self, dir: u32, name: &[u8]) -> Result<()> {
        check_name(name)?;
        let core = &self.core;
        let w = core.writer("rmdir")?;
        let mut meta = w.meta.lock();
        load_dir(&mut meta, core, dir, name)?;
        let parent = dotdot(&mut meta, core, dir)?;
        let (ino, _) = lookup(&mut meta, core, dir, name)?.ok_or_else(|| Error::NotFound {
            path: PathBytes(name.to_vec()),
        })?;
        if !meta.inode(core, ino)?.is_dir() {
            return Err(Error::NotDir {
                path: PathBytes(name.to_vec()),
            });
        }
        if ino == ROOT_INO {
            return Err(Error::InvalidArgument(
                "the root directory cannot be removed".into(),
            ));
        }
        if !dir_is_empty(&mut meta, core, ino)? {
            return Err(Error::NotEmpty {
                path: PathBytes(name.to_vec()),
            });
        }
        dir_write::remove_entry(
            &mut DirIo {
                core,
                meta: &mut meta,
                ino: dir,
                parent,
            },
            name,
        )?;
        let t = now();
        touch(&mut meta, core, dir, t)?;
        dec_dir_links(&mut meta, core, dir)?;
        // Directories have no open handles in this library: freed now.
        evict_inode(&mut meta, core, ino)?;
        drop(meta);
        self.commit_if_full()
    }

    /// Renames `src_dir/src_name` to `dst_dir/dst_name`, as rename(2): an existing target is
    /// replaced (a file by a non-directory, an empty directory by a directory); a directory
    /// cannot move into its own subtree; renaming a name onto another name of the same inode
    /// does nothing.
    pub fn rename(
        &self,
        src_dir: u32,
        src_name: &[u8],
        dst_dir: u32,
        dst_name: &[u8],
    ) -> Result<()> {
        check_name(src_name)?;
        check_name(dst_name)?;
        let core = &self.core;
        let w = core.writer("rename")?;
        let last = {
            let mut meta = w.meta.lock();
            load_dir(&mut meta, core, src_dir, src_name)?;
            load_dir(&mut meta, core, dst_dir, dst_name)?;
            let src_parent = dotdot(&mut meta, core, src_dir)?;
            let dst_parent = dotdot(&mut meta, core, dst_dir)?;
            let (ino, ft) =
                lookup(&mut meta, core, src_dir, src_name)?.ok_or_else(|| Error::NotFound {
                    path: PathBytes(src_name.to_vec()),
                })?;
            if src_dir == dst_dir && src_name == dst_name {
                return Ok(());
            }
            let is_dir = meta.inode(core, ino)?.is_dir();
            let existing = lookup(&mut meta, core, dst_dir, dst_name)?;
            // The checks in rename(2)'s order: a directory into its own subtree (EINVAL), a
            // target that is an ancestor of the source (ENOTEMPTY), two names of one inode
            // (nothing to do), then the target's type and emptiness.
            if is_dir && src_dir != dst_dir && is_within(&mut meta, core, dst_dir, ino)? {
                return Err(Error::InvalidArgument(format!(
                    "cannot move directory {} into its own subtree ({})",
                    String::from_utf8_lossy(src_name),
                    String::from_utf8_lossy(dst_name)
                )));
            }
            let mut replaced_dir = false;
            if let Some((old, _)) = existing {
                let old_is_dir = meta.inode(core, old)?.is_dir();
                if old_is_dir && is_within(&mut meta, core, src_dir, old)? {
                    return Err(Error::NotEmpty {
                        path: PathBytes(dst_name.to_vec()),
                    });
                }
                if old == ino {
                    // Two names of one inode: rename(2) does nothing.
                    return Ok(());
                }
                match (is_dir, old_is_dir) {
                    (true, false) => {
                        return Err(Error::NotDir {
                            path: PathBytes(dst_name.to_vec()),
                        });
                    }
                    (false, true) => {
                        return Err(Error::IsDir {
                            path: PathBytes(dst_name.to_vec()),
                        });
                    }
                    (true, true) => {
                        if !dir_is_empty(&mut meta, core, old)? {
                            return Err(Error::NotEmpty {
                                path: PathBytes(dst_name.to_vec()),
                            });
                        }
                        replaced_dir = true;
                    }
                    (false, false) => {}
                }
            }
            if is_dir
                && src_dir != dst_dir
                && !replaced_dir
                && meta.inode(core, dst_dir)?.links_count() >= LINK_MAX
                && !meta
                    .sb
                    .has_ro_compat(ext4kit_format::RoCompatFeatures::DIR_NLINK)
            {
                return Err(Error::TooManyLinks {
                    path: PathBytes(dst_name.to_vec()),
                });
            }
            // The new name first (pointing an existing one at the inode), then the old name.
            {
                let mut io = DirIo {
                    core,
                    meta: &mut meta,
                    ino: dst_dir,
                    parent: dst_parent,
                };
                if existing.is_some() {
                    dir_write::remove_entry(&mut io, dst_name)?;
                }
                dir_write::add_entry(&mut io, dst_name, ino, ft)?;
            }
            let src_parent = if src_dir == dst_dir {
                dst_parent
            } else {
                src_parent
            };
            dir_write::remove_entry(
                &mut DirIo {
                    core,
                    meta: &mut meta,
                    ino: src_dir,
                    parent: src_parent,
                },
                src_name,
            )?
            .ok_or_else(|| Error::NotFound {
                path: PathBytes(src_name.to_vec()),
            })?;
            let t = now();
            if is_dir && src_dir != dst_dir {
                meta.inode(core, ino)?;
                set_dotdot(&mut meta, core, ino, dst_dir)?;
                dec_dir_links(&mut meta, core, src_dir)?;
                if !replaced_dir {
                    inc_dir_links(&mut meta, core, dst_dir)?;
                }
            } else if replaced_dir {
                // The replaced directory's `..` link to dst_dir is gone.
                dec_dir_links(&mut meta, core, dst_dir)?;
            }
            touch(&mut meta, core, src_dir, t)?;
            touch(&mut meta, core, dst_dir, t)?;
            {
                let inode = meta.inode(core, ino)?;
                inode.set_change_time(t);
                meta.dirty_inode(ino);
            }
            match existing {
                Some((old, _)) if replaced_dir => {
                    evict_inode(&mut meta, core, old)?;
                    Unlinked::Done
                }
                Some((old, _)) => drop_link(&mut meta, core, old, t)?,
                None => Unlinked::Done,
            }
        };
        self.finish_unlinked(last)?;
        self.commit_if_full()
    }

    /// Creates a symbolic link `name` → `target` in `dir` (a fast symlink in the inode when the
    /// target is shorter than 60 bytes, else one block). Returns its inode number.
    pub fn symlink(&self, dir: u32, name: &[u8], target: &[u8], attrs: &NewInode) -> Result<u32> {
        self.create(dir, name, &NewKind::Symlink(target.to_vec()), attrs)
    }

    /// Preallocates `offset..offset+len` of regular file `ino` as unwritten extents (reading as
    /// zeros; the page cache converts them once data written there reached the disk), growing
    /// the file to cover the range unless `keep_size`.
    pub fn fallocate(&self, ino: u32, offset: u64, len: u64, keep_size: bool) -> Result<()> {
        self.core.writer("fallocate")?;
        self.check_regular_for_write(ino)?;
        let m = self.data_mapping(ino)?;
        m.fallocate(offset, len, keep_size)
            .map_err(|e| Error::from_cache(ino, e))?;
        self.commit_if_full()
    }

    /// Punches a hole in `offset..offset+len` of regular file `ino` (the size stays): partial
    /// blocks at the edges are zeroed, whole blocks are freed (extents split as needed).
    pub fn punch_hole(&self, ino: u32, offset: u64, len: u64) -> Result<()> {
        self.core.writer("punch a hole")?;
        self.check_regular_for_write(ino)?;
        let m = self.data_mapping(ino)?;
        m.punch_hole(offset, len)
            .map_err(|e| Error::from_cache(ino, e))?;
        self.commit_if_full()
    }

    /// Lets go of a file's page cache: if the file was unlinked while `mapping` (or another
    /// handle) kept it alive and nothing else holds it now, it is freed.
    pub fn close_file(&self, mapping: Mapping) -> Result<()> {
        let ino = u32::try_from(mapping.ino()).map_err(|_| {
            Error::InvalidArgument(format!("inode number {} too large", mapping.ino()))
        })?;
        drop(mapping);
        if self.core.write.is_some() {
            crate::orphan::release_unused(&self.core, Some(ino))?;
        }
        Ok(())
    }

    fn check_regular_for_write(&self, ino: u32) -> Result<()> {
        let inode = self.core.read_inode(ino)?;
        self.core.check_regular(ino, &inode)?;
        if inode.links_count() == 0 {
            return Err(Error::NotFound {
                path: PathBytes(format!("inode {ino} (deleted)").into_bytes()),
            });
        }
        Ok(())
    }

    /// After the metadata lock is released: frees an inode whose last link went, unless its
    /// page cache is in use (then it stays an orphan).
    fn finish_unlinked(&self, u: Unlinked) -> Result<()> {
        match u {
            Unlinked::Done => Ok(()),
            Unlinked::LastLink(ino) => crate::orphan::release_if_unused(self, ino),
        }
    }
}

/// One link of non-directory `ino` went: lower its count and set its ctime; with no links left
/// it goes on the orphan list until [`Fs::finish_unlinked`] decides.
fn drop_link(meta: &mut MetaState, core: &Core, ino: u32, t: Timestamp) -> Result<Unlinked> {
    let inode = meta.inode(core, ino)?;
    let links = inode.links_count().saturating_sub(1);
    inode.set_links_count(links);
    inode.set_change_time(t);
    meta.dirty_inode(ino);
    if links > 0 {
        return Ok(Unlinked::Done);
    }
    crate::orphan::add(meta, core, ino)?;
    Ok(Unlinked::LastLink(ino))
}
