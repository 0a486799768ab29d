//! Thousands of random changes — create, write, truncate, punch, fallocate, unlink, mkdir,
//! rmdir, recursive removal, rename (files and directories, within and across directories,
//! replacing targets), hard links, symlinks, chmod/chown, mtimes, xattrs, syncs and re-opens —
//! applied to a kernel-written image through the library and to a host directory through the
//! host kernel. Failing operations must fail on both sides with the same errno. At checkpoints
//! and at the end `e2fsck -fn` must be silent; at the end a kernel mount of the image must show
//! the host tree. 1 KiB and 4 KiB blocks.
//!
//! `EXT4KIT_MODIFY_OPS` sets the number of operations per block size (default 3000);
//! `EXT4KIT_MODIFY_SEED` the seed (default: fixed).
#![allow(clippy::unwrap_used)]

#[path = "modify_common/mod.rs"]
mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{Twin, kernel_image, open_rw, remove_tree, ts};
use ext4kit_fs::format::inode::Timestamp;
use ext4kit_fs::{Error, Fs};
use ext4kit_fs::{NewInode, NewKind};
use ext4kit_testkit::{
    Compare, TreeOptions, diff_trees, e2fsck_clean, env_or, kernel_snapshot, new_tree, pattern,
    require_kernel, snapshot,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            v.get(self.below(v.len() as u64) as usize)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    File,
    Dir,
    Other,
}

/// Every entry under the host root: (relative path, kind), directories first-level included.
fn walk(root: &Path) -> Vec<(String, Kind)> {
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let mut kids: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        kids.sort_by_key(|e| e.file_name());
        for e in kids {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let p = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if p == "lost+found" {
                continue;
            }
            let ft = e.file_type().unwrap();
            let k = if ft.is_dir() {
                stack.push(p.clone());
                Kind::Dir
            } else if ft.is_file() {
                Kind::File
            } else {
                Kind::Other
            };
            out.push((p, k));
        }
    }
    out.sort();
    out
}

fn errno_of_host(r: std::io::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn errno_of_image(r: Result<(), Error>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => e.errno(),
    }
}

const NAMES: [&str; 16] = [
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "g",
    "h",
    "long-name-with-some-length-0123456789",
    "x.txt",
    "y.bin",
    "z",
    "files",
    "deep",
    "n",
    "m",
];

fn run(bs: u32, ops: u64, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let host = new_tree(&dir.path().join("host"), seed, &TreeOptions::sized(300, 6));
    let size_mb = if bs == 1024 { 256 } else { 512 };
    let img = kernel_image(dir.path(), "r.img", bs, size_mb, Some(&host), &[]);
    // When the host tree uses more than this, creating gives way to removing for a while.
    let budget = (size_mb << 20) / 3;
    let mut shrinking = false;
    let mut t = Twin {
        host: host.clone(),
        fs: open_rw(&img),
    };
    let mut rng = Rng(seed | 1);
    let t0 = 1_720_000_000i64;
    let mut counts = [0u64; 20];
    for i in 0..ops {
        let when: Timestamp = ts(t0 + i as i64, ((i * 7919) % 1_000_000_000) as u32);
        let all = walk(&host);
        let files: Vec<&String> = all
            .iter()
            .filter(|e| e.1 == Kind::File)
            .map(|e| &e.0)
            .collect();
        let dirs: Vec<String> = std::iter::once(String::new())
            .chain(all.iter().filter(|e| e.1 == Kind::Dir).map(|e| e.0.clone()))
            .collect();
        let any: Vec<&String> = all.iter().map(|e| &e.0).collect();
        let join = |d: &str, n: &str| {
            if d.is_empty() {
                n.to_string()
            } else {
                format!("{d}/{n}")
            }
        };
        let new_path = |rng: &mut Rng| {
            let d = rng.pick(&dirs).cloned().unwrap_or_default();
            let n = NAMES[rng.below(NAMES.len() as u64) as usize];
            // A few fixed names (renames hit existing targets) and many numbered ones.
            if rng.below(3) == 0 {
                join(&d, n)
            } else {
                join(&d, &format!("{n}{}", rng.below(40)))
            }
        };
        // Weights: creating outweighs removing, so the tree stays populated.
        const TABLE: [u64; 26] = [
            0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 14, 9,
        ];
        if i % 100 == 0 {
            let used: u64 = all
                .iter()
                .filter(|e| e.1 == Kind::File)
                .map(|e| std::fs::symlink_metadata(host.join(&e.0)).unwrap().blocks() * 512)
                .sum();
            shrinking = used > budget;
        }
        let mut op = TABLE[rng.below(TABLE.len() as u64) as usize];
        if shrinking && matches!(op, 0 | 1 | 2 | 3 | 4 | 6) {
            op = 7;
        }
        counts[op as usize] += 1;
        match op {
            // Create (or overwrite) a file.
            0 | 1 => {
                let p = new_path(&mut rng);
                match std::fs::symlink_metadata(t.h(&p)) {
                    Ok(m) if !m.is_file() => continue,
                    _ => {}
                }
                let len = match rng.below(4) {
                    0 => rng.below(100),
                    1 => rng.below(u64::from(bs) * 3),
                    2 => rng.below(200_000),
                    _ => rng.below(1 << 20),
                } as usize;
                t.write_file(
                    &p,
                    &pattern(i, len),
                    [0o644, 0o600, 0o755, 0o4755][rng.below(4) as usize],
                    when,
                );
            }
            // Write at an offset.
            2 | 3 => {
                let Some(p) = rng.pick(&files).map(|s| s.to_string()) else {
                    continue;
                };
                let size = std::fs::metadata(t.h(&p)).unwrap().len();
                let off = rng.below(size + 70_000);
                let max = if rng.below(3) == 0 { 300_000 } else { 9000 };
                let len = 1 + rng.below(max) as usize;
                t.write_at(&p, off, &pattern(i + 1, len), when);
            }
            // Truncate down or up.
            4 => {
                let Some(p) = rng.pick(&files).map(|s| s.to_string()) else {
                    continue;
                };
                let size = std::fs::metadata(t.h(&p)).unwrap().len();
                let to = if rng.below(2) == 0 {
                    rng.below(size + 1)
                } else {
                    size + rng.below(1 << 20)
                };
                t.truncate(&p, to, when);
            }
            // Punch a hole / preallocate.
            5 => {
                let Some(p) = rng.pick(&files).map(|s| s.to_string()) else {
                    continue;
                };
                let size = std::fs::metadata(t.h(&p)).unwrap().len();
                let off = rng.below(size + 1);
                t.punch(&p, off, 1 + rng.below(200_000), when);
            }
            6 => {
                let Some(p) = rng.pick(&files).map(|s| s.to_string()) else {
                    continue;
                };
                let size = std::fs::metadata(t.h(&p)).unwrap().len();
                let off = rng.below(size + 100_000);
                t.fallocate(&p, off, 1 + rng.below(300_000), rng.below(2) == 0, when);
            }
            // Unlink anything that is not a directory.
            7 | 8 => {
                let Some(p) = rng.pick(&any).map(|s| s.to_string()) else {
                    continue;
                };
                let (d, n) = t.parent(&p);
                let h = errno_of_host(std::fs::remove_file(t.h(&p)));
                let g = errno_of_image(t.fs.unlink(d, &n));
                assert_eq!(h, g, "op {i}: unlink {p}: host errno {h}, image errno {g}");
            }
            // mkdir.
            9 => {
                let p = new_path(&mut rng);
                if std::fs::symlink_metadata(t.h(&p)).is_err() {
                    t.mkdir(&p, [0o755, 0o700, 0o1777][rng.below(3) as usize]);
                }
            }
            // rmdir (errno compared), or remove a whole tree.
            10 => {
                let Some(p) = rng.pick(&dirs[1..]).cloned() else {
                    continue;
                };
                let below = all
                    .iter()
                    .filter(|e| e.0.starts_with(&format!("{p}/")))
                    .count();
                if rng.below(3) == 0 && below < 40 {
                    t.remove_all(&p);
                } else {
                    let (d, n) = t.parent(&p);
                    let h = errno_of_host(std::fs::remove_dir(t.h(&p)));
                    let g = errno_of_image(t.fs.rmdir(d, &n));
                    assert_eq!(h, g, "op {i}: rmdir {p}: host errno {h}, image errno {g}");
                }
            }
            // rename anything anywhere (errno compared).
            11 | 12 => {
                let Some(a) = rng.pick(&any).map(|s| s.to_string()) else {
                    continue;
                };
                let b = if rng.below(3) == 0 {
                    rng.pick(&any).map(|s| s.to_string()).unwrap_or_default()
                } else {
                    new_path(&mut rng)
                };
                if b.is_empty() {
                    continue;
                }
                let (sd, sn) = t.parent(&a);
                let (dd, dn) = t.parent(&b);
                let h = errno_of_host(std::fs::rename(t.h(&a), t.h(&b)));
                let g = errno_of_image(t.fs.rename(sd, &sn, dd, &dn));
                assert_eq!(
                    h, g,
                    "op {i}: rename {a} -> {b}: host errno {h}, image errno {g}"
                );
            }
            // Hard link.
            13 => {
                let Some(a) = rng.pick(&files).map(|s| s.to_string()) else {
                    continue;
                };
                let b = new_path(&mut rng);
                if std::fs::symlink_metadata(t.h(&b)).is_err() {
                    t.link(&a, &b);
                }
            }
            // Symlink.
            14 => {
                let b = new_path(&mut rng);
                if std::fs::symlink_metadata(t.h(&b)).is_err() {
                    let target = if rng.below(2) == 0 {
                        "../a/b".to_string()
                    } else {
                        "t".repeat(60 + rng.below(300) as usize)
                    };
                    t.symlink(&target, &b, when);
                }
            }
            // Owner and mode.
            15 => {
                let Some(p) = rng.pick(&files).map(|s| s.to_string()) else {
                    continue;
                };
                t.set_owner_mode(
                    &p,
                    rng.below(3) as u32 * 1000,
                    rng.below(3) as u32 * 100,
                    [0o644, 0o640, 0o2755, 0o400][rng.below(4) as usize],
                );
            }
            // xattrs.
            16 => {
                let Some(p) = rng.pick(&files).map(|s| s.to_string()) else {
                    continue;
                };
                let name = format!("user.k{}", rng.below(4));
                let have = rustix::fs::lgetxattr(t.h(&p), name.as_str(), &mut [0u8; 512]).is_ok();
                if have && rng.below(2) == 0 {
                    t.remove_xattr(&p, &name);
                } else {
                    t.set_xattr(&p, &name, &pattern(i, rng.below(120) as usize));
                }
            }
            // mtime.
            17 => {
                let Some(p) = rng.pick(&any).map(|s| s.to_string()) else {
                    continue;
                };
                t.set_mtime(&p, when);
            }
            // A file kept open across its unlink, written after it, closed later.
            18 => {
                let Some(p) = rng.pick(&files).map(|s| s.to_string()) else {
                    continue;
                };
                if std::fs::metadata(t.h(&p)).unwrap().nlink() > 1 {
                    continue;
                }
                let ino = t.ino(&p);
                let m = t.fs.data_mapping(ino).unwrap();
                t.unlink(&p);
                m.write(0, b"after unlink").unwrap();
                if rng.below(2) == 0 {
                    t.fs.sync().unwrap();
                }
                t.fs.close_file(m).unwrap();
            }
            // Sync, check, sometimes re-open.
            _ => {
                t.fs.sync().unwrap();
                if let Err(e) = e2fsck_clean(&img) {
                    panic!("{bs}: after op {i}: {e}");
                }
                if rng.below(3) == 0 {
                    let host = t.host.clone();
                    drop(t);
                    t = Twin {
                        host,
                        fs: open_rw(&img),
                    };
                }
            }
        }
    }
    t.fs.sync().unwrap();
    assert!(t.fs.orphans().is_empty());
    drop(t);
    if let Err(e) = e2fsck_clean(&img) {
        panic!("{bs}: at the end: {e}");
    }
    let got = kernel_snapshot(&img);
    let want = snapshot(&host);
    let d = diff_trees(&want, &got, Compare::EXCEPT_DIR_MTIME);
    assert!(
        d.is_empty(),
        "{bs}: kernel view differs ({} differences):\n{}",
        d.len(),
        d[..d.len().min(40)].join("\n")
    );
    eprintln!(
        "{bs}: {ops} operations ({counts:?} by kind), {} entries at the end",
        want.len()
    );
}

#[test]
fn thousands_of_random_changes_match_a_host_directory_at_1k_and_4k() {
    if !require_kernel("thousands_of_random_changes_match_a_host_directory_at_1k_and_4k") {
        return;
    }
    let ops: u64 = env_or("EXT4KIT_MODIFY_OPS", 3000);
    let seed: u64 = env_or("EXT4KIT_MODIFY_SEED", 0x5eed_0005);
    for bs in [1024u32, 4096] {
        run(bs, ops, seed ^ u64::from(bs));
    }
}

/// The library alone (no kernel, no e2fsprogs): random deletes and re-creates on an image our
/// own mkfs made in memory keep the free counts exact.
#[test]
fn deleting_everything_created_gives_back_every_block_and_inode() {
    use std::sync::Arc;
    let dev: Arc<dyn ext4kit_blockdev::BlockDevice> =
        Arc::new(ext4kit_blockdev::MemDevice::new(1024, 32 << 10));
    ext4kit_fs::mkfs::mkfs(
        &*dev,
        &ext4kit_fs::mkfs::MkfsOptions {
            block_size: Some(1024),
            size_bytes: 32 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let counts = |dev: &Arc<dyn ext4kit_blockdev::BlockDevice>| {
        let fs = Fs::open(Arc::clone(dev), &ext4kit_fs::OpenOptions::default()).unwrap();
        (
            fs.superblock().free_blocks_count(),
            fs.superblock().free_inodes_count(),
        )
    };
    let before = counts(&dev);
    let fs = Fs::open(
        Arc::clone(&dev),
        &ext4kit_fs::OpenOptions {
            writable: true,
            ..Default::default()
        },
    )
    .unwrap();
    let a = NewInode::with_time(0o644, ts(1_700_000_000, 0));
    let mut top = fs
        .create(ext4kit_fs::ROOT_INO, b"top", &NewKind::Directory, &a)
        .unwrap();
    let mut rng = Rng(99);
    for round in 0..3 {
        for i in 0..400u64 {
            let d = if i % 50 == 0 {
                fs.create(
                    top,
                    format!("d{round}-{i}").as_bytes(),
                    &NewKind::Directory,
                    &a,
                )
                .unwrap()
            } else {
                top
            };
            let f = fs
                .create(d, format!("f{round}-{i}").as_bytes(), &NewKind::Regular, &a)
                .unwrap();
            // Scattered writes: many extents, deep trees for some.
            for k in 0..(rng.below(40) + 1) {
                fs.write_at(
                    f,
                    rng.below(4 << 20) + k,
                    &pattern(i, 1 + rng.below(3000) as usize),
                )
                .unwrap();
            }
            if i % 7 == 0 {
                fs.set_xattr(f, b"user.big", &pattern(i, 600)).unwrap();
            }
            if i % 5 == 0 {
                fs.symlink(d, format!("s{round}-{i}").as_bytes(), &[b'x'; 100], &a)
                    .unwrap();
            }
            if i % 3 == 0 {
                fs.punch_hole(f, rng.below(1 << 20), rng.below(2 << 20))
                    .unwrap();
            }
        }
        fs.sync().unwrap();
        remove_tree(&fs, ext4kit_fs::ROOT_INO, b"top");
        fs.sync().unwrap();
        top = fs
            .create(ext4kit_fs::ROOT_INO, b"top", &NewKind::Directory, &a)
            .unwrap();
    }
    remove_tree(&fs, ext4kit_fs::ROOT_INO, b"top");
    // Files deleted before their data was ever written back give their delayed-allocation
    // reservations back: 6 x 20 MiB through a 32 MiB filesystem.
    for k in 0..6u64 {
        let f = fs
            .create(ext4kit_fs::ROOT_INO, b"unsynced", &NewKind::Regular, &a)
            .unwrap();
        let chunk = pattern(k, 1 << 20);
        for m in 0..20u64 {
            fs.write_at(f, m << 20, &chunk)
                .unwrap_or_else(|e| panic!("round {k}, MiB {m}: {e}"));
        }
        fs.unlink(ext4kit_fs::ROOT_INO, b"unsynced").unwrap();
    }
    fs.sync().unwrap();
    drop(fs);
    assert_eq!(
        counts(&dev),
        before,
        "free blocks and inodes after deleting everything"
    );
}
