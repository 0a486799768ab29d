//! The `ext4kit` binary against real images made at test time: `cp -r -p IMG:/ OUT` equals
//! the source tree (or the kernel mount's view) for every fixture; `info`, `ls`, `stat`, `cat`
//! agree with `dumpe2fs` / `debugfs`; errors are one line with a non-zero exit.
//!
//! Fixtures (never committed): `mke2fs -d` of a generated tree at 1, 2 and 4 KiB blocks, without
//! metadata_csum/64bit, ext2, ext3; `e2fsck -fyD` copies for indexed directories; an image
//! written through a kernel loop mount with fragmented files; an image copied while mounted
//! whose journal needs recovery. Without root / e2fsprogs the tests skip with a note
//! (`EXT4KIT_REQUIRE_KERNEL=1` makes that a failure).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use ext4kit_testkit::{
    Compare, Kind, LoopMount, Mke2fs, Tree, TreeOptions, debugfs, diff_trees, dumpe2fs_header,
    ext4kit_cli, field, generate_tree, kernel_snapshot, mke2fs_d, os, process_temp_dir,
    require_kernel, run_ok, snapshot,
};

fn ext4kit(args: &[&std::ffi::OsStr]) -> Output {
    ext4kit_cli!().output(args)
}

fn ext4kit_ok(args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let out = ext4kit(args);
    assert!(
        out.status.success(),
        "ext4kit {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn make_tree(xattrs: bool) -> (PathBuf, Tree) {
    let dir = process_temp_dir("ext4kit-cli-tree-").join("tree");
    fs::create_dir(&dir).unwrap();
    generate_tree(
        &dir,
        7,
        &TreeOptions {
            xattrs,
            ..TreeOptions::default()
        },
    );
    let t = snapshot(&dir);
    (dir, t)
}

/// The generated source tree, once per process.
fn source_tree() -> &'static (PathBuf, Tree) {
    static CELL: OnceLock<(PathBuf, Tree)> = OnceLock::new();
    CELL.get_or_init(|| make_tree(true))
}

/// The same without xattrs (the 1.5 KB one does not fit a 1 KiB xattr block).
fn source_tree_small_xattrs() -> &'static (PathBuf, Tree) {
    static CELL: OnceLock<(PathBuf, Tree)> = OnceLock::new();
    CELL.get_or_init(|| make_tree(false))
}

fn tree_for(bs: u32) -> &'static (PathBuf, Tree) {
    if bs < 2048 {
        source_tree_small_xattrs()
    } else {
        source_tree()
    }
}

fn mkfs_image(name: &str, fs_type: &str, bs: u32, extra: &[&str], index_dirs: bool) -> PathBuf {
    let (tree, _) = tree_for(bs);
    let dir = process_temp_dir("ext4kit-cli-img-");
    let img = dir.join(format!("{name}.img"));
    mke2fs_d(tree, &img, fs_type, bs, 96 << 20, extra);
    if index_dirs {
        ext4kit_testkit::e2fsck_repair(&img, "-fyD");
    }
    ext4kit_testkit::assert_e2fsck_clean(&img);
    img
}

/// `ext4kit cp -r -p [--all-xattrs] IMG:/ OUT`, and the snapshot of OUT.
fn copy_out(img: &Path, all_xattrs: bool) -> (PathBuf, Tree) {
    let out = process_temp_dir("ext4kit-cli-out-").join("out");
    let spec = format!("{}:/", img.display());
    let mut args = vec![os("cp"), os("-r"), os("-p")];
    if all_xattrs {
        args.push(os("--all-xattrs"));
    }
    args.extend([os(&spec), out.as_os_str()]);
    ext4kit_ok(&args);
    let t = snapshot(&out);
    (out, t)
}

/// Checks that sparse files of the copy are sparse (no more blocks allocated than the source).
fn assert_sparse(src: &Path, out: &Path, skip: &[&str]) {
    for name in ["hole-start", "hole-middle", "hole-end", "all-hole"] {
        if skip.iter().any(|s| s.ends_with(name)) {
            continue;
        }
        let s = fs::metadata(src.join("sparse").join(name)).unwrap();
        let o = fs::metadata(out.join("sparse").join(name)).unwrap();
        assert_eq!(s.len(), o.len());
        assert!(
            o.blocks() <= s.blocks() + 16,
            "{name}: copy has {} blocks, source {} (not sparse)",
            o.blocks(),
            s.blocks()
        );
        assert!(
            o.blocks() * 512 < o.len(),
            "{name} is not sparse in the copy"
        );
    }
}

fn roundtrip(name: &str, fs_type: &str, bs: u32, extra: &[&str], index_dirs: bool) {
    roundtrip_except(name, fs_type, bs, extra, index_dirs, &[]);
}

/// `skip`: paths the image does not hold faithfully (mke2fs bugs; checked against debugfs).
fn roundtrip_except(
    name: &str,
    fs_type: &str,
    bs: u32,
    extra: &[&str],
    index_dirs: bool,
    skip: &[&str],
) {
    if !require_kernel(name) {
        return;
    }
    let (tree, want) = tree_for(bs);
    let mut want = want.clone();
    for p in skip {
        want.remove(p.as_bytes());
    }
    let want = &want;
    let img = mkfs_image(name, fs_type, bs, extra, index_dirs);
    let (out, mut got) = copy_out(&img, true);
    for p in skip {
        let size = fs::metadata(out.join(p)).unwrap().len();
        let st: serde_json::Value = serde_json::from_slice(&ext4kit_ok(&[
            os("stat"),
            os("--json"),
            os(&format!("{}:/{p}", img.display())),
        ]))
        .unwrap();
        assert_eq!(st["size"].as_u64(), Some(size), "{p}");
        got.remove(p.as_bytes());
    }
    // mke2fs -d 1.47 drops nanoseconds.
    let cmp = Compare {
        mtime_ns: false,
        ..Compare::default()
    };
    let d = diff_trees(want, &got, cmp);
    assert!(
        d.is_empty(),
        "{name}: copy differs from the source:\n{}",
        d.join("\n")
    );
    assert_sparse(tree, &out, skip);
    // Plain -p keeps only user.* xattrs.
    let (_, mut got_user) = copy_out(&img, false);
    for p in skip {
        got_user.remove(p.as_bytes());
    }
    let mut want_user = want.clone();
    for e in want_user.values_mut() {
        e.xattrs.retain(|k, _| k.starts_with(b"user."));
    }
    let d = diff_trees(&want_user, &got_user, cmp);
    assert!(
        d.is_empty(),
        "{name} (-p, user xattrs only):\n{}",
        d.join("\n")
    );
}

#[test]
fn cp_out_of_ext4_4k_htree_image_equals_the_source_tree() {
    roundtrip("ext4-4k-htree", "ext4", 4096, &[], true);
}

#[test]
fn cp_out_of_ext4_4k_linear_dir_image_equals_the_source_tree() {
    roundtrip("ext4-4k-linear", "ext4", 4096, &[], false);
}

#[test]
fn cp_out_of_ext4_2k_image_equals_the_source_tree() {
    roundtrip("ext4-2k", "ext4", 2048, &[], true);
}

#[test]
fn cp_out_of_ext4_1k_image_equals_the_source_tree() {
    roundtrip("ext4-1k", "ext4", 1024, &[], true);
}

#[test]
fn cp_out_of_ext4_without_csum_and_64bit_equals_the_source_tree() {
    roundtrip(
        "ext4-nocsum",
        "ext4",
        4096,
        &["-O", "^metadata_csum,^64bit"],
        true,
    );
}

#[test]
fn cp_out_of_ext4_inline_data_image_equals_the_source_tree() {
    // mke2fs 1.47.0 -d with inline_data records sparse/hole-end (7000 bytes then a 5 MiB hole)
    // with i_size 8192: the image, and debugfs, say 8192.
    roundtrip_except(
        "ext4-inline",
        "ext4",
        4096,
        &["-O", "inline_data"],
        true,
        &["sparse/hole-end"],
    );
}

#[test]
fn cp_out_of_ext4_meta_bg_image_equals_the_source_tree() {
    roundtrip(
        "ext4-metabg",
        "ext4",
        4096,
        &["-O", "meta_bg,^resize_inode", "-g", "4096"],
        true,
    );
}

#[test]
fn cp_out_of_ext2_image_equals_the_source_tree() {
    roundtrip("ext2", "ext2", 1024, &[], true);
}

#[test]
fn cp_out_of_ext3_image_equals_the_source_tree() {
    roundtrip("ext3", "ext3", 4096, &[], true);
}

/// Writes through a kernel mount: the generated tree plus fragmented files (interleaved
/// appends, each synced), so extent trees reach depth ≥ 1 with more than 4 extents.
fn kernel_image(dir: &Path) -> (PathBuf, LoopMount) {
    let img = Mke2fs::new(dir.join("kernel.img"))
        .block_size(4096)
        .size(128 << 20)
        .features("inline_data")
        .no_lazy_init()
        .run();
    let m = LoopMount::new(&img, false).unwrap();
    let (tree, _) = source_tree();
    run_ok(
        "cp",
        &[
            "-a",
            &format!("{}/.", tree.display()),
            m.path().to_str().unwrap(),
        ],
    );
    let frag = m.path().join("fragmented");
    fs::create_dir(&frag).unwrap();
    let mut files: Vec<fs::File> = (0..4)
        .map(|i| fs::File::create(frag.join(format!("f{i}"))).unwrap())
        .collect();
    for round in 0..40u64 {
        for (i, f) in files.iter_mut().enumerate() {
            use std::io::Write;
            f.write_all(&ext4kit_testkit::pattern(round * 10 + i as u64, 4096 + 512))
                .unwrap();
            f.sync_data().unwrap();
        }
    }
    drop(files);
    run_ok("sync", &[]);
    (img, m)
}

/// Number of extents and the tree depth of `path`, from `debugfs -R "ex PATH"`.
fn debugfs_extents(img: &Path, path: &str) -> (usize, usize) {
    let out = debugfs(img, &format!("ex {path}"));
    let mut leaves = 0;
    let mut depth = 0;
    for l in out.lines().skip(1) {
        let cols: Vec<&str> = l.split_whitespace().collect();
        if cols.len() < 2 {
            continue;
        }
        // " 0/ 1   1/  1 ..." : level/max-level
        let Some((lv, max)) = cols[0].split_once('/').and_then(|(a, _)| {
            Some((
                a.trim().parse::<usize>().ok()?,
                l.split('/')
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<usize>()
                    .ok()?,
            ))
        }) else {
            continue;
        };
        depth = depth.max(max);
        if lv == max {
            leaves += 1;
        }
    }
    (leaves, depth)
}

#[test]
fn cp_out_of_a_fragmented_kernel_written_image_equals_the_tree_and_stat_extents() {
    if !require_kernel(
        "cp_out_of_a_fragmented_kernel_written_image_equals_the_tree_and_stat_extents",
    ) {
        return;
    }
    let dir = process_temp_dir("ext4kit-cli-kernel-");
    let (img, m) = kernel_image(&dir);
    let want = snapshot(m.path());
    m.unmount().unwrap();
    ext4kit_testkit::assert_e2fsck_clean(&img);
    let (extents, depth) = debugfs_extents(&img, "/fragmented/f0");
    assert!(
        extents > 4 && depth >= 1,
        "fixture not fragmented enough: {extents} extents, depth {depth}"
    );
    let (_, got) = copy_out(&img, true);
    let d = diff_trees(&want, &got, Compare::default());
    assert!(d.is_empty(), "kernel image copy differs:\n{}", d.join("\n"));
    // stat --json reports the same extents as the walk the copy used.
    let st: serde_json::Value = serde_json::from_slice(&ext4kit_ok(&[
        os("stat"),
        os("--json"),
        os(&format!("{}:/fragmented/f0", img.display())),
    ]))
    .unwrap();
    assert!(st["extents"].as_array().unwrap().len() >= extents, "{st}");
}

#[test]
fn journal_needing_recovery_is_replayed_in_memory() {
    if !require_kernel("journal_needing_recovery_is_replayed_in_memory") {
        return;
    }
    let dir = process_temp_dir("ext4kit-cli-journal-");
    let img = Mke2fs::new(dir.join("j.img"))
        .block_size(4096)
        .size(64 << 20)
        .no_lazy_init()
        .run();
    let m = LoopMount::new(&img, false).unwrap();
    let p = m.path();
    fs::create_dir(p.join("before")).unwrap();
    fs::write(p.join("before/kept"), b"kept").unwrap();
    fs::write(p.join("before/removed"), b"gone soon").unwrap();
    run_ok("sync", &[]);
    // Transactions committed to the journal but not checkpointed when the copy is taken:
    // fsync commits without writing the metadata home (sync(1) would write it home too).
    let fsync_dir = |d: &Path| fs::File::open(d).unwrap().sync_all().unwrap();
    fs::create_dir(p.join("after")).unwrap();
    for i in 0..100 {
        let f = p.join(format!("after/file-{i:03}"));
        fs::write(&f, ext4kit_testkit::pattern(i, (i as usize * 37) % 9000)).unwrap();
        fs::File::open(&f).unwrap().sync_all().unwrap();
    }
    fs::remove_file(p.join("before/removed")).unwrap();
    fs::rename(p.join("before/kept"), p.join("after/renamed")).unwrap();
    fsync_dir(&p.join("before"));
    fsync_dir(&p.join("after"));
    fsync_dir(p);
    let want = snapshot(p);
    let copy = dir.join("copy.img");
    fs::copy(&img, &copy).unwrap();
    m.unmount().unwrap();
    let hdr = run_ok("dumpe2fs", &["-h", copy.to_str().unwrap()]);
    assert!(
        hdr.contains("needs_recovery"),
        "the copy does not need recovery:\n{hdr}"
    );
    let before = fs::read(&copy).unwrap();
    // cp replays in memory and says so on stderr.
    let out = process_temp_dir("ext4kit-cli-jout-").join("out");
    let o = ext4kit(&[
        os("cp"),
        os("-r"),
        os("-p"),
        os(&format!("{}:/", copy.display())),
        out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("journal needed recovery: replayed") && stderr.lines().count() == 1,
        "{stderr}"
    );
    let got = snapshot(&out);
    let d = diff_trees(&want, &got, Compare::default());
    assert!(
        d.is_empty(),
        "replayed copy differs from the mount:\n{}",
        d.join("\n")
    );
    assert!(fs::read(&copy).unwrap() == before, "the image was modified");
    // Without replay the newest transactions are missing.
    let o = ext4kit(&[
        os("--no-replay"),
        os("ls"),
        os(&format!("{}:/after", copy.display())),
    ]);
    let listed = String::from_utf8_lossy(&o.stdout).lines().count();
    assert!(
        !o.status.success() || listed < 101,
        "the image already held everything; the test proves nothing"
    );
    let info: serde_json::Value =
        serde_json::from_slice(&ext4kit_ok(&[os("info"), os("--json"), copy.as_os_str()])).unwrap();
    assert!(
        info["journal_replayed_in_memory"].as_u64().unwrap() >= 1,
        "{info}"
    );

    // Writing refuses such an image with what to do, and leaves it alone...
    let new_dir = format!("{}:/made-after-replay", copy.display());
    let new_dir = os(&new_dir);
    let o = ext4kit(&[os("mkdir"), new_dir]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "writing an image that needs recovery was not refused"
    );
    assert!(
        stderr.lines().count() == 1
            && stderr.contains("journal needs recovery")
            && stderr.contains("--replay-journal")
            && stderr.contains("e2fsck -fy"),
        "{stderr}"
    );
    assert!(
        fs::read(&copy).unwrap() == before,
        "a refused write modified the image"
    );
    // ...until asked to replay it: then the journal goes home, the change follows, e2fsck is
    // content and the kernel sees the mount's tree plus the new directory.
    let o = ext4kit(&[os("--replay-journal"), os("mkdir"), new_dir]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.lines().count() == 1 && stderr.contains("onto the image"),
        "{stderr}"
    );
    ext4kit_testkit::assert_e2fsck_clean(&copy);
    let hdr = run_ok("dumpe2fs", &["-h", copy.to_str().unwrap()]);
    assert!(!hdr.contains("needs_recovery"), "{hdr}");
    let mut got = kernel_snapshot(&copy);
    let made = got
        .remove(b"made-after-replay".as_slice())
        .expect("the new directory");
    assert_eq!(made.kind, ext4kit_testkit::Kind::Dir);
    let d = diff_trees(&want, &got, Compare::default());
    assert!(
        d.is_empty(),
        "after the replay the kernel sees:\n{}",
        d.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// info / ls / stat / cat against dumpe2fs / debugfs.

fn shared_image() -> Option<&'static PathBuf> {
    static CELL: OnceLock<Option<PathBuf>> = OnceLock::new();
    CELL.get_or_init(|| {
        require_kernel("cli oracles").then(|| mkfs_image("oracle", "ext4", 4096, &[], true))
    })
    .as_ref()
}

#[test]
fn info_agrees_with_dumpe2fs() {
    let Some(img) = shared_image() else { return };
    let want = dumpe2fs_header(img);
    let text = String::from_utf8(ext4kit_ok(&[os("info"), img.as_os_str()])).unwrap();
    let got: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    for key in [
        "Filesystem volume name",
        "Filesystem UUID",
        "Filesystem features",
        "Inode count",
        "Block count",
        "Reserved block count",
        "Free blocks",
        "Free inodes",
        "First block",
        "Block size",
        "Blocks per group",
        "Inodes per group",
        "Inode size",
        "First inode",
        "Reserved GDT blocks",
        "Default directory hash",
        "Directory Hash Seed",
        "Journal inode",
        "Checksum type",
        "Checksum",
        "Filesystem state",
    ] {
        assert_eq!(got.get(key), want.get(key), "info field {key:?}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&ext4kit_ok(&[os("info"), os("--json"), img.as_os_str()])).unwrap();
    assert_eq!(json["block_count"].to_string(), want["Block count"]);
    assert_eq!(json["filesystem_uuid"], want["Filesystem UUID"].as_str());
    assert_eq!(json["free_inodes"].to_string(), want["Free inodes"]);
}

/// `debugfs -R "ls -p DIR"`: name → (ino, mode, uid, gid, size).
fn debugfs_ls(img: &Path, dir: &str) -> BTreeMap<Vec<u8>, (u64, u64, u64, u64, u64)> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("ls -p {dir}")])
        .arg(img)
        .output()
        .unwrap();
    let mut m = BTreeMap::new();
    for line in out.stdout.split(|&b| b == b'\n') {
        // /ino/mode/uid/gid/name/size/
        if !line.starts_with(b"/") || line.len() < 3 {
            continue;
        }
        let inner = &line[1..line.len() - 1];
        let parts: Vec<&[u8]> = inner.split(|&b| b == b'/').collect();
        if parts.len() < 6 {
            continue;
        }
        let n = |b: &[u8]| -> u64 { std::str::from_utf8(b).unwrap().parse().unwrap_or(0) };
        let name = parts[4..parts.len() - 1].join(&b'/');
        if name == b"." || name == b".." {
            continue;
        }
        m.insert(
            name,
            (
                n(parts[0]),
                u64::from_str_radix(std::str::from_utf8(parts[1]).unwrap(), 8).unwrap(),
                n(parts[2]),
                n(parts[3]),
                n(parts[parts.len() - 1]),
            ),
        );
    }
    m
}

#[test]
fn ls_agrees_with_debugfs() {
    let Some(img) = shared_image() else { return };
    for dir in ["/", "/files", "/links", "/names", "/bigdir", "/modes"] {
        let want = debugfs_ls(img, dir);
        let v: serde_json::Value = serde_json::from_slice(&ext4kit_ok(&[
            os("ls"),
            os("--json"),
            os(&format!("{}:{dir}", img.display())),
        ]))
        .unwrap();
        let mut got = BTreeMap::new();
        for e in v.as_array().unwrap() {
            let name = match e.get("name_hex") {
                Some(h) => (0..h.as_str().unwrap().len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&h.as_str().unwrap()[i..i + 2], 16).unwrap())
                    .collect(),
                None => e["name"].as_str().unwrap().as_bytes().to_vec(),
            };
            let mode = u64::from_str_radix(e["mode"].as_str().unwrap(), 8).unwrap();
            let ft = match e["type"].as_str().unwrap() {
                "regular" => 0o100000,
                "directory" => 0o40000,
                "symlink" => 0o120000,
                "character device" => 0o20000,
                "block device" => 0o60000,
                "fifo" => 0o10000,
                _ => 0o140000,
            };
            // debugfs ls -p prints sizes of regular files only.
            let size = if ft == 0o100000 {
                e["size"].as_u64().unwrap()
            } else {
                0
            };
            got.insert(
                name,
                (
                    e["ino"].as_u64().unwrap(),
                    ft | mode,
                    e["uid"].as_u64().unwrap(),
                    e["gid"].as_u64().unwrap(),
                    size,
                ),
            );
        }
        let mut want = want;
        for v in want.values_mut() {
            if v.1 & 0o170000 != 0o100000 {
                v.4 = 0;
            }
        }
        assert_eq!(got, want, "ls {dir}");
        // Plain ls: one sorted name per line.
        let plain = ext4kit_ok(&[os("ls"), os(&format!("{}:{dir}", img.display()))]);
        let names: Vec<&[u8]> = plain
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(names.len(), want.len(), "plain ls {dir}");
    }
    let long = String::from_utf8_lossy(&ext4kit_ok(&[
        os("ls"),
        os("-l"),
        os(&format!("{}:/links", img.display())),
    ]))
    .into_owned();
    assert!(
        long.lines()
            .any(|l| l.starts_with("lrwxrwxrwx") && l.ends_with("fast -> ../files/size-1")),
        "{long}"
    );
}

/// `debugfs -R "stat PATH"` key numbers.
fn debugfs_stat(img: &Path, path: &str) -> String {
    debugfs(img, &format!("stat {path}"))
}

#[test]
fn stat_and_cat_agree_with_debugfs() {
    let Some(img) = shared_image() else { return };
    let (tree, _) = source_tree();
    for path in [
        "/files/size-4097",
        "/files/size-1048577",
        "/hardlinks/one",
        "/links/slow",
        "/links/fast",
        "/sparse/hole-middle",
        "/bigdir",
        "/xattrs/big",
    ] {
        let d = debugfs_stat(img, path);
        let v: serde_json::Value = serde_json::from_slice(&ext4kit_ok(&[
            os("stat"),
            os("--json"),
            os(&format!("{}:{path}", img.display())),
        ]))
        .unwrap();
        assert_eq!(v["ino"].to_string(), field(&d, "Inode:"), "{path}");
        assert_eq!(v["links"].to_string(), field(&d, "Links:"), "{path}");
        assert_eq!(v["size"].to_string(), field(&d, "Size:"), "{path}");
        assert_eq!(v["uid"].to_string(), field(&d, "User:"), "{path}");
        assert_eq!(
            v["blocks_512"].to_string(),
            field(&d, "Blockcount:"),
            "{path}"
        );
        let mtime = field(&d, "mtime:");
        let secs = i64::from_str_radix(
            mtime.trim_start_matches("0x").split(':').next().unwrap(),
            16,
        )
        .unwrap();
        assert_eq!(
            v["mtime"]["sec"].as_i64().unwrap() as i32 as i64,
            secs as i32 as i64,
            "{path}"
        );
        if path.starts_with("/links") {
            let target = fs::read_link(tree.join(&path[1..])).unwrap();
            assert_eq!(
                v["target"].as_str().unwrap().as_bytes(),
                target.as_os_str().as_bytes()
            );
        }
        if path.starts_with("/files") || path.starts_with("/sparse") {
            let data = ext4kit_ok(&[os("cat"), os(&format!("{}:{path}", img.display()))]);
            assert_eq!(data, fs::read(tree.join(&path[1..])).unwrap(), "cat {path}");
        }
    }
    let text = String::from_utf8(ext4kit_ok(&[
        os("stat"),
        os(&format!("{}:/xattrs/big", img.display())),
    ]))
    .unwrap();
    assert!(
        text.contains("user.big (") && text.contains("EXTENTS:"),
        "{text}"
    );
    // cat follows a symlink to a file.
    assert_eq!(
        ext4kit_ok(&[os("cat"), os(&format!("{}:/links/fast", img.display()))]),
        fs::read(tree.join("files/size-1")).unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// Errors: one line on stderr, non-zero exit.

fn assert_fails(args: &[&std::ffi::OsStr], needle: &str) {
    let o = ext4kit(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} succeeded");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(
        err.starts_with("ext4kit: ") && err.contains(needle),
        "{args:?}: {err}"
    );
}

#[test]
fn errors_are_one_line_with_nonzero_exit() {
    let Some(img) = shared_image() else { return };
    let i = |p: &str| format!("{}:{p}", img.display());
    assert_fails(
        &[os("cat"), os(&i("/no/such/file"))],
        "/no: no such file or directory",
    );
    assert_fails(
        &[os("ls"), os(&i("/files/size-1/x"))],
        "/files/size-1: not a directory",
    );
    assert_fails(&[os("cat"), os(&i("/files"))], "is a directory");
    assert_fails(
        &[os("stat"), os(&i("/files/nope"))],
        "no such file or directory",
    );
    let out = process_temp_dir("ext4kit-cli-err-");
    assert_fails(
        &[os("cp"), os(&i("/files")), out.join("x").as_os_str()],
        "omitting directory",
    );
    assert_fails(&[os("info"), os("/nonexistent/image.img")], "cannot open");
    let bad = out.join("bad.img");
    fs::write(&bad, vec![0x5Au8; 1 << 20]).unwrap();
    assert_fails(&[os("info"), bad.as_os_str()], "superblock magic");
    let short = out.join("short.img");
    fs::write(&short, &fs::read(img).unwrap()[..1 << 20]).unwrap();
    assert_fails(&[os("ls"), short.as_os_str()], "image truncated");
    // --help teaches: the IMG:PATH form and examples.
    let help = String::from_utf8(ext4kit_ok(&[os("--help")])).unwrap();
    assert!(
        help.contains("IMG:PATH") && help.contains("Examples"),
        "{help}"
    );
    let help = String::from_utf8(ext4kit_ok(&[os("cp"), os("--help")])).unwrap();
    assert!(help.contains("IMG:/ copies the root's contents"), "{help}");
}

#[test]
fn cp_single_files_and_into_directories() {
    let Some(img) = shared_image() else { return };
    let (tree, _) = source_tree();
    let out = process_temp_dir("ext4kit-cli-cp-");
    let i = |p: &str| format!("{}:{p}", img.display());
    ext4kit_ok(&[
        os("cp"),
        os(&i("/files/size-4096")),
        out.join("renamed").as_os_str(),
    ]);
    assert_eq!(
        fs::read(out.join("renamed")).unwrap(),
        fs::read(tree.join("files/size-4096")).unwrap()
    );
    ext4kit_ok(&[
        os("cp"),
        os(&i("/files/size-1")),
        os(&i("/links/fast")),
        out.as_os_str(),
    ]);
    assert_eq!(
        fs::read(out.join("size-1")).unwrap(),
        fs::read(tree.join("files/size-1")).unwrap()
    );
    // Without -r a command-line symlink is followed (as cp does).
    assert!(fs::symlink_metadata(out.join("fast")).unwrap().is_file());
    ext4kit_ok(&[
        os("cp"),
        os("-r"),
        os(&i("/deep")),
        out.join("deepcopy").as_os_str(),
    ]);
    let mut p = out.join("deepcopy");
    for l in 0..40 {
        p = p.join(format!("level{l:02}"));
    }
    assert_eq!(fs::read(p.join("bottom.txt")).unwrap(), b"the bottom\n");
    // Several sources need a directory.
    assert_fails(
        &[
            os("cp"),
            os(&i("/files/size-1")),
            os(&i("/files/size-2")),
            out.join("renamed").as_os_str(),
        ],
        "not a directory",
    );
    // Without -p: modes as coreutils cp gives them (source bits under the umask, set-id bits
    // dropped), for new files and again when overwriting them.
    let host = out.join("host-modes");
    let st = Command::new("cp")
        .arg("-r")
        .arg(tree.join("modes"))
        .arg(&host)
        .status()
        .unwrap();
    assert!(st.success());
    ext4kit_ok(&[
        os("cp"),
        os("-r"),
        os(&i("/modes")),
        out.join("modes-np").as_os_str(),
    ]);
    for round in 0..2 {
        for name in ["m600", "m755", "m4755", "m2711", "m000"] {
            let dest = out.join("modes-np").join(name);
            if round == 1 {
                // Over the file the first round made (opened, truncated, chmod after).
                ext4kit_ok(&[
                    os("cp"),
                    os(&i(&format!("/modes/{name}"))),
                    dest.as_os_str(),
                ]);
            }
            let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
            let (ours, theirs) = (mode(&dest), mode(&host.join(name)));
            assert_eq!(
                ours, theirs,
                "round {round}: {name}: ext4kit {ours:o}, cp {theirs:o}"
            );
            assert_eq!(fs::read(&dest).unwrap(), name.as_bytes());
        }
    }
    let k = Kind::Dir;
    assert_eq!(k, Kind::Dir);
}

/// An image whose names try to escape: an entry renamed to `..`, one containing `/`, and a
/// directory renamed to the name of a symlink pointing outside DEST (duplicate names).
#[test]
fn cp_never_writes_outside_dest() {
    if !require_kernel("cp_never_writes_outside_dest") {
        return;
    }
    let dir = process_temp_dir("ext4kit-cli-evil-");
    let victim = dir.join("victim");
    fs::create_dir(&victim).unwrap();
    let tree = dir.join("tree");
    fs::create_dir(&tree).unwrap();
    std::os::unix::fs::symlink(&victim, tree.join("s1")).unwrap();
    fs::create_dir(tree.join("s2")).unwrap();
    fs::write(tree.join("s2/payload"), b"must stay inside").unwrap();
    fs::write(tree.join("zz"), b"dotdot").unwrap();
    fs::create_dir(tree.join("sub")).unwrap();
    fs::write(tree.join("sub/q0q"), b"slash").unwrap();
    fs::write(tree.join("sub/kept"), b"beside the bad name").unwrap();
    let img = dir.join("evil.img");
    mke2fs_d(
        &tree,
        &img,
        "ext4",
        4096,
        16 << 20,
        &["-O", "^metadata_csum,^64bit,^dir_index"],
    );
    // Rename entries in the root's (linear, checksum-free) directory block.
    let spec = format!("{}:/", img.display());
    let v: serde_json::Value =
        serde_json::from_slice(&ext4kit_ok(&[os("stat"), os("--json"), os(&spec)])).unwrap();
    let root_block = v["extents"][0]["physical"].as_u64().unwrap() as usize;
    let v: serde_json::Value = serde_json::from_slice(&ext4kit_ok(&[
        os("stat"),
        os("--json"),
        os(&format!("{spec}sub")),
    ]))
    .unwrap();
    let sub_block = v["extents"][0]["physical"].as_u64().unwrap() as usize;
    let mut bytes = fs::read(&img).unwrap();
    let mut patch = |block: usize, from: &[u8], to: &[u8]| {
        let blk = &mut bytes[block * 4096..(block + 1) * 4096];
        let at = blk.windows(from.len()).position(|w| w == from).unwrap();
        blk[at..at + to.len()].copy_from_slice(to);
    };
    patch(root_block, b"s2", b"s1");
    patch(root_block, b"zz", b"..");
    patch(sub_block, b"q0q", b"q/q");
    fs::write(&img, &bytes).unwrap();
    let out = dir.join("out");
    let o = ext4kit(&[os("cp"), os("-r"), os("-p"), os(&spec), out.as_os_str()]);
    assert!(!o.status.success(), "refused names must make cp fail");
    let err = String::from_utf8_lossy(&o.stderr);
    // The duplicate `s1` (a directory after the symlink) is refused, the `/` name is reported
    // as corruption, the fake `..` is skipped like the real one.
    assert!(
        err.contains("out/s1: open directory") && err.contains("invalid name \"q/q\""),
        "{err}"
    );
    // The entry with `/` is reported; the rest of its directory is copied.
    assert_eq!(
        fs::read(out.join("sub/kept")).unwrap(),
        b"beside the bad name"
    );
    assert_eq!(fs::read_dir(out.join("sub")).unwrap().count(), 1);
    // `ls` lists what it can and names the damaged entry, exit status 1.
    let o = ext4kit(&[os("ls"), os(&format!("{spec}sub"))]);
    assert!(!o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "kept\n");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.lines().count() == 1 && e.contains("invalid name \"q/q\"") && e.contains("block"),
        "{e}"
    );
    assert_eq!(
        fs::read_dir(&victim).unwrap().count(),
        0,
        "cp wrote through a symlink outside DEST"
    );
    let mut top: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["evil.img", "out", "tree", "victim"],
        "cp created something beside DEST"
    );
    assert!(
        fs::symlink_metadata(out.join("s1"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}
