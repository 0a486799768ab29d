//! A fatal io_uring error while file data is under writeback: `sync` (fsync) answers the error
//! and does not hang (the ring's in-flight bios used to be forgotten, their pages left under
//! writeback forever).
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, mpsc};
use std::time::Duration;

use ext4kit_blockdev::{BlockDevice, UringDevice};
use ext4kit_fs::format::inode::Timestamp;
use ext4kit_fs::{Fs, OpenOptions, ROOT_INO};
use ext4kit_fs::{NewInode, NewKind};
use ext4kit_testkit::{Mke2fs, require_kernel};

#[test]
fn sync_after_the_ring_fails_returns_the_error_without_hanging() {
    if !require_kernel("sync_after_the_ring_fails_returns_the_error_without_hanging") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = Mke2fs::new(dir.path().join("u.img"))
        .block_size(4096)
        .size(64 << 20)
        .run();
    let dev = match UringDevice::open(&img, true, 1024) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            if std::env::var_os("EXT4KIT_REQUIRE_URING").is_some() {
                panic!("io_uring required but unavailable: {e}");
            }
            eprintln!("io_uring not tested: {e}");
            return;
        }
    };
    let as_dev: Arc<dyn BlockDevice> = Arc::clone(&dev) as _;
    let fs = Fs::open(
        as_dev,
        &OpenOptions {
            writable: true,
            background_writeback: false,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let attrs = NewInode::with_time(
        0o644,
        Timestamp {
            seconds: 1_700_000_000,
            nanoseconds: 0,
        },
    );
    let f = fs
        .create(ROOT_INO, b"f", &NewKind::Regular, &attrs)
        .unwrap();
    fs.write_at(f, 0, &vec![0x5a; 16 << 20]).unwrap();
    // The ring fails while the sync's writeback is on it: one more `io_uring_enter` works, the
    // next fails with entries in the submission queue and in the kernel.
    dev.fail_ring_for_test(9 /* EBADF */, 1);
    let (tx, rx) = mpsc::channel();
    let fs2 = fs.clone();
    std::thread::spawn(move || {
        let first = fs2.sync();
        let second = fs2.sync();
        let _ = tx.send((first, second));
    });
    let (first, second) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("sync hung after the ring failed");
    let first = first.expect_err("sync after a ring failure must fail");
    assert!(
        second.is_err(),
        "a second sync fails too (the device stays failed)"
    );
    eprintln!("sync: {first}");
}
