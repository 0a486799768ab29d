//! POSIX ACLs and every xattr namespace through the binary, judged by the kernel: `getfacl` on a
//! loop mount, access by a non-owner the ACL names (`setpriv`), inheritance of default ACLs by
//! files the kernel creates, strict e2fsck, and the raw bytes `mke2fs -d` writes for the same
//! tree (debugfs `ea_list`).
#![allow(clippy::unwrap_used)]

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use ext4kit_testkit::{
    Compare, LoopMount, Mke2fs, assert_e2fsck_clean, debugfs, diff_trees, ext4kit_cli, mke2fs_d,
    path_str as s, require_kernel, run, run_ok, snapshot,
};

/// The named user and group of the ACLs, and a user they do not name.
const NAMED_UID: &str = "1234";
const OTHER_UID: &str = "999";

/// Exits 0 with nothing on stderr; returns stdout.
fn ok(args: &[&str]) -> String {
    let (code, out, err) = ext4kit_cli!().run(args);
    assert_eq!(code, 0, "ext4kit {args:?} failed: {err}");
    assert!(err.is_empty(), "ext4kit {args:?} wrote to stderr: {err}");
    out
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `getfacl -p` of `paths` (relative to `root`), run in `root` so that outputs of different
/// trees compare equal; `omit_header` drops the `# file:` lines.
fn getfacl(root: &Path, paths: &[&str], omit_header: bool) -> String {
    let mut c = Command::new("getfacl");
    c.current_dir(root).arg("-p");
    if omit_header {
        c.arg("-c");
    }
    let out = c.args(paths).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "getfacl {paths:?} in {}: {}{text}",
        root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Runs `cmd args` as user `uid` (group the same, no supplementary groups).
fn as_user(uid: &str, cmd: &str, args: &[&OsStr]) -> (i32, String) {
    let mut a: Vec<&OsStr> = ["--reuid", uid, "--regid", uid, "--clear-groups", cmd]
        .into_iter()
        .map(OsStr::new)
        .collect();
    a.extend_from_slice(args);
    run("setpriv", &a)
}

/// The ACLs the issue names: on `d` (mode 0700, so that only the ACL lets the named user in) an
/// access and a default ACL, on `f` an access ACL; `d/inner` and `d/sub` are created after the
/// default ACL, so the host kernel gave them inherited ACLs.
fn acl_tree(root: &Path) {
    std::fs::create_dir(root).unwrap();
    chmod(root, 0o755);
    let d = root.join("d");
    std::fs::create_dir(&d).unwrap();
    chmod(&d, 0o700);
    run_ok("setfacl", &["-m", "u:1234:rwx,g:4321:r-x,m::rwx", s(&d)]);
    run_ok(
        "setfacl",
        &["-d", "-m", "u:1234:rwx,g:4321:r-x,m::rwx", s(&d)],
    );
    std::fs::write(d.join("inner"), b"inner file").unwrap();
    std::fs::create_dir(d.join("sub")).unwrap();
    std::fs::write(root.join("f"), b"plain file").unwrap();
    run_ok(
        "setfacl",
        &["-m", "u:1234:rw-,g:4321:r--,m::rw-", s(&root.join("f"))],
    );
}

const ACL_PATHS: [&str; 4] = ["d", "d/inner", "d/sub", "f"];

/// Checks a kernel view of an ACL tree against the host tree it came from: the same getfacl,
/// the named user can list `d` and a user the ACL does not name cannot, and what the kernel
/// creates in `d` inherits the default ACL as `d/inner` and `d/sub` did on the host.
fn check_acl_view(what: &str, host: &Path, got: &Path, create: bool) {
    assert_eq!(
        getfacl(got, &ACL_PATHS, false),
        getfacl(host, &ACL_PATHS, false),
        "{what}: getfacl differs"
    );
    let d = got.join("d");
    let (code, out) = as_user(NAMED_UID, "ls", &[d.as_os_str()]);
    assert_eq!(code, 0, "{what}: uid {NAMED_UID} cannot list d: {out}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["inner", "sub"],
        "{what}"
    );
    let (code, out) = as_user(OTHER_UID, "ls", &[d.as_os_str()]);
    assert_ne!(code, 0, "{what}: uid {OTHER_UID} listed d: {out}");
    assert!(out.contains("Permission denied"), "{what}: {out}");
    if create {
        std::fs::write(d.join("new"), b"made by the kernel").unwrap();
        std::fs::create_dir(d.join("newdir")).unwrap();
        assert_eq!(
            getfacl(&d, &["new"], true),
            getfacl(&host.join("d"), &["inner"], true),
            "{what}: new file"
        );
        assert_eq!(
            getfacl(&d, &["newdir"], true),
            getfacl(&host.join("d"), &["sub"], true),
            "{what}: new dir"
        );
    }
}

/// The lines `ext4kit stat` shows for the ACLs of `path` in `host`: getfacl's entries joined
/// by commas, the access ACL first.
fn stat_acl_lines(host: &Path, path: &str) -> Vec<String> {
    let out = run_ok("getfacl", &["-c", "-E", "-p", s(&host.join(path))]);
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    let access: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.starts_with("default:"))
        .collect();
    let default: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("default:"))
        .collect();
    // The getxattr form: a 4-byte header and 8 bytes per entry.
    let mut v = vec![format!(
        "  system.posix_acl_access ({}) = {}",
        4 + 8 * access.len(),
        access.join(",")
    )];
    if !default.is_empty() {
        v.push(format!(
            "  system.posix_acl_default ({}) = {}",
            4 + 8 * default.len(),
            default.join(",")
        ));
    }
    v
}

/// `ext4kit stat IMG:PATH` shows the ACLs as `getfacl` on `host` does.
fn assert_stat_shows_acls(img: &Path, host: &Path, path: &str) {
    let stat = ok(&["stat", &format!("{}:/{path}", s(img))]);
    let got: Vec<String> = stat
        .lines()
        .filter(|l| l.contains("system.posix_acl_"))
        .map(str::to_string)
        .collect();
    assert_eq!(got, stat_acl_lines(host, path), "{path}: {stat}");
}

/// `debugfs ea_list` of a path, the attribute lines sorted.
fn ea_list(img: &Path, path: &str) -> Vec<String> {
    let out = debugfs(img, &format!("ea_list {path}"));
    let mut lines: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[test]
fn acls_from_a_host_tree_reach_the_kernel_through_build_and_cp_in() {
    if !require_kernel("acls_from_a_host_tree_reach_the_kernel_through_build_and_cp_in") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let tree = dir.path().join("tree");
    acl_tree(&tree);
    let tree_dot = format!("{}/.", s(&tree));
    for bs in ["1024", "4096"] {
        let built = dir.path().join(format!("build-{bs}.img"));
        ok(&["build", "-b", bs, s(&tree), s(&built)]);
        let copied = dir.path().join(format!("cp-{bs}.img"));
        ok(&["mkfs", "-b", bs, s(&copied), "16M"]);
        ok(&["cp", "-r", "-p", &tree_dot, &format!("{}:/", s(&copied))]);
        // The bytes mke2fs -d stores for the same tree (ext4's version-1 form).
        let reference = dir.path().join(format!("mke2fs-{bs}.img"));
        mke2fs_d(
            &tree,
            &reference,
            "ext4",
            bs.parse().unwrap(),
            16 << 20,
            &[],
        );
        for p in ACL_PATHS {
            let want = ea_list(&reference, p);
            assert!(
                want.iter().any(|l| l.contains("system.posix_acl_access")),
                "{p}: {want:?}"
            );
            assert_eq!(ea_list(&built, p), want, "build {bs}: {p}");
            assert_eq!(ea_list(&copied, p), want, "cp -p in {bs}: {p}");
        }
        for img in [&built, &copied] {
            let what = format!("{} ", img.file_name().unwrap().to_string_lossy());
            assert_e2fsck_clean(img);
            assert_stat_shows_acls(img, &tree, "d");
            assert_stat_shows_acls(img, &tree, "f");
            let m = LoopMount::new(img, false).unwrap();
            check_acl_view(&what, &tree, m.path(), true);
            m.unmount().unwrap();
            assert_e2fsck_clean(img);
            // Out again: the same ACLs on the host, also for what the kernel created.
            let out = dir.path().join(format!("out-{bs}"));
            let _ = std::fs::remove_dir_all(&out);
            ok(&["cp", "-r", "-p", &format!("{}:/", s(img)), s(&out)]);
            chmod(&out, 0o755);
            std::fs::remove_file(out.join("d/new")).unwrap();
            std::fs::remove_dir(out.join("d/newdir")).unwrap();
            check_acl_view(&format!("{what}copied out"), &tree, &out, false);
        }
    }
}

#[test]
fn acls_set_by_the_kernel_come_out_with_cp_p() {
    if !require_kernel("acls_set_by_the_kernel_come_out_with_cp_p") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    for bs in ["1024", "4096"] {
        let img = Mke2fs::new(dir.path().join(format!("k-{bs}.img")))
            .block_size(bs.parse().unwrap())
            .size(16 << 20)
            .run();
        let m = LoopMount::new(&img, false).unwrap();
        let root = m.path();
        let d = root.join("d");
        std::fs::create_dir(&d).unwrap();
        chmod(&d, 0o700);
        run_ok("setfacl", &["-m", "u:1234:rwx,g:4321:r-x,m::rwx", s(&d)]);
        run_ok(
            "setfacl",
            &["-d", "-m", "u:1234:rwx,g:4321:r-x,m::rwx", s(&d)],
        );
        std::fs::write(d.join("inner"), b"inner file").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(root.join("f"), b"plain file").unwrap();
        run_ok(
            "setfacl",
            &["-m", "u:1234:rw-,g:4321:r--,m::rw-", s(&root.join("f"))],
        );
        // A copy of the kernel's view on the host, as the reference.
        let host = dir.path().join(format!("host-{bs}"));
        run_ok("cp", &["-a", &format!("{}/.", s(root)), s(&host)]);
        std::fs::remove_dir(host.join("lost+found")).unwrap();
        chmod(&host, 0o755);
        check_acl_view("kernel mount", &host, root, false);
        m.unmount().unwrap();
        assert_e2fsck_clean(&img);
        assert_stat_shows_acls(&img, &host, "d");
        assert_stat_shows_acls(&img, &host, "d/inner");
        let out = dir.path().join(format!("out-{bs}"));
        ok(&["cp", "-r", "-p", &format!("{}:/", s(&img)), s(&out)]);
        chmod(&out, 0o755);
        check_acl_view(&format!("cp -r -p out {bs}"), &host, &out, true);
        // The getxattr form our reader gives is the kernel's, byte for byte.
        let diffs = diff_trees(&snapshot(&host), &snapshot(&out), Compare::EXCEPT_DIR_MTIME);
        assert!(
            diffs.iter().all(|l| l.starts_with("unexpected: d/new")),
            "{diffs:?}"
        );
    }
}

fn setx(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
}

/// `security.capability` as the kernel stores it: VFS_CAP_REVISION_2 with the effective bit,
/// cap_net_raw (13) and cap_net_bind_service (10) permitted.
fn capability() -> Vec<u8> {
    let mut v = (0x0200_0000u32 | 1).to_le_bytes().to_vec();
    for w in [(1u32 << 13) | (1 << 10), 0, 0, 0] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

/// Entries with attributes of every namespace: a file (in-inode and, with a large value, in a
/// block too), a directory with ACLs of both kinds, a symlink and a fifo (no user.* there: the
/// kernel refuses user.* on them).
fn every_namespace(root: &Path, tag: &str) {
    let f = root.join(format!("file-{tag}"));
    std::fs::write(&f, b"content").unwrap();
    setx(&f, "user.one", b"1");
    setx(&f, "user.big", &[b'x'; 600]);
    setx(&f, "trusted.two", &[0, 1, 2, 255]);
    setx(&f, "security.three", b"3");
    setx(&f, "security.capability", &capability());
    run_ok("setfacl", &["-m", "u:1234:rwx,g:4321:r-x,m::rwx", s(&f)]);
    let d = root.join(format!("dir-{tag}"));
    std::fs::create_dir(&d).unwrap();
    setx(&d, "user.d", b"dir value");
    setx(&d, "trusted.d", b"");
    run_ok("setfacl", &["-m", "u:1234:r-x,g:4321:r-x,m::r-x", s(&d)]);
    run_ok(
        "setfacl",
        &["-d", "-m", "u:1234:rwx,g:4321:r-x,m::rwx", s(&d)],
    );
    let l = root.join(format!("link-{tag}"));
    std::os::unix::fs::symlink("file-target", &l).unwrap();
    setx(&l, "trusted.l", b"on a symlink");
    setx(&l, "security.l", b"sec");
    let p = root.join(format!("fifo-{tag}"));
    run_ok("mkfifo", &[s(&p)]);
    setx(&p, "trusted.p", b"on a fifo");
}

/// Every namespace in the tree, so that the comparison cannot pass on trees without them.
fn assert_has_every_namespace(t: &ext4kit_testkit::Tree, tag: &str) {
    let names = |p: &str| -> Vec<String> {
        t[p.as_bytes()]
            .xattrs
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    };
    let f = names(&format!("file-{tag}"));
    for n in [
        "user.one",
        "user.big",
        "trusted.two",
        "security.three",
        "security.capability",
        "system.posix_acl_access",
    ] {
        assert!(f.iter().any(|x| x == n), "{tag}: {n} missing in {f:?}");
    }
    assert!(
        names(&format!("dir-{tag}"))
            .iter()
            .any(|x| x == "system.posix_acl_default"),
        "{tag}"
    );
    assert!(
        names(&format!("link-{tag}"))
            .iter()
            .any(|x| x == "trusted.l"),
        "{tag}"
    );
}

#[test]
fn every_xattr_namespace_round_trips_through_build_cp_in_cp_out_and_the_kernel() {
    if !require_kernel(
        "every_xattr_namespace_round_trips_through_build_cp_in_cp_out_and_the_kernel",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    every_namespace(&tree, "host");
    let want = snapshot(&tree);
    assert_has_every_namespace(&want, "host");
    let cmp = Compare::EXCEPT_DIR_MTIME;
    let same = |what: &str, want: &ext4kit_testkit::Tree, got: &Path| {
        let d = diff_trees(want, &snapshot(got), cmp);
        assert!(d.is_empty(), "{what}: {d:#?}");
    };
    let tree_dot = format!("{}/.", s(&tree));
    for bs in ["1024", "4096"] {
        let built = dir.path().join(format!("build-{bs}.img"));
        ok(&["build", "-b", bs, s(&tree), s(&built)]);
        let copied = dir.path().join(format!("cp-{bs}.img"));
        ok(&["mkfs", "-b", bs, s(&copied), "16M"]);
        ok(&["cp", "-r", "-p", &tree_dot, &format!("{}:/", s(&copied))]);
        for img in [&built, &copied] {
            let what = format!("{}", img.file_name().unwrap().to_string_lossy());
            assert_e2fsck_clean(img);
            let m = LoopMount::new(img, false).unwrap();
            same(&format!("{what} in the kernel"), &want, m.path());
            // The kernel adds its own, read back by cp out below.
            every_namespace(m.path(), "kernel");
            let kernel_view = snapshot(m.path());
            assert_has_every_namespace(&kernel_view, "kernel");
            m.unmount().unwrap();
            assert_e2fsck_clean(img);
            let out = dir.path().join(format!("out-{what}"));
            ok(&[
                "cp",
                "-r",
                "-p",
                "--all-xattrs",
                &format!("{}:/", s(img)),
                s(&out),
            ]);
            same(&format!("{what} copied out"), &kernel_view, &out);
            // And in again, to a fresh image, for the kernel once more.
            let again = dir.path().join(format!("again-{what}"));
            ok(&["mkfs", "-b", bs, s(&again), "16M"]);
            ok(&[
                "cp",
                "-r",
                "-p",
                &format!("{}/.", s(&out)),
                &format!("{}:/", s(&again)),
            ]);
            assert_e2fsck_clean(&again);
            let m = LoopMount::new(&again, true).unwrap();
            same(
                &format!("{what} copied out and in again"),
                &kernel_view,
                m.path(),
            );
            m.unmount().unwrap();
        }
    }
}

/// Mode and ACL of `name` in `dir`, as `stat` and `getfacl` (without the name) show them.
fn mode_and_acl(dir: &Path, name: &str) -> String {
    let mode = run_ok("stat", &["-c", "%a", s(&dir.join(name))]);
    format!("{mode}{}", getfacl(dir, &[name], true))
}

#[test]
fn what_ext4kit_creates_under_a_default_acl_inherits_as_from_the_kernel() {
    if !require_kernel("what_ext4kit_creates_under_a_default_acl_inherits_as_from_the_kernel") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    acl_tree(&tree);
    let src = dir.path().join("src644");
    std::fs::write(&src, b"data").unwrap();
    chmod(&src, 0o644);
    let src_exec = dir.path().join("src750");
    std::fs::write(&src_exec, b"#!/bin/sh\n").unwrap();
    chmod(&src_exec, 0o750);
    for bs in ["1024", "4096"] {
        let img = dir.path().join(format!("i-{bs}.img"));
        ok(&["build", "-b", bs, s(&tree), s(&img)]);
        let at = |p: &str| format!("{}:/d/{p}", s(&img));
        ok(&["cp", s(&src), &at("cp")]);
        ok(&["cp", s(&src_exec), &at("cp-exec")]);
        ok(&["cp", "-p", s(&src), &at("cp-p")]);
        ok(&["mkdir", &at("mkdir")]);
        ok(&["mkdir", "-p", &at("mkdir-p/sub")]);
        assert_e2fsck_clean(&img);
        let m = LoopMount::new(&img, false).unwrap();
        let d = m.path().join("d");
        // The same operations through the kernel, by coreutils.
        let k = |p: &str| s(&d.join(format!("k-{p}"))).to_string();
        run_ok("cp", &[s(&src), &k("cp")]);
        run_ok("cp", &[s(&src_exec), &k("cp-exec")]);
        run_ok("cp", &["-p", s(&src), &k("cp-p")]);
        run_ok("mkdir", &[&k("mkdir")]);
        run_ok("mkdir", &["-p", &format!("{}/sub", k("mkdir-p"))]);
        for p in ["cp", "cp-exec", "cp-p", "mkdir", "mkdir-p", "mkdir-p/sub"] {
            let kp = if p == "mkdir-p/sub" {
                "k-mkdir-p/sub".to_string()
            } else {
                format!("k-{p}")
            };
            assert_eq!(mode_and_acl(&d, p), mode_and_acl(&d, &kp), "{bs}: {p}");
        }
        assert!(
            getfacl(&d, &["cp"], true).contains("user:1234:rwx"),
            "{bs}: nothing inherited"
        );
        m.unmount().unwrap();
        assert_e2fsck_clean(&img);
    }
}

/// Images where older ext4kit stored ACLs in the getxattr form (version 2): ext4kit still reads
/// them, and rewriting the inode's attributes stores ext4's form, which the kernel reads.
#[test]
fn acls_in_the_old_getxattr_form_are_read_and_rewritten_in_ext4s_form() {
    if !require_kernel("acls_in_the_old_getxattr_form_are_read_and_rewritten_in_ext4s_form") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    acl_tree(&tree);
    let mut v2 = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(tree.join("f"), "system.posix_acl_access", &mut v2).unwrap();
    v2.truncate(n);
    let v2_file = dir.path().join("v2");
    std::fs::write(&v2_file, &v2).unwrap();
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("f"), b"plain file").unwrap();
    for bs in [1024u32, 4096] {
        let img = dir.path().join(format!("old-{bs}.img"));
        mke2fs_d(&plain, &img, "ext4", bs, 16 << 20, &[]);
        run_ok(
            "debugfs",
            &[
                "-w",
                "-R",
                &format!("ea_set -r -f {} /f system.posix_acl_access", s(&v2_file)),
                s(&img),
            ],
        );
        assert_eq!(
            ea_list(&img, "/f"),
            [format!("  system.posix_acl_access ({})", v2.len())],
            "the old form is stored"
        );
        let stat = ok(&["stat", &format!("{}:/f", s(&img))]);
        assert!(stat.contains("system.posix_acl_access (52)"), "{stat}");
        let out = dir.path().join(format!("out-{bs}"));
        ok(&["cp", "-r", "-p", &format!("{}:/", s(&img)), s(&out)]);
        assert_eq!(getfacl(&out, &["f"], true), getfacl(&tree, &["f"], true));
        // Setting another attribute rewrites the inode's set: the ACL in ext4's form, as
        // mke2fs -d writes it.
        let reference = dir.path().join(format!("ref-{bs}.img"));
        mke2fs_d(&tree, &reference, "ext4", bs, 16 << 20, &[]);
        let want = ea_list(&reference, "/f");
        {
            let fs = ext4kit_fs::Fs::open_path(
                &img,
                &ext4kit_fs::OpenOptions {
                    writable: true,
                    ..Default::default()
                },
            )
            .unwrap();
            let f = fs.resolve(b"/f", true).unwrap();
            fs.set_xattr(f, b"user.x", b"1").unwrap();
            fs.sync().unwrap();
        }
        let mut got = ea_list(&img, "/f");
        got.retain(|l| !l.contains("user.x"));
        assert_eq!(got, want);
        // Copying onto the file with -p gives the source's set.
        ok(&["cp", "-p", s(&tree.join("f")), &format!("{}:/f", s(&img))]);
        assert_eq!(ea_list(&img, "/f"), want);
        assert_e2fsck_clean(&img);
        let m = LoopMount::new(&img, true).unwrap();
        assert_eq!(
            getfacl(m.path(), &["f"], true),
            getfacl(&tree, &["f"], true)
        );
        m.unmount().unwrap();
    }
}

/// `cp -r -p IMG:PATH DEST` into a DEST with a default ACL gives what coreutils' `cp -r -p`
/// gives from the same tree on the host: the image's ACLs (none where the image has none),
/// not ones inherited from DEST.
#[test]
fn cp_p_out_under_a_default_acl_keeps_the_images_acls_as_coreutils_does() {
    if !require_kernel("cp_p_out_under_a_default_acl_keeps_the_images_acls_as_coreutils_does") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    acl_tree(&tree);
    // Entries without ACLs in a directory with a default ACL (made before it was set).
    let plain = tree.join("plain");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("file"), b"no acl").unwrap();
    chmod(&plain.join("file"), 0o640);
    std::fs::create_dir(plain.join("dir")).unwrap();
    run_ok("setfacl", &["-d", "-m", "u:1234:rwx", s(&plain)]);
    let img = dir.path().join("p.img");
    ok(&["build", "-b", "4096", s(&tree), s(&img)]);
    let dest = |name: &str| {
        let p = dir.path().join(name);
        std::fs::create_dir(&p).unwrap();
        run_ok("setfacl", &["-d", "-m", "u:4242:rwx,g:4343:rwx", s(&p)]);
        p
    };
    let (ours, theirs) = (dest("ours"), dest("theirs"));
    ok(&[
        "cp",
        "-r",
        "-p",
        &format!("{}:/plain", s(&img)),
        &format!("{}:/d", s(&img)),
        &format!("{}:/f", s(&img)),
        s(&ours),
    ]);
    run_ok(
        "cp",
        &[
            "-r",
            "-p",
            s(&plain),
            s(&tree.join("d")),
            s(&tree.join("f")),
            s(&theirs),
        ],
    );
    let paths = [
        "plain",
        "plain/file",
        "plain/dir",
        "d",
        "d/inner",
        "d/sub",
        "f",
    ];
    assert_eq!(
        getfacl(&ours, &paths, false),
        getfacl(&theirs, &paths, false)
    );
    assert!(!getfacl(&ours, &["plain/file"], true).contains("4242"));
}

/// The library's attribute and mode calls treat ACLs as the kernel's syscalls do: chmod moves
/// the access ACL's owner, mask and other entries; setxattr of an ACL the kernel would refuse
/// is refused (and changes nothing); an empty ACL value removes the ACL.
#[test]
fn library_chmod_and_setxattr_treat_acls_as_the_kernel_does() {
    if !require_kernel("library_chmod_and_setxattr_treat_acls_as_the_kernel_does") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    acl_tree(&tree);
    let img = dir.path().join("l.img");
    ok(&["build", "-b", "4096", s(&tree), s(&img)]);
    let mut bad_order = vec![0u8; 256];
    let n =
        rustix::fs::lgetxattr(tree.join("f"), "system.posix_acl_access", &mut bad_order).unwrap();
    bad_order.truncate(n);
    bad_order.swap(4, 12); // USER_OBJ and USER change places: EINVAL for the kernel
    let before = ea_list(&img, "/d");
    {
        let fs = ext4kit_fs::Fs::open_path(
            &img,
            &ext4kit_fs::OpenOptions {
                writable: true,
                ..Default::default()
            },
        )
        .unwrap();
        let f = fs.resolve(b"/f", true).unwrap();
        let d = fs.resolve(b"/d", true).unwrap();
        let inner = fs.resolve(b"/d/inner", true).unwrap();
        fs.set_owner_mode(f, 0, 0, 0o751).unwrap();
        let e = fs
            .set_xattr(f, b"system.posix_acl_default", &bad_order)
            .unwrap_err();
        assert!(e.to_string().contains("only for directories"), "{e}");
        let e = fs
            .set_xattr(d, b"system.posix_acl_access", &bad_order)
            .unwrap_err();
        assert!(e.to_string().contains("out of order"), "{e}");
        let e = fs
            .set_xattr(
                d,
                b"system.posix_acl_access",
                &bad_order[..bad_order.len() - 3],
            )
            .unwrap_err();
        assert!(e.to_string().contains("POSIX ACL"), "{e}");
        fs.set_xattr(inner, b"system.posix_acl_access", b"")
            .unwrap();
        fs.sync().unwrap();
    }
    assert_eq!(ea_list(&img, "/d"), before, "refused calls changed d");
    assert_e2fsck_clean(&img);
    // The same through the kernel on a host copy.
    let host = dir.path().join("host");
    run_ok("cp", &["-a", s(&tree), s(&host)]);
    run_ok("chmod", &["751", s(&host.join("f"))]);
    setx(&host.join("d/inner"), "system.posix_acl_access", b"");
    let m = LoopMount::new(&img, true).unwrap();
    for p in ["f", "d", "d/inner"] {
        assert_eq!(mode_and_acl(m.path(), p), mode_and_acl(&host, p), "{p}");
    }
    m.unmount().unwrap();
}
