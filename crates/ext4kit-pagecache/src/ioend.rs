//! [`IoEnd`]: completion tracking shared by the bios of one mapped extent, and the completion
//! path (`ext4_end_bio`, `ext4_finish_bio`, `ext4_release_io_end`, `ext4_end_io_end`).
//!
//! # Lifetime
//! An io_end is created by writepages, which holds the first reference; every bio built for it
//! holds one more (the `Arc` captured by the bio's end function). Whoever drops the last
//! reference (found with `Arc::into_inner`, which hands the value to exactly one of several
//! racing droppers) completes it:
//! - if it must be deferred ([`IoEnd::defer_completion`]: it has unwritten ranges), the ranges
//!   are converted — by the conversion worker when the last reference was a bio's, inline when it
//!   was the writer's — unless a bio failed, and only then are the chained bios finished;
//! - otherwise it is released at once.
//!
//! A bio of a deferred io_end is not finished when it completes: it is chained on the io_end and
//! its pages stay under writeback until the conversion returned. A bio of a non-deferred io_end
//! drops its reference first and then finishes its pages ("the inode can be freed once we
//! finish the bio").
//!
//! Memory: 56 bytes (flags, the mapping pointer, one mutex with the unwritten ranges at 16 bytes
//! each and the chain of completed bios); nothing per page.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use ext4kit_blockdev::{Bio, IoError};
use parking_lot::{Mutex, MutexGuard};

use crate::Event;
use crate::mapper::UnwrittenRange;
use crate::mapping::MappingInner;
use crate::page::{Page, PageState};
use crate::state::{BlockState, PageFlags};

const IO_END_UNWRITTEN: u32 = 1;
const IO_END_FAILED: u32 = 2;

/// The blocks of one page carried by one bio segment.
pub(crate) struct PageSeg {
    pub(crate) page: Arc<Page>,
    pub(crate) first: u16,
    pub(crate) nr: u16,
}

/// A completed bio waiting on its io_end (the kernel chains `bio->bi_private`).
pub(crate) struct CompletedBio {
    segs: Vec<PageSeg>,
    failed: bool,
    next: Option<Box<CompletedBio>>,
}

#[derive(Default)]
struct IoEndLists {
    unwritten: Vec<UnwrittenRange>,
    completed: Option<Box<CompletedBio>>,
}

/// Completion state shared by the bios of one extent (`struct ext4_io_end`).
pub struct IoEnd {
    flags: AtomicU32,
    mapping: Arc<MappingInner>,
    lists: Mutex<IoEndLists>,
}

impl IoEnd {
    pub(crate) fn new(m: &Arc<MappingInner>) -> Arc<IoEnd> {
        m.cache.io_ends.fetch_add(1, Ordering::Relaxed);
        Arc::new(IoEnd {
            flags: AtomicU32::new(0),
            mapping: Arc::clone(m),
            lists: Mutex::new(IoEndLists::default()),
        })
    }

    pub(crate) fn mapping(&self) -> &Arc<MappingInner> {
        &self.mapping
    }

    /// The one predicate deciding whether completion is deferred (CVE-2025-38580: the bio
    /// completion and the reference drop must never disagree).
    pub(crate) fn defer_completion(&self) -> bool {
        self.flags.load(Ordering::Acquire) & IO_END_UNWRITTEN != 0
    }

    fn failed(&self) -> bool {
        self.flags.load(Ordering::Acquire) & IO_END_FAILED != 0
    }

    /// Records that blocks `lblk..lblk+len` are unwritten on disk and must be converted.
    pub(crate) fn add_unwritten(&self, lblk: u64, len: u64) {
        let mut l = self.lists.lock();
        match l.unwritten.last_mut() {
            Some(r) if r.lblk + r.len == lblk => r.len += len,
            _ => l.unwritten.push(UnwrittenRange { lblk, len }),
        }
        self.flags.fetch_or(IO_END_UNWRITTEN, Ordering::AcqRel);
    }

    /// Takes block `lblk` out of the ranges to convert: it was mapped with the extent but is not
    /// written (it lies past an EOF that moved down meanwhile), so it must stay unwritten.
    pub(crate) fn remove_unwritten(&self, lblk: u64) {
        let mut l = self.lists.lock();
        let Some(i) = l
            .unwritten
            .iter()
            .position(|r| r.lblk <= lblk && lblk < r.lblk + r.len)
        else {
            return;
        };
        let r = l.unwritten[i];
        let tail = UnwrittenRange {
            lblk: lblk + 1,
            len: r.lblk + r.len - lblk - 1,
        };
        l.unwritten[i].len = lblk - r.lblk;
        if tail.len > 0 {
            l.unwritten.insert(i + 1, tail);
        }
        if l.unwritten[i].len == 0 {
            l.unwritten.remove(i);
        }
    }

    fn chain(&self, mut done: Box<CompletedBio>) {
        let mut l = self.lists.lock();
        done.next = l.completed.take();
        l.completed = Some(done);
    }

    fn take_lists(&self) -> IoEndLists {
        std::mem::take(&mut *self.lists.lock())
    }
}

impl Drop for IoEnd {
    fn drop(&mut self) {
        // Every path releases the chained bios first; if one did not, finish them rather than
        // leave pages under writeback forever.
        let lists = std::mem::take(self.lists.get_mut());
        if lists.completed.is_some() {
            self.mapping
                .cache
                .violation("io_end dropped with unfinished bios");
            finish_chain(&self.mapping, lists.completed, &[]);
        }
    }
}

/// The size of an io_end in bytes.
pub fn io_end_size() -> usize {
    std::mem::size_of::<IoEnd>()
}

/// Bio completion (`ext4_end_bio`), on the device's completing thread.
pub(crate) fn end_bio(
    io_end: Arc<IoEnd>,
    segs: Vec<PageSeg>,
    pblk: u64,
    nr_blocks: u64,
    bio: Bio,
    status: Result<(), IoError>,
) {
    // Release the bio's hold on the pages' bytes before anything can end their writeback.
    drop(bio);
    let m = Arc::clone(&io_end.mapping);
    m.cache.emit(|| Event::BioComplete {
        ino: m.ino,
        pblk,
        nr_blocks,
        ok: status.is_ok(),
    });
    let failed = status.is_err();
    if let Err(e) = &status {
        io_end.flags.fetch_or(IO_END_FAILED, Ordering::AcqRel);
        m.set_error(e.errno());
    }
    let done = Box::new(CompletedBio {
        segs,
        failed,
        next: None,
    });
    if io_end.defer_completion() {
        io_end.chain(done);
        put_io_end_defer(io_end);
    } else {
        // Drop the io_end reference before the pages finish.
        put_io_end_defer(io_end);
        finish_bio(&m, *done, &[]);
    }
}

/// Drops a bio's reference (`ext4_put_io_end_defer`): the last one queues a deferred io_end for
/// the conversion worker, or releases it.
fn put_io_end_defer(io_end: Arc<IoEnd>) {
    if let Some(io_end) = Arc::into_inner(io_end) {
        if io_end.defer_completion() {
            let cache = Arc::clone(&io_end.mapping.cache);
            cache.queue_conversion(io_end);
        } else {
            release_io_end(io_end);
        }
    }
}

/// Drops the writer's reference (`ext4_put_io_end`): the last one converts inline.
pub(crate) fn put_io_end(io_end: Arc<IoEnd>) {
    if let Some(io_end) = Arc::into_inner(io_end) {
        if io_end.defer_completion() {
            end_io_end(io_end, true);
        } else {
            release_io_end(io_end);
        }
    }
}

/// Converts the unwritten ranges of a completed io_end, unless a bio failed, then releases it
/// (`ext4_end_io_end`).
pub(crate) fn end_io_end(io_end: IoEnd, inline: bool) {
    let m = Arc::clone(&io_end.mapping);
    let ranges = std::mem::take(&mut io_end.lists.lock().unwritten);
    let mut converted = true;
    if !ranges.is_empty() {
        if io_end.failed() {
            // Never expose the old contents of blocks whose data did not reach the disk.
            converted = false;
            m.cache.emit(|| Event::ConversionSkipped {
                ino: m.ino,
                ranges: ranges.clone(),
            });
        } else {
            let r = m.cache.mapper.convert_unwritten(m.ino, &ranges);
            if let Err(e) = &r {
                m.set_error(e.errno());
                converted = false;
            }
            m.cache.emit(|| Event::Convert {
                ino: m.ino,
                ranges: ranges.clone(),
                ok: r.is_ok(),
                inline,
            });
        }
    }
    let unconverted: &[UnwrittenRange] = if converted { &[] } else { &ranges };
    release_io_end_as(io_end, unconverted);
}

/// Finishes every bio chained on the io_end and frees it (`ext4_release_io_end`).
fn release_io_end(io_end: IoEnd) {
    release_io_end_as(io_end, &[]);
}

/// Like [`release_io_end`], for an io_end whose `unconverted` ranges stayed unwritten on disk:
/// every block it carried is marked WRITE_IO_ERROR, even those whose own bio succeeded (the data
/// they hold exists nowhere readable; automatic eviction keeps such pages), and blocks inside the
/// ranges get UNWRITTEN back, so that rewriting them goes through mapping and conversion again
/// instead of being taken for blocks of a written extent.
fn release_io_end_as(io_end: IoEnd, unconverted: &[UnwrittenRange]) {
    let lists = io_end.take_lists();
    let m = Arc::clone(&io_end.mapping);
    drop(io_end);
    finish_chain(&m, lists.completed, unconverted);
}

fn finish_chain(
    m: &Arc<MappingInner>,
    mut next: Option<Box<CompletedBio>>,
    unconverted: &[UnwrittenRange],
) {
    while let Some(mut done) = next {
        next = done.next.take();
        done.failed |= !unconverted.is_empty();
        finish_bio(m, *done, unconverted);
    }
}

/// Clears ASYNC_WRITE on the blocks a bio carried and ends the writeback of every page with
/// nothing left in flight (`ext4_finish_bio`).
fn finish_bio(m: &Arc<MappingInner>, done: CompletedBio, unconverted: &[UnwrittenRange]) {
    let bpp = m.cache.bpp as u64;
    for seg in done.segs {
        let page = seg.page;
        let mut st = page.state.lock();
        let (first, nr) = (seg.first as usize, seg.nr as usize);
        for b in first..first + nr {
            let s = &mut st.blocks[b];
            if !s.contains(BlockState::ASYNC_WRITE) {
                m.cache.violation("block completed twice");
            }
            s.remove(BlockState::ASYNC_WRITE);
            if done.failed {
                s.insert(BlockState::WRITE_IO_ERROR);
            } else {
                s.remove(BlockState::WRITE_IO_ERROR);
            }
            let lblk = page.index() * bpp + b as u64;
            if unconverted
                .iter()
                .any(|r| r.lblk <= lblk && lblk < r.lblk + r.len)
            {
                s.insert(BlockState::UNWRITTEN);
            }
        }
        let under_io = st
            .blocks
            .iter()
            .any(|s| s.contains(BlockState::ASYNC_WRITE));
        if !under_io {
            end_page_writeback_locked(m, &page, st);
        }
    }
}

/// Ends a page's writeback (`folio_end_writeback`).
pub(crate) fn end_page_writeback(m: &Arc<MappingInner>, page: &Arc<Page>) {
    let st = page.state.lock();
    end_page_writeback_locked(m, page, st);
}

fn end_page_writeback_locked(
    m: &Arc<MappingInner>,
    page: &Page,
    mut st: MutexGuard<'_, PageState>,
) {
    if !st.flags.contains(PageFlags::WRITEBACK) {
        drop(st);
        m.cache.violation("writeback ended twice");
        return;
    }
    st.flags.remove(PageFlags::WRITEBACK);
    st.wb_ended += 1;
    drop(st);
    page.wait.notify_all();
    m.cache.emit(|| Event::WritebackEnd {
        ino: m.ino,
        index: page.index(),
    });
    // Last touch of the mapping: a whole-file waiter may go on (and drop the file) after this.
    m.writeback_ended();
}
