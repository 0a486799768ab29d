//! Writing into images made by mkfs.ext4: create files, directories, symlinks, device nodes,
//! hard links, file data; then e2fsck must be silent and the kernel must see exactly that.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use ext4kit_fs::format::inode::Timestamp;
use ext4kit_fs::{Fs, OpenOptions, ROOT_INO};
use ext4kit_fs::{NewInode, NewKind};
use ext4kit_testkit::{LoopMount, Mke2fs, assert_e2fsck_clean, debugfs, pattern, require_kernel};

fn writable() -> OpenOptions {
    OpenOptions {
        writable: true,
        ..OpenOptions::default()
    }
}

fn t(s: i64, ns: u32) -> Timestamp {
    Timestamp {
        seconds: s,
        nanoseconds: ns,
    }
}

#[test]
fn create_files_dirs_links_and_data_then_fsck_and_kernel_agree() {
    if !require_kernel("create_files_dirs_links_and_data_then_fsck_and_kernel_agree") {
        return;
    }
    for (bs, size) in [(1024u32, 64u64 << 20), (4096, 256 << 20), (2048, 128 << 20)] {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("w.img");
        Mke2fs::new(&img)
            .block_size(bs)
            .size(size)
            .extended("lazy_itable_init=1")
            .run();
        let fs = Fs::open_path(&img, &writable()).unwrap();
        let attrs = NewInode {
            perm: 0o644,
            uid: 1000,
            gid: 100,
            ..NewInode::with_time(0o644, t(1_700_000_000, 123_456_789))
        };
        let d = fs
            .create(
                ROOT_INO,
                b"dir",
                &NewKind::Directory,
                &NewInode {
                    perm: 0o755,
                    ..attrs
                },
            )
            .unwrap();
        let sub = fs
            .create(
                d,
                b"sub",
                &NewKind::Directory,
                &NewInode {
                    perm: 0o700,
                    ..attrs
                },
            )
            .unwrap();
        let mut expect: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        // Files of boundary sizes, written in odd pieces.
        for (i, n) in [
            0usize,
            1,
            1023,
            1024,
            1025,
            4095,
            4096,
            4097,
            65537,
            1 << 20,
            (3 << 20) + 7,
        ]
        .iter()
        .enumerate()
        {
            let name = format!("f{i}");
            let ino = fs
                .create(d, name.as_bytes(), &NewKind::Regular, &attrs)
                .unwrap();
            let data = pattern(i as u64 + u64::from(bs), *n);
            let mut off = 0;
            while off < data.len() {
                let piece = (off * 7 % 50_000 + 1).min(data.len() - off);
                fs.write_at(ino, off as u64, &data[off..off + piece])
                    .unwrap();
                off += piece;
            }
            expect.insert(format!("dir/{name}"), data);
        }
        // A sparse file: data at both ends.
        let sp = fs
            .create(sub, b"sparse", &NewKind::Regular, &attrs)
            .unwrap();
        fs.write_at(sp, 0, b"head").unwrap();
        fs.write_at(sp, 40 << 20, b"tail").unwrap();
        // Many entries: the directory becomes an htree.
        let big = fs
            .create(
                ROOT_INO,
                b"big",
                &NewKind::Directory,
                &NewInode {
                    perm: 0o755,
                    ..attrs
                },
            )
            .unwrap();
        for i in 0..3000 {
            fs.create(
                big,
                format!("entry-{i:05}").as_bytes(),
                &NewKind::Regular,
                &attrs,
            )
            .unwrap();
        }
        // An htree that grows under a parent other than the root: `..` must stay right.
        let nested = fs
            .create(
                sub,
                b"nested-big",
                &NewKind::Directory,
                &NewInode {
                    perm: 0o755,
                    ..attrs
                },
            )
            .unwrap();
        for i in 0..3000 {
            fs.create(
                nested,
                format!("n-{i:05}").as_bytes(),
                &NewKind::Regular,
                &attrs,
            )
            .unwrap();
        }
        // Symlinks, devices, FIFO, socket, hard link.
        fs.create(
            d,
            b"fast",
            &NewKind::Symlink(b"f1".to_vec()),
            &NewInode {
                perm: 0o777,
                ..attrs
            },
        )
        .unwrap();
        let long = format!("../{}", "x".repeat(150));
        fs.create(
            d,
            b"slow",
            &NewKind::Symlink(long.clone().into_bytes()),
            &NewInode {
                perm: 0o777,
                ..attrs
            },
        )
        .unwrap();
        fs.create(d, b"null", &NewKind::CharDevice(1, 3), &attrs)
            .unwrap();
        fs.create(d, b"sda1", &NewKind::BlockDevice(8, 1), &attrs)
            .unwrap();
        fs.create(d, b"fifo", &NewKind::Fifo, &attrs).unwrap();
        fs.create(d, b"sock", &NewKind::Socket, &attrs).unwrap();
        let f3 = fs.lookup(d, b"f3").unwrap().unwrap().ino;
        fs.link(f3, sub, b"f3-link").unwrap();
        fs.sync().unwrap();
        drop(fs);
        assert_e2fsck_clean(&img);

        // Read back through our own reader.
        let fs = Fs::open_path(&img, &OpenOptions::default()).unwrap();
        for (path, data) in &expect {
            let ino = fs.resolve(format!("/{path}").as_bytes(), true).unwrap();
            assert_eq!(
                &fs.open_file(ino).unwrap().read_to_end(64 << 20).unwrap(),
                data,
                "{bs}: {path}"
            );
        }
        drop(fs);

        // And through the kernel.
        let m = LoopMount::new(&img, true).unwrap();
        let root = m.path();
        for (path, data) in &expect {
            assert_eq!(
                &std::fs::read(root.join(path)).unwrap(),
                data,
                "{bs}: kernel read of {path}"
            );
        }
        let sparse = std::fs::read(root.join("dir/sub/sparse")).unwrap();
        assert_eq!(sparse.len(), (40 << 20) + 4);
        assert_eq!(&sparse[..4], b"head");
        assert_eq!(&sparse[40 << 20..], b"tail");
        assert!(sparse[4..40 << 20].iter().all(|&b| b == 0));
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(root.join("dir/sub/sparse")).unwrap();
        assert!(
            md.blocks() * 512 <= 16 * u64::from(bs),
            "sparse file allocated {} sectors",
            md.blocks()
        );
        assert_eq!(
            std::fs::read_link(root.join("dir/fast"))
                .unwrap()
                .to_str()
                .unwrap(),
            "f1"
        );
        assert_eq!(
            std::fs::read_link(root.join("dir/slow"))
                .unwrap()
                .to_str()
                .unwrap(),
            long
        );
        assert_eq!(std::fs::read_dir(root.join("big")).unwrap().count(), 3000);
        assert_eq!(
            std::fs::read_dir(root.join("dir/sub/nested-big"))
                .unwrap()
                .count(),
            3000
        );
        assert_eq!(
            std::fs::metadata(root.join("dir/sub/nested-big/.."))
                .unwrap()
                .ino(),
            std::fs::metadata(root.join("dir/sub")).unwrap().ino()
        );
        let l = std::fs::metadata(root.join("dir/sub/f3-link")).unwrap();
        assert_eq!(l.nlink(), 2);
        assert_eq!(
            l.ino(),
            std::fs::metadata(root.join("dir/f3")).unwrap().ino()
        );
        let f0 = std::fs::metadata(root.join("dir/f1")).unwrap();
        assert_eq!((f0.uid(), f0.gid(), f0.mode() & 0o7777), (1000, 100, 0o644));
        assert_eq!((f0.mtime(), f0.mtime_nsec()), (1_700_000_000, 123_456_789));
        let dev = std::fs::symlink_metadata(root.join("dir/null")).unwrap();
        assert_eq!(dev.rdev(), rustix::fs::makedev(1, 3));
        m.unmount().unwrap();
        assert_e2fsck_clean(&img);
    }
}

/// `Fs::write_from_file` (the direct path `cp` uses for new files) on an image whose free blocks
/// hold old bytes (0xEE): data regions starting and ending mid-block, two regions sharing a
/// block, a region crossing extents. Reads (ours and the kernel's) must show the source bytes
/// and zeros everywhere else, and e2fsck must be silent.
#[test]
fn write_from_file_zeroes_around_partial_blocks_on_a_dirty_image() {
    if !require_kernel("write_from_file_zeroes_around_partial_blocks_on_a_dirty_image") {
        return;
    }
    for bs in [1024u32, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        std::fs::write(&img, vec![0xEE; 32 << 20]).unwrap();
        Mke2fs::new(&img)
            .block_size(bs)
            .extended("lazy_itable_init=1,nodiscard")
            .run();
        let src_path = dir.path().join("src");
        let src_data = pattern(u64::from(bs), 3 << 20);
        std::fs::write(&src_path, &src_data).unwrap();
        let src = std::fs::File::open(&src_path).unwrap();
        // (file offset, length); the file is zero elsewhere.
        let regions: [(u64, u64); 4] = [(100, 300), (600, 5000), (12_345, 1), (20_000, 2_100_000)];
        let fs = Fs::open_path(&img, &writable()).unwrap();
        let attrs = NewInode::with_time(0o644, t(1_700_000_000, 0));
        let ino = fs
            .create(ROOT_INO, b"direct", &NewKind::Regular, &attrs)
            .unwrap();
        let mut want = vec![0u8; (20_000 + 2_100_000) as usize];
        for (off, len) in regions {
            fs.write_from_file(ino, &src, off, off, len).unwrap();
            want[off as usize..(off + len) as usize]
                .copy_from_slice(&src_data[off as usize..(off + len) as usize]);
        }
        fs.sync().unwrap();
        let got = fs.open_file(ino).unwrap().read_to_end(1 << 30).unwrap();
        assert!(got == want, "{bs}: our read differs");
        drop(fs);
        assert_e2fsck_clean(&img);
        let m = LoopMount::new(&img, true).unwrap();
        assert!(
            std::fs::read(m.path().join("direct")).unwrap() == want,
            "{bs}: kernel read differs"
        );
        m.unmount().unwrap();
        // The block tails past EOF hold zeros too (a later extension must not expose old bytes).
        let out = debugfs(&img, "blocks /direct");
        let last: u64 = out
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .next_back()
            .unwrap();
        let raw = std::fs::read(&img).unwrap();
        let tail_from = (want.len() as u64 % u64::from(bs)) as usize;
        let block = &raw[(last * u64::from(bs)) as usize..((last + 1) * u64::from(bs)) as usize];
        assert!(
            block[tail_from..].iter().all(|&b| b == 0),
            "{bs}: old bytes past EOF"
        );
    }
}

#[test]
fn data_writes_refuse_directories_other_types_and_deleted_inodes_but_reach_open_unlinked_files() {
    use ext4kit_fs::Error;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("r.img");
    Mke2fs::new(&img)
        .block_size(1024)
        .size(16 << 20)
        .extended("lazy_itable_init=1")
        .run();
    let fs = Fs::open_path(&img, &writable()).unwrap();
    let attrs = NewInode::with_time(0o644, t(1_700_000_000, 5));
    let d = fs
        .create(ROOT_INO, b"d", &NewKind::Directory, &attrs)
        .unwrap();
    let l = fs
        .create(
            ROOT_INO,
            b"l",
            &NewKind::Symlink(b"target".to_vec()),
            &attrs,
        )
        .unwrap();
    let f = fs
        .create(ROOT_INO, b"f", &NewKind::Regular, &attrs)
        .unwrap();
    let g = fs
        .create(ROOT_INO, b"g", &NewKind::Regular, &attrs)
        .unwrap();
    fs.write_at(f, 0, b"hello").unwrap();
    fs.write_at(g, 0, b"abc").unwrap();
    fs.sync().unwrap();
    // Data into a directory or a symlink would corrupt it.
    assert!(
        matches!(fs.write_at(d, 0, b"x"), Err(Error::IsDir { .. })),
        "{:?}",
        fs.write_at(d, 0, b"x")
    );
    assert!(matches!(fs.set_size(d, 10), Err(Error::IsDir { .. })));
    assert!(matches!(
        fs.write_at(l, 0, b"x"),
        Err(Error::InvalidArgument(_))
    ));
    // Unlinked while its page cache is held: still written through, across a sync.
    let held = fs.data_mapping(g).unwrap();
    fs.unlink(ROOT_INO, b"g").unwrap();
    fs.sync().unwrap();
    fs.write_at(g, 3, b"def").unwrap();
    let mut buf = [0u8; 6];
    assert_eq!(held.read(0, &mut buf).unwrap(), 6);
    assert_eq!(&buf, b"abcdef");
    fs.close_file(held).unwrap();
    // Deleted (never open, or let go of): ENOENT, and the freed inode stays free.
    fs.unlink(ROOT_INO, b"f").unwrap();
    for ino in [f, g] {
        let e = fs.write_at(ino, 0, b"x").unwrap_err();
        assert!(e.errno() == 2, "inode {ino}: {e:?}");
        assert!(fs.set_size(ino, 1).is_err());
    }
    fs.sync().unwrap();
    for ino in [f, g] {
        assert!(
            fs.write_at(ino, 0, b"x").is_err(),
            "inode {ino} after its free"
        );
    }
    fs.sync().unwrap();
    drop(fs);
    assert_e2fsck_clean(&img);
}
