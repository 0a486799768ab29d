//! Building an image from a directory tree (`ext4kit build`, like `mke2fs -d`).
//!
//! 1. The source tree is scanned once (lstat, symlink targets, xattrs), children sorted by name,
//!    so the image does not depend on the order the host lists directories in.
//! 2. A size is chosen when none is given: data blocks (holes excluded), directory blocks,
//!    inode tables for the entries plus room to grow, the journal, and 15 % slack.
//! 3. `mkfs` writes a fresh filesystem (UUID, hash seed and time as given).
//! 4. The tree is written depth first: a directory's inode is allocated before its children (so
//!    they land in its group), its blocks are built once all children exist — an indexed
//!    directory from the start when the entries do not fit one block. A file's blocks are
//!    allocated by the building thread as whole extents (one where the free space allows) and
//!    filled from the source by copy threads inside the kernel (`copy_file_range`) while the
//!    walk goes on; files with holes are copied region by region, holes kept.
//!    Hard links are found by (device, inode) and linked, not copied.
//! 5. Times are kept to the nanosecond and clamped to `SOURCE_DATE_EPOCH` when it is set.
//!
//! With the UUID, hash seed and `SOURCE_DATE_EPOCH` fixed, two builds of the same tree are
//! byte-identical: inode numbers follow the sorted walk, and every allocation is made by the
//! building thread in walk order (the copy threads only fill blocks already chosen).
pub(crate) mod host;

use std::collections::HashMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ext4kit_blockdev::{BlockDevice, FileDevice};
use ext4kit_format::inode::{FileType, Timestamp};

use crate::error::{Error, PathBytes, Result};
use crate::file::direct::CopyRun;
use crate::fs::{Fs, OpenOptions, ROOT_INO};
use crate::inode::{NewInode, NewKind};
use crate::mkfs::{MkfsOptions, mkfs};
use crate::xattr::write::XattrPair;

/// How to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Block size (`None`: what mke2fs picks for the size).
    pub block_size: Option<u32>,
    /// Image size in bytes (`None`: fitted to the tree).
    pub size: Option<u64>,
    /// Filesystem UUID (`None`: random).
    pub uuid: Option<[u8; 16]>,
    /// Directory hash seed (`None`: random).
    pub hash_seed: Option<[u8; 16]>,
    /// Volume label.
    pub label: Option<String>,
    /// Clamp every timestamp to this (seconds since the epoch), and use it as the creation time
    /// (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<i64>,
    /// Inode count (`mke2fs -N`); refused when below what the tree needs.
    pub inode_count: Option<u32>,
    /// Bytes per inode (`mke2fs -i`); `None`: the `mke2fs.conf` ratio for the size.
    pub inode_ratio: Option<u64>,
    /// Inode size (`mke2fs -I`).
    pub inode_size: Option<u16>,
    /// Blocks reserved for root, in percent (`mke2fs -m`); `None`: 5.
    pub reserved_percent: Option<u8>,
}

/// Progress of a build, reported as it goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Entries written so far.
    pub entries_done: u64,
    /// Entries in the tree.
    pub entries_total: u64,
    /// File bytes written so far.
    pub bytes_done: u64,
    /// File bytes in the tree.
    pub bytes_total: u64,
}

/// What was built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BuildReport {
    /// Image size in bytes.
    pub image_size: u64,
    /// Block size.
    pub block_size: u32,
    /// Regular files (distinct inodes).
    pub files: u64,
    /// Directories (the root included).
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Device nodes, FIFOs and sockets.
    pub special: u64,
    /// Extra hard links (entries beyond the first of an inode).
    pub hard_links: u64,
    /// File bytes copied.
    pub bytes: u64,
}

/// One scanned entry. Kept for every entry of the tree until the build ends, so it is kept
/// small (about 150 bytes): no path (the walk rebuilds it from the names), the few `lstat`
/// fields the build uses instead of a whole `fs::Metadata`, boxed slices instead of vectors.
struct Node {
    name: Box<[u8]>,
    md: Meta,
    kind: ScanKind,
    xattrs: Box<[XattrPair]>,
}

enum ScanKind {
    Dir(Box<[Node]>),
    File,
    Symlink(Box<[u8]>),
    Special,
}

use crate::build::host::HostMeta as Meta;

struct Totals {
    entries: u64,
    bytes: u64,
    data_blocks: u64,
    dir_bytes: u64,
    xattr_blocks: u64,
}

use crate::build::host::{device_numbers, io_err, read_xattrs};

fn scan(path: &Path, name: Box<[u8]>, depth: usize, totals: &mut Totals, bs: u64) -> Result<Node> {
    if depth > 4096 {
        return Err(Error::InvalidArgument(format!(
            "{}: directory tree too deep",
            path.display()
        )));
    }
    let md = fs::symlink_metadata(path).map_err(|e| io_err(path, e))?;
    let ft = md.file_type();
    let xattrs = read_xattrs(path)?;
    if xattrs
        .iter()
        .map(|(n, v)| n.len() + v.len() + 32)
        .sum::<usize>()
        > 100
    {
        totals.xattr_blocks += 1;
    }
    totals.entries += 1;
    let kind = if ft.is_dir() {
        let mut children = Vec::new();
        let mut names: Vec<_> = fs::read_dir(path)
            .map_err(|e| io_err(path, e))?
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| io_err(path, e))?;
        names.sort_by_key(|a| a.file_name());
        for e in names {
            let n: Box<[u8]> = e.file_name().as_bytes().into();
            if n.len() > 255 {
                return Err(Error::NameTooLong {
                    path: PathBytes(e.path().as_os_str().as_bytes().to_vec()),
                });
            }
            totals.dir_bytes += 8 + ((n.len() as u64 + 3) & !3);
            children.push(scan(&e.path(), n, depth + 1, totals, bs)?);
        }
        totals.dir_bytes += bs;
        ScanKind::Dir(children.into_boxed_slice())
    } else if ft.is_symlink() {
        let t: Box<[u8]> = fs::read_link(path)
            .map_err(|e| io_err(path, e))?
            .as_os_str()
            .as_bytes()
            .into();
        if t.len() >= 60 {
            totals.data_blocks += 1;
        }
        ScanKind::Symlink(t)
    } else if ft.is_file() {
        totals.bytes += md.len();
        // Allocated size, holes excluded (st_blocks), but at least what the length needs when
        // the host filesystem reports no blocks (e.g. compressed or inline).
        let alloc = (md.blocks() * 512).min(md.len().div_ceil(bs) * bs);
        totals.data_blocks += alloc.div_ceil(bs) + alloc.div_ceil(bs) / 300 + 1;
        ScanKind::File
    } else {
        ScanKind::Special
    };
    Ok(Node {
        name,
        md: Meta::of(&md),
        kind,
        xattrs: xattrs.into_boxed_slice(),
    })
}

/// A size that fits the tree, rounded up to a MiB.
fn fitted_size(t: &Totals, bs: u64) -> u64 {
    let inodes = (t.entries + 64) * 5 / 4;
    let inode_bytes = inodes * 256;
    let dir_blocks = t.dir_bytes * 2 / bs + t.entries / 8;
    let blocks = t.data_blocks + dir_blocks + t.xattr_blocks;
    let data = blocks * bs * 115 / 100;
    let journal = if data < (128 << 20) {
        4 << 20
    } else if data < (1 << 30) {
        16 << 20
    } else {
        64 << 20
    };
    let total = data + inode_bytes * 2 + journal + (4 << 20);
    total.div_ceil(1 << 20) * (1 << 20)
}

fn ts(sec: i64, nsec: i64, clamp: Option<i64>) -> Timestamp {
    let (s, n) = match clamp {
        Some(c) if sec > c => (c, 0),
        _ => (sec, nsec),
    };
    Timestamp {
        seconds: s,
        nanoseconds: n.clamp(0, 999_999_999) as u32,
    }
}

fn attrs_of(md: &Meta, clamp: Option<i64>) -> NewInode {
    let mtime = ts(md.mtime.0, i64::from(md.mtime.1), clamp);
    NewInode {
        perm: (md.mode & 0o7777) as u16,
        uid: md.uid,
        gid: md.gid,
        atime: ts(md.atime.0, i64::from(md.atime.1), clamp),
        mtime,
        ctime: ts(md.ctime.0, i64::from(md.ctime.1), clamp),
        crtime: mtime,
    }
}

struct Builder<'a> {
    fs: &'a Fs,
    clamp: Option<i64>,
    links: HashMap<(u64, u64), u32>,
    report: BuildReport,
    progress: Progress,
    on_progress: &'a mut dyn FnMut(Progress),
    since_report: u64,
    copier: Copier,
}

/// A copy of one source file's bytes to blocks already allocated for them.
struct CopyJob {
    path: PathBuf,
    runs: Vec<CopyRun>,
}

/// Worker threads that fill allocated file blocks from the source files while the building
/// thread goes on with the metadata (opening a source and the kernel's copy are most of a
/// build's time). Allocation stays on the building thread, so the image does not depend on
/// which worker copies what. The first error wins; later jobs are dropped.
struct Copier {
    tx: Option<std::sync::mpsc::SyncSender<CopyJob>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    error: Arc<parking_lot::Mutex<Option<Error>>>,
}

impl Copier {
    fn new(dev: Arc<dyn BlockDevice>) -> Result<Copier> {
        let n = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 4);
        let (tx, rx) = std::sync::mpsc::sync_channel::<CopyJob>(4096);
        let rx = Arc::new(parking_lot::Mutex::new(rx));
        let error: Arc<parking_lot::Mutex<Option<Error>>> = Arc::default();
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let (rx, error, failed, dev) = (
                Arc::clone(&rx),
                Arc::clone(&error),
                Arc::clone(&failed),
                Arc::clone(&dev),
            );
            let work = move || {
                loop {
                    let job = rx.lock().recv();
                    let Ok(job) = job else { break };
                    if failed.load(std::sync::atomic::Ordering::Relaxed) {
                        continue;
                    }
                    if let Err(e) = Copier::copy(&*dev, &job) {
                        failed.store(true, std::sync::atomic::Ordering::Relaxed);
                        error.lock().get_or_insert(e);
                    }
                }
            };
            let w = std::thread::Builder::new()
                .name(format!("ext4kit-copy-{i}"))
                .spawn(work)
                .map_err(|e| Error::InvalidArgument(format!("cannot start a copy thread: {e}")))?;
            workers.push(w);
        }
        Ok(Copier {
            tx: Some(tx),
            workers,
            error,
        })
    }

    fn copy(dev: &dyn BlockDevice, job: &CopyJob) -> Result<()> {
        let f = fs::File::open(&job.path).map_err(|e| io_err(&job.path, e))?;
        for run in &job.runs {
            dev.copy_from_file(&f, run.file_off, run.dev_off, run.len)
                .map_err(|e| io_err(&job.path, std::io::Error::other(e.to_string())))?;
        }
        Ok(())
    }

    /// Queues `job`; an earlier job's error stops the build here.
    fn push(&self, job: CopyJob) -> Result<()> {
        if let Some(e) = self.error.lock().take() {
            return Err(e);
        }
        match &self.tx {
            Some(tx) if tx.send(job).is_ok() => Ok(()),
            _ => Err(Error::InvalidArgument("the copy threads stopped".into())),
        }
    }

    /// Waits for every queued copy; the first error if any failed.
    fn finish(&mut self) -> Result<()> {
        self.tx = None;
        for w in self.workers.drain(..) {
            if w.join().is_err() {
                return Err(Error::InvalidArgument("a copy thread panicked".into()));
            }
        }
        self.error.lock().take().map_or(Ok(()), Err)
    }
}

impl Drop for Copier {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// File bytes between progress reports besides the per-entry ones (a few large files move the
/// bar too). Build writes no file data through the page cache, so nothing needs writing back.
const REPORT_EVERY: u64 = 128 << 20;

/// Dirty cached metadata blocks that make the build write metadata back as it goes.
const WRITE_BACK_DIRTY: usize = 512;

impl Builder<'_> {
    fn tick(&mut self) -> Result<()> {
        self.progress.entries_done += 1;
        if self.progress.entries_done % 256 == 0 {
            (self.on_progress)(self.progress);
            // Memory stays bounded: changed metadata goes to the image as the walk goes, so
            // the caches can drop it (otherwise every directory block and inode stays dirty
            // in memory until the end: about 9.5 KiB per directory).
            if self.fs.core.cache.nr_dirty() >= WRITE_BACK_DIRTY {
                self.fs.write_back_metadata()?;
            }
        }
        Ok(())
    }

    /// Creates the children of `dir` (inode `ino`), returning its entries.
    fn children(
        &mut self,
        ino: u32,
        nodes: &[Node],
        dir: &Path,
    ) -> Result<Vec<(Vec<u8>, u32, u8)>> {
        let refs: Vec<&Node> = nodes.iter().collect();
        self.children_of(ino, &refs, dir)
    }

    /// Creates the entries `nodes` of the source directory `dir` (image inode `ino`).
    fn children_of(
        &mut self,
        ino: u32,
        nodes: &[&Node],
        dir: &Path,
    ) -> Result<Vec<(Vec<u8>, u32, u8)>> {
        let mut entries = Vec::with_capacity(nodes.len());
        for n in nodes.iter().copied() {
            let attrs = attrs_of(&n.md, self.clamp);
            let path = || dir.join(std::ffi::OsStr::from_bytes(&n.name));
            let (child, ft) = match &n.kind {
                ScanKind::Dir(kids) => {
                    let d = self.fs.create_detached(ino, &NewKind::Directory, &attrs)?;
                    let sub = self.children(d, kids, &path())?;
                    self.fs.fill_dir(d, ino, &sub)?;
                    self.report.dirs += 1;
                    (d, FileType::Directory)
                }
                ScanKind::File => {
                    let key = (n.md.dev, n.md.ino);
                    if n.md.nlink > 1 {
                        if let Some(&existing) = self.links.get(&key) {
                            self.fs.add_links(existing, 1)?;
                            self.report.hard_links += 1;
                            entries.push((
                                n.name.to_vec(),
                                existing,
                                FileType::Regular.dirent_code(),
                            ));
                            self.tick()?;
                            continue;
                        }
                    }
                    let f = self.fs.create_detached(ino, &NewKind::Regular, &attrs)?;
                    self.copy_file(f, &path(), &n.md)?;
                    if n.md.nlink > 1 {
                        self.links.insert(key, f);
                    }
                    self.report.files += 1;
                    (f, FileType::Regular)
                }
                ScanKind::Symlink(target) => {
                    let s =
                        self.fs
                            .create_detached(ino, &NewKind::Symlink(target.to_vec()), &attrs)?;
                    self.report.symlinks += 1;
                    (s, FileType::Symlink)
                }
                ScanKind::Special => {
                    let fmt = n.md.fmt();
                    let (major, minor) = device_numbers(n.md.rdev);
                    let (kind, t) = if fmt == 0o020_000 {
                        (NewKind::CharDevice(major, minor), FileType::CharDevice)
                    } else if fmt == 0o060_000 {
                        (NewKind::BlockDevice(major, minor), FileType::BlockDevice)
                    } else if fmt == 0o010_000 {
                        (NewKind::Fifo, FileType::Fifo)
                    } else {
                        (NewKind::Socket, FileType::Socket)
                    };
                    let s = self.fs.create_detached(ino, &kind, &attrs)?;
                    self.report.special += 1;
                    (s, t)
                }
            };
            if !n.xattrs.is_empty() {
                self.fs.set_xattrs(child, &n.xattrs)?;
            }
            entries.push((n.name.to_vec(), child, ft.dirent_code()));
            self.tick()?;
        }
        Ok(entries)
    }

    /// Copies a source file's data regions (holes stay holes) straight to blocks allocated for
    /// them (the bulk path of `file/direct.rs`; the image is fresh, so block tails are zeros).
    fn copy_file(&mut self, ino: u32, path: &Path, md: &Meta) -> Result<()> {
        let len = md.size;
        if len == 0 {
            return Ok(());
        }
        if md.blocks * 512 >= len {
            // No holes to keep (the host stores every byte): blocks now, bytes by a copy thread.
            let runs = self.fs.allocate_for_copy(ino, 0, len)?;
            self.copier.push(CopyJob {
                path: path.to_path_buf(),
                runs,
            })?;
            self.progress.bytes_done += len;
            self.report.bytes += len;
            self.since_report += len;
        } else {
            let f = fs::File::open(path).map_err(|e| io_err(path, e))?;
            let end = self.copy_regions(ino, path, &f, len)?;
            // A trailing hole: the size says it.
            if end < len {
                self.fs.set_size(ino, len)?;
            }
        }
        if self.since_report >= REPORT_EVERY {
            self.since_report = 0;
            (self.on_progress)(self.progress);
        }
        Ok(())
    }

    /// Copies the data regions of `f`; returns where the last one ends.
    fn copy_regions(&mut self, ino: u32, path: &Path, f: &fs::File, len: u64) -> Result<u64> {
        const PIECE: u64 = 32 << 20;
        let mut end = 0;
        for (data, hole) in crate::build::host::data_regions(f, len) {
            let mut at = data;
            while at < hole {
                let n = (hole - at).min(PIECE);
                self.fs
                    .write_from_file_with(ino, f, at, at, n, false)
                    .map_err(|e| match e {
                        // Reading the source or writing the image: name the source.
                        Error::Io { .. } => io_err(path, std::io::Error::other(e.to_string())),
                        e => e,
                    })?;
                at += n;
                end = at;
                self.progress.bytes_done += n;
                self.report.bytes += n;
                self.since_report += n;
                if n == PIECE {
                    (self.on_progress)(self.progress);
                }
            }
        }
        Ok(end)
    }
}

/// Builds `img` from the tree at `src`.
pub fn build_image(
    src: &Path,
    img: &Path,
    opts: &BuildOptions,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<BuildReport> {
    let started = Instant::now();
    let src_md = fs::metadata(src).map_err(|e| io_err(src, e))?;
    if !src_md.is_dir() {
        return Err(Error::NotDir {
            path: PathBytes(src.as_os_str().as_bytes().to_vec()),
        });
    }
    let guess_bs = u64::from(opts.block_size.unwrap_or(4096));
    let mut totals = Totals {
        entries: 0,
        bytes: 0,
        data_blocks: 0,
        dir_bytes: 0,
        xattr_blocks: 0,
    };
    let root = scan(src, Box::default(), 0, &mut totals, guess_bs)?;
    // Inodes: what the tree needs plus room to grow, and never fewer than mke2fs's
    // inode_ratio gives for the size (a kernel writing into the image later runs out of blocks
    // and inodes at about the same point, as on an image mke2fs made).
    let isz = u64::from(opts.inode_size.unwrap_or(256));
    let needed = (totals.entries + 64) * 5 / 4;
    let fit = {
        {
            let s0 = fitted_size(&totals, guess_bs).max(8 << 20);
            // Room for the inode tables of one inode per `ratio` bytes of the whole image.
            let ratio_for = |s: u64| match opts.inode_ratio {
                Some(r) => r.max(1024),
                None => {
                    let st = crate::mkfs::SizeType::for_size(s);
                    st.inode_ratio()
                        .max(u64::from(opts.block_size.unwrap_or(st.block_size())))
                }
            };
            let mut s = s0;
            for _ in 0..3 {
                let r = ratio_for(s);
                s = (s0 + s / r * isz).div_ceil(1 << 20) * (1 << 20);
            }
            s
        }
    };
    let size = opts.size.unwrap_or(fit);
    let inode_count = match opts.inode_count {
        Some(n) if u64::from(n) < totals.entries + 16 => {
            return Err(Error::InvalidArgument(format!(
                "{}: -N {n} inodes are too few: the tree has {} entries (and the filesystem reserves 11 inodes)",
                img.display(),
                totals.entries
            )));
        }
        Some(n) => Some(n),
        None => {
            let st = crate::mkfs::SizeType::for_size(size);
            let bs = u64::from(opts.block_size.unwrap_or(st.block_size()));
            let ratio = opts
                .inode_ratio
                .unwrap_or_else(|| st.inode_ratio().max(bs))
                .max(1024);
            let by_ratio = size / ratio;
            let want = if opts.size.is_none() || opts.inode_ratio.is_none() {
                needed
            } else {
                totals.entries + 16
            };
            if by_ratio >= want {
                None
            } else if opts.inode_ratio.is_some() {
                return Err(Error::InvalidArgument(format!(
                    "{}: -i {ratio} gives {by_ratio} inodes, too few for the tree's {} entries",
                    img.display(),
                    totals.entries
                )));
            } else {
                Some(want.min(u64::from(u32::MAX)) as u32)
            }
        }
    };
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(img)
        .map_err(|e| io_err(img, e))?;
    f.set_len(size).map_err(|e| io_err(img, e))?;
    let dev: Arc<dyn BlockDevice> = Arc::new(
        FileDevice::from_file(f, true, 512, FileDevice::DEFAULT_THREADS)
            .map_err(|e| io_err(img, e))?,
    );
    let mk = MkfsOptions {
        block_size: opts.block_size,
        size_bytes: size,
        label: opts.label.clone(),
        uuid: opts.uuid,
        hash_seed: opts.hash_seed,
        time: opts.source_date_epoch,
        inode_count,
        inode_ratio: opts.inode_ratio,
        inode_size: opts.inode_size,
        reserved_percent: opts.reserved_percent.unwrap_or(5),
        assume_zeroed: true,
        lazy_itable_init: false,
        ..MkfsOptions::default()
    };
    let made =
        mkfs(&*dev, &mk).map_err(|e| Error::InvalidArgument(format!("{}: {e}", img.display())))?;
    // A small metadata cache: the walk writes each block once, and metadata is written back as it
    // goes (WRITE_BACK_DIRTY), so a larger cache would only hold memory.
    let fs = Fs::open(
        dev,
        &OpenOptions {
            writable: true,
            background_writeback: false,
            use_journal: false,
            metadata_cache_blocks: 2 * WRITE_BACK_DIRTY,
            ..OpenOptions::default()
        },
    )?;
    let mut report = BuildReport {
        image_size: size,
        block_size: made.block_size,
        files: 0,
        dirs: 1,
        symlinks: 0,
        special: 0,
        hard_links: 0,
        bytes: 0,
    };
    let progress = Progress {
        entries_total: totals.entries,
        bytes_total: totals.bytes,
        ..Progress::default()
    };
    let clamp = opts.source_date_epoch;
    let copier = Copier::new(Arc::clone(fs.core.cache.device()))?;
    let mut b = Builder {
        fs: &fs,
        clamp,
        links: HashMap::new(),
        report: report.clone(),
        progress,
        on_progress,
        since_report: 0,
        copier,
    };
    let ScanKind::Dir(kids) = &root.kind else {
        return Err(Error::NotDir {
            path: PathBytes(Vec::new()),
        });
    };
    // The new filesystem has its own lost+found: a source one at the top is not copied.
    let kids: Vec<&Node> = kids
        .iter()
        .filter(|n| !(&*n.name == b"lost+found" && matches!(n.kind, ScanKind::Dir(_))))
        .collect();
    let written = (|| -> Result<()> {
        let entries = b.children_of(ROOT_INO, &kids, src)?;
        fs.fill_root(&entries)?;
        let root_attrs = attrs_of(&root.md, clamp);
        if !root.xattrs.is_empty() {
            fs.set_xattrs(ROOT_INO, &root.xattrs)?;
        }
        fs.set_owner_mode(ROOT_INO, root_attrs.uid, root_attrs.gid, root_attrs.perm)?;
        fs.set_times(
            ROOT_INO,
            Some(root_attrs.atime),
            Some(root_attrs.mtime),
            Some(root_attrs.ctime),
        )?;
        b.copier.finish()?;
        fs.sync()?;
        Ok(())
    })();
    if let Err(e) = written {
        // Nothing of a failed build is kept (the caller removes the image).
        drop(b);
        fs.discard();
        if let Error::NoSpace(what) = e {
            // Out of space at a given --size: say what the tree needs (the fitted size).
            return Err(Error::NoSpace(format!(
                "{what}: the tree needs an image of about {} MiB, --size gave {} MiB ({} MiB free after mkfs)",
                fit.div_ceil(1 << 20).max(size.div_ceil(1 << 20) + 1),
                size >> 20,
                (made.free_blocks * u64::from(made.block_size)) >> 20
            )));
        }
        return Err(e);
    }
    b.progress.entries_done = b.progress.entries_total;
    (b.on_progress)(b.progress);
    report = b.report;
    let _ = started;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext4kit_blockdev::{BlockDeviceExt, MemDevice};

    #[test]
    fn copy_threads_fill_the_runs_and_report_the_first_failure_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let bytes: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(&src, &bytes).unwrap();
        let mem = Arc::new(MemDevice::new(1024, 256));
        let dev: Arc<dyn BlockDevice> = mem.clone();
        // Two runs, out of order on the device, the second starting mid-block.
        let runs = vec![
            CopyRun {
                file_off: 0,
                dev_off: 100 << 10,
                len: 20_000,
            },
            CopyRun {
                file_off: 20_000,
                dev_off: 10_000,
                len: 20_000,
            },
        ];
        let mut c = Copier::new(Arc::clone(&dev)).unwrap();
        c.push(CopyJob {
            path: src.clone(),
            runs,
        })
        .unwrap();
        c.finish().unwrap();
        let mut got = vec![0u8; 256 << 10];
        mem.read_blocks(0, &mut got).unwrap();
        assert_eq!(&got[100 << 10..(100 << 10) + 20_000], &bytes[..20_000]);
        assert_eq!(&got[10_000..30_000], &bytes[20_000..]);
        assert!(
            got[..10_000].iter().all(|&b| b == 0) && got[30_000..100 << 10].iter().all(|&b| b == 0)
        );

        // A source that vanished: the build's error names it; later jobs are not needed.
        let gone = dir.path().join("gone");
        let mut c = Copier::new(dev).unwrap();
        c.push(CopyJob {
            path: gone.clone(),
            runs: vec![CopyRun {
                file_off: 0,
                dev_off: 0,
                len: 10,
            }],
        })
        .unwrap();
        let e = c.finish().unwrap_err().to_string();
        assert!(e.contains(&gone.display().to_string()), "{e}");
        // Shorter than scanned: named too.
        let mut c = Copier::new(Arc::clone(&(mem as Arc<dyn BlockDevice>))).unwrap();
        c.push(CopyJob {
            path: src.clone(),
            runs: vec![CopyRun {
                file_off: 0,
                dev_off: 0,
                len: 50_000,
            }],
        })
        .unwrap();
        let e = c.finish().unwrap_err().to_string();
        assert!(e.contains(&src.display().to_string()), "{e}");
    }
}
