//! The library front door: closing and discarding an image, knowing whether anything is left
//! to sync, and the byte-path calls (create, mkdir -p, write, read, rename, remove), checked
//! with e2fsck after each sync.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use ext4kit_fs::{
    Error, Fs, MkfsOptions, NewInode, NewKind, OpenOptions, Timestamp, mkfs_path, names_dir,
    split_parent,
};
use ext4kit_testkit::assert_e2fsck_clean;

fn image(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("lib.img");
    mkfs_path(
        &img,
        &MkfsOptions {
            size_bytes: 32 << 20,
            ..MkfsOptions::default()
        },
    )
    .unwrap();
    img
}

fn writable(img: &Path) -> Fs {
    Fs::open_path(
        img,
        &OpenOptions {
            writable: true,
            ..OpenOptions::default()
        },
    )
    .unwrap()
}

fn attrs(perm: u16) -> NewInode {
    NewInode::with_time(
        perm,
        Timestamp {
            seconds: 1_700_000_000,
            nanoseconds: 0,
        },
    )
}

#[test]
fn close_syncs_and_discard_gives_changes_up() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let fs = writable(&img);
    assert!(!fs.has_unsynced_changes());
    fs.write_path(b"/kept", b"synced by close\n", &attrs(0o644))
        .unwrap();
    assert!(fs.has_unsynced_changes());
    fs.close().unwrap();
    assert_e2fsck_clean(&img);

    let before = std::fs::read(&img).unwrap();
    let fs = writable(&img);
    fs.write_path(b"/dropped", b"never synced\n", &attrs(0o644))
        .unwrap();
    fs.mkdir_all(b"/a/b/c", &attrs(0o755)).unwrap();
    assert!(fs.has_unsynced_changes());
    fs.discard();
    assert_eq!(
        std::fs::read(&img).unwrap(),
        before,
        "discard wrote nothing"
    );

    let fs = Fs::open_path(&img, &OpenOptions::default()).unwrap();
    assert!(!fs.has_unsynced_changes());
    assert_eq!(
        fs.read_path(b"/kept", 1 << 20).unwrap(),
        b"synced by close\n"
    );
    assert!(matches!(
        fs.resolve(b"/dropped", true),
        Err(Error::NotFound { .. })
    ));
    fs.close().unwrap();
}

#[test]
fn path_calls_create_write_read_rename_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let fs = writable(&img);
    let d = fs.mkdir_all(b"/usr/share/doc/", &attrs(0o755)).unwrap();
    assert_eq!(fs.resolve(b"/usr/share/doc", true).unwrap(), d);
    // Again: everything exists already.
    assert_eq!(fs.mkdir_all(b"usr//share/doc", &attrs(0o755)).unwrap(), d);
    let f = fs
        .write_path(
            b"/usr/share/doc/README",
            b"first version, long\n",
            &attrs(0o644),
        )
        .unwrap();
    // Writing again truncates (same inode).
    assert_eq!(
        fs.write_path(b"/usr/share/doc/README", b"second\n", &attrs(0o600))
            .unwrap(),
        f
    );
    fs.create_path(
        b"/usr/share/doc/link",
        &NewKind::Symlink(b"README".to_vec()),
        &attrs(0o777),
    )
    .unwrap();
    // Reading follows the symlink.
    assert_eq!(
        fs.read_path(b"/usr/share/doc/link", 1 << 20).unwrap(),
        b"second\n"
    );
    assert!(matches!(
        fs.read_path(b"/usr/share/doc/README", 3),
        Err(Error::InvalidArgument(_))
    ));
    // mkdir -p through a file, and a write onto a directory.
    assert!(matches!(
        fs.mkdir_all(b"/usr/share/doc/README/x", &attrs(0o755)),
        Err(Error::NotDir { .. })
    ));
    assert!(matches!(
        fs.write_path(b"/usr/share", b"x", &attrs(0o644)),
        Err(Error::IsDir { .. })
    ));
    fs.rename_path(b"/usr/share/doc/README", b"/usr/README")
        .unwrap();
    assert_eq!(fs.read_path(b"/usr/README", 1 << 20).unwrap(), b"second\n");
    // The symlink dangles now: removing it removes the link, not a target.
    fs.remove(b"/usr/share/doc/link").unwrap();
    assert!(matches!(
        fs.remove(b"/usr/share"),
        Err(Error::NotEmpty { .. })
    ));
    fs.remove_all(b"/usr/share").unwrap();
    assert!(matches!(
        fs.resolve(b"/usr/share", true),
        Err(Error::NotFound { .. })
    ));
    fs.remove(b"/usr/README").unwrap();
    fs.remove(b"/usr").unwrap();
    // Names that cannot be created, and parents that are not directories.
    for bad in [&b"/"[..], b"/.", b"/usr/..", b""] {
        assert!(
            matches!(fs.parent_and_name(bad), Err(Error::InvalidName { .. })),
            "{bad:?}"
        );
    }
    fs.write_path(b"/f", b"", &attrs(0o644)).unwrap();
    assert!(matches!(
        fs.parent_and_name(b"/f/x"),
        Err(Error::NotDir { .. })
    ));
    fs.close().unwrap();
    assert_e2fsck_clean(&img);
}

#[test]
fn split_parent_and_names_dir() {
    assert_eq!(split_parent(b"/a/b/"), (&b"/a"[..], &b"b"[..]));
    assert_eq!(split_parent(b"/b"), (&b"/"[..], &b"b"[..]));
    assert_eq!(split_parent(b"b"), (&b"/"[..], &b"b"[..]));
    assert_eq!(split_parent(b"a/b"), (&b"a"[..], &b"b"[..]));
    assert_eq!(split_parent(b"/"), (&b"/"[..], &b""[..]));
    assert!(names_dir(b"/a/"));
    assert!(!names_dir(b"/a"));
    assert!(!names_dir(b"//"));
}
