//! `stat` and `readlink`: what an inode says about itself, and where a symlink points.
//!
//! Symlink targets live in `i_block` (fast), in inline data, or in one data block (slow); the
//! choice follows the kernel's `ext4_inode_is_fast_symlink`
//! ([`ext4kit_format::inline_data::symlink_storage`]).

use ext4kit_format::inline_data::{self, SymlinkStorage};
use ext4kit_format::inode::{FileType, Inode, InodeFlags, Timestamp};
use ext4kit_format::{IncompatFeatures, RoCompatFeatures, Structure};
use ext4kit_pagecache::ExtentKind;

use crate::error::{Corruption, Error, Result, ResultExt, Unsupported};
use crate::fs::{Core, Fs};

/// Longest symlink target (`PATH_MAX` - 1).
pub const SYMLINK_MAX: u64 = 4095;

/// What `stat` reports about an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Inode number.
    pub ino: u32,
    /// File type.
    pub file_type: FileType,
    /// `i_mode` (type and permission bits).
    pub mode: u16,
    /// Hard links (`i_links_count`).
    pub nlink: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Space used, in 512-byte units (`st_blocks`).
    pub blocks: u64,
    /// Last access.
    pub atime: Timestamp,
    /// Last modification.
    pub mtime: Timestamp,
    /// Last inode change.
    pub ctime: Timestamp,
    /// Creation, if the inode has room for it.
    pub crtime: Option<Timestamp>,
    /// Deletion time (`i_dtime`; 0 for live inodes).
    pub dtime: u32,
    /// Inode flags.
    pub flags: InodeFlags,
    /// `i_generation`.
    pub generation: u32,
    /// Device number (major, minor) of character and block devices.
    pub rdev: Option<(u32, u32)>,
    /// Extended attribute block (`i_file_acl`), 0 if none.
    pub file_acl: u64,
    /// Inode version.
    pub version: u64,
    /// Project id.
    pub project_id: u32,
    /// `i_extra_isize`.
    pub extra_isize: u16,
    /// Preferred IO size (the block size).
    pub blksize: u32,
}

impl Core {
    /// The file type of an inode, or a corruption error naming the mode.
    pub(crate) fn file_type(&self, ino: u32, inode: &Inode) -> Result<FileType> {
        inode.file_type().ok_or_else(|| {
            Error::corrupt(
                Structure::Inode,
                Corruption::BadFileType { mode: inode.mode() },
            )
            .with_inode(ino)
        })
    }

    /// `stat` of an inode already read.
    pub(crate) fn stat_of(&self, ino: u32, inode: &Inode) -> Result<Stat> {
        let file_type = self.file_type(ino, inode)?;
        let rdev = matches!(file_type, FileType::CharDevice | FileType::BlockDevice)
            .then(|| inode.device_number());
        Ok(Stat {
            ino,
            file_type,
            mode: inode.mode(),
            nlink: inode.links_count(),
            uid: inode.uid(),
            gid: inode.gid(),
            size: inode.size(),
            blocks: inode.block_count_512(
                self.has_ro(RoCompatFeatures::HUGE_FILE),
                self.sb.block_size_bits(),
            ),
            atime: inode.access_time(),
            mtime: inode.modification_time(),
            ctime: inode.change_time(),
            crtime: inode.creation_time(),
            dtime: inode.dtime(),
            flags: inode.flags(),
            generation: inode.generation(),
            rdev,
            file_acl: inode.file_acl(),
            version: inode.version(),
            project_id: inode.project_id(),
            extra_isize: inode.extra_isize(),
            blksize: self.block_size,
        })
    }

    /// The target of a symlink inode.
    pub(crate) fn symlink_target(&self, ino: u32, inode: &Inode) -> Result<Vec<u8>> {
        if !inode.is_symlink() {
            return Err(Error::InvalidArgument(format!(
                "inode {ino} is not a symbolic link"
            )));
        }
        if inode.flags().contains(InodeFlags::ENCRYPT) {
            return Err(Error::unsupported(Unsupported::Encrypted).with_inode(ino));
        }
        let mut target = match inline_data::symlink_storage(inode, &self.sb) {
            SymlinkStorage::Fast => inline_data::fast_symlink_target(inode)
                .ctx_inode(ino)?
                .to_vec(),
            SymlinkStorage::Inline => {
                if !self.sb.has_incompat(IncompatFeatures::INLINE_DATA) {
                    return Err(
                        Error::corrupt(Structure::Symlink, Corruption::InlineData).with_inode(ino)
                    );
                }
                inline_data::read_inline_data(inode, self.ea_inode).ctx_inode(ino)?
            }
            SymlinkStorage::Blocks => {
                let size = inode.size();
                if size == 0 || size > SYMLINK_MAX || size > u64::from(self.block_size) {
                    return Err(Error::corrupt(
                        Structure::Symlink,
                        Corruption::SymlinkSize { size },
                    )
                    .with_inode(ino));
                }
                let e = self.map_inode(ino, inode, 0, 1)?;
                if e.kind != ExtentKind::Written {
                    return Err(Error::corrupt(
                        Structure::Symlink,
                        Corruption::DirectoryHole { lblk: 0 },
                    )
                    .with_inode(ino));
                }
                let mb = self.cache.get(e.pblk).ctx_inode(ino)?;
                let bytes = mb.read();
                bytes[..size as usize].to_vec()
            }
        };
        // readlink(2) stops at the first NUL, as the kernel's copy does.
        if let Some(nul) = target.iter().position(|&b| b == 0) {
            target.truncate(nul);
        }
        Ok(target)
    }
}

impl Fs {
    /// `stat` of inode `ino`.
    pub fn stat(&self, ino: u32) -> Result<Stat> {
        let inode = self.core.read_inode(ino)?;
        self.core.stat_of(ino, &inode)
    }

    /// The target of symlink `ino` (fast, slow or inline).
    pub fn read_link(&self, ino: u32) -> Result<Vec<u8>> {
        let inode = self.core.read_inode(ino)?;
        self.core.symlink_target(ino, &inode)
    }
}
