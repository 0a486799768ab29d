//! Test support shared by the ext4kit crates: the outside oracles and the trees they judge.
//!
//! - [`kernel_available`] / [`require_kernel`]: whether root, loop devices and the e2fsprogs
//!   tools are here. With `EXT4KIT_REQUIRE_KERNEL=1` (CI) a missing piece fails the test loudly;
//!   otherwise the test prints a note and skips its kernel part. [`require_tools`] is the same
//!   for tests that need only some tools; [`have_tool`] and [`is_root`] answer one question.
//! - [`Mke2fs`]: the one way to run mke2fs (always with `-b`), and [`mke2fs_d`] for `-d` images.
//! - Small oracles: [`debugfs`], [`dumpe2fs_header`], [`field`] and [`number_after`] for
//!   reading their text; [`os`] and [`path_str`] for argument lists; [`Cli`] for a binary's
//!   runs.
//! - [`e2fsck_clean`]: `e2fsck -fn` that fails on *any* output line beyond the version, the five
//!   pass lines and the summary (e2fsck exits 0 on a wrong free-blocks count).
//! - [`LoopMount`]: a kernel loop mount, unmounted on drop.
//! - [`generate_tree`]: a directory tree with the shapes that break file systems (sizes around
//!   block and page boundaries, sparse files, fast and slow symlinks, hard links, a large
//!   directory, deep nesting, long and non-ASCII names, xattrs, modes, owners, ns mtimes,
//!   special files).
//! - [`snapshot`] / [`diff_trees`]: everything a tree means (content, mode, owner, ns mtime,
//!   symlink targets, link groups, xattrs), and the differences between two of them.
#![allow(clippy::unwrap_used)]

mod cli;
mod mke2fs;

pub use cli::Cli;
pub use mke2fs::Mke2fs;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether the kernel-level oracles are usable here: root, `/dev/loop-control`, and the tools
/// (e2fsprogs' mke2fs, e2fsck, debugfs, dumpe2fs; util-linux's mount, umount, losetup).
pub fn kernel_available() -> bool {
    let tools = [
        "mke2fs", "e2fsck", "debugfs", "dumpe2fs", "mount", "umount", "losetup",
    ]
    .iter()
    .all(|t| have_tool(t));
    is_root() && tools && Path::new("/dev/loop-control").exists()
}

/// Returns true if kernel oracles can run; panics when they cannot and
/// `EXT4KIT_REQUIRE_KERNEL=1`; otherwise prints a note naming the test and returns false.
pub fn require_kernel(test: &str) -> bool {
    if kernel_available() {
        return true;
    }
    if kernel_required() {
        panic!("{test}: EXT4KIT_REQUIRE_KERNEL=1 but root, loop devices or e2fsprogs are missing");
    }
    eprintln!(
        "note: {test}: kernel oracles unavailable (need root, /dev/loop-control, e2fsprogs); skipping that part"
    );
    false
}

/// Returns true if every one of `tools` is installed; when one is missing, panics if
/// `EXT4KIT_REQUIRE_KERNEL=1`, else prints a note naming the test and the missing tools and
/// returns false (for tests that need the tools but not root or loop devices).
pub fn require_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have_tool(t)).collect();
    if missing.is_empty() {
        return true;
    }
    if kernel_required() {
        panic!("{test}: EXT4KIT_REQUIRE_KERNEL=1 but {missing:?} missing");
    }
    eprintln!("note: {test}: {missing:?} missing; skipping");
    false
}

/// `EXT4KIT_REQUIRE_KERNEL=1`: a missing oracle fails the test instead of skipping it.
pub fn kernel_required() -> bool {
    std::env::var("EXT4KIT_REQUIRE_KERNEL").is_ok_and(|v| v == "1")
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether `tool` is an executable on `PATH` (or in /sbin, /usr/sbin).
pub fn have_tool(tool: &str) -> bool {
    which(tool).is_some()
}

/// Where `tool` is: the first match on `PATH`, then /sbin and /usr/sbin.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/sbin", "/usr/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Runs a command, returning (exit code, stdout+stderr).
pub fn run(cmd: &str, args: &[&OsStr]) -> (i32, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Runs a command and panics with its output unless it succeeds.
pub fn run_ok(cmd: &str, args: &[&str]) -> String {
    let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let (code, text) = run(cmd, &a);
    assert_eq!(code, 0, "{cmd} {args:?} failed:\n{text}");
    text
}

/// `s` as an `&OsStr`, for argument lists that mix strings and paths.
pub fn os<S: AsRef<OsStr> + ?Sized>(s: &S) -> &OsStr {
    s.as_ref()
}

/// A path as `&str`, for argument lists of `&str` (panics on a path that is not UTF-8).
pub fn path_str(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("path is not UTF-8: {}", p.display()))
}

/// `debugfs -R CMD IMG`: its output (stdout, then stderr), or a panic with it unless debugfs
/// exits 0 (which it does even when the command fails: look at the text).
pub fn debugfs(img: &Path, cmd: &str) -> String {
    run_ok("debugfs", &["-R", cmd, path_str(img)])
}

/// `dumpe2fs -h IMG` as field name → value (the text either side of the first `:` of each
/// line of its stdout, trimmed); panics with its output unless dumpe2fs exits 0.
pub fn dumpe2fs_header(img: &Path) -> BTreeMap<String, String> {
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(img)
        .output()
        .unwrap_or_else(|e| panic!("cannot run dumpe2fs: {e}"));
    assert!(
        out.status.success(),
        "dumpe2fs -h {} exited {:?}\nstdout: {}\nstderr: {}",
        img.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The word after the first `key` in `text` (e.g. `field(stat, "Links:")`); panics naming the
/// key and the text when it is not there.
pub fn field<'a>(text: &'a str, key: &str) -> &'a str {
    let at = text
        .find(key)
        .unwrap_or_else(|| panic!("{key} missing in {text}"))
        + key.len();
    text[at..]
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("nothing after {key} in {text}"))
}

/// The number at the start of what follows the first `key` in `text` (dumpe2fs's
/// `Block bitmap at 123 (+122)` → 123); panics when there is none.
pub fn number_after(text: &str, key: &str) -> u64 {
    let at = text
        .find(key)
        .unwrap_or_else(|| panic!("{key} missing in {text}"))
        + key.len();
    let digits: String = text[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|e| panic!("no number after {key} in {text}: {e}"))
}

/// `e2fsck -fn IMG`: Ok when it exits 0 and prints only the version line, the five "Pass N"
/// lines and one summary line (which starts with the label when there is one, else the path);
/// Err with the whole output otherwise.
pub fn e2fsck_clean(img: &Path) -> Result<(), String> {
    let (code, text) = run("e2fsck", &[OsStr::new("-fn"), img.as_os_str()]);
    let name = img.to_string_lossy();
    let is_pass = |l: &str| l.starts_with("Pass ") && l.as_bytes().get(6) == Some(&b':');
    let unexpected: Vec<&str> = text
        .lines()
        .filter(|l| {
            let l = l.trim();
            !(l.is_empty() || l.starts_with("e2fsck ") || is_pass(l) || is_summary_line(l))
        })
        .collect();
    // All five passes ran and one summary closed them (an early stop prints fewer).
    let passes = text.lines().filter(|l| is_pass(l.trim())).count();
    let summaries = text.lines().filter(|l| is_summary_line(l.trim())).count();
    if code == 0 && unexpected.is_empty() && passes == 5 && summaries == 1 {
        Ok(())
    } else {
        Err(format!(
            "e2fsck -fn {name} exited {code}; {passes} pass lines, {summaries} summaries; unexpected lines {unexpected:?}; full output:\n{text}"
        ))
    }
}

/// e2fsck's summary: `NAME: 12/2048 files (0.0% non-contiguous), 1234/8192 blocks`, where
/// NAME is the volume label when there is one, else the device name.
fn is_summary_line(l: &str) -> bool {
    let Some((_, rest)) = l.rsplit_once(": ") else {
        return false;
    };
    let mut parts = rest.split(", ");
    let files = parts.next().unwrap_or("");
    let blocks = parts.next().unwrap_or("");
    let ratio = |s: &str| {
        s.split_once('/')
            .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok())
    };
    files.split_once(" files (").is_some_and(|(r, _)| ratio(r))
        && blocks.strip_suffix(" blocks").is_some_and(ratio)
        && parts.next().is_none()
}

/// `e2fsck FLAGS IMG` (e.g. `-fyD`: fix, and index the directories mke2fs -d leaves linear):
/// its output, or a panic with it unless e2fsck exits 0 (nothing to do) or 1 (fixed).
pub fn e2fsck_repair(img: &Path, flags: &str) -> String {
    let (code, text) = run("e2fsck", &[OsStr::new(flags), img.as_os_str()]);
    assert!(
        code == 0 || code == 1,
        "e2fsck {flags} {} exited {code}:\n{text}",
        img.display()
    );
    text
}

/// `e2fsck -fy IMG` (which replays the journal and fixes what it finds) must exit 0 or 1, and
/// a strict [`e2fsck_clean`] must then pass; panics naming `what` otherwise. Returns what
/// `e2fsck -fy` printed.
pub fn assert_clean_after_repair(img: &Path, what: &str) -> String {
    let (code, text) = run("e2fsck", &[OsStr::new("-fy"), img.as_os_str()]);
    assert!(code <= 1, "{what}: e2fsck -fy exited {code}:\n{text}");
    e2fsck_clean(img).unwrap_or_else(|e| panic!("{what}: after e2fsck -fy ({text}): {e}"));
    text
}

/// Panics with e2fsck's output unless the image is clean.
pub fn assert_e2fsck_clean(img: &Path) {
    if let Err(e) = e2fsck_clean(img) {
        panic!("{e}");
    }
}

/// A kernel loop mount, unmounted (and its directory removed) on drop.
pub struct LoopMount {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl LoopMount {
    /// Mounts `img` (read-only if `ro`).
    pub fn new(img: &Path, ro: bool) -> Result<LoopMount, String> {
        LoopMount::mount(img, if ro { "loop,ro" } else { "loop" })
    }

    /// Mounts the block device `dev` (e.g. a [`LoopDevice`]) itself, without `-o loop`.
    pub fn device(dev: &Path, ro: bool) -> Result<LoopMount, String> {
        LoopMount::mount(dev, if ro { "ro" } else { "rw" })
    }

    fn mount(src: &Path, opts: &str) -> Result<LoopMount, String> {
        let dir = tempfile::Builder::new()
            .prefix("ext4kit-mnt-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let args = [
            OsStr::new("-t"),
            OsStr::new("ext4"),
            OsStr::new("-o"),
            OsStr::new(opts),
            src.as_os_str(),
            dir.path().as_os_str(),
        ];
        // A busy machine can answer EBUSY for a moment (a loop device still being torn down
        // by an earlier test, udev probing it): retry, bounded, with backoff.
        let text = retry_busy(|| run("mount", &args)).map_err(|text| {
            let (_, dmesg) = run("dmesg", &[]);
            let tail: Vec<&str> = dmesg.lines().rev().take(8).collect();
            format!(
                "mount {} failed: {text}\nkernel log: {tail:?}",
                src.display()
            )
        })?;
        let _ = text;
        Ok(LoopMount { dir, mounted: true })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Unmounts now, reporting failure.
    pub fn unmount(mut self) -> Result<(), String> {
        self.do_unmount()
    }

    fn do_unmount(&mut self) -> Result<(), String> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        let dir = self.dir.path();
        match retry_busy(|| run("umount", &[dir.as_os_str()])) {
            Ok(_) => Ok(()),
            Err(text) => {
                // Say what held it; then detach it lazily so the temp dir can go.
                let holders = mount_holders(dir);
                let _ = run("umount", &[OsStr::new("-l"), dir.as_os_str()]);
                Err(format!(
                    "umount {} failed: {} (held by: {holders})",
                    dir.display(),
                    text.trim()
                ))
            }
        }
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = self.do_unmount();
    }
}

/// Copies the contents of `tree` into the image `img` through a kernel loop mount
/// (`cp -a TREE/. MNT`), then unmounts: files the kernel wrote, not mke2fs.
pub fn copy_in_through_kernel(img: &Path, tree: &Path) {
    let m = LoopMount::new(img, false).unwrap();
    run_ok(
        "cp",
        &["-a", &format!("{}/.", tree.display()), path_str(m.path())],
    );
    m.unmount().unwrap();
}

/// Builds an image from `tree` with `mke2fs -d`: type `fs_type`, block size `bs`, the file
/// created at `size` bytes, no lazy init, plus `extra` arguments (e.g.
/// `["-O", "^metadata_csum,^64bit"]`). Short for the [`Mke2fs`] that says so.
pub fn mke2fs_d(tree: &Path, img: &Path, fs_type: &str, bs: u32, size: u64, extra: &[&str]) {
    Mke2fs::new(img)
        .fs_type(fs_type)
        .block_size(bs)
        .size(size)
        .no_lazy_init()
        .extra(extra)
        .tree(tree)
        .run();
}

/// What to put in a generated tree.
#[derive(Debug, Clone)]
pub struct TreeOptions {
    /// Entries in the big directory.
    pub big_dir_entries: usize,
    /// Levels of nesting.
    pub depth: usize,
    /// Create device nodes, a FIFO and a socket (needs root for devices).
    pub special_files: bool,
    /// Set owners other than root (needs root).
    pub owners: bool,
    /// Add user./trusted./security. xattrs.
    pub xattrs: bool,
}

impl Default for TreeOptions {
    fn default() -> TreeOptions {
        let root = rustix::process::geteuid().is_root();
        TreeOptions {
            big_dir_entries: 3000,
            depth: 40,
            special_files: root,
            owners: root,
            xattrs: true,
        }
    }
}

impl TreeOptions {
    /// The default shapes with `big_dir_entries` entries in the big directory and `depth`
    /// levels of nesting (smaller trees for faster tests).
    pub fn sized(big_dir_entries: usize, depth: usize) -> TreeOptions {
        TreeOptions {
            big_dir_entries,
            depth,
            ..TreeOptions::default()
        }
    }
}

/// Creates the directory `root` (its parent must exist, `root` must not) and
/// [generates](generate_tree) the tree in it; returns `root`.
pub fn new_tree(root: &Path, seed: u64, opt: &TreeOptions) -> PathBuf {
    fs::create_dir(root).unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
    generate_tree(root, seed, opt);
    root.to_path_buf()
}

/// What the kernel shows of `img`: a read-only loop mount's [`snapshot`], then unmounted.
pub fn kernel_snapshot(img: &Path) -> Tree {
    let m = LoopMount::new(img, true).unwrap();
    let t = snapshot(m.path());
    m.unmount().unwrap();
    t
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn set_mtime_ns(path: &Path, sec: i64, nsec: i64) {
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: sec - 1000,
            tv_nsec: nsec,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &ts,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn write_file(path: &Path, data: &[u8]) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
}

/// Creates the test tree under `root` (which must exist and be empty). Deterministic for a
/// given `seed` and options.
pub fn generate_tree(root: &Path, seed: u64, opt: &TreeOptions) {
    let t0 = 1_700_000_000i64;
    // Files around block and page boundaries.
    let files = root.join("files");
    fs::create_dir(&files).unwrap();
    let sizes = [
        0usize,
        1,
        59,
        60,
        61,
        1023,
        1024,
        1025,
        2047,
        2048,
        2049,
        4095,
        4096,
        4097,
        8191,
        8192,
        12289,
        65535,
        65536,
        65537,
        (1 << 20) + 1,
    ];
    for (i, &n) in sizes.iter().enumerate() {
        let p = files.join(format!("size-{n}"));
        write_file(&p, &pattern(seed + i as u64, n));
        set_mtime_ns(&p, t0 + i as i64, (i as i64 * 123_456_789) % 1_000_000_000);
    }
    // Sparse files: holes at the start, in the middle, at the end.
    let sparse = root.join("sparse");
    fs::create_dir(&sparse).unwrap();
    {
        let f = fs::File::create(sparse.join("hole-start")).unwrap();
        f.write_all_at(&pattern(seed + 100, 5000), 3 << 20).unwrap();
        let f = fs::File::create(sparse.join("hole-middle")).unwrap();
        f.write_all_at(&pattern(seed + 101, 4096), 0).unwrap();
        f.write_all_at(&pattern(seed + 102, 4096), 8 << 20).unwrap();
        let f = fs::File::create(sparse.join("hole-end")).unwrap();
        f.write_all_at(&pattern(seed + 103, 7000), 0).unwrap();
        f.set_len(5 << 20).unwrap();
        let f = fs::File::create(sparse.join("all-hole")).unwrap();
        f.set_len(1 << 20).unwrap();
    }
    // Symlinks: fast (< 60 bytes) and slow, dangling, to a directory.
    let links = root.join("links");
    fs::create_dir(&links).unwrap();
    std::os::unix::fs::symlink("../files/size-1", links.join("fast")).unwrap();
    let long_target = format!("../files/{}", "x".repeat(100));
    std::os::unix::fs::symlink(&long_target, links.join("slow")).unwrap();
    std::os::unix::fs::symlink("a".repeat(59), links.join("fast-59")).unwrap();
    std::os::unix::fs::symlink("b".repeat(60), links.join("slow-60")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", links.join("dangling")).unwrap();
    std::os::unix::fs::symlink("../files", links.join("to-dir")).unwrap();
    set_mtime_ns(&links.join("fast"), t0 + 50, 555);
    // Hard links: a group of three, across directories.
    let hl = root.join("hardlinks");
    fs::create_dir(&hl).unwrap();
    write_file(&hl.join("one"), &pattern(seed + 200, 3000));
    fs::hard_link(hl.join("one"), hl.join("two")).unwrap();
    fs::hard_link(hl.join("one"), files.join("three-linked")).unwrap();
    // A big directory.
    let big = root.join("bigdir");
    fs::create_dir(&big).unwrap();
    for i in 0..opt.big_dir_entries {
        write_file(
            &big.join(format!("entry-{i:05}-{}", "n".repeat(i % 40))),
            &pattern(seed + i as u64, i % 50),
        );
    }
    // Deep nesting.
    let mut d = root.join("deep");
    fs::create_dir(&d).unwrap();
    for i in 0..opt.depth {
        d = d.join(format!("level{i:02}"));
        fs::create_dir(&d).unwrap();
    }
    write_file(&d.join("bottom.txt"), b"the bottom\n");
    // Names: 255 bytes, non-ASCII.
    let names = root.join("names");
    fs::create_dir(&names).unwrap();
    write_file(&names.join("L".repeat(255)), b"long name\n");
    write_file(&names.join("ünïcødé-文件-🦀"), b"utf-8\n");
    write_file(
        &names.join(OsStr::from_bytes(b"latin1-\xe9t\xe9")),
        b"not utf-8\n",
    );
    write_file(&names.join("with space and 'quotes'"), b"q\n");
    // Modes.
    let modes = root.join("modes");
    fs::create_dir(&modes).unwrap();
    for (name, mode) in [
        ("m600", 0o600),
        ("m755", 0o755),
        ("m4755", 0o4755),
        ("m2711", 0o2711),
        ("m000", 0o000),
    ] {
        let p = modes.join(name);
        write_file(&p, name.as_bytes());
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
    let sticky = modes.join("sticky-dir");
    fs::create_dir(&sticky).unwrap();
    fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
    if opt.owners {
        let o = root.join("owners");
        fs::create_dir(&o).unwrap();
        for (i, (u, g)) in [(1000u32, 1000u32), (0, 100), (65534, 65534), (123_456, 7)]
            .iter()
            .enumerate()
        {
            let p = o.join(format!("owned-{i}"));
            write_file(&p, b"owner\n");
            std::os::unix::fs::lchown(&p, Some(*u), Some(*g)).unwrap();
        }
        std::os::unix::fs::symlink("owned-0", o.join("link-owned")).unwrap();
        std::os::unix::fs::lchown(o.join("link-owned"), Some(1000), Some(1000)).unwrap();
    }
    if opt.xattrs {
        let x = root.join("xattrs");
        fs::create_dir(&x).unwrap();
        let p = x.join("small");
        write_file(&p, b"x\n");
        rustix::fs::setxattr(
            &p,
            "user.comment",
            b"hello",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        rustix::fs::setxattr(&p, "user.empty", b"", rustix::fs::XattrFlags::empty()).unwrap();
        let p = x.join("big");
        write_file(&p, b"y\n");
        // Too large for the inode: goes to an xattr block (small enough for a 1 KiB block).
        rustix::fs::setxattr(
            &p,
            "user.big",
            &pattern(seed + 300, 700),
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        rustix::fs::setxattr(
            &p,
            "user.second",
            &pattern(seed + 301, 200),
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        if rustix::process::geteuid().is_root() {
            let p = x.join("trusted");
            write_file(&p, b"z\n");
            rustix::fs::setxattr(
                &p,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .unwrap();
            rustix::fs::setxattr(
                &p,
                "security.selinux",
                b"system_u:object_r:etc_t:s0\0",
                rustix::fs::XattrFlags::empty(),
            )
            .unwrap();
        }
        rustix::fs::setxattr(&x, "user.on-dir", b"dir", rustix::fs::XattrFlags::empty()).unwrap();
    }
    if opt.special_files {
        let s = root.join("special");
        fs::create_dir(&s).unwrap();
        let m = rustix::fs::Mode::from_raw_mode(0o644);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            s.join("fifo"),
            rustix::fs::FileType::Fifo,
            m,
            0,
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            s.join("char-1-3"),
            rustix::fs::FileType::CharacterDevice,
            m,
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            s.join("block-8-1"),
            rustix::fs::FileType::BlockDevice,
            m,
            rustix::fs::makedev(8, 1),
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            s.join("char-big"),
            rustix::fs::FileType::CharacterDevice,
            m,
            rustix::fs::makedev(300, 70000),
        )
        .unwrap();
        let sock = std::os::unix::net::UnixListener::bind(s.join("socket")).unwrap();
        drop(sock);
    }
    // Directory mtimes last (creating entries changes them).
    set_mtime_ns(&files, t0 + 500, 999_999_999);
    set_mtime_ns(&root.join("deep"), t0 + 501, 1);
}

/// The kind of a tree entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Regular file with its content.
    File(Vec<u8>),
    /// Directory.
    Dir,
    /// Symlink with its target.
    Symlink(Vec<u8>),
    /// Character device (major, minor).
    Char(u32, u32),
    /// Block device (major, minor).
    Block(u32, u32),
    /// FIFO.
    Fifo,
    /// Socket.
    Socket,
}

/// Everything a tree entry means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Kind and content.
    pub kind: Kind,
    /// Permission bits (incl. setuid/setgid/sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// Extended attributes (name → value), sorted.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Link-group id: the smallest path sharing this entry's inode (regular files only).
    pub link_group: Option<Vec<u8>>,
}

/// Path (relative, bytes) → entry.
pub type Tree = BTreeMap<Vec<u8>, Entry>;

/// Reads everything about the tree under `root` (root itself excluded), without following
/// symlinks. `lost+found` at the top is skipped.
pub fn snapshot(root: &Path) -> Tree {
    let mut out = Tree::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    // Link group id: the first path (in walk order) that reached the inode.
    walk(root, root, &mut out, &mut inodes);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Tree, inodes: &mut BTreeMap<(u64, u64), Vec<u8>>) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        let p = dir.join(&name);
        let rel = p
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        if rel == b"lost+found" {
            continue;
        }
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink(fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec())
        } else if ft.is_file() {
            Kind::File(fs::read(&p).unwrap())
        } else if ft.is_char_device() {
            Kind::Char(rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()))
        } else if ft.is_block_device() {
            Kind::Block(rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()))
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            Kind::Socket
        };
        let mut xattrs = BTreeMap::new();
        let mut names_buf = vec![0u8; 65536];
        if let Ok(n) = rustix::fs::llistxattr(&p, &mut names_buf) {
            for xname in names_buf[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
                let cname = std::ffi::CString::new(xname.to_vec()).unwrap();
                let mut val = vec![0u8; 65536];
                if let Ok(vn) = rustix::fs::lgetxattr(&p, cname.as_c_str(), &mut val) {
                    xattrs.insert(xname.to_vec(), val[..vn].to_vec());
                }
            }
        }
        let link_group = if ft.is_file() && md.nlink() > 1 {
            let key = (md.dev(), md.ino());
            Some(inodes.entry(key).or_insert_with(|| rel.clone()).clone())
        } else {
            None
        };
        out.insert(
            rel.clone(),
            Entry {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: (md.mtime(), md.mtime_nsec()),
                xattrs,
                link_group,
            },
        );
        if ft.is_dir() {
            walk(root, &p, out, inodes);
        }
    }
}

/// Which properties [`diff_trees`] compares.
#[derive(Debug, Clone, Copy)]
pub struct Compare {
    /// Compare mtimes (seconds).
    pub mtime: bool,
    /// Compare the nanoseconds of mtimes too.
    pub mtime_ns: bool,
    /// Compare directory mtimes (they change whenever an entry is added).
    pub dir_mtime: bool,
    /// Compare owners.
    pub owner: bool,
    /// Compare xattrs.
    pub xattrs: bool,
}

impl Compare {
    /// Everything (the default).
    pub const ALL: Compare = Compare {
        mtime: true,
        mtime_ns: true,
        dir_mtime: true,
        owner: true,
        xattrs: true,
    };

    /// Everything but directory mtimes: for trees whose directories gained entries after
    /// their times were set (a `cp -p` into an image, a kernel that touched them).
    pub const EXCEPT_DIR_MTIME: Compare = Compare {
        dir_mtime: false,
        ..Compare::ALL
    };
}

impl Default for Compare {
    fn default() -> Compare {
        Compare::ALL
    }
}

/// Differences between two trees, one line each (empty when they are equal).
pub fn diff_trees(want: &Tree, got: &Tree, cmp: Compare) -> Vec<String> {
    let mut d = Vec::new();
    let show = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    for (p, w) in want {
        let Some(g) = got.get(p) else {
            d.push(format!("missing: {}", show(p)));
            continue;
        };
        if w.kind != g.kind {
            let brief = |k: &Kind| match k {
                Kind::File(c) => format!("file of {} bytes", c.len()),
                other => format!("{other:?}"),
            };
            d.push(format!(
                "{}: kind/content differs: want {} got {}",
                show(p),
                brief(&w.kind),
                brief(&g.kind)
            ));
        }
        if w.mode != g.mode {
            d.push(format!("{}: mode {:o} != {:o}", show(p), w.mode, g.mode));
        }
        if cmp.owner && (w.uid, w.gid) != (g.uid, g.gid) {
            d.push(format!(
                "{}: owner {}:{} != {}:{}",
                show(p),
                w.uid,
                w.gid,
                g.uid,
                g.gid
            ));
        }
        let is_dir = w.kind == Kind::Dir;
        if cmp.mtime && (cmp.dir_mtime || !is_dir) {
            let (wm, gm) = if cmp.mtime_ns {
                (w.mtime, g.mtime)
            } else {
                ((w.mtime.0, 0), (g.mtime.0, 0))
            };
            if wm != gm {
                d.push(format!("{}: mtime {:?} != {:?}", show(p), w.mtime, g.mtime));
            }
        }
        if cmp.xattrs && w.xattrs != g.xattrs {
            d.push(format!(
                "{}: xattrs {:?} != {:?}",
                show(p),
                w.xattrs.keys().map(|k| show(k)).collect::<Vec<_>>(),
                g.xattrs.keys().map(|k| show(k)).collect::<Vec<_>>()
            ));
        }
        if w.link_group.is_some() != g.link_group.is_some() {
            d.push(format!(
                "{}: hard-link group {:?} != {:?}",
                show(p),
                w.link_group.as_deref().map(show),
                g.link_group.as_deref().map(show)
            ));
        }
    }
    for p in got.keys() {
        if !want.contains_key(p) {
            d.push(format!("unexpected: {}", show(p)));
        }
    }
    // Link groups must partition the same way.
    let groups = |t: &Tree| -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
        let mut g: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
        for (p, e) in t {
            if let Some(l) = &e.link_group {
                g.entry(l.clone()).or_default().push(p.clone());
            }
        }
        g
    };
    let (gw, gg) = (groups(want), groups(got));
    let norm = |g: BTreeMap<Vec<u8>, Vec<Vec<u8>>>| -> Vec<Vec<Vec<u8>>> {
        let mut v: Vec<Vec<Vec<u8>>> = g.into_values().collect();
        v.sort();
        v
    };
    let (nw, ng) = (norm(gw), norm(gg));
    if nw != ng {
        d.push(format!(
            "hard-link groups differ: want {} groups, got {}",
            nw.len(),
            ng.len()
        ));
    }
    d
}

/// A tree of about `total` bytes: `files` files in nested directories, sizes from a few bytes to
/// a few MiB (most small, as in a root filesystem), pseudo-random content.
pub fn size_mix_tree(root: &Path, files: usize, total: u64) -> u64 {
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // Sizes: 80% up to 16 KiB, 18% up to 256 KiB, 2% up to 8 MiB; scaled to `total`.
    let mut sizes: Vec<u64> = (0..files)
        .map(|_| match next() % 100 {
            0..80 => next() % (16 << 10),
            80..98 => next() % (256 << 10),
            _ => next() % (8 << 20),
        })
        .collect();
    let sum: u64 = sizes.iter().sum();
    for s in &mut sizes {
        *s = *s * total / sum.max(1);
    }
    let block = pattern(7, 8 << 20);
    let mut written = 0;
    for (i, size) in sizes.iter().enumerate() {
        let dir = root.join(format!("d{}/s{}", i % 40, i % 7));
        fs::create_dir_all(&dir).unwrap();
        let mut f = fs::File::create(dir.join(format!("file-{i}.dat"))).unwrap();
        let off = (i * 4099) % (block.len() / 2);
        let n = *size as usize;
        f.write_all(&block[off..off + n.min(block.len() - off)])
            .unwrap();
        let mut left = n.saturating_sub(block.len() - off);
        while left > 0 {
            let k = left.min(block.len());
            f.write_all(&block[..k]).unwrap();
            left -= k;
        }
        written += *size;
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tree_snapshots_equal_themselves_and_diff_finds_changes() {
        let dir = tempfile::tempdir().unwrap();
        let opt = TreeOptions {
            big_dir_entries: 50,
            depth: 5,
            ..TreeOptions::default()
        };
        generate_tree(dir.path(), 1, &opt);
        let a = snapshot(dir.path());
        assert!(a.len() > 80, "{}", a.len());
        assert!(diff_trees(&a, &a, Compare::default()).is_empty());
        fs::write(dir.path().join("files/size-1"), b"Z").unwrap();
        let b = snapshot(dir.path());
        let d = diff_trees(&a, &b, Compare::default());
        assert!(d.iter().any(|l| l.contains("files/size-1")), "{d:?}");
        let hl = a.get(b"hardlinks/two".as_slice()).unwrap();
        assert_eq!(
            hl.link_group.as_deref(),
            Some(b"files/three-linked".as_slice())
        );
    }
}

#[cfg(test)]
mod summary_tests {
    use super::is_summary_line;

    #[test]
    fn summary_lines_with_label_or_path_are_recognised() {
        assert!(is_summary_line(
            "/tmp/x.img: 11/2048 files (0.0% non-contiguous), 1300/8192 blocks"
        ));
        assert!(is_summary_line(
            "demo: 19/16384 files (0.0% non-contiguous), 8239/65536 blocks"
        ));
        assert!(!is_summary_line(
            "Free blocks count wrong (123, counted=456)."
        ));
        assert!(!is_summary_line("Fix? no"));
        assert!(!is_summary_line(
            "x: 1/2 files (0.0% non-contiguous), 3/4 blocks, extra"
        ));
    }
}

/// The value of the environment variable `name` parsed as a `T` (a case count, a size), or
/// `default` when it is unset or does not parse.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A temporary directory in memory (`/dev/shm`) when there is one, else in `/tmp`: for big
/// scratch images and benches whose device should not be a disk.
pub fn shm_temp_dir(prefix: &str) -> tempfile::TempDir {
    let base = if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base)
        .unwrap_or_else(|e| panic!("cannot create a temporary directory in {base}: {e}"))
}

/// The median of some timings (the upper one of the middle two for an even count); panics on
/// none.
pub fn median(times: &[std::time::Duration]) -> std::time::Duration {
    let mut v = times.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// A temporary directory for the rest of the test process (fixtures kept in statics, which are
/// never dropped): removed when the process exits, after failing tests too — the test harness
/// ends through exit(3), which runs the hook registered here. A process killed by a signal
/// leaves its directories; the next process that asks for one removes those whose process is
/// gone (the name carries the pid).
pub fn process_temp_dir(prefix: &str) -> PathBuf {
    static DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    static HOOK: std::sync::Once = std::sync::Once::new();
    extern "C" fn remove_all() {
        if let Ok(dirs) = DIRS.lock() {
            for d in dirs.iter() {
                let _ = fs::remove_dir_all(d);
            }
        }
    }
    HOOK.call_once(|| {
        // SAFETY: `remove_all` is a plain `extern "C" fn` with no arguments that cannot unwind
        // (it only ignores errors); registering it has no other precondition.
        unsafe {
            libc::atexit(remove_all);
        }
    });
    let mut dirs = DIRS.lock().unwrap_or_else(|p| p.into_inner());
    if dirs.is_empty() {
        sweep_dead_process_dirs(prefix);
    }
    let d = tempfile::Builder::new()
        .prefix(&format!("{prefix}{}-", std::process::id()))
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"))
        .keep();
    dirs.push(d.clone());
    d
}

/// Removes `PREFIX<pid>-*` directories in the temp dir whose process no longer runs.
fn sweep_dead_process_dirs(prefix: &str) {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Runs `cmd` (a mount, umount or losetup) until it succeeds or fails for a reason other than
/// "busy": the kernel's EBUSY on a loaded machine is transient (writeback of the last dirty
/// pages, udev or blkid probing a new device). Bounded: about 10 s in all, backing off from
/// 10 ms. Returns the last output.
pub fn retry_busy(mut cmd: impl FnMut() -> (i32, String)) -> Result<String, String> {
    let mut delay = std::time::Duration::from_millis(10);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (code, text) = cmd();
        if code == 0 {
            return Ok(text);
        }
        let busy = text.contains("busy") || text.contains("EBUSY");
        if !busy || std::time::Instant::now() >= deadline {
            return Err(text);
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(std::time::Duration::from_millis(500));
    }
}

/// What holds the mount at `dir` open (`fuser -vm`, else `lsof`), for a failure message.
pub fn mount_holders(dir: &Path) -> String {
    for (tool, args) in [
        ("fuser", vec![OsStr::new("-vm"), dir.as_os_str()]),
        (
            "lsof",
            vec![OsStr::new("+f"), OsStr::new("--"), dir.as_os_str()],
        ),
    ] {
        if let Some(exe) = which(tool) {
            let (_, text) = run(&exe.to_string_lossy(), &args);
            let t = text.trim();
            if !t.is_empty() {
                return t.replace('\n', "; ");
            }
        }
    }
    "nothing found by fuser/lsof (a kernel user: loop device, writeback)".into()
}

/// A loop device attached to an image (`losetup -f --show`), detached on drop.
pub struct LoopDevice {
    dev: PathBuf,
}

impl LoopDevice {
    /// Attaches `img` to a free loop device (read-only if `ro`).
    pub fn attach(img: &Path, ro: bool) -> Result<LoopDevice, String> {
        let mut args = vec![OsStr::new("-f"), OsStr::new("--show")];
        if ro {
            args.push(OsStr::new("-r"));
        }
        args.push(img.as_os_str());
        let out = retry_busy(|| run("losetup", &args))
            .map_err(|t| format!("losetup {} failed: {t}", img.display()))?;
        let dev = out
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("/dev/"))
            .ok_or_else(|| format!("losetup printed no device: {out:?}"))?;
        Ok(LoopDevice {
            dev: PathBuf::from(dev),
        })
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.dev
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = retry_busy(|| run("losetup", &[OsStr::new("-d"), self.dev.as_os_str()]));
    }
}
