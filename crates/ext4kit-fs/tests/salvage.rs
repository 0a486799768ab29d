//! Journal replay against `e2fsck -E journal_only` on journals the kernel wrote (issue 9,
//! item 16): with revokes, with logged blocks whose checksum fails (skipped, the rest
//! replayed, as jbd2 and e2fsck do), and with fast commits (refused, never an older tree).
//!
//! Fixtures: an ext4 image (4 KiB blocks, metadata_csum: journal checksum v3) mounted through
//! a loop device, written with fsync'd changes, copied while still mounted (the copy's
//! journal needs recovery), then unmounted.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ext4kit_blockdev::{BlockDevice, MemDevice};
use ext4kit_fs::{Fs, JournalMode, OpenOptions};
use ext4kit_testkit::{LoopMount, Mke2fs, os, require_kernel, run, run_ok};

const BS: u64 = 4096;

/// Formats `img` (64 MiB, 4 KiB blocks, `extra` options), mounts it, runs `work` on the mount
/// and returns a copy taken while mounted (`copy.img` next to it).
fn kernel_journal(dir: &Path, extra: &[&str], work: impl FnOnce(&Path)) -> PathBuf {
    let img = Mke2fs::new(dir.join("live.img"))
        .block_size(4096)
        .size(64 << 20)
        .no_lazy_init()
        .extra(extra)
        .run();
    let m = LoopMount::new(&img, false).unwrap();
    work(m.path());
    let copy = dir.join("copy.img");
    std::fs::copy(&img, &copy).unwrap();
    m.unmount().unwrap();
    let hdr = run_ok("dumpe2fs", &["-h", copy.to_str().unwrap()]);
    assert!(
        hdr.contains("needs_recovery"),
        "the copy's journal needs no recovery: {hdr}"
    );
    copy
}

fn fsync(p: &Path) {
    std::fs::File::open(p).unwrap().sync_all().unwrap();
}

/// Files written and fsync'd one transaction each, and a directory whose blocks are logged
/// then freed (revoked) in a later transaction.
fn workload(p: &Path) {
    std::fs::create_dir(p.join("doomed")).unwrap();
    for i in 0..300 {
        std::fs::write(
            p.join(format!("doomed/a-rather-long-file-name-{i:04}")),
            b"d",
        )
        .unwrap();
    }
    fsync(&p.join("doomed"));
    fsync(p);
    std::fs::remove_dir_all(p.join("doomed")).unwrap();
    fsync(p);
    for i in 0..8u64 {
        let f = p.join(format!("f{i}"));
        std::fs::write(&f, ext4kit_testkit::pattern(i, 3000 * i as usize + 100)).unwrap();
        fsync(&f);
    }
}

/// `e2fsck -fy -E journal_only` on a copy of `img`: the replayed image's bytes.
fn e2fsck_replayed(img: &Path) -> Vec<u8> {
    let c = img.with_extension("e2fsck.img");
    std::fs::copy(img, &c).unwrap();
    let (code, out) = run(
        "e2fsck",
        &[os("-fy"), os("-E"), os("journal_only"), c.as_os_str()],
    );
    assert!(
        out.contains("recovering journal"),
        "e2fsck did not replay (exit {code}): {out}"
    );
    std::fs::read(&c).unwrap()
}

/// The journal inode's blocks (left out of comparisons: e2fsck and we reset its superblock
/// differently) — plus block 0 (the superblock: state, counts, checksums).
fn skipped_blocks(img: &Path) -> Vec<u64> {
    let (_, out) = run("debugfs", &[os("-R"), os("blocks <8>"), img.as_os_str()]);
    let mut v: Vec<u64> = out
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    v.push(0);
    v.sort_unstable();
    v
}

/// Blocks of `got` (read through `fs`) that differ from `want` (an image's bytes).
fn differing(fs: &Fs, want: &[u8], skip: &[u64]) -> Vec<u64> {
    let n = fs.superblock().blocks_count();
    (1..n)
        .filter(|b| skip.binary_search(b).is_err())
        .filter(|&b| {
            let at = (b * BS) as usize;
            let mut got = fs.read_block(b).unwrap();
            let mut w = want[at..at + BS as usize].to_vec();
            if b == 1 {
                // The descriptor table: libext2fs recomputes bg_itable_unused and the
                // descriptor checksum when e2fsck closes the image (not a replay result).
                let ds = usize::from(fs.superblock().desc_size());
                for d in (0..got.len()).step_by(ds) {
                    got[d + 28..d + 32].fill(0);
                    w[d + 28..d + 32].fill(0);
                }
            }
            got != w
        })
        .collect()
}

fn open_bytes(bytes: Vec<u8>, opts: &OpenOptions) -> ext4kit_fs::Result<(Fs, Arc<MemDevice>)> {
    let dev = Arc::new(MemDevice::from_image(4096, bytes));
    let fs = Fs::open(Arc::clone(&dev) as Arc<dyn BlockDevice>, opts)?;
    Ok((fs, dev))
}

#[test]
fn in_memory_and_on_image_replay_match_e2fsck_with_revokes() {
    if !require_kernel("replay with revokes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = kernel_journal(dir.path(), &[], workload);
    let (_, logdump) = run("debugfs", &[os("-R"), os("logdump"), img.as_os_str()]);
    assert!(
        logdump.contains("revoke"),
        "no revoke block in the journal: {logdump}"
    );
    let want = e2fsck_replayed(&img);
    let skip = skipped_blocks(&img);
    let bytes = std::fs::read(&img).unwrap();
    let (fs, _) = open_bytes(bytes.clone(), &OpenOptions::default()).unwrap();
    let r = fs.journal_replay().expect("replayed").clone();
    assert!(r.revoked > 0 && r.bad_checksum.is_empty(), "{r:?}");
    assert_eq!(
        differing(&fs, &want, &skip),
        Vec::<u64>::new(),
        "in-memory replay vs e2fsck"
    );
    drop(fs);
    // On the image (--replay-journal): the same blocks land home.
    let (fs, dev) = open_bytes(
        bytes,
        &OpenOptions {
            writable: true,
            recover_journal: true,
            background_writeback: false,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    fs.sync().unwrap();
    drop(fs);
    let (fs, _) = open_bytes(dev.snapshot(), &OpenOptions::default()).unwrap();
    assert!(fs.journal_replay().is_none(), "the journal was emptied");
    assert_eq!(
        differing(&fs, &want, &skip),
        Vec::<u64>::new(),
        "on-image replay vs e2fsck"
    );
}

/// (fs block, journal block) of every logged block, per transaction, from `debugfs logdump -a`.
fn logged_blocks(img: &Path) -> Vec<Vec<(u64, u32)>> {
    let (_, out) = run("debugfs", &[os("-R"), os("logdump -a"), img.as_os_str()]);
    let mut txns: Vec<Vec<(u64, u32)>> = Vec::new();
    for l in out.lines() {
        if l.starts_with("Dumping descriptor block") {
            txns.push(Vec::new());
        }
        let l = l.trim();
        if let Some(rest) = l.strip_prefix("FS block ") {
            let (fsb, rest) = rest.split_once(" logged at journal block ").unwrap();
            let jb = rest.split_whitespace().next().unwrap();
            txns.last_mut()
                .unwrap()
                .push((fsb.parse().unwrap(), jb.parse().unwrap()));
        }
    }
    txns
}

#[test]
fn a_logged_block_failing_its_checksum_is_skipped_and_the_rest_replayed_as_e2fsck_does() {
    if !require_kernel("replay with a bad data-block checksum") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = kernel_journal(dir.path(), &[], workload);
    let txns = logged_blocks(&img);
    assert!(txns.len() >= 4, "{txns:?}");
    // One logged copy in a middle transaction and one in the last.
    let mid = txns[txns.len() / 2][1];
    let last = *txns.last().unwrap().last().unwrap();
    let bmap = |jb: u32| -> u64 {
        let (_, out) = run(
            "debugfs",
            &[os("-R"), os(&format!("bmap <8> {jb}")), img.as_os_str()],
        );
        out.lines().find_map(|l| l.trim().parse().ok()).unwrap()
    };
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    for (_, jb) in [mid, last] {
        f.write_all_at(b"corrupted by the test", bmap(jb) * BS + 100)
            .unwrap();
    }
    drop(f);
    // The copy of the last transaction's block in the one before (what stays replayed).
    let before_last = txns[txns.len() - 2]
        .iter()
        .find(|(b, _)| *b == last.0)
        .copied();
    let before_last = before_last.map(|(_, jb)| {
        let mut v = vec![0u8; BS as usize];
        std::fs::File::open(&img)
            .unwrap()
            .read_exact_at(&mut v, bmap(jb) * BS)
            .unwrap();
        v
    });
    // e2fsck replays, says a logged block failed its checksum, and then checks the whole
    // filesystem (journal_only or not), repairing what the skipped copy leaves stale.
    let want = e2fsck_replayed(&img);
    let skip = skipped_blocks(&img);
    let bytes = std::fs::read(&img).unwrap();
    let (fs, _) = open_bytes(bytes.clone(), &OpenOptions::default()).unwrap();
    let r = fs.journal_replay().expect("replayed").clone();
    let mut bad = r.bad_checksum.clone();
    bad.sort_unstable();
    let mut expect = vec![(mid.1, mid.0), (last.1, last.0)];
    expect.sort_unstable();
    assert_eq!(bad, expect, "{r:?}");
    assert_eq!(
        r.transactions as usize,
        txns.len(),
        "every transaction replayed: {r:?}"
    );
    assert!(r.to_string().contains("failed their checksum"), "{r}");
    // Everything is as e2fsck left it, except the block whose last copy was skipped (which
    // e2fsck's check then repaired): it holds the transaction before's copy, as replay left
    // it before the check.
    let diff = differing(&fs, &want, &skip);
    assert!(
        diff.iter().all(|&b| b == last.0),
        "in-memory replay vs e2fsck: {diff:?}"
    );
    if let Some(v) = before_last {
        assert!(
            fs.read_block(last.0).unwrap() == v,
            "block {} is not the previous copy",
            last.0
        );
    }
    drop(fs);
    // Writing refuses such a journal (e2fsck must check the result), and writes nothing.
    let dev = Arc::new(MemDevice::from_image(4096, bytes.clone()));
    let e = Fs::open(
        Arc::clone(&dev) as Arc<dyn BlockDevice>,
        &OpenOptions {
            writable: true,
            recover_journal: true,
            ..OpenOptions::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("fails its checksum"), "{e}");
    assert!(
        dev.snapshot() == bytes,
        "a refused recovery wrote the image"
    );
}

#[test]
fn pending_fast_commits_are_refused_never_an_older_tree() {
    if !require_kernel("fast commits") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = kernel_journal(dir.path(), &["-O", "fast_commit"], |p| {
        std::fs::write(p.join("full"), b"in a full commit").unwrap();
        fsync(&p.join("full"));
        rustix::fs::sync();
        for i in 0..3 {
            let f = p.join(format!("fast{i}"));
            std::fs::write(&f, ext4kit_testkit::pattern(i, 5000)).unwrap();
            fsync(&f);
        }
    });
    let (_, logdump) = run("debugfs", &[os("-R"), os("logdump"), img.as_os_str()]);
    assert!(
        logdump.contains("Fast Commit Area") && logdump.contains("tag HEAD"),
        "{logdump}"
    );
    // e2fsck replays the fast commits: the files are there.
    let fixed = img.with_extension("fixed.img");
    std::fs::write(&fixed, e2fsck_replayed(&img)).unwrap();
    let (_, ls) = run("debugfs", &[os("-R"), os("ls /"), fixed.as_os_str()]);
    assert!(
        ls.contains("fast2"),
        "e2fsck's replay lacks the fast-committed file: {ls}"
    );

    let bytes = std::fs::read(&img).unwrap();
    let e = open_bytes(bytes.clone(), &OpenOptions::default())
        .err()
        .unwrap_or_else(|| panic!("a read-only open refuses"));
    assert!(
        e.to_string()
            .contains("journal holds fast-commit blocks ext4kit cannot replay yet"),
        "{e}"
    );
    let e = open_bytes(
        bytes.clone(),
        &OpenOptions {
            writable: true,
            recover_journal: true,
            ..OpenOptions::default()
        },
    )
    .err()
    .unwrap_or_else(|| panic!("a writable open refuses"));
    assert!(e.to_string().contains("fast-commit"), "{e}");
    // Asked to ignore the journal, it reads the image as it is on disk (and says so).
    let (fs, _) = open_bytes(
        bytes,
        &OpenOptions {
            journal: JournalMode::Ignore,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    assert!(fs.notices().iter().any(|n| n.contains("not replayed")));
}
