//! The oracles agree with themselves: a tree put into an image by `mke2fs -d` and read back
//! through a kernel mount equals the source (except nanoseconds, which mke2fs 1.47 drops).
#![allow(clippy::unwrap_used)]

use ext4kit_testkit::*;

#[test]
fn mke2fs_d_tree_round_trips_through_a_kernel_mount() {
    if !require_kernel("mke2fs_d_tree_round_trips_through_a_kernel_mount") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = new_tree(&dir.path().join("src"), 7, &TreeOptions::sized(3000, 40));
    let img = dir.path().join("t.img");
    mke2fs_d(&src, &img, "ext4", 4096, 64 << 20, &[]);
    assert_e2fsck_clean(&img);
    let want = snapshot(&src);
    let d = diff_trees(
        &want,
        &kernel_snapshot(&img),
        Compare {
            mtime_ns: false,
            dir_mtime: false,
            ..Compare::default()
        },
    );
    assert!(d.is_empty(), "{d:#?}");
}

#[test]
fn e2fsck_check_rejects_a_wrong_free_blocks_count_that_exits_zero() {
    if !require_kernel("e2fsck_check_rejects_a_wrong_free_blocks_count_that_exits_zero") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("t.img");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    mke2fs_d(&empty, &img, "ext4", 4096, 32 << 20, &[]);
    assert_e2fsck_clean(&img);
    // Corrupt s_free_blocks_count_lo (offset 0x0C of the superblock at byte 1024) and fix
    // the superblock checksum with debugfs's help: use debugfs to set it.
    run_ok(
        "debugfs",
        &[
            "-w",
            "-R",
            "ssv free_blocks_count 12345",
            img.to_str().unwrap(),
        ],
    );
    let r = e2fsck_clean(&img);
    assert!(r.is_err(), "a wrong free blocks count must fail the check");
}
