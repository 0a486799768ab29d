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
//! - A crashed image whose needs_recovery is clear must pass a strict `e2fsck -fn` as it is
//!   (the flag is cleared only after the empty journal superblock is durable); the same for
//!   power cuts during a writable open's journal recovery.
//! - An overwrite (truncate, rewrite, new mtime) under a commit hold crashes to the old file or
//!   the new one; without room for both copies it fails and the old blocks keep their bytes.
//! - Large changes commit early (a transaction never outgrows the journal); a single sync too
//!   large for the journal is split.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use ext4kit_blockdev::{BioOp, BlockDevice, CrashDevice, FaultDevice, FaultRule, MemDevice};
use ext4kit_fs::format::inode::Timestamp;
use ext4kit_fs::{FileType, Fs, OpenOptions, ROOT_INO};
use ext4kit_fs::{NewInode, NewKind};
use ext4kit_testkit::{
    Compare, Entry, Kind, LoopMount, Mke2fs, Tree, assert_clean_after_repair, debugfs, diff_trees,
    e2fsck_clean, pattern, require_kernel, run, run_ok, snapshot,
};

/// Directory mtimes are left out: unlink and rename set them to the time of the run.
const CMP: Compare = Compare {
    mtime: true,
    mtime_ns: true,
    dir_mtime: false,
    owner: true,
    xattrs: false,
};

fn mkfs_bytes(dir: &Path, bs: u32, size: u64, extra: &[&str]) -> Vec<u8> {
    let img = Mke2fs::new(dir.join("mkfs.img"))
        .block_size(bs)
        .size(size)
        .no_lazy_init()
        .extra(extra)
        .run();
    let bytes = std::fs::read(&img).unwrap();
    std::fs::remove_file(&img).unwrap();
    bytes
}

fn rw() -> OpenOptions {
    OpenOptions {
        writable: true,
        background_writeback: false,
        ..OpenOptions::default()
    }
}

fn ts(s: i64, ns: u32) -> Timestamp {
    Timestamp {
        seconds: s,
        nanoseconds: ns,
    }
}

fn attrs(perm: u16, s: i64) -> NewInode {
    NewInode {
        uid: 1000,
        gid: 100,
        ..NewInode::with_time(perm, ts(s, 123_456_789))
    }
}

/// Everything our reader sees under the root, as `ext4kit_testkit::snapshot` sees a mount.
fn fs_tree(fs: &Fs) -> Tree {
    let mut out = Tree::new();
    let mut groups: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    walk(fs, ROOT_INO, b"", &mut out, &mut groups);
    out
}

fn walk(fs: &Fs, dir: u32, prefix: &[u8], out: &mut Tree, groups: &mut BTreeMap<u32, Vec<u8>>) {
    let mut entries: Vec<_> = fs
        .read_dir(dir)
        .unwrap()
        .into_iter()
        .filter(|e| !e.is_dot_or_dotdot())
        .collect();
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
            FileType::Regular => {
                Kind::File(fs.open_file(e.ino).unwrap().read_to_end(1 << 30).unwrap())
            }
            FileType::Symlink => Kind::Symlink(fs.read_link(e.ino).unwrap()),
            FileType::CharDevice => Kind::Char(st.rdev.unwrap().0, st.rdev.unwrap().1),
            FileType::BlockDevice => Kind::Block(st.rdev.unwrap().0, st.rdev.unwrap().1),
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => Kind::Socket,
        };
        let link_group = (st.file_type == FileType::Regular && st.nlink > 1)
            .then(|| groups.entry(e.ino).or_insert_with(|| path.clone()).clone());
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

/// The value of a `dumpe2fs -h` line.
fn dumpe2fs_field(dump: &str, name: &str) -> String {
    dump.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
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
    let docs = fs
        .create(ROOT_INO, b"docs", &NewKind::Directory, &attrs(0o755, t0))
        .unwrap();
    let old = fs
        .create(ROOT_INO, b"old", &NewKind::Directory, &attrs(0o750, t0))
        .unwrap();
    let sub = fs
        .create(old, b"sub", &NewKind::Directory, &attrs(0o700, t0))
        .unwrap();
    for i in 0..40u64 {
        let d = [docs, old, sub][i as usize % 3];
        let f = fs
            .create(
                d,
                format!("file-{i:03}").as_bytes(),
                &NewKind::Regular,
                &attrs(0o644, t0 + i as i64),
            )
            .unwrap();
        fs.write_at(f, 0, &pattern(i, (i as usize * 3917) % 70_000))
            .unwrap();
        fs.set_times(f, None, Some(ts(t0 + i as i64, 7)), None)
            .unwrap();
    }
    let big = fs
        .create(ROOT_INO, b"big", &NewKind::Directory, &attrs(0o755, t0))
        .unwrap();
    for i in 0..300u32 {
        fs.create(
            big,
            format!("entry-with-a-longer-name-{i:04}").as_bytes(),
            &NewKind::Regular,
            &attrs(0o600, t0),
        )
        .unwrap();
    }
    let large = fs
        .create(ROOT_INO, b"large", &NewKind::Regular, &attrs(0o644, t0))
        .unwrap();
    fs.write_at(large, 0, &pattern(99, 600_000)).unwrap();
    fs.set_times(large, None, Some(ts(t0, 1)), None).unwrap();
    fs.symlink(docs, b"fast", b"file-000", &attrs(0o777, t0))
        .unwrap();
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
        fs.unlink(lookup(fs, d), format!("file-{i:03}").as_bytes())
            .unwrap();
    }
    let big = lookup(fs, "/big");
    for i in (0..300u32).step_by(3) {
        fs.unlink(big, format!("entry-with-a-longer-name-{i:04}").as_bytes())
            .unwrap();
    }
    // New files with data, a new directory tree.
    let new = fs
        .create(ROOT_INO, b"new", &NewKind::Directory, &attrs(0o755, t1))
        .unwrap();
    for i in 0..30u64 {
        let f = fs
            .create(
                new,
                format!("n-{i:02}").as_bytes(),
                &NewKind::Regular,
                &attrs(0o640, t1 + i as i64),
            )
            .unwrap();
        fs.write_at(f, 0, &pattern(1000 + i, (i as usize * 7919) % 90_000 + 1))
            .unwrap();
        fs.set_times(f, None, Some(ts(t1 + i as i64, 9)), None)
            .unwrap();
    }
    let big2 = fs
        .create(new, b"big2", &NewKind::Regular, &attrs(0o644, t1))
        .unwrap();
    fs.write_at(big2, 0, &pattern(77, 500_000)).unwrap();
    fs.set_times(big2, None, Some(ts(t1, 3)), None).unwrap();
    for i in 0..200u32 {
        fs.create(
            big,
            format!("added-{i:04}").as_bytes(),
            &NewKind::Regular,
            &attrs(0o600, t1),
        )
        .unwrap();
    }
    fs.symlink(new, b"magic", &magic_target(), &attrs(0o777, t1))
        .unwrap();
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
    assert_eq!(
        (stats.transactions, stats.split_syncs, stats.early_commits),
        (1, 0, 0),
        "{stats:?}"
    );
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
    let out = debugfs(&limg, "logdump -a");
    std::fs::remove_file(&limg).unwrap();
    let flags: Vec<u32> = out
        .lines()
        .filter_map(|l| l.split("(flags 0x").nth(1))
        .map(|f| u32::from_str_radix(f.trim_end_matches(')'), 16).unwrap())
        .collect();
    assert!(
        out.contains("type 1 (descriptor block)") && out.contains("type 2 (commit block)"),
        "{what}: logdump:\n{out}"
    );
    assert!(
        flags.len() > 20,
        "{what}: logdump lists {} tags:\n{out}",
        flags.len()
    );
    assert_eq!(
        flags.iter().filter(|f| *f & 1 != 0).count(),
        1,
        "{what}: one escaped block expected:\n{out}"
    );
    let descriptors = out.matches("type 1 (descriptor block)").count();
    assert_eq!(
        flags.iter().filter(|f| *f & 8 != 0).count(),
        descriptors,
        "{what}: one LAST_TAG per descriptor:\n{out}"
    );
}

/// A 32 MiB image made by mke2fs and populated (and synced) by us.
fn base_image(dir: &Path, bs: u32, extra: &[&str]) -> Vec<u8> {
    let crash = CrashDevice::from_image(bs, mkfs_bytes(dir, bs, 32 << 20, extra));
    let dev: Arc<dyn BlockDevice> = Arc::new(crash.clone());
    let fs = Fs::open(dev, &rw()).unwrap();
    populate(&fs);
    drop(fs);
    crash.durable()
}

/// The requests (writes and flushes) of the workload's sync, counted from 1: (all of them,
/// the positions of the flushes, the number of writes before each flush).
fn sync_requests(base: &[u8], dev_bs: u32) -> (u64, Vec<u64>, Vec<u64>) {
    let fault = FaultDevice::new(Arc::new(CrashDevice::from_image(dev_bs, base.to_vec())));
    let fs = Fs::open(Arc::new(fault.clone()), &rw()).unwrap();
    workload(&fs);
    fault.clear_log();
    fs.sync().unwrap();
    let log: Vec<_> = fault
        .log()
        .into_iter()
        .filter(|r| r.op != BioOp::Read)
        .collect();
    let mut flushes = Vec::new();
    let mut writes_before = Vec::new();
    let mut writes = 0;
    for (i, r) in log.iter().enumerate() {
        if r.op == BioOp::Flush {
            flushes.push(i as u64 + 1);
            writes_before.push(writes);
        } else {
            writes += 1;
        }
    }
    (log.len() as u64, flushes, writes_before)
}

/// Whether the superblock of `img` has `needs_recovery` (incompat 0x4) set.
fn needs_recovery(img: &[u8]) -> bool {
    u32::from_le_bytes(img[1024 + 0x60..1024 + 0x64].try_into().unwrap()) & 0x4 != 0
}

fn crash_matrix(bs: u32, dev_bs: u32, extra: &[&str], every: bool, label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let base = base_image(dir.path(), bs, extra);
    let base_img = dir.path().join("base.img");
    std::fs::write(&base_img, &base).unwrap();
    e2fsck_clean(&base_img).unwrap();
    let ours_before = our_view(&base, bs);
    let kernel_before = kernel_view(&base_img);
    assert!(
        diff_trees(&kernel_before, &ours_before, CMP).is_empty(),
        "{label}: our view of the base differs from the kernel's"
    );

    // A full run: the state after, and where the sync's flushes fall.
    let (full, total) = run_workload(&base, dev_bs, None);
    let after = full.durable();
    assert_eq!(
        after,
        full.live(),
        "{label}: a finished sync leaves nothing unflushed"
    );
    let after_img = dir.path().join("after.img");
    std::fs::write(&after_img, &after).unwrap();
    e2fsck_clean(&after_img).unwrap_or_else(|e| panic!("{label}: {e}"));
    let ours_after = our_view(&after, bs);
    let kernel_after = kernel_view(&after_img);
    assert!(
        diff_trees(&kernel_after, &ours_after, CMP).is_empty(),
        "{label}: our view after the sync differs from the kernel's"
    );
    assert!(!diff_trees(&ours_before, &ours_after, CMP).is_empty());
    let (n, flushes, _) = sync_requests(&base, dev_bs);
    assert_eq!(n, total);
    assert_eq!(
        flushes.len(),
        6,
        "{label}: the sync flushes after needs_recovery, the log, the commit, the home writes, the empty journal and the cleared flag: {flushes:?}"
    );
    // Crash points: every request of the sync when `every`, else the start, the middle of the
    // data and home-write phases, and just before and after every flush; keeping none, all,
    // or a random half of the unflushed writes. The commit block alone in flight (torn when a
    // device block is smaller than a filesystem block) gets four more draws.
    let mut points: Vec<u64> = if every {
        (0..=total).collect()
    } else {
        vec![
            0,
            1,
            flushes[0] / 2,
            (flushes[0] + flushes[1]) / 2,
            (flushes[2] + flushes[3]) / 2,
        ]
    };
    for &f in &flushes {
        points.extend([f - 1, f]);
    }
    points.sort_unstable();
    points.dedup();
    let mut cases: Vec<(u64, f64)> = points
        .iter()
        .enumerate()
        .map(|(k, &cut)| (cut, [0.0, 1.0, 0.5, 0.5][k % 4]))
        .collect();
    cases.extend([(flushes[2] - 1, 0.5); 4]);
    // Just before every flush, another random half of what is in flight: the superblock and
    // the journal superblock written in one batch could land one without the other.
    for &f in &flushes {
        cases.push((f - 1, 0.5));
    }
    eprintln!(
        "{label}: the sync makes {total} requests, flushes after {flushes:?}; {} crashes",
        cases.len()
    );
    let mut seen = [0usize; 2];
    for (k, &(cut, keep)) in cases.iter().enumerate() {
        let (dev, _) = run_workload(&base, dev_bs, Some(cut));
        let img = dev.crash(k as u64 * 7919 + u64::from(bs), keep);
        let what = format!("{label}: crash after request {cut} of {total} (keep {keep}, draw {k})");
        if cut == flushes[2] {
            check_logdump(dir.path(), &img, &what);
        }
        // needs_recovery clear: the image must be clean as it is, journal included (e2fsck
        // -fn says "needs_recovery flag is clear, but journal has data" otherwise).
        if !needs_recovery(&img) {
            let rimg = dir.path().join(format!("r{k}.img"));
            std::fs::write(&rimg, &img).unwrap();
            e2fsck_clean(&rimg).unwrap_or_else(|e| {
                panic!("{what}: needs_recovery is clear but the image as crashed is not clean: {e}")
            });
            std::fs::remove_file(&rimg).unwrap();
        }
        // (c) our reader, replaying in memory.
        let ours = which(
            &ours_before,
            &ours_after,
            &our_view(&img, bs),
            &format!("{what}, our reader"),
        );
        // (b) the kernel replays at mount; e2fsck is silent afterwards.
        let kimg = dir.path().join(format!("k{k}.img"));
        std::fs::write(&kimg, &img).unwrap();
        let kernel = which(
            &kernel_before,
            &kernel_after,
            &kernel_view(&kimg),
            &format!("{what}, kernel"),
        );
        e2fsck_clean(&kimg).unwrap_or_else(|e| panic!("{what}: after the kernel's recovery: {e}"));
        std::fs::remove_file(&kimg).unwrap();
        // (a) e2fsck -fy replays; then strict e2fsck -fn.
        let fimg = dir.path().join(format!("f{k}.img"));
        std::fs::write(&fimg, &img).unwrap();
        assert_clean_after_repair(&fimg, &what);
        let fixed = which(
            &ours_before,
            &ours_after,
            &our_view(&std::fs::read(&fimg).unwrap(), bs),
            &format!("{what}, after e2fsck"),
        );
        std::fs::remove_file(&fimg).unwrap();
        assert_eq!(
            (ours, kernel),
            (fixed, fixed),
            "{what}: the three recoveries disagree"
        );
        seen[usize::from(fixed == State::After)] += 1;
    }
    eprintln!(
        "{label}: {} crashes recovered to the state before the sync, {} to the state after",
        seen[0], seen[1]
    );
    assert!(
        seen[0] >= 2 && seen[1] >= 2,
        "{label}: crash points should reach both states: {seen:?}"
    );
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
    crash_matrix(
        4096,
        1024,
        &[],
        false,
        "4k metadata_csum, 1 KiB device blocks",
    );
}

#[test]
fn crashes_during_sync_recover_to_before_or_after_4k_no_csum() {
    if !require_kernel("crashes_during_sync_recover_to_before_or_after_4k_no_csum") {
        return;
    }
    crash_matrix(
        4096,
        4096,
        &["-O", "^metadata_csum"],
        false,
        "4k no metadata_csum",
    );
}

#[test]
fn ordinary_syncs_leave_an_empty_journal_a_clean_image_and_the_kernel_agrees() {
    if !require_kernel("ordinary_syncs_leave_an_empty_journal_a_clean_image_and_the_kernel_agrees")
    {
        return;
    }
    for (bs, extra, csum, bit64) in [
        (1024u32, &[][..], true, true),
        (4096, &["-O", "^metadata_csum"][..], false, true),
        (4096, &["-O", "^metadata_csum,^64bit"][..], false, false),
    ] {
        let label = format!("bs {bs} {extra:?}");
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("j.img");
        std::fs::write(&img, mkfs_bytes(dir.path(), bs, 64 << 20, extra)).unwrap();
        let fs = Fs::open_path(&img, &rw()).unwrap();
        populate(&fs);
        workload(&fs);
        fs.sync().unwrap();
        // Nothing changed: no transaction.
        fs.sync().unwrap();
        let stats = fs.journal_stats().unwrap();
        // mke2fs leaves s_sequence 1: transactions 2 and 4, as a kernel mount would number them.
        assert_eq!(
            (
                stats.transactions,
                stats.last_sequence,
                stats.split_syncs,
                stats.early_commits
            ),
            (2, 4, 0, 0),
            "{label}: {stats:?}"
        );
        assert!(stats.logged_blocks > 50, "{label}: {stats:?}");
        let ours = fs_tree(&fs);
        drop(fs);
        e2fsck_clean(&img).unwrap_or_else(|e| panic!("{label}: {e}"));
        let dump = dumpe2fs(&img);
        assert_eq!(
            dumpe2fs_field(&dump, "Journal start"),
            "0",
            "{label}:\n{dump}"
        );
        assert_eq!(
            dumpe2fs_field(&dump, "Journal sequence"),
            "0x00000005",
            "{label}:\n{dump}"
        );
        assert!(
            !dumpe2fs_field(&dump, "Filesystem features").contains("needs_recovery"),
            "{label}:\n{dump}"
        );
        let jf = dumpe2fs_field(&dump, "Journal features");
        assert_eq!(jf.contains("journal_checksum_v3"), csum, "{label}: {jf}");
        assert_eq!(jf.contains("journal_64bit"), bit64, "{label}: {jf}");
        let logdump = debugfs(&img, "logdump");
        assert!(
            logdump.contains("Journal starts at block 0")
                && !logdump.contains("Found expected sequence"),
            "{label}: {logdump}"
        );
        // The kernel sees what we see, and writes through the journal we left.
        let m = LoopMount::new(&img, false).unwrap();
        let d = diff_trees(&ours, &snapshot(m.path()), CMP);
        assert!(d.is_empty(), "{label}: kernel view differs: {d:?}");
        std::fs::write(m.path().join("by-kernel"), b"written by the kernel").unwrap();
        m.unmount().unwrap();
        e2fsck_clean(&img).unwrap_or_else(|e| panic!("{label}: after the kernel: {e}"));
        // And we write after the kernel.
        let fs = Fs::open_path(&img, &rw()).unwrap();
        let f = lookup(&fs, "/by-kernel");
        fs.unlink(ROOT_INO, b"by-kernel").unwrap();
        fs.create(
            ROOT_INO,
            b"after-kernel",
            &NewKind::Regular,
            &attrs(0o644, 1_720_000_000),
        )
        .unwrap();
        fs.sync().unwrap();
        assert!(f > 0);
        drop(fs);
        e2fsck_clean(&img)
            .unwrap_or_else(|e| panic!("{label}: after writing after the kernel: {e}"));
    }
}

#[test]
fn a_writable_open_replays_a_committed_transaction_onto_the_image() {
    if !require_kernel("a_writable_open_replays_a_committed_transaction_onto_the_image") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = base_image(dir.path(), 4096, &[]);
    let (_, flushes, _) = sync_requests(&base, 4096);
    // Power lost right after the commit: everything logged, nothing home.
    let (crashed, _) = run_workload(&base, 4096, Some(flushes[2]));
    let img_bytes = crashed.crash(1, 0.0);
    let (after, _) = run_workload(&base, 4096, None);
    let want = our_view(&after.durable(), 4096);
    let img = dir.path().join("r.img");
    std::fs::write(&img, &img_bytes).unwrap();
    assert!(dumpe2fs_field(&dumpe2fs(&img), "Filesystem features").contains("needs_recovery"));
    // Refused without being asked to recover.
    let e = Fs::open_path(&img, &rw()).unwrap_err();
    assert!(
        e.to_string().contains("journal needs recovery") && e.errno() == 30,
        "{e}"
    );
    // Replayed onto the image when asked.
    let fs = Fs::open_path(
        &img,
        &OpenOptions {
            recover_journal: true,
            ..rw()
        },
    )
    .unwrap();
    assert_eq!(fs.notices().len(), 1, "{:?}", fs.notices());
    assert!(
        fs.notices()[0].starts_with("journal needed recovery: replayed 1 transaction(s),")
            && fs.notices()[0].ends_with("onto the image"),
        "{:?}",
        fs.notices()
    );
    assert!(diff_trees(&want, &fs_tree(&fs), CMP).is_empty());
    drop(fs);
    // The image itself is recovered: clean for a strict check without -y, journal empty.
    e2fsck_clean(&img).unwrap();
    let dump = dumpe2fs(&img);
    assert!(
        !dumpe2fs_field(&dump, "Filesystem features").contains("needs_recovery"),
        "{dump}"
    );
    assert_eq!(dumpe2fs_field(&dump, "Journal start"), "0");
    // s_sequence past the replayed transaction (4): 5 + 1.
    assert_eq!(dumpe2fs_field(&dump, "Journal sequence"), "0x00000006");
    assert!(diff_trees(&want, &our_view(&std::fs::read(&img).unwrap(), 4096), CMP).is_empty());
    // It takes more syncs.
    let fs = Fs::open_path(&img, &rw()).unwrap();
    fs.create(
        ROOT_INO,
        b"later",
        &NewKind::Directory,
        &attrs(0o755, 1_720_000_000),
    )
    .unwrap();
    fs.sync().unwrap();
    assert_eq!(fs.journal_stats().unwrap().last_sequence, 7);
    drop(fs);
    e2fsck_clean(&img).unwrap();
    let mut want = want;
    want.insert(
        b"later".to_vec(),
        Entry {
            kind: Kind::Dir,
            mode: 0o755,
            uid: 1000,
            gid: 100,
            mtime: (1_720_000_000, 123_456_789),
            xattrs: BTreeMap::new(),
            link_group: None,
        },
    );
    assert!(diff_trees(&want, &kernel_view(&img), CMP).is_empty());

    // A journal the kernel wrote (transactions committed by fsync, not checkpointed, copied
    // while mounted), replayed onto the image by a writable open that then writes nothing.
    let kimg = dir.path().join("kernel.img");
    std::fs::write(&kimg, mkfs_bytes(dir.path(), 1024, 32 << 20, &[])).unwrap();
    let m = LoopMount::new(&kimg, false).unwrap();
    std::fs::create_dir(m.path().join("d")).unwrap();
    std::fs::write(m.path().join("d/old"), b"old").unwrap();
    run_ok("sync", &[]);
    for i in 0..50u64 {
        let p = m.path().join(format!("d/f{i}"));
        std::fs::write(&p, pattern(i, (i as usize * 131) % 5000)).unwrap();
        std::fs::File::open(&p).unwrap().sync_all().unwrap();
    }
    std::fs::remove_file(m.path().join("d/old")).unwrap();
    std::fs::File::open(m.path().join("d"))
        .unwrap()
        .sync_all()
        .unwrap();
    let want = snapshot(m.path());
    let copy = dir.path().join("kernel-copy.img");
    std::fs::copy(&kimg, &copy).unwrap();
    m.unmount().unwrap();
    assert!(dumpe2fs_field(&dumpe2fs(&copy), "Filesystem features").contains("needs_recovery"));
    let fs = Fs::open_path(
        &copy,
        &OpenOptions {
            recover_journal: true,
            ..rw()
        },
    )
    .unwrap();
    assert!(
        fs.notices().iter().any(|n| n.contains("onto the image")),
        "{:?}",
        fs.notices()
    );
    let d = diff_trees(&want, &fs_tree(&fs), CMP);
    assert!(d.is_empty(), "{d:?}");
    drop(fs);
    e2fsck_clean(&copy).unwrap();
    let d = diff_trees(&want, &kernel_view(&copy), CMP);
    assert!(d.is_empty(), "{d:?}");
}

#[test]
fn a_failed_write_aborts_the_journal_and_recovery_finishes_or_undoes_the_sync() {
    if !require_kernel("a_failed_write_aborts_the_journal_and_recovery_finishes_or_undoes_the_sync")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = base_image(dir.path(), 1024, &[]);
    let (_, _, writes_before) = sync_requests(&base, 1024);
    let before = our_view(&base, 1024);
    let after = our_view(&run_workload(&base, 1024, None).0.durable(), 1024);
    // The needs_recovery write, a log write, the commit block, the first home write, the
    // empty journal superblock, the cleared flag.
    let cases = [
        (writes_before[0] - 1, &before),
        (writes_before[1] - 2, &before),
        (writes_before[1], &before),
        (writes_before[2], &after),
        (writes_before[3], &after),
        (writes_before[4], &after),
    ];
    for (fail, want) in cases {
        let crash = CrashDevice::from_image(1024, base.clone());
        let fault = FaultDevice::new(Arc::new(crash.clone()));
        let fs = Fs::open(Arc::new(fault.clone()), &rw()).unwrap();
        workload(&fs);
        fault.add_rule(FaultRule::Nth {
            op: Some(BioOp::Write),
            n: fail,
        });
        let e = fs.sync().unwrap_err();
        assert_eq!(e.errno(), 5, "write {fail}: {e}");
        let e = fs.sync().unwrap_err();
        assert!(
            e.to_string().contains("journal was aborted") && e.errno() == 30,
            "write {fail}: {e}"
        );
        drop(fs);
        // What the device holds, recovered by a writable open.
        let img = dir.path().join(format!("w{fail}.img"));
        std::fs::write(&img, crash.live()).unwrap();
        let fs = Fs::open_path(
            &img,
            &OpenOptions {
                recover_journal: true,
                ..rw()
            },
        )
        .unwrap();
        let got = fs_tree(&fs);
        drop(fs);
        let d = diff_trees(want, &got, CMP);
        assert!(d.is_empty(), "write {fail}: {d:?}");
        e2fsck_clean(&img).unwrap_or_else(|e| panic!("write {fail}: {e}"));
    }
}

#[test]
fn a_busy_journal_without_needs_recovery_is_dropped_at_a_writable_open() {
    if !require_kernel("a_busy_journal_without_needs_recovery_is_dropped_at_a_writable_open") {
        return;
    }
    // Power lost after the home writes, with the superblock (needs_recovery cleared) written
    // and the journal superblock not (our writer no longer leaves this, since it clears the
    // flag only after the empty journal is durable, but an older writer could): the kernel
    // drops such a journal at mount; so do we.
    let dir = tempfile::tempdir().unwrap();
    let base = base_image(dir.path(), 1024, &[]);
    let (_, flushes, _) = sync_requests(&base, 1024);
    let (dev, _) = run_workload(&base, 1024, Some(flushes[3]));
    let mut img_bytes = dev.crash(0, 0.0);
    let sb = ext4kit_fs::format::Superblock::parse(&img_bytes[1024..2048]).unwrap();
    let mut sb = sb;
    let mut f = sb.feature_incompat();
    f.remove(ext4kit_fs::format::IncompatFeatures::RECOVER);
    sb.set_feature_incompat(f);
    sb.update_checksum();
    img_bytes[1024..2048].copy_from_slice(sb.as_bytes());
    let img = dir.path().join("busy.img");
    std::fs::write(&img, &img_bytes).unwrap();
    let (_, text) = run("e2fsck", &[OsStr::new("-fn"), img.as_os_str()]);
    assert!(
        text.contains("needs_recovery flag is clear, but journal has data"),
        "{text}"
    );
    let fs = Fs::open_path(&img, &rw()).unwrap();
    drop(fs);
    e2fsck_clean(&img).unwrap();
    let after = our_view(&run_workload(&base, 1024, None).0.durable(), 1024);
    assert!(diff_trees(&after, &our_view(&std::fs::read(&img).unwrap(), 1024), CMP).is_empty());
    // The sequence went past the dropped transaction (4): 5 + 1.
    assert_eq!(
        dumpe2fs_field(&dumpe2fs(&img), "Journal sequence"),
        "0x00000006"
    );
}

#[test]
fn large_changes_commit_early_and_a_sync_too_large_for_the_journal_is_split() {
    if !require_kernel("large_changes_commit_early_and_a_sync_too_large_for_the_journal_is_split") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("small-journal.img");
    // A 1024-block journal: at most about 1000 blocks per transaction.
    std::fs::write(
        &img,
        mkfs_bytes(dir.path(), 1024, 64 << 20, &["-J", "size=1", "-N", "16384"]),
    )
    .unwrap();
    let fs = Fs::open_path(&img, &rw()).unwrap();
    let d = fs
        .create(
            ROOT_INO,
            b"many",
            &NewKind::Directory,
            &attrs(0o755, 1_700_000_000),
        )
        .unwrap();
    for i in 0..6000u32 {
        fs.create(
            d,
            format!("file-{i:05}").as_bytes(),
            &NewKind::Regular,
            &attrs(0o644, 1_700_000_000),
        )
        .unwrap();
    }
    fs.sync().unwrap();
    let stats = fs.journal_stats().unwrap();
    assert!(
        stats.early_commits >= 2 && stats.split_syncs == 0,
        "{stats:?}"
    );
    // Bulk creation (the builder's calls) does not commit early: one sync, split.
    let parent = fs
        .create_detached(ROOT_INO, &NewKind::Directory, &attrs(0o755, 1_700_000_000))
        .unwrap();
    let mut entries = Vec::new();
    for i in 0..5000u32 {
        let ino = fs
            .create_detached(parent, &NewKind::Regular, &attrs(0o600, 1_700_000_000))
            .unwrap();
        entries.push((format!("bulk-{i:05}").into_bytes(), ino, 1u8));
    }
    fs.create_dir_with(
        ROOT_INO,
        b"bulk",
        parent,
        &entries,
        &attrs(0o755, 1_700_000_000),
    )
    .unwrap();
    fs.sync().unwrap();
    let stats2 = fs.journal_stats().unwrap();
    assert_eq!(stats2.split_syncs, 1, "{stats2:?}");
    assert!(stats2.transactions >= stats.transactions + 2, "{stats2:?}");
    drop(fs);
    e2fsck_clean(&img).unwrap();
    let m = LoopMount::new(&img, true).unwrap();
    assert_eq!(
        std::fs::read_dir(m.path().join("many")).unwrap().count(),
        6000
    );
    assert_eq!(
        std::fs::read_dir(m.path().join("bulk")).unwrap().count(),
        5000
    );
    m.unmount().unwrap();
}

/// Strict `e2fsck -fn` of `img` as it is when its needs_recovery is clear, else after
/// `e2fsck -fy` on a copy.
fn clean_as_left(dir: &Path, img: &[u8], what: &str) {
    let p = dir.join("left.img");
    std::fs::write(&p, img).unwrap();
    if needs_recovery(img) {
        let (code, text) = run("e2fsck", &[OsStr::new("-fy"), p.as_os_str()]);
        assert!(code <= 1, "{what}: e2fsck -fy exited {code}:\n{text}");
    }
    e2fsck_clean(&p).unwrap_or_else(|e| panic!("{what}: {e}"));
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn crashes_during_a_writable_opens_recovery_leave_a_replayable_or_clean_image() {
    if !require_kernel("crashes_during_a_writable_opens_recovery_leave_a_replayable_or_clean_image")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = base_image(dir.path(), 1024, &[]);
    let (_, flushes, _) = sync_requests(&base, 1024);
    // Power lost right after the commit: everything logged, nothing home.
    let committed = run_workload(&base, 1024, Some(flushes[2])).0.crash(1, 0.0);
    assert!(needs_recovery(&committed));
    let want = our_view(&run_workload(&base, 1024, None).0.durable(), 1024);
    let recover = OpenOptions {
        recover_journal: true,
        ..rw()
    };
    let probe = CrashDevice::from_image(1024, committed.clone());
    drop(Fs::open(Arc::new(probe.clone()), &recover).unwrap());
    let total = probe.nr_requests();
    assert!(total >= 4, "{total}");
    eprintln!("recovery makes {total} requests");
    for cut in 0..=total {
        // Per cut: one of none / all / half of the unflushed writes; near the end (journal
        // superblock, superblock) four more halves.
        let halves = if cut + 4 >= total { 4 } else { 0 };
        let keeps = std::iter::once([0.0, 1.0, 0.5][cut as usize % 3])
            .chain(std::iter::repeat_n(0.5, halves));
        for (k, keep) in keeps.enumerate() {
            let crash = CrashDevice::from_image(1024, committed.clone());
            crash.cut_power_after(cut);
            drop(Fs::open(Arc::new(crash.clone()), &recover).unwrap());
            let img = crash.crash(cut * 31 + k as u64, keep);
            let what = format!("recovery cut after request {cut} of {total} (keep {keep})");
            clean_as_left(dir.path(), &img, &what);
            assert!(
                diff_trees(&want, &our_view(&img, 1024), CMP).is_empty(),
                "{what}: not the committed tree"
            );
        }
    }
}

#[test]
fn an_overwrite_under_a_commit_hold_crashes_to_the_old_or_the_new_file() {
    if !require_kernel("an_overwrite_under_a_commit_hold_crashes_to_the_old_or_the_new_file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let old = pattern(1, 3 << 20);
    let new = pattern(2, 2 << 20);
    let start = {
        let crash = CrashDevice::from_image(4096, mkfs_bytes(dir.path(), 4096, 16 << 20, &[]));
        let fs = Fs::open(Arc::new(crash.clone()), &rw()).unwrap();
        let f = fs
            .create(
                ROOT_INO,
                b"f",
                &NewKind::Regular,
                &attrs(0o644, 1_700_000_000),
            )
            .unwrap();
        fs.write_at(f, 0, &old).unwrap();
        fs.sync().unwrap();
        drop(fs);
        crash.durable()
    };
    // Truncate and rewrite under a hold, then sync: cut at every request.
    let run_once = |cut: Option<u64>| {
        let crash = CrashDevice::from_image(4096, start.clone());
        let fs = Fs::open(Arc::new(crash.clone()), &rw()).unwrap();
        let f = lookup(&fs, "/f");
        let before = crash.nr_requests();
        if let Some(n) = cut {
            crash.cut_power_after(n);
        }
        let hold = fs.hold_commits(new.len() as u64).unwrap();
        fs.set_size(f, 0).unwrap();
        fs.write_at(f, 0, &new).unwrap();
        fs.set_times(f, None, Some(ts(1_720_000_000, 5)), None)
            .unwrap();
        hold.end().unwrap();
        fs.sync().unwrap();
        drop(fs);
        (crash.clone(), crash.nr_requests() - before)
    };
    let (_, total) = run_once(None);
    let mut seen = [0usize; 2];
    eprintln!("the overwrite's sync makes {total} requests");
    for cut in 0..=total {
        for (k, keep) in [[0.0, 1.0, 0.5][cut as usize % 3]].into_iter().enumerate() {
            let img = run_once(Some(cut)).0.crash(cut * 7 + k as u64, keep);
            let what = format!("overwrite cut after request {cut} of {total} (keep {keep})");
            clean_as_left(dir.path(), &img, &what);
            let fs = Fs::open(
                Arc::new(MemDevice::from_image(4096, img)),
                &OpenOptions::default(),
            )
            .unwrap();
            let f = lookup(&fs, "/f");
            let got = fs.open_file(f).unwrap().read_to_end(1 << 30).unwrap();
            let mtime = fs.stat(f).unwrap().mtime;
            let is_new = got == new && (mtime.seconds, mtime.nanoseconds) == (1_720_000_000, 5);
            assert!(
                got == old || is_new,
                "{what}: /f holds {} bytes, neither the old nor the new contents",
                got.len()
            );
            seen[usize::from(is_new)] += 1;
        }
    }
    assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");

    // No room for both copies: under the hold, the old blocks are not reused; the write fails.
    let crash = CrashDevice::from_image(4096, start.clone());
    let fs = Fs::open(Arc::new(crash.clone()), &rw()).unwrap();
    let f = lookup(&fs, "/f");
    let free = fs.superblock().free_blocks_count() * 4096;
    let big = pattern(3, (free + (1 << 20)) as usize);
    let hold = fs.hold_commits(big.len() as u64).unwrap();
    fs.set_size(f, 0).unwrap();
    let r = fs.write_at(f, 0, &big).and_then(|()| fs.flush_data());
    assert!(matches!(r, Err(ext4kit_fs::Error::NoSpace(_))), "{r:?}");
    drop(hold);
    drop(fs);
    let fs = Fs::open(
        Arc::new(MemDevice::from_image(4096, crash.live())),
        &OpenOptions::default(),
    )
    .unwrap();
    assert_eq!(
        fs.open_file(lookup(&fs, "/f"))
            .unwrap()
            .read_to_end(1 << 30)
            .unwrap(),
        old,
        "the old blocks kept their contents"
    );
}
