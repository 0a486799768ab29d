//! mkfs and build: a failed command leaves an existing image as it was (as mke2fs does), the
//! mke2fs geometry options give mke2fs's numbers, a fitted build leaves the inode headroom
//! mke2fs's inode_ratio gives, and build's memory stays bounded per directory.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use ext4kit_testkit::{
    LoopMount, Mke2fs, assert_e2fsck_clean, ext4kit_cli, path_str as s, require_kernel, run_ok,
};

/// Runs the CLI: (exit code, stderr).
fn ext4kit(args: &[&str]) -> (i32, String) {
    let (code, _, err) = ext4kit_cli!().run(args);
    (code, err)
}

/// Names in `dir` that look like our temporary files.
fn temps(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("ext4kit-new"))
        .collect()
}

#[test]
fn failed_mkfs_and_build_leave_the_existing_image_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("keep.img");
    let old: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&keep, &old).unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("f"), b"hello").unwrap();
    // A tree that does not fit 9 MiB: the build fails midway.
    let big = dir.path().join("big");
    std::fs::create_dir(&big).unwrap();
    for i in 0..6 {
        std::fs::write(big.join(format!("f{i}")), vec![i as u8 + 1; 2 << 20]).unwrap();
    }
    let k = s(&keep);
    let (t, b) = (s(&tree), s(&big));
    let cases: Vec<Vec<&str>> = vec![
        vec!["mkfs", k, "1K"],
        vec!["mkfs", k, "1Q"],
        vec!["mkfs", "-b", "4096", k, "1M"],
        vec!["mkfs", "-L", "12345678901234567", k, "8M"],
        vec!["mkfs", "-U", "nonsense", k, "8M"],
        vec!["mkfs", "-I", "128", k, "8M"],
        vec!["mkfs", "-m", "51", k, "8M"],
        vec!["mkfs", "-O", "inline_data", k, "8M"],
        vec!["mkfs", "-E", "stride=4", k, "8M"],
        vec!["build", "--size", "1M", t, k],
        vec!["build", "-L", "12345678901234567", t, k],
        vec!["build", "-U", "xyz", t, k],
        vec!["build", "-N", "3", t, k],
        vec!["build", "--size", "9M", b, k],
    ];
    for args in &cases {
        let (code, err) = ext4kit(args);
        assert_ne!(code, 0, "ext4kit {args:?} should fail");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one-line error expected: {err:?}"
        );
        assert!(
            std::fs::read(&keep).unwrap() == old,
            "ext4kit {args:?} changed keep.img ({err})"
        );
        assert!(
            temps(dir.path()).is_empty(),
            "ext4kit {args:?} left {:?}",
            temps(dir.path())
        );
        if args.contains(&"9M") {
            // Out of space at a given size: the size the tree needs is named.
            assert!(
                err.contains("no space left on device")
                    && err.contains("the tree needs an image of about"),
                "{err}"
            );
        }
    }
    // The size cases against mke2fs: it refuses them too, leaving the file as it was.
    for size in ["1K", "1Q"] {
        let r = Mke2fs::new(k).block_size(4096).fs_size(size).try_run();
        assert!(r.is_err(), "mke2fs {size}: {r:?}");
        assert!(
            std::fs::read(&keep).unwrap() == old,
            "mke2fs {size} changed the file"
        );
    }
    // Success replaces the file in place of the old one, keeping its mode.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&keep, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (code, err) = ext4kit(&["build", "-b", "4096", t, k]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::metadata(&keep).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    assert!(temps(dir.path()).is_empty());
    if require_kernel("failed_mkfs_and_build_leave_the_existing_image_byte_identical") {
        assert_e2fsck_clean(&keep);
    }
    // Through a symlink, the file it names is replaced (as mke2fs writes through it).
    let link = dir.path().join("link.img");
    std::os::unix::fs::symlink(&keep, &link).unwrap();
    let (code, err) = ext4kit(&["mkfs", "-b", "4096", s(&link), "16M"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::metadata(&keep).unwrap().len(), 16 << 20);
    assert!(temps(dir.path()).is_empty());
}

/// `dumpe2fs -h` fields that the options decide.
fn counts(img: &Path) -> Vec<String> {
    let out = run_ok("dumpe2fs", &["-h", s(img)]);
    let keys = [
        "Inode count",
        "Block count",
        "Reserved block count",
        "Free blocks",
        "Free inodes",
        "Inodes per group",
        "Inode size",
        "Inode blocks per group",
    ];
    out.lines()
        .filter(|l| keys.iter().any(|k| l.split(':').next() == Some(k)))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn mkfs_geometry_options_give_the_counts_mkfs_ext4_gives() {
    if !require_kernel("mkfs_geometry_options_give_the_counts_mkfs_ext4_gives") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    let cases: &[(&str, &[&str])] = &[
        ("1024", &["-N", "5000"]),
        ("1024", &["-i", "8192"]),
        ("1024", &["-I", "512"]),
        ("4096", &["-I", "1024"]),
        ("1024", &["-m", "1"]),
        ("4096", &["-m", "0", "-i", "65536"]),
        ("4096", &["-N", "100000"]),
        (
            "4096",
            &[
                "-O",
                "^resize_inode,metadata_csum",
                "-E",
                "lazy_itable_init=1",
            ],
        ),
    ];
    for (bs, opts) in cases {
        let _ = std::fs::remove_file(&a);
        let _ = std::fs::remove_file(&b);
        let mut args = vec!["mkfs", "-b", bs];
        args.extend_from_slice(opts);
        args.extend_from_slice(&[s(&a), "64M"]);
        let (code, err) = ext4kit(&args);
        assert_eq!(code, 0, "ext4kit {args:?}: {err}");
        assert_e2fsck_clean(&a);
        Mke2fs::new(&b)
            .features("^resize_inode")
            .block_size(bs.parse().unwrap())
            .extra(opts)
            .fs_size("64M")
            .run();
        assert_eq!(
            counts(&a),
            counts(&b),
            "options {opts:?} at {bs}-byte blocks"
        );
    }
}

/// Number of `size`-byte files the kernel can create in `img` before ENOSPC.
fn files_that_fit(img: &Path, size: usize) -> usize {
    let m = LoopMount::new(img, false).unwrap();
    let d = m.path().join("more");
    std::fs::create_dir(&d).unwrap();
    let data = vec![7u8; size];
    let mut n = 0;
    loop {
        match std::fs::write(d.join(format!("{n}")), &data) {
            Ok(()) => n += 1,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("writing file {n}: {e}"),
        }
    }
    m.unmount().unwrap();
    n
}

#[test]
fn a_fitted_build_leaves_the_inode_headroom_of_mke2fs_inode_ratio() {
    if !require_kernel("a_fitted_build_leaves_the_inode_headroom_of_mke2fs_inode_ratio") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A doc-like tree: many small files in a few directories.
    let tree = dir.path().join("doc");
    for d in 0..40 {
        let p = tree.join(format!("pkg{d}"));
        std::fs::create_dir_all(&p).unwrap();
        for f in 0..25 {
            std::fs::write(
                p.join(format!("f{f}")),
                vec![b'a' + (f % 26) as u8; 200 + 97 * f],
            )
            .unwrap();
        }
    }
    let img = dir.path().join("fit.img");
    let (code, err) = ext4kit(&["build", "-b", "1024", s(&tree), s(&img)]);
    assert_eq!(code, 0, "{err}");
    assert_e2fsck_clean(&img);
    let size = std::fs::metadata(&img).unwrap().len();
    // The inode count mke2fs gives an empty filesystem of that size (the tree needs fewer).
    let empty = dir.path().join("empty.img");
    Mke2fs::new(&empty)
        .features("^resize_inode")
        .block_size(1024)
        .fs_size(&format!("{}k", size / 1024))
        .run();
    let ic = |p: &Path| {
        counts(p)
            .into_iter()
            .find(|l| l.starts_with("Inode count"))
            .unwrap()
    };
    assert_eq!(ic(&img), ic(&empty), "fitted image of {size} bytes");
    // The kernel fills it as it fills an image mke2fs -d made of the same size.
    let theirs = dir.path().join("theirs.img");
    ext4kit_testkit::mke2fs_d(&tree, &theirs, "ext4", 1024, size, &["-O", "^resize_inode"]);
    let ours = files_that_fit(&img, 1024);
    let mke2fs = files_that_fit(&theirs, 1024);
    assert!(
        ours * 10 >= mke2fs * 9,
        "kernel created {ours} 1 KiB files in ours, {mke2fs} in mke2fs's"
    );
    assert_e2fsck_clean(&img);
}

/// Runs the CLI and returns its peak RSS in KiB (from wait4's rusage).
fn peak_rss_kib(args: &[&str]) -> i64 {
    let child = ext4kit_cli!()
        .command()
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain data; zeroed is a valid value for it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, not yet waited for; the pointers are valid for the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "ext4kit {args:?} failed: {status}"
    );
    std::mem::forget(child);
    ru.ru_maxrss
}

#[test]
fn build_memory_is_under_1_kib_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (small, many) = (dir.path().join("small"), dir.path().join("many"));
    std::fs::create_dir(&small).unwrap();
    std::fs::create_dir(&many).unwrap();
    let n = 20_000;
    for i in 0..n {
        std::fs::create_dir(many.join(format!("directory{i:06}"))).unwrap();
    }
    let img = dir.path().join("m.img");
    let base = peak_rss_kib(&["build", "-b", "4096", s(&small), s(&img)]);
    let peak = peak_rss_kib(&["build", "-b", "4096", s(&many), s(&img)]);
    let per_dir = (peak - base) as f64 * 1024.0 / f64::from(n);
    eprintln!(
        "build of {n} empty directories: {peak} KiB peak RSS, {base} KiB for an empty tree: {per_dir:.0} bytes per directory"
    );
    assert!(per_dir <= 1024.0, "{per_dir:.0} bytes per directory");
    if require_kernel("build_memory_is_under_1_kib_per_directory") {
        assert_e2fsck_clean(&img);
    }
}
