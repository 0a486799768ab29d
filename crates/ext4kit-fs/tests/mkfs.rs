//! `ext4kit_fs::mkfs` against the outside oracles.
//!
//! - `mkfs.ext4` (1.47, `-O ^resize_inode -E lazy_itable_init=0`, same UUID, hash seed, label
//!   and time): our image must be byte-identical except `s_kbytes_written` and the superblock
//!   checksums, and `dumpe2fs` must print the same thing except "Lifetime writes" and
//!   "Checksum"; for 1, 2 and 4 KiB blocks at 8 MiB, 64 MiB, 1 GiB (and 2 GiB at 1 KiB), plus
//!   six odd sizes found by a random sweep.
//! - `e2fsck -fn` must print nothing but its version, pass and summary lines.
//! - `dumpe2fs -h` must show the features, sizes, label, UUID and hash seed asked for.
//! - The kernel must mount the images (also ones made over old bytes), take writes, and leave
//!   them e2fsck-clean.
//! - 16 TiB (4 KiB blocks, in /dev/shm: the host file system caps files below 16 TiB): mkfs in
//!   seconds, the file stays sparse, byte-identical to `mkfs.ext4 -E assume_storage_prezeroed=1`,
//!   `dumpe2fs -h`, `e2fsck -fn` (≈6 s), a kernel mount with writes, `e2fsck -fn` again.
//! - Same options ⇒ same bytes; a device with 4 KiB blocks under 1 KiB fs blocks gives the same
//!   bytes; errors are typed; no input panics (a sweep over odd sizes and options).
//!
//! Tests needing e2fsprogs, root or loop devices print a note and return when those are
//! missing, and fail when `EXT4KIT_REQUIRE_KERNEL=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ext4kit_blockdev::{
    Bio, BioOp, BlockDevice, FaultDevice, FaultRule, FileDevice, Geometry, MemDevice,
};
use ext4kit_fs::mkfs::{MkfsError, MkfsOptions, MkfsReport, mkfs};
use ext4kit_testkit as tk;

const UUID: [u8; 16] = [
    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
];
const UUID_STR: &str = "01234567-89ab-cdef-0123-456789abcdef";
const SEED: [u8; 16] = [
    0x11, 0x11, 0x11, 0x11, 0x22, 0x22, 0x33, 0x33, 0x44, 0x44, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55,
];
const SEED_STR: &str = "11111111-2222-3333-4444-555555555555";
const TIME: i64 = 1_700_000_000;
const LABEL: &str = "ext4kit-mkfs";
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// (block size, size) pairs checked against mkfs.ext4.
const CONFIGS: [(u32, u64); 10] = [
    (1024, 8 * MIB),
    (1024, 64 * MIB),
    (1024, GIB),
    (1024, 2 * GIB),
    (2048, 8 * MIB),
    (2048, 64 * MIB),
    (2048, GIB),
    (4096, 8 * MIB),
    (4096, 64 * MIB),
    (4096, GIB),
];

/// Odd sizes (from a random sweep) also checked against mkfs.ext4: short last groups dropped,
/// blocks per group shrunk for too many inodes, 1 KiB page rounding.
const ODD_CONFIGS: [(u32, u64); 6] = [
    (4096, 408_108_544),
    (1024, 883_229_696),
    (2048, 982_930_432),
    (1024, 38_532_096 + 3 * 1024),
    (4096, 44_731_904),
    (2048, 136_976_384),
];

/// `true` if e2fsprogs (mke2fs, e2fsck, dumpe2fs) is here; panics if it is required.
fn e2fsprogs(test: &str) -> bool {
    tk::require_tools(test, &["mke2fs", "e2fsck", "dumpe2fs"])
}

fn tmpdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ext4kit-mkfs-")
        .tempdir()
        .unwrap()
}

fn sparse(path: &Path, size: u64) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
}

fn exact(bs: u32) -> MkfsOptions {
    MkfsOptions {
        block_size: Some(bs),
        label: Some(LABEL.into()),
        uuid: Some(UUID),
        hash_seed: Some(SEED),
        time: Some(TIME),
        lazy_itable_init: false,
        ..MkfsOptions::default()
    }
}

fn our_mkfs(path: &Path, opts: &MkfsOptions) -> (MkfsReport, Duration) {
    let dev = FileDevice::open(path, true, 512).unwrap();
    let t = Instant::now();
    let r = mkfs(&dev, opts).unwrap_or_else(|e| panic!("mkfs {}: {e}", path.display()));
    let took = t.elapsed();
    drop(dev);
    (r, took)
}

/// mkfs.ext4 with the options `exact` mirrors (`init` = the inode table / zeroing option).
fn mke2fs_ref(path: &Path, bs: u32, init: &str) {
    tk::Mke2fs::new(path)
        .env("E2FSPROGS_FAKE_TIME", &TIME.to_string())
        .env("SOURCE_DATE_EPOCH", &TIME.to_string())
        .block_size(bs)
        .features("^resize_inode")
        .extra(&["-L", LABEL, "-U", UUID_STR])
        .extended(&format!("{init},hash_seed={SEED_STR}"))
        .run();
}

/// Strict `e2fsck -fn`: exits 0, prints only its version line, the five "Pass N" lines and the
/// summary line (which starts with the label).
fn fsck(path: &Path) {
    tk::assert_e2fsck_clean(path);
}

fn dumpe2fs(path: &Path, header_only: bool) -> String {
    let mut cmd = Command::new("dumpe2fs");
    if header_only {
        cmd.arg("-h");
    }
    let out = cmd.arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "dumpe2fs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The "Key: value" lines of dumpe2fs's header (before the group listing).
fn header_fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .take_while(|l| {
            !(l.starts_with("Group ") && l.as_bytes().get(6).is_some_and(u8::is_ascii_digit))
        })
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Data regions of a sparse file (SEEK_DATA / SEEK_HOLE).
fn data_regions(path: &Path) -> Vec<(u64, u64)> {
    let f = File::open(path).unwrap();
    let size = f.metadata().unwrap().len();
    let mut v = Vec::new();
    let mut off = 0;
    while off < size {
        let Ok(d) = rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(off)) else {
            break;
        };
        let h = rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(d)).unwrap();
        v.push((d, h));
        off = h;
    }
    v
}

/// Byte offsets where two images of the same size differ (reading only their data regions).
fn differing_bytes(a: &Path, b: &Path) -> Vec<u64> {
    let mut regions = data_regions(a);
    regions.extend(data_regions(b));
    regions.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in regions {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let (fa, fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let mut diffs = Vec::new();
    let mut ba = vec![0u8; 4 << 20];
    let mut bb = vec![0u8; 4 << 20];
    for (s, e) in merged {
        let mut pos = s;
        while pos < e {
            let n = ((e - pos) as usize).min(ba.len());
            fa.read_exact_at(&mut ba[..n], pos).unwrap();
            fb.read_exact_at(&mut bb[..n], pos).unwrap();
            if ba[..n] != bb[..n] {
                diffs.extend((0..n).filter(|&i| ba[i] != bb[i]).map(|i| pos + i as u64));
            }
            pos += n as u64;
        }
    }
    diffs
}

/// Byte offsets of every superblock copy (primary and backups).
fn superblock_offsets(r: &MkfsReport) -> Vec<u64> {
    let bs = u64::from(r.block_size);
    let first = u64::from(r.first_data_block);
    let mut v = vec![1024];
    v.extend(
        r.backup_groups
            .iter()
            .map(|&g| (first + u64::from(g) * u64::from(r.blocks_per_group)) * bs),
    );
    v
}

/// Asserts that two images differ only in `s_kbytes_written` (0x178..0x180) and `s_checksum`
/// (0x3FC..0x400) of each superblock copy.
fn assert_same_bytes(ours: &Path, theirs: &Path, r: &MkfsReport) {
    let bs = u64::from(r.block_size);
    let sbs = superblock_offsets(r);
    let allowed = |off: u64| {
        sbs.iter().any(|&sb| {
            (sb + 0x178..sb + 0x180).contains(&off) || (sb + 0x3FC..sb + 0x400).contains(&off)
        })
    };
    let bad: Vec<u64> = differing_bytes(ours, theirs)
        .into_iter()
        .filter(|&o| !allowed(o))
        .collect();
    assert!(
        bad.is_empty(),
        "{}: {} bytes differ from mkfs.ext4, first at block {} byte {}",
        ours.display(),
        bad.len(),
        bad[0] / bs,
        bad[0] % bs
    );
}

#[test]
fn byte_identical_to_mkfs_ext4() {
    if !e2fsprogs("byte_identical_to_mkfs_ext4") {
        return;
    }
    let dir = tmpdir();
    for (bs, size) in CONFIGS.into_iter().chain(ODD_CONFIGS) {
        let ours = dir.path().join(format!("ours-{bs}-{size}.img"));
        let theirs = dir.path().join(format!("mke2fs-{bs}-{size}.img"));
        sparse(&ours, size);
        sparse(&theirs, size);
        mke2fs_ref(&theirs, bs, "lazy_itable_init=0");
        let (r, took) = our_mkfs(&ours, &exact(bs));
        eprintln!(
            "{bs}-byte blocks, {size} bytes: mkfs {took:?}, {} groups",
            r.group_count
        );
        fsck(&ours);

        // Whole dumpe2fs output, groups included, apart from the two fields we do not match.
        let keep = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with("Lifetime writes:") && !l.starts_with("Checksum:"))
                .map(str::to_string)
                .collect()
        };
        let (d_ours, d_theirs) = (dumpe2fs(&ours, false), dumpe2fs(&theirs, false));
        let (k_ours, k_theirs) = (keep(&d_ours), keep(&d_theirs));
        for (a, b) in k_ours.iter().zip(&k_theirs) {
            assert_eq!(a, b, "dumpe2fs differs at {bs}/{size}");
        }
        assert_eq!(
            k_ours.len(),
            k_theirs.len(),
            "dumpe2fs length at {bs}/{size}"
        );

        assert_same_bytes(&ours, &theirs, &r);

        // The report agrees with what dumpe2fs reads.
        let h = header_fields(&d_ours);
        let num = |k: &str| {
            h[k].parse::<u64>()
                .unwrap_or_else(|_| panic!("{k}: {}", h[k]))
        };
        assert_eq!(num("Block count"), r.blocks_count);
        assert_eq!(num("Inode count"), u64::from(r.inodes_count));
        assert_eq!(num("Free blocks"), r.free_blocks);
        assert_eq!(num("Free inodes"), u64::from(r.free_inodes));
        assert_eq!(num("Reserved block count"), r.reserved_blocks);
        assert_eq!(num("Blocks per group"), u64::from(r.blocks_per_group));
        assert_eq!(num("Inodes per group"), u64::from(r.inodes_per_group));
        assert_eq!(
            num("Inode blocks per group"),
            u64::from(r.inode_table_blocks)
        );
        assert_eq!(num("Total journal blocks"), u64::from(r.journal_blocks));
        assert_eq!(num("Overhead clusters"), r.overhead_blocks);
        assert_eq!(num("Block size"), u64::from(bs));
        // Free blocks are what the metadata, root (1 block) and lost+found leave.
        let used = r.blocks_count - r.free_blocks;
        let tree = u64::from(r.journal_extents.len() > 4);
        assert_eq!(
            used,
            r.overhead_blocks + 1 + u64::from(r.lost_found_blocks) + tree
        );
        fs::remove_file(&ours).unwrap();
        fs::remove_file(&theirs).unwrap();
    }
}

#[test]
fn dumpe2fs_shows_what_was_asked() {
    if !e2fsprogs("dumpe2fs_shows_what_was_asked") {
        return;
    }
    let dir = tmpdir();
    let img = dir.path().join("h.img");
    sparse(&img, 256 * MIB);
    let opts = MkfsOptions {
        block_size: Some(2048),
        label: Some("sixteen-chars-ok".into()),
        uuid: Some(UUID),
        hash_seed: Some(SEED),
        time: Some(TIME),
        inode_count: Some(10_000),
        journal_blocks: Some(2048),
        reserved_percent: 1,
        ..MkfsOptions::default()
    };
    let (r, _) = our_mkfs(&img, &opts);
    fsck(&img);
    let h = header_fields(&dumpe2fs(&img, true));
    assert_eq!(
        h["Filesystem features"],
        "has_journal ext_attr dir_index filetype extent 64bit flex_bg sparse_super large_file huge_file dir_nlink extra_isize metadata_csum"
    );
    assert_eq!(h["Filesystem volume name"], "sixteen-chars-ok");
    assert_eq!(h["Filesystem UUID"], UUID_STR);
    assert_eq!(h["Directory Hash Seed"], SEED_STR);
    assert_eq!(h["Default directory hash"], "half_md4");
    assert_eq!(h["Filesystem flags"], "signed_directory_hash");
    assert_eq!(h["Block size"], "2048");
    assert_eq!(h["Inode size"], "256");
    assert_eq!(h["Required extra isize"], "32");
    assert_eq!(h["Desired extra isize"], "32");
    assert_eq!(h["Flex block group size"], "16");
    assert_eq!(h["Journal inode"], "8");
    assert_eq!(h["Total journal blocks"], "2048");
    assert_eq!(h["Journal features"], "(none)");
    assert_eq!(h["Checksum type"], "crc32c");
    assert_eq!(h["Filesystem state"], "clean");
    assert_eq!(h["Default mount options"], "user_xattr acl");
    assert_eq!(h["Block count"], (256 * MIB / 2048).to_string());
    assert_eq!(
        h["Reserved block count"],
        (256 * MIB / 2048 / 100).to_string()
    );
    assert_eq!(h["Inode count"], r.inodes_count.to_string());
    assert!(r.inodes_count >= 10_000 && r.inodes_count < 10_000 + 16 * r.group_count);
    assert!(!r.resize_inode);
    // The journal is a clean, empty jbd2 log.
    let out = Command::new("debugfs")
        .args(["-R", "logdump"])
        .arg(&img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Journal starts at block 0, transaction 1"),
        "{text}"
    );
}

/// Writes files through a kernel loop mount, unmounts, and checks with e2fsck.
fn kernel_round_trip(img: &Path) {
    let m = tk::LoopMount::new(img, false).unwrap_or_else(|e| panic!("{e}"));
    let root = m.path();
    assert!(root.join("lost+found").is_dir());
    fs::write(root.join("hello.txt"), b"hello from the kernel\n").unwrap();
    let big = tk::pattern(7, MIB as usize + 123);
    fs::write(root.join("big.bin"), &big).unwrap();
    let d = root.join("dir");
    fs::create_dir(&d).unwrap();
    for i in 0..100 {
        fs::write(
            d.join(format!("file-{i:04}-with-a-longer-name")),
            i.to_string(),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("hello.txt", root.join("link")).unwrap();
    let mut back = Vec::new();
    File::open(root.join("big.bin"))
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == big);
    m.unmount().unwrap();
    fsck(img);
    // The writes are in the image.
    let out = Command::new("debugfs")
        .args(["-R", "ls -p /dir"])
        .arg(img)
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&out.stdout)
        .matches("-with-a-longer-name")
        .count();
    assert_eq!(names, 100, "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn images_are_fsck_clean_and_the_kernel_mounts_and_writes_them() {
    if !tk::require_kernel("images_are_fsck_clean_and_the_kernel_mounts_and_writes_them")
        || !e2fsprogs("images_are_fsck_clean_and_the_kernel_mounts_and_writes_them")
    {
        return;
    }
    let dir = tmpdir();
    for (bs, size) in CONFIGS {
        // The defaults: lazy inode tables (the kernel's lazyinit finishes them), random UUID.
        let img = dir.path().join(format!("k-{bs}-{size}.img"));
        sparse(&img, size);
        let opts = MkfsOptions {
            block_size: Some(bs),
            ..MkfsOptions::default()
        };
        our_mkfs(&img, &opts);
        fsck(&img);
        kernel_round_trip(&img);
        fs::remove_file(&img).unwrap();
    }
    // Block size chosen by size, whole device, every table zeroed, no zeroing at all.
    for (size, opts) in [
        (200 * MIB, MkfsOptions::default()),
        (
            600 * MIB,
            MkfsOptions {
                lazy_itable_init: false,
                ..MkfsOptions::default()
            },
        ),
        (
            300 * MIB,
            MkfsOptions {
                assume_zeroed: true,
                ..MkfsOptions::default()
            },
        ),
    ] {
        let img = dir.path().join("auto.img");
        sparse(&img, size);
        let (r, _) = our_mkfs(&img, &opts);
        assert_eq!(r.block_size, if size < 512 * MIB { 1024 } else { 4096 });
        fsck(&img);
        kernel_round_trip(&img);
        fs::remove_file(&img).unwrap();
    }
}

#[test]
fn mkfs_over_old_bytes_gives_fsck_clean_images_the_kernel_mounts() {
    // mkfs over storage full of old bytes: what must be zero (used inode table blocks, the
    // journal) is zeroed, the rest is left to the uninit flags and the kernel's lazy init.
    if !e2fsprogs("mkfs_over_old_bytes_gives_fsck_clean_images_the_kernel_mounts") {
        return;
    }
    let kernel =
        tk::require_kernel("mkfs_over_old_bytes_gives_fsck_clean_images_the_kernel_mounts (mount)");
    let dir = tmpdir();
    let img = dir.path().join("dirty.img");
    let garbage = tk::pattern(99, (64 * MIB) as usize);
    for (bs, lazy) in [(1024, true), (2048, false), (4096, true), (4096, false)] {
        fs::write(&img, &garbage).unwrap();
        let opts = MkfsOptions {
            block_size: Some(bs),
            lazy_itable_init: lazy,
            ..MkfsOptions::default()
        };
        our_mkfs(&img, &opts);
        fsck(&img);
        if kernel {
            kernel_round_trip(&img);
        }
    }
}

/// A directory on a file system that holds 16 TiB sparse files (tmpfs).
fn big_file_dir() -> Option<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let d = tempfile::Builder::new()
        .prefix("ext4kit-mkfs-")
        .tempdir_in(shm)
        .ok()?;
    let probe = d.path().join("probe");
    let ok = File::create(&probe)
        .and_then(|f| f.set_len(16 << 40))
        .is_ok();
    let _ = fs::remove_file(&probe);
    ok.then_some(d)
}

#[test]
fn sixteen_tib_is_fast_sparse_identical_to_mkfs_ext4_clean_and_mountable() {
    if !e2fsprogs("sixteen_tib_is_fast_sparse_identical_to_mkfs_ext4_clean_and_mountable") {
        return;
    }
    let Some(dir) = big_file_dir() else {
        assert!(
            !tk::kernel_required(),
            "sixteen_tib_is_fast_sparse_identical_to_mkfs_ext4_clean_and_mountable: no file system for a 16 TiB sparse file"
        );
        eprintln!(
            "note: sixteen_tib_is_fast_sparse_identical_to_mkfs_ext4_clean_and_mountable: /dev/shm cannot hold a 16 TiB sparse file; skipping"
        );
        return;
    };
    let img: PathBuf = dir.path().join("16t.img");
    sparse(&img, 16 << 40);
    let opts = MkfsOptions {
        assume_zeroed: true,
        lazy_itable_init: true,
        ..exact(4096)
    };
    let (r, took) = our_mkfs(&img, &opts);
    let allocated = fs::metadata(&img).unwrap().blocks() * 512;
    eprintln!(
        "16 TiB: mkfs {took:?}, {} groups, {} MiB written, {} MiB allocated",
        r.group_count,
        r.bytes_written >> 20,
        allocated >> 20
    );
    assert!(
        took < Duration::from_secs(20),
        "mkfs of 16 TiB took {took:?}"
    );
    assert_eq!(
        (r.blocks_count, r.group_count, r.inodes_count),
        (1 << 32, 131_072, 1 << 28)
    );
    assert!(
        allocated < 512 * MIB,
        "16 TiB image allocates {allocated} bytes"
    );
    // The journal lies in the middle, in 8 extents under one tree block.
    assert_eq!(r.journal_extents.len(), 8);
    assert_eq!(r.journal_extents[0].0, 65_537 * 32_768);

    // Byte for byte what mkfs.ext4 makes on storage it may assume zeroed.
    let theirs = dir.path().join("16t-mke2fs.img");
    sparse(&theirs, 16 << 40);
    mke2fs_ref(&theirs, 4096, "assume_storage_prezeroed=1");
    assert_same_bytes(&img, &theirs, &r);
    fs::remove_file(&theirs).unwrap();

    let h = header_fields(&dumpe2fs(&img, true));
    assert_eq!(h["Block count"], (1u64 << 32).to_string());
    assert_eq!(h["Free blocks"], r.free_blocks.to_string());
    assert_eq!(h["Inode count"], (1u32 << 28).to_string());
    assert_eq!(h["Total journal blocks"], "262144");

    let t = Instant::now();
    fsck(&img);
    eprintln!("16 TiB: e2fsck -fn {:?}", t.elapsed());

    if tk::require_kernel(
        "sixteen_tib_is_fast_sparse_identical_to_mkfs_ext4_clean_and_mountable (mount)",
    ) {
        let m = tk::LoopMount::new(&img, false).unwrap_or_else(|e| panic!("{e}"));
        fs::write(m.path().join("x"), b"sixteen tebibytes").unwrap();
        fs::create_dir(m.path().join("d")).unwrap();
        m.unmount().unwrap();
        let t = Instant::now();
        fsck(&img);
        eprintln!("16 TiB after the kernel: e2fsck -fn {:?}", t.elapsed());
    }
}

#[test]
fn same_options_give_the_same_bytes_whatever_the_device_block_size() {
    let run = |dev_bs: u32, uuid: [u8; 16], assume_zeroed: bool| {
        let dev = MemDevice::new(dev_bs, 64 * MIB / u64::from(dev_bs));
        let opts = MkfsOptions {
            block_size: Some(1024),
            uuid: Some(uuid),
            hash_seed: Some(SEED),
            time: Some(TIME),
            assume_zeroed,
            ..MkfsOptions::default()
        };
        mkfs(&dev, &opts).unwrap();
        dev.snapshot()
    };
    let a = run(512, UUID, false);
    assert!(a == run(512, UUID, false), "two runs differ");
    assert!(
        a == run(4096, UUID, false),
        "4 KiB device blocks (read-modify-write) differ"
    );
    // On a device that reads zeros, skipping the zeroing changes nothing but the
    // ITABLE_ZEROED flags (and the checksums covering them).
    let z = run(512, UUID, true);
    assert_eq!(a.len(), z.len());
    let diffs = a.iter().zip(&z).filter(|(x, y)| x != y).count();
    assert!(
        diffs > 0 && diffs < 64 * 8,
        "assume_zeroed: {diffs} bytes differ"
    );
    let mut other = UUID;
    other[15] ^= 1;
    assert!(
        a != run(512, other, false),
        "a different UUID gave the same bytes"
    );
    // Random UUID and seed when not given.
    let d1 = MemDevice::new(512, 16 * MIB / 512);
    let d2 = MemDevice::new(512, 16 * MIB / 512);
    let r1 = mkfs(&d1, &MkfsOptions::default()).unwrap();
    let r2 = mkfs(&d2, &MkfsOptions::default()).unwrap();
    assert_ne!(r1.uuid, r2.uuid);
    assert_ne!(r1.hash_seed, r2.hash_seed);
}

#[test]
fn one_gib_with_assume_zeroed_takes_under_two_seconds() {
    let dir = tmpdir();
    let img = dir.path().join("speed.img");
    sparse(&img, GIB);
    let (_, took) = our_mkfs(
        &img,
        &MkfsOptions {
            block_size: Some(4096),
            assume_zeroed: true,
            ..MkfsOptions::default()
        },
    );
    eprintln!("1 GiB, 4 KiB blocks, assume_zeroed: mkfs {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let (_, took) = our_mkfs(
        &img,
        &MkfsOptions {
            block_size: Some(4096),
            ..MkfsOptions::default()
        },
    );
    eprintln!("1 GiB, 4 KiB blocks, zeroing the journal: mkfs {took:?}");
}

/// A device that takes every write and reads zeros, for sizes no file could hold here.
#[derive(Debug)]
struct NullDevice(Geometry);

impl BlockDevice for NullDevice {
    fn geometry(&self) -> Geometry {
        self.0
    }
    fn submit(&self, mut bio: Bio) {
        let status = bio.check_bounds(self.0);
        if bio.op() == BioOp::Read {
            for v in bio.vecs_mut() {
                if let Some(b) = v.bytes_mut() {
                    b.fill(0);
                }
            }
        }
        bio.complete(status);
    }
    fn kind(&self) -> &'static str {
        "null"
    }
}

fn null(bytes: u64) -> NullDevice {
    NullDevice(Geometry {
        block_size: 512,
        nr_blocks: bytes / 512,
    })
}

#[test]
fn impossible_requests_and_device_failures_give_typed_errors() {
    let o = |bs: u32| MkfsOptions {
        block_size: Some(bs),
        assume_zeroed: true,
        ..MkfsOptions::default()
    };
    let e = mkfs(&null(GIB), &o(8192)).unwrap_err();
    assert!(matches!(e, MkfsError::UnsupportedBlockSize(8192)), "{e}");
    let e = mkfs(&null(4 * MIB), &o(4096)).unwrap_err();
    assert!(matches!(e, MkfsError::TooSmall { .. }), "{e}");
    assert!(e.to_string().contains("journal"), "{e}");
    let e = mkfs(&null(32 * 1024), &o(1024)).unwrap_err();
    assert!(matches!(e, MkfsError::TooSmall { .. }), "{e}");
    let e = mkfs(
        &null(GIB),
        &MkfsOptions {
            size_bytes: 2 * GIB,
            ..o(4096)
        },
    )
    .unwrap_err();
    assert!(matches!(e, MkfsError::DeviceTooSmall { .. }), "{e}");
    let e = mkfs(&null(1 << 40), &o(1024)).unwrap_err();
    assert!(matches!(e, MkfsError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("meta_bg"), "{e}");
    let e = mkfs(
        &null(GIB),
        &MkfsOptions {
            inode_count: Some(u32::MAX),
            ..o(4096)
        },
    )
    .unwrap_err();
    assert!(matches!(e, MkfsError::TooManyInodes { .. }), "{e}");
    let e = mkfs(
        &null(GIB),
        &MkfsOptions {
            journal_blocks: Some(200_000),
            ..o(4096)
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            MkfsError::InvalidOption {
                option: "journal_blocks",
                ..
            }
        ),
        "{e}"
    );

    // Device errors come back as MkfsError::Io, on a write in the middle and on the last one.
    for n in [3u64, 0] {
        let mem: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(512, 64 * MIB / 512));
        let dev = FaultDevice::new(mem);
        dev.add_rule(FaultRule::Nth {
            op: Some(BioOp::Write),
            n,
        });
        let e = mkfs(&dev, &o(4096)).unwrap_err();
        assert!(matches!(e, MkfsError::Io(_)), "{e}");
    }
}

#[test]
fn odd_sizes_and_options_never_panic_and_every_ok_is_consistent() {
    // Odd sizes, block sizes, inode and journal requests: every call returns Ok or a typed error,
    // and every Ok is self-consistent.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let sizes = [
        0,
        1,
        1023,
        65_536,
        3 * MIB - 1,
        8 * MIB + 4095,
        33 * MIB + 17,
        513 * MIB,
        70 * GIB + 12_345,
    ];
    for round in 0..120 {
        let size = if round < sizes.len() * 4 {
            sizes[round / 4]
        } else {
            rnd() % (200 * GIB)
        };
        let bs = [
            None,
            Some(1024),
            Some(2048),
            Some(4096),
            Some(512),
            Some(3000),
        ][(rnd() % 6) as usize];
        let opts = MkfsOptions {
            block_size: bs,
            inode_count: (rnd() % 4 == 0).then(|| (rnd() % 5_000_000) as u32),
            inode_ratio: (rnd() % 4 == 0).then(|| rnd() % (80 << 20)),
            journal_blocks: (rnd() % 4 == 0).then(|| (rnd() % 300_000) as u32),
            reserved_percent: (rnd() % 60) as u8,
            assume_zeroed: true,
            uuid: Some(UUID),
            hash_seed: Some(SEED),
            time: Some(TIME),
            ..MkfsOptions::default()
        };
        let dev = null(size.max(512));
        match mkfs(&dev, &opts) {
            Ok(r) => {
                assert!(r.free_blocks <= r.blocks_count);
                assert!(r.free_inodes < r.inodes_count);
                assert!(r.blocks_count * u64::from(r.block_size) <= size.max(512));
                assert_eq!(
                    u64::from(r.inodes_count),
                    u64::from(r.inodes_per_group) * u64::from(r.group_count)
                );
                assert_eq!(
                    r.journal_extents
                        .iter()
                        .map(|e| u64::from(e.1))
                        .sum::<u64>(),
                    u64::from(r.journal_blocks)
                );
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}
