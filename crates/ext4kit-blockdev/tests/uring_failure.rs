//! A fatal io_uring error: every bio the ring holds (in the submission queue, in the kernel,
//! waiting for a slot, still in the channel) and every later one completes with the error,
//! exactly once, and a flush answers the error instead of hanging.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use ext4kit_blockdev::{Bio, BioOp, BioVec, BlockDevice, IoError, UringDevice};

fn uring(path: &std::path::Path) -> Option<UringDevice> {
    match UringDevice::open(path, true, 4096) {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var_os("EXT4KIT_REQUIRE_URING").is_some() {
                panic!("io_uring required but unavailable: {e}");
            }
            eprintln!("io_uring not tested: {e}");
            None
        }
    }
}

#[test]
fn a_failed_ring_completes_every_bio_once_with_the_error() {
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(64 << 20).unwrap();
    let Some(dev) = uring(img.path()) else { return };
    let (tx, rx) = mpsc::channel::<(usize, Result<(), IoError>)>();
    let calls = Arc::new(AtomicUsize::new(0));
    let submit = |i: usize, op: BioOp| {
        let mut bio = if op == BioOp::Flush {
            Bio::flush()
        } else {
            Bio::new(op, i as u64 * 16)
        };
        if op != BioOp::Flush {
            bio.push(BioVec::from_vec(vec![i as u8; 16 * 4096]));
        }
        let tx = tx.clone();
        let calls = Arc::clone(&calls);
        bio.set_end_io(Box::new(move |_bio, st| {
            calls.fetch_add(1, Ordering::SeqCst);
            let _ = tx.send((i, st));
        }));
        dev.submit(bio);
    };
    // Some bios in flight (or done), then the ring fails while more are queued (in the
    // submission queue, never seen by the kernel, and beyond the ring's depth).
    for i in 0..64 {
        submit(i, BioOp::Write);
    }
    dev.fail_ring_for_test(libc::EBADF, 0);
    for i in 64..600 {
        submit(i, BioOp::Write);
    }
    submit(600, BioOp::Flush);
    let mut seen = vec![0u32; 601];
    let mut failed_flush = false;
    for _ in 0..601 {
        let (i, st) = rx.recv_timeout(Duration::from_secs(30)).expect(
            "a bio of the failed ring never completed (the old fail_all forgot in-flight bios)",
        );
        seen[i] += 1;
        if i == 600 {
            match st {
                Err(IoError::Os { errno, .. }) => {
                    assert_eq!(errno, libc::EBADF, "the ring's error");
                    failed_flush = true;
                }
                other => panic!("flush after the ring failed: {other:?}"),
            }
        } else if i >= 64 {
            assert!(st.is_err(), "bio {i} after the ring failed: {st:?}");
        }
    }
    assert!(failed_flush);
    assert!(
        seen.iter().all(|&n| n == 1),
        "every bio completes once: {seen:?}"
    );
    // Later bios fail at once too, and dropping the device returns (no stuck ring thread).
    submit(601, BioOp::Flush);
    let (i, st) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(i, 601);
    assert!(st.is_err());
    drop(dev);
    assert_eq!(calls.load(Ordering::SeqCst), 602);
    assert!(rx.try_recv().is_err(), "no bio completes twice");
}
