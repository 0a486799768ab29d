//! [`Page`]: one page of a file's cache, holding `blocks_per_page` blocks.
//!
//! # What a page owns
//! - `state`: page flags, one [`BlockState`] byte per block and one physical block number per
//!   block (`u64`, [`INVALID_PBLK`] while delayed or unknown) — the 1 + 8 bytes per block budget.
//!   The mutex is the per-page "uptodate lock" of the kernel: every block-state change and the
//!   completion count of blocks still in flight happen under it.
//! - `data`: the bytes, behind their own `Arc<RwLock>` so a bio can hold an owned read guard
//!   while the device reads them (stable pages: a writer waits for writeback before it takes the
//!   write lock, so the guard is never contended).
//!
//! # Locks
//! `LOCKED` (PG_locked) is a sleeping lock implemented with the flag and the page's condvar.
//! Lock order: page LOCKED → page `state` mutex; the mapping's tree mutex is never taken while a
//! page's `state` mutex is held. Completion takes only `state` (never LOCKED).

use std::sync::Arc;

use parking_lot::lock_api::{ArcRwLockReadGuard, ArcRwLockWriteGuard};
use parking_lot::{Condvar, Mutex, MutexGuard, RawRwLock, RwLock};

use crate::state::{BlockState, PageFlags};

/// Physical block number of a block that has none yet (delayed, or not looked up).
pub const INVALID_PBLK: u64 = u64::MAX;

/// The mutable state of a page, guarded by [`Page::state`].
#[derive(Debug)]
pub(crate) struct PageState {
    pub(crate) flags: PageFlags,
    pub(crate) blocks: Box<[BlockState]>,
    pub(crate) pblk: Box<[u64]>,
    /// Writeback cycles started and ended (for the exactly-once checks).
    pub(crate) wb_started: u32,
    pub(crate) wb_ended: u32,
}

/// One page of a file.
#[derive(Debug)]
pub struct Page {
    index: u64,
    pub(crate) state: Mutex<PageState>,
    pub(crate) wait: Condvar,
    pub(crate) data: Arc<RwLock<PageBytes>>,
}

/// Bytes of page buffers kept for reuse (process-wide).
const POOL_BYTES: usize = 64 << 20;

/// Page buffers freed and not yet reused: allocating and freeing a buffer per page costs more
/// than the copy into it (malloc bookkeeping, and page faults after the heap is trimmed).
static POOL: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

/// A page's bytes; the buffer goes back to a process-wide pool when the page is dropped.
#[derive(Debug)]
pub struct PageBytes(Box<[u8]>);

impl PageBytes {
    /// A buffer of `size` bytes, recycled when one of that size is pooled: zeroed, unless
    /// `zero` is false and it was recycled (then it holds an earlier page's bytes).
    pub(crate) fn new(size: usize, zero: bool) -> PageBytes {
        let reused = {
            let mut pool = POOL.lock();
            match pool.last() {
                Some(b) if b.len() == size => pool.pop(),
                _ => None,
            }
        };
        match reused {
            Some(mut b) => {
                if zero {
                    b.fill(0);
                }
                PageBytes(b)
            }
            None => PageBytes(vec![0u8; size].into_boxed_slice()),
        }
    }
}

impl std::ops::Deref for PageBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::DerefMut for PageBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl Drop for PageBytes {
    fn drop(&mut self) {
        let b = std::mem::take(&mut self.0);
        let mut pool = POOL.lock();
        if (pool.len() + 1) * b.len() <= POOL_BYTES
            && pool.last().is_none_or(|l| l.len() == b.len())
        {
            pool.push(b);
        }
    }
}

/// A read guard on a page's bytes that a bio can own.
pub(crate) struct PageDataRef(pub(crate) ArcRwLockReadGuard<RawRwLock, PageBytes>);

impl AsRef<[u8]> for PageDataRef {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A write guard on a page's bytes lent to a read bio, which fills them in place.
pub(crate) struct PageDataMut(pub(crate) ArcRwLockWriteGuard<RawRwLock, PageBytes>);

impl AsRef<[u8]> for PageDataMut {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for PageDataMut {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl Page {
    /// A new page; its bytes are zero unless `zero` is false and a recycled buffer was used.
    pub(crate) fn new(index: u64, page_size: usize, blocks_per_page: usize, zero: bool) -> Page {
        Page {
            index,
            state: Mutex::new(PageState {
                flags: PageFlags::default(),
                blocks: vec![BlockState::empty(); blocks_per_page].into_boxed_slice(),
                pblk: vec![INVALID_PBLK; blocks_per_page].into_boxed_slice(),
                wb_started: 0,
                wb_ended: 0,
            }),
            wait: Condvar::new(),
            data: Arc::new(RwLock::new(PageBytes::new(page_size, zero))),
        }
    }

    /// Page index in the file (byte offset / page size).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Takes the page lock, sleeping while another task holds it.
    pub(crate) fn lock(&self) -> MutexGuard<'_, PageState> {
        let mut st = self.state.lock();
        while st.flags.contains(PageFlags::LOCKED) {
            self.wait.wait(&mut st);
        }
        st.flags.insert(PageFlags::LOCKED);
        st
    }

    /// Takes the page lock if it is free.
    pub(crate) fn try_lock(&self) -> bool {
        let mut st = self.state.lock();
        if st.flags.contains(PageFlags::LOCKED) {
            return false;
        }
        st.flags.insert(PageFlags::LOCKED);
        true
    }

    /// Releases the page lock.
    pub(crate) fn unlock(&self) {
        let mut st = self.state.lock();
        debug_assert!(
            st.flags.contains(PageFlags::LOCKED),
            "unlocking an unlocked page"
        );
        st.flags.remove(PageFlags::LOCKED);
        drop(st);
        self.wait.notify_all();
    }

    /// Waits until the page is not under writeback (the state guard is released while waiting).
    pub(crate) fn wait_writeback_locked(&self, st: &mut MutexGuard<'_, PageState>) {
        while st.flags.contains(PageFlags::WRITEBACK) {
            self.wait.wait(st);
        }
    }

    /// A snapshot of the page's flags and block states (for tests and diagnostics).
    pub fn snapshot(&self) -> PageSnapshot {
        let st = self.state.lock();
        PageSnapshot {
            index: self.index,
            flags: st.flags,
            blocks: st.blocks.to_vec(),
            pblk: st.pblk.to_vec(),
            wb_started: st.wb_started,
            wb_ended: st.wb_ended,
        }
    }
}

/// A copy of a page's state at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSnapshot {
    /// Page index.
    pub index: u64,
    /// Page flags.
    pub flags: PageFlags,
    /// Block states.
    pub blocks: Vec<BlockState>,
    /// Physical block per block ([`INVALID_PBLK`] if none).
    pub pblk: Vec<u64>,
    /// Writeback cycles started.
    pub wb_started: u32,
    /// Writeback cycles ended.
    pub wb_ended: u32,
}
