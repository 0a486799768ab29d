//! `Fs::sync` through the jbd2 journal, judged by e2fsprogs and the kernel.
//!
//! - Ordinary syncs leave a clean image (strict `e2fsck -fn`), an empty journal with the
//!   features a kernel mount sets (`dumpe2fs`), and a tree the kernel sees as we do.
//! - Crashes: a workload (files with data, directories, a slow symlink whose block starts with
//!   the jbd2 magic — logged escaped —, unlinks whose blocks new files want, renames, a removed
//!   subtree, appends, a hard link) is synced on a `CrashDevice` whose power is cut after the
//!   Nth request of the sync — before and after every flush and inside the long phases —
//!   keeping a random part of the unflushed writes. Every crashed image must be, as
//!   (a) `e2fsck -fy` (which replays) then a strict `e2fsck -fn` leave it, (b) the kernel mounts
//!   it (replaying), then strict `e2fsck -fn`, and (c) our read-only open (replay in memory)
//!   shows it, the tree before the sync or the tree after it, the same one in all three.
//!   1 KiB and 4 KiB blocks with metadata_csum (journal checksum v3), and 4 KiB without
//!   (no journal checksums).
//! - A writable open replays a committed transaction onto the image (`recover_journal`), and
//!   refuses without it; a failed write aborts the journal and recovery completes the sync.
//! - Large changes commit early (a transaction never outgrows the journal); a single sync too
//!   large for the journal is split.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use ext4kit_blockdev::{BioOp, BlockDevice, CrashDevice, FaultDevice, FaultRule, MemDevice};
use ext4kit_fs::format::inode::Timestamp;
use ext4kit_fs::write::ops::{NewInode, NewKind};
use ext4kit_fs::{FileType, Fs, OpenOptions, ROOT_INO};
use ext4kit_testkit::{
    Compare, Entry, Kind, LoopMount, Tree, diff_trees, e2fsck_clean, pattern, require_kernel, run, run_ok, snapshot,
};

/// Directory mtimes are left out: unlink and rename set them to the time of the run.
const CMP: Compare = Compare { mtime: true, mtime_ns: true, dir_mtime: false, owner: true, xattrs: false };

fn mkfs_bytes(dir: &Path, bs: u32, size: u64, extra: &[&str]) -> Vec<u8> {
    let img = dir.join("mkfs.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    let bs_s = bs.to_string();
    let mut args = vec!["-q", "-F", "-t", "ext4", "-b", &bs_s, "-E", "lazy_itable_init=0,lazy_journal_init=0"];
    args.extend_from_slice(extra);
    args.push(img.to_str().unwrap());
    run_ok("mke2fs", &args);
    let bytes = std::fs::read(&img).unwrap();
    std::fs::remove_file(&img).unwrap();
    bytes
}

fn rw() -> OpenOptions {
    OpenOptions { writable: true, background_writeback: false, ..OpenOptions::default() }
}

fn ts(s: i64, ns: u32) -> Timestamp {
    Timestamp { seconds: s, nanoseconds: ns }
}

fn attrs(perm: u16, s: i64) -> NewInode {
    NewInode { uid: 1000, gid: 100, ..NewInode::with_time(perm, ts(s, 123_456_789)) }
}

/// Everything our reader sees under the root, as `ext4kit_testkit::snapshot` sees a mount.
fn fs_tree(fs: &Fs) -> Tree {
    let mut out = Tree::new();
    let mut groups: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    walk(fs, ROOT_INO, b"", &mut out, &mut groups);
    out
}

fn walk(fs: &Fs, dir: u32, prefix: &[u8], out: &mut Tree, groups: &mut BTreeMap<u32, Vec<u8>>) {
    let mut entries: Vec<_> = fs.read_dir(dir).unwrap().into_iter().filter(|e| !e.is_dot_or_dotdot()).collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for e in entries {
        let mut path = prefix.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&e.name);
        if path == b"lost+found" {
            continue;
        }
        let st = fs.stat(e.ino).unwrap();
        let kind = match st.file_type {
            FileType::Directory => Kind::Dir,
            FileType::Regular => Kind::File(fs.open_file(e.ino).unwrap().read_to_end(1 << 30).unwrap()),
            FileType::Symlink => Kind::Symlink(fs.read_link(e.ino).unwrap()),
            FileType::CharDevice => Kind::Char(st.rdev.unwrap().0, st.rdev.unwrap().1),
            FileType::BlockDevice => Kind::Block(st.rdev.unwrap().0, st.rdev.unwrap().1),
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => Kind::Socket,
        };
        let link_group = (st.file_type == FileType::Regular && st.nlink > 1).then(|| groups.entry(e.ino).or_insert_with(|| path.clone()).clone());
        out.insert(
            path.clone(),
            Entry {
                kind,
                mode: u32::from(st.mode & 0o7777),
                uid: st.uid,
                gid: st.gid,
                mtime: (st.mtime.seconds, i64::from(st.mtime.nanoseconds)),
                xattrs: BTreeMap::new(),
                link_group,
            },
        );
        if st.file_type == FileType::Directory {
            walk(fs, e.ino, &path, out, groups);
        }
    }
}

/// Our read-only view of an image (journal replayed in memory).
fn our_view(image: &[u8], bs: u32) -> Tree {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::from_image(bs, image.to_vec()));
    let fs = Fs::open(dev, &OpenOptions::default()).unwrap();
    fs_tree(&fs)
}

/// The kernel's view of the image file (mounted read-write: a journal is replayed).
fn kernel_view(img: &Path) -> Tree {
    let m = LoopMount::new(img, false).unwrap();
    let t = snapshot(m.path());
    m.unmount().unwrap();
    t
}

fn lookup(fs: &Fs, path: &str) -> u32 {
    fs.resolve(path.as_bytes(), false).unwrap()
}

fn dumpe2fs(img: &Path) -> String {
    run_ok("dumpe2fs", &["-h", img.to_str().unwrap()])
}

/// Target of the slow symlink whose block starts with the jbd2 magic (logged escaped).
fn magic_target() -> Vec<u8> {
    let mut t = vec![0xC0, 0x3B, 0x39, 0x98];
    t.extend_from_slice(&[b'm'; 100]);
    t
}

/// The tree the crash workload starts from, written by us and synced.
fn populate(fs: &Fs) {
    let t0 = 1_700_000_000;
    let docs = fs.create(ROOT_INO, b"docs", &NewKind::Directory, &attrs(0o755, t0)).unwrap();
    let old = fs.create(ROOT_INO, b"old", &NewKind::Directory, &attrs(0o750, t0)).unwrap();
    let sub = fs.create(old, b"sub", &NewKind::Directory, &attrs(0o700, t0)).unwrap();
    for i in 0..40u64 {
        let d = [docs, old, sub][i as usize % 3];
        let f = fs.create(d, format!("file-{i:03}").as_bytes(), &NewKind::Regular, &attrs(0o644, t0 + i as i64)).unwrap();
        fs.write_at(f, 0, &pattern(i, (i as usize * 3917) % 70_000)).unwrap();
        fs.set_times(f, None, Some(ts(t0 + i as i64, 7)), None).unwrap();
    }
    let big = fs.create(ROOT_INO, b"big", &NewKind::Directory, &attrs(0o755, t0)).unwrap();
    for i in 0..300u32 {
        fs.create(big, format!("entry-with-a-longer-name-{i:04}").as_bytes(), &NewKind::Regular, &attrs(0o600, t0)).unwrap();
    }
    let large = fs.create(ROOT_INO, b"large", &NewKind::Regular, &attrs(0o644, t0)).unwrap();
    fs.write_at(large, 0, &pattern(99, 600_000)).unwrap();
    fs.set_times(large, None, Some(ts(t0, 1)), None).unwrap();
    fs.symlink(docs, b"fast", b"file-000", &attrs(0o777, t0)).unwrap();
    fs.sync().unwrap();
}

/// The changes whose sync is crashed.
fn workload(fs: &Fs) {
    let t1 = 1_710_000_000;
    let docs = lookup(fs, "/docs");
    let old = lookup(fs, "/old");
    // Deletes first: their blocks are free in the new state and must not be reused before
    // the commit (new files below want blocks).
    fs.unlink(ROOT_INO, b"large").unwrap();
    for i in (0..40u64).step_by(4) {
        let d = ["/docs", "/old", "/old/sub"][i as usize % 3];
        fs.unlink(lookup(fs, d), format!("file-{i:03}").as_bytes()).unwrap();
    }
    let big = lookup(fs, "/big");
    for i in (0..300u32).step_by(3) {
        fs.unlink(big, format!("entry-with-a-longer-name-{i:04}").as_bytes()).unwrap();
    }
    // New files with data, a new directory tree.
    let new = fs.create(ROOT_INO, b"new", &NewKind::Directory, &attrs(0o755, t1)).unwrap();
    for i in 0..30u64 {
        let f = fs.create(new, format!("n-{i:02}").as_bytes(), &NewKind::Regular, &attrs(0o640, t1 + i as i64)).unwrap();
        fs.write_at(f, 0, &pattern(1000 + i, (i as usize * 7919) % 90_000 + 1)).unwrap();
        fs.set_times(f, None, Some(ts(t1 + i as i64, 9)), None).unwrap();
    }
    let big2 = fs.create(new, b"big2", &NewKind::Regular, &attrs(0o644, t1)).unwrap();
    fs.write_at(big2, 0, &pattern(77, 500_000)).unwrap();
    fs.set_times(big2, None, Some(ts(t1, 3)), None).unwrap();
    for i in 0..200u32 {
        fs.create(big, format!("added-{i:04}").as_bytes(), &NewKind::Regular, &attrs(0o600, t1)).unwrap();
    }
    fs.symlink(new, b"magic", &magic_target(), &attrs(0o777, t1)).unwrap();
    // Renames: a file across directories, a directory, a file over another.
    fs.rename(docs, b"file-003", new, b"moved-003").unwrap();
    fs.rename(old, b"sub", new, b"sub-moved").unwrap();
    fs.rename(docs, b"file-006", docs, b"file-009").unwrap();
    // An append (the old tail block is rewritten in place, past the old end of file).
    let f15 = lookup(fs, "/docs/file-015");
    let size = fs.stat(f15).unwrap().size;
    fs.write_at(f15, size, &pattern(5, 30_000)).unwrap();
    fs.set_times(f15, None, Some(ts(t1, 5)), None).unwrap();
    // A hard link; a removed subtree.
    let f21 = lookup(fs, "/docs/file-021");
    fs.link(f21, new, b"link-021").unwrap();
    for e in fs.read_dir(old).unwrap() {
        if !e.is_dot_or_dotdot() {
            fs.unlink(old, &e.name).unwrap();
        }
    }
    fs.rmdir(ROOT_INO, b"old").unwrap();
}

/// Runs the workload on a crash device over `base` and syncs, cutting the power after `cut`
/// requests of the sync (None: never). Returns the device and the number of requests the
/// sync made.
fn run_workload(base: &[u8], dev_bs: u32, cut: Option<u64>) -> (CrashDevice, u64) {
    let crash = CrashDevice::from_image(dev_bs, base.to_vec());
    let dev: Arc<dyn BlockDevice> = Arc::new(crash.clone());
    let fs = Fs::open(dev, &rw()).unwrap();
    workload(&fs);
    let before = crash.nr_requests();
    if let Some(n) = cut {
        crash.cut_power_after(n);
    }
    fs.sync().unwrap();
    let stats = fs.journal_stats().unwrap();
    assert_eq!((stats.transactions, stats.split_syncs, stats.early_commits), (1, 0, 0), "{stats:?}");
    drop(fs);
    let n = crash.nr_requests() - before;
    (crash, n)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Before,
    After,
}

fn which(want_before: &Tree, want_after: &Tree, got: &Tree, what: &str) -> State {
    let db = diff_trees(want_before, got, CMP);
    if db.is_empty() {
        return State::Before;
    }
    let da = diff_trees(want_after, got, CMP);
    if da.is_empty() {
        return State::After;
    }
    panic!(
        "{what}: neither the tree before the sync nor the one after it\nvs before ({}): {:?}\nvs after ({}): {:?}",
        db.len(),
        &db[..db.len().min(12)],
        da.len(),
        &da[..da.len().min(12)]
    );
}

/// e2fsprogs' reading of a committed transaction: one descriptor, one commit, and the
/// symlink block that starts with the jbd2 magic logged with the ESCAPE flag.
fn check_logdump(dir: &Path, img: &[u8], what: &str) {
    let limg = dir.join("log.img");
    std::fs::write(&limg, img).unwrap();
    let out = run_ok("debugfs", &["-R", "logdump -a", limg.to_str().unwrap()]);
    std::fs::remove_file(&limg).unwrap();
    let flags: Vec<u32> = out
        .lines()
        .filter_map(|l| l.split("(flags 0x").nth(1))
        .map(|f| u32::from_str_radix(f.trim_end_matches(')'), 16).unwrap())
        .collect();
    assert!(out.contains("type 1 (descriptor block)") && out.contains("type 2 (commit block)"), "{what}: logdump:\n{out}");
    assert!(flags.len() > 20, "{what}: logdump lists {} tags:\n{out}", flags.len());
    assert_eq!(flags.iter().filter(|f| *f & 1 != 0).count(), 1, "{what}: one escaped block expected:\n{out}");
    let descriptors = out.matches("type 1 (descriptor block)").count();
    assert_eq!(flags.iter().filter(|f| *f & 8 != 0).count(), descriptors, "{what}: one LAST_TAG per descriptor:\n{out}");
}

fn crash_matrix(bs: u32, dev_bs: u32, extra: &[&str], every: bool, label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut base = mkfs_bytes(dir.path(), bs, 32 << 20, extra);
    {
        let crash = CrashDevice::from_image(dev_bs, base);
        let dev: Arc<dyn BlockDevice> = Arc::new(crash.clone());
        let fs = Fs::open(dev, &rw()).unwrap();
        populate(&fs);
        drop(fs);
        base = crash.durable();
    }
    let base_img = dir.path().join("base.img");
    std::fs::write(&base_img, &base).unwrap();
    e2fsck_clean(&base_img).unwrap();
    let ours_before = our_view(&base, bs);
    let kernel_before = kernel_view(&base_img);
    assert!(diff_trees(&kernel_before, &ours_before, CMP).is_empty(), "{label}: our view of the base differs from the kernel's");

    // A full run: the state after, and where the sync's flushes fall.
    let (full, total) = run_workload(&base, dev_bs, None);
    let after = full.durable();
    assert_eq!(after, full.live(), "{label}: a finished sync leaves nothing unflushed");
    let after_img = dir.path().join("after.img");
    std::fs::write(&after_img, &after).unwrap();
    e2fsck_clean(&after_img).unwrap_or_else(|e| panic!("{label}: {e}"));
    let ours_after = our_view(&after, bs);
    let kernel_after = kernel_view(&after_img);
    assert!(diff_trees(&kernel_after, &ours_after, CMP).is_empty(), "{label}: our view after the sync differs from the kernel's");
    assert!(!diff_trees(&ours_before, &ours_after, CMP).is_empty());
    let flushes = {
        let fault = FaultDevice::new(Arc::new(CrashDevice::from_image(dev_bs, base.clone())));
        let fs = Fs::open(Arc::new(fault.clone()), &rw()).unwrap();
        workload(&fs);
        fault.clear_log();
        fs.sync().unwrap();
        let log: Vec<_> = fault.log().into_iter().filter(|r| r.op != BioOp::Read).collect();
        assert_eq!(log.len() as u64, total);
        let f: Vec<u64> = log.iter().enumerate().filter(|(_, r)| r.op == BioOp::Flush).map(|(i, _)| i as u64 + 1).collect();
        f
    };
    assert_eq!(flushes.len(), 4, "{label}: the sync flushes after the log, the commit, the home writes and the cleanup: {flushes:?}");
    // Crash points: every request of the sync when `every`, else the start, the middle of the
    // data and home-write phases, and just before and after every flush; keeping none, all,
    // or a random half of the unflushed writes. The commit block alone in flight (torn when a
    // device block is smaller than a filesystem block) gets four more draws.
    let mut points: Vec<u64> = if every { (0..=total).collect() } else { vec![0, 1, flushes[0] / 2, (flushes[1] + flushes[2]) / 2] };
    for &f in &flushes {
        points.extend([f - 1, f]);
    }
    points.sort_unstable();
    points.dedup();
    let mut cases: Vec<(u64, f64)> = points.iter().enumerate().map(|(k, &cut)| (cut, [0.0, 1.0, 0.5, 0.5][k % 4])).collect();
    cases.extend([(flushes[1] - 1, 0.5); 4]);
    eprintln!("{label}: the sync makes {total} requests, flushes after {flushes:?}; {} crashes", cases.len());
    let mut seen = [0usize; 2];
    for (k, &(cut, keep)) in cases.iter().enumerate() {
        let (dev, _) = run_workload(&base, dev_bs, Some(cut));
        let img = dev.crash(k as u64 * 7919 + u64::from(bs), keep);
        let what = format!("{label}: crash after request {cut} of {total} (keep {keep}, draw {k})");
        if cut == flushes[1] {
            check_logdump(dir.path(), &img, &what);
        }
        // (c) our reader, replaying in memory.
        let ours = which(&ours_before, &ours_after, &our_view(&img, bs), &format!("{what}, our reader"));
        // (b) the kernel replays at mount; e2fsck is silent afterwards.
        let kimg = dir.path().join(format!("k{k}.img"));
        std::fs::write(&kimg, &img).unwrap();
        let kernel = which(&kernel_before, &kernel_after, &kernel_view(&kimg), &format!("{what}, kernel"));
        e2fsck_clean(&kimg).unwrap_or_else(|e| panic!("{what}: after the kernel's recovery: {e}"));
        std::fs::remove_file(&kimg).unwrap();
        // (a) e2fsck -fy replays; then strict e2fsck -fn.
        let fimg = dir.path().join(format!("f{k}.img"));
        std::fs::write(&fimg, &img).unwrap();
        let (code, text) = run("e2fsck", &[OsStr::new("-fy"), fimg.as_os_str()]);
        assert!(code <= 1, "{what}: e2fsck -fy exited {code}:\n{text}");
        e2fsck_clean(&fimg).unwrap_or_else(|e| panic!("{what}: after e2fsck -fy ({text}): {e}"));
        let fixed = which(&ours_before, &ours_after, &our_view(&std::fs::read(&fimg).unwrap(), bs), &format!("{what}, after e2fsck"));
        std::fs::remove_file(&fimg).unwrap();
        assert_eq!((ours, kernel), (fixed, fixed), "{what}: the three recoveries disagree");
        seen[usize::from(fixed == State::After)] += 1;
    }
    eprintln!("{label}: {} crashes recovered to the state before the sync, {} to the state after", seen[0], seen[1]);
    assert!(seen[0] >= 2 && seen[1] >= 2, "{label}: crash points should reach both states: {seen:?}");
}

#[test]
fn crashes_during_sync_recover_to_before_or_after_1k_csum() {
    if !require_kernel("crashes_during_sync_recover_to_before_or_after_1k_csum") {
        return;
    }
    crash_matrix(1024, 1024, &[], true, "1k metadata_csum");
}

#[test]
fn crashes_during_sync_recover_to_before_or_after_4k_csum() {
    if !require_kernel("crashes_during_sync_recover_to_before_or_after_4k_csum") {
        return;
    }
    crash_matrix(4096, 1024, &[], false, "4k metadata_csum, 1 KiB device blocks");
}

#[test]
fn crashes_during_sync_recover_to_before_or_after_4k_no_csum() {
    if !require_kernel("crashes_during_sync_recover_to_before_or_after_4k_no_csum") {
        return;
    }
    crash_matrix(4096, 4096, &["-O", "^metadata_csum"], false, "4k no metadata_csum");
}
