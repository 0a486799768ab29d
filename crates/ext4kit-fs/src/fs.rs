//! The core every structure reads: [`Fs`] (the handle), [`Core`] (superblock, group
//! descriptors, the metadata cache, and — writing — the state of the write side), and
//! [`OpenOptions`]. Opening itself is `open.rs`'s.
//!
//! [`Core`] is behind an `Arc` shared by the page cache (as its
//! [`ext4kit_pagecache::BlockMapper`], see [`crate::file::mapper`]) and [`Fs`]. Everything in
//! it is immutable after open except the caches and the write state, so readers on many
//! threads need no lock of their own.
//!
//! Layering: this module calls no code of the structures; it only names the state types they
//! keep in [`Core`] (the metadata state of [`crate::alloc`], the journal writer, the orphan
//! list) and the replay report.

use std::collections::HashMap;
use std::sync::Arc;

use ext4kit_blockdev::{BlockDevice, BlockDeviceExt};
use ext4kit_format::group_desc::{GroupDesc, GroupFlags};
use ext4kit_format::superblock::{SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use ext4kit_format::{IncompatFeatures, RoCompatFeatures, Structure, Superblock};
use ext4kit_pagecache::PageCache;
use parking_lot::Mutex;

use crate::error::{Corruption, Error, Result, Unsupported};
use crate::journal::ReplayReport;
use crate::metacache::MetaCache;

/// Inode number of the root directory.
pub const ROOT_INO: u32 = 2;

/// What to do with a journal that needs recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JournalMode {
    /// Replay it in memory (the image is not written). The default.
    #[default]
    Replay,
    /// Read the image as it is on disk, ignoring the journal (what `debugfs` shows).
    Ignore,
}

/// How to open an image.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Open for writing (refused, with the reason, for images that use features the write side
    /// does not handle, and for images whose journal needs recovery unless `recover_journal`).
    pub writable: bool,
    /// When writing an image whose journal needs recovery: replay it onto the image first (the
    /// blocks written home, the journal emptied, `needs_recovery` cleared), as a kernel mount
    /// does, and say so in [`Fs::notices`]. Off (the default), such an image is refused.
    pub recover_journal: bool,
    /// When writing an image with an internal journal: commit every sync through it as a jbd2
    /// transaction (crash-safe; see `Fs::sync`). Off, metadata is written
    /// in place (image building turns it off: a crash in the middle of building leaves a
    /// half-built image anyway). Images without a journal or with an external one are always
    /// written in place.
    pub use_journal: bool,
    /// What to do with a journal that needs recovery.
    pub journal: JournalMode,
    /// Most metadata blocks kept in memory.
    pub metadata_cache_blocks: usize,
    /// Page size of the file data cache (raised to the block size if smaller).
    pub page_size: usize,
    /// When writing: write file data back in the background (a flusher thread) once enough of
    /// it is dirty. Off, data is written back only by `sync`/`flush_data`, from the caller's
    /// thread — allocation then depends on nothing but the order of operations (reproducible
    /// images).
    pub background_writeback: bool,
    /// Reading a damaged image (read-only opens only): damage that does not stop reading — a
    /// group descriptor checksum mismatch, free/reserved counts beyond the totals, an
    /// unusable primary superblock (a backup in group 1 is used, as e2fsck does), a bad htree
    /// index (the directory's blocks are read in order), an unreadable directory block (left
    /// out) — is reported once per structure in [`Fs::warnings`] instead of failing. Off (the
    /// default), such damage is an error.
    pub salvage: bool,
    /// Read the superblock at this block (in filesystem blocks, the block size found by
    /// trying 1 KiB to 64 KiB), as `e2fsck -b`; its group descriptors are the backup copy that
    /// follows it. Reading only.
    pub superblock: Option<u64>,
    /// [`Fs::open_path`]: when another process holds the image's lock, wait for it instead of
    /// refusing.
    pub wait_for_lock: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            writable: false,
            recover_journal: false,
            use_journal: true,
            journal: JournalMode::Replay,
            metadata_cache_blocks: 8192,
            page_size: 4096,
            background_writeback: true,
            salvage: false,
            superblock: None,
            wait_for_lock: false,
        }
    }
}

/// The state every operation reads: superblock, group descriptors, metadata cache.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) sb: Superblock,
    pub(crate) block_size: u32,
    pub(crate) groups: Vec<GroupDesc>,
    pub(crate) cache: MetaCache,
    /// The metadata_csum seed, when the filesystem has metadata_csum.
    pub(crate) csum_seed: Option<u32>,
    pub(crate) ea_inode: bool,
    /// The write side, when the filesystem is open for writing.
    pub(crate) write: Option<WriteState>,
    /// Unlinked inodes still in use (see [`crate::orphan`]).
    pub(crate) orphans: Mutex<crate::orphan::Orphans>,
    /// Damage tolerated while reading (see [`OpenOptions::salvage`]).
    pub(crate) salvage: bool,
    /// What was found damaged and read anyway, one line per structure.
    pub(crate) warnings: Mutex<Vec<(String, String)>>,
    /// The superblock used, when it is a backup (its group descriptors follow it).
    pub(crate) backup_sb: Option<u64>,
}

/// The write side of an open filesystem.
#[derive(Debug)]
pub(crate) struct WriteState {
    pub(crate) meta: Mutex<crate::alloc::MetaState>,
    /// Page caches of files written since the last sync (kept alive until it).
    pub(crate) open_mappings: Mutex<HashMap<u32, ext4kit_pagecache::Mapping>>,
    /// The journal writer, when syncs commit through the journal (lock order: journal, meta).
    pub(crate) journal: Option<Mutex<crate::journal::commit::JournalWriter>>,
}

/// Incompat features this reader refuses even though they are known.
const REFUSED_INCOMPAT: IncompatFeatures = IncompatFeatures(
    IncompatFeatures::COMPRESSION.0 | IncompatFeatures::JOURNAL_DEV.0 | IncompatFeatures::DIRDATA.0,
);

impl Core {
    /// The primary superblock's bytes.
    pub(crate) fn superblock_bytes(dev: &Arc<dyn BlockDevice>) -> Result<Vec<u8>> {
        let dev_bs = dev.geometry().block_size as usize;
        if dev_bs == 0 || dev_bs > 65536 || !dev_bs.is_power_of_two() {
            return Err(Error::InvalidArgument(format!(
                "device block size {dev_bs} is not supported"
            )));
        }
        let end = SUPERBLOCK_OFFSET as usize + SUPERBLOCK_SIZE;
        let len = end.div_ceil(dev_bs) * dev_bs;
        let have = dev.geometry().size_bytes();
        if have < end as u64 {
            return Err(Error::corrupt(
                Structure::Superblock,
                Corruption::Truncated {
                    needed: end as u64,
                    device: have,
                },
            ));
        }
        let mut buf = vec![0u8; len];
        dev.read_blocks(0, &mut buf)
            .map_err(|e| Error::io(e, None))?;
        Ok(buf[SUPERBLOCK_OFFSET as usize..end].to_vec())
    }

    /// Reads the superblock from `dev`.
    pub(crate) fn read_superblock(dev: &Arc<dyn BlockDevice>) -> Result<Superblock> {
        Ok(Superblock::parse(&Core::superblock_bytes(dev)?)?)
    }

    /// Checks the features of `sb` (unknown and refused incompat bits; unknown ro_compat bits
    /// when writing).
    pub(crate) fn check_features(sb: &Superblock, writable: bool) -> Result<()> {
        sb.check_features(writable)?;
        let refused = IncompatFeatures(sb.feature_incompat().0 & REFUSED_INCOMPAT.0);
        if refused.0 != 0 {
            return Err(Error::unsupported(Unsupported::Features(refused.names())));
        }
        Ok(())
    }

    /// Loads the group descriptors and builds the core over `dev`.
    pub(crate) fn load(
        dev: Arc<dyn BlockDevice>,
        sb: Superblock,
        opts: &OpenOptions,
    ) -> Result<Core> {
        Core::load_from(dev, sb, opts, None)
    }

    /// [`Core::load`], reading the group descriptors that follow the backup superblock at
    /// block `backup` when given (e2fsck's `ext2fs_descriptor_block_loc2` for a backup:
    /// the copy after that superblock, or group 1's copy of each meta_bg block).
    pub(crate) fn load_from(
        dev: Arc<dyn BlockDevice>,
        sb: Superblock,
        opts: &OpenOptions,
        backup: Option<u64>,
    ) -> Result<Core> {
        let salvage = opts.salvage && !opts.writable;
        let mut warnings = Vec::new();
        let block_size = sb.block_size();
        let dev_bs = dev.geometry().block_size;
        if block_size % dev_bs != 0 {
            return Err(Error::InvalidArgument(format!(
                "device block size {dev_bs} does not divide the filesystem block size {block_size}"
            )));
        }
        let needed = sb.blocks_count().saturating_mul(u64::from(block_size));
        let have = dev.geometry().size_bytes();
        if needed > have {
            return Err(Error::corrupt(
                Structure::Superblock,
                Corruption::Truncated {
                    needed,
                    device: have,
                },
            ));
        }
        let csum_seed = sb.has_metadata_csum().then(|| sb.csum_seed());
        let cache = MetaCache::new(dev, block_size as usize, opts.metadata_cache_blocks);
        let desc_size = usize::from(sb.desc_size());
        let count = sb.group_count();
        let mut groups = Vec::with_capacity(count as usize);
        for g in 0..count {
            let (index, off) = sb.group_desc_position(g);
            let block = match backup {
                Some(at) => backup_desc_block(&sb, at, index),
                None => sb.group_desc_block_location(index),
            };
            let ctx = |e: Error| e.with_group(g).with_block(block);
            if block >= sb.blocks_count() {
                return Err(ctx(Error::corrupt(
                    Structure::GroupDescriptor,
                    Corruption::BlockOutOfRange { block },
                )));
            }
            let data = cache.get(block).map_err(ctx)?;
            let bytes = data.read();
            let desc = bytes
                .get(off..)
                .ok_or_else(|| {
                    ctx(Error::corrupt(
                        Structure::GroupDescriptor,
                        Corruption::BlockOutOfRange { block },
                    ))
                })
                .and_then(|b| GroupDesc::parse(b, desc_size).map_err(|e| ctx(e.into())))?;
            let mut desc = desc;
            if backup.is_some() {
                // A backup copy is as old as the last resize or mkfs: its uninit flags and
                // unused-inode counts may hide inodes in use since, so (as e2fsck does when
                // opening through a backup) they are cleared, and its checksums are not held
                // against it.
                let mut f = desc.flags();
                f.remove(GroupFlags::INODE_UNINIT);
                f.remove(GroupFlags::BLOCK_UNINIT);
                desc.set_flags(f);
                let _ = desc.set_itable_unused(0);
            } else if let Err(e) = desc.verify_checksum(&sb, g) {
                if !salvage {
                    return Err(ctx(e.into()));
                }
                let computed = desc.compute_checksum(&sb, g).unwrap_or(0);
                warnings.push(format!(
                    "group {g} descriptor: checksum mismatch: stored {:#06x}, computed {computed:#06x} (reading anyway)",
                    desc.checksum()
                ));
            }
            desc.validate(&sb, g).map_err(|e| ctx(e.into()))?;
            groups.push(desc);
        }
        Ok(Core {
            block_size,
            groups,
            cache,
            csum_seed,
            ea_inode: sb.has_incompat(IncompatFeatures::EA_INODE),
            write: None,
            sb,
            orphans: Mutex::new(crate::orphan::Orphans::default()),
            salvage,
            warnings: Mutex::new(warnings.into_iter().map(|l| (String::new(), l)).collect()),
            backup_sb: backup,
        })
    }

    /// Records a warning about damage read past, once per `key` (one damaged structure).
    pub(crate) fn warn_once(&self, key: String, line: String) {
        let mut w = self.warnings.lock();
        if !w.iter().any(|(k, _)| *k == key) {
            w.push((key, line));
        }
    }

    /// Checks that `block` (and `len - 1` blocks after it) lie inside the filesystem.
    pub(crate) fn check_range(&self, structure: Structure, block: u64, len: u64) -> Result<()> {
        let first = u64::from(self.sb.first_data_block());
        let ok = block >= first.max(1)
            && block
                .checked_add(len)
                .is_some_and(|end| end <= self.sb.blocks_count());
        if ok {
            Ok(())
        } else {
            Err(Error::corrupt(
                structure,
                Corruption::BlockOutOfRange { block },
            ))
        }
    }

    /// The write state, or a read-only error naming `what`.
    pub(crate) fn writer(&self, what: &str) -> Result<&WriteState> {
        self.write
            .as_ref()
            .ok_or_else(|| Error::ReadOnly(format!("{what}: the image is open read-only")))
    }

    /// `true` if the filesystem has the given ro_compat feature.
    pub(crate) fn has_ro(&self, f: RoCompatFeatures) -> bool {
        self.sb.has_ro_compat(f)
    }
}

/// An open ext2/ext3/ext4 image.
///
/// `Fs` is `Send + Sync`; every method takes `&self`. Clones share one open image. Changes
/// reach a writable image only with [`Fs::sync`] or [`Fs::close`] (which syncs and returns the
/// sync's error); dropping the last clone does not sync — debug builds warn when changes are
/// lost that way, [`Fs::discard`] gives them up on purpose.
#[derive(Debug, Clone)]
pub struct Fs {
    pub(crate) core: Arc<Core>,
    pub(crate) pages: PageCache,
    pub(crate) replay: Option<Arc<ReplayReport>>,
    pub(crate) notices: Vec<String>,
    /// The image file's lock ([`Fs::open_path`]), held as long as any clone lives.
    pub(crate) _lock: Option<Arc<crate::image_lock::ImageLock>>,
    /// Shared by the clones; dropped with the last one (see [`LastClone`]).
    pub(crate) last: Arc<LastClone>,
}

/// What the clones of one [`Fs`] share to notice that the last one goes: in debug builds,
/// dropping a writable image whose changes were never synced prints a warning (`sync.rs`),
/// unless they were given up on purpose ([`Fs::discard`], or a [`Fs::close`] whose sync
/// failed and said so).
#[derive(Debug)]
pub(crate) struct LastClone {
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    pub(crate) core: Arc<Core>,
    /// Unsynced changes are dropped on purpose.
    pub(crate) quiet: std::sync::atomic::AtomicBool,
}

impl Fs {
    /// Whether the image is open for writing.
    pub fn is_writable(&self) -> bool {
        self.core.write.is_some()
    }

    /// The superblock (after journal replay, if any).
    pub fn superblock(&self) -> &Superblock {
        &self.core.sb
    }

    /// The block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.core.block_size
    }

    /// The group descriptors, in group order.
    pub fn group_descs(&self) -> &[GroupDesc] {
        &self.core.groups
    }

    /// What the in-memory journal replay did, if the journal needed recovery.
    pub fn journal_replay(&self) -> Option<&ReplayReport> {
        self.replay.as_deref()
    }

    /// Things worth telling a user about how the image was opened (journal replayed or
    /// ignored), one sentence each.
    pub fn notices(&self) -> &[String] {
        &self.notices
    }

    /// Damage found and read past so far (with [`OpenOptions::salvage`]), one line per
    /// damaged structure, in the order found. Grows as reading meets more (a directory whose
    /// index is bad is named when it is first read).
    pub fn warnings(&self) -> Vec<String> {
        self.core
            .warnings
            .lock()
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// The block of the backup superblock this image was opened through, if not the primary.
    pub fn backup_superblock(&self) -> Option<u64> {
        self.core.backup_sb
    }

    /// A copy of filesystem block `block`, read through the metadata cache (after journal
    /// replay).
    pub fn read_block(&self, block: u64) -> Result<Vec<u8>> {
        self.core.check_range(Structure::Superblock, block, 1)?;
        Ok(self.core.cache.get(block)?.to_vec())
    }
}

/// Where descriptor block `index` is when the superblock used is the backup at block `at`.
fn backup_desc_block(sb: &Superblock, at: u64, index: u32) -> u64 {
    if !sb.has_incompat(IncompatFeatures::META_BG) || index < sb.first_meta_bg() {
        return at + 1 + u64::from(index);
    }
    // meta_bg: each descriptor block is kept in the first, second and last group of its meta
    // group; a backup superblock reads the second group's copy.
    let group = index.saturating_mul(sb.desc_per_block()).saturating_add(1);
    if group >= sb.group_count() {
        return sb.group_desc_block_location(index);
    }
    sb.group_first_block(group) + u64::from(sb.group_has_superblock(group))
}
