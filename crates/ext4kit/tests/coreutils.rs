//! Every writing verb of the CLI against coreutils on a host copy of the same tree: the same
//! operands (trailing slashes, `.` and `..`, existing targets of every type, symlinks on the
//! way, re-copying a tree onto itself as `cp -a` does, several operands some of which fail)
//! must give the same exit status (0 or not) and the same tree. Table-driven: one image and one
//! host tree take every case in turn; after each case the image is copied out with ext4kit to
//! find which case first made a difference, and at the end a kernel mount of the image (the
//! outside oracle) must show the host tree and `e2fsck -fn` must stay silent.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Output};

use ext4kit_testkit::{
    Compare, assert_e2fsck_clean, diff_trees, ext4kit_cli, kernel_snapshot, mke2fs_d,
    require_kernel, snapshot,
};

/// One case: the coreutils command and its operands, and the ext4kit command when it is not
/// the same. Operands starting with `@` name a path in the tree (`@d/x` is `HOST/d/x` for
/// coreutils and `IMG:/d/x` for ext4kit; `@` alone is the root); `%` names a path in the
/// source area on the host (the same for both).
struct Case {
    host: &'static [&'static str],
    ours: Option<&'static [&'static str]>,
    /// Compare standard output too (cat).
    stdout: bool,
}

const fn c(host: &'static [&'static str]) -> Case {
    Case {
        host,
        ours: None,
        stdout: false,
    }
}

const fn both(host: &'static [&'static str], ours: &'static [&'static str]) -> Case {
    Case {
        host,
        ours: Some(ours),
        stdout: false,
    }
}

const fn out(host: &'static [&'static str]) -> Case {
    Case {
        host,
        ours: None,
        stdout: true,
    }
}

const CASES: &[Case] = &[
    // Reading through trailing slashes, `.`, symlinks.
    out(&["cat", "@f/"]),
    out(&["cat", "@f/."]),
    out(&["cat", "@lf"]),
    out(&["cat", "@lf/"]),
    out(&["cat", "@d/x"]),
    out(&["cat", "@ld/x"]),
    out(&["cat", "@d/../f"]),
    out(&["cat", "@d"]),
    out(&["cat", "@dang"]),
    both(&["stat", "@f/"], &["stat", "@f/"]),
    both(&["stat", "@ld/"], &["stat", "@ld/"]),
    both(&["stat", "@dang/"], &["stat", "@dang/"]),
    both(&["ls", "@f/"], &["ls", "@f/"]),
    both(&["ls", "@ld/"], &["ls", "@ld/"]),
    // cp of a host file into the tree.
    c(&["cp", "%exe", "@exe"]),
    c(&["cp", "%exe", "@f"]),
    c(&["cp", "-p", "%exe", "@exe2"]),
    c(&["cp", "%f2", "@f/"]),
    c(&["cp", "%f2", "@new/"]),
    c(&["cp", "%f2", "@d/"]),
    c(&["cp", "%f2", "@d/."]),
    c(&["cp", "%f2", "@lf"]),
    c(&["cp", "%f2", "@dang"]),
    c(&["cp", "%f2", "@ld"]),
    c(&["cp", "%f3", "@ld/"]),
    c(&["cp", "%f3", "@d/.."]),
    c(&["cp", "%f2", "@nodir/f2"]),
    c(&["cp", "%f2", "@f/x"]),
    c(&["cp", "%f2", "%f3", "@f"]),
    c(&["cp", "%f2", "%f3", "@nodir/"]),
    c(&["cp", "%f2", "%nope", "%f3", "@d/sub"]),
    c(&["cp", "-r", "%dir", "@newdir/"]),
    c(&["cp", "-r", "%dir", "@newdir"]),
    c(&["cp", "-r", "%dir", "@ld/"]),
    c(&["cp", "%dir", "@d/"]),
    c(&["cp", "-r", "%dir", "@f"]),
    c(&["cp", "-r", "%dir/", "@d/sub/"]),
    // cp within the tree (within one image for ext4kit).
    c(&["cp", "@f", "@fcopy"]),
    c(&["cp", "@f", "@d/sub/"]),
    c(&["cp", "-r", "@d", "@dcopy"]),
    c(&["cp", "-r", "@d/", "@dcopy2/"]),
    c(&["cp", "@f", "@f"]),
    c(&["cp", "@f/", "@g"]),
    c(&["cp", "@nope", "@g"]),
    c(&["cp", "@lf", "@cplf"]),
    c(&["cp", "-r", "@lf", "@cplf2"]),
    c(&["cp", "@ld", "@cpld"]),
    c(&["cp", "-r", "@ld", "@cpld2"]),
    c(&["cp", "-r", "%dir/.", "@newdir5"]),
    c(&["cp", "-r", "@d/.", "@newdir6"]),
    c(&["cp", "-r", "@d/sub", "@d/sub/deeper"]),
    c(&["cp", "-r", "%dir", "@ld"]),
    // mkdir.
    c(&["mkdir", "-p", "@f"]),
    c(&["mkdir", "-p", "@d"]),
    c(&["mkdir", "@f/"]),
    c(&["mkdir", "@lf/x"]),
    c(&["mkdir", "@m1/"]),
    c(&["mkdir", "@m1", "@m2", "@m3"]),
    c(&["mkdir", "-p", "@ld/p1/p2"]),
    c(&["mkdir", "-p", "@p3/p4/"]),
    c(&["mkdir", "-p", "@dang/x"]),
    c(&["mkdir", "-p", "@f/x", "@p5"]),
    c(&["mkdir", "-p", "@d/../p6/./p7/.."]),
    c(&["mkdir", "@nodir/x", "@m4"]),
    // mv.
    c(&["mv", "@d/x/", "@y"]),
    c(&["mv", "@fcopy", "@new3/"]),
    c(&["mv", "@m2", "@m5/"]),
    c(&["mv", "@m3/", "@d/"]),
    c(&["mv", "@lf", "@ld/"]),
    c(&["mv", "@nope", "@fcopy", "@d/sub"]),
    c(&["mv", "@d/../fcopy", "@d/sub/.."]),
    c(&["mv", "@m4", "@f"]),
    c(&["mv", "@cplf", "@d"]),
    c(&["mv", "@d/cplf", "@newdir5"]),
    c(&["mv", "@cplf2", "@dang"]),
    c(&["mv", "@p5", "@m5"]),
    c(&["mv", "@d", "@d/sub/"]),
    c(&["mv", "@newdir6", "@."]),
    c(&["mv", "@newdir6/", "@newdir7/"]),
    // ln and ln -s.
    c(&["ln", "@f", "@hl/"]),
    c(&["ln", "@f", "@hl"]),
    c(&["ln", "@f/", "@hl2"]),
    c(&["ln", "@f", "@ld"]),
    c(&["ln", "@f", "@dang"]),
    c(&["ln", "-s", "f", "@sl/"]),
    c(&["ln", "-s", "f", "@d/sub/"]),
    c(&["ln", "-s", "../f", "@ld/sl2"]),
    c(&["ln", "-s", "x", "@f"]),
    c(&["ln", "-s", "y", "@dang"]),
    c(&["ln", "-s", "y", "@ld"]),
    c(&["ln", "@d/x", "@newdir7/"]),
    // rm.
    c(&["rm", "@d/sub/.."]),
    c(&["rm", "-r", "@newdir7/."]),
    c(&["rm", "@f/"]),
    c(&["rm", "@ld/"]),
    c(&["rm", "-f", "@d/x/"]),
    c(&["rm", "-f", "@nope/", "@nope", "@nodir/x"]),
    c(&["rm", "@nope", "@hl", "@d/sub"]),
    c(&["rm", "@d/.."]),
    c(&["rm", "-r", "@d/."]),
    c(&["rm", "-r", "@dcopy2/"]),
    c(&["rm", "-rf", "@nope", "@m1", "@f/x"]),
    c(&["rm", "-r", "@ld/sub"]),
    // Copying a tree in, then again after it changed: cp -a onto an existing tree.
    both(
        &["cp", "-a", "%tree/.", "@"],
        &["cp", "-r", "-p", "%tree/.", "@"],
    ),
    both(
        &["cp", "-a", "%tree/.", "@"],
        &["cp", "-r", "-p", "%tree/.", "@"],
    ),
    both(
        &["cp", "-a", "%tree2/.", "@"],
        &["cp", "-r", "-p", "%tree2/.", "@"],
    ),
    both(
        &["cp", "-a", "%tree2", "@d"],
        &["cp", "-r", "-p", "%tree2", "@d"],
    ),
    both(
        &["cp", "-a", "%tree2", "@d"],
        &["cp", "-r", "-p", "%tree2", "@d"],
    ),
    both(
        &["cp", "-a", "@tlink", "@d/"],
        &["cp", "-r", "-p", "@tlink", "@d/"],
    ),
    // Copying out of the tree into an area of the host (`^`: one area per side). ext4kit keeps
    // hard links linked whenever it copies a tree (cp -r --preserve=links).
    c(&["cp", "@f", "^of/"]),
    c(&["cp", "@f", "^onew/"]),
    c(&["cp", "@f", "^od/"]),
    c(&["cp", "@f", "^od/."]),
    c(&["cp", "@f", "^odang"]),
    c(&["cp", "@d/x", "^olf"]),
    c(&["cp", "@f", "^old/f-via-link"]),
    c(&["cp", "@f", "^of"]),
    c(&["cp", "@f", "@d/x", "^of"]),
    c(&["cp", "@f", "@nope", "@d/x", "^od/"]),
    c(&["cp", "@d", "^od/"]),
    both(
        &["cp", "-r", "--preserve=links", "@d", "^od2/"],
        &["cp", "-r", "@d", "^od2/"],
    ),
    both(
        &["cp", "-r", "--preserve=links", "@d", "^od"],
        &["cp", "-r", "@d", "^od"],
    ),
    both(
        &["cp", "-r", "--preserve=links", "@d", "^od"],
        &["cp", "-r", "@d", "^od"],
    ),
    both(
        &["cp", "-r", "--preserve=links", "@d/.", "^od3"],
        &["cp", "-r", "@d/.", "^od3"],
    ),
    both(
        &["cp", "-r", "--preserve=links", "@d", "^of"],
        &["cp", "-r", "@d", "^of"],
    ),
    c(&["cp", "-r", "@f/", "^of2"]),
    // Last: rm -r through `link/` empties the directory, then fails (as rm does).
    c(&["rm", "-r", "@ld/"]),
];

/// The tree both sides start from.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("d/sub")).unwrap();
    std::fs::write(root.join("f"), b"file f\n").unwrap();
    std::fs::write(root.join("d/x"), b"file d/x\n").unwrap();
    symlink("f", root.join("lf")).unwrap();
    symlink("d", root.join("ld")).unwrap();
    symlink("nowhere", root.join("dang")).unwrap();
    symlink("d/sub", root.join("tlink")).unwrap();
}

/// Sources on the host: files, a directory, and two trees that differ in every way a second
/// copy meets (changed file, retargeted symlink, symlink where a file was, and back, new
/// entries, a directory where a file is and a file where a directory is).
fn make_sources(src: &Path) {
    std::fs::create_dir_all(src.join("dir/inner")).unwrap();
    std::fs::write(src.join("f2"), b"source f2\n").unwrap();
    std::fs::write(src.join("f3"), b"source f3 longer\n").unwrap();
    std::fs::write(src.join("exe"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        src.join("exe"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    std::fs::write(src.join("dir/a"), b"dir/a\n").unwrap();
    std::fs::write(src.join("dir/inner/b"), b"dir/inner/b\n").unwrap();
    let t = src.join("tree");
    std::fs::create_dir_all(t.join("etc/conf.d")).unwrap();
    std::fs::write(t.join("etc/hostname"), b"one\n").unwrap();
    std::fs::write(t.join("etc/conf.d/a"), b"a\n").unwrap();
    symlink("hostname", t.join("etc/link")).unwrap();
    symlink("conf.d", t.join("etc/dirlink")).unwrap();
    std::fs::write(t.join("etc/was-file"), b"file\n").unwrap();
    // (Not to a file tree2 has: coreutils copies in readdir order, ext4kit in name order, and
    // writing through this link must not race with copying its target.)
    symlink("conf.d/a", t.join("etc/was-link")).unwrap();
    std::fs::create_dir(t.join("etc/type-clash")).unwrap();
    std::fs::write(t.join("etc/file-clash"), b"a file\n").unwrap();
    std::fs::write(t.join("etc/hl1"), b"linked\n").unwrap();
    std::fs::hard_link(t.join("etc/hl1"), t.join("etc/hl2")).unwrap();
    std::fs::set_permissions(
        t.join("etc/conf.d/a"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    let t2 = src.join("tree2");
    std::fs::create_dir_all(t2.join("etc/conf.d")).unwrap();
    std::fs::create_dir_all(t2.join("etc/file-clash")).unwrap();
    std::fs::write(t2.join("etc/hostname"), b"two, longer than one\n").unwrap();
    std::fs::write(t2.join("etc/conf.d/b"), b"b\n").unwrap();
    symlink("conf.d/b", t2.join("etc/link")).unwrap();
    symlink("hostname", t2.join("etc/was-file")).unwrap();
    std::fs::write(t2.join("etc/was-link"), b"now a file\n").unwrap();
    std::fs::write(t2.join("etc/type-clash"), b"a file where a dir is\n").unwrap();
    std::fs::write(t2.join("new-top"), b"new\n").unwrap();
    std::fs::write(t2.join("etc/hl2"), b"linked, and to was-link's name too\n").unwrap();
    std::fs::hard_link(t2.join("etc/hl2"), t2.join("etc/hl3")).unwrap();
}

fn map(arg: &str, host_root: &Path, src: &Path, img: &Path, ours: bool) -> String {
    if let Some(p) = arg.strip_prefix('@') {
        if ours {
            format!("{}:/{p}", img.display())
        } else {
            format!("{}/{p}", host_root.display())
        }
    } else if let Some(p) = arg.strip_prefix('^') {
        let area = if ours { "out-ours" } else { "out-host" };
        format!("{}/{area}/{p}", src.parent().unwrap().display())
    } else if let Some(p) = arg.strip_prefix('%') {
        format!("{}/{p}", src.display())
    } else {
        arg.to_string()
    }
}

fn status(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// The image's tree as ext4kit copies it out (to find the first case that made a difference).
fn ours_now(img: &Path, scratch: &Path) -> ext4kit_testkit::Tree {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir(scratch).unwrap();
    let o = ext4kit_cli!()
        .command()
        .args(["cp", "-r", "-p"])
        .arg(format!("{}:/", img.display()))
        .arg(scratch)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "copy out: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    snapshot(scratch)
}

const CMP: Compare = Compare {
    mtime: false,
    mtime_ns: false,
    dir_mtime: false,
    owner: true,
    xattrs: false,
};

#[test]
fn every_verb_gives_what_coreutils_gives_on_a_host_copy() {
    if !require_kernel("every_verb_gives_what_coreutils_gives_on_a_host_copy") {
        return;
    }
    // Both sides create with the same umask (not the usual 022, so that it is seen).
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o027));
    for bs in [4096u32, 1024] {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host");
        let src = dir.path().join("src");
        let scratch = dir.path().join("out");
        make_tree(&host);
        make_sources(&src);
        // The areas copies out go to: a file, a directory, symlinks to both, a dangling one.
        for area in ["out-host", "out-ours"] {
            let a = dir.path().join(area);
            std::fs::create_dir_all(a.join("od")).unwrap();
            std::fs::write(a.join("of"), b"host file\n").unwrap();
            symlink("of", a.join("olf")).unwrap();
            symlink("od", a.join("old")).unwrap();
            symlink("nowhere", a.join("odang")).unwrap();
        }
        let img = dir.path().join("t.img");
        mke2fs_d(&host, &img, "ext4", bs, 8 << 20, &[]);
        let mut problems: Vec<String> = Vec::new();
        let mut known: Vec<String> = diff_trees(&snapshot(&host), &ours_now(&img, &scratch), CMP);
        assert!(
            known.is_empty(),
            "{bs}: the image does not start as the host tree: {known:?}"
        );
        for (n, case) in CASES.iter().enumerate() {
            let host_args: Vec<String> = case.host[1..]
                .iter()
                .map(|a| map(a, &host, &src, &img, false))
                .collect();
            let ours_tpl = case.ours.unwrap_or(case.host);
            let ours_args: Vec<String> = ours_tpl
                .iter()
                .map(|a| map(a, &host, &src, &img, true))
                .collect();
            let h = Command::new(case.host[0])
                .args(&host_args)
                .current_dir(&host)
                .output()
                .unwrap();
            // The binary under test (`EXT4KIT_BIN` runs the comparison against another build).
            let o = ext4kit_cli!().output(&ours_args);
            let shown = format!("#{n} {}", case.host.join(" "));
            let herr = String::from_utf8_lossy(&h.stderr).replace(&host.display().to_string(), "");
            let oerr =
                String::from_utf8_lossy(&o.stderr).replace(&img.display().to_string(), "IMG");
            if (status(&h) == 0) != (status(&o) == 0) {
                problems.push(format!(
                    "{shown}: exit {} (coreutils: {}) vs {} (ext4kit: {})",
                    status(&h),
                    herr.trim(),
                    status(&o),
                    oerr.trim()
                ));
            }
            if status(&o) != 0 {
                // Every error is `ext4kit: ...` lines, one per failed operand, no os error numbers.
                for line in oerr.lines() {
                    if !line.starts_with("ext4kit: ") || line.contains("os error") {
                        problems.push(format!("{shown}: error line {line:?}"));
                    }
                }
            }
            if case.stdout && h.stdout != o.stdout {
                problems.push(format!(
                    "{shown}: output differs: {:?} vs {:?}",
                    String::from_utf8_lossy(&h.stdout),
                    String::from_utf8_lossy(&o.stdout)
                ));
            }
            // Case by case at 4 KiB blocks only (the suite's time): 1 KiB blocks are checked by
            // exit status per case and by the kernel mount at the end.
            if bs != 4096 {
                continue;
            }
            let now = diff_trees(&snapshot(&host), &ours_now(&img, &scratch), CMP);
            for d in &now {
                if !known.contains(d) {
                    problems.push(format!("{shown}: tree: {d}"));
                }
            }
            known = now;
        }
        for d in diff_trees(
            &snapshot(&dir.path().join("out-host")),
            &snapshot(&dir.path().join("out-ours")),
            CMP,
        ) {
            problems.push(format!("copied out: {d}"));
        }
        assert_e2fsck_clean(&img);
        let kernel = kernel_snapshot(&img);
        let cmp = Compare {
            xattrs: true,
            ..CMP
        };
        for d in diff_trees(&snapshot(&host), &kernel, cmp) {
            problems.push(format!("kernel mount differs from the host tree: {d}"));
        }
        assert!(
            problems.is_empty(),
            "{bs}: ext4kit differs from coreutils:\n{}",
            problems.join("\n")
        );
    }
}
