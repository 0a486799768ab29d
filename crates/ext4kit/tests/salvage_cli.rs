//! Damaged images (issue 9, item 15): reading commands get out what can be got out, with one
//! warning per damaged structure, and writing commands refuse the image and leave it
//! byte-identical.
//!
//! Fixtures: `mke2fs -d` of a small tree at 1 KiB and 4 KiB blocks, then damaged with
//! `debugfs -w` (`set_bg N checksum`, `set_super_value free_blocks_count/free_inodes_count`),
//! `dd` (zeroing the primary superblock, an htree root's count) — the oracle for what is
//! there is the source tree and `debugfs rdump`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use ext4kit_testkit::{
    Compare, Mke2fs, debugfs, diff_trees, ext4kit_cli, mke2fs_d, os, require_kernel, run, run_ok,
    snapshot,
};

fn ext4kit(args: &[&OsStr]) -> Output {
    ext4kit_cli!().output(args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A small tree: files, a subdirectory, a symlink; `big` entries in `big/` when asked.
fn make_tree(root: &Path, big: usize) {
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    for i in 0..40 {
        fs::write(
            root.join(format!("f{i}")),
            format!("file {i}\n").repeat(i * 37 + 1),
        )
        .unwrap();
    }
    fs::write(root.join("sub/deeper/data"), vec![7u8; 70_000]).unwrap();
    std::os::unix::fs::symlink("sub/deeper/data", root.join("link")).unwrap();
    if big > 0 {
        fs::create_dir(root.join("big")).unwrap();
        for i in 0..big {
            fs::write(
                root.join(format!("big/entry_with_a_longish_name_{i:05}")),
                format!("{i}\n"),
            )
            .unwrap();
        }
    }
}

fn debugfs_w(img: &Path, req: &str) {
    run_ok("debugfs", &["-w", "-R", req, img.to_str().unwrap()]);
}

/// Copies `IMG:/` out with `cp -r`, expecting success: (the copy's directory, stderr).
fn copy_out(dir: &Path, img: &Path, name: &str, pre: &[&str]) -> (PathBuf, String) {
    let out = dir.join(name);
    let spec = format!("{}:/", img.display());
    let mut args: Vec<&OsStr> = pre.iter().map(os).collect();
    args.extend([os("cp"), os("-r"), os(&spec), out.as_os_str()]);
    let o = ext4kit(&args);
    assert!(o.status.success(), "cp -r {spec} failed: {}", stderr(&o));
    (out, stderr(&o))
}

fn same_tree(want: &Path, got: &Path) {
    let cmp = Compare {
        mtime: false,
        mtime_ns: false,
        dir_mtime: false,
        owner: false,
        xattrs: false,
    };
    let d = diff_trees(&snapshot(want), &snapshot(got), cmp);
    assert!(
        d.is_empty(),
        "{} vs {}: {d:#?}",
        want.display(),
        got.display()
    );
}

/// Number of stderr lines containing `needle`.
fn count(err: &str, needle: &str) -> usize {
    err.lines().filter(|l| l.contains(needle)).count()
}

/// A writing command on a damaged image fails with a line naming the damage and leaves the
/// image byte-identical.
fn write_refused(img: &Path, damage: &str) {
    let before = fs::read(img).unwrap();
    let spec = format!("{}:/newdir", img.display());
    let o = ext4kit(&[os("mkdir"), os(&spec)]);
    assert!(!o.status.success(), "mkdir on a damaged image succeeded");
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(damage),
        "the refusal names the damage ({damage}): {err}"
    );
    assert!(
        err.contains("damaged") && err.contains("e2fsck -fy"),
        "the refusal says what to do: {err}"
    );
    assert!(
        fs::read(img).unwrap() == before,
        "a refused write changed {}",
        img.display()
    );
}

/// Every reading verb works on `img`, printing `warning` exactly once each time.
fn reads_with_warning(img: &Path, warning: &str, pre: &[&str]) {
    let i = img.to_str().unwrap();
    let root = format!("{i}:/");
    let file = format!("{i}:/sub/deeper/data");
    let verbs: [Vec<&str>; 4] = [
        vec!["ls", &root],
        vec!["cat", &file],
        vec!["stat", &file],
        vec!["info", i],
    ];
    for v in verbs {
        let mut args: Vec<&OsStr> = pre.iter().map(os).collect();
        args.extend(v.iter().map(os));
        let o = ext4kit(&args);
        let err = stderr(&o);
        assert!(o.status.success(), "{v:?} on {i}: {err}");
        assert_eq!(
            count(&err, warning),
            1,
            "{v:?}: warning {warning:?} once: {err}"
        );
        if v[0] == "cat" {
            assert_eq!(o.stdout, vec![7u8; 70_000]);
        }
    }
}

#[test]
fn damaged_descriptor_and_counts_are_read_with_a_warning_and_never_written() {
    if !require_kernel("damaged_descriptor_and_counts") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree, 0);
    // 4 KiB blocks need more than one group (32768 blocks) for a group 1.
    for (bs, size) in [(1024u32, 16u64 << 20), (4096, 160 << 20)] {
        let base = dir.path().join(format!("base{bs}.img"));
        mke2fs_d(&tree, &base, "ext4", bs, size, &[]);
        let cases: [(&str, String, &str); 5] = [
            (
                "gd",
                "set_bg 1 checksum 0x1234".into(),
                "group 1 descriptor: checksum mismatch",
            ),
            (
                "fb",
                format!(
                    "set_super_value free_blocks_count {}",
                    size / u64::from(bs) + 5
                ),
                "free blocks count",
            ),
            (
                "fi",
                "set_super_value free_inodes_count 999999".into(),
                "free inodes count",
            ),
            (
                "gd-nocsum",
                "set_bg 1 checksum 0x1234".into(),
                "group 1 descriptor: checksum mismatch",
            ),
            // A descriptor that cannot be used: e2fsck reads the backup descriptors instead.
            (
                "gd-table",
                "set_bg 1 inode_table 99999999".into(),
                "(reading the backup superblock and descriptors at block",
            ),
        ];
        for (name, req, warning) in cases {
            let img = dir.path().join(format!("{name}{bs}.img"));
            if name == "gd-nocsum" {
                mke2fs_d(
                    &tree,
                    &img,
                    "ext4",
                    bs,
                    size,
                    &["-O", "^metadata_csum,uninit_bg"],
                );
            } else {
                fs::copy(&base, &img).unwrap();
            }
            debugfs_w(&img, &req);
            // The damage is what e2fsck calls damage (it still exits 0 for these).
            let (_, fsck) = run("e2fsck", &[os("-fn"), img.as_os_str()]);
            assert!(
                fsck.contains("checksum")
                    || fsck.contains("count wrong")
                    || fsck.contains("Fix? no")
                    || fsck.contains("trying backup blocks"),
                "{name}: e2fsck sees no damage: {fsck}"
            );
            reads_with_warning(&img, warning, &[]);
            let (out, err) = copy_out(dir.path(), &img, &format!("out-{name}{bs}"), &[]);
            assert_eq!(count(&err, warning), 1, "{name}: {err}");
            same_tree(&tree, &out);
            let damage = match name {
                "gd-table" => "group descriptor",
                n if n.starts_with("gd") => "checksum mismatch",
                _ => warning,
            };
            write_refused(&img, damage);
        }
    }
}

#[test]
fn unusable_primary_superblock_falls_back_to_group_1_backup_and_b_names_one() {
    if !require_kernel("unusable_primary_superblock") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree, 0);
    for (bs, size, backup) in [(1024u32, 16u64 << 20, 8193u64), (4096, 160 << 20, 32768)] {
        let img = dir.path().join(format!("sb{bs}.img"));
        mke2fs_d(&tree, &img, "ext4", bs, size, &[]);
        // -b on an undamaged image reads through that backup (e2fsck -b), without a warning
        // about the primary.
        let b = backup.to_string();
        let (out, err) = copy_out(dir.path(), &img, &format!("b{bs}"), &["-b", &b]);
        assert!(!err.contains("primary superblock"), "{err}");
        same_tree(&tree, &out);
        let (out, _) = copy_out(
            dir.path(),
            &img,
            &format!("superblock{bs}"),
            &["--superblock", &b],
        );
        same_tree(&tree, &out);
        // --superblock is global: after the command too.
        let o = ext4kit(&[os("ls"), os("--superblock"), os(&b), img.as_os_str()]);
        assert!(o.status.success(), "{}", stderr(&o));
        // A block that holds no superblock for any block size: a one-line error.
        let o = ext4kit(&[os("-b"), os("12345"), os("ls"), img.as_os_str()]);
        assert!(!o.status.success());
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
        assert!(stderr(&o).contains("block 12345"), "{}", stderr(&o));

        // Zero the primary superblock: e2fsck falls back to a backup, so do we.
        let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&[0u8; 1024], 1024).unwrap();
        drop(f);
        let (_, fsck) = run("e2fsck", &[os("-fn"), img.as_os_str()]);
        assert!(fsck.contains("trying backup blocks"), "{fsck}");
        let warning = format!("reading the backup superblock at block {backup}, block size {bs}");
        reads_with_warning(&img, &warning, &[]);
        let (out, err) = copy_out(dir.path(), &img, &format!("fallback{bs}"), &[]);
        assert_eq!(count(&err, &warning), 1, "{err}");
        same_tree(&tree, &out);
        write_refused(&img, "superblock");
        // -b on the damaged image: the backup, no warning about the primary.
        let (out, err) = copy_out(dir.path(), &img, &format!("b-damaged{bs}"), &["-b", &b]);
        assert!(!err.contains("primary superblock"), "{err}");
        same_tree(&tree, &out);
        // -b is for reading only.
        let spec = format!("{}:/x", img.display());
        let before = fs::read(&img).unwrap();
        let o = ext4kit(&[os("-b"), os(&b), os("mkdir"), os(&spec)]);
        assert!(!o.status.success());
        assert!(fs::read(&img).unwrap() == before);
    }
}

/// Sets the `count` of the dx root of directory `path` (the u16 at byte 34 of its block 0) to
/// more than its limit.
fn break_htree_root(img: &Path, path: &str) {
    let (_, out) = run(
        "debugfs",
        &[os("-R"), os(&format!("bmap {path} 0")), img.as_os_str()],
    );
    let block: u64 = out
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next()
        .unwrap_or_else(|| panic!("bmap: {out}"));
    let (_, stat) = run("dumpe2fs", &[os("-h"), img.as_os_str()]);
    let bs: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap();
    let f = fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(&0x7fffu16.to_le_bytes(), block * bs + 34)
        .unwrap();
}

#[test]
fn bad_htree_index_reads_the_directory_block_by_block() {
    if !require_kernel("bad_htree_index") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree, 2000);
    for (bs, size, features) in [
        (1024u32, 16u64 << 20, "^metadata_csum"),
        (4096, 64 << 20, "metadata_csum"),
    ] {
        let img = dir.path().join(format!("htree{bs}.img"));
        mke2fs_d(&tree, &img, "ext4", bs, size, &["-O", features]);
        // mke2fs -d writes linear directories; e2fsck -D indexes them.
        let _ = run("e2fsck", &[os("-fyD"), img.as_os_str()]);
        let (_, dump) = run(
            "debugfs",
            &[os("-R"), os("htree_dump /big"), img.as_os_str()],
        );
        assert!(
            dump.contains("Root node dump"),
            "/big is not indexed: {dump}"
        );
        break_htree_root(&img, "/big");
        let (_, fsck) = run("e2fsck", &[os("-fn"), img.as_os_str()]);
        assert!(
            fsck.contains("HTREE"),
            "e2fsck sees no htree damage: {fsck}"
        );

        let warning = "directory inode";
        let (out, err) = copy_out(dir.path(), &img, &format!("out{bs}"), &[]);
        assert_eq!(
            count(&err, warning),
            1,
            "one warning for the directory: {err}"
        );
        assert!(err.contains("htree"), "{err}");
        same_tree(&tree, &out);
        if bs == 1024 {
            // debugfs rdump reads the blocks in order too: the same tree.
            let rd = dir.path().join("rdump");
            fs::create_dir(&rd).unwrap();
            debugfs(&img, &format!("rdump /big {}", rd.display()));
            same_tree(&rd.join("big"), &out.join("big"));
        }
        // ls lists all of it, and a name is found without the index.
        let i = img.display();
        let o = ext4kit(&[os("ls"), os(&format!("{i}:/big"))]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2000);
        assert_eq!(count(&stderr(&o), warning), 1, "{}", stderr(&o));
        let o = ext4kit(&[
            os("cat"),
            os(&format!("{i}:/big/entry_with_a_longish_name_01234")),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(o.stdout, b"1234\n");
        let o = ext4kit(&[os("stat"), os(&format!("{i}:/big/.."))]);
        assert!(o.status.success(), "{}", stderr(&o));
        // A write into the damaged directory is refused by the strict reader, image unchanged.
        let before = fs::read(&img).unwrap();
        let o = ext4kit(&[os("mkdir"), os(&format!("{i}:/big/new"))]);
        assert!(
            !o.status.success(),
            "mkdir in a directory with a bad index succeeded"
        );
        assert!(fs::read(&img).unwrap() == before);
    }
}

#[test]
fn copying_the_root_to_a_new_dir_gives_it_the_roots_mode_and_owner() {
    if !require_kernel("root to a new dir") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree, 0);
    let img = dir.path().join("root.img");
    mke2fs_d(&tree, &img, "ext4", 1024, 16 << 20, &[]);
    for req in [
        "sif / mode 040751",
        "sif / uid 1234",
        "sif / gid 5678",
        "sif / mtime 20200102030405",
    ] {
        debugfs_w(&img, req);
    }
    let umask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    rustix::process::umask(umask);
    let umask = umask.bits();
    let spec = format!("{}:/", img.display());
    for preserve in [true, false] {
        let new = dir.path().join(format!("new-{preserve}"));
        let mut args = vec![os("cp"), os("-r")];
        if preserve {
            args.push(os("-p"));
        }
        args.extend([os(&spec), new.as_os_str()]);
        let o = ext4kit(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let m = fs::metadata(&new).unwrap();
        if preserve {
            assert_eq!(m.mode() & 0o7777, 0o751, "cp -r -p: the root's mode");
            assert_eq!(
                (m.uid(), m.gid()),
                (1234, 5678),
                "cp -r -p: the root's owner"
            );
            assert_eq!(m.mtime(), 1_577_934_245, "cp -r -p: the root's mtime");
        } else {
            assert_eq!(
                m.mode() & 0o7777,
                0o751 & !umask,
                "cp -r: the root's mode less the umask"
            );
        }
        same_tree(&tree, &new);
    }
}

#[test]
fn the_orphan_cleanup_notice_follows_the_commit_not_a_failed_command() {
    if !require_kernel("orphan notice") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree, 0);
    let img = dir.path().join("orphan.img");
    mke2fs_d(&tree, &img, "ext4", 1024, 16 << 20, &[]);
    // An unlinked inode left on the orphan list, as a crash with a file open would leave it.
    let data = dir.path().join("data");
    fs::write(&data, b"still open when the writer died\n").unwrap();
    debugfs_w(&img, &format!("write {} orphan", data.display()));
    let (_, st) = run("debugfs", &[os("-R"), os("stat /orphan"), img.as_os_str()]);
    let ino: u32 = st.split_whitespace().nth(1).unwrap().parse().unwrap();
    for req in [
        "unlink /orphan".to_string(),
        format!("sif <{ino}> links_count 0"),
        format!("ssv last_orphan {ino}"),
    ] {
        debugfs_w(&img, &req);
    }
    let notice = "cleaned up 1 orphan inode(s)";
    let before = fs::read(&img).unwrap();
    let o = ext4kit(&[os("mkdir"), os(&format!("{}:/f1", img.display()))]);
    assert!(!o.status.success(), "mkdir of an existing name succeeded");
    assert!(
        !stderr(&o).contains(notice),
        "notice printed for nothing committed: {}",
        stderr(&o)
    );
    assert!(
        fs::read(&img).unwrap() == before,
        "a failed command changed the image"
    );
    let o = ext4kit(&[os("mkdir"), os(&format!("{}:/newdir", img.display()))]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(count(&stderr(&o), notice), 1, "{}", stderr(&o));
    ext4kit_testkit::assert_e2fsck_clean(&img);
}

/// e2fsck -fn's lines beyond the pass lines, the version and the summary.
fn fsck_problems(img: &Path) -> Vec<String> {
    let (_, out) = run("e2fsck", &[os("-fn"), img.as_os_str()]);
    out.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("Pass ")
                && !l.starts_with("e2fsck ")
                && !l.contains(" files (")
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn a_block_claimed_by_the_bad_blocks_inode_is_never_allocated_though_the_bitmap_says_free() {
    if !require_kernel("bad-blocks inode claim") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = Mke2fs::new(dir.path().join("bb.img"))
        .block_size(1024)
        .size(8 << 20)
        .extended("lazy_itable_init=0")
        .run();
    // A free block in the middle of the free space, then claimed by inode 1 only.
    let (_, dump) = run("dumpe2fs", &[img.as_os_str()]);
    let range = dump
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Free blocks: "))
        .find(|r| r.contains('-'))
        .and_then(|r| r.split(',').next())
        .unwrap()
        .to_string();
    let (a, b) = range.split_once('-').unwrap();
    let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
    let claimed = (a + b) / 2;
    for req in [
        format!("sif <1> block[0] {claimed}"),
        "sif <1> size 1024".into(),
        "sif <1> blocks 2".into(),
    ] {
        debugfs_w(&img, &req);
    }
    let original = fsck_problems(&img);
    assert!(
        original.iter().any(|l| l.contains(&format!("+{claimed}"))),
        "{original:?}"
    );
    // Fill the image: nearly all the free space in one file, no zero bytes in it.
    let free: u64 = dump
        .lines()
        .find_map(|l| l.strip_prefix("Free blocks:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let data: Vec<u8> = ext4kit_testkit::pattern(5, ((free - 250) * 1024) as usize)
        .iter()
        .map(|&x| x | 1)
        .collect();
    let src = dir.path().join("big.bin");
    fs::write(&src, &data).unwrap();
    let o = ext4kit(&[
        os("cp"),
        src.as_os_str(),
        os(&format!("{}:/big", img.display())),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut blk = vec![0u8; 1024];
    fs::File::open(&img)
        .unwrap()
        .read_exact_at(&mut blk, claimed * 1024)
        .unwrap();
    assert!(
        blk.iter().all(|&x| x == 0),
        "block {claimed} (the bad-blocks inode's) was written"
    );
    let (_, owner) = run(
        "debugfs",
        &[os("-R"), os(&format!("icheck {claimed}")), img.as_os_str()],
    );
    assert!(
        !owner.contains(&format!("{claimed}\t12")),
        "the new file was given block {claimed}: {owner}"
    );
    let after = fsck_problems(&img);
    let new: Vec<&String> = after.iter().filter(|l| !original.contains(l)).collect();
    assert!(
        new.is_empty(),
        "new e2fsck problems {new:?} (before: {original:?})"
    );
    let o = ext4kit(&[os("cat"), os(&format!("{}:/big", img.display()))]);
    assert!(o.stdout == data, "the copy reads back");
}
