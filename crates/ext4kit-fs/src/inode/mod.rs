//! Inodes: reading them (from the inode table, or the writer's changed copy), what an inode
//! says about itself ([`Stat`], `readlink`), setting up new ones (mode, owner, times, symlink
//! targets), changing their attributes (owner, mode, times, link counts), and freeing them with
//! everything they own.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`NewInode`], [`NewKind`], [`LINK_MAX`]; reading an inode (`Core::read_inode`, `Fs::inode`) |
//! | `stat.rs` | [`Stat`], `readlink` |
//! | `init.rs` | the fields of a new inode; symlink targets (fast in `i_block`, or one block) |
//! | `attrs.rs` | `Fs::set_owner_mode`, `Fs::set_times`, `Fs::add_links` |
//! | `evict.rs` | freeing an inode whose last link is gone (blocks, xattr block, reservations, the inode) |

mod attrs;
pub(crate) mod evict;
pub(crate) mod init;
pub mod stat;

use ext4kit_format::group_desc::{GroupDesc, GroupFlags};
use ext4kit_format::inode::{FileType, Inode, Timestamp};
use ext4kit_format::{RoCompatFeatures, Structure};

use crate::alloc::MetaState;
use crate::error::{Corruption, Error, Result, ResultExt};
use crate::fs::{Core, Fs};

pub use stat::{SYMLINK_MAX, Stat};

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
    pub(crate) fn file_type(&self) -> FileType {
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

/// The writer's inode cache: inodes read or changed while writing (the metadata lock guards it
/// with the rest of [`MetaState`]); the dirty ones are written back at sync
/// (`MetaState::write_back`).
impl MetaState {
    /// The inode `ino` as the writer sees it (changed copy, else read from its table).
    pub(crate) fn inode(&mut self, core: &Core, ino: u32) -> Result<&mut Inode> {
        if !self.inodes.contains_key(&ino) {
            let inode = core.read_inode_from_table(ino, &self.groups)?;
            self.inodes.insert(ino, inode);
        }
        self.inodes
            .get_mut(&ino)
            .ok_or_else(|| Error::corrupt(Structure::Inode, Corruption::InodeOutOfRange { ino }))
    }

    /// Marks `ino` changed.
    pub(crate) fn dirty_inode(&mut self, ino: u32) {
        self.dirty_inodes.insert(ino);
    }

    /// Adds `delta` (may be negative) 512-byte sectors' worth of blocks to `ino`'s `i_blocks`.
    pub(crate) fn add_blocks(&mut self, core: &Core, ino: u32, blocks: i64) -> Result<()> {
        let huge = self.sb.has_ro_compat(RoCompatFeatures::HUGE_FILE);
        let bits = self.sb.block_size_bits();
        let per = i64::from(self.sb.block_size() / 512);
        let inode = self.inode(core, ino)?;
        let cur = inode.block_count_512(huge, bits) as i64;
        let new = (cur + blocks * per).max(0) as u64;
        inode
            .set_block_count_512(new, huge, bits)
            .map_err(Error::from)?;
        self.dirty_inode(ino);
        Ok(())
    }

    /// A fresh generation number.
    pub(crate) fn generation(&mut self) -> u32 {
        let g = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(0x9E37_79B9).max(1);
        g
    }
}

impl Core {
    /// Reads inode `ino`, verifying its checksum: the writer's copy when the filesystem is open
    /// for writing and the inode was changed, else from its inode table.
    pub fn read_inode(&self, ino: u32) -> Result<Inode> {
        if let Some(w) = &self.write {
            let mut meta = w.meta.lock();
            return meta.inode(self, ino).map(|i| i.clone());
        }
        self.read_inode_from_table(ino, &self.groups)
    }

    /// Reads inode `ino` from its inode table, judging its group by `groups` (the writer passes
    /// its up-to-date descriptors).
    pub(crate) fn read_inode_from_table(&self, ino: u32, groups: &[GroupDesc]) -> Result<Inode> {
        let out_of_range = || {
            Error::corrupt(Structure::Inode, Corruption::InodeOutOfRange { ino }).with_inode(ino)
        };
        let (group, offset) = self.sb.inode_table_offset(ino).ok_or_else(out_of_range)?;
        let gd = groups.get(group as usize).ok_or_else(out_of_range)?;
        if self.sb.has_group_desc_csum() {
            let index = (ino - 1) % self.sb.inodes_per_group();
            let used = self
                .sb
                .inodes_per_group()
                .saturating_sub(gd.itable_unused());
            if gd.flags().contains(GroupFlags::INODE_UNINIT) || index >= used {
                return Err(Error::corrupt(
                    Structure::Inode,
                    Corruption::InodeUninitialized { ino },
                )
                .with_inode(ino)
                .with_group(group));
            }
        }
        let bs = u64::from(self.block_size);
        let block = gd.inode_table() + offset / bs;
        self.check_range(Structure::Inode, block, 1)
            .map_err(|e| e.with_inode(ino).with_group(group))?;
        let data = self.cache.get(block).ctx_inode(ino)?;
        let bytes = data.read();
        let start = (offset % bs) as usize;
        let isz = usize::from(self.sb.inode_size());
        let raw = bytes.get(start..start + isz).ok_or_else(out_of_range)?;
        Inode::parse_checked(raw, ino, self.csum_seed)
            .ctx_inode(ino)
            .ctx_block(block)
    }
}

impl Fs {
    /// Reads inode `ino` (checksum verified).
    pub fn inode(&self, ino: u32) -> Result<Inode> {
        self.core.read_inode(ino)
    }
}
