//! `ext4kit cp`: copying files and trees out of images.
//!
//! # Never writing outside DEST
//! Every name taken from an image must be one path component (not empty, `.`, `..`, and without
//! `/` or NUL); anything else is refused with an error. Everything is created relative to an
//! open directory descriptor (`mkdirat`, `openat(O_CREAT|O_NOFOLLOW)`, `symlinkat`, `mknodat`,
//! `linkat`), and directories are entered with `openat(O_DIRECTORY|O_NOFOLLOW)`, so a symlink
//! the copy itself created (or one already in DEST) is never followed: an image holding both a
//! symlink `a -> /etc` and a directory `a` cannot make the copy write into `/etc`.
//!
//! # What is kept
//! Symlinks stay symlinks, hard links stay linked (within one invocation), sparse files stay
//! sparse (only written extents are written; unwritten extents and holes become holes), device
//! nodes, FIFOs and sockets are recreated. With `-p`: owner (ignored when not permitted, as cp
//! does), full mode including set-id bits, atime/mtime with nanoseconds, and `user.*` xattrs
//! (every namespace with `--all-xattrs`, POSIX ACLs included). Directory cycles in a corrupt
//! image are refused.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use ext4kit_fs::format::acl;
use ext4kit_fs::{ExtentKind, FileType, Fs, ROOT_INO, Stat, Timestamp};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::spec::{Images, Spec};

/// Options of `cp`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpOptions {
    /// Copy directories recursively (symlinks are then never followed).
    pub recursive: bool,
    /// Keep mode, owner, timestamps and user xattrs.
    pub preserve: bool,
    /// With `preserve`, copy xattrs of every namespace (trusted., security., ...).
    pub all_xattrs: bool,
}

/// Deepest directory nesting copied.
const MAX_DEPTH: usize = 4096;
/// Size of one read / write.
const CHUNK: usize = 1 << 20;
/// Files of a directory whose reading starts ahead of their copy, and how much of each.
const PREFETCH_FILES: usize = 32;
const PREFETCH_BYTES: u64 = 256 << 10;

struct Copier<'a> {
    opts: CpOptions,
    /// (image index, inode) → path of the first copy, relative to `anchor`.
    links: HashMap<(usize, u32), Vec<u8>>,
    anchor: &'a OwnedFd,
    /// The anchor's path, for messages.
    anchor_shown: String,
    umask: u32,
    is_root: bool,
    errors: usize,
    buf: Vec<u8>,
    /// Files, MiB and rate on stderr while copying, when it is a terminal.
    meter: crate::meter::Meter,
    /// Readers of files coming next in the directory being copied, their first bytes being read.
    prefetched: HashMap<u32, ext4kit_fs::FileReader>,
    /// (device, inode) of the source image files.
    source_images: HashSet<(u64, u64)>,
}

/// `Mode` from permission bits (its raw type is u32 on Linux, u16 on Apple systems).
#[allow(clippy::unnecessary_cast, clippy::cast_possible_truncation)]
fn raw_mode(bits: u32) -> Mode {
    Mode::from_raw_mode(bits as rustix::fs::RawMode)
}

/// The bits of `m` (see [`raw_mode`]).
#[allow(clippy::unnecessary_cast)]
fn mode_bits(m: Mode) -> u32 {
    m.bits() as u32
}

/// Creates device node, FIFO or socket `name` in `dir` (mode 0600 until `finish`).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn make_node(
    dir: &OwnedFd,
    name: &[u8],
    ft: rustix::fs::FileType,
    major: u32,
    minor: u32,
) -> Result<()> {
    rustix::fs::mknodat(
        dir,
        name,
        ft,
        Mode::from_raw_mode(0o600),
        rustix::fs::makedev(major, minor),
    )
    .map_err(|e| errno(e, "mknod"))
}

/// Creates device node, FIFO or socket `name` in `dir`: not done on this system (the entry is
/// reported, the rest is copied).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn make_node(
    _dir: &OwnedFd,
    _name: &[u8],
    ft: rustix::fs::FileType,
    _major: u32,
    _minor: u32,
) -> Result<()> {
    bail!("{ft:?}: special files are not created on this system")
}

/// Removes the non-directory `name` in `dir` that a copy replaces (a directory is refused, as
/// cp refuses to overwrite a directory with a non-directory).
fn replace_non_dir(dir: &OwnedFd, name: &[u8]) -> Result<()> {
    let st =
        rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| errno(e, "stat"))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
        bail!("cannot overwrite directory with non-directory");
    }
    rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(|e| errno(e, "unlink"))
}

fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ts(t: Timestamp) -> rustix::fs::Timespec {
    rustix::fs::Timespec {
        tv_sec: t.seconds,
        tv_nsec: i64::from(t.nanoseconds.min(999_999_999)),
    }
}

fn errno(e: Errno, what: &str) -> anyhow::Error {
    anyhow!("{what}: {}", std::io::Error::from(e))
}

impl Copier<'_> {
    fn report(&mut self, what: &str, e: &anyhow::Error) {
        self.errors += 1;
        self.meter.finish();
        eprintln!(
            "ext4kit: {}",
            crate::one_line(&anyhow!("{}", crate::one_line(e)).context(what.to_string()))
        );
    }

    /// Where entry `rel` (relative to the anchor) is in DEST, for messages.
    fn at(&self, rel: &[u8]) -> String {
        if self.anchor_shown == "." {
            show(rel)
        } else {
            format!("{}/{}", self.anchor_shown.trim_end_matches('/'), show(rel))
        }
    }

    /// Copies inode `ino` of image `img` as `name` inside `dir` (`rel`: its path from the
    /// anchor). Errors of children are reported and counted; the error of this entry is returned.
    #[allow(clippy::too_many_arguments)]
    fn copy(
        &mut self,
        fs: &Fs,
        img: usize,
        ino: u32,
        dir: &OwnedFd,
        name: &[u8],
        rel: &[u8],
        ancestors: &mut Vec<u32>,
    ) -> Result<()> {
        if !valid_name(name) {
            bail!("refusing the unsafe name {:?}", show(name));
        }
        let st = fs.stat(ino)?;
        if st.file_type != FileType::Directory && st.nlink > 1 {
            if let Some(first) = self.links.get(&(img, ino)) {
                match rustix::fs::linkat(self.anchor, first.as_slice(), dir, name, AtFlags::empty())
                {
                    Err(Errno::EXIST) => {
                        replace_non_dir(dir, name)?;
                        rustix::fs::linkat(
                            self.anchor,
                            first.as_slice(),
                            dir,
                            name,
                            AtFlags::empty(),
                        )
                        .map_err(|e| errno(e, "link"))?;
                    }
                    r => r.map_err(|e| errno(e, "link"))?,
                }
                return Ok(());
            }
        }
        let mut mode_done = false;
        match st.file_type {
            FileType::Directory => return self.copy_dir(fs, img, &st, dir, name, rel, ancestors),
            FileType::Regular => mode_done = self.copy_file(fs, &st, dir, name)?,
            FileType::Symlink => {
                let target = fs.read_link(ino)?;
                match rustix::fs::symlinkat(target.as_slice(), dir, name) {
                    Err(Errno::EXIST) => {
                        // Copying onto an earlier copy: as cp, replace a non-directory.
                        replace_non_dir(dir, name)?;
                        rustix::fs::symlinkat(target.as_slice(), dir, name)
                            .map_err(|e| errno(e, "symlink"))?;
                    }
                    r => r.map_err(|e| errno(e, "symlink"))?,
                }
            }
            FileType::CharDevice | FileType::BlockDevice | FileType::Fifo | FileType::Socket => {
                let (ma, mi) = st.rdev.unwrap_or((0, 0));
                let ft = match st.file_type {
                    FileType::CharDevice => rustix::fs::FileType::CharacterDevice,
                    FileType::BlockDevice => rustix::fs::FileType::BlockDevice,
                    FileType::Fifo => rustix::fs::FileType::Fifo,
                    _ => rustix::fs::FileType::Socket,
                };
                if rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
                    replace_non_dir(dir, name)?;
                }
                make_node(dir, name, ft, ma, mi)?;
            }
        }
        if st.nlink > 1 {
            self.links.insert((img, ino), rel.to_vec());
        }
        self.finish(fs, &st, dir, name, None, mode_done)
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_dir(
        &mut self,
        fs: &Fs,
        img: usize,
        st: &Stat,
        dir: &OwnedFd,
        name: &[u8],
        rel: &[u8],
        ancestors: &mut Vec<u32>,
    ) -> Result<()> {
        if !self.opts.recursive {
            bail!("-r not specified; omitting directory");
        }
        if ancestors.contains(&st.ino) {
            bail!("directory cycle: inode {} contains itself", st.ino);
        }
        if ancestors.len() >= MAX_DEPTH {
            bail!("directories nested deeper than {MAX_DEPTH} levels");
        }
        match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(errno(e, "mkdir")),
        }
        let sub = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| errno(e, "open directory"))?;
        self.copy_children(fs, img, st.ino, &sub, rel, ancestors);
        self.finish(fs, st, dir, name, Some(&sub), false)
    }

    /// Copies the entries of directory `ino` into `sub` (errors reported per entry).
    fn copy_children(
        &mut self,
        fs: &Fs,
        img: usize,
        ino: u32,
        sub: &OwnedFd,
        rel: &[u8],
        ancestors: &mut Vec<u32>,
    ) {
        // Entries with names no path can hold (a damaged block) are reported one by one and
        // the rest of the directory is copied.
        let entries = match fs.read_dir_salvage(ino) {
            Ok((entries, damaged)) => {
                for e in damaged {
                    self.report(&self.at(rel), &e.into());
                }
                entries
            }
            Err(e) => {
                self.report(&self.at(rel), &e.into());
                return;
            }
        };
        ancestors.push(ino);
        let entries: Vec<_> = entries
            .into_iter()
            .filter(|e| !e.is_dot_or_dotdot())
            .collect();
        let mut ahead = 0;
        for (i, e) in entries.iter().enumerate() {
            // Keep the next files' first bytes being read while this one is copied: many small
            // files would otherwise wait for the device one at a time.
            while ahead < entries.len() && ahead < i + PREFETCH_FILES {
                let next = &entries[ahead];
                ahead += 1;
                if next.file_type == Some(FileType::Regular)
                    && !self.prefetched.contains_key(&next.ino)
                {
                    if let Ok(r) = fs.open_file(next.ino) {
                        r.prefetch(PREFETCH_BYTES);
                        self.prefetched.insert(next.ino, r);
                    }
                }
            }
            let mut child_rel = rel.to_vec();
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(&e.name);
            if let Err(err) = self.copy(fs, img, e.ino, sub, &e.name, &child_rel, ancestors) {
                self.report(&self.at(&child_rel), &err);
            }
        }
        ancestors.pop();
        // Prefetched but not copied (hard links to files copied already, or errors).
        self.prefetched
            .retain(|ino, _| entries.iter().all(|e| e.ino != *ino));
    }

    /// Copies a regular file's bytes; returns whether the new file already has its final mode
    /// (created with it, so `finish` need not chmod).
    fn copy_file(&mut self, fs: &Fs, st: &Stat, dir: &OwnedFd, name: &[u8]) -> Result<bool> {
        let reader = match self.prefetched.remove(&st.ino) {
            Some(r) => r,
            None => fs.open_file(st.ino)?,
        };
        // Without -p the final mode is the image's permission bits under our umask; a new file
        // can be created with it when it lets us write (else 0600 now, chmod after).
        let final_mode = (u32::from(st.mode) & 0o777) & !self.umask;
        let direct = !self.opts.preserve && final_mode & 0o600 == 0o600;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let (fd, mode_done) = match rustix::fs::openat(
            dir,
            name,
            flags | OFlags::EXCL,
            raw_mode(if direct { final_mode } else { 0o600 }),
        ) {
            Ok(fd) => (fd, direct),
            // Overwriting a file DEST already holds: its mode is set afterwards.
            Err(Errno::EXIST) => {
                // Never truncate an image being read (copying out next to it, a name in the
                // image can be the image's own).
                let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| errno(e, "stat"))?;
                #[allow(clippy::unnecessary_cast)]
                let key = (st.st_dev as u64, st.st_ino as u64);
                if self.source_images.contains(&key) {
                    bail!("is an image being copied from; not overwritten");
                }
                (
                    rustix::fs::openat(dir, name, flags | OFlags::TRUNC, raw_mode(0o600))
                        .map_err(|e| errno(e, "create"))?,
                    false,
                )
            }
            Err(e) => return Err(errno(e, "create")),
        };
        let mut written_end = 0;
        let bs = u64::from(fs.block_size());
        let runs = fs.file_runs(st.ino)?;
        let ranges: Vec<(u64, u64)> = if let Some(stored) = reader.inline_len() {
            vec![(0, stored.min(st.size))]
        } else if runs.is_empty() {
            vec![(0, st.size)]
        } else {
            runs.iter()
                .filter(|r| r.kind == ExtentKind::Written)
                .map(|r| (r.lblk * bs, ((r.lblk + r.len) * bs).min(st.size)))
                .filter(|(a, b)| a < b)
                .collect()
        };
        if self.buf.len() < CHUNK {
            self.buf.resize(CHUNK, 0);
        }
        for (start, end) in ranges {
            let mut pos = start;
            while pos < end {
                let want = ((end - pos) as usize).min(CHUNK);
                let n = reader.read_at(pos, &mut self.buf[..want])?;
                if n == 0 {
                    break;
                }
                let mut done = 0;
                while done < n {
                    let w = rustix::io::pwrite(&fd, &self.buf[done..n], pos + done as u64)
                        .map_err(|e| errno(e, "write"))?;
                    if w == 0 {
                        bail!("write: no progress");
                    }
                    done += w;
                }
                pos += n as u64;
                written_end = written_end.max(pos);
                self.meter.bytes(n as u64);
            }
        }
        // A trailing hole (or a file that shrank under us): the size says it.
        if written_end != st.size {
            rustix::fs::ftruncate(&fd, st.size).map_err(|e| errno(e, "truncate"))?;
        }
        self.meter.file();
        Ok(mode_done)
    }

    /// Owner, mode, xattrs and times of a created entry (`fd`: the open directory, if one).
    fn finish(
        &mut self,
        fs: &Fs,
        st: &Stat,
        dir: &OwnedFd,
        name: &[u8],
        fd: Option<&OwnedFd>,
        mode_done: bool,
    ) -> Result<()> {
        let is_link = st.file_type == FileType::Symlink;
        let perm = u32::from(st.mode & 0o7777);
        if !self.opts.preserve {
            if !is_link && !mode_done {
                let mode = perm & 0o777 & !self.umask;
                rustix::fs::chmodat(dir, name, raw_mode(mode), AtFlags::empty())
                    .map_err(|e| errno(e, "chmod"))?;
            }
            return Ok(());
        }
        let uid = rustix::fs::Uid::from_raw(st.uid);
        let gid = rustix::fs::Gid::from_raw(st.gid);
        match rustix::fs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(()) => {}
            Err(Errno::PERM) if !self.is_root => {}
            Err(e) => return Err(errno(e, "chown")),
        }
        if !is_link {
            rustix::fs::chmodat(dir, name, raw_mode(perm), AtFlags::empty())
                .map_err(|e| errno(e, "chmod"))?;
        }
        let xattrs = fs.list_xattrs(st.ino)?;
        let has = |n: &[u8]| xattrs.iter().any(|x| x.name == n);
        let drop_acls: Vec<&[u8]> = [acl::ACCESS_NAME, acl::DEFAULT_NAME]
            .into_iter()
            .filter(|n| {
                !is_link
                    && !has(n)
                    && (*n == acl::ACCESS_NAME || st.file_type == FileType::Directory)
            })
            .collect();
        for x in xattrs {
            let user = x.name.starts_with(b"user.");
            // POSIX ACLs are part of the mode: -p keeps them, as coreutils' cp -p does.
            let acl = acl::is_acl_name(&x.name);
            if !(user || acl || self.opts.all_xattrs) || (is_link && user) {
                continue;
            }
            if x.name.starts_with(b"system.") && !x.name.starts_with(b"system.posix_acl_") {
                continue;
            }
            let r = match (fd, st.file_type) {
                (Some(fd), _) => rustix::fs::fsetxattr(
                    fd,
                    x.name.as_slice(),
                    &x.value,
                    rustix::fs::XattrFlags::empty(),
                ),
                (None, FileType::Regular) => {
                    let f = rustix::fs::openat(
                        dir,
                        name,
                        OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| errno(e, "open"))?;
                    rustix::fs::fsetxattr(
                        &f,
                        x.name.as_slice(),
                        &x.value,
                        rustix::fs::XattrFlags::empty(),
                    )
                }
                _ => {
                    // Special files and symlinks: through the /proc view of the directory.
                    let mut p = format!(
                        "/proc/self/fd/{}/",
                        std::os::fd::AsRawFd::as_raw_fd(&dir.as_fd())
                    )
                    .into_bytes();
                    p.extend_from_slice(name);
                    rustix::fs::lsetxattr(
                        p.as_slice(),
                        x.name.as_slice(),
                        &x.value,
                        rustix::fs::XattrFlags::empty(),
                    )
                }
            };
            r.map_err(|e| errno(e, &format!("set xattr {}", show(&x.name))))?;
        }
        // The image's ACLs exactly, as coreutils' cp -p gives: ACLs DEST inherited from a
        // default ACL there (or an overwritten file had) go.
        for n in drop_acls {
            let mut p = format!(
                "/proc/self/fd/{}/",
                std::os::fd::AsRawFd::as_raw_fd(&dir.as_fd())
            )
            .into_bytes();
            p.extend_from_slice(name);
            match rustix::fs::lremovexattr(p.as_slice(), n) {
                Ok(()) | Err(Errno::NODATA) | Err(Errno::NOTSUP) => {}
                Err(e) => return Err(errno(e, &format!("remove xattr {}", show(n)))),
            }
        }
        let times = rustix::fs::Timestamps {
            last_access: ts(st.atime),
            last_modification: ts(st.mtime),
        };
        rustix::fs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| errno(e, "set times"))?;
        Ok(())
    }
}

fn open_dir(p: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| errno(e, &p.display().to_string()))
}

/// Runs `cp`; returns the number of errors reported (0 = success).
pub fn run(images: &mut Images, sources: &[Spec], dest: &Path, opts: CpOptions) -> Result<usize> {
    // A DEST the caller named that is a symlink to a file is written through, as cp does (names
    // from the image never are: everything below DEST is created with O_NOFOLLOW).
    let followed;
    let dest = match (dest.symlink_metadata(), std::fs::metadata(dest)) {
        (Ok(l), Ok(t)) if l.file_type().is_symlink() && t.is_file() => {
            followed = std::fs::canonicalize(dest).with_context(|| dest.display().to_string())?;
            followed.as_path()
        }
        _ => dest,
    };
    let dest_is_dir = dest.is_dir();
    if sources.len() > 1 && !dest_is_dir {
        bail!("target {} is not a directory", dest.display());
    }
    // `DEST/` names a directory: an existing non-directory is refused, and a new one can only
    // be made by copying a directory (as cp does).
    let dest_slash = dest.as_os_str().as_bytes().ends_with(b"/");
    if dest_slash && !dest_is_dir && dest.symlink_metadata().is_ok() {
        bail!("{}: not a directory", dest.display());
    }
    let umask = rustix::process::umask(Mode::from_raw_mode(0o022));
    rustix::process::umask(umask);
    // Where entries are created: DEST itself, or DEST's parent when DEST is the new name.
    let (anchor_path, new_name): (std::path::PathBuf, Option<Vec<u8>>) = if dest_is_dir {
        (dest.to_path_buf(), None)
    } else {
        let name = dest
            .file_name()
            .ok_or_else(|| anyhow!("{}: invalid destination", dest.display()))?;
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => ".".into(),
        };
        (parent, Some(name.as_bytes().to_vec()))
    };
    let anchor =
        open_dir(&anchor_path).with_context(|| format!("destination {}", dest.display()))?;
    let mut c = Copier {
        opts,
        links: HashMap::new(),
        anchor: &anchor,
        anchor_shown: anchor_path.display().to_string(),
        umask: mode_bits(umask),
        is_root: rustix::process::geteuid().is_root(),
        errors: 0,
        buf: Vec::new(),
        meter: crate::meter::Meter::new("copying", false),
        prefetched: HashMap::new(),
        source_images: sources
            .iter()
            .filter_map(|s| std::fs::metadata(&s.image).ok())
            .map(|m| {
                (
                    std::os::unix::fs::MetadataExt::dev(&m),
                    std::os::unix::fs::MetadataExt::ino(&m),
                )
            })
            .collect(),
    };
    let mut image_index: HashMap<std::path::PathBuf, usize> = HashMap::new();
    let mut seen_roots: HashSet<(usize, u32)> = HashSet::new();
    for src in sources {
        let n = image_index.len();
        let img = *image_index.entry(src.image.clone()).or_insert(n);
        let result = (|| -> Result<()> {
            let fs = images.get(&src.image)?;
            let path = src.path_or_root();
            let ino = fs.resolve(path, !opts.recursive)?;
            let mut ancestors = Vec::new();
            let is_root = ino == ROOT_INO && fs.stat(ino)?.file_type == FileType::Directory && {
                let comps: Vec<&[u8]> = path
                    .split(|&b| b == b'/')
                    .filter(|c| !c.is_empty() && *c != b".")
                    .collect();
                comps.is_empty()
            };
            if is_root {
                // IMG:/ copies the root's contents into DEST (cp -r SRC/. DEST).
                if !opts.recursive {
                    bail!("-r not specified; omitting directory");
                }
                if !seen_roots.insert((img, ino)) {
                    return Ok(());
                }
                let (target, rel): (OwnedFd, Vec<u8>) = match &new_name {
                    None => (open_dir(dest)?, Vec::new()),
                    Some(name) => {
                        match rustix::fs::mkdirat(
                            &anchor,
                            name.as_slice(),
                            Mode::from_raw_mode(0o700),
                        ) {
                            Ok(()) | Err(Errno::EXIST) => {}
                            Err(e) => return Err(errno(e, "mkdir")),
                        }
                        let fd = rustix::fs::openat(
                            &anchor,
                            name.as_slice(),
                            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )
                        .map_err(|e| errno(e, "open directory"))?;
                        (fd, name.clone())
                    }
                };
                c.copy_children(&fs, img, ino, &target, &rel, &mut ancestors);
                if let Some(name) = &new_name {
                    // NEWDIR is the copy of the image's root: its mode (and with -p its owner,
                    // xattrs and times), as cp -r / cp -a give a copied directory.
                    let st = fs.stat(ino)?;
                    return c.finish(&fs, &st, &anchor, name, Some(&target), false);
                }
                if opts.preserve {
                    let st = fs.stat(ino)?;
                    let times = rustix::fs::Timestamps {
                        last_access: ts(st.atime),
                        last_modification: ts(st.mtime),
                    };
                    rustix::fs::utimensat(&target, ".", &times, AtFlags::empty())
                        .map_err(|e| errno(e, "set times"))?;
                }
                return Ok(());
            }
            let name: Vec<u8> = match &new_name {
                Some(n) => n.clone(),
                None => path
                    .split(|&b| b == b'/')
                    .rfind(|c| !c.is_empty() && *c != b".")
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| anyhow!("cannot name the copy of {}", src.display()))?,
            };
            if dest_slash && new_name.is_some() && fs.stat(ino)?.file_type != FileType::Directory {
                bail!(
                    "{}: cannot create regular file: not a directory",
                    dest.display()
                );
            }
            c.copy(&fs, img, ino, &anchor, &name, &name, &mut ancestors)
                .with_context(|| c.at(&name))
        })();
        if let Err(e) = result {
            c.report(&src.display(), &e);
        }
    }
    let _ = OsStr::new("");
    Ok(c.errors)
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn only_single_components_are_valid() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0b"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_name(b"..."));
        assert!(valid_name(b"\xff\xfe name"));
    }
}
