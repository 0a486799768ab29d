//! Shared by the modification tests: images written by the kernel, and [`Twin`] — every change
//! applied both to an image (through the library) and to a host directory (through the host
//! kernel), so that a kernel mount of the image can be compared with the host tree.
#![allow(clippy::unwrap_used, dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ext4kit_fs::format::inode::Timestamp;
use ext4kit_fs::{Fs, OpenOptions};
use ext4kit_fs::{NewInode, NewKind};
use ext4kit_testkit::{Mke2fs, copy_in_through_kernel};

/// A fresh image of `size_mb` MiB made by mkfs.ext4 (`-b bs`, no lazy init, plus `extra`), with
/// `tree` copied in by the kernel (`cp -a` through a loop mount) when given.
pub fn kernel_image(
    dir: &Path,
    name: &str,
    bs: u32,
    size_mb: u64,
    tree: Option<&Path>,
    extra: &[&str],
) -> PathBuf {
    let img = Mke2fs::new(dir.join(name))
        .block_size(bs)
        .size(size_mb << 20)
        .no_lazy_init()
        .extra(extra)
        .run();
    if let Some(tree) = tree {
        copy_in_through_kernel(&img, tree);
    }
    img
}

/// Opens `img` for writing.
pub fn open_rw(img: &Path) -> Fs {
    Fs::open_path(
        img,
        &OpenOptions {
            writable: true,
            ..OpenOptions::default()
        },
    )
    .unwrap()
}

/// A timestamp.
pub fn ts(s: i64, ns: u32) -> Timestamp {
    Timestamp {
        seconds: s,
        nanoseconds: ns,
    }
}

fn set_host_mtime(p: &Path, t: Timestamp) {
    let spec = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: t.seconds,
            tv_nsec: i64::from(t.nanoseconds),
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: t.seconds,
            tv_nsec: i64::from(t.nanoseconds),
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &spec,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// The same changes on an image and on a host directory.
pub struct Twin {
    /// The host directory (the model).
    pub host: PathBuf,
    /// The image.
    pub fs: Fs,
}

impl Twin {
    /// The host path of `p` (relative).
    pub fn h(&self, p: &str) -> PathBuf {
        self.host.join(p)
    }

    fn abs(p: &str) -> Vec<u8> {
        format!("/{p}").into_bytes()
    }

    /// Inode of `p` in the image (the last component not followed).
    pub fn ino(&self, p: &str) -> u32 {
        self.fs
            .resolve(&Self::abs(p), false)
            .unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    /// Parent directory inode and last name of `p` in the image.
    pub fn parent(&self, p: &str) -> (u32, Vec<u8>) {
        let (dir, name) = match p.rfind('/') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => ("", p),
        };
        let d = self
            .fs
            .resolve(&Self::abs(dir), true)
            .unwrap_or_else(|e| panic!("{dir}: {e}"));
        (d, name.as_bytes().to_vec())
    }

    fn set_times(&self, p: &str, t: Timestamp) {
        let ino = self.ino(p);
        self.fs.set_times(ino, Some(t), Some(t), None).unwrap();
        set_host_mtime(&self.h(p), t);
    }

    /// Creates or replaces the contents of regular file `p` (mode `perm`, owner root, mtime
    /// `t`).
    pub fn write_file(&self, p: &str, data: &[u8], perm: u16, t: Timestamp) {
        let hp = self.h(p);
        fs::write(&hp, data).unwrap();
        fs::set_permissions(&hp, fs::Permissions::from_mode(u32::from(perm))).unwrap();
        let ino = match self.fs.resolve(&Self::abs(p), false) {
            Ok(ino) => {
                self.fs.set_size(ino, 0).unwrap();
                let st = self.fs.stat(ino).unwrap();
                self.fs.set_owner_mode(ino, st.uid, st.gid, perm).unwrap();
                ino
            }
            Err(_) => {
                let (d, n) = self.parent(p);
                self.fs
                    .create(d, &n, &NewKind::Regular, &NewInode::with_time(perm, t))
                    .unwrap()
            }
        };
        if !data.is_empty() {
            self.fs.write_at(ino, 0, data).unwrap();
        }
        self.set_times(p, t);
    }

    /// Writes `data` at `off` of existing file `p`.
    pub fn write_at(&self, p: &str, off: u64, data: &[u8], t: Timestamp) {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(self.h(p)).unwrap();
        f.write_all_at(data, off).unwrap();
        drop(f);
        self.fs.write_at(self.ino(p), off, data).unwrap();
        self.set_times(p, t);
    }

    /// Sets the size of file `p`.
    pub fn truncate(&self, p: &str, size: u64, t: Timestamp) {
        fs::OpenOptions::new()
            .write(true)
            .open(self.h(p))
            .unwrap()
            .set_len(size)
            .unwrap();
        self.fs.set_size(self.ino(p), size).unwrap();
        self.set_times(p, t);
    }

    /// Punches a hole in file `p`.
    pub fn punch(&self, p: &str, off: u64, len: u64, t: Timestamp) {
        let f = fs::OpenOptions::new().write(true).open(self.h(p)).unwrap();
        rustix::fs::fallocate(
            &f,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            off,
            len,
        )
        .unwrap();
        drop(f);
        self.fs.punch_hole(self.ino(p), off, len).unwrap();
        self.set_times(p, t);
    }

    /// Preallocates in file `p`.
    pub fn fallocate(&self, p: &str, off: u64, len: u64, keep_size: bool, t: Timestamp) {
        let f = fs::OpenOptions::new().write(true).open(self.h(p)).unwrap();
        let flags = if keep_size {
            rustix::fs::FallocateFlags::KEEP_SIZE
        } else {
            rustix::fs::FallocateFlags::empty()
        };
        rustix::fs::fallocate(&f, flags, off, len).unwrap();
        drop(f);
        self.fs.fallocate(self.ino(p), off, len, keep_size).unwrap();
        self.set_times(p, t);
    }

    /// Removes non-directory `p`.
    pub fn unlink(&self, p: &str) {
        fs::remove_file(self.h(p)).unwrap();
        let (d, n) = self.parent(p);
        self.fs
            .unlink(d, &n)
            .unwrap_or_else(|e| panic!("unlink {p}: {e}"));
    }

    /// Removes empty directory `p`.
    pub fn rmdir(&self, p: &str) {
        fs::remove_dir(self.h(p)).unwrap();
        let (d, n) = self.parent(p);
        self.fs
            .rmdir(d, &n)
            .unwrap_or_else(|e| panic!("rmdir {p}: {e}"));
    }

    /// Removes `p` and everything below it.
    pub fn remove_all(&self, p: &str) {
        fs::remove_dir_all(self.h(p)).unwrap();
        let (d, n) = self.parent(p);
        remove_tree(&self.fs, d, &n);
    }

    /// Renames `a` to `b`.
    pub fn rename(&self, a: &str, b: &str) {
        fs::rename(self.h(a), self.h(b)).unwrap();
        let (sd, sn) = self.parent(a);
        let (dd, dn) = self.parent(b);
        self.fs
            .rename(sd, &sn, dd, &dn)
            .unwrap_or_else(|e| panic!("rename {a} -> {b}: {e}"));
    }

    /// Creates directory `p`.
    pub fn mkdir(&self, p: &str, perm: u16) {
        let hp = self.h(p);
        fs::create_dir(&hp).unwrap();
        fs::set_permissions(&hp, fs::Permissions::from_mode(u32::from(perm))).unwrap();
        let (d, n) = self.parent(p);
        self.fs
            .create(
                d,
                &n,
                &NewKind::Directory,
                &NewInode::with_time(perm, ts(1_700_000_000, 0)),
            )
            .unwrap();
    }

    /// Creates `p` and its missing parents (mode 0755).
    pub fn mkdir_p(&self, p: &str) {
        let mut cur = String::new();
        for comp in p.split('/').filter(|c| !c.is_empty()) {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(comp);
            if !self.h(&cur).exists() {
                self.mkdir(&cur, 0o755);
            }
        }
    }

    /// Creates symlink `p` → `target`.
    pub fn symlink(&self, target: &str, p: &str, t: Timestamp) {
        std::os::unix::fs::symlink(target, self.h(p)).unwrap();
        let (d, n) = self.parent(p);
        self.fs
            .symlink(d, &n, target.as_bytes(), &NewInode::with_time(0o777, t))
            .unwrap();
        self.set_times(p, t);
    }

    /// Adds hard link `new` to `existing`.
    pub fn link(&self, existing: &str, new: &str) {
        fs::hard_link(self.h(existing), self.h(new)).unwrap();
        let (d, n) = self.parent(new);
        self.fs.link(self.ino(existing), d, &n).unwrap();
    }

    /// Sets owner and permission bits (non-symlinks).
    pub fn set_owner_mode(&self, p: &str, uid: u32, gid: u32, perm: u16) {
        let hp = self.h(p);
        std::os::unix::fs::lchown(&hp, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&hp, fs::Permissions::from_mode(u32::from(perm))).unwrap();
        self.fs.set_owner_mode(self.ino(p), uid, gid, perm).unwrap();
    }

    /// Sets the mtime.
    pub fn set_mtime(&self, p: &str, t: Timestamp) {
        self.set_times(p, t);
    }

    /// Sets an extended attribute.
    pub fn set_xattr(&self, p: &str, name: &str, value: &[u8]) {
        match self.fs.set_xattr(self.ino(p), name.as_bytes(), value) {
            Ok(()) => {
                rustix::fs::lsetxattr(self.h(p), name, value, rustix::fs::XattrFlags::empty())
                    .unwrap()
            }
            // The image's blocks may be smaller than the host's: a set that fits no block
            // there is ENOSPC, as the kernel says. Only then, and the host stays as it was.
            Err(e) if e.errno() == 28 => {
                let mut need = 32 + xattr_entry_size(name, value);
                let mut names = vec![0u8; 65536];
                let n = rustix::fs::llistxattr(self.h(p), &mut names).unwrap();
                for other in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
                    let other = std::str::from_utf8(other).unwrap();
                    if other != name {
                        let mut v = vec![0u8; 65536];
                        let len = rustix::fs::lgetxattr(self.h(p), other, &mut v).unwrap();
                        need += xattr_entry_size(other, &v[..len]);
                    }
                }
                let bs = self.fs.block_size() as usize;
                assert!(
                    need > bs,
                    "{p}: ENOSPC for {name} although the set needs {need} of a {bs}-byte block: {e}"
                );
            }
            Err(e) => panic!("{p}: set_xattr {name}: {e}"),
        }
    }

    /// Removes an extended attribute.
    pub fn remove_xattr(&self, p: &str, name: &str) {
        rustix::fs::lremovexattr(self.h(p), name).unwrap();
        self.fs.remove_xattr(self.ino(p), name.as_bytes()).unwrap();
    }
}

/// Removes `name` in `dir` of the image and everything below it (depth first).
pub fn remove_tree(fs: &Fs, dir: u32, name: &[u8]) {
    let e = fs.lookup(dir, name).unwrap().unwrap();
    if !fs.inode(e.ino).unwrap().is_dir() {
        fs.unlink(dir, name).unwrap();
        return;
    }
    for k in fs.read_dir(e.ino).unwrap() {
        if !k.is_dot_or_dotdot() {
            remove_tree(fs, e.ino, &k.name);
        }
    }
    fs.rmdir(dir, name).unwrap();
}

/// Bytes an attribute takes in an xattr block: its entry (16 + name without the namespace
/// prefix, rounded to 4) and its value (rounded to 4).
fn xattr_entry_size(name: &str, value: &[u8]) -> usize {
    let short = ["user.", "trusted.", "security.", "system."]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    (16 + short.len()).div_ceil(4) * 4 + value.len().div_ceil(4) * 4
}
