//! Filesystem operations that change the image: create files, directories, symlinks, device
//! nodes, FIFOs and sockets, hard links, write file data (through the page cache), set sizes,
//! and write everything back (`sync`).
//!
//! Each operation takes the metadata lock for its metadata changes only; file data goes through
//! the page cache (delayed allocation) without it. Nothing reaches the disk before
//! [`Fs::sync`], which writes back file data (allocating it), then inodes, group descriptors and
//! bitmaps, the superblock — through the journal when the image has one (see
//! [`crate::journal::commit`]) — and flushes the device. Operations that change metadata
//! end with `commit_if_full`, which syncs early when a transaction would grow too large.

use ext4kit_format::RoCompatFeatures;
use ext4kit_format::extent::ExtentNode;
use ext4kit_format::extent::NodeLocation;
use ext4kit_format::inline_data::set_fast_symlink;
use ext4kit_format::inode::{FileType, Inode, InodeFlags, Timestamp};
use ext4kit_pagecache::Mapping;

use crate::alloc::MetaState;
use crate::dir::write as dir_write;
use crate::error::{Error, PathBytes, Result};
use crate::extent::store::DirIo;
use crate::fs::Fs;
use crate::namei::remove::{dotdot, lookup};

/// Most links an inode may have (`EXT4_LINK_MAX`).
pub const LINK_MAX: u16 = 65_000;

/// Attributes of a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewInode {
    /// Permission bits (`0o7777`, setuid/setgid/sticky included).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Access time.
    pub atime: Timestamp,
    /// Modification time.
    pub mtime: Timestamp,
    /// Change time.
    pub ctime: Timestamp,
    /// Creation time.
    pub crtime: Timestamp,
}

impl NewInode {
    /// Root-owned, mode `perm`, all times `t`.
    pub fn with_time(perm: u16, t: Timestamp) -> NewInode {
        NewInode {
            perm,
            uid: 0,
            gid: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
        }
    }
}

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewKind {
    /// A regular file (empty).
    Regular,
    /// A directory (with `.` and `..`).
    Directory,
    /// A symbolic link to the target.
    Symlink(Vec<u8>),
    /// A character device.
    CharDevice(u32, u32),
    /// A block device.
    BlockDevice(u32, u32),
    /// A FIFO.
    Fifo,
    /// A socket.
    Socket,
}

impl NewKind {
    fn file_type(&self) -> FileType {
        match self {
            NewKind::Regular => FileType::Regular,
            NewKind::Directory => FileType::Directory,
            NewKind::Symlink(_) => FileType::Symlink,
            NewKind::CharDevice(..) => FileType::CharDevice,
            NewKind::BlockDevice(..) => FileType::BlockDevice,
            NewKind::Fifo => FileType::Fifo,
            NewKind::Socket => FileType::Socket,
        }
    }
}

fn name_check(name: &[u8]) -> Result<()> {
    if name.is_empty()
        || name.len() > 255
        || name.contains(&b'/')
        || name.contains(&0)
        || name == b"."
        || name == b".."
    {
        if name.len() > 255 {
            return Err(Error::NameTooLong {
                path: PathBytes(name.to_vec()),
            });
        }
        return Err(Error::InvalidArgument(format!(
            "invalid file name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

/// Room left in an image for new data and inodes (see [`Fs::space`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes per block.
    pub block_size: u32,
    /// Free blocks as the group descriptors count them now.
    pub free_blocks: u64,
    /// Of those, blocks promised to delayed-allocation writes not yet written back.
    pub reserved_blocks: u64,
    /// Blocks freed since the last commit: they become free with the next sync (and sooner,
    /// out of space, unless a [`CommitHold`](crate::journal::commit::CommitHold) is open).
    pub awaiting_commit: u64,
    /// Blocks new file data can take now: free, less the reservations and the margin kept for
    /// metadata (what a write checks its reservation against).
    pub available_blocks: u64,
    /// Free inodes.
    pub free_inodes: u64,
}

impl Space {
    /// [`Space::available_blocks`] in bytes.
    pub fn available_bytes(&self) -> u64 {
        self.available_blocks * u64::from(self.block_size)
    }
}

impl Fs {
    /// Whether the image is open for writing.
    pub fn is_writable(&self) -> bool {
        self.core.write.is_some()
    }

    /// The room left for new data and inodes, as the next write sees it.
    pub fn space(&self) -> Space {
        let block_size = self.core.block_size;
        match &self.core.write {
            Some(w) => {
                let m = w.meta.lock();
                let free_blocks = m.free_blocks();
                let free_inodes = m
                    .groups
                    .iter()
                    .map(|g| u64::from(g.free_inodes_count()))
                    .sum();
                let awaiting_commit = m
                    .deferred_frees
                    .as_ref()
                    .map_or(0, |d| d.iter().map(|(_, n)| *n).sum());
                Space {
                    block_size,
                    free_blocks,
                    reserved_blocks: m.reserved,
                    awaiting_commit,
                    available_blocks: m.available_blocks(),
                    free_inodes,
                }
            }
            None => {
                let gd = self.group_descs();
                let free_blocks = gd.iter().map(|g| u64::from(g.free_blocks_count())).sum();
                Space {
                    block_size,
                    free_blocks,
                    reserved_blocks: 0,
                    awaiting_commit: 0,
                    available_blocks: 0,
                    free_inodes: gd.iter().map(|g| u64::from(g.free_inodes_count())).sum(),
                }
            }
        }
    }

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
            .and_then(|()| crate::xattr::write::inherit_acls(core, &mut meta, dir, ino));
        if let Err(e) = result {
            if let Some(blk) = meta
                .inodes
                .get(&ino)
                .map(Inode::file_acl)
                .filter(|b| *b != 0)
            {
                let _ = crate::namei::remove::release_xattr_block(&mut meta, core, ino, blk);
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
        let root = crate::fs::ROOT_INO;
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

    /// Counts `n` more hard links to `ino` (the builder adds entries for them in bulk).
    pub fn add_links(&self, ino: u32, n: u16) -> Result<()> {
        let core = &self.core;
        let w = core.writer("link")?;
        let mut meta = w.meta.lock();
        let inode = meta.inode(core, ino)?;
        let links = inode
            .links_count()
            .checked_add(n)
            .filter(|l| *l <= LINK_MAX)
            .ok_or(Error::TooManyLinks {
                path: PathBytes(Vec::new()),
            })?;
        inode.set_links_count(links);
        meta.dirty_inode(ino);
        Ok(())
    }

    /// The page cache of regular file `ino` (kept alive until the next sync).
    pub fn data_mapping(&self, ino: u32) -> Result<Mapping> {
        // Written since the last sync: the cache is already open (no inode read, no clone).
        if let Some(w) = &self.core.write {
            if let Some(m) = w.open_mappings.lock().get(&ino) {
                return Ok(m.clone());
            }
        }
        let inode = self.core.read_inode(ino)?;
        self.core.check_regular(ino, &inode)?;
        if inode.links_count() == 0 {
            // Unlinked: still open somewhere (an orphan whose page cache is held), or gone.
            return self
                .core
                .orphans
                .lock()
                .held(ino)
                .ok_or_else(|| Error::NotFound {
                    path: PathBytes(format!("inode {ino} (deleted)").into_bytes()),
                });
        }
        let m = self
            .pages
            .mapping(u64::from(ino), inode.size(), inode.size());
        if let Some(w) = &self.core.write {
            w.open_mappings
                .lock()
                .entry(ino)
                .or_insert_with(|| m.clone());
        }
        Ok(m)
    }

    /// Writes `data` at `offset` of regular file `ino` (delayed allocation: blocks are reserved
    /// now and allocated at writeback).
    pub fn write_at(&self, ino: u32, offset: u64, data: &[u8]) -> Result<()> {
        self.core.writer("write")?;
        let m = self.data_mapping(ino)?;
        m.write(offset, data)
            .map_err(|e| Error::from_cache(ino, e))?;
        self.commit_if_full()
    }

    /// Sets the size of regular file `ino` (truncating or extending with a hole).
    pub fn set_size(&self, ino: u32, size: u64) -> Result<()> {
        self.core.writer("truncate")?;
        let m = self.data_mapping(ino)?;
        m.truncate(size).map_err(|e| Error::from_cache(ino, e))?;
        self.commit_if_full()
    }

    /// Sets the owner and permission bits of `ino` (its file type stays; an access ACL takes the
    /// new owner, group-or-mask and other bits, as chmod(2) does).
    pub fn set_owner_mode(&self, ino: u32, uid: u32, gid: u32, perm: u16) -> Result<()> {
        let core = &self.core;
        let w = core.writer("set owner")?;
        let mut meta = w.meta.lock();
        // The access ACL follows the mode, as the kernel's chmod has it.
        crate::xattr::write::chmod_acl(core, &mut meta, ino, perm)?;
        let inode = meta.inode(core, ino)?;
        inode.set_uid(uid);
        inode.set_gid(gid);
        let mode = (inode.mode() & !0o7777) | (perm & 0o7777);
        inode.set_mode(mode);
        meta.dirty_inode(ino);
        drop(meta);
        self.commit_if_full()
    }

    /// Sets the timestamps of `ino` (`None` keeps one).
    pub fn set_times(
        &self,
        ino: u32,
        atime: Option<Timestamp>,
        mtime: Option<Timestamp>,
        ctime: Option<Timestamp>,
    ) -> Result<()> {
        let core = &self.core;
        let w = core.writer("set times")?;
        let mut meta = w.meta.lock();
        let inode = meta.inode(core, ino)?;
        if let Some(t) = atime {
            inode.set_access_time(t);
        }
        if let Some(t) = mtime {
            inode.set_modification_time(t);
        }
        if let Some(t) = ctime {
            inode.set_change_time(t);
        }
        meta.dirty_inode(ino);
        drop(meta);
        self.commit_if_full()
    }

    /// Writes back the data of every file written since the last sync (allocating its
    /// delayed blocks) and waits for it, without flushing the device or writing metadata.
    /// Files are handled in inode order, so allocation does not depend on timing.
    ///
    /// Errors are those of fsync: the error this call's own writeback hit (an allocation
    /// failing with [`Error::NoSpace`], a corrupt extent tree, ...) as it is; otherwise, once,
    /// a writeback error recorded since the last sync (a failed write, or a failure of the
    /// background flusher), as [`Error::Writeback`]. A file whose data could not be written
    /// stays dirty and is written by the next sync.
    pub fn flush_data(&self) -> Result<()> {
        let w = self.core.writer("sync")?;
        let mut mappings: Vec<(u32, Mapping)> = w.open_mappings.lock().drain().collect();
        mappings.sort_by_key(|(ino, _)| *ino);
        let mut handles = Vec::with_capacity(mappings.len());
        for (i, (ino, m)) in mappings.iter().enumerate() {
            let h = m.open();
            if let Err(e) = m.writepages(&mut ext4kit_pagecache::WritebackControl::sync_all()) {
                // As fsync does: the error sequence moves past what this sync would have
                // reported, so one sync reports one error.
                let _ = h.check_error();
                let mut open = w.open_mappings.lock();
                for (ino, m) in &mappings[i..] {
                    open.entry(*ino).or_insert_with(|| m.clone());
                }
                return Err(Error::from_cache(*ino, e));
            }
            handles.push((*ino, h));
        }
        for (ino, h) in &handles {
            h.mapping().wait_writeback();
            h.check_error().map_err(|e| Error::from_cache(*ino, e))?;
        }
        Ok(())
    }

    /// Builds the blocks of directory `ino` (created with [`Fs::create_detached`], child of
    /// `parent`) holding `entries`: one block, or an indexed directory when they do not fit.
    pub fn fill_dir(&self, ino: u32, parent: u32, entries: &[(Vec<u8>, u32, u8)]) -> Result<()> {
        let core = &self.core;
        let w = core.writer("fill directory")?;
        let mut meta = w.meta.lock();
        fill_dir(&mut meta, core, ino, parent, entries)
    }

    /// Writes changed metadata (inodes, descriptors, bitmaps, cached blocks) to the device
    /// without flushing it or touching file data, so that the caches can drop it: `build` calls
    /// this as it goes to keep its memory bounded. Not a commit point (no journal, no flush).
    pub fn write_back_metadata(&self) -> Result<()> {
        let core = &self.core;
        let w = core.writer("write back")?;
        {
            let mut meta = w.meta.lock();
            meta.write_back(core)?;
            // Every cached inode is clean now (written to its table block): read again on use.
            meta.inodes.clear();
        }
        core.cache.write_back()?;
        Ok(())
    }

    /// Writes everything back: file data (allocating delayed blocks), inodes, group descriptors
    /// and bitmaps, the superblock; then flushes the device. With an internal journal (and
    /// `OpenOptions::use_journal`) the metadata is committed as one jbd2 transaction first, so
    /// that a crash at any point leaves the state before or after the sync.
    pub fn sync(&self) -> Result<()> {
        let core = &self.core;
        let w = core.writer("sync")?;
        if let Some(j) = &w.journal {
            return crate::journal::commit::sync(self, w, j);
        }
        self.flush_data()?;
        // Orphans nobody holds are freed, loose extent trees packed, before metadata goes out.
        crate::namei::remove::prepare_sync(self)?;
        {
            let mut meta = w.meta.lock();
            meta.write_back(core)?;
        }
        core.cache.write_back()?;
        ext4kit_blockdev::BlockDeviceExt::flush(&**core.cache.device())
            .map_err(|e| Error::io(e, None))?;
        Ok(())
    }
}

/// A parent directory gained an entry: times, and a link for a new subdirectory.
fn touch_dir(
    meta: &mut MetaState,
    core: &crate::fs::Core,
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

/// Sets up the fields every new inode has.
fn init_inode_no_blocks(
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

/// A new inode, fully initialised (a directory gets its first block).
fn init_inode(
    meta: &mut MetaState,
    core: &crate::fs::Core,
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
    core: &crate::fs::Core,
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

/// Stores a symlink target: in `i_block` when short (fast symlink), else in a block.
fn write_symlink(
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

/// Features the writer supports: refuse the others with their names.
pub(crate) fn check_writable(sb: &ext4kit_format::Superblock) -> Result<()> {
    use ext4kit_format::IncompatFeatures as I;
    use ext4kit_format::RoCompatFeatures as R;
    let mut bad: Vec<String> = Vec::new();
    let inc = sb.feature_incompat();
    for (f, name) in [
        (I::INLINE_DATA, "inline_data"),
        (I::ENCRYPT, "encrypt"),
        (I::CASEFOLD, "casefold"),
        (I::EA_INODE, "ea_inode"),
        (I::MMP, "mmp"),
        (I::LARGEDIR, "large_dir"),
        (I::META_BG, "meta_bg"),
    ] {
        if inc.contains(f) {
            bad.push(name.to_string());
        }
    }
    let ro = sb.feature_ro_compat();
    for (f, name) in [
        (R::BIGALLOC, "bigalloc"),
        (R::QUOTA, "quota"),
        (R::READONLY, "read-only"),
    ] {
        if ro.contains(f) {
            bad.push(name.to_string());
        }
    }
    if !inc.contains(I::EXTENTS) {
        bad.push("no extents (ext2/ext3 indirect block maps)".into());
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::unsupported(crate::error::Unsupported::Other(
            format!(
                "cannot write images with {}; ext4kit opens them read-only",
                bad.join(", ")
            ),
        )))
    }
}
