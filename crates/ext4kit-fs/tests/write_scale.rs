//! Writing at the edges: a directory of 100,000 entries (bulk-built and grown one entry at a
//! time), more than 65,000 subdirectories (dir_nlink), a 4 GiB sparse file with data at both
//! ends, filling the filesystem to ENOSPC, and refusing images that must not be written.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use ext4kit_fs::build::{BuildOptions, build_image};
use ext4kit_fs::format::inode::Timestamp;
use ext4kit_fs::{Error, Fs, OpenOptions, ROOT_INO};
use ext4kit_fs::{NewInode, NewKind};
use ext4kit_testkit::{
    LoopMount, Mke2fs, assert_e2fsck_clean, kernel_available, pattern, require_kernel,
};

fn mkfs(img: &Path, bs: u32, size: u64) -> Mke2fs {
    Mke2fs::new(img).block_size(bs).size(size)
}

fn rw() -> OpenOptions {
    OpenOptions {
        writable: true,
        ..OpenOptions::default()
    }
}

fn attrs() -> NewInode {
    NewInode::with_time(
        0o644,
        Timestamp {
            seconds: 1_700_000_000,
            nanoseconds: 5,
        },
    )
}

#[test]
fn a_directory_of_100000_entries_built_and_grown() {
    if !require_kernel("a_directory_of_100000_entries_built_and_grown") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Grown one entry at a time (htree leaf splits, a second level).
    let img = dir.path().join("grow.img");
    mkfs(&img, 1024, 256 << 20).inodes(120_000).run();
    let fs = Fs::open_path(&img, &rw()).unwrap();
    let d = fs
        .create(
            ROOT_INO,
            b"big",
            &NewKind::Directory,
            &NewInode {
                perm: 0o755,
                ..attrs()
            },
        )
        .unwrap();
    for i in 0..100_000u32 {
        fs.create(
            d,
            format!("file-{i:06}").as_bytes(),
            &NewKind::Regular,
            &attrs(),
        )
        .unwrap();
    }
    fs.sync().unwrap();
    drop(fs);
    assert_e2fsck_clean(&img);
    let m = LoopMount::new(&img, true).unwrap();
    assert_eq!(
        std::fs::read_dir(m.path().join("big")).unwrap().count(),
        100_000
    );
    assert!(m.path().join("big/file-099999").exists() && m.path().join("big/file-000000").exists());
    m.unmount().unwrap();

    // Bulk-built by `build`.
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("big")).unwrap();
    for i in 0..100_000u32 {
        std::fs::File::create(src.join(format!("big/entry-{i:06}"))).unwrap();
    }
    let img2 = dir.path().join("built.img");
    build_image(
        &src,
        &img2,
        &BuildOptions {
            block_size: Some(4096),
            ..BuildOptions::default()
        },
        &mut |_| {},
    )
    .unwrap();
    assert_e2fsck_clean(&img2);
    let m = LoopMount::new(&img2, true).unwrap();
    assert_eq!(
        std::fs::read_dir(m.path().join("big")).unwrap().count(),
        100_000
    );
    m.unmount().unwrap();
}

#[test]
fn more_than_65000_subdirectories_use_dir_nlink() {
    if !require_kernel("more_than_65000_subdirectories_use_dir_nlink") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("nlink.img");
    mkfs(&img, 1024, 200 << 20).inodes(70_000).run();
    let fs = Fs::open_path(&img, &rw()).unwrap();
    let d = fs
        .create(
            ROOT_INO,
            b"many",
            &NewKind::Directory,
            &NewInode {
                perm: 0o755,
                ..attrs()
            },
        )
        .unwrap();
    for i in 0..65_010u32 {
        fs.create(
            d,
            format!("d{i}").as_bytes(),
            &NewKind::Directory,
            &NewInode {
                perm: 0o755,
                ..attrs()
            },
        )
        .unwrap();
    }
    assert_eq!(
        fs.inode(d).unwrap().links_count(),
        1,
        "past 65,000 links a directory counts 1"
    );
    fs.sync().unwrap();
    drop(fs);
    assert_e2fsck_clean(&img);
    let m = LoopMount::new(&img, true).unwrap();
    assert_eq!(
        std::fs::read_dir(m.path().join("many")).unwrap().count(),
        65_010
    );
    m.unmount().unwrap();
}

#[test]
fn a_4_gib_sparse_file_with_data_at_both_ends() {
    if !require_kernel("a_4_gib_sparse_file_with_data_at_both_ends") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("sparse.img");
    mkfs(&img, 4096, 64 << 20).run();
    let fs = Fs::open_path(&img, &rw()).unwrap();
    let f = fs
        .create(ROOT_INO, b"sparse", &NewKind::Regular, &attrs())
        .unwrap();
    let head = pattern(1, 100_000);
    let tail = pattern(2, 5000);
    let end = 4u64 << 30;
    fs.write_at(f, 0, &head).unwrap();
    fs.write_at(f, end - tail.len() as u64, &tail).unwrap();
    fs.sync().unwrap();
    drop(fs);
    assert_e2fsck_clean(&img);
    let m = LoopMount::new(&img, true).unwrap();
    use std::os::unix::fs::{FileExt, MetadataExt};
    let file = std::fs::File::open(m.path().join("sparse")).unwrap();
    let md = file.metadata().unwrap();
    assert_eq!(md.len(), end);
    assert!(
        md.blocks() * 512 < 1 << 20,
        "{} sectors allocated",
        md.blocks()
    );
    let mut b = vec![0u8; head.len()];
    file.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(b, head);
    let mut b = vec![0u8; tail.len()];
    file.read_exact_at(&mut b, end - tail.len() as u64).unwrap();
    assert_eq!(b, tail);
    let mut mid = vec![1u8; 4096];
    file.read_exact_at(&mut mid, 2 << 30).unwrap();
    assert!(mid.iter().all(|&x| x == 0));
    drop(file);
    m.unmount().unwrap();
}

#[test]
fn filling_the_filesystem_gives_enospc_and_leaves_it_consistent() {
    if !require_kernel("filling_the_filesystem_gives_enospc_and_leaves_it_consistent") {
        return;
    }
    for bs in [1024u32, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("full.img");
        mkfs(&img, bs, 16 << 20).run();
        let fs = Fs::open_path(&img, &rw()).unwrap();
        let mut written = Vec::new();
        let mut hit = None;
        'outer: for i in 0..64 {
            let f = fs
                .create(
                    ROOT_INO,
                    format!("f{i}").as_bytes(),
                    &NewKind::Regular,
                    &attrs(),
                )
                .unwrap();
            let data = pattern(i, 1 << 20);
            for (k, chunk) in data.chunks(64 << 10).enumerate() {
                match fs.write_at(f, (k * (64 << 10)) as u64, chunk) {
                    Ok(()) => {}
                    Err(e) => {
                        hit = Some(e);
                        break 'outer;
                    }
                }
            }
            written.push((format!("f{i}"), data));
        }
        let e = hit.expect("16 MiB cannot hold 64 MiB");
        assert!(matches!(e, Error::NoSpace(_)), "{e:?}");
        assert_eq!(e.errno(), 28);
        fs.sync().unwrap();
        drop(fs);
        assert_e2fsck_clean(&img);
        let m = LoopMount::new(&img, true).unwrap();
        for (name, data) in &written {
            assert_eq!(
                &std::fs::read(m.path().join(name)).unwrap(),
                data,
                "{bs}: {name}"
            );
        }
        m.unmount().unwrap();
    }
}

#[test]
fn images_that_must_not_be_written_are_refused_with_the_reason() {
    if !kernel_available() {
        require_kernel("images_that_must_not_be_written_are_refused_with_the_reason");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Features the writer does not handle.
    let img = dir.path().join("inline.img");
    mkfs(&img, 4096, 32 << 20).features("inline_data").run();
    let e = Fs::open_path(&img, &rw()).unwrap_err();
    assert!(e.to_string().contains("inline_data"), "{e}");
    // ext2 (indirect block maps).
    let img = dir.path().join("ext2.img");
    mkfs(&img, 1024, 32 << 20).fs_type("ext2").run();
    let e = Fs::open_path(&img, &rw()).unwrap_err();
    assert!(e.to_string().contains("extents"), "{e}");
    // A journal that needs recovery.
    let img = dir.path().join("dirty.img");
    mkfs(&img, 4096, 32 << 20).run();
    let m = LoopMount::new(&img, false).unwrap();
    std::fs::write(m.path().join("x"), b"y").unwrap();
    rustix::fs::sync();
    let copy = dir.path().join("dirty-copy.img");
    std::fs::copy(&img, &copy).unwrap();
    m.unmount().unwrap();
    let (_, dump) =
        ext4kit_testkit::run("dumpe2fs", &[std::ffi::OsStr::new("-h"), copy.as_os_str()]);
    if dump.contains("needs_recovery") {
        let e = Fs::open_path(&copy, &rw()).unwrap_err();
        assert!(e.to_string().contains("journal needs recovery"), "{e}");
    }
}
