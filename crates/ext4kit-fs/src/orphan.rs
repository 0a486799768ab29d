//! Orphans: inodes with no links left that cannot be freed yet because their page cache is
//! still in use (a [`ext4kit_pagecache::Mapping`] or a [`crate::FileReader`] alive), and the
//! orphans an image was left with.
//!
//! - In memory, [`Orphans`] (in [`Core`]) lists them head first, each with a weak handle on its
//!   page cache. On disk they form the kernel's list: `s_last_orphan` names the head and each
//!   inode's `i_dtime` the next one (0 ends it). The list is rewritten whenever it changes and
//!   reaches the disk at the next sync, so an image synced while a file is open-but-unlinked
//!   tells the kernel and e2fsck what to free.
//! - An orphan is freed by [`Fs::close_file`] or [`Fs::sync`] once no strong handle on its page
//!   cache is left.
//! - Opening an image for writing cleans up what a previous writer left: every inode on the
//!   `s_last_orphan` list and, when the filesystem has `orphan_file` and `orphan_present` is
//!   set, every inode named in the orphan file (whose blocks are then zeroed and re-checksummed,
//!   and `orphan_present` cleared). As the kernel's `ext4_orphan_cleanup`: an orphan with no
//!   links is freed; one that still has links (a truncate that did not finish) loses the blocks
//!   past its size. Orphans of our own always go on the `s_last_orphan` list, which the kernel
//!   and e2fsck process on orphan_file filesystems too.
//!
//! Lock order: `WriteState::meta`, then `Core::orphans`; the orphan
//! lock alone never waits for the metadata lock.

use std::collections::{BTreeSet, HashMap};

use ext4kit_format::bitmap;
use ext4kit_format::group_desc::GroupFlags;
use ext4kit_format::inode::InodeFlags;
use ext4kit_format::orphan::OrphanBlock;
use ext4kit_format::{CompatFeatures, RoCompatFeatures, Structure};
use ext4kit_pagecache::WeakMapping;

use crate::alloc::MetaState;
use crate::error::{Corruption, Error, Result, ResultExt};
use crate::extent::store::with_tree;
use crate::fs::{Core, Fs};
use crate::inode::evict::evict_inode;

// The magic in the tail of every orphan file block; the layout is `ext4kit_format::orphan`'s.
use ext4kit_format::orphan::ORPHAN_BLOCK_MAGIC;

/// The orphans of an open filesystem (see the module docs).
#[derive(Debug, Default)]
pub struct Orphans {
    /// On-disk list order, head (`s_last_orphan`) first.
    list: Vec<u32>,
    /// The page cache that keeps each orphan alive.
    holders: HashMap<u32, WeakMapping>,
}

impl Orphans {
    /// The orphans, head of the on-disk list first.
    pub fn inodes(&self) -> &[u32] {
        &self.list
    }

    /// The page cache keeping orphan `ino` alive, if something still holds it.
    pub(crate) fn held(&self, ino: u32) -> Option<ext4kit_pagecache::Mapping> {
        self.holders.get(&ino).and_then(WeakMapping::upgrade)
    }
}

/// Rewrites the on-disk list: `s_last_orphan` and each orphan's `i_dtime`.
fn relink(meta: &mut MetaState, core: &Core, list: &[u32]) -> Result<()> {
    meta.sb.set_last_orphan(list.first().copied().unwrap_or(0));
    for (i, &ino) in list.iter().enumerate() {
        let next = list.get(i + 1).copied().unwrap_or(0);
        let inode = meta.inode(core, ino)?;
        if inode.dtime() != next {
            inode.set_dtime(next);
            meta.dirty_inode(ino);
        }
    }
    Ok(())
}

/// Puts `ino` at the head of the orphan list (it has no links left).
pub(crate) fn add(meta: &mut MetaState, core: &Core, ino: u32) -> Result<()> {
    let list = {
        let mut o = core.orphans.lock();
        if o.list.contains(&ino) {
            return Ok(());
        }
        o.list.insert(0, ino);
        o.list.clone()
    };
    relink(meta, core, &list)
}

/// Takes `ino` off the orphan list, if it is on it.
pub(crate) fn forget(meta: &mut MetaState, core: &Core, ino: u32) -> Result<()> {
    let list = {
        let mut o = core.orphans.lock();
        o.holders.remove(&ino);
        let Some(pos) = o.list.iter().position(|i| *i == ino) else {
            return Ok(());
        };
        o.list.remove(pos);
        o.list.clone()
    };
    relink(meta, core, &list)?;
    let inode = meta.inode(core, ino)?;
    inode.set_dtime(0);
    meta.dirty_inode(ino);
    Ok(())
}

/// Frees orphan `ino` unless its page cache is in use; then remembers who holds it.
///
/// Writeback in flight (the background flusher, io_ends) holds the page cache for a moment:
/// that is waited for, a few times, before the inode is left on the orphan list.
pub(crate) fn release_if_unused(fs: &Fs, ino: u32) -> Result<()> {
    let core = &fs.core;
    let w = core.writer("free an inode")?;
    // The page cache: the one kept for the next sync, or whatever else is alive (a new, empty
    // one otherwise — dropped right away).
    let kept = w.open_mappings.lock().remove(&ino);
    let m = kept.unwrap_or_else(|| fs.pages.mapping(u64::from(ino), 0, 0));
    let weak = m.downgrade();
    drop(m);
    for attempt in 0..4u64 {
        let Some(live) = weak.upgrade() else { break };
        if attempt == 3 {
            drop(live);
            core.orphans.lock().holders.insert(ino, weak);
            return Ok(());
        }
        live.wait_writeback();
        drop(live);
        std::thread::sleep(std::time::Duration::from_micros(100 << attempt));
    }
    let mut meta = w.meta.lock();
    let still_orphan = core.orphans.lock().list.contains(&ino);
    if still_orphan && meta.inode(core, ino)?.links_count() == 0 {
        evict_inode(&mut meta, core, ino)?;
    }
    Ok(())
}

/// Frees the orphans whose page cache nobody holds any more (all of them, or only `only`).
/// Returns how many were freed.
pub(crate) fn release_unused(core: &Core, only: Option<u32>) -> Result<usize> {
    let w = core.writer("free orphans")?;
    let candidates: Vec<u32> = {
        let o = core.orphans.lock();
        o.list
            .iter()
            .copied()
            .filter(|i| only.is_none_or(|x| x == *i))
            .filter(|i| o.holders.get(i).is_none_or(|h| h.upgrade().is_none()))
            .collect()
    };
    if candidates.is_empty() {
        return Ok(0);
    }
    let mut meta = w.meta.lock();
    let mut freed = 0;
    for ino in candidates {
        // Re-check under the metadata lock: a handle may have come back.
        let free = {
            let o = core.orphans.lock();
            o.list.contains(&ino) && o.holders.get(&ino).is_none_or(|h| h.upgrade().is_none())
        };
        if free && meta.inode(core, ino)?.links_count() == 0 {
            evict_inode(&mut meta, core, ino)?;
            freed += 1;
        }
    }
    Ok(freed)
}

/// At sync: writes back what is dirty in the page caches that keep orphans alive (sync writes
/// everything back, deleted-but-open files included), which also waits out a background
/// writeback pass on one, then frees the orphans nobody holds any more. An orphan still held
/// after that is held by the library's user and stays on the orphan list.
pub(crate) fn release_at_sync(core: &Core) -> Result<usize> {
    let holders: Vec<WeakMapping> = core.orphans.lock().holders.values().cloned().collect();
    let mut alive = false;
    for h in holders {
        if let Some(m) = h.upgrade() {
            alive = true;
            // Errors are recorded on the file and reach its handles' fsync.
            let _ = m.writepages(&mut ext4kit_pagecache::WritebackControl::sync_all());
            m.wait_writeback();
        }
    }
    let mut freed = release_unused(core, None)?;
    if alive {
        // A flusher pass that just finished drops its reference a moment later.
        for attempt in 0..3u64 {
            let still = core
                .orphans
                .lock()
                .holders
                .values()
                .any(|h| h.upgrade().is_some());
            if !still {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(100 << attempt));
            freed += release_unused(core, None)?;
        }
    }
    Ok(freed)
}

/// Out of space: frees the orphans nobody holds, waiting (at most 5 s, backing off) for
/// writeback in flight on deleted files — the background flusher may still be writing one — to
/// let go of their page caches, as the kernel retries an allocation after a journal commit
/// (`ext4_should_retry_alloc`). Returns how many were freed.
pub(crate) fn reclaim_for_space(core: &Core) -> Result<usize> {
    // Bounded by time, not by rounds: on a loaded machine the flusher can sit for a long
    // moment between finishing a deleted file's writeback and dropping its handle.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut backoff = std::time::Duration::from_millis(1);
    loop {
        let n = release_unused(core, None)?;
        if n > 0 {
            return Ok(n);
        }
        let holders: Vec<WeakMapping> = core.orphans.lock().holders.values().cloned().collect();
        let mut alive = false;
        for h in holders {
            if let Some(m) = h.upgrade() {
                alive = true;
                m.wait_writeback();
            }
        }
        // Nothing held: nothing more will come free by waiting.
        if !alive || std::time::Instant::now() >= deadline {
            return release_unused(core, None);
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(std::time::Duration::from_millis(50));
    }
}

/// Whether inode `ino` is marked in use in its group's inode bitmap.
fn inode_in_use(meta: &MetaState, core: &Core, ino: u32) -> Result<bool> {
    let ipg = meta.sb.inodes_per_group();
    let g = (ino - 1) / ipg;
    let Some(gd) = meta.groups.get(g as usize) else {
        return Ok(false);
    };
    if gd.flags().contains(GroupFlags::INODE_UNINIT) {
        return Ok(false);
    }
    let bm = core.cache.get(gd.inode_bitmap()).ctx_group(g)?;
    let used = bitmap::test(&bm.read(), ((ino - 1) % ipg) as usize) == Some(true);
    Ok(used)
}

fn bad_orphan(ino: u32) -> Error {
    Error::corrupt(Structure::Superblock, Corruption::OrphanList { ino })
}

/// Cleans up the orphans an image was left with (see the module docs). Returns how many
/// inodes were processed.
pub(crate) fn clean_at_open(fs: &Fs) -> Result<usize> {
    let core = &fs.core;
    let w = core.writer("clean up orphans")?;
    let mut meta = w.meta.lock();
    let first_ino = meta.sb.first_ino();
    let inodes_count = meta.sb.inodes_count();
    let mut pending: Vec<u32> = Vec::new();
    let mut seen: BTreeSet<u32> = BTreeSet::new();
    // The s_last_orphan list.
    let mut ino = meta.sb.last_orphan();
    while ino != 0 {
        if ino < first_ino || ino > inodes_count || !seen.insert(ino) {
            return Err(bad_orphan(ino));
        }
        if !inode_in_use(&meta, core, ino)? {
            // A stale head: nothing to free, and the chain through it cannot be trusted.
            break;
        }
        let next = meta
            .inode(core, ino)
            .map_err(|e| e.with_inode(ino))?
            .dtime();
        pending.push(ino);
        ino = next;
    }
    if meta.sb.last_orphan() != 0 {
        meta.sb.set_last_orphan(0);
    }
    // The orphan file.
    let of_ino = meta.sb.orphan_file_inum();
    if meta.sb.has_compat(CompatFeatures::ORPHAN_FILE)
        && meta.sb.has_ro_compat(RoCompatFeatures::ORPHAN_PRESENT)
        && of_ino != 0
    {
        for o in read_and_clear_orphan_file(&mut meta, core, of_ino)? {
            if o < first_ino || o > inodes_count {
                return Err(bad_orphan(o));
            }
            if seen.insert(o) {
                pending.push(o);
            }
        }
    }
    if meta.sb.has_ro_compat(RoCompatFeatures::ORPHAN_PRESENT) {
        let mut f = meta.sb.feature_ro_compat();
        f.remove(RoCompatFeatures::ORPHAN_PRESENT);
        meta.sb.set_feature_ro_compat(f);
    }
    let n = pending.len();
    for ino in pending {
        if !inode_in_use(&meta, core, ino)? {
            continue;
        }
        let (links, size, regular_extents) = {
            let inode = meta.inode(core, ino)?;
            (
                inode.links_count(),
                inode.size(),
                inode.is_regular() && inode.flags().contains(InodeFlags::EXTENTS),
            )
        };
        if links == 0 {
            evict_inode(&mut meta, core, ino)?;
        } else {
            if regular_extents {
                let from = size.div_ceil(u64::from(core.block_size));
                with_tree(core, &mut meta, ino, 0, |t| t.remove_range(from, 1 << 32))?;
            }
            let inode = meta.inode(core, ino)?;
            inode.set_dtime(0);
            meta.dirty_inode(ino);
        }
    }
    Ok(n)
}

/// Reads every block of the orphan file, returns the inode numbers in it, and zeroes them
/// (tails kept, checksums updated).
fn read_and_clear_orphan_file(meta: &mut MetaState, core: &Core, of_ino: u32) -> Result<Vec<u32>> {
    let (generation, extents) = {
        let inode = meta.inode(core, of_ino)?;
        if !inode.flags().contains(InodeFlags::EXTENTS) {
            return Err(Error::unsupported(crate::error::Unsupported::Other(
                format!("orphan file inode {of_ino} is not extent-mapped"),
            )));
        }
        let g = inode.generation();
        (g, with_tree(core, meta, of_ino, 0, |t| t.extents())?)
    };
    let mut out = Vec::new();
    for e in extents {
        if e.unwritten {
            continue;
        }
        core.check_range(Structure::Inode, e.physical_block, u64::from(e.len))
            .ctx_inode(of_ino)?;
        for k in 0..u64::from(e.len) {
            let pblk = e.physical_block + k;
            let mb = core.cache.get(pblk).ctx_inode(of_ino)?;
            let mut block = OrphanBlock::from_bytes(&mb.read())
                .ctx_inode(of_ino)
                .ctx_block(pblk)?;
            let magic = block.magic();
            if magic != ORPHAN_BLOCK_MAGIC {
                return Err(Error::corrupt(
                    Structure::Inode,
                    Corruption::OrphanFile {
                        block: pblk,
                        reason: format!(
                            "tail magic {magic:#010x}, expected {ORPHAN_BLOCK_MAGIC:#010x}"
                        ),
                    },
                )
                .with_inode(of_ino));
            }
            if let Some(seed) = core.csum_seed {
                let stored = block.stored_checksum();
                let computed = block.compute_checksum(seed, of_ino, generation, pblk);
                if stored != computed {
                    return Err(Error::ChecksumMismatch {
                        structure: Structure::Inode,
                        expected: computed,
                        found: stored,
                        context: ext4kit_format::ErrorContext::default(),
                    }
                    .with_inode(of_ino)
                    .with_block(pblk));
                }
            }
            let inodes = block.inodes();
            if !inodes.is_empty() {
                out.extend(inodes);
                block.clear();
                if let Some(seed) = core.csum_seed {
                    block.update_checksum(seed, of_ino, generation, pblk);
                }
                mb.write().copy_from_slice(block.as_bytes());
                mb.mark_dirty();
            }
        }
    }
    Ok(out)
}

impl Fs {
    /// The inodes waiting on the orphan list (unlinked while their page cache was in use),
    /// head of the on-disk list first.
    pub fn orphans(&self) -> Vec<u32> {
        self.core.orphans.lock().inodes().to_vec()
    }
}
