//! `cp` between images and through `-`, arguments that look like `IMG:PATH` but name no image,
//! and the error lines users meet: kernel mounts of both images are the oracle, `e2fsck -fn`
//! must stay silent, and nothing may appear on the host that was not asked for.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Output, Stdio};

use ext4kit_testkit::{
    Compare, Mke2fs, assert_e2fsck_clean, diff_trees, ext4kit_cli, kernel_snapshot, mke2fs_d,
    path_str as s, require_kernel, snapshot,
};

/// Runs ext4kit in `cwd`.
fn ext4kit_in(cwd: &Path, args: &[&str]) -> Output {
    ext4kit_cli!().output_in(Some(cwd), args, None)
}

fn ok_in(cwd: &Path, args: &[&str]) -> Output {
    let o = ext4kit_in(cwd, args);
    assert!(
        o.status.success(),
        "ext4kit {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Fails with exactly one `ext4kit: ...` line on stderr, not an OS error's text; returns it.
fn fails_in(cwd: &Path, args: &[&str]) -> String {
    let err = ext4kit_cli!().failure_line(&ext4kit_in(cwd, args), args);
    assert!(!err.contains("os error"), "ext4kit {args:?}: {err:?}");
    err
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

/// A tree with what a copy must keep: modes, owners, xattrs, hard links, a sparse file, a
/// symlink, a FIFO, nested directories.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("apt/lists/partial")).unwrap();
    std::fs::write(root.join("hostname"), b"box\n").unwrap();
    std::fs::write(
        root.join("apt/sources.list"),
        b"deb http://example/ stable main\n",
    )
    .unwrap();
    std::fs::write(
        root.join("apt/lists/big"),
        ext4kit_testkit::pattern(3, 300_000),
    )
    .unwrap();
    let sparse = std::fs::File::create(root.join("apt/sparse")).unwrap();
    sparse.set_len(5 << 20).unwrap();
    rustix::io::pwrite(&sparse, b"middle", 2 << 20).unwrap();
    std::fs::hard_link(root.join("apt/sources.list"), root.join("apt/hard")).unwrap();
    symlink("sources.list", root.join("apt/link")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("apt/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    set_xattr(&root.join("apt/sources.list"), "user.origin", b"debian");
    set_xattr(&root.join("apt/lists"), "trusted.t", b"tv");
    set_xattr(&root.join("apt/lists/big"), "security.s", b"sv");
    std::os::unix::fs::chown(root.join("apt/lists/big"), Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(
        root.join("apt/lists/partial"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    std::fs::set_permissions(
        root.join("hostname"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
}

fn empty_image(img: &Path, bs: u32) {
    Mke2fs::new(img)
        .block_size(bs)
        .size(32 << 20)
        .no_lazy_init()
        .run();
}

#[test]
fn cp_between_images_keeps_everything_and_never_creates_img_paths_on_the_host() {
    if !require_kernel("cp_between_images_keeps_everything_and_never_creates_img_paths_on_the_host")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree);
    let cwd = dir.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let one = dir.path().join("one.img");
    mke2fs_d(&tree, &one, "ext4", 4096, 32 << 20, &[]);
    let two = dir.path().join("two.img");
    empty_image(&two, 1024);
    let (i1, i2) = (s(&one), s(&two));
    // A whole image into another (with -p: modes, owners, ns times, xattrs, hard links, holes).
    ok_in(
        &cwd,
        &["cp", "-r", "-p", &format!("{i1}:/"), &format!("{i2}:/")],
    );
    let full = Compare::EXCEPT_DIR_MTIME;
    let d = diff_trees(&kernel_snapshot(&one), &kernel_snapshot(&two), full);
    assert!(
        d.is_empty(),
        "image-to-image copy differs:\n{}",
        d.join("\n")
    );
    // A file onto a new name, onto an existing file, and a directory (`IMG2:/`, once made a
    // host directory named `IMG2:`).
    ok_in(
        &cwd,
        &["cp", &format!("{i1}:/hostname"), &format!("{i2}:/copied")],
    );
    ok_in(
        &cwd,
        &[
            "cp",
            &format!("{i1}:/apt/sources.list"),
            &format!("{i2}:/hostname"),
        ],
    );
    ok_in(
        &cwd,
        &["cp", "-r", &format!("{i1}:/apt"), &format!("{i2}:/")],
    );
    ok_in(
        &cwd,
        &["cp", "-r", &format!("{i1}:/apt"), &format!("{i2}:/apt2/")],
    );
    // Standard input and output.
    let mut child = ext4kit_cli!()
        .command()
        .args(["cp", "-", &format!("{i2}:/stdin")])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&ext4kit_testkit::pattern(9, 3 << 20))
        .unwrap();
    assert!(child.wait().unwrap().success());
    let o = ok_in(&cwd, &["cp", &format!("{i1}:/apt/lists/big"), "-"]);
    assert_eq!(o.stdout, ext4kit_testkit::pattern(3, 300_000));
    // Images that do not exist are errors, never host paths.
    assert!(
        fails_in(&cwd, &["cp", s(&tree.join("hostname")), "missing.img:/f"])
            .contains("missing.img: no such file")
    );
    assert!(
        fails_in(&cwd, &["cp", "-r", &format!("{i1}:/apt"), "missing.img:/"])
            .contains("missing.img: no such file")
    );
    assert!(
        fails_in(&cwd, &["cp", "-r", "missing.img:/apt", "out"])
            .contains("missing.img: no such file")
    );
    assert_eq!(
        std::fs::read_dir(&cwd).unwrap().count(),
        0,
        "cp created something on the host"
    );
    // Copying out twice onto the same host tree: symlinks, hard links and special files of
    // the first copy are replaced, as cp does.
    let again = dir.path().join("again");
    for _ in 0..2 {
        ok_in(
            &cwd,
            &[
                "cp",
                "-r",
                "-p",
                "--all-xattrs",
                &format!("{i1}:/"),
                s(&again),
            ],
        );
    }
    let d = diff_trees(&kernel_snapshot(&one), &snapshot(&again), full);
    assert!(d.is_empty(), "second copy out differs:\n{}", d.join("\n"));
    assert_e2fsck_clean(&one);
    assert_e2fsck_clean(&two);
    let got = kernel_snapshot(&two);
    let file = |p: &str| match &got
        .get(p.as_bytes())
        .unwrap_or_else(|| panic!("{p} missing"))
        .kind
    {
        ext4kit_testkit::Kind::File(c) => c.clone(),
        k => panic!("{p}: {k:?}"),
    };
    assert_eq!(file("copied"), b"box\n");
    assert_eq!(file("hostname"), b"deb http://example/ stable main\n");
    assert_eq!(
        file("stdin"),
        ext4kit_testkit::pattern(9, 3 << 20),
        "3 MiB from stdin"
    );
    for top in ["apt", "apt2"] {
        assert_eq!(
            file(&format!("{top}/lists/big")),
            ext4kit_testkit::pattern(3, 300_000)
        );
        let hard = got.get(format!("{top}/hard").as_bytes()).unwrap();
        assert!(hard.link_group.is_some(), "{top}/hard lost its hard link");
    }
    // Without -p new copies are the caller's; files overwritten in place keep their owner
    // (as cp does).
    assert_eq!(got.get(&b"apt2/lists/big"[..]).unwrap().uid, 0);
    assert_eq!(got.get(&b"apt/lists/big"[..]).unwrap().uid, 1234);
}

#[test]
fn error_lines_name_the_path_once_in_one_line() {
    if !require_kernel("error_lines_name_the_path_once_in_one_line") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree);
    let img = dir.path().join("e.img");
    mke2fs_d(&tree, &img, "ext4", 4096, 32 << 20, &[]);
    let i = s(&img);
    let cwd = dir.path();
    let long = "t".repeat(5000);
    let e = fails_in(cwd, &["ln", "-s", &long, &format!("{i}:/ll")]);
    assert!(e.len() < 200 && e.contains(&format!("{i}:/ll")), "{e}");
    let e = fails_in(cwd, &["cat", &format!("{i}:/hostname/")]);
    assert_eq!(e, format!("ext4kit: {i}:/hostname/: not a directory\n"));
    let e = fails_in(cwd, &["ls", "missing.img:/"]);
    assert_eq!(
        e,
        "ext4kit: missing.img: cannot open: no such file or directory\n"
    );
    let e = fails_in(cwd, &["rm", &format!("{i}:/nope")]);
    assert_eq!(
        e,
        format!("ext4kit: {i}:/nope: no such file or directory\n")
    );
    // Copying out: the error names the DEST path that failed, with strerror's words.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("apt"), b"a file where the copy needs a directory").unwrap();
    let o = ext4kit_in(cwd, &["cp", "-r", &format!("{i}:/apt"), s(&out)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains(&format!("{}/apt", s(&out))) && !err.contains("os error"),
        "{err}"
    );
    let e = fails_in(
        cwd,
        &["cp", &format!("{i}:/hostname"), "/nonexistent-dir/x"],
    );
    assert!(
        e.contains("/nonexistent-dir") && e.contains("no such file or directory"),
        "{e}"
    );
    // Copying out onto the image itself (IMG where IMG:PATH was meant) is refused, the image kept.
    let before = std::fs::read(&img).unwrap();
    let e = fails_in(cwd, &["cp", &format!("{i}:/hostname"), i]);
    assert!(e.contains("image being copied from"), "{e}");
    assert!(
        std::fs::read(&img).unwrap() == before,
        "the image was changed"
    );
    // ... and so is a file in the image that has the image's own name, copied out next to it.
    ok_in(
        cwd,
        &["cp", &format!("{i}:/hostname"), &format!("{i}:/e.img")],
    );
    let o = ext4kit_in(cwd, &["cp", "-r", &format!("{i}:/"), s(dir.path())]);
    assert!(
        !o.status.success(),
        "copying the image's own name over it should fail"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("image being copied from"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_e2fsck_clean(&img);
    // Copying a host tree that holds the image into it: everything but the image itself.
    let holder = dir.path().join("holder");
    std::fs::create_dir(&holder).unwrap();
    std::fs::write(holder.join("note"), b"next to the image\n").unwrap();
    let held = holder.join("h.img");
    empty_image(&held, 4096);
    let o = ext4kit_in(
        cwd,
        &[
            "cp",
            "-r",
            &format!("{}/.", s(&holder)),
            &format!("{}:/", s(&held)),
        ],
    );
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains("not copied into itself")
    );
    assert_e2fsck_clean(&held);
    let t = kernel_snapshot(&held);
    assert!(
        t.contains_key(&b"note"[..]) && !t.contains_key(&b"h.img"[..]),
        "{:?}",
        t.keys().collect::<Vec<_>>()
    );
    let info = String::from_utf8_lossy(&ok_in(cwd, &["info", i]).stdout).into_owned();
    assert!(info.contains("Journal replayed in memory: no"), "{info}");
    for line in info.lines() {
        let (k, v) = line.split_once(':').unwrap();
        assert!(
            v.is_empty() || v.starts_with(' '),
            "{k}: no space before the value: {line:?}"
        );
    }
}
