//! The bulk data path of image building: a new file's body goes from the source file straight
//! to blocks allocated for it now, copied inside the kernel where the device allows
//! ([`BlockDevice::copy_from_file`]), without page cache pages or bios.
//!
//! Delayed allocation would give such a file the same extents (it is written whole, in order,
//! and nothing else allocates in between); what this path saves is the two copies through user
//! memory and the page bookkeeping. It is only for files nothing else has open, on blocks known
//! to hold zeros (a freshly made image): the tail of the last block is not written.

use std::fs::File;

use ext4kit_blockdev::BlockDevice;
use ext4kit_pagecache::MapFlags;

use crate::error::{Error, Result};
use crate::fs::Fs;

impl Fs {
    /// Copies `len` bytes of `src` (from `src_off`) to offset `offset` of regular file `ino`,
    /// allocating its blocks now (see the module notes for when this may be used), and raises
    /// the file size to the end of the copy.
    pub(crate) fn write_from_file(&self, ino: u32, src: &File, src_off: u64, offset: u64, len: u64) -> Result<()> {
        let core = &self.core;
        let w = core.writer("write")?;
        if w.open_mappings.lock().contains_key(&ino) {
            return Err(Error::InvalidArgument(format!("inode {ino}: direct copy into a file with cached pages")));
        }
        let bs = u64::from(core.block_size);
        let dev = core.cache.device();
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let lblk = pos / bs;
            let want = (end - 1) / bs - lblk + 1;
            let e = core.w_map_create(ino, lblk, want, MapFlags::CREATE)?;
            let n = ((e.lblk + e.len) * bs).min(end) - pos;
            let dst = (e.pblk + (lblk - e.lblk)) * bs + pos % bs;
            dev.copy_from_file(src, src_off + (pos - offset), dst, n).map_err(|err| Error::io(err, Some(dst / bs)).with_inode(ino))?;
            pos += n;
        }
        let mut meta = w.meta.lock();
        let inode = meta.inode(core, ino)?;
        if end > inode.size() {
            inode.set_size(end);
            meta.dirty_inode(ino);
        }
        Ok(())
    }
}
