//! Reading damaged images (what e2fsck and the kernel still read): choosing a superblock
//! (the primary, one named by block number as `e2fsck -b`, or a backup when the primary is
//! unusable) and tolerating damage that does not stop reading, each kind reported once as a
//! warning.
//!
//! Only read-only opens with [`crate::OpenOptions::salvage`] are lenient; writing stays refused
//! on a damaged image.

use std::sync::Arc;

use ext4kit_blockdev::{BlockDevice, BlockDeviceExt};
use ext4kit_format::superblock::{SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use ext4kit_format::{CorruptKind, FormatError, RoCompatFeatures, Superblock};

use crate::error::{Error, Result};

/// Smallest and largest ext4 block sizes (what e2fsck tries for `-b` without `-B`).
const MIN_BLOCK_SIZE: u32 = 1024;
const MAX_BLOCK_SIZE: u32 = 65536;

/// A superblock chosen for reading, with what was wrong on the way.
pub(crate) struct Chosen {
    pub sb: Superblock,
    /// The block (in filesystem blocks) of the superblock used, when it is not the primary.
    pub backup_at: Option<u64>,
    pub warnings: Vec<String>,
}

/// Reads `SUPERBLOCK_SIZE` bytes at byte `offset` of `dev` (any alignment).
fn read_at(dev: &Arc<dyn BlockDevice>, offset: u64) -> Option<Vec<u8>> {
    let dev_bs = u64::from(dev.geometry().block_size);
    if dev_bs == 0 {
        return None;
    }
    let end = offset.checked_add(SUPERBLOCK_SIZE as u64)?;
    if end > dev.geometry().size_bytes() {
        return None;
    }
    let first = offset / dev_bs;
    let last = end.div_ceil(dev_bs);
    let len = usize::try_from((last - first) * dev_bs).ok()?;
    let mut buf = vec![0u8; len];
    dev.read_blocks(first, &mut buf).ok()?;
    let skip = usize::try_from(offset - first * dev_bs).ok()?;
    Some(buf[skip..skip + SUPERBLOCK_SIZE].to_vec())
}

/// The counts a damaged superblock may get wrong without stopping a read (the kernel
/// recomputes them at mount; e2fsck only offers to fix them).
fn is_count_error(e: &FormatError) -> bool {
    matches!(
        e.corrupt_kind(),
        Some(
            CorruptKind::FreeBlocksCount(_)
                | CorruptKind::FreeInodesCount(_)
                | CorruptKind::ReservedBlocksCount(_)
        )
    )
}

/// Parses a superblock; with `lenient`, wrong free/reserved counts are accepted (the
/// superblock is returned unchanged) and named in the warnings.
pub(crate) fn parse(bytes: &[u8], lenient: bool) -> Result<(Superblock, Vec<String>)> {
    match Superblock::parse(bytes) {
        Ok(sb) => Ok((sb, Vec::new())),
        Err(e) if lenient && is_count_error(&e) => {
            let sb = Superblock::from_bytes_unchecked(bytes)?;
            let mut probe = sb.clone();
            let mut warnings = Vec::new();
            let mut last = e;
            // At most the three counts can be wrong; each round clears one on the probe copy.
            for _ in 0..3 {
                warnings.push(format!(
                    "superblock: {} (reading anyway)",
                    strip_structure(&last.to_string())
                ));
                match last.corrupt_kind() {
                    Some(CorruptKind::FreeBlocksCount(_)) => probe.set_free_blocks_count(0),
                    Some(CorruptKind::FreeInodesCount(_)) => probe.set_free_inodes_count(0),
                    Some(CorruptKind::ReservedBlocksCount(_)) => probe.set_reserved_blocks_count(0),
                    _ => break,
                }
                match probe.validate() {
                    Ok(()) => return Ok((sb, warnings)),
                    Err(e) if is_count_error(&e) => last = e,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(last.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// The superblock at filesystem block `block`, trying every block size (1 KiB to 64 KiB) as
/// `e2fsck -b` does without `-B`: the first one whose superblock is valid and says that block
/// size.
pub(crate) fn at_block(dev: &Arc<dyn BlockDevice>, block: u64, lenient: bool) -> Result<Chosen> {
    let mut why = None;
    let mut bs = MIN_BLOCK_SIZE;
    while bs <= MAX_BLOCK_SIZE {
        if let Some(bytes) = block
            .checked_mul(u64::from(bs))
            .and_then(|off| read_at(dev, off))
        {
            if let Ok(raw) = Superblock::from_bytes_unchecked(&bytes) {
                if raw.magic() == ext4kit_format::superblock::SUPER_MAGIC && raw.block_size() == bs
                {
                    match parse(&bytes, lenient) {
                        Ok((sb, warnings)) => {
                            let backup_at =
                                (block * u64::from(bs) != SUPERBLOCK_OFFSET).then_some(block);
                            return Ok(Chosen {
                                sb,
                                backup_at,
                                warnings,
                            });
                        }
                        Err(e) => why = Some(e),
                    }
                }
            }
        }
        bs *= 2;
    }
    Err(Error::InvalidArgument(match why {
        Some(e) => format!("superblock at block {block}: {e}"),
        None => format!(
            "no ext4 superblock at block {block} for any block size from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
        ),
    }))
}

/// The primary superblock, or (with `lenient`, when the primary is unusable) the first valid
/// backup in group 1 for any block size — what e2fsck falls back to.
pub(crate) fn choose(dev: &Arc<dyn BlockDevice>, lenient: bool) -> Result<Chosen> {
    let primary = read_at(dev, SUPERBLOCK_OFFSET)
        .ok_or_else(|| {
            Error::corrupt(
                ext4kit_format::Structure::Superblock,
                crate::error::Corruption::Truncated {
                    needed: SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE as u64,
                    device: dev.geometry().size_bytes(),
                },
            )
        })
        .and_then(|bytes| parse(&bytes, lenient));
    let err = match primary {
        Ok((sb, warnings)) => {
            return Ok(Chosen {
                sb,
                backup_at: None,
                warnings,
            });
        }
        Err(e) => e,
    };
    if !lenient {
        return Err(err);
    }
    let mut bs = MIN_BLOCK_SIZE;
    while bs <= MAX_BLOCK_SIZE {
        // Group 1's backup: blocks_per_group (8 × block size without bigalloc) after the first
        // data block (1 with 1 KiB blocks).
        let block = u64::from(bs) * 8 + u64::from(bs == MIN_BLOCK_SIZE);
        if let Ok(mut c) = at_block(dev, block, true) {
            if c.sb.block_size() == bs && !c.sb.has_ro_compat(RoCompatFeatures::BIGALLOC) {
                c.warnings.insert(
                    0,
                    format!(
                        "primary superblock: {} (reading the backup superblock at block {block}, block size {bs})",
                        strip_structure(&err.to_string())
                    ),
                );
                return Ok(c);
            }
        }
        bs *= 2;
    }
    Err(err)
}

/// `msg` without a leading "superblock: " (the warning names the structure itself).
fn strip_structure(msg: &str) -> &str {
    msg.strip_prefix("superblock: ").unwrap_or(msg)
}
