//! Reading a 1 GiB file out of an image: `ext4kit cat` vs `debugfs -R "dump"` vs `cat` through
//! a kernel loop mount with caches dropped before each run. Same run, interleaved, medians of
//! `EXT4KIT_BENCH_RUNS` (default 5) runs, per-run ratios printed.
//!
//! The image lives in /dev/shm (tmpfs), so the device is memory and the comparison is about CPU
//! and IO path; the loop mount's page cache is dropped (`echo 3 > /proc/sys/vm/drop_caches`)
//! before each kernel read. Needs root and e2fsprogs; `EXT4KIT_BENCH_MB` changes the size.
//!
//! Then a tree: `ext4kit cp -r IMG:/ OUT` vs `debugfs -R "rdump / OUT"` vs `cp -a` out of the
//! loop mount, on 6000 files of mixed sizes (`EXT4KIT_BENCH_ONLY=file` or `=tree` runs one part).
//!
//! Run: `cargo bench -p ext4kit --bench read`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ext4kit_testkit::{env_or, is_root, median, shm_temp_dir};

const BIN: &str = env!("CARGO_BIN_EXE_ext4kit");

fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let st = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    let d = t.elapsed();
    assert!(st.success(), "{cmd:?} failed");
    d
}

/// Loop-mounts `img` read-only at `mnt`; whether it worked.
fn mount_ro(img: &Path, mnt: &Path) -> bool {
    Command::new("mount")
        .args(["-o", "loop,ro"])
        .arg(img)
        .arg(mnt)
        .status()
        .is_ok_and(|s| s.success())
}

fn drop_caches() {
    Command::new("sync").status().unwrap();
    fs::write("/proc/sys/vm/drop_caches", b"3\n").unwrap();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mb: u64 = env_or("EXT4KIT_BENCH_MB", 1024);
    let runs: usize = env_or("EXT4KIT_BENCH_RUNS", 5);
    let root = is_root();
    let dir = shm_temp_dir("ext4kit-bench-");
    let base = dir.path().parent().unwrap().display().to_string();
    if std::env::var("EXT4KIT_BENCH_ONLY").is_ok_and(|v| v == "tree") {
        fs::create_dir(dir.path().join("mnt")).unwrap();
        tree_part(dir.path(), runs, root);
        return;
    }
    let tree = dir.path().join("tree");
    fs::create_dir(&tree).unwrap();
    // The file: pseudo-random data, written in 4 MiB chunks.
    {
        let mut f = fs::File::create(tree.join("big")).unwrap();
        let chunk = ext4kit_testkit::pattern(42, 4 << 20);
        for i in 0..mb / 4 {
            let mut c = chunk.clone();
            c[..8].copy_from_slice(&i.to_le_bytes());
            f.write_all(&c).unwrap();
        }
    }
    let img = dir.path().join("bench.img");
    let size = (mb + mb / 8 + 64) << 20;
    ext4kit_testkit::mke2fs_d(&tree, &img, "ext4", 4096, size, &[]);
    // Correctness once: the bytes ext4kit reads are the file's.
    let out = Command::new(BIN)
        .arg("cat")
        .arg(format!("{}:/big", img.display()))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stdout == fs::read(tree.join("big")).unwrap(),
        "ext4kit cat returned wrong data"
    );
    drop(out);
    fs::remove_file(tree.join("big")).unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mounted = root && mount_ro(&img, &mnt);
    if !mounted {
        eprintln!("note: not root or mount failed; the kernel column is skipped");
    }
    let spec = format!("{}:/big", img.display());
    let (mut ours, mut dbg, mut kern) = (Vec::new(), Vec::new(), Vec::new());
    println!("reading a {mb} MiB file, {runs} interleaved runs (image in {base})");
    println!(
        "{:>4} {:>14} {:>14} {:>14} {:>10} {:>10}",
        "run", "ext4kit MB/s", "debugfs MB/s", "kernel MB/s", "vs debugfs", "vs kernel"
    );
    let rate = |d: Duration| mb as f64 * 1.048_576 / d.as_secs_f64();
    for run in 0..runs {
        let a = timed(Command::new(BIN).arg("cat").arg(&spec));
        let b = timed(
            Command::new("debugfs")
                .arg("-R")
                .arg("dump /big /dev/null")
                .arg(&img),
        );
        let c = if mounted {
            drop_caches();
            Some(timed(Command::new("cat").arg(mnt.join("big"))))
        } else {
            None
        };
        println!(
            "{run:>4} {:>14.0} {:>14.0} {:>14} {:>10.2} {:>10}",
            rate(a),
            rate(b),
            c.map_or("-".into(), |c| format!("{:.0}", rate(c))),
            b.as_secs_f64() / a.as_secs_f64(),
            c.map_or("-".into(), |c| format!(
                "{:.2}",
                c.as_secs_f64() / a.as_secs_f64()
            )),
        );
        ours.push(a);
        dbg.push(b);
        if let Some(c) = c {
            kern.push(c);
        }
    }
    let (a, b) = (median(&ours), median(&dbg));
    println!(
        "median: ext4kit cat {:.0} MB/s ({:.3} s), debugfs dump {:.0} MB/s ({:.3} s)",
        rate(a),
        a.as_secs_f64(),
        rate(b),
        b.as_secs_f64()
    );
    println!(
        "ratio (time of the other / time of ext4kit): debugfs {:.2}x",
        b.as_secs_f64() / a.as_secs_f64()
    );
    if !kern.is_empty() {
        let c = median(&kern);
        println!(
            "median: kernel loop-mount cat (caches dropped) {:.0} MB/s ({:.3} s); ratio {:.2}x",
            rate(c),
            c.as_secs_f64(),
            c.as_secs_f64() / a.as_secs_f64()
        );
        Command::new("umount").arg(&mnt).status().unwrap();
    }
    if std::env::var("EXT4KIT_BENCH_ONLY").is_ok_and(|v| v == "file") {
        return;
    }
    tree_part(dir.path(), runs, root);
}

/// Copying a whole tree out: `ext4kit cp -r IMG:/ OUT` vs `debugfs -R "rdump / OUT"` vs the
/// kernel (`cp -a` out of a loop mount, caches dropped first), on an image `mke2fs -d` made from
/// 6000 files of mixed sizes (~200 MB).
fn tree_part(dir: &Path, runs: usize, root: bool) {
    let tree = dir.join("mix");
    let bytes = ext4kit_testkit::size_mix_tree(&tree, 6000, 200 << 20);
    let img = dir.join("tree.img");
    ext4kit_testkit::mke2fs_d(&tree, &img, "ext4", 4096, 512 << 20, &[]);
    let mnt = dir.join("mnt");
    let mounted = root && mount_ro(&img, &mnt);
    let out = dir.join("out");
    let fresh = |p: &Path| {
        let _ = fs::remove_dir_all(p);
        fs::create_dir(p).unwrap();
    };
    // Correctness once: the copy is the tree.
    fresh(&out);
    let st = Command::new(BIN)
        .args(["cp", "-r"])
        .arg(format!("{}:/", img.display()))
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let _ = fs::remove_dir(out.join("lost+found"));
    assert!(
        Command::new("diff")
            .args(["-r", "-q"])
            .arg(&tree)
            .arg(&out)
            .status()
            .unwrap()
            .success(),
        "ext4kit cp -r copied something else"
    );
    println!(
        "copying a tree out: 6000 files, {} MB, {runs} interleaved runs",
        bytes / 1_000_000
    );
    let (mut ours, mut dbg, mut kern) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        fresh(&out);
        let a = timed(
            Command::new(BIN)
                .args(["cp", "-r"])
                .arg(format!("{}:/", img.display()))
                .arg(&out),
        );
        fresh(&out);
        let b = timed(
            Command::new("debugfs")
                .arg("-R")
                .arg(format!("rdump / {}", out.display()))
                .arg(&img),
        );
        let c = if mounted {
            fresh(&out);
            drop_caches();
            Some(timed(
                Command::new("cp").arg("-a").arg(mnt.join(".")).arg(&out),
            ))
        } else {
            None
        };
        println!(
            "  run {run}: ext4kit {:.3} s, debugfs rdump {:.3} s ({:.2}x){}",
            a.as_secs_f64(),
            b.as_secs_f64(),
            b.as_secs_f64() / a.as_secs_f64(),
            c.map_or(String::new(), |c| format!(
                ", kernel cp -a {:.3} s ({:.2}x)",
                c.as_secs_f64(),
                c.as_secs_f64() / a.as_secs_f64()
            ))
        );
        ours.push(a);
        dbg.push(b);
        kern.extend(c);
    }
    let (a, b) = (median(&ours), median(&dbg));
    let mut line = format!(
        "median tree: ext4kit cp -r {:.3} s, debugfs rdump {:.3} s, ratio {:.2}x",
        a.as_secs_f64(),
        b.as_secs_f64(),
        b.as_secs_f64() / a.as_secs_f64()
    );
    if !kern.is_empty() {
        let c = median(&kern);
        line += &format!(
            "; kernel cp -a (caches dropped) {:.3} s, ratio {:.2}x",
            c.as_secs_f64(),
            c.as_secs_f64() / a.as_secs_f64()
        );
        Command::new("umount").arg(&mnt).status().unwrap();
    }
    println!("{line}");
}
