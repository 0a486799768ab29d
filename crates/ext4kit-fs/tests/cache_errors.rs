//! Errors of calls that go through the page cache are the caller's own: the filesystem's typed
//! error comes back out of the cache's `MapError` unchanged (ENOSPC stays `Error::NoSpace`), and
//! an error one call hit is never handed to a later, unrelated call.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileExt;
use std::path::Path;

use ext4kit_fs::format::Structure;
use ext4kit_fs::format::extent::ExtentNode;
use ext4kit_fs::format::inode::Timestamp;
use ext4kit_fs::{Error, Fs, OpenOptions, ROOT_INO};
use ext4kit_fs::{NewInode, NewKind};
use ext4kit_testkit::{assert_e2fsck_clean, pattern, require_kernel, run_ok};

fn mkfs(img: &Path, bs: u32, size: u64) {
    let f = std::fs::File::create(img).unwrap();
    f.set_len(size).unwrap();
    let bs = bs.to_string();
    run_ok(
        "mke2fs",
        &[
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            &bs,
            "-E",
            "lazy_itable_init=1",
            img.to_str().unwrap(),
        ],
    );
}

fn attrs() -> NewInode {
    NewInode::with_time(
        0o644,
        Timestamp {
            seconds: 1_700_000_000,
            nanoseconds: 0,
        },
    )
}

/// A file runs out of space: that write gets `Error::NoSpace`, typed. Later calls on the same
/// file that fail for another reason get their own error, not the ENOSPC again, and calls on
/// another file are not handed it; the image stays consistent.
#[test]
fn enospc_stays_typed_and_is_not_handed_to_later_calls() {
    if !require_kernel("enospc_stays_typed_and_is_not_handed_to_later_calls") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("full.img");
    mkfs(&img, 4096, 16 << 20);
    let opts = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    let fs = Fs::open_path(&img, &opts).unwrap();
    let b = fs
        .create(ROOT_INO, b"b", &NewKind::Regular, &attrs())
        .unwrap();
    let data_b = pattern(2, 20_000);
    fs.write_at(b, 0, &data_b).unwrap();
    fs.sync().unwrap();
    let a = fs
        .create(ROOT_INO, b"a", &NewKind::Regular, &attrs())
        .unwrap();
    let chunk = pattern(1, 256 << 10);
    let mut off = 0u64;
    let e = loop {
        match fs.write_at(a, off, &chunk) {
            Ok(()) => off += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(off < 64 << 20, "16 MiB cannot hold 64 MiB");
    };
    assert!(matches!(e, Error::NoSpace(_)), "{e:?}");
    assert_eq!(e.errno(), libc::ENOSPC);

    // The same file, a call that fails for another reason: its own error.
    let huge = 1u64 << 61;
    let e = fs.set_size(a, huge).unwrap_err();
    assert!(
        matches!(e, Error::FileTooLarge { ino, offset } if ino == a && offset == huge),
        "{e:?}"
    );
    assert_eq!(e.errno(), libc::EFBIG);
    // What was written reads back.
    let mut buf = vec![0; chunk.len()];
    let r = fs.open_file(a).unwrap();
    assert_eq!(r.read_at(0, &mut buf).unwrap(), chunk.len());
    assert_eq!(buf, chunk);

    // Another file: reads, and its own failing call gets its own error.
    let got = fs.open_file(b).unwrap().read_to_end(1 << 20).unwrap();
    assert_eq!(got, data_b);
    let e = fs.set_size(b, huge).unwrap_err();
    assert!(
        matches!(e, Error::FileTooLarge { ino, .. } if ino == b),
        "{e:?}"
    );
    fs.set_size(b, 4096).unwrap();

    // The sync writes what was accepted and reports nothing left over.
    fs.sync().unwrap();
    fs.sync().unwrap();
    drop(fs);
    assert_e2fsck_clean(&img);
    let fs = Fs::open_path(&img, &OpenOptions::default()).unwrap();
    let got = fs.open_file(b).unwrap().read_to_end(1 << 20).unwrap();
    assert_eq!(got, data_b[..4096]);
    let mut buf = vec![0; chunk.len()];
    let r = fs.open_file(a).unwrap();
    assert_eq!(r.read_at(0, &mut buf).unwrap(), chunk.len());
    assert_eq!(buf, chunk);
}

/// A read whose error nobody sees (a prefetch running into a corrupt extent tree) leaves nothing
/// behind: a later call on that file that fails for another reason gets its own error, a read
/// gets the corruption, typed (structure, inode, block), and another file is not affected.
#[test]
fn an_unseen_mapping_error_is_not_handed_to_later_calls() {
    if !require_kernel("an_unseen_mapping_error_is_not_handed_to_later_calls") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("corrupt.img");
    mkfs(&img, 4096, 32 << 20);
    let opts = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    let (a, b, leaf, data_b) = {
        let fs = Fs::open_path(&img, &opts).unwrap();
        let a = fs
            .create(ROOT_INO, b"a", &NewKind::Regular, &attrs())
            .unwrap();
        // Every other block: more extents than the inode holds, so the tree gets a leaf block.
        for i in 0..16u64 {
            fs.write_at(a, i * 8192, &pattern(i, 4096)).unwrap();
        }
        let b = fs
            .create(ROOT_INO, b"b", &NewKind::Regular, &attrs())
            .unwrap();
        let data_b = pattern(99, 30_000);
        fs.write_at(b, 0, &data_b).unwrap();
        fs.sync().unwrap();
        let inode = fs.inode(a).unwrap();
        let root = ExtentNode::parse_root(inode.block_area()).unwrap();
        assert_eq!(root.depth(), 1, "the file needs an extent tree of depth 1");
        (a, b, root.indexes()[0].child_block, data_b)
    };
    // Break the leaf's header magic.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let mut magic = [0u8; 1];
    f.read_exact_at(&mut magic, leaf * 4096 + 1).unwrap();
    f.write_all_at(&[magic[0] ^ 0xFF], leaf * 4096 + 1).unwrap();
    drop(f);

    let fs = Fs::open_path(&img, &opts).unwrap();
    // Nobody waits for a prefetch: its mapping error is dropped.
    fs.open_file(a).unwrap().prefetch(1 << 20);
    let huge = 1u64 << 61;
    let e = fs.set_size(a, huge).unwrap_err();
    assert!(
        matches!(e, Error::FileTooLarge { ino, offset } if ino == a && offset == huge),
        "{e:?}"
    );
    // A read meets the corruption itself, typed as the extent code made it.
    let e = fs.open_file(a).unwrap().read_to_end(1 << 20).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    assert_eq!(e.structure(), Some(Structure::ExtentTree), "{e}");
    assert_eq!(
        (e.context().inode, e.context().block),
        (Some(a), Some(leaf)),
        "{e}"
    );
    // The other file is fine.
    let got = fs.open_file(b).unwrap().read_to_end(1 << 20).unwrap();
    assert_eq!(got, data_b);
    let e = fs.set_size(b, huge).unwrap_err();
    assert!(
        matches!(e, Error::FileTooLarge { ino, .. } if ino == b),
        "{e:?}"
    );
}
