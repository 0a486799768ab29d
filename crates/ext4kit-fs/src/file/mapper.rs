//! The page cache's [`BlockMapper`], implemented by [`Core`]: lookups through the block maps of
//! [`crate::extent::map`] (every write call answers EROFS on a read-only image) and, writing,
//! delalloc reservations, allocation of whole extents at writeback (`ext4_map_blocks` with
//! `EXT4_GET_BLOCKS_CREATE`), unwritten-extent conversion after the data IO, on-disk size
//! updates, truncation and preallocation.
//!
//! Allocation is goal-directed: a new extent goes right after the physical end of the extent
//! before it, so a file written in order stays contiguous; the first extent of a file goes near
//! its inode's group.

use ext4kit_format::extent::{Extent as TreeExtent, MAX_INIT_LEN, MAX_UNWRITTEN_LEN};
use ext4kit_pagecache::{BlockMapper, Extent, ExtentKind, MapError, MapFlags, UnwrittenRange};

use crate::alloc::MetaState;
use crate::error::{Error, Result};
use crate::extent::store::with_tree;
use crate::fs::Core;

impl Core {
    /// Reserves `count` blocks for delayed allocation by `ino`.
    pub(crate) fn w_reserve(&self, ino: u32, count: u64) -> Result<()> {
        let w = self.writer("reserve")?;
        let r = {
            let mut meta = w.meta.lock();
            match meta.reserve(ino, count) {
                // Blocks freed since the last sync come back first.
                Err(Error::NoSpace(_)) if meta.release_for_space(self)? > 0 => {
                    meta.reserve(ino, count)
                }
                r => r,
            }
        };
        // Out of space: deleted files whose page cache was let go (or is being let go) are freed
        // first.
        if matches!(r, Err(Error::NoSpace(_))) && crate::orphan::reclaim_for_space(self)? > 0 {
            return w.meta.lock().reserve(ino, count);
        }
        r
    }

    /// Gives back reserved blocks.
    pub(crate) fn w_release(&self, ino: u32, count: u64) {
        if let Some(w) = &self.write {
            w.meta.lock().release(ino, count);
        }
    }

    /// Maps `lblk..lblk+len` of `ino`, allocating a hole at `lblk` (up to the next mapped block)
    /// as one extent where the free space allows.
    pub(crate) fn w_map_create(
        &self,
        ino: u32,
        lblk: u64,
        len: u64,
        flags: MapFlags,
    ) -> Result<Extent> {
        let w = self.writer("allocate")?;
        let mut meta = w.meta.lock();
        let unwritten = flags.contains(MapFlags::UNWRITTEN);
        let e = self.alloc_extent(&mut meta, ino, lblk, len, unwritten)?;
        if flags.contains(MapFlags::DELALLOC) && e.kind != ExtentKind::Hole && e.lblk == lblk {
            meta.release(ino, e.len.min(len));
        }
        Ok(e)
    }

    /// The extent at `lblk`, allocating the hole there if there is one.
    fn alloc_extent(
        &self,
        meta: &mut MetaState,
        ino: u32,
        lblk: u64,
        len: u64,
        unwritten: bool,
    ) -> Result<Extent> {
        let lblk32 = u32::try_from(lblk).map_err(|_| {
            Error::InvalidArgument(format!("block {lblk} beyond the extent format"))
        })?;
        let (found, prev, next) = with_tree(self, meta, ino, 0, |t| {
            let found = t.lookup(lblk32)?;
            if found.is_some() {
                return Ok((found, None, None));
            }
            let (prev, next) = t.neighbours(lblk32)?;
            Ok((None, prev, next))
        })?;
        if let Some(e) = found {
            let kind = if e.unwritten {
                ExtentKind::Unwritten
            } else {
                ExtentKind::Written
            };
            return Ok(Extent {
                lblk: u64::from(e.logical_block),
                len: u64::from(e.len),
                pblk: e.physical_block,
                kind,
            });
        }
        let cap = u64::from(if unwritten {
            MAX_UNWRITTEN_LEN
        } else {
            MAX_INIT_LEN
        });
        let mut want = len.max(1).min(cap);
        if let Some(n) = next {
            want = want.min(u64::from(n) - lblk);
        }
        let goal = match prev {
            Some(p) => p.physical_block + (lblk - u64::from(p.logical_block)),
            None => {
                let ipg = meta.sb.inodes_per_group();
                let g = (ino - 1) / ipg;
                meta.groups.get(g as usize).map_or(0, |gd| gd.inode_table())
            }
        };
        // Blocks that would still merge into the extent before (same state, adjacent).
        let room = match prev {
            Some(p)
                if u64::from(p.logical_block) + u64::from(p.len) == lblk
                    && p.unwritten == unwritten =>
            {
                cap.saturating_sub(u64::from(p.len))
            }
            _ => 0,
        };
        // How far the file streams on: what is asked for, or as much as it holds already.
        let stream = lblk.max(len);
        let (pblk, got) = meta.alloc_stream(self, goal, want, stream, room)?;
        meta.add_blocks(self, ino, got as i64)?;
        let ext = TreeExtent {
            logical_block: lblk32,
            len: got as u32,
            physical_block: pblk,
            unwritten,
        };
        if let Err(e) = with_tree(self, meta, ino, pblk, |t| t.insert(ext)) {
            // Do not leak the blocks.
            let _ = meta.free_blocks_range(self, pblk, got);
            let _ = meta.add_blocks(self, ino, -(got as i64));
            return Err(e);
        }
        let kind = if unwritten {
            ExtentKind::Unwritten
        } else {
            ExtentKind::Written
        };
        Ok(Extent {
            lblk,
            len: got,
            pblk,
            kind,
        })
    }

    /// Converts `ranges` of `ino` from unwritten to written.
    pub(crate) fn w_convert(&self, ino: u32, ranges: &[UnwrittenRange]) -> Result<()> {
        let w = self.writer("convert")?;
        let mut meta = w.meta.lock();
        for r in ranges {
            let (l, n) = (
                u32::try_from(r.lblk).map_err(|_| Error::InvalidArgument("range".into()))?,
                r.len as u32,
            );
            with_tree(self, &mut meta, ino, 0, |t| t.set_unwritten(l, n, false))?;
        }
        Ok(())
    }

    /// Raises the on-disk size of `ino` to `size`.
    pub(crate) fn w_update_disksize(&self, ino: u32, size: u64) -> Result<()> {
        let w = self.writer("update the size")?;
        let mut meta = w.meta.lock();
        let inode = meta.inode(self, ino)?;
        if size > inode.size() {
            inode.set_size(size);
            meta.dirty_inode(ino);
        }
        Ok(())
    }

    /// Frees every block of `ino` from `first_lblk` on and sets its size.
    pub(crate) fn w_truncate(&self, ino: u32, first_lblk: u64, new_size: u64) -> Result<()> {
        let w = self.writer("truncate")?;
        let mut meta = w.meta.lock();
        with_tree(self, &mut meta, ino, 0, |t| {
            t.remove_range(first_lblk, 1 << 32)
        })?;
        let inode = meta.inode(self, ino)?;
        inode.set_size(new_size);
        meta.dirty_inode(ino);
        Ok(())
    }

    /// Frees the blocks of `ino` in `lblk..lblk+len`.
    pub(crate) fn w_punch(&self, ino: u32, lblk: u64, len: u64) -> Result<()> {
        let w = self.writer("punch")?;
        let mut meta = w.meta.lock();
        with_tree(self, &mut meta, ino, 0, |t| {
            t.remove_range(lblk, lblk + len)
        })?;
        meta.dirty_inode(ino);
        Ok(())
    }

    /// Allocates unwritten extents over the holes of `lblk..lblk+len`.
    pub(crate) fn w_fallocate(&self, ino: u32, lblk: u64, len: u64) -> Result<()> {
        let w = self.writer("fallocate")?;
        let mut meta = w.meta.lock();
        let end = lblk + len;
        let mut at = lblk;
        while at < end {
            let e = self.alloc_extent(&mut meta, ino, at, end - at, true)?;
            at = (e.lblk + e.len).max(at + 1);
        }
        Ok(())
    }
}

/// The filesystem's error, boxed for the page cache, which hands it back unchanged to the call
/// that made it ask ([`Error::from_cache`] takes it out again).
fn to_map_error(e: Error) -> MapError {
    MapError::new(e.errno(), e)
}

fn read_only(what: &str) -> MapError {
    to_map_error(Error::ReadOnly(format!(
        "{what}: the image is open read-only"
    )))
}

impl BlockMapper for Core {
    fn reserve(&self, ino: u64, count: u64) -> Result<(), MapError> {
        if self.write.is_none() {
            return Err(read_only("reserve"));
        }
        self.w_reserve(ino_u32(ino)?, count).map_err(to_map_error)
    }

    fn release(&self, ino: u64, count: u64) {
        if let Ok(i) = ino_u32(ino) {
            self.w_release(i, count);
        }
    }

    fn map_blocks(
        &self,
        ino: u64,
        lblk: u64,
        len: u64,
        flags: MapFlags,
    ) -> Result<Extent, MapError> {
        if flags.contains(MapFlags::CREATE) {
            if self.write.is_none() {
                return Err(read_only("allocate"));
            }
            return self
                .w_map_create(ino_u32(ino)?, lblk, len, flags)
                .map_err(to_map_error);
        }
        let result = u32::try_from(ino)
            .map_err(|_| Error::InvalidArgument(format!("inode number {ino} too large")))
            .and_then(|i| {
                let inode = self.read_inode(i)?;
                self.map_inode(i, &inode, lblk, len)
            });
        result.map_err(to_map_error)
    }

    fn convert_unwritten(&self, ino: u64, ranges: &[UnwrittenRange]) -> Result<(), MapError> {
        if self.write.is_none() {
            return Err(read_only("convert unwritten extents"));
        }
        self.w_convert(ino_u32(ino)?, ranges).map_err(to_map_error)
    }

    fn update_disksize(&self, ino: u64, size: u64) -> Result<(), MapError> {
        if self.write.is_none() {
            return Err(read_only("update the size"));
        }
        self.w_update_disksize(ino_u32(ino)?, size)
            .map_err(to_map_error)
    }

    fn truncate(&self, ino: u64, first_lblk: u64, new_size: u64) -> Result<(), MapError> {
        if self.write.is_none() {
            return Err(read_only("truncate"));
        }
        self.w_truncate(ino_u32(ino)?, first_lblk, new_size)
            .map_err(to_map_error)
    }

    fn fallocate(&self, ino: u64, lblk: u64, len: u64) -> Result<(), MapError> {
        if self.write.is_none() {
            return Err(read_only("fallocate"));
        }
        self.w_fallocate(ino_u32(ino)?, lblk, len)
            .map_err(to_map_error)
    }

    fn punch_hole(&self, ino: u64, lblk: u64, len: u64) -> Result<(), MapError> {
        if self.write.is_none() {
            return Err(read_only("punch a hole"));
        }
        self.w_punch(ino_u32(ino)?, lblk, len).map_err(to_map_error)
    }
}

fn ino_u32(ino: u64) -> Result<u32, MapError> {
    u32::try_from(ino).map_err(|_| {
        to_map_error(Error::InvalidArgument(format!(
            "inode number {ino} too large"
        )))
    })
}
