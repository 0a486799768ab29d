//! Opening an image ([`Fs::open`], [`Fs::open_path`]): what the kernel's `ext4_fill_super`
//! does before it can read:
//! 1. reads and validates the superblock (magic, checksum, geometry) and refuses unknown or
//!    unsupported incompat features, naming them (a writable open also refuses the features
//!    the write side does not handle);
//! 2. checks that the device holds the whole filesystem;
//! 3. loads every group descriptor, verifying its checksum (crc16 or crc32c) and its locations
//!    ([`Core::load`]);
//! 4. if the journal needs recovery, replays it **in memory** ([`crate::journal::replay()`]) and
//!    starts again from 1 on an overlay device that serves the replayed blocks; the image is
//!    never written. A writable open replays it **onto the image** instead, when asked to
//!    ([`OpenOptions::recover_journal`]; `journal::commit::recover`), and refuses otherwise;
//! 5. reads the root inode (it must be a directory) and starts the page cache, with [`Core`] as
//!    its [`ext4kit_pagecache::BlockMapper`];
//! 6. writing: attaches the write state ([`crate::alloc`]) and the journal writer, and cleans
//!    up the orphans a previous writer left ([`crate::orphan`]).
//!
//! This is the operations layer: it calls the journal, the allocator and the orphan list, so
//! that [`crate::fs`] (the core every structure reads) needs none of them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use ext4kit_blockdev::BlockDevice;
use ext4kit_format::{IncompatFeatures, Structure, Superblock};
use ext4kit_pagecache::{Config, PageCache};
use parking_lot::Mutex;

use crate::alloc::MetaState;
use crate::error::{Corruption, Error, Result, Unsupported};
use crate::fs::{Core, Fs, JournalMode, LastClone, OpenOptions, ROOT_INO, WriteState};
use crate::journal::OverlayDevice;

/// [`Core::load_from`], with the write state attached when opening for writing.
fn load(
    dev: Arc<dyn BlockDevice>,
    sb: Superblock,
    opts: &OpenOptions,
    backup: Option<u64>,
) -> Result<Core> {
    let mut core = Core::load_from(dev, sb, opts, backup)?;
    if opts.writable {
        core.write = Some(WriteState {
            meta: Mutex::new(MetaState::new(&core.sb, &core.groups)),
            open_mappings: Mutex::new(HashMap::new()),
            journal: None,
        });
    }
    Ok(core)
}

impl Fs {
    /// Opens the filesystem on `dev` (see the module docs for what is checked).
    pub fn open(dev: Arc<dyn BlockDevice>, opts: &OpenOptions) -> Result<Fs> {
        let mut notices = Vec::new();
        let salvage = opts.salvage && !opts.writable;
        if opts.writable && opts.superblock.is_some() {
            return Err(Error::InvalidArgument(
                "a backup superblock (-b/--superblock) is for reading only; repair the image with `e2fsck -b N -fy` before writing".into(),
            ));
        }
        let chosen = match opts.superblock {
            Some(b) => crate::salvage::at_block(&dev, b, salvage)?,
            None if salvage => crate::salvage::choose(&dev, true)?,
            None => crate::salvage::Chosen {
                sb: Core::read_superblock(&dev)?,
                backup_at: None,
                warnings: Vec::new(),
            },
        };
        let mut sb = chosen.sb;
        let backup = chosen.backup_at;
        let mut early_warnings = chosen.warnings;
        Core::check_features(&sb, opts.writable)?;
        if opts.writable {
            check_writable(&sb)?;
            if sb.has_incompat(IncompatFeatures::RECOVER) {
                if !opts.recover_journal {
                    return Err(Error::ReadOnly(
                        "the journal needs recovery; replay it first (OpenOptions::recover_journal, \
                         `ext4kit --replay-journal`, a kernel mount, or `e2fsck -E journal_only`), then write"
                            .into(),
                    ));
                }
                let as_on_disk = Core::load(
                    Arc::clone(&dev),
                    sb,
                    &OpenOptions {
                        writable: false,
                        ..opts.clone()
                    },
                )?;
                let report = crate::journal::commit::recover(&as_on_disk)?;
                drop(as_on_disk);
                notices.push(report.to_string());
                sb = Core::read_superblock(&dev)?;
                Core::check_features(&sb, opts.writable)?;
                check_writable(&sb)?;
            }
        }
        let mut core = match load(Arc::clone(&dev), sb.clone(), opts, backup) {
            // Descriptors that cannot be read as they are: e2fsck then tries the backup
            // superblock and the descriptors after it; so does a salvaging read.
            Err(e)
                if salvage
                    && backup.is_none()
                    && e.structure() == Some(Structure::GroupDescriptor) =>
            {
                let bs = u64::from(sb.block_size());
                let at = bs * 8 + u64::from(bs == 1024);
                let Ok(c) = crate::salvage::at_block(&dev, at, true) else {
                    return Err(e);
                };
                let Ok(core) = load(Arc::clone(&dev), c.sb, opts, c.backup_at) else {
                    return Err(e);
                };
                early_warnings.extend(c.warnings);
                early_warnings.push(format!(
                    "group descriptors: {e} (reading the backup superblock and descriptors at block {at})"
                ));
                core
            }
            r => r?,
        };
        let mut replay = None;
        let mut data_dev = dev;
        if core.sb.has_incompat(IncompatFeatures::RECOVER) {
            match opts.journal {
                JournalMode::Replay => {
                    let (blocks, report) = crate::journal::replay(&core)?;
                    if report.fast_commits_pending {
                        // Replaying only the full transactions would show a tree older than
                        // the one the kernel left.
                        return Err(Error::unsupported(Unsupported::Other(
                            "journal holds fast-commit blocks ext4kit cannot replay yet: run `e2fsck -fy` on the image or mount it once \
                             (--no-replay reads the image as it is on disk, without them)"
                                .into(),
                        )));
                    }
                    let overlay: Arc<dyn BlockDevice> = Arc::new(OverlayDevice::new(
                        Arc::clone(&data_dev),
                        u64::from(core.block_size),
                        blocks,
                    ));
                    let sb = if salvage {
                        let (sb, w) =
                            crate::salvage::parse(&Core::superblock_bytes(&overlay)?, true)?;
                        early_warnings.extend(w);
                        sb
                    } else {
                        Core::read_superblock(&overlay)?
                    };
                    Core::check_features(&sb, opts.writable)?;
                    core = load(Arc::clone(&overlay), sb, opts, None)?;
                    data_dev = overlay;
                    notices.push(report.to_string());
                    replay = Some(Arc::new(report));
                }
                JournalMode::Ignore => notices.push(
                    "journal needs recovery; not replayed (reading the image as it is on disk)"
                        .into(),
                ),
            }
        }
        if opts.writable && opts.use_journal {
            if let Some(jw) = crate::journal::commit::JournalWriter::open(&core)? {
                if let Some(w) = core.write.as_mut() {
                    w.journal = Some(Mutex::new(jw));
                    w.meta.get_mut().deferred_frees = Some(Vec::new());
                }
            }
        }
        {
            let mut w = core.warnings.lock();
            for (i, line) in early_warnings.into_iter().enumerate() {
                if !w.iter().any(|(_, l)| *l == line) {
                    let at = i.min(w.len());
                    w.insert(at, (String::new(), line));
                }
            }
        }
        let root = core.read_inode(ROOT_INO)?;
        if !root.is_dir() {
            return Err(Error::corrupt(
                Structure::Inode,
                Corruption::BadFileType { mode: root.mode() },
            )
            .with_inode(ROOT_INO));
        }
        let bs = core.block_size as usize;
        let page_size = opts.page_size.max(bs).max(4096);
        let core = Arc::new(core);
        let mapper: Arc<dyn ext4kit_pagecache::BlockMapper> = Arc::clone(&core) as _;
        let mut cfg = Config::new(page_size, bs);
        if opts.writable && opts.background_writeback {
            cfg.dirty_limit_bytes = Some(16 << 20);
        }
        // Clean pages beyond this are evicted (their buffers recycled). Reading only, the limit
        // stays under the page buffer pool (64 MiB), so a long read recycles every buffer
        // instead of faulting in fresh memory (`cat` of 1 GiB: 0.30 s -> 0.17 s); nothing in
        // one read-only pass gains from keeping more.
        cfg.cache_limit_bytes = Some(if opts.writable { 256 << 20 } else { 32 << 20 });
        // Only a geometry the cache cannot hold (or a thread it cannot start) fails here.
        let pages = PageCache::new(cfg, data_dev, mapper)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let mut fs = Fs {
            last: Arc::new(LastClone {
                core: Arc::clone(&core),
                quiet: AtomicBool::new(false),
            }),
            core,
            pages,
            replay,
            notices,
            _lock: None,
        };
        if opts.writable {
            // What a previous writer left on the orphan list is freed (or truncated) now.
            let n = match crate::orphan::clean_at_open(&fs) {
                Ok(n) => n,
                Err(e) => {
                    fs.discard();
                    return Err(e);
                }
            };
            if n > 0 {
                fs.notices.push(format!(
                    "cleaned up {n} orphan inode(s) left by a previous writer"
                ));
            }
        }
        Ok(fs)
    }

    /// Opens the image file (or block device) at `path`.
    ///
    /// The file is locked for the life of the `Fs` (exclusive when writing, shared when
    /// reading; refused or waited for, see [`OpenOptions::wait_for_lock`]), and a writing open
    /// refuses a file a kernel uses (loop-attached, or a mounted block device): see
    /// [`check_not_in_use`](crate::check_not_in_use). Opens of one file in one process share
    /// one lock.
    pub fn open_path(path: &Path, opts: &OpenOptions) -> Result<Fs> {
        let (file, lock) = crate::image_lock::open_locked(path, opts.writable, opts.wait_for_lock)?;
        let (dev, _why_not_uring) =
            ext4kit_blockdev::open_file_device_from(file, opts.writable, 1024).map_err(|e| {
                Error::Open {
                    path: path.display().to_string(),
                    message: e.to_string(),
                    errno: e.raw_os_error().unwrap_or(libc::EIO),
                }
            })?;
        let mut fs = Fs::open(dev, opts)?;
        fs._lock = Some(lock);
        Ok(fs)
    }
}

/// Features the writer supports: refuse the others with their names.
pub(crate) fn check_writable(sb: &ext4kit_format::Superblock) -> Result<()> {
    use ext4kit_format::IncompatFeatures as I;
    use ext4kit_format::RoCompatFeatures as R;
    let mut bad: Vec<String> = Vec::new();
    let inc = sb.feature_incompat();
    for (f, name) in [
        (I::INLINE_DATA, "inline_data"),
        (I::ENCRYPT, "encrypt"),
        (I::CASEFOLD, "casefold"),
        (I::EA_INODE, "ea_inode"),
        (I::MMP, "mmp"),
        (I::LARGEDIR, "large_dir"),
        (I::META_BG, "meta_bg"),
    ] {
        if inc.contains(f) {
            bad.push(name.to_string());
        }
    }
    let ro = sb.feature_ro_compat();
    for (f, name) in [
        (R::BIGALLOC, "bigalloc"),
        (R::QUOTA, "quota"),
        (R::READONLY, "read-only"),
    ] {
        if ro.contains(f) {
            bad.push(name.to_string());
        }
    }
    if !inc.contains(I::EXTENTS) {
        bad.push("no extents (ext2/ext3 indirect block maps)".into());
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::unsupported(crate::error::Unsupported::Other(
            format!(
                "cannot write images with {}; ext4kit opens them read-only",
                bad.join(", ")
            ),
        )))
    }
}
