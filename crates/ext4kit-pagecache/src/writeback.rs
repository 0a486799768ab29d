//! Writeback: from dirty pages to bios (`ext4_writepages` and `ext4_bio_write_folio`).
//!
//! One pass of [`writepages`] repeats, until the range is exhausted:
//! 1. allocate an io_end (the writer holds its first reference);
//! 2. [`prepare_extent_to_map`]: walk DIRTY (or, in sync mode, TOWRITE) tagged pages in index
//!    order, lock them, and either submit a page at once (all its dirty blocks below EOF are
//!    mapped) or collect logically contiguous delayed / unwritten blocks into one extent of at
//!    most [`MAX_WRITEPAGES_EXTENT_LEN`] blocks; pages in the extent stay locked;
//! 3. [`map_and_submit_extent`]: ask the filesystem to map the extent (it may map less), give
//!    the delayed blocks their physical numbers, submit every fully mapped page, and feed the
//!    rest of a partly mapped page back into step 2 to build the next extent; then raise the
//!    on-disk size to what was submitted;
//! 4. unlock the pages that were collected but not submitted (they stay dirty), submit the open
//!    bio, and drop the writer's io_end reference.
//!
//! [`bio_write_page`] is the seed's function: a *mark* pass sets ASYNC_WRITE on every block the
//! page will write (and cleans holes and blocks past EOF), writeback starts, and only then a
//! *submit* pass adds the marked blocks to bios, so a completion that races ahead can never see
//! the page with nothing in flight before the last block was submitted.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ext4kit_blockdev::{Bio, BioBuf, BioOp, BioVec};

use crate::ioend::{IoEnd, PageSeg, end_bio, put_io_end};
use crate::mapper::{ExtentKind, MapFlags};
use crate::mapping::MappingInner;
use crate::page::{Page, PageDataRef};
use crate::state::{BlockState, PageFlags};
use crate::{Error, Event, MAX_WRITEPAGES_EXTENT_LEN};

/// Data-integrity or background writeback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Background: skip pages under writeback, stop after `nr_to_write` pages.
    None,
    /// Data integrity: tag the dirty pages first (TOWRITE), wait for pages under writeback,
    /// write every tagged page.
    All,
}

/// What a writeback pass should do (`struct writeback_control`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritebackControl {
    /// Mode.
    pub sync_mode: SyncMode,
    /// First byte of the range.
    pub range_start: u64,
    /// Last byte of the range (inclusive); `u64::MAX` for "to the end".
    pub range_end: u64,
    /// Pages still allowed (background mode); decremented per submitted page.
    pub nr_to_write: i64,
    /// Whether delayed and unwritten blocks may be mapped. `false` is the journal commit's
    /// writeback: only blocks that already have a written mapping are written, the rest stay
    /// dirty and keep their TOWRITE tag.
    pub can_map: bool,
}

impl WritebackControl {
    /// Data-integrity writeback of the whole file.
    pub fn sync_all() -> WritebackControl {
        WritebackControl::sync_range(0, u64::MAX)
    }

    /// Data-integrity writeback of bytes `start..=end`.
    pub fn sync_range(start: u64, end: u64) -> WritebackControl {
        WritebackControl {
            sync_mode: SyncMode::All,
            range_start: start,
            range_end: end,
            nr_to_write: i64::MAX,
            can_map: true,
        }
    }

    /// Background writeback of at most `nr_pages` pages.
    pub fn background(nr_pages: i64) -> WritebackControl {
        WritebackControl {
            sync_mode: SyncMode::None,
            range_start: 0,
            range_end: u64::MAX,
            nr_to_write: nr_pages,
            can_map: true,
        }
    }
}

/// The extent being collected (`mpd->map`).
#[derive(Debug, Default, Clone, Copy)]
struct MapState {
    lblk: u64,
    len: u64,
    pblk: u64,
    /// DELAY / UNWRITTEN bits shared by every block of the extent.
    flags: BlockState,
}

/// The bio being built (`ext4_io_submit`).
pub(crate) struct IoSubmit {
    bio: Option<OpenBio>,
    pub(crate) io_end: Option<Arc<IoEnd>>,
    next_pblk: u64,
    sync: bool,
}

struct OpenBio {
    bio: Bio,
    segs: Vec<PageSeg>,
    pblk: u64,
    bytes: usize,
    io_end: Arc<IoEnd>,
}

/// State of one writepages pass (`struct mpage_da_data`).
struct MpageDaData<'a> {
    m: &'a Arc<MappingInner>,
    wbc: &'a mut WritebackControl,
    /// Next page index the scan looks at.
    scan_index: u64,
    end_index: u64,
    /// Index the next page must have to extend the extent (`next_pos`).
    next_index: u64,
    /// Pages of the extent, locked, in index order (`start_pos..next_pos`).
    locked: VecDeque<Arc<Page>>,
    /// Byte position up to which pages were submitted (`start_pos`).
    done_pos: u64,
    progress: bool,
    map: MapState,
    io: IoSubmit,
    scanned_until_end: bool,
}

/// Writes back dirty pages of `m` in the range of `wbc`.
pub(crate) fn writepages(m: &Arc<MappingInner>, wbc: &mut WritebackControl) -> Result<(), Error> {
    let _one_pass = m.writepages_lock.lock();
    let ps = m.page_size();
    let first = wbc.range_start / ps;
    let end_index = if wbc.range_end == u64::MAX {
        u64::MAX
    } else {
        wbc.range_end / ps
    };
    if first > end_index {
        return Ok(());
    }
    if wbc.sync_mode.is_all() {
        // tag_pages_for_writeback: what is dirty now is what this pass must write.
        let mut guard = m.tree.lock();
        let tree = &mut *guard;
        tree.towrite.copy_range_from(&tree.dirty, first, end_index);
    }
    let sync = wbc.sync_mode.is_all();
    let mut mpd = MpageDaData {
        m,
        wbc,
        scan_index: first,
        end_index,
        next_index: first,
        locked: VecDeque::new(),
        done_pos: first * ps,
        progress: false,
        map: MapState::default(),
        io: IoSubmit {
            bio: None,
            io_end: None,
            next_pblk: 0,
            sync,
        },
        scanned_until_end: false,
    };
    let mut ret = Ok(());
    loop {
        mpd.io.io_end = Some(IoEnd::new(m));
        mpd.map = MapState::default();
        mpd.progress = false;
        let mut r = prepare_extent_to_map(&mut mpd);
        if r.is_ok() && mpd.map.len > 0 {
            r = map_and_submit_extent(&mut mpd);
        }
        release_unused_pages(&mut mpd);
        io_submit(&mut mpd.io);
        if let Some(io_end) = mpd.io.io_end.take() {
            put_io_end(io_end);
        }
        if let Err(e) = r {
            ret = Err(e);
            break;
        }
        if mpd.scanned_until_end
            || (mpd.wbc.sync_mode == SyncMode::None && mpd.wbc.nr_to_write <= 0)
        {
            break;
        }
    }
    ret
}

/// Walks tagged pages from `scan_index`, locking them and building `mpd.map`
/// (`mpage_prepare_extent_to_map`). Returns with the extent's pages locked.
fn prepare_extent_to_map(mpd: &mut MpageDaData<'_>) -> Result<(), Error> {
    let sync = mpd.wbc.sync_mode.is_all();
    loop {
        if mpd.scan_index > mpd.end_index {
            mpd.scanned_until_end = true;
            return Ok(());
        }
        let next = {
            let tree = mpd.m.tree.lock();
            let set = if sync { &tree.towrite } else { &tree.dirty };
            set.next_in(mpd.scan_index, mpd.end_index)
        };
        let Some(index) = next else {
            mpd.scanned_until_end = true;
            return Ok(());
        };
        if !sync && mpd.wbc.nr_to_write <= mpd.locked.len() as i64 {
            return Ok(());
        }
        // An extent only grows over logically contiguous pages.
        if mpd.map.len > 0 && index != mpd.next_index {
            return Ok(());
        }
        mpd.scan_index = index + 1;
        let page = mpd.m.tree.lock().pages.get(index).cloned();
        let Some(page) = page else {
            let mut tree = mpd.m.tree.lock();
            tree.dirty.remove(index);
            tree.towrite.remove(index);
            continue;
        };
        let mut st = page.lock();
        let still_ours = mpd
            .m
            .tree
            .lock()
            .pages
            .get(index)
            .is_some_and(|p| Arc::ptr_eq(p, &page));
        if !still_ours || !st.flags.contains(PageFlags::DIRTY) {
            // Truncated, or cleaned by someone else since it was tagged.
            drop(st);
            if still_ours {
                mpd.m.tree.lock().towrite.remove(index);
            }
            page.unlock();
            continue;
        }
        if st.flags.contains(PageFlags::WRITEBACK) {
            if !sync {
                drop(st);
                page.unlock();
                continue;
            }
            // Never wait for IO that sits in our own unsubmitted bio.
            if mpd.io.bio.is_some() {
                drop(st);
                io_submit(&mut mpd.io);
                st = page.state.lock();
            }
            page.wait_writeback_locked(&mut st);
        }
        drop(st);
        if mpd.locked.is_empty() {
            mpd.done_pos = index * mpd.m.page_size();
        }
        mpd.next_index = index + 1;
        mpd.locked.push_back(Arc::clone(&page));
        if !mpd.wbc.can_map {
            mpage_submit_page(mpd, &page)?;
            mpage_page_done(mpd, &page);
        } else if !process_page_bufs(mpd, &page, 0)? {
            return Ok(());
        }
    }
}

/// Adds the blocks of a locked page from block `from` to the extent, or submits the page when
/// nothing in it needs mapping (`mpage_process_page_bufs`). Returns whether the scan may go on
/// to the next page.
fn process_page_bufs(
    mpd: &mut MpageDaData<'_>,
    page: &Arc<Page>,
    from: usize,
) -> Result<bool, Error> {
    let bpp = mpd.m.cache.bpp as u64;
    let bs = mpd.m.cache.cfg.block_size as u64;
    let eof_blocks = mpd.m.i_size.load(Ordering::Acquire).div_ceil(bs);
    let base = page.index() * bpp;
    let mut lblk = base + from as u64;
    {
        let st = page.state.lock();
        while lblk < base + bpp {
            if lblk >= eof_blocks
                || !add_block_to_extent(mpd, lblk, st.blocks[(lblk - base) as usize])
            {
                // An extent to map: map it first (EOF only ends the scan once everything
                // before it is mapped).
                if mpd.map.len > 0 {
                    return Ok(false);
                }
                break;
            }
            lblk += 1;
        }
    }
    if mpd.map.len == 0 {
        // Everything in the page that can be written now is mapped: write it.
        mpage_submit_page(mpd, page)?;
        mpage_page_done(mpd, page);
    }
    if lblk >= eof_blocks {
        mpd.scanned_until_end = true;
        return Ok(false);
    }
    Ok(true)
}

/// Whether block `lblk` (state `s`) joins the extent (`mpage_add_bh_to_extent`).
fn add_block_to_extent(mpd: &mut MpageDaData<'_>, lblk: u64, s: BlockState) -> bool {
    let needs_map = BlockState::DELAY | BlockState::UNWRITTEN;
    if !s.contains(BlockState::DIRTY) || !s.contains(BlockState::MAPPED) || !s.intersects(needs_map)
    {
        // Needs no mapping: with no extent yet it is written with its page right away.
        return mpd.map.len == 0;
    }
    let flags = BlockState::from_bits(s.bits() & needs_map.bits());
    if mpd.map.len == 0 {
        if !mpd.wbc.can_map {
            return false;
        }
        mpd.map = MapState {
            lblk,
            len: 1,
            pblk: 0,
            flags,
        };
        return true;
    }
    if mpd.map.len >= MAX_WRITEPAGES_EXTENT_LEN {
        return false;
    }
    if lblk == mpd.map.lblk + mpd.map.len && flags == mpd.map.flags {
        mpd.map.len += 1;
        return true;
    }
    false
}

/// Maps the collected extent and submits its pages (`mpage_map_and_submit_extent`).
fn map_and_submit_extent(mpd: &mut MpageDaData<'_>) -> Result<(), Error> {
    let mut result = Ok(());
    loop {
        if let Err(e) = map_one_extent(mpd) {
            result = Err(e);
            break;
        }
        mpd.progress = true;
        if let Err(e) = map_and_submit_buffers(mpd) {
            result = Err(e);
            break;
        }
        if mpd.map.len == 0 {
            break;
        }
    }
    if mpd.progress {
        // i_disksize grows only once the IO for those bytes is submitted.
        let r = mpd.m.update_disksize(mpd.done_pos);
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// Asks the filesystem to map `mpd.map` (`mpage_map_one_extent`); trims the extent to what was
/// mapped and records unwritten results on the io_end.
fn map_one_extent(mpd: &mut MpageDaData<'_>) -> Result<(), Error> {
    let m = mpd.m;
    let mut flags = MapFlags::CREATE;
    if mpd.map.flags.contains(BlockState::DELAY) {
        flags = flags | MapFlags::DELALLOC;
    }
    if m.cache.cfg.alloc_unwritten {
        flags = flags | MapFlags::UNWRITTEN;
    }
    m.forget_holes();
    let ext = m
        .cache
        .mapper
        .map_blocks(m.ino, mpd.map.lblk, mpd.map.len, flags);
    m.forget_holes();
    let ext = ext?;
    if ext.kind == ExtentKind::Hole || ext.lblk > mpd.map.lblk || ext.lblk + ext.len <= mpd.map.lblk
    {
        return Err(Error::BadMapping {
            ino: m.ino,
            lblk: mpd.map.lblk,
            got: ext,
        });
    }
    let off = mpd.map.lblk - ext.lblk;
    let len = mpd.map.len.min(ext.len - off);
    mpd.map.pblk = ext.pblk + off;
    mpd.map.len = len;
    if ext.kind == ExtentKind::Unwritten {
        if let Some(io_end) = &mpd.io.io_end {
            io_end.add_unwritten(mpd.map.lblk, len);
        }
    }
    Ok(())
}

/// Gives the mapped blocks their physical numbers and submits fully mapped pages
/// (`mpage_map_and_submit_buffers`). Leaves `mpd.map` empty when the extent ended on a page
/// boundary, or holding the next extent to map when it ended inside a page.
fn map_and_submit_buffers(mpd: &mut MpageDaData<'_>) -> Result<(), Error> {
    let bpp = mpd.m.cache.bpp as u64;
    let end_page = (mpd.map.lblk + mpd.map.len - 1) / bpp;
    let mut pblk = mpd.map.pblk;
    while let Some(page) = mpd.locked.front().cloned() {
        if page.index() > end_page {
            break;
        }
        if process_page(mpd, &page, &mut pblk)? {
            return Ok(());
        }
        if let Err(e) = mpage_submit_page(mpd, &page) {
            // The filesystem allocated the whole extent: the pages we cannot submit now must
            // still learn their block numbers, or a later pass would allocate them again.
            let rest: Vec<Arc<Page>> = mpd
                .locked
                .iter()
                .skip(1)
                .filter(|p| p.index() <= end_page)
                .cloned()
                .collect();
            for p in rest {
                assign_mapped_blocks(mpd, &p, &mut pblk);
            }
            return Err(e);
        }
        mpage_page_done(mpd, &page);
    }
    mpd.map.len = 0;
    mpd.map.flags = BlockState::empty();
    Ok(())
}

/// Updates the blocks of one page inside the mapped extent (`mpage_process_folio`). Returns
/// true when the extent ends inside the page (the rest of the page was fed back into the scan).
fn process_page(
    mpd: &mut MpageDaData<'_>,
    page: &Arc<Page>,
    pblk: &mut u64,
) -> Result<bool, Error> {
    let bpp = mpd.m.cache.bpp as u64;
    let base = page.index() * bpp;
    let (start, end) = (mpd.map.lblk, mpd.map.lblk + mpd.map.len);
    let mut st = page.state.lock();
    for b in 0..bpp as usize {
        let lblk = base + b as u64;
        if lblk < start {
            continue;
        }
        if lblk >= end {
            // The extent ends inside this page: find the next extent in the rest of it.
            drop(st);
            mpd.map = MapState::default();
            process_page_bufs(mpd, page, b)?;
            return Ok(true);
        }
        map_block(mpd.m, &mut st, b, pblk);
    }
    Ok(false)
}

/// Gives block `b` of a page its place in the mapped extent (`mpage_process_folio`'s inner
/// step): a delayed block takes the next physical block and its reservation is consumed; the
/// UNWRITTEN bit leaves the block (the on-disk extent stays unwritten until the io_end is
/// converted).
fn map_block(m: &MappingInner, st: &mut crate::page::PageState, b: usize, pblk: &mut u64) {
    if st.blocks[b].contains(BlockState::DELAY) {
        st.blocks[b].remove(BlockState::DELAY);
        st.pblk[b] = *pblk;
        *pblk += 1;
        m.reserved.fetch_sub(1, Ordering::Relaxed);
    }
    st.blocks[b].remove(BlockState::UNWRITTEN);
}

/// Maps the blocks of a page inside the extent without submitting it (error path).
fn assign_mapped_blocks(mpd: &MpageDaData<'_>, page: &Arc<Page>, pblk: &mut u64) {
    let bpp = mpd.m.cache.bpp as u64;
    let base = page.index() * bpp;
    let (start, end) = (mpd.map.lblk, mpd.map.lblk + mpd.map.len);
    let mut st = page.state.lock();
    for b in 0..bpp as usize {
        let lblk = base + b as u64;
        if lblk >= start && lblk < end {
            map_block(mpd.m, &mut st, b, pblk);
        }
    }
}

/// Unlocks the pages collected but not submitted; they stay dirty for the next pass
/// (`mpage_release_unused_pages` without invalidation).
fn release_unused_pages(mpd: &mut MpageDaData<'_>) {
    if let Some(first) = mpd.locked.front() {
        // These pages are still dirty: the scan is not over, whatever it saw past them.
        mpd.scan_index = first.index();
        mpd.scanned_until_end = false;
    }
    while let Some(page) = mpd.locked.pop_front() {
        page.unlock();
    }
    mpd.map = MapState::default();
}

/// A page's work is done for this pass: unlock it and advance (`mpage_folio_done`).
fn mpage_page_done(mpd: &mut MpageDaData<'_>, page: &Arc<Page>) {
    match mpd.locked.front() {
        Some(front) if Arc::ptr_eq(front, page) => {
            mpd.locked.pop_front();
        }
        _ => mpd.m.cache.violation("page done out of order"),
    }
    mpd.done_pos = (page.index() + 1) * mpd.m.page_size();
    page.unlock();
}

/// Clears the page's dirty flag, samples i_size and writes the page (`mpage_submit_folio`).
fn mpage_submit_page(mpd: &mut MpageDaData<'_>, page: &Arc<Page>) -> Result<(), Error> {
    page.state.lock().flags.remove(PageFlags::DIRTY);
    // i_size is sampled after the page was cleaned: a racing extension redirties it.
    let size = mpd.m.i_size.load(Ordering::Acquire);
    let ps = mpd.m.page_size();
    let pos = page.index() * ps;
    let len = if pos + ps > size {
        size.saturating_sub(pos) as usize
    } else {
        ps as usize
    };
    let r = bio_write_page(mpd.m, &mut mpd.io, page, len);
    mpd.wbc.nr_to_write -= 1;
    r
}

/// Writes the blocks of a locked page that can be written now (`ext4_bio_write_folio`): the
/// bytes from `len` to the end of the page are zeroed, the mark pass sets ASYNC_WRITE on every
/// block to write (cleaning holes and blocks past EOF), writeback starts, then the submit pass
/// adds the marked blocks to bios.
pub(crate) fn bio_write_page(
    m: &Arc<MappingInner>,
    io: &mut IoSubmit,
    page: &Arc<Page>,
    len: usize,
) -> Result<(), Error> {
    let cache = &m.cache;
    let bs = cache.cfg.block_size;
    let ps = cache.cfg.page_size;
    if len < ps {
        // Data past EOF (an mmap store) must never reach the disk: zero it on every writeout.
        page.data.write()[len..].fill(0);
    }
    let call = cache.bio_write_page_calls.fetch_add(1, Ordering::SeqCst);
    let mut st = page.state.lock();
    if !st.flags.contains(PageFlags::LOCKED) || st.flags.contains(PageFlags::WRITEBACK) {
        drop(st);
        cache.violation("bio_write_page on an unlocked page or one under writeback");
        return Ok(());
    }
    // Mark pass.
    let mut nr_to_submit = 0usize;
    let mut keep_towrite = false;
    for b in 0..st.blocks.len() {
        let s = &mut st.blocks[b];
        if b * bs >= len {
            // Wholly past EOF: clean, never written — and so never converted either.
            s.remove(BlockState::DIRTY);
            s.insert(BlockState::UPTODATE);
            if let Some(io_end) = &io.io_end {
                io_end.remove_unwritten(page.index() * cache.bpp as u64 + b as u64);
            }
            continue;
        }
        if !s.contains(BlockState::DIRTY)
            || s.intersects(BlockState::DELAY | BlockState::UNWRITTEN)
            || !s.contains(BlockState::MAPPED)
        {
            if !s.contains(BlockState::MAPPED) {
                // A hole: nothing to write.
                s.remove(BlockState::DIRTY);
            }
            if s.contains(BlockState::DIRTY) {
                // Cannot be written now (needs mapping): keep the page dirty and in the sync set.
                keep_towrite = true;
            }
            continue;
        }
        s.remove(BlockState::NEW | BlockState::DIRTY);
        s.insert(BlockState::ASYNC_WRITE);
        nr_to_submit += 1;
    }
    if keep_towrite {
        st.flags.insert(PageFlags::DIRTY);
    }
    let armed = *cache.fail_submit_at.lock();
    if nr_to_submit > 0 && armed == Some(call) {
        // Submission failed before anything reached a bio: undo the marks, keep the data dirty,
        // start no writeback.
        for s in st.blocks.iter_mut() {
            if s.contains(BlockState::ASYNC_WRITE) {
                s.remove(BlockState::ASYNC_WRITE);
                s.insert(BlockState::DIRTY);
            }
        }
        st.flags.insert(PageFlags::DIRTY);
        drop(st);
        *cache.fail_submit_at.lock() = None;
        return Err(Error::Submit {
            errno: libc::ENOMEM,
        });
    }
    // Start writeback: the page's tags follow its flags.
    st.flags.insert(PageFlags::WRITEBACK);
    st.wb_started += 1;
    let still_dirty = st.flags.contains(PageFlags::DIRTY);
    let to_submit: Vec<(usize, u64)> = if nr_to_submit > 0 {
        (0..st.blocks.len())
            .filter(|&b| st.blocks[b].contains(BlockState::ASYNC_WRITE))
            .map(|b| (b, st.pblk[b]))
            .collect()
    } else {
        Vec::new()
    };
    drop(st);
    {
        let mut tree = m.tree.lock();
        if !still_dirty {
            tree.dirty.remove(page.index());
        }
        if !keep_towrite {
            tree.towrite.remove(page.index());
        }
    }
    m.writeback_started();
    cache.emit(|| Event::WritebackStart {
        ino: m.ino,
        index: page.index(),
    });
    if to_submit.is_empty() {
        // Nothing to write: end the writeback we just started, so the tags are updated.
        crate::ioend::end_page_writeback(m, page);
        return Ok(());
    }
    // Submit pass.
    let data: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(PageDataRef(page.data.read_arc()));
    for (b, pblk) in to_submit {
        io_submit_add_block(m, io, page, &data, b, pblk);
    }
    Ok(())
}

/// Adds one block to the open bio, or submits it and opens a new one when the block is not
/// physically contiguous with it or it is full (`io_submit_add_bh`).
fn io_submit_add_block(
    m: &Arc<MappingInner>,
    io: &mut IoSubmit,
    page: &Arc<Page>,
    data: &Arc<dyn AsRef<[u8]> + Send + Sync>,
    block: usize,
    pblk: u64,
) {
    let bs = m.cache.cfg.block_size;
    if let Some(ob) = &io.bio {
        if pblk != io.next_pblk || ob.bytes + bs > m.cache.cfg.max_bio_bytes {
            io_submit(io);
        }
    }
    if io.bio.is_none() {
        io_submit_init_bio(m, io, pblk);
    }
    let Some(ob) = io.bio.as_mut() else { return };
    let merged = match ob.segs.last_mut() {
        Some(last)
            if Arc::ptr_eq(&last.page, page) && last.first as usize + last.nr as usize == block =>
        {
            last.nr += 1;
            if let Some(v) = ob.bio.last_vec_mut() {
                v.extend(bs);
            }
            true
        }
        _ => false,
    };
    if !merged {
        ob.bio.push(BioVec::new(
            BioBuf::Shared(Arc::clone(data)),
            block * bs,
            bs,
        ));
        ob.segs.push(PageSeg {
            page: Arc::clone(page),
            first: block as u16,
            nr: 1,
        });
    }
    ob.bytes += bs;
    io.next_pblk = pblk + 1;
}

/// Opens a bio at `pblk`, taking a reference on the io_end for it (`io_submit_init_bio`).
fn io_submit_init_bio(m: &Arc<MappingInner>, io: &mut IoSubmit, pblk: u64) {
    let io_end = match &io.io_end {
        Some(e) => Arc::clone(e),
        None => {
            m.cache.violation("bio without io_end");
            IoEnd::new(m)
        }
    };
    io.bio = Some(OpenBio {
        bio: Bio::new(BioOp::Write, pblk * m.cache.dev_per_block),
        segs: Vec::new(),
        pblk,
        bytes: 0,
        io_end,
    });
    io.next_pblk = pblk;
}

/// Submits the open bio, if any (`ext4_io_submit`).
pub(crate) fn io_submit(io: &mut IoSubmit) {
    let Some(OpenBio {
        mut bio,
        segs,
        pblk,
        bytes,
        io_end,
    }) = io.bio.take()
    else {
        return;
    };
    let m = Arc::clone(io_end.mapping());
    let cache = &m.cache;
    let bs = cache.cfg.block_size;
    let nr_blocks = (bytes / bs) as u64;
    cache.bios_submitted.fetch_add(1, Ordering::Relaxed);
    cache
        .bytes_submitted
        .fetch_add(bytes as u64, Ordering::Relaxed);
    cache.emit(|| Event::BioSubmit {
        ino: m.ino,
        pblk,
        nr_blocks,
        nr_segments: segs.len(),
    });
    bio.set_sync(io.sync);
    bio.set_end_io(Box::new(move |bio, status| {
        end_bio(io_end, segs, pblk, nr_blocks, bio, status)
    }));
    cache.dev.submit(bio);
}
