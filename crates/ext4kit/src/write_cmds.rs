//! The commands that create or change images: `mkfs`, `build`, `mkdir`, and `cp` into an image.
//!
//! Every image named by the arguments is opened for writing once, changed, and synced at the
//! end (file data, then the metadata as one journal transaction when the image has a journal,
//! then home; device flushes in between). An image that is mounted, that uses features the
//! writer does not handle, or whose journal needs recovery is refused with a message saying
//! which and what to do; with `--replay-journal` such a journal is replayed onto the image
//! first, as a mount would, with a one-line notice.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use ext4kit_fs::build::{BuildOptions, build_image};
use ext4kit_fs::format::inode::Timestamp;
use ext4kit_fs::mkfs::{MkfsOptions, mkfs};
use ext4kit_fs::write::ops::{NewInode, NewKind};
use ext4kit_fs::{FileType, Fs, OpenOptions, ROOT_INO};

use crate::spec::Spec;

/// Parses a size with an optional K/M/G/T suffix (powers of 1024): `256M`, `4G`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => bail!("size {s:?}: unknown suffix {c:?} (use K, M, G or T)"),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow!("size {s:?} is not a number with an optional K/M/G/T suffix"))?;
    n.checked_mul(mult)
        .ok_or_else(|| anyhow!("size {s:?} is too large"))
}

/// Parses a UUID (`0123abcd-...` or 32 hex digits).
pub fn parse_uuid(s: &str) -> Result<[u8; 16]> {
    let hex: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        bail!("UUID {s:?}: expected 32 hex digits");
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let pair = std::str::from_utf8(&hex[2 * i..2 * i + 2])
            .map_err(|_| anyhow!("UUID {s:?}: not hex"))?;
        *o = u8::from_str_radix(pair, 16).map_err(|_| anyhow!("UUID {s:?}: not hex"))?;
    }
    Ok(out)
}

/// `SOURCE_DATE_EPOCH`, if set.
fn source_date_epoch() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => {
            Ok(Some(v.trim().parse().map_err(|_| {
                anyhow!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")
            })?))
        }
        _ => Ok(None),
    }
}

/// Refuses images a kernel has mounted (a loop device backed by the file).
fn check_not_mounted(img: &Path) -> Result<()> {
    let Ok(canon) = fs::canonicalize(img) else {
        return Ok(());
    };
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Ok(());
    };
    for e in entries.flatten() {
        let backing = e.path().join("loop/backing_file");
        if let Ok(b) = fs::read_to_string(&backing) {
            if Path::new(b.trim()) == canon {
                bail!(
                    "{}: the image is attached to /dev/{} (mounted?); unmount it and detach the loop device before writing",
                    img.display(),
                    e.file_name().to_string_lossy()
                );
            }
        }
    }
    if let Ok(mounts) = fs::read_to_string("/proc/mounts") {
        let canon_s = canon.to_string_lossy();
        if mounts
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&canon_s))
        {
            bail!(
                "{}: the device is mounted; unmount it before writing",
                img.display()
            );
        }
    }
    Ok(())
}

/// Images opened for writing, once each, synced at the end.
#[derive(Default)]
pub struct WritableImages {
    open: HashMap<PathBuf, Fs>,
    replay_journal: bool,
    /// Notices about changes made at open that reach the image only with the command's
    /// commit (orphans cleaned up): printed once that commit succeeded.
    after_commit: Vec<(PathBuf, String)>,
}

impl WritableImages {
    /// No image open yet; `replay_journal`: replay a journal that needs recovery onto the
    /// image at open (else such an image is refused).
    pub fn new(replay_journal: bool) -> WritableImages {
        WritableImages { open: HashMap::new(), replay_journal, after_commit: Vec::new() }
    }

    /// The filesystem in `image`, opened for writing.
    pub fn get(&mut self, image: &Path) -> Result<Fs> {
        // One key per file, however it is spelled (a.img, ./a.img): never two writers on it.
        let key = fs::canonicalize(image).unwrap_or_else(|_| image.to_path_buf());
        if let Some(fs) = self.open.get(&key) {
            return Ok(fs.clone());
        }
        check_not_mounted(image)?;
        let fs = Fs::open_path(
            image,
            &OpenOptions {
                writable: true,
                // Asked for: like a mount, a journal that needs recovery is replayed onto the
                // image (the notice below says so).
                recover_journal: self.replay_journal,
                ..OpenOptions::default()
            },
        )
        .map_err(|e| match e {
            ext4kit_fs::Error::ReadOnly(ref why) if !self.replay_journal && why.contains("journal needs recovery") => anyhow::anyhow!(
                "{}: the journal needs recovery (the filesystem was not cleanly unmounted); replay it with \
                 `e2fsck -fy {}` or a mount, or pass --replay-journal to let ext4kit replay it onto the image",
                image.display(),
                image.display()
            ),
            e if e.is_corruption() => anyhow::anyhow!(
                "{}: {e}: the image is damaged, so it is not written (`e2fsck -fy {}` repairs it; reading commands still read it)",
                image.display(),
                image.display()
            ),
            e => anyhow::Error::from(e).context(image.display().to_string()),
        })?;
        for n in fs.notices() {
            if n.starts_with("cleaned up") {
                self.after_commit.push((key.clone(), format!("ext4kit: {}: {n}", image.display())));
                continue;
            }
            eprintln!("ext4kit: {}: {n}", image.display());
        }
        self.open.insert(key, fs.clone());
        Ok(fs)
    }

    /// Writes everything back.
    pub fn sync_all(&mut self) -> Result<()> {
        for (path, fs) in self.open.drain() {
            fs.sync()
                .with_context(|| format!("{}: writing back", path.display()))?;
            for (_, line) in self.after_commit.iter().filter(|(p, _)| *p == path) {
                eprintln!("{line}");
            }
        }
        Ok(())
    }
}

pub(crate) fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanoseconds: d.subsec_nanos(),
    }
}

pub(crate) fn euid_egid() -> (u32, u32) {
    (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    )
}

/// `ext4kit mkfs`.
pub fn cmd_mkfs(
    image: &Path,
    size: &str,
    block_size: Option<u32>,
    label: Option<String>,
    uuid: Option<&str>,
    json: bool,
) -> Result<()> {
    let bytes = parse_size(size)?;
    if image.exists() {
        check_not_mounted(image)?;
    }
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(image)
        .with_context(|| image.display().to_string())?;
    f.set_len(bytes)
        .with_context(|| format!("{}: setting the size to {bytes} bytes", image.display()))?;
    // One IO thread: mkfs writes a few MiB of metadata into the page cache, and more threads
    // only contend on the image's inode lock (1 TiB: 23 -> 20 ms).
    let dev: Arc<dyn ext4kit_blockdev::BlockDevice> = Arc::new(
        ext4kit_blockdev::FileDevice::from_file(f, true, 512, 1)
            .with_context(|| image.display().to_string())?,
    );
    let opts = MkfsOptions {
        block_size,
        size_bytes: bytes,
        label,
        uuid: uuid.map(parse_uuid).transpose()?,
        time: source_date_epoch()?,
        assume_zeroed: true,
        lazy_itable_init: false,
        ..MkfsOptions::default()
    };
    let r = mkfs(&*dev, &opts).map_err(|e| anyhow!("{}: {e}", image.display()))?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "image": image.display().to_string(),
                "block_size": r.block_size,
                "blocks": r.blocks_count,
                "free_blocks": r.free_blocks,
                "groups": r.group_count,
                "inodes": r.inodes_count,
            })
        );
    } else {
        println!(
            "{}: ext4, {} blocks of {} bytes, {} groups, {} inodes, {} blocks free",
            image.display(),
            r.blocks_count,
            r.block_size,
            r.group_count,
            r.inodes_count,
            r.free_blocks
        );
    }
    Ok(())
}

/// `ext4kit build`.
pub fn cmd_build(dir: &Path, image: &Path, opts: BuildOptions, json: bool) -> Result<()> {
    if image.exists() {
        check_not_mounted(image)?;
    }
    let opts = BuildOptions {
        source_date_epoch: source_date_epoch()?,
        ..opts
    };
    let tty = std::io::stderr().is_terminal() && !json;
    let mut last = std::time::Instant::now();
    let started = std::time::Instant::now();
    let mut on_progress = |p: ext4kit_fs::build::Progress| {
        if tty && (last.elapsed().as_millis() >= 100 || p.entries_done == p.entries_total) {
            last = std::time::Instant::now();
            let pct = (p.bytes_done * 100).checked_div(p.bytes_total).unwrap_or(100);
            let width = 30usize;
            let filled = (pct as usize * width / 100).min(width);
            eprint!(
                "\r[{}{}] {:>3}%  {}/{} entries  {}/{} MiB ",
                "#".repeat(filled),
                "-".repeat(width - filled),
                pct,
                p.entries_done,
                p.entries_total,
                p.bytes_done >> 20,
                p.bytes_total >> 20
            );
        }
    };
    let r = build_image(dir, image, &opts, &mut on_progress)
        .with_context(|| format!("building {} from {}", image.display(), dir.display()))?;
    if tty {
        eprintln!();
    }
    let secs = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "image": image.display().to_string(),
                "size": r.image_size,
                "block_size": r.block_size,
                "files": r.files,
                "dirs": r.dirs,
                "symlinks": r.symlinks,
                "special": r.special,
                "hard_links": r.hard_links,
                "bytes": r.bytes,
                "seconds": secs,
            })
        );
    } else {
        println!(
            "{}: {} MiB, {} files, {} directories, {} symlinks, {} special, {} extra hard links, {} bytes of data in {:.2}s",
            image.display(),
            r.image_size >> 20,
            r.files,
            r.dirs,
            r.symlinks,
            r.special,
            r.hard_links,
            r.bytes,
            secs
        );
    }
    Ok(())
}

/// Resolves the parent directory of `path` in `fs` and the final name.
pub(crate) fn parent_and_name(fs: &Fs, path: &[u8]) -> Result<(u32, Vec<u8>)> {
    let trimmed: &[u8] = {
        let mut p = path;
        while p.len() > 1 && p.ends_with(b"/") {
            p = &p[..p.len() - 1];
        }
        p
    };
    let pos = trimmed.iter().rposition(|b| *b == b'/');
    let (dir, name) = match pos {
        Some(i) => (&trimmed[..i.max(1)], &trimmed[i + 1..]),
        None => (&b"/"[..], trimmed),
    };
    if name.is_empty() || name == b"." || name == b".." {
        bail!(
            "{}: not a name that can be created",
            String::from_utf8_lossy(path)
        );
    }
    let d = fs
        .resolve(dir, true)
        .with_context(|| String::from_utf8_lossy(dir).into_owned())?;
    Ok((d, name.to_vec()))
}

/// `ext4kit mkdir [-p] IMG:PATH...`.
pub fn cmd_mkdir(images: &mut WritableImages, specs: &[Spec], parents: bool) -> Result<()> {
    let (uid, gid) = euid_egid();
    let t = now();
    let attrs = NewInode {
        perm: 0o755,
        uid,
        gid,
        ..NewInode::with_time(0o755, t)
    };
    for s in specs {
        let Some(path) = &s.path else {
            bail!("{}: expected IMG:PATH", s.image.display())
        };
        let fs = images.get(&s.image)?;
        if parents {
            let mut cur = ROOT_INO;
            for comp in path
                .split(|b| *b == b'/')
                .filter(|c| !c.is_empty() && *c != b".")
            {
                cur = match fs.lookup(cur, comp)? {
                    Some(e) if e.file_type == Some(FileType::Directory) => e.ino,
                    Some(_) => bail!(
                        "{}: {} exists and is not a directory",
                        s.display(),
                        String::from_utf8_lossy(comp)
                    ),
                    None => fs
                        .create(cur, comp, &NewKind::Directory, &attrs)
                        .with_context(|| s.display())?,
                };
            }
        } else {
            let (dir, name) = parent_and_name(&fs, path).with_context(|| s.display())?;
            fs.create(dir, &name, &NewKind::Directory, &attrs)
                .with_context(|| s.display())?;
        }
    }
    images.sync_all()
}

/// How `cp` copies into an image.
#[derive(Debug, Clone, Copy)]
pub struct CpInOptions {
    /// Copy directories recursively.
    pub recursive: bool,
    /// Keep mode, owner, ns timestamps and xattrs.
    pub preserve: bool,
}

struct CopyIn<'a> {
    fs: &'a Fs,
    meter: crate::meter::Meter,
    opts: CpInOptions,
    links: HashMap<(u64, u64), u32>,
    buf: Vec<u8>,
    uid: u32,
    gid: u32,
    now: Timestamp,
}

fn xattrs_of(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 1024];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut names) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) if names.len() < 1 << 16 => names.resize(1 << 16, 0),
            Err(_) => return Vec::new(),
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let Ok(c) = std::ffi::CString::new(name.to_vec()) else {
            continue;
        };
        let mut v = vec![0u8; 65536];
        if let Ok(vn) = rustix::fs::lgetxattr(path, c.as_c_str(), &mut v) {
            out.push((name.to_vec(), v[..vn].to_vec()));
        }
    }
    out.sort();
    out
}

impl CopyIn<'_> {
    fn attrs(&self, md: &fs::Metadata) -> NewInode {
        if self.opts.preserve {
            let t = |s: i64, n: i64| Timestamp {
                seconds: s,
                nanoseconds: n.clamp(0, 999_999_999) as u32,
            };
            NewInode {
                perm: (md.mode() & 0o7777) as u16,
                uid: md.uid(),
                gid: md.gid(),
                atime: t(md.atime(), md.atime_nsec()),
                mtime: t(md.mtime(), md.mtime_nsec()),
                ctime: self.now,
                crtime: self.now,
            }
        } else {
            NewInode {
                perm: (md.mode() & 0o777) as u16,
                uid: self.uid,
                gid: self.gid,
                ..NewInode::with_time(0, self.now)
            }
        }
    }

    /// Copies `src` to `name` in image directory `dir` (replacing a regular file of that name).
    fn copy(&mut self, src: &Path, dir: u32, name: &[u8]) -> Result<()> {
        let md = fs::symlink_metadata(src).with_context(|| src.display().to_string())?;
        self.meter.file();
        let ft = md.file_type();
        let attrs = self.attrs(&md);
        let existing = self.fs.lookup(dir, name)?;
        if ft.is_dir() {
            if !self.opts.recursive {
                bail!("{}: is a directory (use -r)", src.display());
            }
            let d = match existing {
                Some(e) if e.file_type == Some(FileType::Directory) => e.ino,
                Some(_) => bail!(
                    "{}: exists in the image and is not a directory",
                    String::from_utf8_lossy(name)
                ),
                None => self.fs.create(dir, name, &NewKind::Directory, &attrs)?,
            };
            let mut kids: Vec<_> = fs::read_dir(src)
                .with_context(|| src.display().to_string())?
                .collect::<std::io::Result<Vec<_>>>()?;
            kids.sort_by_key(|k| k.file_name());
            for k in kids {
                self.copy(&k.path(), d, k.file_name().as_bytes())?;
            }
            self.finish(d, src, &md, &attrs)?;
            return Ok(());
        }
        let ino = if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(&ino) = self.links.get(&(md.dev(), md.ino())) {
                    if existing.is_none() {
                        self.fs.link(ino, dir, name)?;
                    }
                    return Ok(());
                }
            }
            let (ino, fresh) = match existing {
                Some(e) if e.file_type == Some(FileType::Regular) => {
                    self.fs.set_size(e.ino, 0)?;
                    (e.ino, false)
                }
                Some(_) => bail!(
                    "{}: exists in the image and is not a regular file",
                    String::from_utf8_lossy(name)
                ),
                None => (self.fs.create(dir, name, &NewKind::Regular, &attrs)?, true),
            };
            self.copy_data(src, ino, md.len(), fresh)?;
            if md.nlink() > 1 {
                self.links.insert((md.dev(), md.ino()), ino);
            }
            ino
        } else {
            if existing.is_some() {
                bail!("{}: exists in the image", String::from_utf8_lossy(name));
            }
            let kind = if ft.is_symlink() {
                NewKind::Symlink(fs::read_link(src)?.as_os_str().as_bytes().to_vec())
            } else if ft.is_char_device() {
                {
                    let (major, minor) = ext4kit_fs::build::device_numbers(md.rdev());
                    NewKind::CharDevice(major, minor)
                }
            } else if ft.is_block_device() {
                {
                    let (major, minor) = ext4kit_fs::build::device_numbers(md.rdev());
                    NewKind::BlockDevice(major, minor)
                }
            } else if ft.is_fifo() {
                NewKind::Fifo
            } else {
                NewKind::Socket
            };
            self.fs.create(dir, name, &kind, &attrs)?
        };
        self.finish(ino, src, &md, &attrs)
    }

    fn finish(&mut self, ino: u32, src: &Path, md: &fs::Metadata, attrs: &NewInode) -> Result<()> {
        if self.opts.preserve {
            let x = xattrs_of(src);
            if !x.is_empty() {
                self.fs.set_xattrs(ino, &x)?;
            }
            self.fs
                .set_owner_mode(ino, md.uid(), md.gid(), attrs.perm)?;
            self.fs
                .set_times(ino, Some(attrs.atime), Some(attrs.mtime), None)?;
        }
        Ok(())
    }

    /// Copies the data regions of `src` into `ino` (holes stay holes). A file this copy created
    /// is filled straight from the source (`Fs::write_from_file`: allocated now, copied inside
    /// the kernel); an existing one is rewritten through the page cache.
    fn copy_data(&mut self, src: &Path, ino: u32, len: u64, fresh: bool) -> Result<()> {
        let f = fs::File::open(src).with_context(|| src.display().to_string())?;
        self.buf.resize(1 << 20, 0);
        let mut end = 0;
        let mut pos = 0u64;
        while pos < len {
            let data = match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(pos)) {
                Ok(d) => d,
                Err(rustix::io::Errno::NXIO) => break,
                Err(_) => pos,
            };
            let hole = rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(data))
                .unwrap_or(len)
                .min(len);
            let mut at = data;
            if fresh && hole > at {
                // In pieces, so the meter moves during a large file.
                while at < hole {
                    let n = (hole - at).min(256 << 20);
                    self.fs
                        .write_from_file(ino, &f, at, at, n)
                        .with_context(|| src.display().to_string())?;
                    at += n;
                    self.meter.bytes(n);
                }
            }
            while at < hole {
                let n = ((hole - at) as usize).min(self.buf.len());
                let got = rustix::io::pread(&f, &mut self.buf[..n], at)
                    .with_context(|| src.display().to_string())?;
                if got == 0 {
                    break;
                }
                self.fs.write_at(ino, at, &self.buf[..got])?;
                at += got as u64;
                self.meter.bytes(got as u64);
            }
            end = at;
            pos = hole.max(at);
        }
        if !fresh || end != len {
            self.fs.set_size(ino, len)?;
        }
        Ok(())
    }
}

/// `ext4kit cp SRC... IMG:PATH` (copy into an image).
pub fn cmd_cp_in(
    images: &mut WritableImages,
    sources: &[PathBuf],
    dest: &Spec,
    opts: CpInOptions,
) -> Result<()> {
    let fs = images.get(&dest.image)?;
    let dest_path = dest.path_or_root().to_vec();
    let (uid, gid) = euid_egid();
    let mut c = CopyIn {
        fs: &fs,
        meter: crate::meter::Meter::new("copying", false),
        opts,
        links: HashMap::new(),
        buf: Vec::new(),
        uid,
        gid,
        now: now(),
    };
    let dest_dir = match fs.resolve(&dest_path, true) {
        Ok(ino) => fs.inode(ino).ok().filter(|i| i.is_dir()).map(|_| ino),
        Err(_) => None,
    };
    for src in sources {
        let contents_of = src.as_os_str().as_bytes().ends_with(b"/.");
        match dest_dir {
            Some(d) if contents_of => {
                // SRC/. : the contents of SRC into DEST. (Path::parent would skip the `.`.)
                let b = src.as_os_str().as_bytes();
                let dir = Path::new(OsStr::from_bytes(&b[..b.len() - 2]));
                let dir = if dir.as_os_str().is_empty() { Path::new("/") } else { dir };
                if !c.opts.recursive {
                    bail!("{}: is a directory (use -r)", src.display());
                }
                let mut kids: Vec<_> = fs::read_dir(dir)
                    .with_context(|| dir.display().to_string())?
                    .collect::<std::io::Result<Vec<_>>>()?;
                kids.sort_by_key(|k| k.file_name());
                for k in kids {
                    c.copy(&k.path(), d, k.file_name().as_bytes())
                        .with_context(|| k.path().display().to_string())?;
                }
            }
            Some(d) => {
                let name = src
                    .file_name()
                    .ok_or_else(|| anyhow!("{}: no file name", src.display()))?;
                c.copy(src, d, name.as_bytes()).with_context(|| src.display().to_string())?;
            }
            None => {
                if sources.len() > 1 {
                    bail!(
                        "{}: not a directory in the image (several sources need one)",
                        dest.display()
                    );
                }
                let (dir, name) =
                    parent_and_name(&fs, &dest_path).with_context(|| dest.display())?;
                c.copy(src, dir, &name).with_context(|| src.display().to_string())?;
            }
        }
    }
    c.meter.phase("writing back");
    let r = images.sync_all();
    drop(c);
    r
}

/// Whether `arg` names a path inside an existing image (`IMG:PATH` with IMG a file).
pub fn is_image_spec(arg: &OsStr) -> bool {
    let s = Spec::parse(arg);
    s.path.is_some() && s.image.is_file()
}
