//! Writing to damaged images: a seeded run flips bytes in the metadata of an image (no
//! metadata_csum, so the damage is not simply caught by a checksum) and then creates, writes,
//! renames, deletes and syncs through a writable open. Any error is fine; a panic or an
//! operation that does not finish within a generous timeout fails the test. (The same with the
//! CLI's write commands, 1,500 images, found nothing; this keeps it in the suite.)
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use ext4kit_blockdev::{BlockDevice, MemDevice};
use ext4kit_fs::format::inode::Timestamp;
use ext4kit_fs::{Fs, OpenOptions, ROOT_INO, Result};
use ext4kit_fs::{NewInode, NewKind};
use ext4kit_testkit::{
    Mke2fs, TreeOptions, debugfs, env_or, new_tree, number_after, pattern, run_ok,
};

/// Removes `name` in `dir` and everything under it.
fn remove_all(fs: &Fs, dir: u32, name: &[u8], depth: usize) -> Result<()> {
    let Some(e) = fs.lookup(dir, name)? else {
        return Ok(());
    };
    if depth < 64 && fs.inode(e.ino)?.is_dir() {
        for c in fs.read_dir(e.ino)? {
            if !c.is_dot_or_dotdot() {
                remove_all(fs, e.ino, &c.name, depth + 1)?;
            }
        }
        fs.rmdir(dir, name)
    } else {
        fs.unlink(dir, name)
    }
}

/// The changes made to each damaged image; stops at the first error.
fn change(dev: Arc<dyn BlockDevice>, which: u64) -> Result<()> {
    let fs = Fs::open(
        dev,
        &OpenOptions {
            writable: true,
            background_writeback: false,
            ..OpenOptions::default()
        },
    )?;
    let a = NewInode::with_time(
        0o644,
        Timestamp {
            seconds: 1_700_000_000,
            nanoseconds: 0,
        },
    );
    match which % 4 {
        0 => {
            let mut at = ROOT_INO;
            for name in [&b"new"[..], b"deep", b"er"] {
                at = match fs.lookup(at, name)? {
                    Some(e) => e.ino,
                    None => fs.create(at, name, &NewKind::Directory, &a)?,
                };
            }
            let f = fs.create(at, b"file", &NewKind::Regular, &a)?;
            fs.write_at(f, 3000, &pattern(which, 70_000))?;
        }
        1 => {
            for e in fs.read_dir(ROOT_INO)? {
                if !e.is_dot_or_dotdot() && e.name != b"lost+found" {
                    remove_all(&fs, ROOT_INO, &e.name, 0)?;
                }
            }
        }
        2 => {
            for e in fs.read_dir(ROOT_INO)? {
                if !e.is_dot_or_dotdot() {
                    let mut to = e.name.clone();
                    to.extend_from_slice(b".moved");
                    fs.rename(ROOT_INO, &e.name, ROOT_INO, &to)?;
                }
            }
        }
        _ => {
            // Overwrite and truncate whatever regular files the root holds.
            for e in fs.read_dir(ROOT_INO)? {
                let ino = e.ino;
                if !e.is_dot_or_dotdot() && fs.inode(ino)?.is_regular() {
                    fs.write_at(ino, 100, &pattern(which, 5000))?;
                    fs.set_size(ino, 2500)?;
                }
            }
        }
    }
    fs.sync()
}

#[test]
fn damaged_images_give_errors_not_panics_or_hangs_when_written() {
    let dir = tempfile::tempdir().unwrap();
    let src = new_tree(&dir.path().join("src"), 3, &TreeOptions::sized(300, 5));
    let img = Mke2fs::new(dir.path().join("base.img"))
        .block_size(1024)
        .size(24 << 20)
        .features("^metadata_csum")
        .tree(&src)
        .run();
    let base = std::fs::read(&img).unwrap();
    // Where the metadata is (1 KiB blocks): group descriptors, group 0's bitmaps and the used
    // part of its inode table, and the blocks of some directories.
    let dump = run_ok("dumpe2fs", &[img.to_str().unwrap()]);
    let inodes_used = number_after(&dump, "Inode count:") - number_after(&dump, "Free inodes:");
    let mut regions: Vec<(u64, u64)> = vec![
        (2048, 1024),
        (number_after(&dump, "Block bitmap at") * 1024, 1024),
        (number_after(&dump, "Inode bitmap at") * 1024, 1024),
        (
            number_after(&dump, "Inode table at") * 1024,
            inodes_used * 256,
        ),
    ];
    for d in ["/", "/bigdir", "/deep", "/deep/level00"] {
        let out = debugfs(&img, &format!("blocks {d}"));
        regions.extend(
            out.split_whitespace()
                .filter_map(|b| b.parse::<u64>().ok())
                .map(|b| (b * 1024, 1024)),
        );
    }
    assert!(regions.len() > 6, "{regions:?}");
    let cases: u64 = env_or("EXT4KIT_CORRUPT_CASES", 300);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut failed, mut passed) = (0, 0);
    for case in 0..cases {
        let mut bytes = base.clone();
        for _ in 0..1 + next() % 4 {
            let (start, len) = regions[(next() % regions.len() as u64) as usize];
            bytes[(start + next() % len) as usize] = next() as u8;
        }
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::from_image(1024, bytes).threaded());
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let r = change(dev, case);
            let _ = tx.send(r.is_ok());
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(true) => passed += 1,
            Ok(false) => failed += 1,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("case {case}: no answer in 60 s (endless loop?)")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!(
                    "case {case}: panicked: {:?}",
                    worker
                        .join()
                        .err()
                        .and_then(|e| e.downcast_ref::<String>().cloned())
                )
            }
        }
        worker.join().unwrap();
    }
    eprintln!(
        "{cases} damaged images: {passed} took the changes, {failed} refused them with an error"
    );
    // The damage must matter sometimes, or this proves nothing.
    assert!(
        failed > cases / 20,
        "only {failed} of {cases} damaged images gave an error"
    );
}

#[test]
fn a_block_bitmap_calling_the_inode_table_free_is_refused_naming_group_and_block() {
    let dir = tempfile::tempdir().unwrap();
    let img = Mke2fs::new(dir.path().join("b.img"))
        .block_size(1024)
        .size(16 << 20)
        .features("^metadata_csum")
        .run();
    let dump = run_ok("dumpe2fs", &[img.to_str().unwrap()]);
    let (bitmap_at, table_at) = (
        number_after(&dump, "Block bitmap at"),
        number_after(&dump, "Inode table at"),
    );
    // Group 0 starts at block 1 with 1 KiB blocks: bit (table - 1) says whether the table's
    // first block is in use.
    let mut bytes = std::fs::read(&img).unwrap();
    let bit = (table_at - 1) as usize;
    bytes[(bitmap_at * 1024) as usize + bit / 8] &= !(1 << (bit % 8));
    std::fs::write(&img, &bytes).unwrap();
    let fs = Fs::open_path(
        &img,
        &OpenOptions {
            writable: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let a = NewInode::with_time(
        0o644,
        Timestamp {
            seconds: 1_700_000_000,
            nanoseconds: 0,
        },
    );
    let f = fs
        .create(ROOT_INO, b"f", &NewKind::Regular, &a)
        .and_then(|f| fs.write_at(f, 0, &pattern(1, 100_000)).map(|()| f));
    let e = f.and_then(|_| fs.sync()).unwrap_err().to_string();
    assert!(
        e.contains("group 0")
            && e.contains(&format!("metadata block {table_at} "))
            && e.contains("run e2fsck"),
        "{e}"
    );
    drop(fs);
    // Nothing was allocated over the table: e2fsck finds only the bit we cleared.
    let (_, text) = ext4kit_testkit::run("e2fsck", &[std::ffi::OsStr::new("-fn"), img.as_os_str()]);
    assert!(
        text.contains(&format!("+{table_at}")) || text.contains(&format!("+({table_at}--")),
        "{text}"
    );
    assert!(
        !text.contains("multiply-claimed") && !text.contains("Multiply-claimed"),
        "{text}"
    );
}

#[test]
fn an_inode_bitmap_calling_a_live_inode_free_is_refused_naming_the_inode() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("precious"), b"keep me").unwrap();
    let img = Mke2fs::new(dir.path().join("i.img"))
        .block_size(4096)
        .size(16 << 20)
        .features("^metadata_csum")
        .tree(&src)
        .run();
    let stat = debugfs(&img, "stat /precious");
    let ino: u32 = stat["Inode: ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let dump = run_ok("dumpe2fs", &[img.to_str().unwrap()]);
    let ibm = number_after(&dump, "Inode bitmap at");
    let mut bytes = std::fs::read(&img).unwrap();
    let bit = (ino - 1) as usize;
    bytes[(ibm * 4096) as usize + bit / 8] &= !(1 << (bit % 8));
    std::fs::write(&img, &bytes).unwrap();
    let fs = Fs::open_path(
        &img,
        &OpenOptions {
            writable: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let a = NewInode::with_time(
        0o644,
        Timestamp {
            seconds: 1_700_000_000,
            nanoseconds: 0,
        },
    );
    let e = fs
        .create(ROOT_INO, b"new", &NewKind::Regular, &a)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("inode {ino} is marked free but in use (1 links)"))
            && e.contains("group 0"),
        "{e}"
    );
    drop(fs);
    // The file is untouched.
    let out = debugfs(&img, "cat /precious");
    assert!(out.starts_with("keep me"), "{out}");
}
