//! Changing what an inode says about itself: owner and mode (an access ACL follows the mode),
//! timestamps, link counts.

use ext4kit_format::inode::Timestamp;

use crate::error::{Error, PathBytes, Result};
use crate::fs::Fs;
use crate::inode::LINK_MAX;

impl Fs {
    /// Sets the owner and permission bits of `ino` (its file type stays; an access ACL takes the
    /// new owner, group-or-mask and other bits, as chmod(2) does).
    pub fn set_owner_mode(&self, ino: u32, uid: u32, gid: u32, perm: u16) -> Result<()> {
        let core = &self.core;
        let w = core.writer("set owner")?;
        let mut meta = w.meta.lock();
        // The access ACL follows the mode, as the kernel's chmod has it.
        crate::xattr::acl::chmod_acl(core, &mut meta, ino, perm)?;
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
}
