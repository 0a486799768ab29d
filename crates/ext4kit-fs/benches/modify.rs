//! Changing existing images, ext4kit-fs vs the kernel through a loop mount, at 1 KiB and 4 KiB
//! blocks, same run, interleaved, medians of `EXT4KIT_BENCH_RUNS` (default 5) runs:
//!
//! - **rand**: a 256 MiB file written beforehand (by the kernel); 20,000 `pwrite`s of 4 KiB at
//!   random aligned offsets (the same offsets for both), then durable: `fsync` for the kernel,
//!   `Fs::sync` (data, metadata, device flush) for ext4kit.
//! - **churn**: a directory of 10,000 files of 4 KiB written beforehand (by the kernel); delete
//!   them all, create 10,000 new ones of 4 KiB, then durable (`syncfs` / `Fs::sync`).
//!
//! Every run starts from a fresh copy of the prepared image in /dev/shm (tmpfs: the device is
//! memory, so the comparison is about the CPU and IO paths). Timing covers the workload only
//! (not mount, open or copy). Ratios are throughput(ext4kit) / throughput(kernel). After the
//! last ext4kit run of each kind the image is checked with `e2fsck -fn`.
//!
//! Needs root and e2fsprogs. Run: `cargo bench -p ext4kit-fs --bench modify`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ext4kit_fs::format::inode::Timestamp;
use ext4kit_fs::{Fs, OpenOptions};
use ext4kit_fs::{NewInode, NewKind};
use ext4kit_testkit::{
    LoopMount, Mke2fs, assert_e2fsck_clean, env_or, median, pattern, shm_temp_dir,
};

const FILE_MB: u64 = 256;
const WRITES: usize = 20_000;
const FILES: usize = 10_000;

/// Random 4 KiB-aligned offsets inside the file.
fn offsets() -> Vec<u64> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..WRITES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % ((FILE_MB << 20) / 4096)) * 4096
        })
        .collect()
}

fn mkfs(img: &Path, bs: u32, size_mb: u64) {
    Mke2fs::new(img)
        .block_size(bs)
        .size(size_mb << 20)
        .no_lazy_init()
        .run();
}

/// The prepared images: (rand image, churn image).
fn prepare(dir: &Path, bs: u32) -> (PathBuf, PathBuf) {
    let rand = dir.join(format!("rand-{bs}.img"));
    mkfs(&rand, bs, FILE_MB * 2);
    {
        let m = LoopMount::new(&rand, false).unwrap();
        let f = fs::File::create(m.path().join("file")).unwrap();
        let chunk = pattern(7, 4 << 20);
        for i in 0..FILE_MB / 4 {
            f.write_all_at(&chunk, i * (4 << 20)).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        m.unmount().unwrap();
    }
    let churn = dir.join(format!("churn-{bs}.img"));
    mkfs(&churn, bs, 256);
    {
        let m = LoopMount::new(&churn, false).unwrap();
        let d = m.path().join("d");
        fs::create_dir(&d).unwrap();
        let data = pattern(8, 4096);
        for i in 0..FILES {
            fs::write(d.join(format!("old-{i:05}")), &data).unwrap();
        }
        m.unmount().unwrap();
    }
    (rand, churn)
}

fn fresh(src: &Path, dir: &Path) -> PathBuf {
    let img = dir.join("run.img");
    fs::copy(src, &img).unwrap();
    img
}

fn ours_rand(img: &Path, offs: &[u64]) -> Duration {
    let fs = Fs::open_path(
        img,
        &OpenOptions {
            writable: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let ino = fs.resolve(b"/file", true).unwrap();
    let buf = pattern(9, 4096);
    let t = Instant::now();
    for &o in offs {
        fs.write_at(ino, o, &buf).unwrap();
    }
    fs.sync().unwrap();
    t.elapsed()
}

fn kernel_rand(img: &Path, offs: &[u64]) -> Duration {
    let m = LoopMount::new(img, false).unwrap();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.path().join("file"))
        .unwrap();
    let buf = pattern(9, 4096);
    let t = Instant::now();
    for &o in offs {
        f.write_all_at(&buf, o).unwrap();
    }
    f.sync_all().unwrap();
    let d = t.elapsed();
    drop(f);
    m.unmount().unwrap();
    d
}

fn ours_churn(img: &Path) -> Duration {
    let fs = Fs::open_path(
        img,
        &OpenOptions {
            writable: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let d = fs.resolve(b"/d", true).unwrap();
    let data = pattern(10, 4096);
    let attrs = NewInode::with_time(
        0o644,
        Timestamp {
            seconds: 1_700_000_000,
            nanoseconds: 0,
        },
    );
    let t = Instant::now();
    for i in 0..FILES {
        fs.unlink(d, format!("old-{i:05}").as_bytes()).unwrap();
    }
    for i in 0..FILES {
        let ino = fs
            .create(
                d,
                format!("new-{i:05}").as_bytes(),
                &NewKind::Regular,
                &attrs,
            )
            .unwrap();
        fs.write_at(ino, 0, &data).unwrap();
    }
    fs.sync().unwrap();
    t.elapsed()
}

fn kernel_churn(img: &Path) -> Duration {
    let m = LoopMount::new(img, false).unwrap();
    let d = m.path().join("d");
    let data = pattern(10, 4096);
    let t = Instant::now();
    for i in 0..FILES {
        fs::remove_file(d.join(format!("old-{i:05}"))).unwrap();
    }
    for i in 0..FILES {
        fs::write(d.join(format!("new-{i:05}")), &data).unwrap();
    }
    let dirf = fs::File::open(&d).unwrap();
    rustix::fs::syncfs(&dirf).unwrap();
    let el = t.elapsed();
    drop(dirf);
    m.unmount().unwrap();
    el
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !ext4kit_testkit::kernel_available() {
        eprintln!("modify bench: needs root, loop devices and e2fsprogs; skipped");
        return;
    }
    let runs: usize = env_or("EXT4KIT_BENCH_RUNS", 5);
    let dir = shm_temp_dir("ext4kit-modify-bench-");
    let base = dir.path().parent().unwrap().display().to_string();
    let offs = offsets();
    println!(
        "modify bench: {runs} runs, interleaved; images in {base}; ratio = throughput(ext4kit) / throughput(kernel)"
    );
    for bs in [1024u32, 4096] {
        let (rand, churn) = prepare(dir.path(), bs);
        let (mut ro, mut rk, mut co, mut ck) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            let img = fresh(&rand, dir.path());
            let o = ours_rand(&img, &offs);
            if run + 1 == runs {
                assert_e2fsck_clean(&img);
            }
            let img = fresh(&rand, dir.path());
            let k = kernel_rand(&img, &offs);
            let img = fresh(&churn, dir.path());
            let oc = ours_churn(&img);
            if run + 1 == runs {
                assert_e2fsck_clean(&img);
            }
            let img = fresh(&churn, dir.path());
            let kc = kernel_churn(&img);
            println!(
                "bs {bs} run {run}: rand ours {:>7.0} ops/s kernel {:>7.0} ops/s ratio {:.2} | churn ours {:>6.0} files/s kernel {:>6.0} files/s ratio {:.2}",
                WRITES as f64 / o.as_secs_f64(),
                WRITES as f64 / k.as_secs_f64(),
                k.as_secs_f64() / o.as_secs_f64(),
                FILES as f64 / oc.as_secs_f64(),
                FILES as f64 / kc.as_secs_f64(),
                kc.as_secs_f64() / oc.as_secs_f64(),
            );
            ro.push(o);
            rk.push(k);
            co.push(oc);
            ck.push(kc);
        }
        let (o, k, oc, kc) = (median(&ro), median(&rk), median(&co), median(&ck));
        println!(
            "bs {bs} median: rand (20,000 x 4 KiB overwrites + fsync in 256 MiB) ours {:.0} ops/s ({:.3} s), kernel {:.0} ops/s ({:.3} s), ratio {:.2}",
            WRITES as f64 / o.as_secs_f64(),
            o.as_secs_f64(),
            WRITES as f64 / k.as_secs_f64(),
            k.as_secs_f64(),
            k.as_secs_f64() / o.as_secs_f64()
        );
        println!(
            "bs {bs} median: churn (delete 10,000 + create 10,000 x 4 KiB + sync) ours {:.0} files/s ({:.3} s), kernel {:.0} files/s ({:.3} s), ratio {:.2}",
            FILES as f64 / oc.as_secs_f64(),
            oc.as_secs_f64(),
            FILES as f64 / kc.as_secs_f64(),
            kc.as_secs_f64(),
            kc.as_secs_f64() / oc.as_secs_f64()
        );
    }
}
