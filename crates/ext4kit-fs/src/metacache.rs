//! The metadata block cache (the kernel's buffer cache for the block device).
//!
//! Every metadata block (group descriptor blocks, inode table blocks, extent tree blocks,
//! indirect blocks, directory blocks, xattr blocks, symlink blocks) is read through
//! [`MetaCache::get`], which returns an [`Arc<MetaBlock>`]: one shared copy per filesystem
//! block. File data does not come here; it goes through `ext4kit-pagecache`.
//!
//! # Design for writing
//! A [`MetaBlock`] keeps its bytes behind an `RwLock` and has a `dirty` flag. The read side only
//! reads; the write side will take [`MetaBlock::write`], change the bytes (recomputing the
//! structure's checksum), call [`MetaBlock::mark_dirty`], and write dirty blocks back (through
//! the journal) with [`MetaCache::dirty_blocks`] / [`MetaBlock::clear_dirty`]. Eviction never drops
//! a dirty block or a block someone still holds.
//!
//! # Bounds
//! At most `capacity` blocks are kept; past that, clean unreferenced blocks are evicted in
//! insertion order (a FIFO with second chance for blocks referenced since).
//!
//! # Locks
//! `map` (the index) is taken alone and never held across IO; a block's `data` lock is never
//! held while taking `map`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ext4kit_blockdev::{BlockDevice, BlockDeviceExt};
use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::error::{Error, Result};

/// One cached filesystem block.
#[derive(Debug)]
pub struct MetaBlock {
    block: u64,
    data: RwLock<Box<[u8]>>,
    dirty: AtomicBool,
    referenced: AtomicBool,
    /// The cache's count of dirty blocks (kept by `mark_dirty` / `clear_dirty`).
    dirty_count: Arc<AtomicUsize>,
}

impl MetaBlock {
    /// The filesystem block number.
    pub fn block(&self) -> u64 {
        self.block
    }

    /// The bytes, for reading.
    pub fn read(&self) -> RwLockReadGuard<'_, Box<[u8]>> {
        self.data.read()
    }

    /// The bytes, for changing (the caller then marks the block dirty).
    pub fn write(&self) -> RwLockWriteGuard<'_, Box<[u8]>> {
        self.data.write()
    }

    /// A copy of the bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.read().to_vec()
    }

    /// Marks the block as changed in memory (it will not be evicted until cleaned).
    pub fn mark_dirty(&self) {
        if !self.dirty.swap(true, Ordering::AcqRel) {
            self.dirty_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks the block as written back.
    pub fn clear_dirty(&self) {
        if self.dirty.swap(false, Ordering::AcqRel) {
            // Saturating: a recount may already have left this block out.
            let _ = self
                .dirty_count
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
        }
    }

    /// Whether the block has changes not yet written back.
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }
}

#[derive(Debug, Default)]
struct Index {
    blocks: HashMap<u64, Arc<MetaBlock>>,
    order: VecDeque<u64>,
}

/// A read-through cache of filesystem blocks over a device.
#[derive(Debug)]
pub struct MetaCache {
    dev: Arc<dyn BlockDevice>,
    block_size: usize,
    dev_per_block: u64,
    capacity: usize,
    map: Mutex<Index>,
    dirty_count: Arc<AtomicUsize>,
}

impl MetaCache {
    /// A cache of `block_size`-byte filesystem blocks over `dev` (whose block size divides
    /// `block_size`), keeping at most `capacity` blocks.
    pub fn new(dev: Arc<dyn BlockDevice>, block_size: usize, capacity: usize) -> Self {
        let dev_bs = dev.geometry().block_size.max(1) as usize;
        MetaCache {
            dev,
            block_size,
            dev_per_block: (block_size / dev_bs).max(1) as u64,
            capacity: capacity.max(16),
            map: Mutex::new(Index::default()),
            dirty_count: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The device.
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    /// Reads `block` without caching it (for one-shot reads such as journal blocks).
    pub fn read_uncached(&self, block: u64, buf: &mut [u8]) -> Result<()> {
        let start = block
            .checked_mul(self.dev_per_block)
            .ok_or_else(|| Error::io(ext4kit_blockdev::IoError::Shutdown, Some(block)))?;
        self.dev
            .read_blocks(start, buf)
            .map_err(|e| Error::io(e, Some(block)))
    }

    /// The cached block `block`, read from the device if needed.
    pub fn get(&self, block: u64) -> Result<Arc<MetaBlock>> {
        if let Some(b) = self.map.lock().blocks.get(&block) {
            b.referenced.store(true, Ordering::Relaxed);
            return Ok(Arc::clone(b));
        }
        let mut buf = vec![0u8; self.block_size].into_boxed_slice();
        self.read_uncached(block, &mut buf)?;
        let fresh = Arc::new(MetaBlock {
            block,
            data: RwLock::new(buf),
            dirty: AtomicBool::new(false),
            referenced: AtomicBool::new(false),
            dirty_count: Arc::clone(&self.dirty_count),
        });
        let mut idx = self.map.lock();
        if let Some(b) = idx.blocks.get(&block) {
            // Someone else read it meanwhile; keep theirs (it may already be changed).
            return Ok(Arc::clone(b));
        }
        idx.blocks.insert(block, Arc::clone(&fresh));
        idx.order.push_back(block);
        self.evict(&mut idx);
        Ok(fresh)
    }

    /// The block `block` for overwriting whole: a zero-filled buffer, not read from the device
    /// (a newly allocated metadata block). Any cached copy is replaced.
    pub fn get_new(&self, block: u64) -> Arc<MetaBlock> {
        let fresh = Arc::new(MetaBlock {
            block,
            data: RwLock::new(vec![0u8; self.block_size].into_boxed_slice()),
            dirty: AtomicBool::new(false),
            referenced: AtomicBool::new(false),
            dirty_count: Arc::clone(&self.dirty_count),
        });
        let mut idx = self.map.lock();
        match idx.blocks.insert(block, Arc::clone(&fresh)) {
            None => idx.order.push_back(block),
            // The replaced copy will never be written back.
            Some(old) => old.clear_dirty(),
        }
        self.evict(&mut idx);
        fresh
    }

    /// Forgets block `block` (freed: its cached copy, dirty or not, must never be written back
    /// over whatever reuses the block).
    pub fn forget(&self, block: u64) {
        if let Some(old) = self.map.lock().blocks.remove(&block) {
            old.clear_dirty();
        }
    }

    /// Number of dirty blocks (what the next write-back would write; a block marked dirty after
    /// it was forgotten may count until [`MetaCache::recount_dirty`]).
    pub fn nr_dirty(&self) -> usize {
        self.dirty_count.load(Ordering::Relaxed)
    }

    /// Sets the dirty count from the blocks themselves.
    pub fn recount_dirty(&self) {
        let idx = self.map.lock();
        let n = idx.blocks.values().filter(|b| b.is_dirty()).count();
        self.dirty_count.store(n, Ordering::Relaxed);
    }

    /// Writes every dirty block back (physically contiguous blocks in one bio), waits for
    /// them, and marks them clean. Does not flush the device.
    pub fn write_back(&self) -> Result<usize> {
        let dirty = self.dirty_blocks();
        let mut waits = Vec::new();
        let mut i = 0;
        while i < dirty.len() {
            let start = dirty[i].block;
            let mut j = i + 1;
            while j < dirty.len() && dirty[j].block == dirty[j - 1].block + 1 && j - i < 256 {
                j += 1;
            }
            let mut bio = ext4kit_blockdev::Bio::new(
                ext4kit_blockdev::BioOp::Write,
                start * self.dev_per_block,
            );
            for b in &dirty[i..j] {
                // Cleared before the copy: a change made after this point dirties it again.
                b.clear_dirty();
                bio.push(ext4kit_blockdev::BioVec::from_vec(b.data.read().to_vec()));
            }
            let done = ext4kit_blockdev::Completion::new();
            done.attach(&mut bio);
            self.dev.submit(bio);
            waits.push((start, i, j, done));
            i = j;
        }
        let mut first_err = None;
        for (start, i, j, done) in waits {
            if let Err(e) = done.wait().1 {
                for b in &dirty[i..j] {
                    b.mark_dirty();
                }
                first_err.get_or_insert(Error::io(e, Some(start)));
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(dirty.len()),
        }
    }

    /// Drops clean, unreferenced blocks until the cache is within its capacity (or nothing
    /// more can go).
    fn evict(&self, idx: &mut Index) {
        // Bounded work per call: when most blocks are dirty or held (a large write), scanning
        // the whole queue on every insertion would be quadratic.
        let mut budget = idx.order.len().min(64);
        while idx.blocks.len() > self.capacity && budget > 0 {
            budget -= 1;
            let Some(b) = idx.order.pop_front() else {
                break;
            };
            let Some(entry) = idx.blocks.get(&b) else {
                continue;
            };
            let busy = Arc::strong_count(entry) > 1 || entry.is_dirty();
            if busy || entry.referenced.swap(false, Ordering::Relaxed) {
                idx.order.push_back(b);
                continue;
            }
            idx.blocks.remove(&b);
        }
    }

    /// Blocks marked dirty (for the write side's write-back).
    pub fn dirty_blocks(&self) -> Vec<Arc<MetaBlock>> {
        let idx = self.map.lock();
        let mut v: Vec<Arc<MetaBlock>> = idx
            .blocks
            .values()
            .filter(|b| b.is_dirty())
            .cloned()
            .collect();
        v.sort_by_key(|b| b.block);
        v
    }

    /// Number of cached blocks.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().blocks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext4kit_blockdev::MemDevice;

    #[test]
    fn caches_evicts_and_keeps_dirty_blocks() {
        let dev = Arc::new(MemDevice::new(1024, 256));
        dev.poke(5 * 1024, b"hello");
        let c = MetaCache::new(dev, 1024, 16);
        let b5 = c.get(5).unwrap();
        assert_eq!(&b5.read()[..5], b"hello");
        assert!(Arc::ptr_eq(&b5, &c.get(5).unwrap()));
        b5.mark_dirty();
        drop(b5);
        for i in 10..60 {
            c.get(i).unwrap();
        }
        assert!(c.len() <= 17, "{}", c.len());
        assert_eq!(c.dirty_blocks().len(), 1, "a dirty block is never evicted");
        assert_eq!(c.nr_dirty(), 1);
        c.get(5).unwrap().mark_dirty();
        assert_eq!(c.nr_dirty(), 1, "counted once");
        c.get_new(7).mark_dirty();
        c.get_new(7);
        assert_eq!(c.nr_dirty(), 1, "a replaced dirty copy no longer counts");
        c.forget(5);
        assert_eq!(c.nr_dirty(), 0);
        assert!(c.get(10_000).is_err(), "reads past the device fail");
    }
}
