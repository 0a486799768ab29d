//! Writing images, against the anchors, in one run with the runs interleaved:
//!
//! 1. `ext4kit build TREE IMG` vs `mke2fs -t ext4 -d TREE IMG` on a generated tree of about
//!    200 MB in thousands of files (goal: at least 2x faster);
//! 2. copying a 1 GiB file into an image: `ext4kit cp` vs the kernel (loop mount, `cp`, `sync`;
//!    mounting and unmounting not timed) (goal: at least 1.0x);
//! 3. copying 10,000 files of 4 KiB into an image: `ext4kit cp -r` vs the kernel (`cp -r`, `sync`);
//! 4. making a 1 TiB filesystem in a sparse file: `ext4kit mkfs` vs `mkfs.ext4` (same geometry:
//!    4 KiB blocks, lazy inode-table init, no resize_inode for either);
//! 5. when `fuse2fs` is installed: 2 and 3 against it too (mount, `cp`, unmount and the daemon's
//!    exit all timed: that is when its image is complete), with our times from the same run;
//! 6. once, not timed against anything: peak RSS of building 66,000 empty directories, ours
//!    and `mke2fs -d`'s (issue 9: 628 MB before, about 35 MB now).
//!
//! Everything lives in /dev/shm, so the device is memory and the comparison is about the write
//! path. Fresh images come from mkfs.ext4 (4 KiB blocks) before each timed run and are not
//! timed. Medians of `EXT4KIT_BENCH_RUNS` (default 5) runs; a ratio above 1 means ext4kit is
//! faster. `EXT4KIT_BENCH_ONLY=build|copy|files|mkfs|memory` runs one part. Needs root for the kernel parts.
//!
//! Run: `cargo bench -p ext4kit --bench write`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ext4kit_testkit::Mke2fs;

use ext4kit_testkit::{env_or, is_root, median, shm_temp_dir};

const BIN: &str = env!("CARGO_BIN_EXE_ext4kit");

fn run(cmd: &mut Command) {
    let st = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    assert!(st.success(), "{cmd:?} failed");
}

fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    run(cmd);
    t.elapsed()
}

/// Runs `cmd` to completion: its time and peak RSS in KiB (wait4's rusage for that child).
fn peak_rss(cmd: &mut Command) -> (Duration, i64) {
    let t = Instant::now();
    let child = cmd.stdout(Stdio::null()).spawn().unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain data; all zeros is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not waited for yet; the pointers are valid for the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert!(
        r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed"
    );
    std::mem::forget(child);
    (t.elapsed(), ru.ru_maxrss)
}

fn sh(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", script]);
    c
}

fn mkfs(img: &Path, size: &str) {
    let _ = fs::remove_file(img);
    run(&mut Mke2fs::new(img).block_size(4096).fs_size(size).command());
}

/// Time of: `fuse2fs -f -o fakeroot IMG MNT` started, `script` run once the mount is up,
/// unmounted, and the daemon gone (so everything reached the image).
fn with_fuse2fs(img: &Path, mnt: &Path, script: &str) -> Duration {
    let t = Instant::now();
    let mut daemon = Command::new("fuse2fs")
        .args(["-f", "-o", "fakeroot"])
        .arg(img)
        .arg(mnt)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let want = format!(" {} fuse", mnt.display());
    while !fs::read_to_string("/proc/mounts").unwrap().contains(&want) {
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "fuse2fs exited before mounting"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    run(&mut sh(script));
    run(Command::new("umount").arg(mnt));
    assert!(daemon.wait().unwrap().success(), "fuse2fs failed");
    t.elapsed()
}

struct Part {
    name: &'static str,
    anchor: &'static str,
    ours: Vec<Duration>,
    theirs: Vec<Duration>,
}

impl Part {
    fn new(name: &'static str, anchor: &'static str) -> Part {
        Part {
            name,
            anchor,
            ours: Vec::new(),
            theirs: Vec::new(),
        }
    }

    fn push(&mut self, run: usize, ours: Duration, theirs: Duration) {
        println!(
            "  {:<26} run {run}: ext4kit {:>7.3} s, {:<16} {:>7.3} s, ratio {:.2}",
            self.name,
            ours.as_secs_f64(),
            self.anchor,
            theirs.as_secs_f64(),
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
        self.ours.push(ours);
        self.theirs.push(theirs);
    }

    fn summary(&self) -> Option<String> {
        if self.ours.is_empty() {
            return None;
        }
        let (a, b) = (median(&self.ours), median(&self.theirs));
        Some(format!(
            "{:<26} median ext4kit {:>7.3} s, {:<16} {:>7.3} s, ratio {:.2}",
            self.name,
            a.as_secs_f64(),
            self.anchor,
            b.as_secs_f64(),
            b.as_secs_f64() / a.as_secs_f64()
        ))
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs: usize = env_or("EXT4KIT_BENCH_RUNS", 5);
    let only = std::env::var("EXT4KIT_BENCH_ONLY").unwrap_or_default();
    let want = |p: &str| only.is_empty() || only == p;
    let root = is_root();
    let dir = shm_temp_dir("ext4kit-wbench-");
    let base = dir.path().parent().unwrap().display().to_string();
    let d = dir.path();
    let mnt = d.join("mnt");
    fs::create_dir(&mnt).unwrap();

    // Inputs.
    let tree = d.join("tree");
    let tree_bytes = if want("build") {
        ext4kit_testkit::size_mix_tree(&tree, 6000, 200 << 20)
    } else {
        0
    };
    let big = d.join("big");
    if want("copy") {
        let mut f = fs::File::create(&big).unwrap();
        let chunk = ext4kit_testkit::pattern(42, 4 << 20);
        for i in 0..256u64 {
            let mut c = chunk.clone();
            c[..8].copy_from_slice(&i.to_le_bytes());
            f.write_all(&c).unwrap();
        }
    }
    let small = d.join("small");
    if want("files") {
        for i in 0..10_000 {
            let sub = small.join(format!("dir{:02}", i % 50));
            if i < 50 {
                fs::create_dir_all(&sub).unwrap();
            }
            fs::write(
                sub.join(format!("f{i:05}")),
                ext4kit_testkit::pattern(i as u64, 4096),
            )
            .unwrap();
        }
    }
    if !root {
        eprintln!("note: not root: the kernel parts are skipped");
    }
    println!("ext4kit write benchmark, {runs} interleaved runs, files in {base}");

    let (ours_img, their_img) = (d.join("ours.img"), d.join("theirs.img"));
    let mut build = Part::new("build ~200 MB tree", "mke2fs -d");
    let mut copy = Part::new("cp 1 GiB file", "kernel cp+sync");
    let mut files = Part::new("cp -r 10,000 x 4 KiB", "kernel cp+sync");
    let mut mkfs_part = Part::new("mkfs 1 TiB", "mkfs.ext4");
    let mut copy_fuse = Part::new("cp 1 GiB file", "fuse2fs cp+umount");
    let mut files_fuse = Part::new("cp -r 10,000 x 4 KiB", "fuse2fs cp+umount");
    let fuse2fs = root
        && Command::new("fuse2fs")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success() || !o.stderr.is_empty());
    if !fuse2fs && (want("copy") || want("files")) {
        eprintln!(
            "note: fuse2fs (Debian package fuse2fs) not found or not root: its parts are skipped"
        );
    }
    if want("build") {
        println!("  tree: 6000 files, {} MB", tree_bytes / 1_000_000);
    }
    for r in 0..runs {
        if want("build") {
            // Same geometry for both: 4 KiB blocks, 512 MiB.
            let _ = fs::remove_file(&ours_img);
            let a = timed(
                Command::new(BIN)
                    .args(["build", "-b", "4096", "--size", "512M"])
                    .arg(&tree)
                    .arg(&ours_img),
            );
            let _ = fs::remove_file(&their_img);
            let b = timed(
                &mut Mke2fs::new(&their_img)
                    .block_size(4096)
                    .tree(&tree)
                    .fs_size("512M")
                    .command(),
            );
            if r == 0 {
                for img in [&ours_img, &their_img] {
                    run(Command::new("e2fsck").args(["-fn"]).arg(img));
                }
            }
            build.push(r, a, b);
        }
        if root && want("copy") {
            mkfs(&ours_img, "3G");
            let a = timed(
                Command::new(BIN)
                    .arg("cp")
                    .arg(&big)
                    .arg(format!("{}:/big", ours_img.display())),
            );
            mkfs(&their_img, "3G");
            run(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&their_img)
                .arg(&mnt));
            let b = timed(&mut sh(&format!(
                "cp '{}' '{}/big' && sync",
                big.display(),
                mnt.display()
            )));
            run(Command::new("umount").arg(&mnt));
            copy.push(r, a, b);
        }
        if root && want("files") {
            mkfs(&ours_img, "1G");
            let a = timed(
                Command::new(BIN)
                    .args(["cp", "-r"])
                    .arg(&small)
                    .arg(format!("{}:/", ours_img.display())),
            );
            mkfs(&their_img, "1G");
            run(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&their_img)
                .arg(&mnt));
            let b = timed(&mut sh(&format!(
                "cp -r '{}' '{}/' && sync",
                small.display(),
                mnt.display()
            )));
            run(Command::new("umount").arg(&mnt));
            if r == 0 {
                run(Command::new("e2fsck").args(["-fn"]).arg(&ours_img));
            }
            files.push(r, a, b);
        }
        if fuse2fs && want("copy") {
            // Ours was timed above; fuse2fs: mount, copy, unmount, the daemon's exit.
            mkfs(&their_img, "3G");
            let b = with_fuse2fs(
                &their_img,
                &mnt,
                &format!("cp '{}' '{}/big'", big.display(), mnt.display()),
            );
            copy_fuse.push(r, copy.ours[r], b);
        }
        if fuse2fs && want("files") {
            mkfs(&their_img, "1G");
            let b = with_fuse2fs(
                &their_img,
                &mnt,
                &format!("cp -r '{}' '{}/'", small.display(), mnt.display()),
            );
            if r == 0 {
                run(Command::new("e2fsck").args(["-fn"]).arg(&their_img));
            }
            files_fuse.push(r, files.ours[r], b);
        }
        if want("mkfs") {
            let _ = fs::remove_file(&ours_img);
            let a = timed(
                Command::new(BIN)
                    .args(["mkfs", "-b", "4096"])
                    .arg(&ours_img)
                    .arg("1T"),
            );
            let _ = fs::remove_file(&their_img);
            let b = timed(
                &mut Mke2fs::new(&their_img)
                    .block_size(4096)
                    .features("^resize_inode")
                    .extended("lazy_itable_init=1,nodiscard")
                    .fs_size("1T")
                    .command(),
            );
            if r == 0 {
                run(Command::new("e2fsck").args(["-fn"]).arg(&ours_img));
            }
            mkfs_part.push(r, a, b);
        }
    }
    if want("memory") {
        // Once (mke2fs -d takes about a minute here): peak RSS building 66,000 empty
        // directories, ours and mke2fs -d's, same size and block size.
        let many = d.join("many");
        fs::create_dir(&many).unwrap();
        for i in 0..66_000 {
            fs::create_dir(many.join(format!("d{i:05}"))).unwrap();
        }
        let _ = fs::remove_file(&ours_img);
        let (ta, a) = peak_rss(
            Command::new(BIN)
                .args(["build", "-b", "4096", "-N", "70000", "--size", "700M"])
                .arg(&many)
                .arg(&ours_img),
        );
        let _ = fs::remove_file(&their_img);
        let (tb, b) = peak_rss(
            &mut Mke2fs::new(&their_img)
                .block_size(4096)
                .inodes(70_000)
                .tree(&many)
                .fs_size("700M")
                .command(),
        );
        run(Command::new("e2fsck").args(["-fn"]).arg(&ours_img));
        println!(
            "  build 66,000 empty dirs: peak RSS ext4kit {} MiB ({:.0} bytes/dir, {:.1}s), mke2fs -d {} MiB ({:.1}s)",
            a >> 10,
            a as f64 * 1024.0 / 66_000.0,
            ta.as_secs_f64(),
            b >> 10,
            tb.as_secs_f64()
        );
        fs::remove_dir_all(&many).unwrap();
    }
    println!("medians (ratio = anchor time / ext4kit time; above 1 is faster):");
    for p in [&build, &copy, &files, &mkfs_part, &copy_fuse, &files_fuse] {
        if let Some(s) = p.summary() {
            println!("  {s}");
        }
    }
}
