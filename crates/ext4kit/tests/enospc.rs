//! `cp` into an image that runs out of space or inodes: the one rule (`cp --help` says it) —
//! what was copied completely stays, the file being copied is removed, nothing else is
//! touched — and the error names the file, what it needs and what is free. The kernel's view
//! of the image after the failed command is the oracle, with a strict `e2fsck -fn`.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Output;

use ext4kit_testkit::{
    LoopMount, assert_e2fsck_clean, dumpe2fs_header, ext4kit_cli, mke2fs_d, path_str as s, pattern,
    require_kernel,
};

fn ext4kit(args: &[&str], stdin: Option<&[u8]>) -> Output {
    ext4kit_cli!().output_in(None, args, stdin)
}

/// Runs a command that must fail with exactly one `ext4kit: ...` line; returns it.
fn fails(args: &[&str], stdin: Option<&[u8]>) -> String {
    ext4kit_cli!().failure_line(&ext4kit(args, stdin), args)
}

/// Sets the mtime of `p` to `secs` (mke2fs -d keeps whole seconds) so an untouched file is
/// recognisable.
fn set_mtime(p: &Path, secs: i64) {
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &t,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// An image of `size` bytes at block size `bs` holding /keep/old1 and /keep/old2 (with known
/// contents and mtimes), as mke2fs -d makes it.
fn image_with_old_files(dir: &Path, bs: u32, size: u64, extra: &[&str]) -> std::path::PathBuf {
    let tree = dir.join(format!("old-{bs}"));
    fs::create_dir_all(tree.join("keep")).unwrap();
    for (i, len) in [(1u64, 5000usize), (2, 70_000)] {
        let p = tree.join(format!("keep/old{i}"));
        fs::write(&p, pattern(100 + i, len)).unwrap();
        set_mtime(&p, 1_500_000_000 + i as i64);
    }
    let img = dir.join(format!("img-{bs}.img"));
    mke2fs_d(&tree, &img, "ext4", bs, size, extra);
    img
}

/// The pre-existing files as the kernel shows them: unchanged, bytes and mtime.
fn assert_old_files_untouched(mnt: &Path) {
    for (i, len) in [(1u64, 5000usize), (2, 70_000)] {
        let p = mnt.join(format!("keep/old{i}"));
        assert_eq!(
            fs::read(&p).unwrap(),
            pattern(100 + i, len),
            "{}",
            p.display()
        );
        let m = fs::symlink_metadata(&p).unwrap();
        assert_eq!(
            (m.mtime(), m.mtime_nsec()),
            (1_500_000_000 + i as i64, 0),
            "{}: mtime",
            p.display()
        );
    }
}

/// Copies a tree of 1 MiB files that cannot all fit: the first ones (in name order) arrive
/// whole, the one that did not fit is absent, the rest are not attempted, and the files that
/// were there before are as they were.
fn tree_into_a_small_image(bs: u32) {
    let dir = tempfile::tempdir().unwrap();
    let size = 8u64 << 20;
    let img = image_with_old_files(dir.path(), bs, size, &[]);
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let n = 12;
    for i in 0..n {
        fs::write(src.join(format!("f{i:02}")), pattern(i, 1 << 20)).unwrap();
    }
    let err = fails(
        &[
            "cp",
            "-r",
            &format!("{}/.", s(&src)),
            &format!("{}:/", s(&img)),
        ],
        None,
    );
    // The file the copy stopped at, from the error line.
    let shown = format!("{}:/", s(&img));
    let rest = err
        .strip_prefix(&format!("ext4kit: {shown}"))
        .unwrap_or_else(|| panic!("{err:?}"));
    let (failed, why) = rest.split_once(": ").unwrap();
    assert!(
        why.starts_with("no space left on device: the file needs 1.0 MiB, ")
            && why.contains(" free"),
        "{err:?}"
    );
    let stopped: u64 = failed.strip_prefix('f').unwrap().parse().unwrap();
    assert!(stopped >= 1 && stopped < n, "{err:?}");
    assert_e2fsck_clean(&img);
    let m = LoopMount::new(&img, true).unwrap();
    for i in 0..n {
        let p = m.path().join(format!("f{i:02}"));
        if i < stopped {
            assert_eq!(
                fs::read(&p).unwrap(),
                pattern(i, 1 << 20),
                "{}",
                p.display()
            );
        } else {
            assert!(!p.exists(), "{}: should not be there", p.display());
        }
    }
    assert_old_files_untouched(m.path());
}

#[test]
fn a_tree_that_does_not_fit_keeps_the_files_copied_whole_and_nothing_else_1k() {
    if !require_kernel("ENOSPC tree 1k") {
        return;
    }
    tree_into_a_small_image(1024);
}

#[test]
fn a_tree_that_does_not_fit_keeps_the_files_copied_whole_and_nothing_else_4k() {
    if !require_kernel("ENOSPC tree 4k") {
        return;
    }
    tree_into_a_small_image(4096);
}

/// Out of inodes: the files that got one stay, the error says what ran out.
#[test]
fn running_out_of_inodes_keeps_the_files_copied_and_says_so() {
    if !require_kernel("ENOSPC inodes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 16 inodes per group, one group: 11 reserved, root's lost+found, keep/ and two old files.
    let img = image_with_old_files(dir.path(), 4096, 16 << 20, &["-N", "16"]);
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    for i in 0..20u64 {
        fs::write(src.join(format!("s{i:02}")), pattern(i, 3000)).unwrap();
    }
    let free_inodes = dumpe2fs_header(&img)["Free inodes"].parse::<u64>().unwrap();
    assert!(free_inodes > 0 && free_inodes < 20, "{free_inodes}");
    let err = fails(
        &[
            "cp",
            "-r",
            &format!("{}/.", s(&src)),
            &format!("{}:/", s(&img)),
        ],
        None,
    );
    let want = format!(
        "ext4kit: {}:/s{free_inodes:02}: no space left on device: no free inodes",
        s(&img)
    );
    assert!(err.starts_with(&want), "{err:?} (want {want:?})");
    assert_e2fsck_clean(&img);
    let m = LoopMount::new(&img, true).unwrap();
    for i in 0..20u64 {
        let p = m.path().join(format!("s{i:02}"));
        if i < free_inodes {
            assert_eq!(fs::read(&p).unwrap(), pattern(i, 3000), "{}", p.display());
        } else {
            assert!(!p.exists(), "{}", p.display());
        }
    }
    assert_old_files_untouched(m.path());
}

/// Overwriting a file with one that does not fit: refused before the old one is truncated;
/// the image is byte-identical afterwards.
#[test]
fn an_overwrite_that_cannot_fit_leaves_the_old_file_and_the_image_as_they_were() {
    if !require_kernel("ENOSPC overwrite") {
        return;
    }
    for bs in [1024u32, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let img = image_with_old_files(dir.path(), bs, 8 << 20, &[]);
        let big = dir.path().join("big");
        fs::write(&big, pattern(7, 16 << 20)).unwrap();
        let before = fs::read(&img).unwrap();
        let err = fails(&["cp", s(&big), &format!("{}:/keep/old2", s(&img))], None);
        let want = format!(
            "ext4kit: {}:/keep/old2: no space left on device: the file needs 16.0 MiB, ",
            s(&img)
        );
        assert!(err.starts_with(&want), "{err:?}");
        assert!(fs::read(&img).unwrap() == before, "{bs}: the image changed");
        // Standard input gives no size up front: the overwrite fails part-way, and then
        // nothing of the command is written.
        let err = fails(
            &["cp", "-", &format!("{}:/keep/old2", s(&img))],
            Some(&pattern(8, 16 << 20)),
        );
        assert!(
            err.contains("/keep/old2: no space left on device")
                && err.contains("nothing of this command is written"),
            "{err:?}"
        );
        assert!(
            fs::read(&img).unwrap() == before,
            "{bs}: stdin: the image changed"
        );
        assert_e2fsck_clean(&img);
        let m = LoopMount::new(&img, true).unwrap();
        assert_old_files_untouched(m.path());
    }
}

/// A new file from standard input that does not fit is removed; what the same command did
/// before stays (here: the directory it was to go in, made by an earlier command, and the
/// old files).
#[test]
fn a_stream_that_does_not_fit_is_removed_and_the_image_stays_clean() {
    if !require_kernel("ENOSPC stdin") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image_with_old_files(dir.path(), 4096, 8 << 20, &[]);
    let before_free = dumpe2fs_header(&img)["Free blocks"].parse::<u64>().unwrap();
    let err = fails(
        &["cp", "-", &format!("{}:/stream", s(&img))],
        Some(&pattern(9, 12 << 20)),
    );
    assert!(
        err.starts_with(&format!(
            "ext4kit: {}:/stream: no space left on device: the file needs ",
            s(&img)
        )) && err.contains("not copied"),
        "{err:?}"
    );
    assert_e2fsck_clean(&img);
    let after_free: u64 = dumpe2fs_header(&img)["Free blocks"].parse().unwrap();
    assert_eq!(
        after_free, before_free,
        "the partial copy's blocks came back"
    );
    let m = LoopMount::new(&img, true).unwrap();
    assert!(!m.path().join("stream").exists());
    assert_old_files_untouched(m.path());
}

/// The rule is written where users look for it.
#[test]
fn cp_help_states_the_enospc_rule() {
    let o = ext4kit(&["cp", "--help"], None);
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(
        help.contains("Out of space") && help.contains("removed"),
        "{help}"
    );
}
