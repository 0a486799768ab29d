//! Creating names: files, directories, symlinks, device nodes, FIFOs and sockets
//! ([`Fs::create`], [`Fs::symlink`]), hard links ([`Fs::link`]), and the image builder's bulk
//! calls (inodes created detached, directories built whole from their entries).
//!
//! A new inode inherits ACLs from its directory's default ACL ([`crate::xattr::acl`]); the
//! parent's times and (for a subdirectory) link count follow. Operations end with
//! `commit_if_full` ([`crate::sync`]).

use ext4kit_format::RoCompatFeatures;
use ext4kit_format::inode::{FileType, Inode, InodeFlags, Timestamp};

use crate::alloc::MetaState;
use crate::dir::store::{DirIo, dotdot, lookup};
use crate::dir::write as dir_write;
use crate::error::{Error, PathBytes, Result};
use crate::fs::{Core, Fs, ROOT_INO};
use crate::inode::init::{init_inode_no_blocks, write_symlink};
use crate::inode::{LINK_MAX, NewInode, NewKind};
use crate::namei::name_check;

impl Fs {
    /// Creates `name` in directory `dir`. Returns the new inode number. When `dir` has a default
    /// POSIX ACL the new inode inherits ACLs and its mode is masked as the kernel does it
    /// (`posix_acl_create`).
    pub fn create(&self, dir: u32, name: &[u8], kind: &NewKind, attrs: &NewInode) -> Result<u32> {
        name_check(name)?;
        let core = &self.core;
        let w = core.writer("create")?;
        let mut meta = w.meta.lock();
        let parent = meta.inode(core, dir)?;
        if !parent.is_dir() {
            return Err(Error::NotDir {
                path: PathBytes(name.to_vec()),
            });
        }
        if lookup(&mut meta, core, dir, name)?.is_some() {
            return Err(Error::Exists {
                path: PathBytes(name.to_vec()),
            });
        }
        let grandparent = dotdot(&mut meta, core, dir)?;
        let is_dir = matches!(kind, NewKind::Directory);
        if is_dir {
            let links = meta.inode(core, dir)?.links_count();
            if links >= LINK_MAX && !meta.sb.has_ro_compat(RoCompatFeatures::DIR_NLINK) {
                return Err(Error::TooManyLinks {
                    path: PathBytes(name.to_vec()),
                });
            }
        }
        let ino = meta.alloc_inode(core, dir, is_dir)?;
        let result = init_inode(&mut meta, core, ino, dir, kind, attrs)
            .and_then(|()| crate::xattr::acl::inherit_acls(core, &mut meta, dir, ino));
        if let Err(e) = result {
            if let Some(blk) = meta
                .inodes
                .get(&ino)
                .map(Inode::file_acl)
                .filter(|b| *b != 0)
            {
                let _ = crate::xattr::write::release_xattr_block(&mut meta, core, ino, blk);
            }
            let _ = meta.free_inode(core, ino, is_dir);
            meta.inodes.remove(&ino);
            return Err(e);
        }
        dir_write::add_entry(
            &mut DirIo {
                core,
                meta: &mut meta,
                ino: dir,
                parent: grandparent,
            },
            name,
            ino,
            kind.file_type().dirent_code(),
        )?;
        touch_dir(&mut meta, core, dir, attrs.ctime, is_dir)?;
        drop(meta);
        self.commit_if_full()?;
        Ok(ino)
    }

    /// Creates directory `name` in `dir` holding `entries` (name, inode, dirent file type) of
    /// inodes created beforehand with [`Fs::create_detached`]: an indexed directory from the
    /// start when the entries do not fit one block. Returns the directory's inode number.
    pub fn create_dir_with(
        &self,
        dir: u32,
        name: &[u8],
        ino: u32,
        entries: &[(Vec<u8>, u32, u8)],
        attrs: &NewInode,
    ) -> Result<()> {
        name_check(name)?;
        let core = &self.core;
        let w = core.writer("create directory")?;
        let mut meta = w.meta.lock();
        let grandparent = dotdot(&mut meta, core, dir)?;
        fill_dir(&mut meta, core, ino, dir, entries)?;
        dir_write::add_entry(
            &mut DirIo {
                core,
                meta: &mut meta,
                ino: dir,
                parent: grandparent,
            },
            name,
            ino,
            FileType::Directory.dirent_code(),
        )?;
        touch_dir(&mut meta, core, dir, attrs.ctime, true)?;
        Ok(())
    }

    /// Allocates and initialises an inode of `kind` that is not in any directory yet (the
    /// builder adds the entries later, in bulk). A directory gets no blocks yet: fill it with
    /// [`Fs::create_dir_with`] or [`Fs::fill_root`].
    pub fn create_detached(&self, parent: u32, kind: &NewKind, attrs: &NewInode) -> Result<u32> {
        let core = &self.core;
        let w = core.writer("create")?;
        let mut meta = w.meta.lock();
        let is_dir = matches!(kind, NewKind::Directory);
        let ino = meta.alloc_inode(core, parent, is_dir)?;
        if let Err(e) = init_inode_no_blocks(&mut meta, core, ino, kind, attrs) {
            let _ = meta.free_inode(core, ino, is_dir);
            return Err(e);
        }
        if let NewKind::Symlink(target) = kind {
            write_symlink(&mut meta, core, ino, target)?;
        }
        Ok(ino)
    }

    /// Adds `entries` to the (empty) root directory, rebuilding it (indexed when large).
    pub fn fill_root(&self, entries: &[(Vec<u8>, u32, u8)]) -> Result<()> {
        let core = &self.core;
        let w = core.writer("fill root")?;
        let mut meta = w.meta.lock();
        let root = ROOT_INO;
        // Existing entries (lost+found) stay.
        let mut all: Vec<(Vec<u8>, u32, u8)> = Vec::new();
        // Loaded first: `DirStore::nblocks` counts only an inode in the inode cache, which a
        // write-back may have emptied (lost+found was then dropped from the root).
        meta.inode(core, root)?;
        {
            let mut io = DirIo {
                core,
                meta: &mut meta,
                ino: root,
                parent: root,
            };
            for lblk in 0..dir_write::DirStore::nblocks(&io) {
                let raw = dir_write::DirStore::read_block(&mut io, lblk)?;
                if ext4kit_format::htree::detect(&raw, core.block_size).is_some() {
                    continue;
                }
                let b = ext4kit_format::dir::DirBlock::parse(
                    &raw,
                    ext4kit_format::dir::DirBlockOptions::new(
                        core.block_size,
                        core.csum_seed.is_some(),
                    ),
                )?;
                for e in b.live_entries()? {
                    if !e.is_dot_or_dotdot() {
                        all.push((e.name.to_vec(), e.inode, e.file_type));
                    }
                }
            }
        }
        all.extend(entries.iter().cloned());
        // Free the old blocks and build anew.
        crate::extent::store::with_tree(core, &mut meta, root, 0, |t| t.remove_range(0, 1 << 32))?;
        let inode = meta.inode(core, root)?;
        inode.set_size(0);
        let mut f = inode.flags();
        f.remove(InodeFlags::INDEX);
        inode.set_flags(f);
        meta.dirty_inode(root);
        // Counted in usize: more than 65535 subdirectories must not wrap.
        let subdirs = entries
            .iter()
            .filter(|e| e.2 == FileType::Directory.dirent_code())
            .count();
        dir_write::build_dir(
            &mut DirIo {
                core,
                meta: &mut meta,
                ino: root,
                parent: root,
            },
            &all,
        )?;
        let inode = meta.inode(core, root)?;
        let links = usize::from(inode.links_count()).saturating_add(subdirs);
        inode.set_links_count(
            if links >= usize::from(LINK_MAX) || inode.links_count() == 1 {
                1
            } else {
                links as u16
            },
        );
        meta.dirty_inode(root);
        Ok(())
    }

    /// Creates a symbolic link `name` → `target` in `dir` (a fast symlink in the inode when the
    /// target is shorter than 60 bytes, else one block). Returns its inode number.
    pub fn symlink(&self, dir: u32, name: &[u8], target: &[u8], attrs: &NewInode) -> Result<u32> {
        self.create(dir, name, &NewKind::Symlink(target.to_vec()), attrs)
    }

    /// Adds a hard link `name` in `dir` to inode `ino` (not a directory).
    pub fn link(&self, ino: u32, dir: u32, name: &[u8]) -> Result<()> {
        name_check(name)?;
        let core = &self.core;
        let w = core.writer("link")?;
        let mut meta = w.meta.lock();
        let target = meta.inode(core, ino)?;
        if target.is_dir() {
            return Err(Error::IsDir {
                path: PathBytes(name.to_vec()),
            });
        }
        let ft = target.file_type().map_or(0, FileType::dirent_code);
        if target.links_count() == 0 {
            // Unlinked (an orphan, or freed): linkat(2) on such a file gives ENOENT.
            return Err(Error::NotFound {
                path: PathBytes(format!("inode {ino}").into_bytes()),
            });
        }
        if target.links_count() >= LINK_MAX {
            return Err(Error::TooManyLinks {
                path: PathBytes(name.to_vec()),
            });
        }
        if lookup(&mut meta, core, dir, name)?.is_some() {
            return Err(Error::Exists {
                path: PathBytes(name.to_vec()),
            });
        }
        let grandparent = dotdot(&mut meta, core, dir)?;
        let mut io = DirIo {
            core,
            meta: &mut meta,
            ino: dir,
            parent: grandparent,
        };
        dir_write::add_entry(&mut io, name, ino, ft)?;
        let inode = meta.inode(core, ino)?;
        inode.set_links_count(inode.links_count() + 1);
        meta.dirty_inode(ino);
        drop(meta);
        self.commit_if_full()
    }

    /// Builds the blocks of directory `ino` (created with [`Fs::create_detached`], child of
    /// `parent`) holding `entries`: one block, or an indexed directory when they do not fit.
    pub fn fill_dir(&self, ino: u32, parent: u32, entries: &[(Vec<u8>, u32, u8)]) -> Result<()> {
        let core = &self.core;
        let w = core.writer("fill directory")?;
        let mut meta = w.meta.lock();
        fill_dir(&mut meta, core, ino, parent, entries)
    }
}

/// A parent directory gained an entry: times, and a link for a new subdirectory.
fn touch_dir(
    meta: &mut MetaState,
    core: &Core,
    dir: u32,
    t: Timestamp,
    subdir: bool,
) -> Result<()> {
    let inode = meta.inode(core, dir)?;
    inode.set_modification_time(t);
    inode.set_change_time(t);
    if subdir {
        let links = inode.links_count();
        // dir_nlink: past LINK_MAX a directory's count stays 1 ("many").
        inode.set_links_count(if links == 1 || links + 1 >= LINK_MAX {
            1
        } else {
            links + 1
        });
    }
    meta.dirty_inode(dir);
    Ok(())
}

/// A new inode, fully initialised (a directory gets its first block).
fn init_inode(
    meta: &mut MetaState,
    core: &Core,
    ino: u32,
    parent: u32,
    kind: &NewKind,
    attrs: &NewInode,
) -> Result<()> {
    init_inode_no_blocks(meta, core, ino, kind, attrs)?;
    match kind {
        NewKind::Directory => fill_dir(meta, core, ino, parent, &[]),
        NewKind::Symlink(target) => write_symlink(meta, core, ino, target),
        _ => Ok(()),
    }
}

/// Builds the blocks of directory `ino` (child of `parent`) holding `entries`.
fn fill_dir(
    meta: &mut MetaState,
    core: &Core,
    ino: u32,
    parent: u32,
    entries: &[(Vec<u8>, u32, u8)],
) -> Result<()> {
    dir_write::build_dir(
        &mut DirIo {
            core,
            meta: &mut *meta,
            ino,
            parent,
        },
        entries,
    )?;
    let subdirs = entries
        .iter()
        .filter(|e| e.2 == FileType::Directory.dirent_code())
        .count();
    let inode = meta.inode(core, ino)?;
    let links = 2 + subdirs;
    inode.set_links_count(if links >= usize::from(LINK_MAX) {
        1
    } else {
        links as u16
    });
    meta.dirty_inode(ino);
    Ok(())
}
