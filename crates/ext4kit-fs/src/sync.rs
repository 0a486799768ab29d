//! Writing everything back: [`Fs::sync`] (file data, then orphans and loose extent trees, then
//! the metadata — as one jbd2 transaction when the image has an internal journal — then a
//! flush), [`Fs::flush_data`], [`Fs::write_back_metadata`]; early commits when a transaction
//! grows too large and commit holds that keep a group of operations in one
//! ([`Fs::hold_commits`]); closing an image ([`Fs::close`]) or giving up its changes
//! ([`Fs::discard`]), and the debug-build warning when the last clone of a writable image goes
//! with changes never synced.
//!
//! Each operation takes the metadata lock for its metadata changes only; file data goes through
//! the page cache (delayed allocation) without it. Nothing reaches the disk before a sync.
//! Operations that change metadata end with `commit_if_full`, which syncs early when a
//! transaction would grow too large (as jbd2 closes a transaction at its size limit).

use ext4kit_format::extent::{EXTENT_MAGIC, ExtentHeader};
use ext4kit_format::inode::InodeFlags;
use ext4kit_pagecache::Mapping;

use crate::error::{Error, Result};
use crate::extent::store::with_tree;
use std::sync::atomic::Ordering;

#[cfg(debug_assertions)]
use crate::fs::LastClone;
use crate::fs::{Core, Fs};

impl Fs {
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
        if let Some(jw) = &w.journal {
            let mut j = jw.lock();
            j.check_usable()?;
            self.flush_data()?;
            prepare_sync(self)?;
            return crate::journal::commit::commit(core, w, &mut j);
        }
        self.flush_data()?;
        // Orphans nobody holds are freed, loose extent trees packed, before metadata goes out.
        prepare_sync(self)?;
        {
            let mut meta = w.meta.lock();
            meta.write_back(core)?;
        }
        core.cache.write_back()?;
        ext4kit_blockdev::BlockDeviceExt::flush(&**core.cache.device())
            .map_err(|e| Error::io(e, None))?;
        Ok(())
    }

    /// Commits (a whole [`Fs::sync`]) when the metadata dirtied since the last sync nears half
    /// of what one journal transaction holds — called at the end of the operations that
    /// change metadata, the way jbd2 closes a transaction at its size limit. Does nothing
    /// without a journal, or while another thread syncs.
    pub(crate) fn commit_if_full(&self) -> Result<()> {
        let Some(w) = &self.core.write else {
            return Ok(());
        };
        let Some(jw) = &w.journal else { return Ok(()) };
        if w.meta.lock().holds > 0 {
            return Ok(());
        }
        let limit = match jw.try_lock() {
            Some(j) => j.max_transaction_blocks() / 2,
            None => return Ok(()),
        };
        let pending = self.core.cache.nr_dirty() + {
            let m = w.meta.lock();
            m.dirty_inodes.len()
                + m.dirty_groups.len()
                + m.deferred_frees.as_ref().map_or(0, Vec::len)
                + 1
        };
        if pending < limit {
            return Ok(());
        }
        jw.lock().count_early_commit();
        self.sync()
    }

    /// Opens a [`CommitHold`]: until it ends, operations do not commit early, so everything
    /// done under it — creating a file, filling it, setting its size, owner, mode, xattrs and
    /// times; or truncating a file and writing its new contents — reaches the disk in one
    /// transaction with the next sync: after a crash, all of it or none (the kernel cannot
    /// close a transaction while a handle is open either). Under a hold, blocks freed since
    /// the last commit are never reused (an overwritten file's old blocks keep its old
    /// contents until the commit that switches it), so running out of space fails instead.
    /// `expect_bytes`: about how much data will be written under it; when that does not fit
    /// beside the blocks awaiting a commit, the pending changes are committed first (a whole
    /// [`Fs::sync`]) so that those blocks are free again. Holds nest.
    pub fn hold_commits(&self, expect_bytes: u64) -> Result<CommitHold<'_>> {
        let Some(w) = &self.core.write else {
            return Ok(CommitHold {
                fs: self,
                open: false,
            });
        };
        let tight = {
            let m = w.meta.lock();
            let deferred: u64 = m
                .deferred_frees
                .as_ref()
                .map_or(0, |d| d.iter().map(|(_, n)| *n).sum());
            let need = expect_bytes.div_ceil(u64::from(self.core.block_size)) + 256;
            m.holds == 0 && deferred > 0 && m.free_blocks().saturating_sub(m.reserved) < need
        };
        if tight && w.journal.is_some() {
            self.sync()?;
        }
        w.meta.lock().holds += 1;
        Ok(CommitHold {
            fs: self,
            open: true,
        })
    }
}

/// Before a sync writes the metadata: frees the orphans nobody holds any more, and packs the
/// extent trees of changed inodes that e2fsck would find wider or deeper than needed (after
/// punches, truncates, deletes and mid-leaf splits), as its pass 1E would rebuild them.
pub(crate) fn prepare_sync(fs: &Fs) -> Result<()> {
    crate::orphan::release_at_sync(&fs.core)?;
    let core = &fs.core;
    let w = core.writer("sync")?;
    let mut meta = w.meta.lock();
    let candidates: Vec<u32> = meta
        .dirty_inodes
        .iter()
        .copied()
        .filter(|ino| {
            meta.inodes.get(ino).is_some_and(|i| {
                let b = i.block_area();
                i.links_count() > 0
                    && i.flags().contains(InodeFlags::EXTENTS)
                    && ExtentHeader::read(b)
                        .is_ok_and(|(magic, h)| magic == EXTENT_MAGIC && h.depth >= 1)
            })
        })
        .collect();
    for ino in candidates {
        with_tree(core, &mut meta, ino, 0, |t| {
            if t.needs_packing()? {
                t.rebuild_packed()
            } else {
                Ok(())
            }
        })?;
    }
    Ok(())
}

/// Keeps the operations done while it lives in one transaction (see [`Fs::hold_commits`]).
/// End it with [`CommitHold::end`], which commits if the journal is nearly full; dropped
/// without it (an error path), it only lets commits happen again.
#[must_use = "a hold ends when dropped"]
#[derive(Debug)]
pub struct CommitHold<'a> {
    fs: &'a Fs,
    open: bool,
}

impl CommitHold<'_> {
    fn release(&mut self) {
        if std::mem::take(&mut self.open) {
            if let Some(w) = &self.fs.core.write {
                let mut m = w.meta.lock();
                m.holds = m.holds.saturating_sub(1);
            }
        }
    }

    /// Ends the hold, committing (a whole sync) when the metadata changed since the last
    /// commit nears what one transaction holds.
    pub fn end(mut self) -> Result<()> {
        self.release();
        self.fs.commit_if_full()
    }
}

impl Drop for CommitHold<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

impl Fs {
    /// Syncs (when writable) and closes this handle, returning the sync's error — the way to
    /// end a writable image whose errors matter; dropping it does not sync. Other clones stay
    /// open. A read-only image just closes.
    pub fn close(self) -> Result<()> {
        if self.core.write.is_none() {
            return Ok(());
        }
        let r = self.sync();
        if r.is_err() {
            // Reported to the caller: no warning for these changes when the last clone goes.
            self.last.quiet.store(true, Ordering::Relaxed);
        }
        r
    }

    /// Whether anything changed since the last sync (file data, metadata, frees awaiting a
    /// commit): what [`Fs::sync`] would write. Always `false` read-only.
    pub fn has_unsynced_changes(&self) -> bool {
        self.core.has_unsynced_changes()
    }

    /// Closes this handle giving up every change not synced yet (in memory only; the image
    /// keeps what the last sync wrote), without the debug-build warning a drop would print —
    /// for a caller that decided not to commit (a command whose every operand failed). Applies
    /// to all clones: none of them warns when the last one goes.
    pub fn discard(self) {
        self.last.quiet.store(true, Ordering::Relaxed);
    }
}

impl Core {
    /// Whether anything changed since the last sync: dirty file data, dirty metadata blocks,
    /// changed inodes or descriptors, frees awaiting a commit.
    pub(crate) fn has_unsynced_changes(&self) -> bool {
        let Some(w) = &self.write else {
            return false;
        };
        if self.cache.nr_dirty() > 0 || w.open_mappings.lock().values().any(|m| m.nr_dirty() > 0) {
            return true;
        }
        let m = w.meta.lock();
        !m.dirty_inodes.is_empty()
            || !m.dirty_groups.is_empty()
            || m.deferred_frees.as_ref().is_some_and(|d| !d.is_empty())
    }
}

/// Debug builds: the last clone of a writable image went with changes never synced — almost
/// always a missing [`Fs::sync`] / [`Fs::close`] (they are lost), else a missing
/// [`Fs::discard`].
#[cfg(debug_assertions)]
impl Drop for LastClone {
    fn drop(&mut self) {
        if !self.quiet.load(Ordering::Relaxed) && self.core.has_unsynced_changes() {
            eprintln!(
                "ext4kit-fs: warning: an image open for writing was dropped with changes never \
                 synced (they are lost); end it with Fs::close or Fs::sync, or Fs::discard to \
                 drop them on purpose"
            );
        }
    }
}
