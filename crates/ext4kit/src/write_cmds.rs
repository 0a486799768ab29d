//! The commands that create or change images: `mkfs`, `build`, `mkdir`, and `cp` into an image.
//!
//! Every image named by the arguments is opened for writing once, changed, and synced at the
//! end (file data, then the metadata as one journal transaction when the image has a journal,
//! then home; device flushes in between). An image that is mounted, that uses features the
//! writer does not handle, or whose journal needs recovery is refused with a message saying
//! which and what to do; with `--replay-journal` such a journal is replayed onto the image
//! first, as a mount would, with a one-line notice.

use std::collections::{HashMap, HashSet};
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
use ext4kit_fs::{Fs, OpenOptions, ROOT_INO};
use ext4kit_fs::{NewInode, NewKind};

use crate::cp_src::{Kind, Meta, Src};
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

/// `--wait`: wait for an image's lock instead of refusing (set once by `main`).
static WAIT_FOR_LOCK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets `--wait` for every image this process opens.
pub fn set_wait_for_lock(wait: bool) {
    WAIT_FOR_LOCK.store(wait, std::sync::atomic::Ordering::Relaxed);
}

/// Whether `--wait` was given.
pub fn wait_for_lock() -> bool {
    WAIT_FOR_LOCK.load(std::sync::atomic::Ordering::Relaxed)
}

/// The one-line reason of an [`ext4kit_fs::Error::Open`] (the caller puts the path first): the
/// lock and in-use refusals say what happened; OS errors get "cannot open: ".
pub(crate) fn open_error_reason(message: &str, errno: i32) -> String {
    if errno == libc::EWOULDBLOCK || errno == libc::EBUSY {
        message.to_string()
    } else {
        // strerror's "No such file or directory" reads lower-case inside a line.
        let mut c = message.chars();
        let first: String = c
            .next()
            .map(|f| f.to_lowercase().collect())
            .unwrap_or_default();
        format!("cannot open: {first}{}", c.as_str())
    }
}

/// Refuses images a kernel uses: a loop device backed by the same file (compared by device
/// and inode number, so hard links and other spellings count), or a mounted block device.
fn check_not_mounted(img: &Path) -> Result<()> {
    ext4kit_fs::check_not_in_use(img).map_err(|e| match e {
        ext4kit_fs::Error::Open { path, message, .. } => anyhow!("{path}: {message}"),
        e => anyhow!("{}: {e}", img.display()),
    })
}

/// Images opened for writing, once each, synced at the end.
#[derive(Default)]
pub struct WritableImages {
    open: HashMap<PathBuf, Fs>,
    replay_journal: bool,
    /// Notices about changes made at open that reach the image only with the command's
    /// commit (orphans cleaned up): printed once that commit succeeded.
    after_commit: Vec<(PathBuf, String)>,
    /// Set by [`WritableImages::mark_changed`].
    changed: bool,
}

impl WritableImages {
    /// No image open yet; `replay_journal`: replay a journal that needs recovery onto the
    /// image at open (else such an image is refused).
    pub fn new(replay_journal: bool) -> WritableImages {
        WritableImages {
            open: HashMap::new(),
            replay_journal,
            after_commit: Vec::new(),
            changed: false,
        }
    }

    /// The filesystem in `image`, opened for writing.
    pub fn get(&mut self, image: &Path) -> Result<Fs> {
        // One key per file, however it is spelled (a.img, ./a.img, a hard link): never two
        // writers on it.
        let key = match fs::metadata(image) {
            Ok(m) => PathBuf::from(format!("\0{}:{}", m.dev(), m.ino())),
            Err(_) => image.to_path_buf(),
        };
        if let Some(fs) = self.open.get(&key) {
            return Ok(fs.clone());
        }
        let fs = Fs::open_path(
            image,
            &OpenOptions {
                writable: true,
                wait_for_lock: wait_for_lock(),
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
            ext4kit_fs::Error::Open { path, message, errno } => anyhow!("{path}: {}", open_error_reason(&message, errno)),
            e if e.is_corruption() => anyhow::anyhow!(
                "{}: {e}: the image is damaged, so it is not written (`e2fsck -fy {}` repairs it; reading commands still read it)",
                image.display(),
                image.display()
            ),
            e => anyhow::Error::from(e).context(image.display().to_string()),
        })?;
        for n in fs.notices() {
            if n.starts_with("cleaned up") {
                self.after_commit
                    .push((key.clone(), format!("ext4kit: {}: {n}", image.display())));
                continue;
            }
            eprintln!("ext4kit: {}: {n}", image.display());
        }
        self.open.insert(key, fs.clone());
        Ok(fs)
    }

    /// Notes that the command changed something even if the operand then fails (`rm -r`
    /// removed part of a tree): [`WritableImages::finish`] commits it.
    pub fn mark_changed(&mut self) {
        self.changed = true;
    }

    /// Writes everything back if the command changed something (`changed`); a command all of
    /// whose operands failed leaves its images as they were, changes made at open (an orphan
    /// cleanup) included.
    pub fn finish(&mut self, changed: bool) -> Result<()> {
        if changed || self.changed {
            self.sync_all()
        } else {
            self.discard_all();
            Ok(())
        }
    }

    /// Writes everything back. An image that fails is closed (its error returned); those not
    /// reached yet are discarded when `self` goes.
    pub fn sync_all(&mut self) -> Result<()> {
        let keys: Vec<PathBuf> = self.open.keys().cloned().collect();
        for path in keys {
            let Some(fs) = self.open.remove(&path) else {
                continue;
            };
            fs.close()
                .with_context(|| format!("{}: writing back", path.display()))?;
            for (_, line) in self.after_commit.iter().filter(|(p, _)| *p == path) {
                eprintln!("{line}");
            }
        }
        Ok(())
    }

    /// Gives up what the open images changed (never committed: the command failed).
    fn discard_all(&mut self) {
        for (_, fs) in self.open.drain() {
            fs.discard();
        }
    }
}

impl Drop for WritableImages {
    /// A command that returns early with an error commits nothing.
    fn drop(&mut self) {
        self.discard_all();
    }
}

/// The process's umask (permission bits new files and directories do not get).
pub(crate) fn umask() -> u16 {
    let m = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    rustix::process::umask(m);
    #[allow(clippy::unnecessary_cast)]
    let bits = m.bits() as u32;
    (bits & 0o777) as u16
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
    mke: &crate::mkopts::MkeValues,
    json: bool,
) -> Result<()> {
    // Every option is checked before the target is touched; a new image goes to a temporary
    // file renamed over IMAGE on success (a block device is written in place).
    let shown = image.display().to_string();
    let bytes = parse_size(size).map_err(|e| anyhow!("{shown}: {e}"))?;
    let opts = MkfsOptions {
        block_size,
        size_bytes: bytes,
        label,
        uuid: uuid
            .map(parse_uuid)
            .transpose()
            .map_err(|e| anyhow!("{shown}: {e}"))?,
        hash_seed: mke.hash_seed,
        time: source_date_epoch()?,
        inode_count: mke.inode_count,
        inode_ratio: mke.inode_ratio,
        inode_size: mke.inode_size,
        reserved_percent: mke.reserved_percent.unwrap_or(5),
        assume_zeroed: true,
        lazy_itable_init: false,
        ..MkfsOptions::default()
    };
    if image.exists() {
        check_not_mounted(image)?;
    }
    let is_device = fs::metadata(image).is_ok_and(|m| m.file_type().is_block_device());
    if !is_device {
        // The plan alone, on a device of exactly this size: no file is created for bad options.
        ext4kit_fs::mkfs::check(&opts, bytes).map_err(|e| anyhow!("{shown}: {e}"))?;
    }
    let target = crate::target::NewImage::prepare(image)?;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&target.path)
        .with_context(|| shown.clone())?;
    if !is_device {
        f.set_len(bytes)
            .with_context(|| format!("{shown}: setting the size to {bytes} bytes"))?;
    }
    // One IO thread: mkfs writes a few MiB of metadata into the page cache, and more threads
    // only contend on the image's inode lock (1 TiB: 23 -> 20 ms).
    let dev: Arc<dyn ext4kit_blockdev::BlockDevice> = Arc::new(
        ext4kit_blockdev::FileDevice::from_file(f, true, 512, 1)
            .with_context(|| image.display().to_string())?,
    );
    let opts = MkfsOptions {
        // A block device: its whole size unless a size was given; never zeroed.
        assume_zeroed: !is_device,
        ..opts
    };
    let r = mkfs(&*dev, &opts).map_err(|e| anyhow!("{shown}: {e}"))?;
    drop(dev);
    target.commit()?;
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
            let pct = (p.bytes_done * 100)
                .checked_div(p.bytes_total)
                .unwrap_or(100);
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
    // Built into a temporary file next to IMAGE, renamed over it only on success.
    let target = crate::target::NewImage::prepare(image)?;
    let r = build_image(dir, &target.path, &opts, &mut on_progress)
        .map_err(|e| {
            anyhow!(
                "{}",
                e.to_string().replace(
                    &target.path.display().to_string(),
                    &image.display().to_string()
                )
            )
        })
        .with_context(|| format!("building {} from {}", image.display(), dir.display()))?;
    target.commit()?;
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

/// Resolves the parent directory of `path` in `fs` and the final name
/// ([`Fs::parent_and_name`]); a failure to resolve the directory names it.
pub(crate) fn parent_and_name(fs: &Fs, path: &[u8]) -> Result<(u32, Vec<u8>)> {
    fs.parent_and_name(path).map_err(|e| match e {
        e @ ext4kit_fs::Error::InvalidName { .. } => anyhow::Error::from(e),
        e => {
            let (dir, _) = ext4kit_fs::split_parent(path);
            anyhow::Error::from(e).context(String::from_utf8_lossy(dir).into_owned())
        }
    })
}

/// The attributes of a directory `mkdir` makes in `dir`: under a default POSIX ACL, mode 0777
/// for the ACL to mask (as mkdir(1) asks the kernel; the ACL takes the umask's place).
fn mkdir_attrs(fs: &Fs, dir: u32, attrs: &NewInode) -> NewInode {
    let inherits = fs
        .list_xattrs(dir)
        .is_ok_and(|x| x.iter().any(|x| x.name == b"system.posix_acl_default"));
    NewInode {
        perm: if inherits { 0o777 } else { attrs.perm },
        ..*attrs
    }
}

/// `ext4kit mkdir [-p] IMG:PATH...`. As mkdir(1), an operand that fails is reported on its own
/// line and the others are still made; returns the number of errors.
pub fn cmd_mkdir(images: &mut WritableImages, specs: &[Spec], parents: bool) -> Result<usize> {
    let (uid, gid) = euid_egid();
    let t = now();
    let attrs = NewInode {
        // As mkdir(1): 0777 under the umask.
        perm: 0o777 & !umask(),
        uid,
        gid,
        ..NewInode::with_time(0o755, t)
    };
    let mut errors = 0;
    for s in specs {
        let r = (|| -> Result<()> {
            let Some(path) = &s.path else {
                bail!("{}: expected IMG:PATH", s.image.display())
            };
            let fs = images.get(&s.image)?;
            if parents {
                // Each prefix as the kernel resolves it: symlinks to directories are followed.
                let mut cur = ROOT_INO;
                let mut prefix: Vec<u8> = Vec::new();
                for comp in path.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
                    prefix.push(b'/');
                    prefix.extend_from_slice(comp);
                    let shown =
                        || format!("{}:{}", s.image.display(), String::from_utf8_lossy(&prefix));
                    cur = match fs.resolve_inode(&prefix, true) {
                        Ok((ino, inode)) if inode.is_dir() => ino,
                        Ok(_) => bail!("{}: file exists and is not a directory", shown()),
                        Err(ext4kit_fs::Error::NotFound { .. })
                            if fs.lookup(cur, comp)?.is_none() =>
                        {
                            let d = fs
                                .create(
                                    cur,
                                    comp,
                                    &NewKind::Directory,
                                    &mkdir_attrs(&fs, cur, &attrs),
                                )
                                .with_context(shown)?;
                            // Kept if a later component fails, as mkdir -p keeps them.
                            images.mark_changed();
                            d
                        }
                        // Only the last component can be missing: a dangling symlink.
                        Err(ext4kit_fs::Error::NotFound { .. }) => {
                            bail!("{}: file exists", shown())
                        }
                        Err(e) => return Err(anyhow::Error::from(e).context(shown())),
                    };
                }
            } else {
                let (dir, name) = parent_and_name(&fs, path).with_context(|| s.display())?;
                fs.create(
                    dir,
                    &name,
                    &NewKind::Directory,
                    &mkdir_attrs(&fs, dir, &attrs),
                )
                .with_context(|| s.display())?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            errors += 1;
            eprintln!("ext4kit: {}", crate::one_line(&e));
        }
    }
    images.finish(errors < specs.len())?;
    Ok(errors)
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
    /// The image, for messages.
    image: &'a Path,
    /// Errors reported (each on its own line); the copy goes on with the next entry.
    errors: usize,
    /// Directories this copy created (a copy within one image never walks into them).
    created_dirs: HashSet<u32>,
    /// (device, inode) of the image file written: a host tree holding it does not copy it.
    image_key: Option<(u64, u64)>,
    meter: crate::meter::Meter,
    opts: CpInOptions,
    links: HashMap<(u64, u64), u32>,
    buf: Vec<u8>,
    uid: u32,
    gid: u32,
    now: Timestamp,
    /// Set when running out of space cost a file that existed before (an overwrite whose old
    /// contents were already truncated away): then nothing of this command is committed.
    poisoned: bool,
    /// Entries copied (a command that copied nothing leaves the image as it was).
    done: usize,
}

/// Out of space while copying `shown` (`IMG:PATH`): the one-line error of the ENOSPC rule.
#[derive(Debug)]
struct OutOfSpace {
    shown: String,
    detail: String,
}

impl std::fmt::Display for OutOfSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: no space left on device: {}",
            self.shown, self.detail
        )
    }
}

impl std::error::Error for OutOfSpace {}

/// `n` bytes for a person: `512 bytes`, `48.0 KiB`, `12.3 MiB`, `1.5 GiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

impl CopyIn<'_> {
    fn attrs(&self, md: &Meta) -> NewInode {
        if self.opts.preserve {
            NewInode {
                perm: md.perm,
                uid: md.uid,
                gid: md.gid,
                atime: md.atime,
                mtime: md.mtime,
                ctime: self.now,
                crtime: self.now,
            }
        } else {
            NewInode {
                // As cp: the source's permission bits under the umask (symlinks: 0777).
                perm: if md.kind == Kind::Symlink {
                    0o777
                } else {
                    md.perm & 0o777 & !umask()
                },
                uid: self.uid,
                gid: self.gid,
                ..NewInode::with_time(0, self.now)
            }
        }
    }

    /// `IMG:PATH` of `dpath` (a path inside the image), for messages.
    fn shown(&self, dpath: &[u8]) -> String {
        format!(
            "{}:{}",
            self.image.display(),
            String::from_utf8_lossy(dpath)
        )
    }

    /// Reports an error on its own line and counts it (the copy goes on, as cp's does).
    fn report(&mut self, e: &anyhow::Error) {
        self.errors += 1;
        self.meter.finish();
        eprintln!("ext4kit: {}", crate::one_line(e));
    }

    /// Copies `src` to `name` in image directory `dir` (`dpath`: its path in the image), as
    /// `cp -a` does onto an existing tree: a regular file replaces the contents of an existing
    /// one (written through a symlink to one; a dangling symlink is refused), a symlink or
    /// special file replaces an existing non-directory, directories merge; a directory never
    /// replaces a non-directory nor the other way round. Errors below a directory are reported
    /// and counted, the rest of it is copied; the error of this entry is returned.
    fn copy_entry(&mut self, src: &Src<'_>, dir: u32, name: &[u8], dpath: &[u8]) -> Result<()> {
        let md = src.meta()?;
        if matches!(src, Src::Host(_)) && Some(md.key) == self.image_key {
            bail!(
                "{}: is the image being written; not copied into itself",
                src.display()
            );
        }
        self.meter.file();
        let attrs = self.attrs(&md);
        let existing = self.fs.lookup(dir, name)?;
        if let (
            Src::Image {
                img: SAME_IMAGE,
                ino,
                ..
            },
            Some(e),
        ) = (src, &existing)
        {
            if e.ino == *ino {
                bail!(
                    "{} and {} are the same file",
                    src.display(),
                    self.shown(dpath)
                );
            }
        }
        let existing_is_dir = match &existing {
            Some(e) => self.fs.inode(e.ino)?.is_dir(),
            None => false,
        };
        if md.kind == Kind::Dir {
            if !self.opts.recursive {
                bail!("{}: -r not specified; omitting directory", src.display());
            }
            if let Src::Image {
                img: SAME_IMAGE,
                ino,
                ..
            } = src
            {
                if self.created_dirs.contains(ino)
                    || existing.as_ref().is_some_and(|e| e.ino == *ino)
                {
                    bail!(
                        "{}: cannot copy a directory into itself ({})",
                        src.display(),
                        self.shown(dpath)
                    );
                }
            }
            let d = match existing {
                Some(e) if existing_is_dir => e.ino,
                Some(_) => bail!(
                    "{}: cannot overwrite non-directory with directory {}",
                    self.shown(dpath),
                    src.display()
                ),
                None => {
                    let d = self.fs.create(dir, name, &NewKind::Directory, &attrs)?;
                    self.created_dirs.insert(d);
                    d
                }
            };
            for (kname, k) in src.children()? {
                let mut kpath = dpath.to_vec();
                if !kpath.ends_with(b"/") {
                    kpath.push(b'/');
                }
                kpath.extend_from_slice(&kname);
                if let Err(e) = self.copy(&k, d, &kname, &kpath) {
                    if is_no_space(&e) {
                        return Err(e);
                    }
                    self.report(&e);
                }
            }
            self.finish(d, src, &md, &attrs)?;
            return Ok(());
        }
        if existing_is_dir {
            bail!(
                "{}: cannot overwrite directory with non-directory {}",
                self.shown(dpath),
                src.display()
            );
        }
        // Created, filled and given its metadata in one transaction: after a crash the file is
        // absent (or as before) or complete, never empty, short or with other times.
        let hold = self
            .fs
            .hold_commits(if md.kind == Kind::File { md.size } else { 0 })?;
        let (ino, fresh) = if md.kind == Kind::File {
            if md.nlink > 1 {
                if let Some(&ino) = self.links.get(&md.key) {
                    match existing {
                        Some(e) if e.ino == ino => {}
                        Some(_) => {
                            self.fs.unlink(dir, name)?;
                            self.fs.link(ino, dir, name)?;
                        }
                        None => self.fs.link(ino, dir, name)?,
                    }
                    return Ok(());
                }
            }
            // The ENOSPC rule, first half: a file that cannot fit is refused before anything
            // is created or truncated (under the hold, an overwritten file's old blocks stay
            // in use until the commit, so they do not count as room).
            let bs = u64::from(self.fs.block_size());
            let need = md.data_bytes.div_ceil(bs);
            let room = self.fs.space();
            if need > room.available_blocks {
                return Err(self.out_of_space(dpath, need * bs, &room, "not copied"));
            }
            let (ino, fresh) = match existing {
                Some(e) => {
                    let inode = self.fs.inode(e.ino)?;
                    let target = if inode.is_symlink() {
                        // cp writes through a symlink it finds at the destination.
                        match self.fs.resolve_inode_at(dir, name, true) {
                            Ok(t) => Some(t),
                            Err(ext4kit_fs::Error::NotFound { .. }) => {
                                bail!(
                                    "{}: not writing through dangling symlink",
                                    self.shown(dpath)
                                )
                            }
                            Err(e) => return Err(anyhow::Error::from(e).context(self.shown(dpath))),
                        }
                    } else if inode.is_regular() && self.opts.preserve && inode.links_count() > 1 {
                        // As cp -a: a file hard-linked elsewhere is replaced, not rewritten
                        // (its other names keep their content).
                        self.fs.unlink(dir, name)?;
                        None
                    } else if inode.is_regular() {
                        Some((e.ino, inode))
                    } else {
                        None
                    };
                    if let (
                        Src::Image {
                            img: SAME_IMAGE,
                            ino: sino,
                            ..
                        },
                        Some((t, _)),
                    ) = (src, &target)
                    {
                        if t == sino {
                            bail!(
                                "{} and {} are the same file",
                                src.display(),
                                self.shown(dpath)
                            );
                        }
                    }
                    match target {
                        Some((t, ti)) if ti.is_regular() => {
                            self.fs.set_size(t, 0)?;
                            (t, false)
                        }
                        Some(_) => bail!(
                            "{}: cannot overwrite directory with non-directory {}",
                            self.shown(dpath),
                            src.display()
                        ),
                        None => {
                            // A device node, FIFO or socket (or a hard-linked file, unlinked
                            // above): replaced by the file.
                            if self.fs.lookup(dir, name)?.is_some() {
                                self.fs.unlink(dir, name)?;
                            }
                            (self.fs.create(dir, name, &NewKind::Regular, &attrs)?, true)
                        }
                    }
                }
                None => (self.fs.create(dir, name, &NewKind::Regular, &attrs)?, true),
            };
            let mut written = 0u64;
            let copied = match src {
                Src::Host(p) => self.copy_data(p, ino, md.size, fresh),
                Src::Image {
                    fs,
                    ino: sino,
                    shown,
                    ..
                } => self
                    .copy_image_data(fs, *sino, md.size, ino)
                    .with_context(|| shown.clone()),
                Src::Stdin => self.copy_stdin(ino, &mut written),
            };
            if let Err(e) = copied {
                if !is_no_space(&e) {
                    return Err(e);
                }
                // The ENOSPC rule, second half: the file being copied goes; what was copied
                // before stays. An overwritten file cannot be given back its old contents:
                // then nothing of this command is committed at all.
                let room = self.fs.space();
                let need = if matches!(src, Src::Stdin) {
                    written
                } else {
                    md.data_bytes
                };
                if fresh {
                    drop(hold);
                    self.fs.unlink(dir, name).with_context(|| {
                        format!("{}: removing the partial copy", self.shown(dpath))
                    })?;
                    return Err(self.out_of_space(dpath, need, &room, "not copied"));
                }
                self.poisoned = true;
                return Err(self.out_of_space(
                    dpath,
                    need,
                    &room,
                    "it was being overwritten, so nothing of this command is written (the image stays as it was)",
                ));
            }
            if !fresh && !self.opts.preserve {
                // As cp(1)'s O_TRUNC and write do to the file it overwrites.
                self.fs
                    .set_times(ino, None, Some(self.now), Some(self.now))?;
            }
            if md.nlink > 1 {
                self.links.insert(md.key, ino);
            }
            (ino, fresh)
        } else {
            let kind = match md.kind {
                Kind::Symlink => NewKind::Symlink(src.link_target()?),
                Kind::Char(major, minor) => NewKind::CharDevice(major, minor),
                Kind::Block(major, minor) => NewKind::BlockDevice(major, minor),
                Kind::Fifo => NewKind::Fifo,
                _ => NewKind::Socket,
            };
            if existing.is_some() {
                // cp -a replaces an existing non-directory by a symlink or special file.
                self.fs.unlink(dir, name)?;
            }
            match self.fs.create(dir, name, &kind, &attrs) {
                Ok(ino) => (ino, true),
                Err(e) => {
                    let e = anyhow::Error::from(e);
                    if existing.is_some() && is_no_space(&e) {
                        // The name it replaces is gone already.
                        self.poisoned = true;
                    }
                    return Err(e.context(self.shown(dpath)));
                }
            }
        };
        if let Err(e) = self.finish(ino, src, &md, &attrs) {
            if is_no_space(&e) {
                if fresh {
                    drop(hold);
                    self.fs.unlink(dir, name).with_context(|| {
                        format!("{}: removing the partial copy", self.shown(dpath))
                    })?;
                } else {
                    self.poisoned = true;
                }
            }
            return Err(e);
        }
        Ok(hold.end()?)
    }

    /// [`CopyIn::copy_entry`], with an ENOSPC error made into the rule's one line (the path,
    /// what ran out, what is free).
    fn copy(&mut self, src: &Src<'_>, dir: u32, name: &[u8], dpath: &[u8]) -> Result<()> {
        let r = self.copy_entry(src, dir, name, dpath);
        if r.is_ok() {
            self.done += 1;
        }
        r.map_err(|e| {
            if !is_no_space(&e) || e.chain().any(|c| c.is::<OutOfSpace>()) {
                return e;
            }
            let room = self.fs.space();
            let what = e
                .chain()
                .find_map(|c| match c.downcast_ref::<ext4kit_fs::Error>() {
                    Some(ext4kit_fs::Error::NoSpace(w)) => Some(w.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            let detail = if room.free_inodes == 0 || what.contains("inode") {
                format!(
                    "no free inodes ({} of space left)",
                    human_bytes(room.available_bytes())
                )
            } else {
                format!(
                    "{what} ({} and {} inodes free)",
                    human_bytes(room.available_bytes()),
                    room.free_inodes
                )
            };
            anyhow::Error::from(OutOfSpace {
                shown: self.shown(dpath),
                detail: format!("{detail}; not copied"),
            })
        })
    }

    fn finish(&mut self, ino: u32, src: &Src<'_>, md: &Meta, attrs: &NewInode) -> Result<()> {
        if self.opts.preserve {
            let _hold = self.fs.hold_commits(0)?;
            // The source's set exactly, also when it has none: what the image gave the
            // inode (ACLs inherited from a default ACL, an old file's attributes) goes.
            let x = src.xattrs()?;
            self.fs.set_xattrs(ino, &x)?;
            self.fs.set_owner_mode(ino, md.uid, md.gid, attrs.perm)?;
            self.fs
                .set_times(ino, Some(attrs.atime), Some(attrs.mtime), None)?;
        }
        Ok(())
    }

    /// Streams standard input into `ino` (it can be larger than memory); `written` counts the
    /// bytes written so far.
    fn copy_stdin(&mut self, ino: u32, written: &mut u64) -> Result<()> {
        use std::io::Read;
        self.buf.resize(1 << 20, 0);
        let mut stdin = std::io::stdin().lock();
        loop {
            let n = match stdin.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(anyhow::Error::from(e).context("-: reading standard input"));
                }
            };
            self.fs.write_at(ino, *written, &self.buf[..n])?;
            *written += n as u64;
            self.meter.bytes(n as u64);
        }
        self.fs.set_size(ino, *written)?;
        Ok(())
    }

    /// The ENOSPC error for `dpath`: what the file needs (`need` bytes; 0 when unknown) and
    /// what is free, then `what_happened`.
    fn out_of_space(
        &self,
        dpath: &[u8],
        need: u64,
        room: &ext4kit_fs::Space,
        what_happened: &str,
    ) -> anyhow::Error {
        let detail = if need == 0 {
            format!(
                "{} free; {what_happened}",
                human_bytes(room.available_bytes())
            )
        } else {
            format!(
                "the file needs {}, {} free; {what_happened}",
                human_bytes(need),
                human_bytes(room.available_bytes())
            )
        };
        anyhow::Error::from(OutOfSpace {
            shown: self.shown(dpath),
            detail,
        })
    }

    /// Copies regular file `sino` of image `sfs` (`size` bytes) into `ino`: only its written
    /// extents, so holes and unwritten extents stay holes.
    fn copy_image_data(&mut self, sfs: &Fs, sino: u32, size: u64, ino: u32) -> Result<()> {
        let reader = sfs.open_file(sino)?;
        self.buf.resize(1 << 20, 0);
        for (start, end) in Src::image_ranges(sfs, sino, size)? {
            let mut pos = start;
            while pos < end {
                let want = ((end - pos) as usize).min(self.buf.len());
                let n = reader.read_at(pos, &mut self.buf[..want])?;
                if n == 0 {
                    break;
                }
                self.fs.write_at(ino, pos, &self.buf[..n])?;
                pos += n as u64;
                self.meter.bytes(n as u64);
            }
        }
        self.fs.set_size(ino, size)?;
        Ok(())
    }

    /// Copies the data regions of `src` into `ino` (holes stay holes). A file this copy created
    /// is filled straight from the source (`Fs::write_from_file`: allocated now, copied inside
    /// the kernel); an existing one is rewritten through the page cache.
    fn copy_data(&mut self, src: &Path, ino: u32, len: u64, fresh: bool) -> Result<()> {
        let f = fs::File::open(src).with_context(|| src.display().to_string())?;
        self.buf.resize(1 << 20, 0);
        let mut end = 0;
        for (data, hole) in ext4kit_fs::host::data_regions(&f, len) {
            let mut at = data;
            if fresh {
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
        }
        if !fresh || end != len {
            self.fs.set_size(ino, len)?;
        }
        Ok(())
    }
}

/// Whether `e` is "no space left on device" (the copy stops there).
fn is_no_space(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<OutOfSpace>()
            || matches!(
                c.downcast_ref::<ext4kit_fs::Error>(),
                Some(ext4kit_fs::Error::NoSpace(_))
            )
    })
}

/// A source of `cp` into an image.
pub enum CpSource {
    /// A host path.
    Host(PathBuf),
    /// `-`: standard input.
    Stdin,
    /// `IMG:PATH` in an image (the destination's image or another one).
    Image(Spec),
}

/// `img` of sources in the destination's own image (see [`CopyIn::copy`]).
const SAME_IMAGE: u64 = u64::MAX >> 1;

/// Whether `a` and `b` are the same file (device and inode).
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => false,
    }
}

/// `ext4kit cp SRC... IMG:PATH` (copy into an image, from the host, standard input or images;
/// `readers` opens source images other than the destination's). Each source that fails is
/// reported on its own line and the others are copied (as cp does); returns the number of
/// errors.
pub fn cmd_cp_in(
    images: &mut WritableImages,
    readers: &mut crate::spec::Images,
    sources: &[CpSource],
    dest: &Spec,
    opts: CpInOptions,
) -> Result<usize> {
    let fs = images.get(&dest.image)?;
    let dest_path = dest.path_or_root().to_vec();
    let (uid, gid) = euid_egid();
    let mut c = CopyIn {
        fs: &fs,
        image: &dest.image,
        errors: 0,
        created_dirs: HashSet::new(),
        image_key: fs::metadata(&dest.image).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        }),
        meter: crate::meter::Meter::new("copying", false),
        opts,
        links: HashMap::new(),
        buf: Vec::new(),
        uid,
        gid,
        now: now(),
        poisoned: false,
        done: 0,
    };
    let src_is_dir = |s: &CpSource| match s {
        CpSource::Host(p) => p.is_dir(),
        CpSource::Stdin => false,
        // Decided when it is copied; a new `name/` destination is allowed for it.
        CpSource::Image(_) => true,
    };
    let dest_dir = match fs.resolve_inode(&dest_path, true) {
        Ok((ino, inode)) if inode.is_dir() => Some(ino),
        Ok(_) => None,
        // A new name: `new/` can only be a directory (cp -r DIR IMG:/new/).
        Err(ext4kit_fs::Error::NotFound { .. })
            if !ext4kit_fs::names_dir(&dest_path)
                || (opts.recursive && sources.len() == 1 && src_is_dir(&sources[0])) =>
        {
            None
        }
        Err(ext4kit_fs::Error::NotFound { .. }) => bail!(
            "{}: cannot create regular file: not a directory",
            dest.display()
        ),
        Err(e) => return Err(anyhow::Error::from(e).context(dest.display())),
    };
    if dest_dir.is_none() && sources.len() > 1 {
        bail!(
            "{}: not a directory (several sources need one)",
            dest.display()
        );
    }
    for (i, arg) in sources.iter().enumerate() {
        let r = (|| -> Result<()> {
            let holder: Fs;
            let (src, contents_of, name): (Src<'_>, bool, Option<Vec<u8>>) = match arg {
                CpSource::Host(p) => {
                    let b = p.as_os_str().as_bytes();
                    if b.ends_with(b"/.") {
                        // SRC/. : the contents of SRC into DEST. (Path::parent would skip the `.`.)
                        let dir = Path::new(OsStr::from_bytes(&b[..b.len() - 2]));
                        let dir = if dir.as_os_str().is_empty() {
                            Path::new("/")
                        } else {
                            dir
                        };
                        (Src::Host(dir.to_path_buf()), true, None)
                    } else {
                        (
                            Src::Host(p.clone()),
                            false,
                            p.file_name().map(|n| n.as_bytes().to_vec()),
                        )
                    }
                }
                CpSource::Stdin => (Src::Stdin, false, None),
                CpSource::Image(spec) => {
                    let same = same_file(&spec.image, &dest.image);
                    holder = if same {
                        fs.clone()
                    } else {
                        readers.get(&spec.image)?
                    };
                    let path = spec.path_or_root();
                    let ino = holder
                        .resolve(path, !opts.recursive || ext4kit_fs::names_dir(path))
                        .with_context(|| spec.display())?;
                    let comps: Vec<&[u8]> = path
                        .split(|&b| b == b'/')
                        .filter(|c| !c.is_empty())
                        .collect();
                    // IMG:/ and IMG:DIR/. copy a directory's contents (as copying out does).
                    let contents =
                        comps.iter().all(|c| *c == b".") || comps.last() == Some(&&b"."[..]);
                    let name = comps
                        .iter()
                        .rev()
                        .find(|c| **c != b"." && **c != b"..")
                        .map(|c| c.to_vec());
                    let img = if same { SAME_IMAGE } else { i as u64 };
                    (
                        Src::Image {
                            fs: &holder,
                            img,
                            ino,
                            shown: spec.display(),
                        },
                        contents,
                        name,
                    )
                }
            };
            match dest_dir {
                Some(d) if contents_of => {
                    let md = src.meta()?;
                    if md.kind != Kind::Dir {
                        bail!("{}: not a directory", src.display());
                    }
                    if !c.opts.recursive {
                        bail!("{}: -r not specified; omitting directory", src.display());
                    }
                    for (kname, k) in src.children()? {
                        let mut kpath = dest_path.clone();
                        if !kpath.ends_with(b"/") {
                            kpath.push(b'/');
                        }
                        kpath.extend_from_slice(&kname);
                        if let Err(e) = c.copy(&k, d, &kname, &kpath) {
                            if is_no_space(&e) {
                                return Err(e);
                            }
                            c.report(&e);
                        }
                    }
                    Ok(())
                }
                Some(d) => {
                    let name = name.ok_or_else(|| {
                        anyhow!(
                            "{}: no file name to copy it under into {}",
                            src.display(),
                            dest.display()
                        )
                    })?;
                    let mut kpath = dest_path.clone();
                    if !kpath.ends_with(b"/") {
                        kpath.push(b'/');
                    }
                    kpath.extend_from_slice(&name);
                    c.copy(&src, d, &name, &kpath)
                }
                None => {
                    let (dir, name) =
                        parent_and_name(&fs, &dest_path).with_context(|| dest.display())?;
                    c.copy(&src, dir, &name, &dest_path)
                }
            }
        })();
        if let Err(e) = r {
            if is_no_space(&e) {
                // The ENOSPC rule: the copy stops here; what was copied completely is
                // committed (the file being copied was removed), unless an overwritten file
                // lost its old contents — then nothing is.
                c.meter.finish();
                let keep = !c.poisoned && c.done > 0;
                drop(c);
                images.finish(keep)?;
                return Err(e);
            }
            c.report(&e);
        }
    }
    c.meter.phase("writing back");
    let errors = c.errors;
    let changed = c.done > 0;
    drop(c);
    images.finish(changed)?;
    Ok(errors)
}
