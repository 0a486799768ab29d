//! Writing file data through the page cache: the page cache of a file ([`Fs::data_mapping`]),
//! writes (delayed allocation), sizes (truncate, or extend with a hole), preallocation and
//! hole punching, and letting go of a file's page cache ([`Fs::close_file`]).
//!
//! The page cache calls back into the filesystem through the [`crate::file::mapper`] for
//! reservations, allocation at writeback, conversion of unwritten extents and truncation.
//! These calls leave times to the caller ([`Fs::set_times`]).

use ext4kit_pagecache::Mapping;

use crate::error::{Error, PathBytes, Result};
use crate::fs::Fs;

impl Fs {
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

    /// Preallocates `offset..offset+len` of regular file `ino` as unwritten extents (reading as
    /// zeros; the page cache converts them once data written there reached the disk), growing
    /// the file to cover the range unless `keep_size`.
    pub fn fallocate(&self, ino: u32, offset: u64, len: u64, keep_size: bool) -> Result<()> {
        self.core.writer("fallocate")?;
        self.check_regular_for_write(ino)?;
        let m = self.data_mapping(ino)?;
        m.fallocate(offset, len, keep_size)
            .map_err(|e| Error::from_cache(ino, e))?;
        self.commit_if_full()
    }

    /// Punches a hole in `offset..offset+len` of regular file `ino` (the size stays): partial
    /// blocks at the edges are zeroed, whole blocks are freed (extents split as needed).
    pub fn punch_hole(&self, ino: u32, offset: u64, len: u64) -> Result<()> {
        self.core.writer("punch a hole")?;
        self.check_regular_for_write(ino)?;
        let m = self.data_mapping(ino)?;
        m.punch_hole(offset, len)
            .map_err(|e| Error::from_cache(ino, e))?;
        self.commit_if_full()
    }

    /// Lets go of a file's page cache: if the file was unlinked while `mapping` (or another
    /// handle) kept it alive and nothing else holds it now, it is freed.
    pub fn close_file(&self, mapping: Mapping) -> Result<()> {
        let ino = u32::try_from(mapping.ino()).map_err(|_| {
            Error::InvalidArgument(format!("inode number {} too large", mapping.ino()))
        })?;
        drop(mapping);
        if self.core.write.is_some() {
            crate::orphan::release_unused(&self.core, Some(ino))?;
        }
        Ok(())
    }

    fn check_regular_for_write(&self, ino: u32) -> Result<()> {
        let inode = self.core.read_inode(ino)?;
        self.core.check_regular(ino, &inode)?;
        if inode.links_count() == 0 {
            return Err(Error::NotFound {
                path: PathBytes(format!("inode {ino} (deleted)").into_bytes()),
            });
        }
        Ok(())
    }
}
