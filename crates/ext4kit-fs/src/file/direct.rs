//! The bulk data path of image building: a new file's body goes from the source file straight
//! to blocks allocated for it now, copied inside the kernel where the device allows
//! ([`BlockDevice::copy_from_file`]), without page cache pages or bios.
//!
//! Delayed allocation would give such a file the same extents (it is written whole, in order,
//! and nothing else allocates in between); what this path saves is the two copies through user
//! memory and the page bookkeeping. It is only for filling new files that nothing else has
//! open. A partial last block is written whole with zero padding, except when building an image
//! (its free blocks are known to hold zeros).

use std::fs::File;

use ext4kit_blockdev::BlockDevice;
use ext4kit_pagecache::MapFlags;

use crate::error::{Error, Result};
use crate::fs::Fs;

impl Fs {
    /// Copies `len` bytes of `src` (from `src_off`) to offset `offset` of regular file `ino`,
    /// allocating its blocks now and copying inside the kernel where the device allows, and
    /// raises the file size to the end of the copy. For filling a new file (nothing else may
    /// have it open, and the range must not be mapped yet): a partial last block is written
    /// whole, zero-padded.
    pub fn write_from_file(
        &self,
        ino: u32,
        src: &File,
        src_off: u64,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        self.write_from_file_with(ino, src, src_off, offset, len, true)?;
        self.commit_if_full()
    }

    /// [`Fs::write_from_file`]; `whole_blocks: false` copies just the bytes, leaving the rest
    /// of partial first and last blocks as the device holds them (image building: the device
    /// is freshly zeroed).
    pub(crate) fn write_from_file_with(
        &self,
        ino: u32,
        src: &File,
        src_off: u64,
        offset: u64,
        len: u64,
        whole_blocks: bool,
    ) -> Result<()> {
        let core = &self.core;
        let w = core.writer("write")?;
        if w.open_mappings.lock().contains_key(&ino) {
            return Err(Error::InvalidArgument(format!(
                "inode {ino}: direct copy into a file with cached pages"
            )));
        }
        let bs = u64::from(core.block_size);
        let end = offset + len;
        let mut pos = offset;
        if whole_blocks && pos % bs != 0 {
            let n = end.min((pos / bs + 1) * bs) - pos;
            self.write_partial_block(ino, src, src_off, pos, n)?;
            pos += n;
        }
        let body_end = if whole_blocks {
            (end / bs * bs).max(pos)
        } else {
            end
        };
        let dev = core.cache.device();
        for run in self.map_body(ino, pos, body_end)? {
            dev.copy_from_file(src, src_off + (run.file_off - offset), run.dev_off, run.len)
                .map_err(|err| Error::io(err, Some(run.dev_off / bs)).with_inode(ino))?;
        }
        pos = pos.max(body_end);
        if pos < end {
            self.write_partial_block(ino, src, src_off + (pos - offset), pos, end - pos)?;
        }
        self.raise_size(ino, end)
    }

    /// Allocates the blocks under bytes `offset..offset + len` of new regular file `ino` (image
    /// building: the device is freshly zeroed, so partial blocks need no padding) and raises
    /// its size to the end; returns where the bytes go, for a copy made later, by any thread,
    /// with [`BlockDevice::copy_from_file`]. Nothing reads the file before that copy is done.
    pub(crate) fn allocate_for_copy(
        &self,
        ino: u32,
        offset: u64,
        len: u64,
    ) -> Result<Vec<CopyRun>> {
        let w = self.core.writer("write")?;
        if w.open_mappings.lock().contains_key(&ino) {
            return Err(Error::InvalidArgument(format!(
                "inode {ino}: direct copy into a file with cached pages"
            )));
        }
        let runs = self.map_body(ino, offset, offset + len)?;
        self.raise_size(ino, offset + len)?;
        Ok(runs)
    }

    /// Maps (allocating) file bytes `pos..end` of `ino`: one run per extent found or made.
    fn map_body(&self, ino: u32, mut pos: u64, end: u64) -> Result<Vec<CopyRun>> {
        let core = &self.core;
        let bs = u64::from(core.block_size);
        let mut runs = Vec::new();
        while pos < end {
            let lblk = pos / bs;
            let want = (end - 1) / bs - lblk + 1;
            let e = core.w_map_create(ino, lblk, want, MapFlags::CREATE)?;
            let run_end = ((e.lblk + e.len) * bs).min(end);
            let dev_off = (e.pblk + (lblk - e.lblk)) * bs + pos % bs;
            runs.push(CopyRun {
                file_off: pos,
                dev_off,
                len: run_end - pos,
            });
            pos = run_end;
        }
        Ok(runs)
    }

    /// Raises the size of `ino` to `end` if it is smaller.
    fn raise_size(&self, ino: u32, end: u64) -> Result<()> {
        let core = &self.core;
        let w = core.writer("write")?;
        let mut meta = w.meta.lock();
        let inode = meta.inode(core, ino)?;
        if end > inode.size() {
            inode.set_size(end);
            meta.dirty_inode(ino);
        }
        Ok(())
    }

    /// Writes `n` bytes of `src` (at `src_off`) at file offset `pos`, all inside one block,
    /// by writing that whole block: zeros around the bytes if it was a hole, its old bytes if not.
    fn write_partial_block(
        &self,
        ino: u32,
        src: &File,
        src_off: u64,
        pos: u64,
        n: u64,
    ) -> Result<()> {
        let core = &self.core;
        let bs = u64::from(core.block_size);
        let lblk = pos / bs;
        let inode = core.read_inode(ino)?;
        let was_hole =
            core.map_inode(ino, &inode, lblk, 1)?.kind == ext4kit_pagecache::ExtentKind::Hole;
        let e = core.w_map_create(ino, lblk, 1, MapFlags::CREATE)?;
        let pblk = e.pblk + (lblk - e.lblk);
        let dev = core.cache.device();
        let dev_block = pblk * bs / u64::from(dev.geometry().block_size);
        let io = |err| Error::io(err, Some(pblk)).with_inode(ino);
        let mut block = vec![0u8; bs as usize];
        if !was_hole {
            ext4kit_blockdev::BlockDeviceExt::read_blocks(&**dev, dev_block, &mut block)
                .map_err(io)?;
        }
        let at = (pos % bs) as usize;
        read_exact_at(src, &mut block[at..at + n as usize], src_off).map_err(io)?;
        ext4kit_blockdev::BlockDeviceExt::write_blocks(&**dev, dev_block, &block).map_err(io)
    }
}

/// Where a piece of a file goes on the device (see [`Fs::allocate_for_copy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CopyRun {
    /// Offset in the file.
    pub file_off: u64,
    /// Byte offset on the device.
    pub dev_off: u64,
    /// Length in bytes.
    pub len: u64,
}

fn read_exact_at(
    src: &File,
    buf: &mut [u8],
    off: u64,
) -> std::result::Result<(), ext4kit_blockdev::IoError> {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::pread(src, &mut buf[got..], off + got as u64) {
            Ok(0) => {
                return Err(ext4kit_blockdev::IoError::Os {
                    op: ext4kit_blockdev::BioOp::Read,
                    block: 0,
                    errno: libc::EIO,
                });
            }
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(ext4kit_blockdev::IoError::Os {
                    op: ext4kit_blockdev::BioOp::Read,
                    block: 0,
                    errno: e.raw_os_error(),
                });
            }
        }
    }
    Ok(())
}
