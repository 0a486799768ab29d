//! A killed command leaves every file as it was before or as it is after (issue 9, item 14).
//!
//! The CLI runs as a child of `strace`, which sends it SIGKILL on entry to the Nth write-type
//! syscall (`pwrite64`, `pwritev`, `write`, `fdatasync`, `fsync`, `copy_file_range`, ...) of
//! one of its threads (strace counts per thread: N runs from 1 to the most calls any thread of
//! an unkilled run makes). The image device is forced to the thread-pool file device
//! (`EXT4KIT_NO_URING=1`), where every write is a syscall; one workload also runs on io_uring
//! (where the kernel offers it), killed at `io_uring_enter` calls as well. Every killed image must
//! - mount in the kernel as it was left (the kernel replays the journal), show every entry as
//!   before or as after (bytes, mode, owner, mtime with nanoseconds for `-p`; directories'
//!   mtimes aside), and pass a strict `e2fsck -fn` after that mount;
//! - pass a strict `e2fsck -fn` after `e2fsck -fy` on a copy (which replays);
//! - when its superblock has `needs_recovery` clear, pass a strict `e2fsck -fn` as it is.
//!
//! Workloads: `cp` over an existing big file (with room for both copies: both states are
//! reached; without: nothing but "before", and the command fails), `cp -r -p` of a tree of
//! 700 files into an image with the smallest journal (it commits early several times, so
//! files are cut at every stage of their copy), `mkdir -p`, `rm -r`, `mv`.
//!
//! Also, without kills: an overwrite keeps the target's inode and hard links and sets its
//! mtime to the time of the copy, as cp(1) does.
//!
//! The kill points are a spread of 1..=N (the first ones, the last ones, evenly between);
//! `EXT4KIT_CRASH_ALL=1` kills at every one.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ext4kit_testkit::{
    Entry, Kind, LoopMount, Tree, assert_clean_after_repair, e2fsck_clean, mke2fs_d, pattern,
    require_kernel, require_tools, run, snapshot,
};

const BIN: &str = env!("CARGO_BIN_EXE_ext4kit");

/// The syscalls that write (data, metadata, the journal, the terminal).
const TRACED: &str = "pwrite64,pwritev,pwritev2,write,writev,fdatasync,fsync,copy_file_range,sync_file_range,ftruncate,fallocate";

/// Kill points per workload unless `EXT4KIT_CRASH_ALL=1`.
const SPREAD: u64 = 14;

fn require_strace(test: &str) -> bool {
    require_kernel(test) && require_tools(test, &["strace"])
}

/// `args` with every `@` replaced by `img` and every `@:` prefix by `img:`.
fn with_image(args: &[&str], img: &Path) -> Vec<OsString> {
    args.iter()
        .map(|a| match a.strip_prefix('@') {
            Some(rest) => {
                let mut s = img.as_os_str().to_os_string();
                s.push(rest);
                s
            }
            None => OsString::from(a),
        })
        .collect()
}

/// How the image device is driven: the thread-pool file device (`EXT4KIT_NO_URING=1`), or
/// io_uring where the kernel has it (its ring thread's `io_uring_enter` calls are kill points
/// too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Io {
    Threads,
    Uring,
}

fn traced(io: Io) -> String {
    match io {
        Io::Threads => TRACED.to_string(),
        Io::Uring => format!("{TRACED},io_uring_enter"),
    }
}

fn command(io: Io, program: &str) -> Command {
    let mut c = Command::new(program);
    if io == Io::Threads {
        c.env("EXT4KIT_NO_URING", "1");
    }
    c
}

fn strace(
    io: Io,
    log: Option<&Path>,
    kill_at: Option<u64>,
    args: &[OsString],
) -> std::process::ExitStatus {
    let mut c = command(io, "strace");
    c.arg("-f").arg("-qq");
    let traced = traced(io);
    match log {
        Some(l) => c.arg("-o").arg(l),
        None => c.arg("-o").arg("/dev/null"),
    };
    c.arg("-e").arg(format!("trace={traced}"));
    if let Some(n) = kill_at {
        c.arg("-e")
            .arg(format!("inject={traced}:signal=SIGKILL:when={n}"));
    }
    c.arg(BIN).args(args);
    c.output().unwrap().status
}

/// The most traced syscalls one thread of an unkilled run of `args` makes (on a copy of
/// `base`), and that run's exit code.
fn calls_per_thread(io: Io, dir: &Path, base: &Path, args: &[&str]) -> (u64, Option<i32>) {
    let img = dir.join("count.img");
    std::fs::copy(base, &img).unwrap();
    let log = dir.join("count.log");
    let st = strace(io, Some(&log), None, &with_image(args, &img));
    let mut per: BTreeMap<String, u64> = BTreeMap::new();
    for l in std::fs::read_to_string(&log).unwrap().lines() {
        if let Some((pid, rest)) = l.split_once(' ') {
            if !rest.trim_start().starts_with("+++")
                && !rest.trim_start().starts_with("---")
                && !rest.contains("resumed>")
            {
                *per.entry(pid.to_string()).or_default() += 1;
            }
        }
    }
    std::fs::remove_file(&log).unwrap();
    std::fs::remove_file(&img).unwrap();
    (per.values().copied().max().unwrap_or(0), st.code())
}

/// Kill points for `max` calls: all with `EXT4KIT_CRASH_ALL=1` or when few, else the first
/// and last few and an even spread.
fn points(max: u64) -> Vec<u64> {
    if max <= SPREAD || std::env::var("EXT4KIT_CRASH_ALL").is_ok_and(|v| v == "1") {
        return (1..=max).collect();
    }
    let mut p: BTreeSet<u64> = [1, 2, 3, max - 1, max].into_iter().collect();
    let inner = SPREAD - 5;
    for k in 1..=inner {
        p.insert(1 + k * (max - 1) / (inner + 1));
    }
    p.into_iter().collect()
}

fn needs_recovery(img: &Path) -> bool {
    let b = std::fs::read(img).unwrap();
    u32::from_le_bytes(b[1024 + 0x60..1024 + 0x64].try_into().unwrap()) & 0x4 != 0
}

/// The tree the kernel shows of `img` (a copy is mounted, which replays the journal), after
/// which the copy must pass a strict e2fsck. Also: `e2fsck -fy` then a strict `-fn` on
/// another copy, and a strict `-fn` of the image as it is when needs_recovery is clear.
fn judge_image(dir: &Path, img: &Path, what: &str) -> Tree {
    if !needs_recovery(img) {
        e2fsck_clean(img).unwrap_or_else(|e| {
            panic!("{what}: needs_recovery is clear but the image is not clean as it is: {e}")
        });
    }
    let fimg = dir.join("fsck.img");
    std::fs::copy(img, &fimg).unwrap();
    assert_clean_after_repair(&fimg, what);
    std::fs::remove_file(&fimg).unwrap();
    let kimg = dir.join("kernel.img");
    std::fs::copy(img, &kimg).unwrap();
    let m = LoopMount::new(&kimg, false)
        .unwrap_or_else(|e| panic!("{what}: the kernel does not mount the image as killed: {e}"));
    let tree = snapshot(m.path());
    unmount(&m, what);
    drop(m);
    e2fsck_clean(&kimg).unwrap_or_else(|e| panic!("{what}: after the kernel's recovery: {e}"));
    std::fs::remove_file(&kimg).unwrap();
    tree
}

/// Unmounts `m`, retrying while the kernel says it is busy (a child another test thread is
/// forking can hold a descriptor of a file in it for a moment); bounded.
fn unmount(m: &LoopMount, what: &str) {
    let mut last = String::new();
    for _ in 0..200 {
        let (code, text) = run("umount", &[m.path().as_os_str()]);
        if code == 0 {
            return;
        }
        if !text.contains("busy") {
            panic!("{what}: umount failed: {text}");
        }
        last = text;
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{what}: umount still busy after 200 tries: {last}");
}

/// An entry as compared here: directories by kind, mode and owner only (their mtimes and
/// sizes change with every entry added).
fn same(a: &Entry, b: &Entry, mtime: bool) -> bool {
    let dir = a.kind == Kind::Dir;
    a.kind == b.kind
        && a.mode == b.mode
        && (a.uid, a.gid) == (b.uid, b.gid)
        && (dir || !mtime || a.mtime == b.mtime)
}

fn brief(e: Option<&Entry>) -> String {
    match e {
        None => "absent".into(),
        Some(e) => match &e.kind {
            Kind::File(c) => format!(
                "file of {} bytes, mode {:o}, mtime {:?}",
                c.len(),
                e.mode,
                e.mtime
            ),
            k => format!("{k:?}, mode {:o}, mtime {:?}", e.mode, e.mtime),
        },
    }
}

/// Every path is as before or as after (absent counts): the first one that is neither.
fn per_entry(before: &Tree, after: &Tree, got: &Tree, mtime: bool) -> Option<String> {
    let paths: BTreeSet<&Vec<u8>> = before
        .keys()
        .chain(after.keys())
        .chain(got.keys())
        .collect();
    for p in paths {
        let g = got.get(p);
        let ok = |w: Option<&Entry>| match (w, g) {
            (None, None) => true,
            (Some(w), Some(g)) => same(w, g, mtime),
            _ => false,
        };
        if !ok(before.get(p)) && !ok(after.get(p)) {
            return Some(format!(
                "{}: {} — before: {}, after: {}",
                String::from_utf8_lossy(p),
                brief(g),
                brief(before.get(p)),
                brief(after.get(p))
            ));
        }
    }
    None
}

fn whole(want: &Tree, got: &Tree, mtime: bool) -> bool {
    want.len() == got.len()
        && want
            .iter()
            .all(|(p, w)| got.get(p).is_some_and(|g| same(w, g, mtime)))
}

/// What the kill points showed.
#[derive(Debug, Default)]
struct Seen {
    before: usize,
    after: usize,
    between: usize,
    killed: usize,
}

/// Runs `args` on a copy of `base`, killed at every chosen point, and judges each image:
/// every entry as before or after (`atomic`: the whole tree as before or as after).
/// `after`: the tree an unkilled run leaves (None: the command fails; the image must stay
/// as before). Not atomic, up to 16 more points are tried where the outcome changes until
/// `want_between` runs were cut between commits.
#[allow(clippy::too_many_arguments)]
fn crash_points(
    io: Io,
    dir: &Path,
    label: &str,
    base: &Path,
    args: &[&str],
    mtime: bool,
    atomic: bool,
    want_between: usize,
) -> Seen {
    let before = judge_image(dir, base, &format!("{label}: base"));
    let (max, code) = calls_per_thread(io, dir, base, args);
    let done = dir.join("done.img");
    std::fs::copy(base, &done).unwrap();
    let out = command(io, BIN)
        .args(with_image(args, &done))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        code,
        "{label}: the traced and untraced runs disagree"
    );
    let after = judge_image(dir, &done, &format!("{label}: finished run"));
    std::fs::remove_file(&done).unwrap();
    let pts = points(max);
    let t0 = std::time::Instant::now();
    let mut seen = Seen::default();
    // Kill point → 0 before, 1 between, 2 after.
    let mut outcome: BTreeMap<u64, u8> = BTreeMap::new();
    let judge_point = |n: u64, seen: &mut Seen| -> u8 {
        let img = dir.join("killed.img");
        std::fs::copy(base, &img).unwrap();
        let st = strace(io, None, Some(n), &with_image(args, &img));
        let what = format!("{label}: killed at write-type syscall {n} of up to {max} per thread");
        if st.signal() == Some(9) {
            seen.killed += 1;
        } else {
            assert_eq!(
                st.code(),
                code,
                "{what}: not killed, but the exit status differs"
            );
        }
        let got = judge_image(dir, &img, &what);
        std::fs::remove_file(&img).unwrap();
        if let Some(bad) = per_entry(&before, &after, &got, mtime) {
            panic!("{what}: neither before nor after: {bad}");
        }
        if whole(&before, &got, mtime) {
            seen.before += 1;
            0
        } else if whole(&after, &got, mtime) {
            seen.after += 1;
            2
        } else {
            assert!(
                !atomic,
                "{what}: the tree is neither the one before nor the one after (each entry is)"
            );
            seen.between += 1;
            1
        }
    };
    for &n in &pts {
        let o = judge_point(n, &mut seen);
        outcome.insert(n, o);
    }
    // Not atomic: where the copy commits depends on thread timing (a busy machine moves it), so
    // when few points landed between commits, look closer where the outcome changed.
    let mut extra = 0;
    while !atomic && seen.between < want_between && extra < 16 {
        // A jump from before straight to after first (a stretch between commits was skipped).
        let pairs: Vec<((u64, u8), (u64, u8))> = outcome
            .iter()
            .zip(outcome.iter().skip(1))
            .map(|((a, oa), (b, ob))| ((*a, *oa), (*b, *ob)))
            .filter(|((a, oa), (b, ob))| oa != ob && *b > *a + 1)
            .collect();
        let change = pairs
            .iter()
            .find(|((_, oa), (_, ob))| oa.abs_diff(*ob) == 2)
            .or(pairs.first())
            .map(|((a, _), (b, _))| (a + b) / 2);
        let Some(mid) = change else { break };
        let o = judge_point(mid, &mut seen);
        outcome.insert(mid, o);
        extra += 1;
    }
    eprintln!(
        "{label}: up to {max} calls per thread, exit {code:?} unkilled; {} kill points ({} killed) in {:.1}s: {seen:?}",
        pts.len(),
        seen.killed,
        t0.elapsed().as_secs_f64()
    );
    // Threads make fewer calls than the busiest: the later points kill only some runs.
    assert!(
        seen.killed >= 2.min(pts.len()),
        "{label}: runs should be killed: {seen:?}"
    );
    seen
}

/// A tree with `files` in `root`: name → (bytes, mtime seconds, nanoseconds).
fn write_tree(root: &Path, files: &[(&str, Vec<u8>)], t: i64) {
    for (k, (name, data)) in files.iter().enumerate() {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        let ts = rustix::fs::Timespec {
            tv_sec: t + k as i64,
            tv_nsec: 1000 * k as i64 + 7,
        };
        let times = rustix::fs::Timestamps {
            last_access: ts,
            last_modification: ts,
        };
        rustix::fs::utimensat(rustix::fs::CWD, &p, &times, rustix::fs::AtFlags::empty()).unwrap();
    }
}

fn image_with(
    dir: &Path,
    name: &str,
    files: &[(&str, Vec<u8>)],
    size: u64,
    extra: &[&str],
) -> PathBuf {
    let tree = dir.join(format!("{name}.tree"));
    std::fs::create_dir(&tree).unwrap();
    write_tree(&tree, files, 1_600_000_000);
    let img = dir.join(format!("{name}.img"));
    mke2fs_d(&tree, &img, "ext4", 4096, size, extra);
    std::fs::remove_dir_all(&tree).unwrap();
    img
}

#[test]
fn a_killed_cp_over_an_existing_file_leaves_the_old_or_the_new_file() {
    if !require_strace("a_killed_cp_over_an_existing_file_leaves_the_old_or_the_new_file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let new = d.join("new.bin");
    std::fs::write(&new, pattern(2, 9 << 20)).unwrap();
    let new_s = new.to_str().unwrap();

    // Room for both: the old file until the commit, the new one from then on.
    let base = image_with(
        d,
        "roomy",
        &[("big", pattern(1, 6 << 20)), ("keep", pattern(3, 5000))],
        48 << 20,
        &[],
    );
    let seen = crash_points(
        Io::Threads,
        d,
        "cp over a file, room for both",
        &base,
        &["cp", new_s, "@:/big"],
        false,
        true,
        0,
    );
    assert!(seen.before >= 1 && seen.after >= 1, "{seen:?}");
    let seen = crash_points(
        Io::Uring,
        d,
        "cp over a file, room for both, io_uring",
        &base,
        &["cp", new_s, "@:/big"],
        false,
        true,
        0,
    );
    assert!(seen.before >= 1 && seen.after >= 1, "{seen:?}");

    // Room for one: the new contents cannot go to new blocks, so the command fails and the
    // image stays as it was (writing them into the old blocks gave a file with the old size
    // and the new bytes after a kill).
    let tight = image_with(
        d,
        "tight",
        &[("big", pattern(1, 20 << 20)), ("keep", pattern(3, 5000))],
        40 << 20,
        &[],
    );
    std::fs::write(&new, pattern(2, 20 << 20)).unwrap();
    let seen = crash_points(
        Io::Threads,
        d,
        "cp over a file, room for one",
        &tight,
        &["cp", new_s, "@:/big"],
        false,
        true,
        0,
    );
    let out = Command::new(BIN)
        .arg("cp")
        .arg(&new)
        .arg(format!("{}:/big", tight.display()))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no space left on device"), "{err}");
    assert_eq!((seen.after, seen.between), (0, 0), "{seen:?}");

    // Two overwrites in one command, the second with room only once the first one's old
    // blocks are free: they are committed first, so it succeeds, each file old or new.
    let two = image_with(
        d,
        "two",
        &[
            ("d/a", pattern(4, 10_000_000)),
            ("d/b", pattern(5, 10_000_000)),
        ],
        40 << 20,
        &[],
    );
    let (na, nb) = (d.join("a"), d.join("b"));
    std::fs::write(&na, pattern(6, 10_000_000)).unwrap();
    std::fs::write(&nb, pattern(7, 10_000_000)).unwrap();
    let seen = crash_points(
        Io::Threads,
        d,
        "cp over two files",
        &two,
        &["cp", na.to_str().unwrap(), nb.to_str().unwrap(), "@:/d"],
        false,
        false,
        1,
    );
    assert!(seen.after >= 1 && seen.between >= 1, "{seen:?}");
}

#[test]
fn a_killed_cp_r_p_leaves_each_file_absent_or_complete_with_its_times() {
    if !require_strace("a_killed_cp_r_p_leaves_each_file_absent_or_complete_with_its_times") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 700 files: more changed inodes than half of the smallest journal (1024 blocks) holds,
    // so the copy commits early, between files.
    let files: Vec<(String, Vec<u8>)> = (0..700)
        .map(|k| {
            (
                format!("src/d{}/f{k:04}", k % 5),
                pattern(100 + k as u64, (k * 37) % 9000),
            )
        })
        .chain([("src/big".to_string(), pattern(9, 3 << 20))])
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let src_parent = d.join("host");
    std::fs::create_dir(&src_parent).unwrap();
    write_tree(&src_parent, &refs, 1_650_000_000);
    std::os::unix::fs::symlink("d0/f0000", src_parent.join("src/link")).unwrap();
    let base = image_with(
        d,
        "tree",
        &[("keep", pattern(3, 5000))],
        64 << 20,
        &["-J", "size=4"],
    );
    let src = src_parent.join("src");
    let seen = crash_points(
        Io::Threads,
        d,
        "cp -r -p of a tree",
        &base,
        &["cp", "-r", "-p", src.to_str().unwrap(), "@:/"],
        true,
        false,
        2,
    );
    assert!(
        seen.between >= 2,
        "the copy should be cut between files at several points: {seen:?}"
    );
}

#[test]
fn killed_mkdir_rm_and_mv_leave_each_entry_before_or_after() {
    if !require_strace("killed_mkdir_rm_and_mv_leave_each_entry_before_or_after") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let files: Vec<(String, Vec<u8>)> = (0..300)
        .map(|k| {
            (
                format!("tree/s{}/f{k}", k % 4),
                pattern(k as u64, (k * 53) % 5000),
            )
        })
        .collect();
    let mut refs: Vec<(&str, Vec<u8>)> =
        files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    refs.push(("a/x/file", pattern(7, 70_000)));
    refs.push(("b/other", pattern(8, 100)));
    let base = image_with(d, "ops", &refs, 32 << 20, &["-J", "size=4"]);
    crash_points(
        Io::Threads,
        d,
        "mkdir -p",
        &base,
        &["mkdir", "-p", "@:/n/e/w", "@:/b/c"],
        true,
        false,
        0,
    );
    let seen = crash_points(
        Io::Threads,
        d,
        "rm -r",
        &base,
        &["rm", "-r", "@:/tree"],
        true,
        false,
        0,
    );
    assert!(seen.before + seen.after + seen.between > 0);
    crash_points(
        Io::Threads,
        d,
        "mv",
        &base,
        &["mv", "@:/a/x", "@:/b/y"],
        true,
        true,
        0,
    );
}

#[test]
fn cp_over_a_file_keeps_its_inode_and_links_and_sets_its_mtime_as_cp_does() {
    if !require_kernel("cp_over_a_file_keeps_its_inode_and_links_and_sets_its_mtime_as_cp_does") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tree = d.join("t");
    std::fs::create_dir(&tree).unwrap();
    write_tree(&tree, &[("f", pattern(1, 300_000))], 1_600_000_000);
    std::fs::hard_link(tree.join("f"), tree.join("g")).unwrap();
    let img = d.join("i.img");
    mke2fs_d(&tree, &img, "ext4", 4096, 32 << 20, &[]);
    let stat_of = |img: &Path| {
        let m = LoopMount::new(img, true).unwrap();
        let (f, g) = (
            std::fs::metadata(m.path().join("f")).unwrap(),
            std::fs::metadata(m.path().join("g")).unwrap(),
        );
        let bytes = std::fs::read(m.path().join("g")).unwrap();
        unmount(&m, "stat");
        drop(m);
        (f.ino(), g.ino(), f.nlink(), f.mtime(), bytes)
    };
    let (ino, _, _, _, _) = stat_of(&img);
    let new = d.join("new");
    std::fs::write(&new, pattern(2, 500_000)).unwrap();
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let out = Command::new(BIN)
        .arg("cp")
        .arg(&new)
        .arg(format!("{}:/f", img.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    e2fsck_clean(&img).unwrap();
    let (fi, gi, nlink, mtime, bytes) = stat_of(&img);
    assert_eq!(
        (fi, gi, nlink),
        (ino, ino, 2),
        "the overwritten file keeps its inode and its hard link"
    );
    assert!(
        bytes == pattern(2, 500_000),
        "the hard link shows the new contents"
    );
    assert!(
        mtime >= start - 1,
        "mtime {mtime} is not the time of the copy ({start})"
    );
}
