//! `build`: images made from a generated tree pass e2fsck and a kernel mount shows the tree
//! exactly (content, mode, owner, ns mtime, symlink targets, link groups, xattrs, devices);
//! two builds with the same UUID, hash seed and SOURCE_DATE_EPOCH are byte-identical.
#![allow(clippy::unwrap_used)]

use ext4kit_fs::build::{BuildOptions, build_image};
use ext4kit_testkit::{
    Compare, TreeOptions, assert_e2fsck_clean, diff_trees, kernel_snapshot, new_tree,
    require_kernel, snapshot,
};

#[test]
fn built_images_match_the_tree_through_the_kernel() {
    if !require_kernel("built_images_match_the_tree_through_the_kernel") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = new_tree(&dir.path().join("src"), 11, &TreeOptions::default());
    let want = snapshot(&src);
    for bs in [1024u32, 2048, 4096] {
        let img = dir.path().join(format!("b{bs}.img"));
        let opts = BuildOptions {
            block_size: Some(bs),
            ..BuildOptions::default()
        };
        let report = build_image(&src, &img, &opts, &mut |_| {}).unwrap();
        assert!(report.files > 3000, "{report:?}");
        assert_e2fsck_clean(&img);
        let d = diff_trees(&want, &kernel_snapshot(&img), Compare::default());
        assert!(d.is_empty(), "block size {bs}: {d:#?}");
    }
}

#[test]
fn builds_are_reproducible_with_fixed_uuid_seed_and_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let src = new_tree(&dir.path().join("src"), 5, &TreeOptions::sized(500, 8));
    let opts = BuildOptions {
        block_size: Some(4096),
        uuid: Some([7; 16]),
        hash_seed: Some([9; 16]),
        source_date_epoch: Some(1_600_000_000),
        ..BuildOptions::default()
    };
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    build_image(&src, &a, &opts, &mut |_| {}).unwrap();
    build_image(&src, &b, &opts, &mut |_| {}).unwrap();
    let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(x.len(), y.len());
    let first_diff = x.iter().zip(&y).position(|(p, q)| p != q);
    assert_eq!(first_diff, None, "images differ at byte {first_diff:?}");
    if ext4kit_testkit::kernel_available() {
        assert_e2fsck_clean(&a);
    }
    let c = dir.path().join("c.img");
    build_image(
        &src,
        &c,
        &BuildOptions {
            uuid: Some([8; 16]),
            ..opts
        },
        &mut |_| {},
    )
    .unwrap();
    assert_ne!(
        std::fs::read(&c).unwrap(),
        x,
        "another UUID must change the image"
    );
}
