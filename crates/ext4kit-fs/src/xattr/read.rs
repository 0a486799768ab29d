//! Extended attributes: the in-inode area and the xattr block, with values stored inline or in
//! EA inodes (ea_inode feature).
//!
//! Names are full names (`user.comment`, `security.selinux`, `system.posix_acl_access`).
//! `system.data` — the storage of inline data — is internal and not listed, as the kernel
//! does not list it. Entries with a name index no prefix is known for are skipped (the kernel
//! has no handler for them either). POSIX ACL values are converted from ext4's on-disk form to
//! the one getxattr(2) returns ([`acl_from_disk`]).

use ext4kit_format::Structure;
use ext4kit_format::acl;
use ext4kit_format::inline_data::SYSTEM_DATA_NAME;
use ext4kit_format::inode::{Inode, InodeFlags};
use ext4kit_format::xattr::{INDEX_SYSTEM, XattrBlock, XattrEntry, parse_ibody, value_of};

use crate::error::{Corruption, Error, PathBytes, Result, ResultExt};
use crate::fs::{Core, Fs};

/// One extended attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xattr {
    /// Full name (prefix + suffix).
    pub name: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
}

/// Converts a stored POSIX ACL value into the form getxattr(2) returns (version 2; 8-byte
/// entries, id -1 where there is none), like the kernel's `ext4_acl_from_disk` +
/// `posix_acl_to_xattr`: ext4's disk form (version 1; 4-byte entries for USER_OBJ, GROUP_OBJ,
/// MASK, OTHER and 8-byte entries with an id for USER, GROUP), and also the version-2 form
/// that older ext4kit stored by mistake. `None`: an ACL without entries (no ACL).
pub fn acl_from_disk(v: &[u8]) -> std::result::Result<Option<Vec<u8>>, Corruption> {
    acl::disk_to_xattr(v).map_err(|e| Corruption::Acl { offset: e.offset })
}

impl Core {
    fn xattr_value(&self, ino: u32, buf: &[u8], e: &XattrEntry) -> Result<Vec<u8>> {
        if e.value_inum == 0 {
            return Ok(value_of(buf, e).to_vec());
        }
        // The value lives in an EA inode: a regular file flagged EA_INODE.
        let ea = self.read_inode(e.value_inum).ctx_inode(ino)?;
        if !ea.flags().contains(InodeFlags::EA_INODE) || !ea.is_regular() {
            return Err(Error::corrupt(
                Structure::XattrInode,
                Corruption::Format(ext4kit_format::CorruptKind::XattrValueInode(e.value_inum)),
            )
            .with_inode(ino));
        }
        if ea.size() != u64::from(e.value_size) {
            return Err(Error::corrupt(
                Structure::XattrInode,
                Corruption::Format(ext4kit_format::CorruptKind::XattrValueSize(e.value_size)),
            )
            .with_inode(ino));
        }
        self.read_small_file(e.value_inum, &ea, e.value_size as usize)
    }

    /// Reads the first `len` bytes of a block-mapped inode through the metadata cache (EA
    /// inode values; at most 16 MiB).
    fn read_small_file(&self, ino: u32, inode: &Inode, len: usize) -> Result<Vec<u8>> {
        let bs = self.block_size as usize;
        let mut out = vec![0u8; len];
        let mut lblk = 0u64;
        let nblocks = len.div_ceil(bs) as u64;
        while lblk < nblocks {
            let e = self.map_inode(ino, inode, lblk, nblocks - lblk)?;
            if e.kind == ext4kit_pagecache::ExtentKind::Written {
                for k in 0..e.len {
                    let mb = self.cache.get(e.pblk + k)?;
                    let at = ((lblk + k) as usize) * bs;
                    let n = bs.min(len - at);
                    out[at..at + n].copy_from_slice(&mb.read()[..n]);
                }
            }
            lblk += e.len;
        }
        Ok(out)
    }

    /// Every attribute of an inode: in-inode first, then the xattr block.
    pub(crate) fn xattrs_of(&self, ino: u32, inode: &Inode) -> Result<Vec<Xattr>> {
        let mut out = Vec::new();
        let mut push =
            |this: &Core, buf: &[u8], entries: &[XattrEntry], at: Structure| -> Result<()> {
                for e in entries {
                    if e.name_index == INDEX_SYSTEM && e.name == SYSTEM_DATA_NAME {
                        continue;
                    }
                    let Some(name) = e.full_name() else { continue };
                    let mut value = this.xattr_value(ino, buf, e)?;
                    if acl::is_acl_index(e.name_index) {
                        match acl_from_disk(&value) {
                            Ok(Some(v)) => value = v,
                            // No entries: the kernel reports no ACL.
                            Ok(None) => continue,
                            Err(what) => {
                                return Err(Error::corrupt(at, what).with_inode(ino));
                            }
                        }
                    }
                    out.push(Xattr { name, value });
                }
                Ok(())
            };
        let area = inode.xattr_area();
        let entries = parse_ibody(area, self.ea_inode).ctx_inode(ino)?;
        push(self, area, &entries, Structure::XattrInode)?;
        let block = inode.file_acl();
        if block != 0 {
            self.check_range(Structure::XattrBlock, block, 1)
                .ctx_inode(ino)?;
            let mb = self.cache.get(block).ctx_inode(ino)?;
            let bytes = mb.read();
            let xb = XattrBlock::parse(&bytes, self.ea_inode)
                .ctx_inode(ino)
                .ctx_block(block)?;
            if let Some(seed) = self.csum_seed {
                xb.verify_checksum(seed, block)
                    .ctx_inode(ino)
                    .ctx_block(block)?;
            }
            push(self, xb.as_bytes(), xb.entries(), Structure::XattrBlock)?;
        }
        Ok(out)
    }
}

impl Fs {
    /// Every extended attribute of inode `ino` (see the module docs for what is listed).
    pub fn list_xattrs(&self, ino: u32) -> Result<Vec<Xattr>> {
        let inode = self.core.read_inode(ino)?;
        self.core.xattrs_of(ino, &inode)
    }

    /// The value of attribute `name` of inode `ino`.
    pub fn get_xattr(&self, ino: u32, name: &[u8]) -> Result<Vec<u8>> {
        self.list_xattrs(ino)?
            .into_iter()
            .find(|x| x.name == name)
            .map(|x| x.value)
            .ok_or_else(|| Error::NoXattr {
                ino,
                name: PathBytes(name.to_vec()),
            })
    }
}

/// `true` for names in the `user.` namespace.
pub fn is_user_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.")
}
