//! One writer per image (issue 9 item 2): concurrent writing commands are serialised by the
//! image's lock (`--wait`) or refused cleanly; a loop-mounted image is refused for writing
//! however it is reached (hard link, the loop device node itself), `--replay-journal` included.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use ext4kit_testkit::{
    LoopDevice, LoopMount, Mke2fs, assert_e2fsck_clean, ext4kit_cli, require_kernel,
};

fn bin() -> Command {
    ext4kit_cli!().command()
}

fn spawn(args: &[&str]) -> Child {
    bin()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(c: Child) -> (i32, String) {
    let out = c.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ls(img: &Path) -> Vec<String> {
    let out = bin()
        .args(["ls", &format!("{}:/", img.display())])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ls: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().last().unwrap_or("").to_string())
        .collect()
}

fn mkfs(img: &Path) {
    Mke2fs::new(img).block_size(4096).size(32 << 20).run();
}

fn image_bytes(img: &Path) -> Vec<u8> {
    std::fs::read(img).unwrap()
}

/// Holds the image's lock from the test process, as another ext4kit would.
fn hold_lock(img: &Path) -> std::fs::File {
    let f = std::fs::File::open(img).unwrap();
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    f
}

#[test]
fn parallel_writers_with_wait_all_land_and_without_wait_fail_cleanly() {
    if !require_kernel("parallel_writers_with_wait_all_land_and_without_wait_fail_cleanly") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("p.img");
    mkfs(&img);
    let spec = |p: &str| format!("{}:/{p}", img.display());
    for i in 0..3 {
        std::fs::write(
            dir.path().join(format!("f{i}")),
            vec![i as u8; 300_000 + i * 1000],
        )
        .unwrap();
    }
    // While another holder has the lock: without --wait every writer is refused, one line
    // naming the image and the holder, and the image is left exactly as it was.
    let before = image_bytes(&img);
    let held = hold_lock(&img);
    let kids: Vec<Child> = (0..3)
        .map(|i| spawn(&["mkdir", &spec(&format!("d{i}"))]))
        .collect();
    for k in kids {
        let (code, err) = finish(k);
        assert_eq!(code, 1, "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
        assert!(
            err.contains(&format!(
                "{}: locked by process {}",
                img.display(),
                std::process::id()
            )),
            "{err}"
        );
        assert!(err.contains("--wait"), "{err}");
    }
    assert!(
        image_bytes(&img) == before,
        "a refused writer changed the image"
    );
    // With --wait they queue behind the holder and behind each other: all changes land.
    let mut kids: Vec<Child> = (0..3)
        .map(|i| spawn(&["--wait", "mkdir", &spec(&format!("d{i}"))]))
        .collect();
    for i in 0..3 {
        let f = dir.path().join(format!("f{i}"));
        kids.push(spawn(&[
            "--wait",
            "cp",
            f.to_str().unwrap(),
            &spec(&format!("f{i}")),
        ]));
    }
    drop(held);
    for k in kids {
        let (code, err) = finish(k);
        assert_eq!(code, 0, "{err}");
    }
    let names = ls(&img);
    for i in 0..3 {
        assert!(names.contains(&format!("d{i}")), "d{i} lost: {names:?}");
        assert!(names.contains(&format!("f{i}")), "f{i} lost: {names:?}");
        let out = bin()
            .args(["cat", &spec(&format!("f{i}"))])
            .output()
            .unwrap();
        assert_eq!(
            out.stdout,
            std::fs::read(dir.path().join(format!("f{i}"))).unwrap()
        );
    }
    assert_e2fsck_clean(&img);
    // Racing without --wait: each writer either succeeds or is refused by the lock, and
    // every one that said it succeeded is in the image (no lost update).
    for round in 0..3 {
        let kids: Vec<(String, Child)> = (0..4)
            .map(|i| {
                let name = format!("r{round}_{i}");
                let f = dir.path().join(format!("f{}", i % 3));
                let c = spawn(&["cp", f.to_str().unwrap(), &spec(&name)]);
                (name, c)
            })
            .collect();
        let mut landed = Vec::new();
        for (name, k) in kids {
            let (code, err) = finish(k);
            if code == 0 {
                landed.push(name);
            } else {
                assert!(err.contains("locked by"), "{err}");
                assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
            }
        }
        assert!(!landed.is_empty());
        let names = ls(&img);
        for n in &landed {
            assert!(
                names.contains(n),
                "{n} exited 0 but is not in the image: {names:?}"
            );
        }
    }
    assert_e2fsck_clean(&img);
}

#[test]
fn a_loop_mounted_image_is_refused_through_a_hard_link_and_as_its_device() {
    if !require_kernel("a_loop_mounted_image_is_refused_through_a_hard_link_and_as_its_device") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("m.img");
    mkfs(&img);
    let link = dir.path().join("link.img");
    std::fs::hard_link(&img, &link).unwrap();
    {
        let m = LoopMount::new(&img, false).unwrap();
        std::fs::write(m.path().join("kernel"), b"k").unwrap();
        for extra in [&[][..], &["--replay-journal"][..]] {
            let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            args.extend(["mkdir".into(), format!("{}:/x", link.display())]);
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, err) = finish(spawn(&a));
            assert_eq!(
                code, 1,
                "{args:?} wrote a loop-mounted image through a hard link: {err}"
            );
            assert!(
                err.contains(&format!(
                    "{}: the image is attached to /dev/loop",
                    link.display()
                )),
                "{err}"
            );
            assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
        }
        assert!(!m.path().join("x").exists());
        m.unmount().unwrap();
    }
    assert!(!ls(&img).contains(&"x".to_string()));
    assert_e2fsck_clean(&img);
    // The loop device node itself, mounted: refused (O_EXCL / mountinfo), image unchanged.
    let before = image_bytes(&img);
    let before_ino = std::fs::metadata(&img).unwrap().ino();
    {
        let dev = LoopDevice::attach(&img, false).unwrap();
        let m = LoopMount::device(dev.path(), true).unwrap();
        let (code, err) = finish(spawn(&["mkdir", &format!("{}:/y", dev.path().display())]));
        assert_eq!(code, 1, "wrote a mounted device: {err}");
        assert!(
            err.starts_with(&format!("ext4kit: {}: the device is", dev.path().display())),
            "{err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
        m.unmount().unwrap();
        drop(dev);
    }
    assert_eq!(std::fs::metadata(&img).unwrap().ino(), before_ino);
    assert!(image_bytes(&img) == before, "the image changed");
}
