//! Removing and moving names: `unlink`, `rmdir`, `rename`; an inode whose last name goes is
//! freed (`inode/evict.rs`) — at once, or when the last user of its page cache lets go
//! (an orphan, see [`crate::orphan`]).
//!
//! Follows fs/ext4/namei.c and inode.c:
//! - a removed entry is merged into the entry before it, or marked unused when it is the first
//!   of its block; blocks left empty stay in the directory (linear and htree alike), which is
//!   what the kernel does and what e2fsck accepts;
//! - `rename` adds the new name (or points an existing one at the moved inode), removes the old
//!   one, rewrites `..` of a directory moved to another parent, and fixes the link counts of
//!   both parents (directories past [`LINK_MAX`] keep the dir_nlink count 1, "many");
//! - while something still holds the page cache of an inode whose last link went (a
//!   [`ext4kit_pagecache::Mapping`] or [`crate::FileReader`]), it stays on the orphan list and
//!   is freed at [`Fs::close_file`] or [`Fs::sync`].
//!
//! Directory operations set the changed directories' mtime and ctime, and the moved or unlinked
//! inode's ctime, to the current time.
//!
//! Locks: the metadata lock for directory and inode changes; never held while calling into the
//! page cache (see [`crate::alloc`]). The orphan list ([`crate::orphan`]) is
//! locked inside the metadata lock, never the other way round.

use ext4kit_format::Structure;
use ext4kit_format::inode::Timestamp;

use crate::alloc::MetaState;
use crate::dir::store::{DirIo, dir_is_empty, dotdot, load_dir, lookup, set_dotdot};
use crate::dir::write as dir_write;
use crate::error::{Corruption, Error, PathBytes, Result};
use crate::fs::{Core, Fs, ROOT_INO};
use crate::inode::evict::evict_inode;
use crate::inode::{LINK_MAX, now};
use crate::namei::check_name;

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
