//! The writing commands through the binary: mkfs, build, mkdir, cp into images. Every image is
//! judged by e2fsck (strict) and a kernel loop mount.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use ext4kit_testkit::{
    Compare, LoopMount, Mke2fs, TreeOptions, assert_e2fsck_clean, diff_trees, ext4kit_cli,
    kernel_snapshot, new_tree, path_str as s, require_kernel, run_ok, snapshot,
};

fn ok(args: &[&str]) -> String {
    ext4kit_cli!().ok(args)
}

/// Fails with one `ext4kit: ...` line on stderr; returns it.
fn fails(args: &[&str]) -> String {
    ext4kit_cli!().fails(args)
}

#[test]
fn mkfs_gives_a_clean_image_that_info_and_dumpe2fs_describe_alike() {
    if !require_kernel("mkfs_gives_a_clean_image_that_info_and_dumpe2fs_describe_alike") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (bs, size) in [("1024", "8M"), ("2048", "100M"), ("4096", "1G")] {
        let img = dir.path().join(format!("m{bs}.img"));
        ok(&[
            "mkfs",
            "-b",
            bs,
            "-L",
            "vol",
            "-U",
            "01234567-89ab-cdef-0123-456789abcdef",
            s(&img),
            size,
        ]);
        assert_e2fsck_clean(&img);
        let info: serde_json::Value =
            serde_json::from_str(&ok(&["info", "--json", s(&img)])).unwrap();
        let dump = run_ok("dumpe2fs", &["-h", s(&img)]);
        let field = |name: &str| {
            dump.lines()
                .find_map(|l| {
                    l.strip_prefix(&format!("{name}:"))
                        .map(|v| v.trim().to_string())
                })
                .unwrap()
        };
        assert_eq!(info["block_size"].to_string(), field("Block size"));
        assert_eq!(info["block_count"].to_string(), field("Block count"));
        assert_eq!(info["free_blocks"].to_string(), field("Free blocks"));
        assert_eq!(info["inode_count"].to_string(), field("Inode count"));
        assert_eq!(
            field("Filesystem UUID"),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
        assert_eq!(field("Filesystem volume name"), "vol");
        for f in [
            "has_journal",
            "ext_attr",
            "dir_index",
            "filetype",
            "extent",
            "64bit",
            "flex_bg",
            "sparse_super",
            "large_file",
            "huge_file",
            "dir_nlink",
            "extra_isize",
            "metadata_csum",
        ] {
            assert!(
                field("Filesystem features")
                    .split_whitespace()
                    .any(|x| x == f),
                "{bs}: feature {f} missing"
            );
        }
        let m = LoopMount::new(&img, false).unwrap();
        std::fs::write(m.path().join("hello"), b"kernel was here").unwrap();
        m.unmount().unwrap();
        assert_e2fsck_clean(&img);
    }
    assert!(fails(&["mkfs", s(&dir.path().join("x.img")), "12Q"]).contains("suffix"));
    assert!(fails(&["mkfs", s(&dir.path().join("y.img")), "100K"]).contains("y.img"));
}

#[test]
fn cp_into_images_from_both_mkfs_equals_the_tree_in_the_kernel() {
    if !require_kernel("cp_into_images_from_both_mkfs_equals_the_tree_in_the_kernel") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = new_tree(&dir.path().join("src"), 3, &TreeOptions::default());
    let want = snapshot(&src);
    let tree_dot = format!("{}/.", s(&src));
    for bs in ["1024", "2048", "4096"] {
        for maker in ["ext4kit", "mkfs.ext4"] {
            let img = dir.path().join(format!("{maker}-{bs}.img"));
            if maker == "ext4kit" {
                ok(&["mkfs", "-b", bs, s(&img), "128M"]);
            } else {
                Mke2fs::new(&img)
                    .block_size(bs.parse().unwrap())
                    .size(128 << 20)
                    .run();
            }
            let root = format!("{}:/", s(&img));
            ok(&["cp", "-r", "-p", &tree_dot, &root]);
            assert_e2fsck_clean(&img);
            // Directory mtimes change as entries are added after -p set them; compare files.
            let d = diff_trees(&want, &kernel_snapshot(&img), Compare::EXCEPT_DIR_MTIME);
            assert!(d.is_empty(), "{maker} {bs}: {d:#?}");
        }
    }
}

#[test]
fn mkdir_p_and_cp_overwrite_and_errors() {
    if !require_kernel("mkdir_p_and_cp_overwrite_and_errors") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.img");
    ok(&["mkfs", "-b", "4096", s(&img), "64M"]);
    let spec = |p: &str| format!("{}:{p}", s(&img));
    ok(&["mkdir", "-p", &spec("/etc/app/conf.d"), &spec("/var/log")]);
    ok(&["mkdir", "-p", &spec("/etc/app")]);
    assert!(fails(&["mkdir", &spec("/etc")]).contains("exists"));
    assert!(fails(&["mkdir", &spec("/no/such/parent")]).contains("no/such"));
    let f = dir.path().join("conf");
    std::fs::write(&f, vec![b'a'; 100_000]).unwrap();
    ok(&["cp", s(&f), &spec("/etc/app/conf.d/")]);
    std::fs::write(&f, b"short now").unwrap();
    ok(&["cp", s(&f), &spec("/etc/app/conf.d/conf")]);
    ok(&["cp", s(&f), &spec("/etc/renamed")]);
    assert!(fails(&["cp", s(dir.path()), &spec("/x")]).contains("-r"));
    assert_eq!(ok(&["cat", &spec("/etc/app/conf.d/conf")]), "short now");
    assert_e2fsck_clean(&img);
    let m = LoopMount::new(&img, true).unwrap();
    assert_eq!(
        std::fs::read(m.path().join("etc/app/conf.d/conf")).unwrap(),
        b"short now"
    );
    assert_eq!(
        std::fs::read(m.path().join("etc/renamed")).unwrap(),
        b"short now"
    );
    assert!(m.path().join("var/log").is_dir());
    // A mounted image is refused.
    let err = fails(&["mkdir", &spec("/while-mounted")]);
    assert!(err.contains("mounted") || err.contains("loop"), "{err}");
    m.unmount().unwrap();
}

#[test]
fn build_through_the_cli_is_reproducible_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let src = new_tree(&dir.path().join("src"), 4, &TreeOptions::sized(400, 6));
    let run = |img: &Path| {
        let out = ext4kit_cli!()
            .command()
            .args([
                "build",
                "-b",
                "2048",
                "-U",
                "0123456789abcdef0123456789abcdef",
                "--hash-seed",
                "fedcba9876543210fedcba9876543210",
                "--json",
                s(&src),
                s(img),
            ])
            .env("SOURCE_DATE_EPOCH", "1650000000")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    let ra = run(&a);
    run(&b);
    assert!(ra["files"].as_u64().unwrap() > 400);
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "two builds differ"
    );
    if ext4kit_testkit::kernel_available() {
        assert_e2fsck_clean(&a);
        let m = LoopMount::new(&a, true).unwrap();
        let want = snapshot(&src);
        let got = snapshot(m.path());
        // SOURCE_DATE_EPOCH clamps every time: compare everything else, and check the clamp.
        let d = diff_trees(
            &want,
            &got,
            Compare {
                mtime: false,
                ..Compare::default()
            },
        );
        assert!(d.is_empty(), "{d:#?}");
        assert!(
            got.values().all(|e| e.mtime.0 <= 1_650_000_000),
            "a time past SOURCE_DATE_EPOCH survived"
        );
        m.unmount().unwrap();
    }
}

/// Runs `ext4kit ARGS` under a pseudo-terminal (`script`), every meter tick drawn; returns
/// what the terminal showed.
fn on_a_terminal(args: &[&str]) -> String {
    let cmd = std::iter::once(env!("CARGO_BIN_EXE_ext4kit").to_string())
        .chain(args.iter().map(|a| format!("'{a}'")))
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("EXT4KIT_PROGRESS_MS", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn copies_in_and_out_show_progress_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..40u64 {
        std::fs::write(
            src.join(format!("f{i}")),
            ext4kit_testkit::pattern(i, 70_000),
        )
        .unwrap();
    }
    let img = dir.path().join("p.img");
    ok(&["mkfs", "-b", "4096", s(&img), "32M"]);
    let dest = format!("{}:/in", img.display());
    ok(&["mkdir", &dest]);
    // The last redraw before the line is cleared counts every file.
    let shown = on_a_terminal(&["cp", "-r", &format!("{}/.", src.display()), &dest]);
    assert!(shown.contains("copying: 40 files, 2.7 MiB"), "{shown:?}");
    assert!(
        shown.ends_with("\r\x1b[K") || shown.trim_end_matches(['\r', '\n']).ends_with("\x1b[K"),
        "line not cleared: {shown:?}"
    );
    let out = dir.path().join("out");
    let shown = on_a_terminal(&["cp", "-r", &dest, s(&out)]);
    assert!(shown.contains("copying: 40 files, 2.7 MiB"), "{shown:?}");
    for i in 0..40u64 {
        assert_eq!(
            std::fs::read(out.join(format!("f{i}"))).unwrap(),
            ext4kit_testkit::pattern(i, 70_000)
        );
    }
    // Not a terminal: nothing on stderr.
    let out2 = dir.path().join("out2");
    let (code, _, err) = ext4kit_cli!().run(&[
        std::ffi::OsStr::new("cp"),
        std::ffi::OsStr::new("-r"),
        std::ffi::OsStr::new(&dest),
        out2.as_os_str(),
    ]);
    assert_eq!((code, err.as_str()), (0, ""));
}

#[test]
fn errors_name_each_path_once() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("e.img");
    ok(&["mkfs", "-b", "1024", s(&img), "16M"]);
    let i = s(&img);
    ok(&["mkdir", &format!("{i}:/d")]);
    let file = dir.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    ok(&["cp", s(&file), &format!("{i}:/d/f")]);
    let cases = [
        (
            vec!["cat".to_string(), format!("{i}:/nope")],
            format!("ext4kit: {i}:/nope: no such file or directory"),
        ),
        (
            vec!["ls".to_string(), format!("{i}:/d/nope/deeper")],
            format!("ext4kit: {i}:/d/nope/deeper: /d/nope: no such file or directory"),
        ),
        (
            vec!["cat".to_string(), format!("{i}:/d/f/x")],
            format!("ext4kit: {i}:/d/f/x: /d/f: not a directory"),
        ),
        (
            vec![
                "cp".to_string(),
                s(&file).to_string(),
                format!("{i}:/nodir/x"),
            ],
            format!("ext4kit: {i}:/nodir/x: /nodir: no such file or directory"),
        ),
    ];
    for (args, want) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(fails(&a).trim_end(), want, "ext4kit {args:?}");
    }
}
