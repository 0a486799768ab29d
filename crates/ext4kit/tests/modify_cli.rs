//! `ext4kit rm`, `mv` and `ln` through the binary, on images the kernel wrote: the same changes
//! made with coreutils on a host copy of the tree must give what a kernel mount of the image
//! shows, and `e2fsck -fn` must stay silent. Refusals are one-line errors with a non-zero exit.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use ext4kit_testkit::{
    Compare, LoopMount, Mke2fs, TreeOptions, assert_e2fsck_clean, copy_in_through_kernel,
    diff_trees, ext4kit_cli, kernel_snapshot, new_tree, path_str as s, require_kernel, snapshot,
};

fn ok(args: &[&str]) -> String {
    ext4kit_cli!().ok(args)
}

/// Fails with one `ext4kit: ...` line on stderr; returns it.
fn fails(args: &[&str]) -> String {
    ext4kit_cli!().fails(args)
}

/// An image of `size_mb` MiB (`mkfs.ext4 -b bs`) with `tree` copied in by the kernel.
fn kernel_image(img: &Path, bs: u32, size_mb: u64, tree: &Path) {
    Mke2fs::new(img)
        .block_size(bs)
        .size(size_mb << 20)
        .no_lazy_init()
        .run();
    copy_in_through_kernel(img, tree);
}

/// Runs a coreutils command in `dir`.
fn host(dir: &Path, cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Gives host symlink `rel` the mtime its twin in the image got (both were made "now").
fn copy_symlink_mtime(img: &Path, host_root: &Path, rel: &str) {
    let fs = ext4kit_fs::Fs::open_path(img, &ext4kit_fs::OpenOptions::default()).unwrap();
    let st = fs
        .stat(fs.resolve(format!("/{rel}").as_bytes(), false).unwrap())
        .unwrap();
    let t = rustix::fs::Timespec {
        tv_sec: st.mtime.seconds,
        tv_nsec: i64::from(st.mtime.nanoseconds),
    };
    let ts = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        host_root.join(rel),
        &ts,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

#[test]
fn rm_mv_ln_on_kernel_written_images_equal_coreutils_on_a_host_copy() {
    if !require_kernel("rm_mv_ln_on_kernel_written_images_equal_coreutils_on_a_host_copy") {
        return;
    }
    for bs in [1024u32, 4096] {
        let dir = tempfile::tempdir().unwrap();
        let h = new_tree(&dir.path().join("host"), 5, &TreeOptions::sized(600, 12));
        let img = dir.path().join("k.img");
        kernel_image(&img, bs, 64, &h);
        let i = s(&img);
        let spec = |p: &str| format!("{i}:{p}");
        // The same image spelled two ways in one call: opened once.
        let dotted = format!("{}/./k.img:/files/size-59", s(dir.path()));
        ok(&[
            "rm",
            &spec("/files/size-1"),
            &spec("/files/size-2047"),
            &dotted,
        ]);
        host(
            &h,
            "rm",
            &["files/size-1", "files/size-2047", "files/size-59"],
        );
        ok(&[
            "rm",
            "-r",
            &spec("/sparse"),
            &spec("/deep/level00/level01"),
            &spec("/bigdir"),
        ]);
        host(
            &h,
            "rm",
            &["-r", "sparse", "deep/level00/level01", "bigdir"],
        );
        ok(&["rm", &spec("/links/fast"), &spec("/hardlinks/two")]);
        host(&h, "rm", &["links/fast", "hardlinks/two"]);
        // -f: missing paths (or missing directories on the way) are skipped, the rest removed.
        ok(&[
            "rm",
            "-rf",
            &spec("/nope"),
            &spec("/no/such/dir"),
            &spec("/files/size-4097"),
            &spec("/xattrs"),
        ]);
        host(
            &h,
            "rm",
            &["-rf", "nope", "no/such/dir", "files/size-4097", "xattrs"],
        );
        ok(&["mv", &spec("/files/size-1023"), &spec("/names/")]);
        host(&h, "mv", &["files/size-1023", "names/"]);
        ok(&["mv", &spec("/hardlinks"), &spec("/hl-renamed")]);
        host(&h, "mv", &["hardlinks", "hl-renamed"]);
        ok(&["mv", &spec("/files/size-4096"), &spec("/files/size-4095")]);
        host(&h, "mv", &["files/size-4096", "files/size-4095"]);
        ok(&["mv", &spec("/deep/level00"), &spec("/names/deep-moved")]);
        host(&h, "mv", &["deep/level00", "names/deep-moved"]);
        ok(&[
            "mv",
            &spec("/files/size-60"),
            &spec("/files/size-61"),
            &spec("/modes/"),
        ]);
        host(&h, "mv", &["files/size-60", "files/size-61", "modes/"]);
        ok(&["ln", "-s", "../files/size-0", &spec("/links/new-fast")]);
        host(&h, "ln", &["-s", "../files/size-0", "links/new-fast"]);
        let long = format!("../{}/target-name", "l".repeat(250));
        ok(&["ln", "-s", &long, &spec("/links/")]);
        host(&h, "ln", &["-s", &long, "links/"]);
        ok(&["ln", &spec("/files/size-8192"), &spec("/names/hard")]);
        host(&h, "ln", &["files/size-8192", "names/hard"]);
        ok(&["ln", &spec("/files/size-8191"), &spec("/names/")]);
        host(&h, "ln", &["files/size-8191", "names/"]);
        for l in ["links/new-fast", "links/target-name"] {
            copy_symlink_mtime(&img, &h, l);
        }
        assert_e2fsck_clean(&img);
        let got = kernel_snapshot(&img);
        let d = diff_trees(&snapshot(&h), &got, Compare::EXCEPT_DIR_MTIME);
        assert!(
            d.is_empty(),
            "{bs}: kernel view differs from coreutils on the host:\n{}",
            d.join("\n")
        );
    }
}

#[test]
fn refusals_are_one_line_errors_and_leave_the_image_clean() {
    if !require_kernel("refusals_are_one_line_errors_and_leave_the_image_clean") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let h = new_tree(&dir.path().join("host"), 6, &TreeOptions::sized(20, 4));
    let img = dir.path().join("r.img");
    kernel_image(&img, 4096, 32, &h);
    let other = dir.path().join("other.img");
    kernel_image(&other, 1024, 16, &h);
    let i = s(&img);
    let spec = |p: &str| format!("{i}:{p}");
    assert!(fails(&["rm", &spec("/deep")]).contains("-r"));
    assert!(fails(&["rm", &spec("/nope")]).contains("no such file"));
    // -f skips what is missing, not what is wrong: a directory still needs -r. A file on the
    // way is "missing" for rm -f as for coreutils (ENOTDIR is ignored like ENOENT).
    assert!(fails(&["rm", "-f", &spec("/deep")]).contains("-r"));
    assert!(fails(&["rm", &spec("/files/size-1/x")]).contains("/files/size-1: not a directory"));
    ok(&["rm", "-f", &spec("/files/size-1/x")]);
    assert!(fails(&["rm", "-r", &spec("/")]).contains("root"));
    assert!(fails(&["rm", i]).contains("IMG:PATH"));
    assert!(fails(&["mv", &spec("/deep"), &spec("/deep/level00/")]).contains("subtree"));
    ok(&["mkdir", "-p", &spec("/names/files/sub")]);
    assert!(fails(&["mv", &spec("/files"), &spec("/names")]).contains("not empty"));
    assert!(
        fails(&["mv", &spec("/files/size-1"), &format!("{}:/x", s(&other))]).contains("one image")
    );
    assert!(fails(&["mv", &spec("/missing"), &spec("/x")]).contains("no such file"));
    assert!(fails(&["ln", &spec("/deep"), &spec("/deep-link")]).contains("directories"));
    assert!(fails(&["ln", &spec("/files/size-1"), &spec("/files/size-59")]).contains("exists"));
    assert!(
        fails(&["ln", &format!("{}:/files/size-1", s(&other)), &spec("/x")]).contains("one image")
    );
    assert!(fails(&["ln", "plain-target", &spec("/x")]).contains("-s"));
    assert_e2fsck_clean(&img);
    // A mounted image is refused before anything is written.
    let m = LoopMount::new(&img, false).unwrap();
    let e = fails(&["rm", &spec("/files/size-1")]);
    assert!(e.contains("mounted") || e.contains("attached"), "{e}");
    m.unmount().unwrap();
    assert_e2fsck_clean(&img);
    // Help that teaches.
    for (cmd, needle) in [
        ("rm", "ext4kit rm -r disk.img:"),
        ("mv", "ext4kit mv disk.img:"),
        ("ln", "ext4kit ln -s"),
    ] {
        let help = ok(&[cmd, "--help"]);
        assert!(
            help.contains(needle),
            "{cmd} --help lacks an example: {help}"
        );
    }
}
