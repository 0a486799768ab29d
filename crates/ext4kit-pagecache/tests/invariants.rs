//! One deterministic test per test idea of kernel-io-path.md §6 that applies to the engine
//! (1–7, 11–13, 15–17), each named after the invariant it protects. Completion timing is in the
//! test's hands: DeferredDevice parks bios until released, MemDevice completes inside submit.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use common::{Recorder, Rig, pattern};
use ext4kit_blockdev::{Bio, BioOp, BlockDevice, DeferredDevice, Geometry, IoError, MemDevice};
use ext4kit_pagecache::testing::SimpleMapper;
use ext4kit_pagecache::{
    BlockState, Config, Error, Event, MapError, MapFlags, Mapping, PageCache, PageFlags, SyncMode,
    UnwrittenRange, WritebackControl,
};

fn injected() -> Result<(), IoError> {
    Err(IoError::Injected {
        op: BioOp::Write,
        block: 0,
    })
}

fn unwritten_cfg(ps: usize, bs: usize) -> Config {
    let mut cfg = Config::new(ps, bs);
    cfg.alloc_unwritten = true;
    cfg
}

/// §6.1: 1 KiB blocks on 4 KiB pages, four physically discontiguous blocks (four bios), one bio
/// fails. The page's writeback ends exactly once, after the last bio; WRITE_IO_ERROR only on the
/// failed block; nothing is converted; fsync reports EIO once per handle.
#[test]
fn page_writeback_ends_once_after_all_bios_and_failed_io_end_is_not_converted() {
    let (rig, dd) = Rig::deferred(unwritten_cfg(4096, 1024), 4096);
    rig.mapper.set_max_alloc(Some(1));
    rig.mapper.set_gap(3);
    let m = rig.mapping(1);
    let (h1, h2) = (m.open(), m.open());
    m.write(0, &pattern(1, 4096)).unwrap();
    m.writepages(&mut WritebackControl::sync_all()).unwrap();
    let pending = dd.pending();
    assert_eq!(
        pending.len(),
        4,
        "four discontiguous blocks need four bios: {pending:?}"
    );
    let snap = m.page_snapshot(0).unwrap();
    assert!(snap.flags.contains(PageFlags::WRITEBACK));
    assert!(
        snap.blocks
            .iter()
            .all(|b| b.contains(BlockState::ASYNC_WRITE)),
        "{:?}",
        snap.blocks
    );
    // Fail the second bio (block 1), complete the others in a scrambled order.
    let failed_block = pending[1].id;
    dd.complete(pending[3].id, Ok(()));
    dd.complete(failed_block, injected());
    dd.complete(pending[0].id, Ok(()));
    assert!(
        m.page_snapshot(0)
            .unwrap()
            .flags
            .contains(PageFlags::WRITEBACK),
        "ended before the last bio completed"
    );
    dd.complete(pending[2].id, Ok(()));
    m.wait_writeback();
    let snap = m.page_snapshot(0).unwrap();
    assert_eq!((snap.wb_started, snap.wb_ended), (1, 1));
    assert_eq!(rig.rec.wb_cycles(1, 0), (1, 1));
    for (i, b) in snap.blocks.iter().enumerate() {
        assert!(!b.contains(BlockState::ASYNC_WRITE));
        // The io_end was not converted: every block it carried is in error (its data is
        // readable nowhere) and on an unwritten extent again, so a rewrite converts it.
        assert!(
            b.contains(BlockState::WRITE_IO_ERROR | BlockState::UNWRITTEN),
            "block {i}: {b:?}"
        );
        assert!(
            !b.contains(BlockState::DIRTY),
            "a failed page is not redirtied"
        );
    }
    assert!(!snap.flags.contains(PageFlags::DIRTY));
    assert_eq!(rig.rec.count(|e| matches!(e, Event::Convert { .. })), 0);
    assert_eq!(
        rig.rec
            .count(|e| matches!(e, Event::ConversionSkipped { .. })),
        1
    );
    assert!(rig.mapper.conversions().is_empty());
    assert!(
        rig.mapper.extents(1).iter().all(|e| e.3),
        "a failed io_end leaves its extents unwritten"
    );
    dd.set_passthrough(true);
    assert_eq!(h1.fsync(), Err(Error::Writeback { errno: 5 }));
    assert_eq!(h1.fsync(), Ok(()));
    assert_eq!(h2.fsync(), Err(Error::Writeback { errno: 5 }));
    assert_eq!(h2.fsync(), Ok(()));
    assert_eq!(rig.cache.stats().violations, 0);
}

/// A device that parks bios and, once `n` are parked, completes all of them in reverse order
/// inside the submit call of the n-th (so before the writer drops its io_end reference).
#[derive(Debug)]
struct ReverseAtN {
    inner: DeferredDevice,
    n: usize,
}

impl BlockDevice for ReverseAtN {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn submit(&self, bio: Bio) {
        self.inner.submit(bio);
        if self.inner.nr_pending() >= self.n {
            let mut ids: Vec<u64> = self.inner.pending().iter().map(|p| p.id).collect();
            ids.reverse();
            for id in ids {
                self.inner.complete(id, Ok(()));
            }
        }
    }
    fn kind(&self) -> &'static str {
        "reverse"
    }
}

/// Checks that every page of `ino` left writeback only after a conversion covering its blocks;
/// returns the conversions' `inline` flags.
fn conversions_precede_page_ends(rec: &Recorder, ino: u64, bpp: u64) -> Vec<bool> {
    let ev = rec.events();
    let mut converted: Vec<UnwrittenRange> = Vec::new();
    let mut inline = Vec::new();
    for e in &ev {
        match e {
            Event::Convert {
                ino: i,
                ranges,
                inline: il,
                ok,
            } if *i == ino => {
                assert!(ok);
                converted.extend(ranges.iter().copied());
                inline.push(*il);
            }
            Event::WritebackEnd { ino: i, index } if *i == ino => {
                for lblk in index * bpp..(index + 1) * bpp {
                    assert!(
                        converted
                            .iter()
                            .any(|r| r.lblk <= lblk && lblk < r.lblk + r.len),
                        "page {index} left writeback before block {lblk} was converted: {ev:?}"
                    );
                }
            }
            _ => {}
        }
    }
    inline
}

/// §6.2: the bios of one io_end complete in reverse order, all before the writer drops its
/// reference: conversion happens exactly once, in the writer's put, and no page leaves
/// writeback before it.
#[test]
fn conversion_runs_once_after_all_bios_in_the_writer_put_and_writeback_covers_it() {
    let mut slot = None;
    let rig = Rig::new(unwritten_cfg(4096, 1024), 4096, |mem| {
        let d = Arc::new(ReverseAtN {
            inner: DeferredDevice::new(Arc::new(mem)),
            n: 4,
        });
        slot = Some(Arc::clone(&d));
        d
    });
    rig.mapper.set_max_alloc(Some(1));
    rig.mapper.set_gap(2);
    let m = rig.mapping(2);
    m.write(0, &pattern(2, 4096)).unwrap();
    m.writepages(&mut WritebackControl::sync_all()).unwrap();
    m.wait_writeback();
    let inline = conversions_precede_page_ends(&rig.rec, 2, 4);
    assert_eq!(
        inline,
        vec![true],
        "one conversion, by the writer, which dropped the last reference"
    );
    assert_eq!(rig.mapper.conversions().len(), 1);
    assert_eq!(
        rig.mapper.conversions()[0].ranges,
        vec![UnwrittenRange { lblk: 0, len: 4 }]
    );
    assert!(rig.mapper.extents(2).iter().all(|e| !e.3));
    assert_eq!(rig.rec.wb_cycles(2, 0), (1, 1));
    assert_eq!(slot.unwrap().inner.nr_pending(), 0);
}

/// §6.2, the other order: the writer's put comes first, the last bio (released in reverse
/// order) drops the last reference, and the conversion worker converts before the pages end.
#[test]
fn conversion_runs_once_on_the_worker_when_a_bio_drops_the_last_reference() {
    let (rig, dd) = Rig::deferred(unwritten_cfg(16384, 2048), 4096);
    rig.mapper.set_max_alloc(Some(3));
    rig.mapper.set_gap(1);
    let m = rig.mapping(3);
    m.write(0, &pattern(3, 3 * 16384)).unwrap();
    m.writepages(&mut WritebackControl::sync_all()).unwrap();
    let mut ids: Vec<u64> = dd.pending().iter().map(|p| p.id).collect();
    assert!(ids.len() >= 4);
    ids.reverse();
    for id in ids {
        dd.complete(id, Ok(()));
    }
    m.wait_writeback();
    // Each page is its own io_end here (the allocator maps 3 blocks at a time, so every pass
    // ends inside a page): three conversions, all by the worker.
    let inline = conversions_precede_page_ends(&rig.rec, 3, 8);
    assert_eq!(
        inline,
        vec![false, false, false],
        "the last reference was a bio's: the worker converts"
    );
    assert_eq!(rig.mapper.conversions().len(), 3);
    for i in 0..3 {
        assert_eq!(rig.rec.wb_cycles(3, i), (1, 1));
    }
    assert_eq!(rig.disk_file(3, 3 * 16384), pattern(3, 3 * 16384));
}

/// §6.3: blocks of one page at pblk 100, 500, (hole), 101: a bio per physical run, split where
/// the physical address jumps; the hole is cleaned and never written. Pages whose blocks are
/// physically contiguous share one bio across the page boundary.
#[test]
fn bios_split_on_physical_discontiguity_merge_across_pages_and_holes_are_never_written() {
    let rig = Rig::inline(Config::new(4096, 1024), 2048);
    rig.mapper.map_fixed(4, 0, 100, 1, false);
    rig.mapper.map_fixed(4, 1, 500, 1, false);
    rig.mapper.map_fixed(4, 3, 101, 1, false);
    let m = rig.cache.mapping(4, 4096, 4096);
    m.write(0, &[0xaa; 2048]).unwrap();
    m.write(3072, &[0xbb; 1024]).unwrap();
    // A store into the hole (block 2) without page_mkwrite: dirty, but nothing to write it to.
    m.mmap_write(2048, &[0xcc; 1024]).unwrap();
    let before = rig.mem.snapshot();
    m.writepages(&mut WritebackControl::sync_all()).unwrap();
    let bios: Vec<(u64, u64)> = rig
        .rec
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::BioSubmit {
                pblk, nr_blocks, ..
            } => Some((*pblk, *nr_blocks)),
            _ => None,
        })
        .collect();
    assert_eq!(bios, vec![(100, 1), (500, 1), (101, 1)]);
    let after = rig.mem.snapshot();
    let changed: Vec<usize> = (0..after.len() / 1024)
        .filter(|&b| before[b * 1024..(b + 1) * 1024] != after[b * 1024..(b + 1) * 1024])
        .collect();
    assert_eq!(
        changed,
        vec![100, 101, 500],
        "only the three mapped blocks may be written"
    );
    let snap = m.page_snapshot(0).unwrap();
    assert!(
        !snap.blocks[2].intersects(BlockState::DIRTY | BlockState::MAPPED),
        "{:?}",
        snap.blocks[2]
    );
    assert!(!snap.flags.contains(PageFlags::DIRTY));
    assert_eq!(m.nr_dirty(), 0);

    // Two pages, physically contiguous: one bio, one segment per page.
    rig.rec.clear();
    rig.mapper.map_fixed(5, 0, 1000, 8, false);
    let m5 = rig.cache.mapping(5, 8192, 8192);
    m5.write(0, &pattern(5, 8192)).unwrap();
    m5.writepages(&mut WritebackControl::sync_all()).unwrap();
    let subs: Vec<Event> = rig
        .rec
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::BioSubmit { .. }))
        .collect();
    assert_eq!(
        subs,
        vec![Event::BioSubmit {
            ino: 5,
            pblk: 1000,
            nr_blocks: 8,
            nr_segments: 2
        }]
    );
}

/// §6.4: with completion inside submit, each of a page's four bios completes before the next is
/// built. Writeback must not end before the last block was submitted.
#[test]
fn mark_before_submit_keeps_writeback_until_the_last_block_is_submitted() {
    for (ps, bs) in [(4096, 1024), (16384, 4096), (65536, 1024)] {
        let rig = Rig::inline(Config::new(ps, bs), 8192);
        let bpp = (ps / bs) as u64;
        for b in 0..bpp {
            rig.mapper.map_fixed(6, b, 100 + 3 * b, 1, false);
        }
        let m = rig.cache.mapping(6, ps as u64, ps as u64);
        m.write(0, &pattern(6, ps)).unwrap();
        m.writepages(&mut WritebackControl::sync_all()).unwrap();
        let ev = rig.rec.events();
        let last_submit = ev
            .iter()
            .rposition(|e| matches!(e, Event::BioSubmit { .. }))
            .unwrap();
        let end = ev
            .iter()
            .position(|e| matches!(e, Event::WritebackEnd { .. }))
            .unwrap();
        assert!(
            end > last_submit,
            "{ps}/{bs}: writeback ended at event {end}, last submit at {last_submit}: {ev:?}"
        );
        assert_eq!(
            rig.rec.count(|e| matches!(e, Event::BioSubmit { .. })),
            bpp as usize
        );
        assert_eq!(rig.rec.wb_cycles(6, 0), (1, 1));
        assert_eq!(rig.cache.stats().violations, 0);
        assert_eq!(rig.disk_file(6, ps as u64), pattern(6, ps));
    }
}

/// §6.5: i_size 5000; an mmap store puts garbage in [5000, page end). Every writeout zeroes the
/// page past EOF, so the disk never holds it; extending the file then reads zeros.
#[test]
fn eof_tail_is_zeroed_on_every_writeout_and_reads_zero_after_extension() {
    for (ps, bs) in [(4096, 4096), (4096, 1024), (16384, 2048), (65536, 4096)] {
        let rig = Rig::inline(Config::new(ps, bs), 4096);
        let m = rig.mapping(7);
        let data = pattern(7, 5000);
        m.write(0, &data).unwrap();
        m.open().fsync().unwrap();
        let page_end = (5000 / ps + 1) * ps;
        for round in 0..2 {
            m.mmap_write(5000, &vec![0xee; page_end - 5000]).unwrap();
            m.open().fsync().unwrap();
            let bs64 = bs as u64;
            let eof_block = 5000 / bs64;
            let disk = rig.disk_file_block(7, eof_block);
            let inside = 5000 - (eof_block * bs64) as usize;
            assert_eq!(
                &disk[..inside],
                &data[(eof_block * bs64) as usize..],
                "{ps}/{bs} round {round}"
            );
            assert!(
                disk[inside..].iter().all(|&b| b == 0),
                "{ps}/{bs}: garbage past EOF reached the disk"
            );
            for lblk in eof_block + 1..(page_end as u64).div_ceil(bs64) {
                assert_eq!(
                    rig.mapper.lookup(7, lblk),
                    None,
                    "{ps}/{bs}: block {lblk} past EOF was allocated"
                );
            }
        }
        m.truncate(10_000).unwrap();
        let mut back = vec![0u8; 10_000];
        m.read(0, &mut back).unwrap();
        assert_eq!(&back[..5000], &data[..]);
        assert!(back[5000..].iter().all(|&b| b == 0), "{ps}/{bs}");
        m.open().fsync().unwrap();
        m.invalidate_clean();
        m.read(0, &mut back).unwrap();
        assert!(
            back[5000..].iter().all(|&b| b == 0),
            "{ps}/{bs} after eviction"
        );
        assert_eq!(rig.disk_file(7, 10_000)[5000..], vec![0u8; 5000][..]);
    }
}

/// §6.6: a page's submission fails after its mark pass, at every position. No block keeps
/// ASYNC_WRITE, the marked blocks get DIRTY back, the page stays dirty and tagged and not under
/// writeback, and a later writeback succeeds with balanced reservations.
#[test]
fn failed_submission_restores_dirty_and_leaves_no_block_in_flight() {
    for (ps, bs) in [(4096, 1024), (16384, 4096)] {
        let npages = 6u64;
        for nth in 0..npages {
            let rig = Rig::inline(Config::new(ps, bs), 8192);
            let m = rig.mapping(8);
            let data = pattern(nth, npages as usize * ps);
            m.write(0, &data).unwrap();
            rig.cache.fail_submission_at(Some(nth));
            let r = m.writepages(&mut WritebackControl::sync_all());
            assert_eq!(r, Err(Error::Submit { errno: 12 }), "{ps}/{bs} nth={nth}");
            m.wait_writeback();
            for snap in m.snapshots() {
                assert!(!snap.flags.contains(PageFlags::WRITEBACK));
                assert!(
                    snap.blocks
                        .iter()
                        .all(|b| !b.contains(BlockState::ASYNC_WRITE)),
                    "{:?}",
                    snap
                );
                if snap.index >= nth {
                    assert!(
                        snap.flags.contains(PageFlags::DIRTY),
                        "page {} lost its dirty flag",
                        snap.index
                    );
                    assert!(
                        snap.blocks.iter().all(|b| b.contains(BlockState::DIRTY)),
                        "{snap:?}"
                    );
                }
            }
            assert_eq!(m.nr_dirty() as u64, npages - nth);
            let fp = m.page_snapshot(nth).unwrap();
            assert_eq!(
                fp.wb_started, 0,
                "writeback must not start on a failed submission"
            );
            m.open().fsync().unwrap();
            assert_eq!(rig.disk_file(8, data.len() as u64), data);
            assert_eq!(m.reserved_blocks(), 0);
            assert_eq!(rig.mapper.total_reserved(), 0);
            assert!(rig.mapper.errors().is_empty(), "{:?}", rig.mapper.errors());
            let allocated: u64 = rig.mapper.extents(8).iter().map(|e| e.2).sum();
            assert_eq!(
                allocated * bs as u64,
                data.len() as u64,
                "blocks allocated twice or leaked"
            );
            assert_eq!(rig.cache.stats().violations, 0);
        }
    }
    // Allocation failure: nothing is mapped, the pages stay dirty and delayed.
    let rig = Rig::inline(Config::new(4096, 1024), 4096);
    let m = rig.mapping(9);
    m.write(0, &pattern(9, 20_000)).unwrap();
    rig.mapper.fail_alloc_at(Some(0));
    assert_eq!(
        m.writepages(&mut WritebackControl::sync_all()),
        Err(Error::Map(MapError::no_space()))
    );
    assert_eq!(m.nr_dirty(), 5);
    assert!(m.snapshots().iter().all(|s| {
        s.blocks
            .iter()
            .take_while(|_| true)
            .any(|b| b.contains(BlockState::DELAY))
    }));
    m.open().fsync().unwrap();
    assert_eq!(rig.disk_file(9, 20_000), pattern(9, 20_000));
    assert_eq!(rig.mapper.total_reserved(), 0);
}

/// §6.7: i_size shrinks between collecting the extent and mapping it (1 KiB blocks on 4 KiB
/// pages). Every allocated block is used below the new EOF or freed, the on-disk size never
/// exceeds the final size, and reservations balance.
#[test]
fn truncate_racing_writeback_leaks_no_blocks_and_disksize_stays_inside_i_size() {
    for new_size in [0u64, 1, 5000, 9000, 4096 * 5] {
        let total = 4096 - common::FIRST_DATA_BLOCK;
        let inner = Arc::new(SimpleMapper::new(common::FIRST_DATA_BLOCK, total));
        // On the first allocation, a truncate on another thread shrinks the file (it sets
        // i_size and then waits for the page locks writeback holds).
        let mapping: Arc<OnceLock<Mapping>> = Arc::new(OnceLock::new());
        let fired: Arc<Mutex<Option<thread::JoinHandle<()>>>> = Arc::new(Mutex::new(None));
        {
            let (mapping, fired) = (Arc::clone(&mapping), Arc::clone(&fired));
            inner.on_map_blocks(move |_, _, _, _, flags| {
                if flags.contains(MapFlags::CREATE) {
                    let mut fired = fired.lock().unwrap();
                    if fired.is_none() {
                        let m = mapping.get().unwrap().clone();
                        *fired = Some(thread::spawn(move || m.truncate(new_size).unwrap()));
                        let m = mapping.get().unwrap();
                        while m.size() != new_size {
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                Ok(())
            });
        }
        let mem = MemDevice::new(512, 4096 * 2);
        let cache = PageCache::new(
            Config::new(4096, 1024),
            Arc::new(mem.clone()),
            inner.clone(),
        )
        .unwrap();
        let m = cache.mapping(10, 0, 0);
        mapping.set(m.clone()).unwrap();
        let data = pattern(10, 40_000);
        m.write(0, &data).unwrap();
        m.writepages(&mut WritebackControl::sync_all()).unwrap();
        fired.lock().unwrap().take().unwrap().join().unwrap();
        m.open().fsync().unwrap();
        assert_eq!(m.size(), new_size);
        let exts = inner.extents(10);
        let used: u64 = exts.iter().map(|e| e.2).sum();
        assert_eq!(
            used + inner.free_blocks(),
            total,
            "new_size {new_size}: blocks leaked: {exts:?}"
        );
        assert!(
            exts.iter().all(|e| e.0 + e.2 <= new_size.div_ceil(1024)),
            "{exts:?}"
        );
        assert!(
            inner.disksize(10) <= new_size,
            "disksize {} > i_size {new_size}",
            inner.disksize(10)
        );
        assert_eq!(inner.total_reserved(), 0);
        assert_eq!(m.reserved_blocks(), 0);
        let mut back = vec![0u8; new_size as usize];
        m.invalidate_clean();
        m.read(0, &mut back).unwrap();
        assert_eq!(back, data[..new_size as usize]);
        assert_eq!(cache.stats().violations, 0);
        // The hook holds the mapping, which holds the mapper: let go of it.
        inner.clear_hooks();
    }
}

/// §6.11: writes, overwrites, truncates of delayed ranges and a failed allocation; after sync
/// nothing stays reserved and every block is accounted for.
#[test]
fn delalloc_reservations_balance_to_zero_after_sync() {
    for (ps, bs) in [(4096, 1024), (65536, 2048), (16384, 4096)] {
        let rig = Rig::inline(Config::new(ps, bs), 16384);
        let total = 16384 - common::FIRST_DATA_BLOCK;
        let m = rig.mapping(11);
        m.write(0, &pattern(1, 10 * ps)).unwrap();
        let r1 = m.reserved_blocks();
        assert_eq!(r1, (10 * ps / bs) as u64);
        m.write(ps as u64 + 3, &pattern(2, 2 * ps)).unwrap();
        assert_eq!(
            m.reserved_blocks(),
            r1,
            "an overwrite of delayed blocks reserves nothing more"
        );
        m.truncate(3 * ps as u64 + bs as u64 / 2).unwrap();
        assert_eq!(m.reserved_blocks(), (3 * ps / bs + 1) as u64);
        rig.mapper.fail_alloc_at(Some(0));
        assert!(m.open().fsync().is_err());
        m.write(20 * ps as u64, &pattern(3, 100)).unwrap();
        m.open().fsync().unwrap();
        assert_eq!(m.reserved_blocks(), 0);
        assert_eq!(rig.mapper.total_reserved(), 0);
        let used: u64 = rig.mapper.extents(11).iter().map(|e| e.2).sum();
        assert_eq!(used, (3 * ps / bs + 1 + 1) as u64);
        assert_eq!(used + rig.mapper.free_blocks(), total);
        assert!(rig.mapper.errors().is_empty(), "{:?}", rig.mapper.errors());
    }
}

/// §6.12: commit-time writeback (can_map = false) writes only blocks that are mapped already.
/// Delayed blocks stay dirty and keep their TOWRITE tag; a later fsync still writes them.
#[test]
fn commit_writeback_leaves_delayed_blocks_dirty_and_tagged_for_sync() {
    let rig = Rig::inline(Config::new(4096, 1024), 4096);
    let m = rig.mapping(12);
    m.write(0, &pattern(1, 8192)).unwrap();
    m.open().fsync().unwrap();
    // Page 0: overwrite of mapped blocks; pages 2-3: new delayed blocks; page 1 mixed.
    m.write(0, &pattern(2, 4096)).unwrap();
    m.write(6000, &pattern(3, 10_000)).unwrap();
    let mut wbc = WritebackControl::sync_all();
    wbc.can_map = false;
    m.writepages(&mut wbc).unwrap();
    m.wait_writeback();
    assert_eq!(
        &rig.disk_file(12, 4096)[..],
        &pattern(2, 4096)[..],
        "mapped blocks are written"
    );
    let mut expect = pattern(1, 8192);
    expect[..4096].copy_from_slice(&pattern(2, 4096));
    expect.resize(16_000, 0);
    expect[6000..16_000].copy_from_slice(&pattern(3, 10_000));
    assert_eq!(
        rig.disk_file(12, 8192),
        expect[..8192],
        "pages 0-1 have only mapped blocks: written"
    );
    assert_eq!(m.nr_towrite(), 2, "pages with delayed blocks keep TOWRITE");
    assert_eq!(m.nr_dirty(), 2);
    for i in 2..4 {
        let s = m.page_snapshot(i).unwrap();
        assert!(s.flags.contains(PageFlags::DIRTY));
        assert!(
            s.blocks
                .iter()
                .all(|b| b.contains(BlockState::DELAY | BlockState::DIRTY)),
            "{s:?}"
        );
        assert_eq!(
            (s.wb_started, s.wb_ended),
            (1, 1),
            "written (with nothing to submit) once"
        );
    }
    assert!(
        rig.mapper.extents(12).iter().all(|e| e.0 + e.2 <= 8),
        "commit writeback allocated blocks"
    );
    m.open().fsync().unwrap();
    assert_eq!((m.nr_dirty(), m.nr_towrite()), (0, 0));
    assert_eq!(rig.disk_file(12, 16_000), expect);
}

/// §6.13: a page whose only dirty blocks lie past EOF has nothing to submit; its writeback
/// starts and ends at once and its DIRTY and TOWRITE tags are cleared.
#[test]
fn nothing_to_submit_still_clears_dirty_and_towrite_tags() {
    let rig = Rig::inline(Config::new(4096, 1024), 4096);
    let m = rig.mapping(13);
    m.write(0, &pattern(1, 1000)).unwrap();
    m.open().fsync().unwrap();
    rig.rec.clear();
    m.mmap_write(2048, &[0x77; 2048]).unwrap();
    assert_eq!(m.nr_dirty(), 1);
    let before = rig.mem.snapshot();
    m.writepages(&mut WritebackControl::sync_all()).unwrap();
    assert_eq!(
        (m.nr_dirty(), m.nr_towrite()),
        (0, 0),
        "stale tags after a writeback with nothing to write"
    );
    assert_eq!(rig.rec.wb_cycles(13, 0), (1, 1));
    assert_eq!(rig.rec.count(|e| matches!(e, Event::BioSubmit { .. })), 0);
    assert_eq!(
        rig.mem.snapshot(),
        before,
        "nothing past EOF may be written"
    );
    let s = m.page_snapshot(0).unwrap();
    assert!(!s.flags.contains(PageFlags::DIRTY));
    assert!(s.blocks[2..].iter().all(|b| !b.contains(BlockState::DIRTY)));
    // Background writeback after it finds nothing to do either.
    m.writepages(&mut WritebackControl::background(100))
        .unwrap();
    assert_eq!(rig.rec.wb_cycles(13, 0), (1, 1));
}

/// §6.15: a write to newly allocated (unwritten) blocks fails; the pages are clean, so dropping
/// the cache drops the data: reads then see zeros (the extent was never converted), never the
/// blocks' old contents. Handles opened before the error and after it (unseen) report it once;
/// a handle opened after it was seen does not.
#[test]
fn failed_write_then_eviction_reads_zeros_not_stale_data_and_errors_follow_errseq() {
    for (ps, bs) in [(4096, 1024), (65536, 4096)] {
        let (rig, dd) = Rig::deferred(unwritten_cfg(ps, bs), 2048);
        // Another file's old data fills the free space.
        let stale = vec![0x5a; 2048 * bs];
        rig.mem.poke(0, &stale);
        let m = rig.mapping(15);
        let before = m.open();
        let data = pattern(15, 3 * ps);
        m.write(0, &data).unwrap();
        m.writepages(&mut WritebackControl::sync_all()).unwrap();
        let ids: Vec<u64> = dd.pending().iter().map(|p| p.id).collect();
        for (i, id) in ids.iter().enumerate() {
            // Fail one bio, let the rest succeed.
            dd.complete(*id, if i == 0 { injected() } else { Ok(()) });
        }
        m.wait_writeback();
        dd.set_passthrough(true);
        let after_unseen = m.open();
        assert_eq!(before.fsync(), Err(Error::Writeback { errno: 5 }));
        let after_seen = m.open();
        assert_eq!(after_unseen.fsync(), Err(Error::Writeback { errno: 5 }));
        assert_eq!(after_seen.fsync(), Ok(()));
        assert_eq!(before.fsync(), Ok(()));
        // Cached data is still there until eviction.
        let mut back = vec![0u8; 3 * ps];
        m.read(0, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(
            m.invalidate_clean(),
            3,
            "failed pages are clean: eviction drops them"
        );
        m.read(0, &mut back).unwrap();
        assert!(
            back.iter().all(|&b| b == 0),
            "{ps}/{bs}: after eviction a never-converted range must read zeros"
        );
        assert!(rig.mapper.conversions().is_empty());
    }
}

/// §6.16: once the last page's writeback ends, the engine holds nothing of the file: dropping
/// the last user handle right after frees it, in the direct and in the deferred path.
#[test]
fn completion_keeps_no_reference_to_the_file_after_the_last_page_ends() {
    for unwritten in [false, true] {
        let mut cfg = Config::new(4096, 1024);
        cfg.alloc_unwritten = unwritten;
        let (rig, dd) = Rig::deferred(cfg, 4096);
        let m = rig.mapping(16);
        m.write(0, &pattern(16, 20_000)).unwrap();
        m.writepages(&mut WritebackControl::sync_all()).unwrap();
        let weak = m.downgrade();
        drop(m);
        assert!(
            weak.upgrade().is_some(),
            "bios in flight keep the file alive"
        );
        dd.complete_all();
        // The conversion worker may still be finishing the last io_end.
        for _ in 0..1000 {
            if weak.upgrade().is_none() {
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        assert!(
            weak.upgrade().is_none(),
            "unwritten={unwritten}: the engine kept the file alive after completion"
        );
        assert_eq!(rig.cache.stats().violations, 0);
    }
}

/// §6.17: shutdown while conversions are queued: the worker finishes every one of them before it
/// stops; conversions after shutdown run inline; no page is left under writeback.
#[test]
fn shutdown_finishes_queued_conversions_and_later_ones_run_inline() {
    let inner = Arc::new(SimpleMapper::new(16, 8192));
    // Slow conversions keep the worker's queue full.
    inner.on_convert(|_, _, _| {
        thread::sleep(Duration::from_millis(20));
        Ok(())
    });
    let mem = MemDevice::new(512, 16384).threaded();
    let dd = DeferredDevice::new(Arc::new(mem));
    let rec = Arc::new(Recorder::default());
    let mut cfg = unwritten_cfg(4096, 4096);
    cfg.max_bio_bytes = 4096;
    let cache =
        PageCache::with_observer(cfg, Arc::new(dd.clone()), inner.clone(), Some(rec.clone()))
            .unwrap();
    inner.set_max_alloc(Some(1));
    let files: Vec<Mapping> = (0..5).map(|i| cache.mapping(100 + i, 0, 0)).collect();
    for (i, m) in files.iter().enumerate() {
        m.write(0, &pattern(i as u64, 4 * 4096)).unwrap();
        m.writepages(&mut WritebackControl::sync_all()).unwrap();
    }
    let n_io_ends = cache.stats().io_ends;
    dd.complete_all();
    // Conversions are queued on the slow worker; shut down now.
    thread::sleep(Duration::from_millis(5));
    cache.shutdown();
    for m in &files {
        m.wait_writeback();
        assert!(
            m.snapshots()
                .iter()
                .all(|s| !s.flags.contains(PageFlags::WRITEBACK))
        );
    }
    let converted: usize = inner.conversions().len();
    assert_eq!(
        converted, 20,
        "every io_end with unwritten blocks converted ({n_io_ends} io_ends)"
    );
    assert!(rec.count(|e| matches!(e, Event::Convert { inline: false, .. })) > 0);
    // After shutdown: a bio's last reference converts on the completing thread.
    let m = cache.mapping(200, 0, 0);
    m.write(0, &pattern(9, 4096)).unwrap();
    m.writepages(&mut WritebackControl {
        sync_mode: SyncMode::All,
        ..WritebackControl::sync_all()
    })
    .unwrap();
    dd.complete_all();
    m.wait_writeback();
    assert!(inner.extents(200).iter().all(|e| !e.3));
    assert_eq!(cache.stats().violations, 0);
}

/// §2.11: an allocation failure in background writeback (the flusher, nobody waiting) belongs to
/// the file it happened on. It is recorded in that file's error sequence and its next fsync
/// reports it once; until then, each call on that file returns the error of its own operation
/// (its own allocation failure, or an error unrelated to space), and no call on another file is
/// handed it.
#[test]
fn background_allocation_failure_is_reported_once_to_its_own_file_only() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const A: u64 = 30;
    const B: u64 = 31;
    let mut cfg = Config::new(4096, 4096);
    cfg.dirty_limit_bytes = Some(16 << 10);
    let rig = Rig::inline(cfg, 1 << 14);
    let failing = Arc::new(AtomicBool::new(true));
    let failures = Arc::new(AtomicU64::new(0));
    {
        let (failing, failures) = (failing.clone(), failures.clone());
        rig.mapper.on_map_blocks(move |_, ino, _, _, flags| {
            if ino == A && flags.contains(MapFlags::CREATE) && failing.load(Ordering::SeqCst) {
                failures.fetch_add(1, Ordering::SeqCst);
                return Err(MapError::no_space());
            }
            Ok(())
        });
    }
    let (a, b) = (rig.mapping(A), rig.mapping(B));
    let (ha, hb) = (a.open(), b.open());
    let probe = a.open();
    let data_a = pattern(A, 64 << 10);
    // Past the dirty limit: the flusher writes A in the background and its allocation fails.
    a.write(0, &data_a).unwrap();
    let mut recorded = false;
    for _ in 0..2000 {
        if probe.check_error().is_err() {
            recorded = true;
            break;
        }
        thread::sleep(Duration::from_millis(1));
    }
    assert!(recorded, "the flusher's failure was not recorded on A");
    assert!(failures.load(Ordering::SeqCst) > 0);
    assert!(
        a.nr_dirty() > 0,
        "pages that could not be mapped stay dirty"
    );

    // Another file: written, synced and read back without seeing A's error.
    let data_b = pattern(B, 8 << 10);
    b.write(0, &data_b).unwrap();
    assert_eq!(hb.fsync(), Ok(()));
    let mut buf = vec![0; data_b.len()];
    assert_eq!(b.read(0, &mut buf), Ok(data_b.len()));
    assert_eq!(buf, data_b);
    assert_eq!(hb.check_error(), Ok(()));

    // A: a call that fails for another reason returns its own error, not ENOSPC.
    assert_eq!(a.write(1 << 62, b"x"), Err(Error::TooLarge(1 << 62)));
    let mut buf = vec![0; 4096];
    assert_eq!(a.read(0, &mut buf), Ok(4096));
    assert_eq!(buf, data_a[..4096]);
    // A's own writeback, still failing: its own allocation error, as the mapper made it.
    assert_eq!(
        a.writepages(&mut WritebackControl::sync_all()),
        Err(Error::Map(MapError::no_space()))
    );

    // Space is back: fsync writes everything and reports the background error, once.
    failing.store(false, Ordering::SeqCst);
    assert_eq!(
        ha.fsync(),
        Err(Error::Writeback {
            errno: MapError::no_space().errno()
        })
    );
    assert_eq!(ha.fsync(), Ok(()));
    assert_eq!(a.nr_dirty(), 0);
    assert_eq!(rig.disk_file(A, data_a.len() as u64), data_a);
    assert_eq!(rig.disk_file(B, data_b.len() as u64), data_b);
    // B never saw it.
    assert_eq!(hb.fsync(), Ok(()));
    assert_eq!(rig.mapper.total_reserved(), 0);
    assert!(rig.mapper.errors().is_empty(), "{:?}", rig.mapper.errors());
    assert_eq!(rig.cache.stats().violations, 0);
}
