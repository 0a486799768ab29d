//! File-backed devices: IO from other threads, short transfers, flush, many segments.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::thread;

use ext4kit_blockdev::{
    Bio, BioBuf, BioOp, BioVec, BlockDevice, BlockDeviceExt, Completion, FileDevice, UringDevice,
    open_file_device,
};

fn image(len: u64) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(len).unwrap();
    f
}

fn devices(path: &std::path::Path) -> Vec<Arc<dyn BlockDevice>> {
    let mut v: Vec<Arc<dyn BlockDevice>> =
        vec![Arc::new(FileDevice::open(path, true, 512).unwrap())];
    match UringDevice::open(path, true, 512) {
        Ok(d) => v.push(Arc::new(d)),
        Err(e) => {
            if std::env::var_os("EXT4KIT_REQUIRE_URING").is_some() {
                panic!("io_uring required but unavailable: {e}");
            }
            eprintln!("io_uring not tested: {e}");
        }
    }
    v
}

#[test]
fn completions_run_on_device_threads_and_data_round_trips() {
    let img = image(8 << 20);
    for dev in devices(img.path()) {
        let me = thread::current().id();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut waits = Vec::new();
        // 64 bios of 3 segments each, shared and owned memory mixed.
        for i in 0..64u64 {
            let mut bio = Bio::new(BioOp::Write, i * 24);
            let shared: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(vec![(i as u8) ^ 0x5a; 8192]);
            bio.push(BioVec::new(BioBuf::Shared(shared), 4096, 4096));
            bio.push(BioVec::from_vec(vec![i as u8; 4096]));
            bio.push(BioVec::from_vec(vec![!(i as u8); 4096]));
            let c = Completion::new();
            let seen2 = Arc::clone(&seen);
            let inner_end = {
                let mut probe = Bio::new(BioOp::Flush, 0);
                c.attach(&mut probe);
                probe.take_end_io().unwrap()
            };
            bio.set_end_io(Box::new(move |bio, st| {
                seen2.lock().unwrap().push(thread::current().id());
                inner_end(bio, st)
            }));
            dev.submit(bio);
            waits.push(c);
        }
        for c in waits {
            assert!(c.wait().1.is_ok());
        }
        assert!(
            seen.lock().unwrap().iter().all(|t| *t != me),
            "{}: completion ran on the submitter",
            dev.kind()
        );
        dev.flush().unwrap();
        for i in 0..64u64 {
            let mut buf = vec![0u8; 12288];
            dev.read_blocks(i * 24, &mut buf).unwrap();
            assert!(
                buf[..4096].iter().all(|&b| b == (i as u8) ^ 0x5a),
                "{}",
                dev.kind()
            );
            assert!(buf[4096..8192].iter().all(|&b| b == i as u8));
            assert!(buf[8192..].iter().all(|&b| b == !(i as u8)));
        }
    }
}

#[test]
fn more_segments_than_iov_max_are_written_whole() {
    let img = image(4 << 20);
    for dev in devices(img.path()) {
        let mut bio = Bio::new(BioOp::Write, 8);
        for i in 0..1500u32 {
            bio.push(BioVec::from_vec(vec![(i % 251) as u8; 512]));
        }
        assert!(dev.submit_and_wait(bio).1.is_ok());
        let mut read = Bio::new(BioOp::Read, 8);
        for _ in 0..1500 {
            read.push(BioVec::zeroed(512));
        }
        let (read, st) = dev.submit_and_wait(read);
        st.unwrap();
        for (i, v) in read.vecs().iter().enumerate() {
            assert!(
                v.bytes().iter().all(|&b| b == (i % 251) as u8),
                "{}: segment {i}",
                dev.kind()
            );
        }
    }
}

#[test]
fn out_of_range_and_read_only_fail_through_the_end_function() {
    let img = image(1 << 20);
    for dev in devices(img.path()) {
        let err = dev.write_blocks(2047, &[0u8; 1024]).unwrap_err();
        assert!(err.to_string().contains("outside the device"), "{err}");
    }
    let ro = FileDevice::open(img.path(), false, 512).unwrap();
    assert!(matches!(
        ro.write_blocks(0, &[0u8; 512]),
        Err(ext4kit_blockdev::IoError::ReadOnly)
    ));
}

#[test]
fn open_file_device_reports_why_it_fell_back() {
    let img = image(1 << 20);
    let (dev, why) = open_file_device(img.path(), true, 512).unwrap();
    match why {
        None => assert_eq!(dev.kind(), "io_uring"),
        Some(reason) => {
            assert_eq!(dev.kind(), "file");
            assert!(reason.to_string().contains("io_uring"), "{reason}");
        }
    }
    dev.write_blocks(1, &[9u8; 512]).unwrap();
    let mut b = [0u8; 512];
    dev.read_blocks(1, &mut b).unwrap();
    assert_eq!(b, [9u8; 512]);
}

/// `copy_from_file` puts exactly the source bytes at unaligned and aligned device offsets and
/// leaves the bytes around them alone: kernel copy (file, io_uring) and the bio fallback
/// (memory device); a source that ends early is an error.
#[test]
fn copy_from_file_places_exactly_the_source_bytes() {
    let src = tempfile::NamedTempFile::new().unwrap();
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(src.path(), &data).unwrap();
    let src_file = std::fs::File::open(src.path()).unwrap();
    let img = image(8 << 20);
    let mut devs = devices(img.path());
    devs.push(Arc::new(ext4kit_blockdev::MemDevice::new(
        512,
        (8 << 20) / 512,
    )));
    for dev in devs {
        dev.write_blocks(0, &vec![0xAA; 8 << 20]).unwrap();
        // (source offset, device offset, length)
        let copies = [
            (0u64, 0u64, 512u64),
            (7, 1000, 5000),
            (100_000, 1 << 20, 2_500_000),
            (3, 6_000_001, 1),
        ];
        for &(so, d, n) in &copies {
            dev.copy_from_file(&src_file, so, d, n)
                .unwrap_or_else(|e| panic!("{}: {e}", dev.kind()));
        }
        let mut back = vec![0u8; 8 << 20];
        dev.read_blocks(0, &mut back).unwrap();
        let mut want = vec![0xAAu8; 8 << 20];
        for &(so, d, n) in &copies {
            want[d as usize..(d + n) as usize]
                .copy_from_slice(&data[so as usize..(so + n) as usize]);
        }
        assert!(back == want, "{}: device bytes differ", dev.kind());
        assert!(
            dev.copy_from_file(&src_file, 2_999_000, 0, 4096).is_err(),
            "{}: short source accepted",
            dev.kind()
        );
        assert!(
            dev.copy_from_file(&src_file, 0, (8 << 20) - 10, 20)
                .is_err(),
            "{}: copy past the end accepted",
            dev.kind()
        );
    }
}
