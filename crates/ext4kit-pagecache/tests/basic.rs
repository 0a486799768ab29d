//! Round trips through the cache for every geometry: write, read, fsync, disk contents, sizes,
//! reservations; partial-block read-modify-write from disk; truncate; fallocate.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Rig, geometries, pattern};
use ext4kit_pagecache::{BlockState, Config};

#[test]
fn write_fsync_read_back_from_disk_for_every_geometry() {
    for (ps, bs) in geometries() {
        for unwritten in [false, true] {
            let mut cfg = Config::new(ps, bs);
            cfg.alloc_unwritten = unwritten;
            cfg.max_bio_bytes = 64 << 10;
            let rig = Rig::inline(cfg, 8192);
            let m = rig.mapping(7);
            let data = pattern(ps as u64 + bs as u64, 300_000);
            // Unaligned pieces, out of order.
            m.write(100_000, &data[100_000..]).unwrap();
            m.write(0, &data[..1]).unwrap();
            m.write(1, &data[1..100_000]).unwrap();
            assert_eq!(m.size(), 300_000);
            assert!(m.reserved_blocks() > 0, "writes must reserve, not allocate");
            assert!(
                rig.mapper.extents(7).is_empty(),
                "delayed allocation: nothing allocated before writeback"
            );
            let h = m.open();
            h.fsync().unwrap();
            assert_eq!(m.reserved_blocks(), 0);
            assert_eq!(rig.mapper.total_reserved(), 0);
            assert_eq!(rig.mapper.disksize(7), 300_000, "{ps}/{bs}");
            assert_eq!(
                rig.disk_file(7, 300_000),
                data,
                "{ps}/{bs} unwritten={unwritten}"
            );
            let mut back = vec![0u8; 300_010];
            assert_eq!(m.read(0, &mut back).unwrap(), 300_000);
            assert_eq!(&back[..300_000], &data[..]);
            // From disk again after dropping the cache.
            assert!(m.invalidate_clean() > 0);
            let mut back2 = vec![0u8; 300_000];
            m.read(0, &mut back2).unwrap();
            assert_eq!(back2, data);
            assert!(rig.mapper.errors().is_empty(), "{:?}", rig.mapper.errors());
            assert_eq!(rig.cache.stats().violations, 0);
            // Delayed allocation gave one extent (contiguous file) and few bios.
            assert_eq!(
                rig.mapper.extents(7).len(),
                1,
                "{ps}/{bs}: {:?}",
                rig.mapper.extents(7)
            );
        }
    }
}

#[test]
fn partial_block_overwrite_reads_the_rest_from_disk() {
    for (ps, bs) in geometries() {
        let rig = Rig::inline(Config::new(ps, bs), 4096);
        let m = rig.mapping(3);
        let base = pattern(1, 3 * ps);
        m.write(0, &base).unwrap();
        m.open().fsync().unwrap();
        m.invalidate_clean();
        // Overwrite 10 bytes in the middle of a block, and a range crossing a block boundary.
        let mut expect = base.clone();
        let mid = ps + bs / 2;
        expect[mid..mid + 10].copy_from_slice(b"0123456789");
        m.write(mid as u64, b"0123456789").unwrap();
        let cross = 2 * ps - 3;
        expect[cross..cross + 6].copy_from_slice(b"abcdef");
        m.write(cross as u64, b"abcdef").unwrap();
        m.open().fsync().unwrap();
        assert_eq!(rig.disk_file(3, 3 * ps as u64), expect, "{ps}/{bs}");
        m.invalidate_clean();
        let mut back = vec![0u8; 3 * ps];
        m.read(0, &mut back).unwrap();
        assert_eq!(back, expect);
    }
}

#[test]
fn holes_read_as_zeros_and_new_blocks_are_zeroed_around_partial_writes() {
    for (ps, bs) in geometries() {
        let rig = Rig::inline(Config::new(ps, bs), 4096);
        let m = rig.mapping(4);
        // A write into the middle of a block of a page far from anything else.
        let off = 5 * ps as u64 + bs as u64 + 7;
        m.write(off, b"xyz").unwrap();
        let mut back = vec![0xffu8; 8 * ps];
        let n = m.read(0, &mut back).unwrap();
        assert_eq!(n as u64, off + 3);
        assert!(
            back[..off as usize].iter().all(|&b| b == 0),
            "{ps}/{bs}: hole or zeroed block part not zero"
        );
        assert_eq!(&back[off as usize..off as usize + 3], b"xyz");
        m.open().fsync().unwrap();
        // Only the one block was allocated: the holes stayed holes.
        let blocks: u64 = rig.mapper.extents(4).iter().map(|e| e.2).sum();
        assert_eq!(blocks, 1, "{ps}/{bs}: {:?}", rig.mapper.extents(4));
        let disk = rig.disk_file(4, off + 3);
        assert!(disk[..off as usize].iter().all(|&b| b == 0));
        assert_eq!(&disk[off as usize..], b"xyz");
    }
}

#[test]
fn truncate_down_and_up_zeroes_the_tail_on_disk() {
    for (ps, bs) in geometries() {
        let rig = Rig::inline(Config::new(ps, bs), 4096);
        let m = rig.mapping(5);
        let data = pattern(9, 4 * ps);
        m.write(0, &data).unwrap();
        m.open().fsync().unwrap();
        let cut = ps as u64 + bs as u64 / 2 + 3;
        m.truncate(cut).unwrap();
        assert_eq!(m.size(), cut);
        m.truncate(3 * ps as u64).unwrap();
        let mut back = vec![0u8; 3 * ps];
        m.read(0, &mut back).unwrap();
        assert_eq!(&back[..cut as usize], &data[..cut as usize]);
        assert!(
            back[cut as usize..].iter().all(|&b| b == 0),
            "{ps}/{bs}: bytes past the old EOF must be zero"
        );
        m.open().fsync().unwrap();
        let disk = rig.disk_file(5, 3 * ps as u64);
        assert_eq!(&disk[..cut as usize], &data[..cut as usize]);
        assert!(
            disk[cut as usize..].iter().all(|&b| b == 0),
            "{ps}/{bs}: on-disk tail not zeroed"
        );
        // Blocks past the cut were freed.
        let blocks: u64 = rig.mapper.extents(5).iter().map(|e| e.2).sum();
        assert_eq!(blocks, cut.div_ceil(bs as u64));
        assert_eq!(rig.mapper.total_reserved(), 0);
        m.invalidate_clean();
        let mut back2 = vec![0u8; 3 * ps];
        m.read(0, &mut back2).unwrap();
        assert_eq!(back2, back);
    }
}

#[test]
fn fallocate_gives_unwritten_blocks_that_writes_convert() {
    for (ps, bs) in geometries() {
        let rig = Rig::inline(Config::new(ps, bs), 4096);
        let m = rig.mapping(6);
        m.fallocate(0, 4 * ps as u64, false).unwrap();
        assert_eq!(m.size(), 4 * ps as u64);
        assert!(
            rig.mapper.extents(6).iter().all(|e| e.3),
            "fallocate must give unwritten extents"
        );
        let mut back = vec![1u8; 4 * ps];
        m.read(0, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 0));
        // Write one partial block into the unwritten range.
        let off = ps as u64 + 5;
        m.write(off, b"hello").unwrap();
        let snap = m.page_snapshot(1).unwrap();
        assert!(
            snap.blocks[0].contains(BlockState::UNWRITTEN | BlockState::DIRTY),
            "{:?}",
            snap.blocks
        );
        m.open().fsync().unwrap();
        let lblk = off / bs as u64;
        assert_eq!(
            rig.mapper.lookup(6, lblk).map(|x| x.1),
            Some(false),
            "written block converted"
        );
        assert_eq!(
            rig.mapper.lookup(6, lblk + 1).map(|x| x.1),
            Some(true),
            "untouched block still unwritten"
        );
        let disk = rig.disk_file(6, 4 * ps as u64);
        let mut expect = vec![0u8; 4 * ps];
        expect[off as usize..off as usize + 5].copy_from_slice(b"hello");
        assert_eq!(disk, expect, "{ps}/{bs}");
        assert_eq!(rig.mapper.conversions().len(), 1);
        assert_eq!(rig.cache.stats().violations, 0);
    }
}

#[test]
fn sequential_reads_use_few_large_bios() {
    use ext4kit_blockdev::{BioOp, FaultDevice, MemDevice};
    use std::sync::Arc;
    let mut cfg = Config::new(4096, 1024);
    cfg.max_bio_bytes = 256 << 10;
    let mut fault = None;
    let rig = Rig::new(cfg, 16384, |mem: MemDevice| {
        let f = FaultDevice::new(Arc::new(mem));
        fault = Some(f.clone());
        Arc::new(f)
    });
    let fault = fault.unwrap();
    let m = rig.mapping(20);
    let data = pattern(20, 4 << 20);
    m.write(0, &data).unwrap();
    m.open().fsync().unwrap();
    m.invalidate_clean();
    fault.clear_log();
    let mut back = vec![0u8; data.len()];
    m.read(0, &mut back).unwrap();
    assert_eq!(back, data);
    let reads: Vec<_> = fault
        .log()
        .into_iter()
        .filter(|r| r.op == BioOp::Read)
        .collect();
    // 4 MiB in 256 KiB bios: 16, not one per page (1024) or per block (4096).
    assert_eq!(reads.len(), 16, "{} read bios", reads.len());
}

#[test]
fn clean_pages_are_evicted_past_the_cache_limit_and_data_stays_correct() {
    let mut cfg = Config::new(4096, 4096);
    cfg.cache_limit_bytes = Some(1 << 20);
    let rig = Rig::inline(cfg, 8192);
    let files: Vec<_> = (0..4).map(|i| rig.mapping(30 + i)).collect();
    for (i, m) in files.iter().enumerate() {
        m.write(0, &pattern(i as u64, 2 << 20)).unwrap();
        m.open().fsync().unwrap();
    }
    assert!(
        rig.cache.stats().cached_pages * 4096 <= 1 << 20,
        "{} pages cached",
        rig.cache.stats().cached_pages
    );
    for (i, m) in files.iter().enumerate() {
        let mut back = vec![0u8; 2 << 20];
        m.read(0, &mut back).unwrap();
        assert_eq!(back, pattern(i as u64, 2 << 20));
    }
    assert!(rig.cache.stats().cached_pages * 4096 <= 2 << 20);
}
