//! `mkfs`: creates a fresh, empty ext4 filesystem on a [`BlockDevice`].
//!
//! This module owns everything a new filesystem needs before anything else
//! can open it: the geometry (block size, groups, inodes, journal size, the
//! way `mke2fs` 1.47 with the stock `mke2fs.conf` chooses them), the placement
//! of every group's bitmaps and inode table (flex_bg packing as `mke2fs` does
//! it), the superblock and its backups, the group descriptor table and its
//! backups, the bitmaps, the reserved inodes, the root directory, `lost+found`
//! and an empty jbd2 journal in inode 8. It does not own reading or changing
//! a filesystem afterwards.
//!
//! The result has the features `mkfs.ext4` 1.47 enables by default, except
//! `resize_inode` (no reserved GDT blocks, no inode 7): `has_journal ext_attr
//! dir_index filetype extent 64bit flex_bg sparse_super large_file huge_file
//! dir_nlink extra_isize metadata_csum`, 256-byte inodes, half_md4 directory
//! hashes with the signed-char flag (what `mke2fs` sets on x86; we set it on
//! every host so that images do not depend on the host), and a journal with no
//! jbd2 feature bits (as `mke2fs` leaves it; the kernel turns on checksums at
//! mount). Groups holding nothing but their own superblock backup are left
//! `BLOCK_UNINIT`, groups without used inodes `INODE_UNINIT`, as `mke2fs`
//! 1.47.0's lazy initialisation does, which keeps a 16 TiB filesystem to a few
//! hundred megabytes of writes (almost all descriptor-table copies).
//!
//! The layout follows `mkfs.ext4 -O ^resize_inode` (e2fsprogs 1.47.0) block for
//! block: with the same UUID, hash seed, label and time, `lazy_itable_init:
//! false` against `-E lazy_itable_init=0` (or `assume_zeroed: true` against
//! `-E assume_storage_prezeroed=1`), the images differ only in
//! `s_kbytes_written` and the superblock checksums (checked from 8 MiB to
//! 16 TiB). Where we part from `mke2fs` on purpose:
//!
//! * below 2048 blocks `mke2fs` silently makes a filesystem without a journal;
//!   we refuse ([`MkfsError::TooSmall`]) — the journal is not optional here;
//! * where `mke2fs` would switch to `meta_bg` (descriptor tables over 3/4 of a
//!   group: above 768 GiB with 1 KiB blocks, 12 TiB with 2 KiB, 192 TiB with
//!   4 KiB) we refuse ([`MkfsError::TooLarge`]);
//! * the signed-hash flag is set on every host, not only where `char` is signed;
//! * groups holding only a superblock backup stay `BLOCK_UNINIT` (1.47.0;
//!   1.47.1 and later initialise their bitmaps instead; both are valid).
//!
//! Given the same options, including `uuid`, `hash_seed` and `time`, two runs
//! write identical bytes.
//!
//! ```no_run
//! use ext4kit_blockdev::FileDevice;
//! use ext4kit_fs::mkfs::{mkfs, MkfsOptions};
//!
//! let dev = FileDevice::open("disk.img".as_ref(), true, 4096)?;
//! let report = mkfs(&dev, &MkfsOptions { label: Some("data".into()), ..MkfsOptions::default() })?;
//! println!("{} blocks of {} bytes, {} inodes", report.blocks_count, report.block_size, report.inodes_count);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod blockset;
mod build;
mod geometry;
mod tables;
mod writer;

use std::time::{SystemTime, UNIX_EPOCH};

use ext4kit_blockdev::{BlockDevice, BlockDeviceExt, IoError};
use ext4kit_format::FormatError;
use ext4kit_format::inode::EXTRA_TIMESTAMP_MAX;

pub use geometry::SizeType;

/// What to create. `MkfsOptions::default()` is `mkfs.ext4` with no options
/// on the whole device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MkfsOptions {
    /// Block size: 1024, 2048 or 4096; `None` = what `mke2fs` picks for the
    /// size (1024 below 512 MiB, else 4096; never below the device's block size).
    pub block_size: Option<u32>,
    /// Filesystem size in bytes; 0 = the whole device. Rounded down to whole
    /// blocks, and to whole 4 KiB pages for smaller blocks, as `mke2fs` does
    /// with a device size.
    pub size_bytes: u64,
    /// Volume label, at most 16 bytes.
    pub label: Option<String>,
    /// Filesystem UUID; `None` = random (version 4).
    pub uuid: Option<[u8; 16]>,
    /// Directory hash seed (raw bytes, as `mke2fs -E hash_seed=UUID`);
    /// `None` = random.
    pub hash_seed: Option<[u8; 16]>,
    /// Creation time in seconds since the epoch (e.g. `SOURCE_DATE_EPOCH`),
    /// used for every timestamp; `None` = now.
    pub time: Option<i64>,
    /// Bytes per inode; `None` = the `mke2fs.conf` value for the size
    /// (4 KiB below 512 MiB, 16 KiB below 4 TiB, 32 KiB below 16 TiB, else 64 KiB).
    pub inode_ratio: Option<u64>,
    /// Total inodes (rounded up to fill inode table blocks); overrides `inode_ratio`.
    pub inode_count: Option<u32>,
    /// Inode record size (`mke2fs -I`): 256, 512, 1024, ... up to the block size;
    /// `None` = 256.
    pub inode_size: Option<u16>,
    /// Journal size in blocks (1024..=10240000, at most half the free
    /// blocks); `None` = `ext2fs_default_journal_size`.
    pub journal_blocks: Option<u32>,
    /// Blocks reserved for root, in percent (0..=50).
    pub reserved_percent: u8,
    /// The device reads as zeros (a new sparse file): write no zero blocks,
    /// and mark every inode table zeroed.
    pub assume_zeroed: bool,
    /// Zero only the used part of the inode tables and leave the rest to the
    /// kernel's lazy init (`mke2fs`'s default); `false` zeroes every inode
    /// table now and marks them zeroed (`-E lazy_itable_init=0`).
    pub lazy_itable_init: bool,
}

impl Default for MkfsOptions {
    fn default() -> MkfsOptions {
        MkfsOptions {
            block_size: None,
            size_bytes: 0,
            label: None,
            uuid: None,
            hash_seed: None,
            time: None,
            inode_ratio: None,
            inode_count: None,
            inode_size: None,
            journal_blocks: None,
            reserved_percent: 5,
            assume_zeroed: false,
            lazy_itable_init: true,
        }
    }
}

/// What was created.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MkfsReport {
    /// Block size in bytes.
    pub block_size: u32,
    /// Blocks in the filesystem.
    pub blocks_count: u64,
    /// Blocks reserved for root.
    pub reserved_blocks: u64,
    /// Free blocks after mkfs.
    pub free_blocks: u64,
    /// First data block (1 with 1 KiB blocks, else 0).
    pub first_data_block: u32,
    /// Blocks per group.
    pub blocks_per_group: u32,
    /// Block groups.
    pub group_count: u32,
    /// Groups per flex group.
    pub groups_per_flex: u32,
    /// Blocks of each copy of the group descriptor table.
    pub gdt_blocks: u32,
    /// Groups holding a superblock backup (besides group 0).
    pub backup_groups: Vec<u32>,
    /// Inodes in the filesystem.
    pub inodes_count: u32,
    /// Inodes per group.
    pub inodes_per_group: u32,
    /// Inode record size.
    pub inode_size: u16,
    /// Inode table blocks per group.
    pub inode_table_blocks: u32,
    /// Free inodes after mkfs.
    pub free_inodes: u32,
    /// Blocks taken by superblocks, descriptor tables, bitmaps, inode tables,
    /// the journal and the first data block (`s_overhead_clusters`).
    pub overhead_blocks: u64,
    /// Journal inode number (8).
    pub journal_inode: u32,
    /// Journal size in blocks.
    pub journal_blocks: u32,
    /// The journal's extents as (first physical block, length).
    pub journal_extents: Vec<(u64, u32)>,
    /// Root directory inode (2).
    pub root_inode: u32,
    /// `lost+found` inode (11).
    pub lost_found_inode: u32,
    /// `lost+found` size in blocks.
    pub lost_found_blocks: u32,
    /// Filesystem UUID.
    pub uuid: [u8; 16],
    /// Directory hash seed.
    pub hash_seed: [u8; 16],
    /// Timestamp written everywhere (seconds).
    pub time: i64,
    /// The `mke2fs.conf` usage type the size fell in.
    pub size_type: SizeType,
    /// Always `false`: no `resize_inode` (no reserved GDT blocks for online
    /// growth); the other `mkfs.ext4` 1.47 default features are all set.
    pub resize_inode: bool,
    /// Bytes written to the device (metadata and zeroing).
    pub bytes_written: u64,
}

/// Why mkfs failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MkfsError {
    /// The block size is not 1024, 2048 or 4096.
    #[error("unsupported block size {0}: ext4kit mkfs makes 1024, 2048 or 4096-byte blocks")]
    UnsupportedBlockSize(u32),
    /// The device's IO unit cannot carry this filesystem.
    #[error("device block size {device} is unusable with {fs}-byte filesystem blocks")]
    DeviceBlockSize {
        /// Device block size.
        device: u32,
        /// Filesystem block size.
        fs: u32,
    },
    /// The requested size does not fit on the device.
    #[error("the filesystem size {size_bytes} bytes exceeds the device ({device_bytes} bytes)")]
    DeviceTooSmall {
        /// Requested size.
        size_bytes: u64,
        /// Device size.
        device_bytes: u64,
    },
    /// Too small for the block size (or for a journal).
    #[error(
        "{size_bytes} bytes are too small for an ext4 filesystem with {block_size}-byte blocks: {reason}"
    )]
    TooSmall {
        /// Requested size.
        size_bytes: u64,
        /// Block size.
        block_size: u32,
        /// What does not fit.
        reason: String,
    },
    /// Too large for the block size.
    #[error("{blocks} blocks of {block_size} bytes are too many: {reason}")]
    TooLarge {
        /// Block count.
        blocks: u64,
        /// Block size.
        block_size: u32,
        /// What overflows.
        reason: String,
    },
    /// The inode count cannot be laid out.
    #[error("cannot lay out {inodes} inodes: {reason}")]
    TooManyInodes {
        /// Inodes asked for.
        inodes: u64,
        /// Why not.
        reason: String,
    },
    /// An option is out of range.
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        /// The option's field name.
        option: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// No free blocks were left for a structure.
    #[error("no free space left for {what}")]
    NoSpace {
        /// The structure.
        what: &'static str,
    },
    /// The device failed.
    #[error("device IO failed: {0}")]
    Io(#[from] IoError),
    /// The image file could not be opened or sized ([`mkfs_path`]).
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// An on-disk structure could not represent a value.
    #[error("cannot build an on-disk structure: {0}")]
    Format(#[from] FormatError),
    /// A bug: an inconsistency mkfs found in its own plan.
    #[error("internal error: {0}")]
    Internal(String),
}

/// `SOURCE_DATE_EPOCH` from the environment, for [`MkfsOptions::time`] in
/// reproducible builds; `None` when unset or not a decimal number of seconds.
/// [`mkfs`] itself never reads the environment.
pub fn source_date_epoch() -> Option<i64> {
    parse_epoch(&std::env::var("SOURCE_DATE_EPOCH").ok()?)
}

fn parse_epoch(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parameters resolved from the options (random or current values filled in).
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub uuid: [u8; 16],
    pub hash_seed: [u8; 16],
    pub time: i64,
    pub label: [u8; 16],
    pub assume_zeroed: bool,
    pub lazy_itable_init: bool,
}

fn resolve(opts: &MkfsOptions) -> Result<Resolved, MkfsError> {
    let time = match opts.time {
        Some(t) => t,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0),
    };
    if !(0..=EXTRA_TIMESTAMP_MAX).contains(&time) {
        return Err(MkfsError::InvalidOption {
            option: "time",
            reason: format!("{time} is outside 0..={EXTRA_TIMESTAMP_MAX} seconds"),
        });
    }
    let mut label = [0u8; 16];
    if let Some(l) = &opts.label {
        let b = l.as_bytes();
        if b.len() > 16 {
            return Err(MkfsError::InvalidOption {
                option: "label",
                reason: format!("{} bytes, at most 16 fit", b.len()),
            });
        }
        label[..b.len()].copy_from_slice(b);
    }
    Ok(Resolved {
        uuid: opts
            .uuid
            .unwrap_or_else(|| uuid::Uuid::new_v4().into_bytes()),
        hash_seed: opts
            .hash_seed
            .unwrap_or_else(|| uuid::Uuid::new_v4().into_bytes()),
        time,
        label,
        assume_zeroed: opts.assume_zeroed,
        lazy_itable_init: opts.lazy_itable_init,
    })
}

/// Checks `opts` for a device of `device_bytes` bytes (512-byte sectors) without writing
/// anything: the errors [`mkfs`] would give for the sizes and options. Callers check first so
/// that a bad option never touches an existing image.
///
/// # Errors
/// As [`mkfs`], but never [`MkfsError::Io`].
pub fn check(opts: &MkfsOptions, device_bytes: u64) -> Result<(), MkfsError> {
    let geo = geometry::plan(opts, device_bytes, 512)?;
    resolve(opts)?;
    build::lay_out(&geo)?;
    Ok(())
}

/// Creates an ext4 filesystem on `dev` as `opts` describe, overwriting its
/// metadata areas. Writes everything but the primary superblock, flushes,
/// then writes the primary superblock and flushes again.
///
/// # Errors
/// [`MkfsError`] names the problem: sizes and options out of range before
/// anything is written, [`MkfsError::Io`] if the device fails.
pub fn mkfs(dev: &dyn BlockDevice, opts: &MkfsOptions) -> Result<MkfsReport, MkfsError> {
    let dg = dev.geometry();
    let device_bytes =
        dg.nr_blocks
            .checked_mul(u64::from(dg.block_size))
            .ok_or(MkfsError::DeviceBlockSize {
                device: dg.block_size,
                fs: opts.block_size.unwrap_or(0),
            })?;
    let geo = geometry::plan(opts, device_bytes, dg.block_size)?;
    let params = resolve(opts)?;
    let layout = build::lay_out(&geo)?;
    let image = build::build(&geo, &layout, &params)?;
    let mut written = image.plan.submit(dev)?;
    dev.flush()?;
    let mut last = writer::WritePlan::default();
    last.data(1024, image.primary_superblock);
    written += last.submit(dev)?;
    dev.flush()?;
    let mut report = image.report;
    report.bytes_written = written;
    Ok(report)
}

/// Creates an ext4 filesystem in the image file (or on the block device) at `path`: a missing
/// file is created, a regular file is sized to [`MkfsOptions::size_bytes`] first (0 keeps its
/// size), then [`mkfs`] formats it in place. A file this call creates reads as zeros, so
/// [`MkfsOptions::assume_zeroed`] is set for it. (`ext4kit mkfs` writes a temporary file and
/// renames it over the target instead, so that a failure leaves an existing image as it was.)
///
/// # Errors
/// As [`mkfs`]; [`MkfsError::File`] when the file cannot be opened or sized.
pub fn mkfs_path(path: &std::path::Path, opts: &MkfsOptions) -> Result<MkfsReport, MkfsError> {
    let file_err = |source: std::io::Error| MkfsError::File {
        path: path.display().to_string(),
        source,
    };
    let created = !path.exists();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(file_err)?;
    let md = file.metadata().map_err(file_err)?;
    if md.is_file() && opts.size_bytes > 0 {
        file.set_len(opts.size_bytes).map_err(file_err)?;
    }
    let dev = ext4kit_blockdev::FileDevice::from_file(file, true, 512, 1).map_err(file_err)?;
    mkfs(
        &dev,
        &MkfsOptions {
            assume_zeroed: opts.assume_zeroed || created,
            ..opts.clone()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext4kit_blockdev::MemDevice;
    use ext4kit_format::Superblock;

    fn opts(bs: u32, size: u64) -> MkfsOptions {
        MkfsOptions {
            block_size: Some(bs),
            size_bytes: size,
            uuid: Some([7; 16]),
            hash_seed: Some([9; 16]),
            time: Some(1_700_000_000),
            assume_zeroed: true,
            ..MkfsOptions::default()
        }
    }

    #[test]
    fn memory_device_gets_a_valid_superblock() {
        for bs in [1024u32, 2048, 4096] {
            let dev = MemDevice::new(512, (16 << 20) / 512);
            let r = mkfs(&dev, &opts(bs, 0)).unwrap();
            let img = dev.snapshot();
            let sb = Superblock::parse(&img[1024..2048]).unwrap();
            assert_eq!(sb.blocks_count(), r.blocks_count);
            assert_eq!(sb.free_blocks_count(), r.free_blocks);
            assert_eq!(sb.block_size(), bs);
        }
    }

    #[test]
    fn epoch() {
        assert_eq!(parse_epoch("1700000000"), Some(1_700_000_000));
        assert_eq!(parse_epoch(" 0\n"), Some(0));
        assert_eq!(parse_epoch("-5"), None);
        assert_eq!(parse_epoch("12abc"), None);
        assert_eq!(parse_epoch(""), None);
        assert_eq!(parse_epoch("99999999999999999999"), None);
    }

    #[test]
    fn bad_options() {
        let dev = MemDevice::new(512, (16 << 20) / 512);
        let mut o = opts(4096, 0);
        o.label = Some("x".repeat(17));
        assert!(matches!(
            mkfs(&dev, &o),
            Err(MkfsError::InvalidOption {
                option: "label",
                ..
            })
        ));
        let mut o = opts(4096, 0);
        o.time = Some(-1);
        assert!(matches!(
            mkfs(&dev, &o),
            Err(MkfsError::InvalidOption { option: "time", .. })
        ));
        let mut o = opts(4096, 0);
        o.journal_blocks = Some(100);
        assert!(matches!(
            mkfs(&dev, &o),
            Err(MkfsError::InvalidOption {
                option: "journal_blocks",
                ..
            })
        ));
        let mut o = opts(4096, 0);
        o.reserved_percent = 51;
        assert!(matches!(
            mkfs(&dev, &o),
            Err(MkfsError::InvalidOption {
                option: "reserved_percent",
                ..
            })
        ));
    }
}
