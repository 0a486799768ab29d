//! Changing images the kernel wrote: delete, rename, overwrite, truncate, links, fallocate,
//! punch, orphans, device failures. Every change is applied both to the image (through the
//! library) and to a host copy of the tree (through the host kernel); then `e2fsck -fn` must be
//! silent and a kernel mount of the image must show exactly the host tree (content, mode,
//! owner, ns mtime, symlink targets, hard-link groups, xattrs).
#![allow(clippy::unwrap_used)]

#[path = "modify_common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use common::{Twin, kernel_image, open_rw, ts};
use ext4kit_blockdev::{BioOp, BlockDevice, FaultDevice, FaultRule, FileDevice};
use ext4kit_fs::{Error, Fs, OpenOptions, ROOT_INO};
use ext4kit_fs::{NewInode, NewKind};
use ext4kit_testkit::{
    Compare, LoopMount, TreeOptions, assert_e2fsck_clean, debugfs, diff_trees, e2fsck_clean,
    kernel_snapshot, new_tree, pattern, require_kernel, run, run_ok, snapshot,
};

const CMP: Compare = Compare {
    mtime: true,
    mtime_ns: true,
    dir_mtime: false,
    owner: true,
    xattrs: true,
};

/// Mounts `img` read-only and compares it with `host`.
fn assert_kernel_view(img: &Path, host: &Path, what: &str) {
    let got = kernel_snapshot(img);
    let want = snapshot(host);
    let d = diff_trees(&want, &got, CMP);
    assert!(
        d.is_empty(),
        "{what}: kernel view differs from the host tree ({} differences):\n{}",
        d.len(),
        d[..d.len().min(40)].join("\n")
    );
}

/// The changes of issue 5's demonstration, on a tree made by `generate_tree`.
fn apply_changes(t: &Twin, bs: u32) {
    let t0 = 1_710_000_000i64;
    // 1. Every second file of the 3000-entry directory goes; 3000 new ones come.
    let mut names: Vec<String> = std::fs::read_dir(t.h("bigdir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3000);
    for n in names.iter().skip(1).step_by(2) {
        t.unlink(&format!("bigdir/{n}"));
    }
    for i in 0..3000u32 {
        let name = format!("bigdir/new-{i:05}-{}", "m".repeat((i % 50) as usize));
        t.write_file(
            &name,
            &pattern(u64::from(i) + 7, (i % 300) as usize),
            0o644,
            ts(t0 + i64::from(i), i * 7),
        );
    }
    // 2. A deep directory moves elsewhere (37 levels below it), and one is renamed in place.
    t.rename("deep/level00/level01/level02", "names/moved-deep");
    t.rename("deep/level00", "deep/level00-renamed");
    // 3. Large files overwritten with different content and length.
    t.write_file(
        "files/size-1048577",
        &pattern(901, (5 << 19) + 3),
        0o600,
        ts(t0 + 5000, 1),
    );
    t.write_at(
        "files/size-65537",
        0,
        &pattern(902, 40_000),
        ts(t0 + 5001, 2),
    );
    t.truncate("files/size-65537", 40_000, ts(t0 + 5001, 2));
    t.write_at(
        "files/size-4097",
        3000,
        &pattern(903, 9000),
        ts(t0 + 5002, 3),
    );
    // 4. A directory of sparse files goes.
    t.remove_all("sparse");
    // 5. mkdir -p.
    t.mkdir_p("made/by/mkdir/dash/p");
    // 6. Symlinks (fast and slow) and hard links (a group grows and shrinks).
    t.symlink("../made/by", "links/new-fast", ts(t0 + 6000, 6));
    t.symlink(
        &"s".repeat(200),
        "made/by/mkdir/slow-link",
        ts(t0 + 6001, 7),
    );
    t.link("hardlinks/one", "made/by/mkdir/dash/one-again");
    t.link("bigdir/new-00007-mmmmmmm", "made/linked-new");
    t.unlink("hardlinks/two");
    // 7. Renames that replace: a file by a file, an empty directory by a directory.
    t.rename("files/size-0", "files/size-1");
    t.mkdir("made/empty1", 0o750);
    t.mkdir("made/empty2", 0o700);
    t.write_file(
        "made/empty1/inside",
        b"moved with its directory",
        0o644,
        ts(t0 + 7000, 8),
    );
    t.rmdir("made/empty2");
    t.mkdir("made/empty2", 0o700);
    t.rename("made/empty1", "made/empty2");
    // 8. Owner, mode, time.
    t.set_owner_mode("modes/m600", 4242, 4343, 0o640);
    t.set_mtime("modes/m755", ts(t0 + 8000, 999_999_999));
    // 9. Extended attributes: added in the inode, removed, changed in the block.
    t.set_xattr("files/size-4096", "user.added", b"after the fact");
    t.remove_xattr("xattrs/small", "user.comment");
    t.set_xattr("xattrs/big", "user.second", &pattern(904, 100));
    // 10. Holes and preallocation (partial blocks at the edges).
    t.punch("files/size-65536", 5000, 30_000, ts(t0 + 9000, 9));
    t.fallocate("files/size-8192", 0, 64 << 10, true, ts(t0 + 9001, 10));
    t.fallocate("files/size-4095", 2000, 100_000, false, ts(t0 + 9002, 11));
    t.write_at(
        "files/size-4095",
        50_000,
        &pattern(905, u64::from(bs) as usize + 17),
        ts(t0 + 9003, 12),
    );
    // 11. Other kinds go too.
    t.unlink("links/to-dir");
    if t.h("special/fifo").exists() {
        t.unlink("special/fifo");
        t.unlink("special/char-1-3");
    }
    // 12. The (indexed) big directory moves under another parent: `..` in its dx root.
    t.rename("bigdir", "names/bigdir-moved");
}

#[test]
fn kernel_written_images_take_deletes_moves_overwrites_and_links() {
    if !require_kernel("kernel_written_images_take_deletes_moves_overwrites_and_links") {
        return;
    }
    for bs in [1024u32, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let host = new_tree(
            &dir.path().join("host"),
            u64::from(bs),
            &TreeOptions::default(),
        );
        let img = kernel_image(dir.path(), "k.img", bs, 128, Some(&host), &[]);
        assert_e2fsck_clean(&img);
        assert_kernel_view(&img, &host, "before the changes");
        let t = Twin {
            host: host.clone(),
            fs: open_rw(&img),
        };
        apply_changes(&t, bs);
        t.fs.sync().unwrap();
        drop(t);
        if let Err(e) = e2fsck_clean(&img) {
            panic!("{bs}: {e}");
        }
        assert_kernel_view(&img, &host, &format!("{bs}: after the changes"));
        // The kernel goes on from our state: deletes the big directory, writes more.
        let m = LoopMount::new(&img, false).unwrap();
        std::fs::remove_dir_all(m.path().join("names/bigdir-moved")).unwrap();
        std::fs::remove_dir_all(m.path().join("names/moved-deep")).unwrap();
        std::fs::write(m.path().join("made/by/kernel-after"), pattern(1, 100_000)).unwrap();
        m.unmount().unwrap();
        assert_e2fsck_clean(&img);
    }
}

/// Depth of the extent tree of `ino` (eh_depth of the root in i_block).
fn tree_depth(fs: &Fs, ino: u32) -> u16 {
    let i = fs.inode(ino).unwrap();
    let b = i.block_area();
    u16::from_le_bytes([b[6], b[7]])
}

/// `debugfs -R "stat"` says how many extents, roughly: count of "(" in the EXTENTS section.
fn extent_count(img: &Path, path: &str) -> usize {
    let out = debugfs(img, &format!("ex {path}"));
    out.lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && l.contains('/'))
        .count()
}

#[test]
fn kernel_written_deep_extent_trees_with_unwritten_extents_are_cut_split_and_freed() {
    if !require_kernel(
        "kernel_written_deep_extent_trees_with_unwritten_extents_are_cut_split_and_freed",
    ) {
        return;
    }
    for bs in [1024u32, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let img = kernel_image(dir.path(), "x.img", bs, 256, None, &[]);
        let b = u64::from(bs);
        let nblocks = if bs == 1024 { 6000u64 } else { 2000 };
        // The kernel writes every second block (thousands of extents: depth 2 at 1 KiB, 1 at
        // 4 KiB) and preallocates a file, writing parts of it (unwritten and written extents).
        let mut frag = vec![0u8; (nblocks * b) as usize];
        let mut pre = vec![0u8; 8 << 20];
        {
            let m = LoopMount::new(&img, false).unwrap();
            let f = std::fs::File::create(m.path().join("frag")).unwrap();
            for k in (0..nblocks).step_by(2) {
                let d = pattern(k, b as usize);
                f.write_all_at(&d, k * b).unwrap();
                frag[(k * b) as usize..((k + 1) * b) as usize].copy_from_slice(&d);
                if k % 512 == 0 {
                    f.sync_data().unwrap();
                }
            }
            f.set_len(nblocks * b).unwrap();
            f.sync_all().unwrap();
            drop(f);
            std::fs::copy(m.path().join("frag"), m.path().join("frag-copy")).unwrap();
            let f = std::fs::File::create(m.path().join("pre")).unwrap();
            rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, 8 << 20).unwrap();
            for k in 0..40u64 {
                let off = k * 200_000 + 1234;
                let d = pattern(1000 + k, 5000);
                f.write_all_at(&d, off).unwrap();
                pre[off as usize..off as usize + 5000].copy_from_slice(&d);
            }
            f.sync_all().unwrap();
            drop(f);
            // A file the kernel leaves with its holes: written sparsely then deleted by us.
            let f = std::fs::File::create(m.path().join("frag-delete")).unwrap();
            for k in (0..nblocks).step_by(3) {
                f.write_all_at(&pattern(k, 100), k * b).unwrap();
            }
            drop(f);
            m.unmount().unwrap();
        }
        assert_e2fsck_clean(&img);
        let fs = open_rw(&img);
        let ino = fs.resolve(b"/frag", true).unwrap();
        let want_depth = if bs == 1024 { 2 } else { 1 };
        assert_eq!(tree_depth(&fs, ino), want_depth, "{bs}: kernel tree depth");
        assert!(
            extent_count(&img, "/frag") >= (nblocks / 2) as usize,
            "{bs}: kernel extents"
        );
        let pino = fs.resolve(b"/pre", true).unwrap();
        // Punch across leaf boundaries, fill some holes (inserts that split leaves), truncate
        // into the middle, grow again with a hole.
        let punch = |off: u64, len: u64, model: &mut Vec<u8>| {
            fs.punch_hole(ino, off, len).unwrap();
            let end = (off + len).min(model.len() as u64);
            model[off as usize..end as usize].fill(0);
        };
        punch(1000 * b + 17, 900 * b, &mut frag);
        punch(3 * b, 5, &mut frag);
        for k in (2001..nblocks - 1).step_by(14) {
            let d = pattern(50_000 + k, b as usize);
            fs.write_at(ino, k * b, &d).unwrap();
            frag[(k * b) as usize..((k + 1) * b) as usize].copy_from_slice(&d);
        }
        fs.sync().unwrap();
        let cut = nblocks * 7 / 10 * b + 333;
        fs.set_size(ino, cut).unwrap();
        frag.truncate(cut as usize);
        fs.set_size(ino, cut + 10 * b).unwrap();
        frag.resize((cut + 10 * b) as usize, 0);
        // Unwritten extents written into (split into written / unwritten pieces), punched,
        // preallocated past the end with the size kept.
        for k in 0..30u64 {
            let off = k * 270_001 + 99;
            let d = pattern(2000 + k, 3000);
            fs.write_at(pino, off, &d).unwrap();
            pre[off as usize..off as usize + 3000].copy_from_slice(&d);
        }
        fs.punch_hole(pino, 3 << 20, 1 << 20).unwrap();
        pre[3 << 20..4 << 20].fill(0);
        fs.fallocate(pino, 8 << 20, 2 << 20, true).unwrap();
        // The copy goes entirely (thousands of extents, tree blocks and all).
        // (The superblock of an open Fs is the one read at open.)
        let free_at_open = fs.superblock().free_blocks_count();
        fs.unlink(ROOT_INO, b"frag-copy").unwrap();
        fs.unlink(ROOT_INO, b"frag-delete").unwrap();
        fs.sync().unwrap();
        drop(fs);
        if let Err(e) = e2fsck_clean(&img) {
            panic!("{bs}: {e}");
        }
        let fs = Fs::open_path(&img, &OpenOptions::default()).unwrap();
        assert!(
            fs.superblock().free_blocks_count() > free_at_open + nblocks / 2,
            "{bs}: blocks of the deleted files were not freed"
        );
        drop(fs);
        let m = LoopMount::new(&img, true).unwrap();
        assert!(
            std::fs::read(m.path().join("frag")).unwrap() == frag,
            "{bs}: frag content differs"
        );
        assert!(
            std::fs::read(m.path().join("pre")).unwrap() == pre,
            "{bs}: pre content differs"
        );
        assert!(!m.path().join("frag-copy").exists());
        let md = std::fs::metadata(m.path().join("pre")).unwrap();
        assert_eq!(md.len(), 8 << 20);
        assert!(
            md.blocks() * 512 >= (9 << 20),
            "{bs}: preallocation past EOF kept ({} sectors)",
            md.blocks()
        );
        m.unmount().unwrap();
    }
}

#[test]
fn kernel_written_two_level_htree_takes_removals_additions_and_renames() {
    if !require_kernel("kernel_written_two_level_htree_takes_removals_additions_and_renames") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = kernel_image(dir.path(), "h.img", 1024, 128, None, &[]);
    let long = |i: u32| format!("{i:06}-{}", "h".repeat(100 + (i % 40) as usize));
    let n = 9000u32;
    {
        let m = LoopMount::new(&img, false).unwrap();
        let d = m.path().join("big");
        std::fs::create_dir(&d).unwrap();
        std::fs::create_dir(m.path().join("other")).unwrap();
        for i in 0..n {
            std::fs::write(d.join(long(i)), b"").unwrap();
        }
        m.unmount().unwrap();
    }
    let fs = open_rw(&img);
    let big = fs.resolve(b"/big", true).unwrap();
    let other = fs.resolve(b"/other", true).unwrap();
    let root_block = fs.map_block(big, 0, 1).unwrap().pblk;
    assert_eq!(
        fs.read_block(root_block).unwrap()[30],
        1,
        "the kernel made a two-level htree"
    );
    let mut model: BTreeSet<String> = (0..n).map(long).collect();
    let mut moved: BTreeSet<String> = BTreeSet::new();
    let attrs = NewInode::with_time(0o644, ts(1_700_000_000, 0));
    for i in 0..n {
        match i % 3 {
            0 => {
                fs.unlink(big, long(i).as_bytes()).unwrap();
                model.remove(&long(i));
            }
            1 if i % 9 == 1 => {
                let to = format!("r{}", long(i));
                fs.rename(big, long(i).as_bytes(), big, to.as_bytes())
                    .unwrap();
                model.remove(&long(i));
                model.insert(to);
            }
            1 if i % 9 == 4 => {
                fs.rename(big, long(i).as_bytes(), other, long(i).as_bytes())
                    .unwrap();
                model.remove(&long(i));
                moved.insert(long(i));
            }
            _ => {}
        }
    }
    for i in n..n + 6000 {
        fs.create(big, long(i).as_bytes(), &NewKind::Regular, &attrs)
            .unwrap();
        model.insert(long(i));
    }
    fs.sync().unwrap();
    drop(fs);
    assert_e2fsck_clean(&img);
    let m = LoopMount::new(&img, true).unwrap();
    let got: BTreeSet<String> = std::fs::read_dir(m.path().join("big"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        got == model,
        "htree names differ: {} vs {}",
        got.len(),
        model.len()
    );
    let got: BTreeSet<String> = std::fs::read_dir(m.path().join("other"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(got == moved);
    // Kernel lookups through the index find every name.
    for name in model.iter().step_by(97) {
        assert!(
            m.path().join("big").join(name).exists(),
            "kernel lookup of {name}"
        );
    }
    m.unmount().unwrap();
}

#[test]
fn directory_operations_refuse_what_rename2_and_rmdir2_refuse() {
    // Our own mkfs on a memory device: no outside tools needed.
    let dev: Arc<dyn BlockDevice> = Arc::new(ext4kit_blockdev::MemDevice::new(1024, 16 << 10));
    ext4kit_fs::mkfs::mkfs(
        &*dev,
        &ext4kit_fs::mkfs::MkfsOptions {
            block_size: Some(1024),
            size_bytes: 16 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let fs = Fs::open(
        Arc::clone(&dev),
        &OpenOptions {
            writable: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let a = NewInode::with_time(0o755, ts(1_700_000_000, 0));
    let d = fs.create(ROOT_INO, b"d", &NewKind::Directory, &a).unwrap();
    let sub = fs.create(d, b"sub", &NewKind::Directory, &a).unwrap();
    let deep = fs.create(sub, b"deeper", &NewKind::Directory, &a).unwrap();
    let f = fs.create(d, b"f", &NewKind::Regular, &a).unwrap();
    fs.link(f, ROOT_INO, b"f-link").unwrap();
    let e = fs
        .create(ROOT_INO, b"empty", &NewKind::Directory, &a)
        .unwrap();
    let errno = |r: Result<(), Error>| r.unwrap_err().errno();
    assert_eq!(
        errno(fs.rmdir(ROOT_INO, b"d")),
        39,
        "rmdir of a non-empty directory: ENOTEMPTY"
    );
    assert_eq!(errno(fs.rmdir(d, b"f")), 20, "rmdir of a file: ENOTDIR");
    assert_eq!(
        errno(fs.unlink(ROOT_INO, b"d")),
        21,
        "unlink of a directory: EISDIR"
    );
    assert_eq!(errno(fs.unlink(ROOT_INO, b"missing")), 2);
    assert_eq!(errno(fs.unlink(ROOT_INO, b".")), 22);
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"d", sub, b"x")),
        22,
        "into its own subtree: EINVAL"
    );
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"d", deep, b"x")),
        22,
        "into its own subtree: EINVAL"
    );
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"d", d, b"x")),
        22,
        "into itself: EINVAL"
    );
    assert_eq!(
        errno(fs.rename(d, b"f", ROOT_INO, b"empty")),
        21,
        "file over a directory: EISDIR"
    );
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"empty", d, b"f")),
        20,
        "directory over a file: ENOTDIR"
    );
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"empty", ROOT_INO, b"d")),
        39,
        "over a non-empty directory: ENOTEMPTY"
    );
    // Two names of one inode: nothing happens, both stay.
    fs.rename(d, b"f", ROOT_INO, b"f-link").unwrap();
    assert_eq!(fs.lookup(d, b"f").unwrap().unwrap().ino, f);
    assert_eq!(fs.stat(f).unwrap().nlink, 2);
    // A directory replaces an empty one; link counts follow.
    let root_links = fs.stat(ROOT_INO).unwrap().nlink;
    fs.rename(d, b"sub", ROOT_INO, b"empty").unwrap();
    assert_eq!(
        fs.stat(ROOT_INO).unwrap().nlink,
        root_links,
        "root lost the replaced dir and gained the moved one"
    );
    assert_eq!(fs.stat(d).unwrap().nlink, 2);
    assert_eq!(fs.lookup(sub, b"..").unwrap().unwrap().ino, ROOT_INO);
    assert!(
        fs.stat(e).is_err() || fs.stat(e).unwrap().nlink == 0,
        "the replaced directory is freed"
    );
    fs.sync().unwrap();
    let ro = Fs::open(dev, &OpenOptions::default()).unwrap();
    assert_eq!(ro.resolve(b"/empty/deeper", true).unwrap(), deep);
    assert!(matches!(
        ro.resolve(b"/d/sub", true),
        Err(Error::NotFound { .. })
    ));
    // Read-only images refuse.
    assert_eq!(errno(ro.unlink(ROOT_INO, b"f-link")), 30);
}

#[test]
fn unlinked_open_files_are_orphans_until_closed_and_left_orphans_are_cleaned_at_open() {
    if !require_kernel(
        "unlinked_open_files_are_orphans_until_closed_and_left_orphans_are_cleaned_at_open",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = kernel_image(dir.path(), "o.img", 4096, 64, None, &[]);
    let fs = open_rw(&img);
    let free0 = fs.superblock().free_blocks_count();
    let a = NewInode::with_time(0o644, ts(1_700_000_000, 0));
    let keep = fs.create(ROOT_INO, b"keep", &NewKind::Regular, &a).unwrap();
    fs.write_at(keep, 0, &pattern(1, 100_000)).unwrap();
    let ino = fs
        .create(ROOT_INO, b"open-file", &NewKind::Regular, &a)
        .unwrap();
    fs.write_at(ino, 0, &pattern(2, 3 << 20)).unwrap();
    fs.sync().unwrap();
    let held = fs.data_mapping(ino).unwrap();
    fs.unlink(ROOT_INO, b"open-file").unwrap();
    assert_eq!(fs.orphans(), vec![ino]);
    // Still readable and writable through the held page cache.
    let mut buf = vec![0u8; 4096];
    held.read(4096, &mut buf).unwrap();
    assert_eq!(buf, pattern(2, 8192)[4096..]);
    held.write(0, b"still writable").unwrap();
    fs.sync().unwrap();
    assert_eq!(fs.orphans(), vec![ino], "held: not freed at sync");
    // The synced image carries the orphan list: a copy of it now is an image "left with
    // orphans" (as after a crash).
    let left = dir.path().join("left.img");
    std::fs::copy(&img, &left).unwrap();
    {
        let ro = Fs::open_path(&left, &OpenOptions::default()).unwrap();
        assert_eq!(ro.superblock().last_orphan(), ino);
        assert_eq!(ro.inode(ino).unwrap().links_count(), 0);
    }
    fs.close_file(held).unwrap();
    assert!(fs.orphans().is_empty(), "freed at close");
    fs.sync().unwrap();
    drop(fs);
    assert_e2fsck_clean(&img);
    let ro = Fs::open_path(&img, &OpenOptions::default()).unwrap();
    assert_eq!(ro.superblock().last_orphan(), 0);
    assert_eq!(
        ro.superblock().free_blocks_count() + 100_000u64.div_ceil(4096),
        free0,
        "only `keep` holds blocks"
    );
    drop(ro);
    // The kernel cleans our orphan list as it cleans its own ...
    let k = dir.path().join("left-kernel.img");
    std::fs::copy(&left, &k).unwrap();
    LoopMount::new(&k, false).unwrap().unmount().unwrap();
    assert_e2fsck_clean(&k);
    // ... and so does a writable open of ours.
    let fs = open_rw(&left);
    assert!(
        fs.notices().iter().any(|n| n.contains("orphan")),
        "{:?}",
        fs.notices()
    );
    fs.sync().unwrap();
    drop(fs);
    assert_e2fsck_clean(&left);
    let m = LoopMount::new(&left, true).unwrap();
    assert_eq!(
        std::fs::read(m.path().join("keep")).unwrap(),
        pattern(1, 100_000)
    );
    m.unmount().unwrap();
}

/// An image the kernel left with an unlinked-but-open file (frozen while the file was open),
/// with or without the orphan file.
fn kernel_orphan_image(dir: &Path, name: &str, orphan_file: bool) -> (std::path::PathBuf, Vec<u8>) {
    let extra: &[&str] = if orphan_file {
        &["-O", "orphan_file"]
    } else {
        &["-O", "^orphan_file"]
    };
    let img = kernel_image(dir, &format!("{name}.src"), 1024, 64, None, extra);
    let copy = dir.join(name);
    let m = LoopMount::new(&img, false).unwrap();
    let keep = pattern(77, 200_000);
    std::fs::write(m.path().join("keep"), &keep).unwrap();
    let held: Vec<std::fs::File> = (0..3)
        .map(|i| {
            let p = m.path().join(format!("gone-{i}"));
            std::fs::write(&p, pattern(i, 300_000)).unwrap();
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .unwrap();
            std::fs::remove_file(&p).unwrap();
            f
        })
        .collect();
    run_ok("sync", &[]);
    run_ok("fsfreeze", &["-f", m.path().to_str().unwrap()]);
    std::fs::copy(&img, &copy).unwrap();
    run_ok("fsfreeze", &["-u", m.path().to_str().unwrap()]);
    drop(held);
    m.unmount().unwrap();
    (copy, keep)
}

#[test]
fn orphans_the_kernel_left_are_cleaned_at_writable_open_with_and_without_orphan_file() {
    if !require_kernel(
        "orphans_the_kernel_left_are_cleaned_at_writable_open_with_and_without_orphan_file",
    ) {
        return;
    }
    for orphan_file in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (img, keep) = kernel_orphan_image(dir.path(), "left.img", orphan_file);
        {
            let ro = Fs::open_path(&img, &OpenOptions::default()).unwrap();
            let sb = ro.superblock();
            let present = sb.has_ro_compat(ext4kit_fs::format::RoCompatFeatures::ORPHAN_PRESENT);
            assert!(
                sb.last_orphan() != 0 || present,
                "orphan_file={orphan_file}: the frozen image has no orphans (last_orphan 0, orphan_present {present})"
            );
            assert!(
                !sb.has_incompat(ext4kit_fs::format::IncompatFeatures::RECOVER),
                "a frozen image needs no recovery"
            );
        }
        let (code, text) = run("e2fsck", &[std::ffi::OsStr::new("-fn"), img.as_os_str()]);
        eprintln!("orphan_file={orphan_file}: e2fsck -fn before cleaning exits {code}:\n{text}");
        let fs = open_rw(&img);
        assert!(
            fs.notices().iter().any(|n| n.contains("3 orphan")),
            "orphan_file={orphan_file}: {:?}",
            fs.notices()
        );
        fs.sync().unwrap();
        drop(fs);
        if let Err(e) = e2fsck_clean(&img) {
            panic!("orphan_file={orphan_file}: {e}");
        }
        let m = LoopMount::new(&img, true).unwrap();
        assert_eq!(std::fs::read(m.path().join("keep")).unwrap(), keep);
        assert_eq!(
            std::fs::read_dir(m.path()).unwrap().count(),
            2,
            "keep and lost+found"
        );
        m.unmount().unwrap();
    }
}

#[test]
fn a_failed_metadata_write_is_an_error_and_e2fsck_repairs_the_image_keeping_unrelated_files() {
    if !require_kernel(
        "a_failed_metadata_write_is_an_error_and_e2fsck_repairs_the_image_keeping_unrelated_files",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = new_tree(&dir.path().join("src"), 11, &TreeOptions::sized(400, 6));
    let base = kernel_image(dir.path(), "base.img", 1024, 64, Some(&src), &[]);
    let unrelated = |root: &Path| -> BTreeMap<Vec<u8>, ext4kit_testkit::Entry> {
        snapshot(root)
            .into_iter()
            .filter(|(p, _)| {
                p.starts_with(b"files") || p.starts_with(b"hardlinks") || p.starts_with(b"xattrs")
            })
            .collect()
    };
    let want = unrelated(&src);
    // A dry run counts the writes a sync makes (data first, then metadata).
    let dry = dir.path().join("dry.img");
    std::fs::copy(&base, &dry).unwrap();
    let (r, fault) = change_under_faults(&dry, None);
    r.unwrap();
    let log = fault.log();
    let writes = log.iter().filter(|r| r.op == BioOp::Write).count() as u64;
    // The sync writes file data first, then (after reading what it must merge) the metadata;
    // how many metadata requests it makes varies a little from run to run (inode table blocks
    // merge differently), the data requests do not.
    let data_writes = log.iter().take_while(|r| r.op == BioOp::Write).count() as u64;
    assert!(
        data_writes >= 100 && writes > data_writes + 8,
        "{data_writes} data writes of {writes}"
    );
    eprintln!(
        "a sync of the changes makes {writes} write requests ({data_writes} of data); failing 16 of them one at a time"
    );
    assert_e2fsck_clean(&dry);
    let mut picks: Vec<u64> = vec![0, 1, data_writes / 3, data_writes - 1];
    picks.extend((0..12).map(|k| data_writes + k));
    let (mut repaired, mut metadata_failures) = (0, 0);
    for n in picks {
        let img = dir.path().join(format!("f{n}.img"));
        std::fs::copy(&base, &img).unwrap();
        let (r, fault) = change_under_faults(&img, Some(n));
        if fault.nr_failed() == 0 {
            // This run made fewer metadata requests than the pick: nothing failed.
            assert!(n > data_writes && r.is_ok(), "write {n} of {writes}: {r:?}");
            continue;
        }
        assert_eq!(fault.nr_failed(), 1, "write {n} of {writes}");
        let e = r.expect_err("sync succeeded although a write failed");
        assert!(
            e.errno() == 5 || e.to_string().contains("I/O") || e.to_string().contains("njected"),
            "write {n}: {e}"
        );
        let (code, text) = run("e2fsck", &[std::ffi::OsStr::new("-fy"), img.as_os_str()]);
        assert!(
            code <= 2,
            "write {n}: e2fsck -fy could not repair (exit {code}):\n{text}"
        );
        if n < data_writes {
            // A failed data write stops the sync before any metadata: nothing to repair.
            assert_eq!(code, 0, "write {n} (data) left damage:\n{text}");
        } else {
            metadata_failures += 1;
            repaired += usize::from(code != 0);
        }
        assert_e2fsck_clean(&img);
        let m = LoopMount::new(&img, true).unwrap();
        let got = unrelated(m.path());
        m.unmount().unwrap();
        let d = diff_trees(&want, &got, CMP);
        assert!(
            d.is_empty(),
            "write {n}: unrelated files lost or changed:\n{}",
            d.join("\n")
        );
        std::fs::remove_file(&img).unwrap();
    }
    // Failed metadata writes leave something for e2fsck to repair (some blocks, such as an
    // inode table block holding only freed inodes, matter to nobody when lost).
    assert!(
        metadata_failures >= 8,
        "only {metadata_failures} metadata writes failed"
    );
    assert!(
        repaired * 2 >= metadata_failures,
        "only {repaired} of {metadata_failures} failed metadata writes needed a repair"
    );
    eprintln!(
        "{repaired} of {metadata_failures} failed metadata writes needed e2fsck -fy to repair"
    );
}

/// Opens `img` through a fault device, deletes half of /bigdir, adds 200 files with data,
/// moves /deep/level00 to /moved, removes /sparse, and syncs with write `fail_at` (counted from
/// the sync on) failing.
fn change_under_faults(img: &Path, fail_at: Option<u64>) -> (Result<(), Error>, FaultDevice) {
    let inner: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(img, true, 1024).unwrap());
    let fault = FaultDevice::new(inner);
    let dev: Arc<dyn BlockDevice> = Arc::new(fault.clone());
    // The in-place write path (images without a journal, builds): failures there are what
    // e2fsck repairs. Through the journal a failed sync needs no repair (journal_write.rs).
    let fs = Fs::open(
        dev,
        &OpenOptions {
            writable: true,
            background_writeback: false,
            use_journal: false,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let a = NewInode::with_time(0o644, ts(1_700_000_000, 0));
    let big = fs.resolve(b"/bigdir", true).unwrap();
    let names: Vec<Vec<u8>> = fs
        .read_dir(big)
        .unwrap()
        .into_iter()
        .filter(|e| !e.is_dot_or_dotdot())
        .map(|e| e.name)
        .collect();
    for name in names.iter().step_by(2) {
        fs.unlink(big, name).unwrap();
    }
    for i in 0..200u32 {
        let ino = fs
            .create(big, format!("added-{i}").as_bytes(), &NewKind::Regular, &a)
            .unwrap();
        fs.write_at(ino, 0, &pattern(u64::from(i), 5000)).unwrap();
    }
    let deep = fs.resolve(b"/deep", true).unwrap();
    fs.rename(deep, b"level00", ROOT_INO, b"moved").unwrap();
    common::remove_tree(&fs, ROOT_INO, b"sparse");
    fault.clear_log();
    if let Some(n) = fail_at {
        fault.add_rule(FaultRule::Nth {
            op: Some(BioOp::Write),
            n,
        });
    }
    let r = fs.sync();
    drop(fs);
    (r, fault)
}

#[test]
fn xattr_blocks_the_kernel_shares_between_inodes_are_reference_counted() {
    if !require_kernel("xattr_blocks_the_kernel_shares_between_inodes_are_reference_counted") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    // Identical attribute sets too large for the inode: the kernel's mbcache gives all four
    // files one xattr block (h_refcount 4).
    let value = pattern(5, 600);
    for n in ["a", "b", "c", "d"] {
        let p = host.join(n);
        std::fs::write(&p, n).unwrap();
        rustix::fs::setxattr(&p, "user.shared", &value, rustix::fs::XattrFlags::empty()).unwrap();
    }
    let img = kernel_image(dir.path(), "x.img", 4096, 32, None, &[]);
    {
        let m = LoopMount::new(&img, false).unwrap();
        run_ok(
            "cp",
            &[
                "-a",
                &format!("{}/.", host.display()),
                m.path().to_str().unwrap(),
            ],
        );
        m.unmount().unwrap();
    }
    let t = Twin {
        host: host.clone(),
        fs: open_rw(&img),
    };
    let acl = |n: &str| t.fs.inode(t.ino(n)).unwrap().file_acl();
    assert!(
        acl("a") != 0 && acl("a") == acl("b") && acl("b") == acl("d"),
        "the kernel shared one block"
    );
    let shared = acl("a");
    t.unlink("a");
    t.set_xattr("b", "user.shared", &pattern(6, 700));
    assert_ne!(acl("b"), shared, "a changed set gets a block of its own");
    t.remove_xattr("c", "user.shared");
    assert_eq!(acl("c"), 0);
    assert_eq!(acl("d"), shared);
    t.fs.sync().unwrap();
    drop(t);
    assert_e2fsck_clean(&img);
    assert_kernel_view(&img, &host, "shared xattr blocks");
    // The last user lets go: the block is freed.
    let t = Twin {
        host: host.clone(),
        fs: open_rw(&img),
    };
    t.unlink("d");
    t.fs.sync().unwrap();
    drop(t);
    assert_e2fsck_clean(&img);
    assert_kernel_view(&img, &host, "shared xattr block freed");
}
