//! Filesystem geometry for a new filesystem: block size, block count, groups,
//! inodes, reserved blocks and journal size, computed the way `mke2fs` 1.47
//! (with the stock `mke2fs.conf`) computes them.
//!
//! Everything here is pure arithmetic on the options and the device size, so
//! it is unit-tested without a device. The facts followed (not the code) come
//! from e2fsprogs' `misc/mke2fs.c` (`PRS`, `parse_fs_type`),
//! `lib/ext2fs/initialize.c` (`ext2fs_initialize`) and
//! `lib/ext2fs/mkjournal.c` (`ext2fs_default_journal_size`).

use super::{MkfsError, MkfsOptions};

/// Inode record size (`mke2fs.conf`: `inode_size = 256`).
pub(crate) const INODE_SIZE: u16 = 256;
/// First non-reserved inode.
pub(crate) const FIRST_INO: u32 = 11;
/// log2 of the flex group size (`flex_bg_size = 16`).
pub(crate) const LOG_GROUPS_PER_FLEX: u8 = 4;
/// Groups per flex group.
pub(crate) const GROUPS_PER_FLEX: u32 = 1 << LOG_GROUPS_PER_FLEX;
/// Group descriptor size with the 64bit feature.
pub(crate) const DESC_SIZE: u32 = 64;
/// Smallest journal jbd2 accepts (`JBD2_MIN_JOURNAL_BLOCKS`).
pub(crate) const MIN_JOURNAL_BLOCKS: u32 = 1024;
/// Largest journal `mke2fs -J size=` accepts.
pub(crate) const MAX_JOURNAL_BLOCKS: u32 = 10_240_000;
/// Largest inode count (`s_inodes_count` is 32 bits).
const MAX_INODES: u64 = u32::MAX as u64;

/// The `mke2fs.conf` usage type chosen from the filesystem size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SizeType {
    /// Under 3 MiB: 1 KiB blocks, one inode per 8 KiB.
    Floppy,
    /// Under 512 MiB: 1 KiB blocks, one inode per 4 KiB.
    Small,
    /// Under 4 TiB: 4 KiB blocks, one inode per 16 KiB.
    Default,
    /// Under 16 TiB: one inode per 32 KiB.
    Big,
    /// 16 TiB and more: one inode per 64 KiB.
    Huge,
}

impl SizeType {
    /// The type for a filesystem of `bytes` bytes.
    pub fn for_size(bytes: u64) -> SizeType {
        const MIB: u64 = 1 << 20;
        if bytes < 3 * MIB {
            SizeType::Floppy
        } else if bytes < 512 * MIB {
            SizeType::Small
        } else if bytes < 4 * (1 << 40) {
            SizeType::Default
        } else if bytes < 16 * (1 << 40) {
            SizeType::Big
        } else {
            SizeType::Huge
        }
    }

    /// The name `mke2fs.conf` gives it.
    pub fn name(self) -> &'static str {
        match self {
            SizeType::Floppy => "floppy",
            SizeType::Small => "small",
            SizeType::Default => "default",
            SizeType::Big => "big",
            SizeType::Huge => "huge",
        }
    }

    /// Block size the profile asks for.
    pub fn block_size(self) -> u32 {
        match self {
            SizeType::Floppy | SizeType::Small => 1024,
            _ => 4096,
        }
    }

    /// Bytes per inode the profile asks for.
    pub fn inode_ratio(self) -> u64 {
        match self {
            SizeType::Floppy => 8192,
            SizeType::Small => 4096,
            SizeType::Default => 16384,
            SizeType::Big => 32768,
            SizeType::Huge => 65536,
        }
    }
}

/// The computed shape of the new filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub block_size: u32,
    /// `s_log_block_size` (block size = 1024 << this).
    pub log_block_size: u32,
    pub first_data_block: u32,
    pub blocks_count: u64,
    pub reserved_blocks: u64,
    pub blocks_per_group: u32,
    pub group_count: u32,
    /// Blocks of one copy of the group descriptor table.
    pub gdt_blocks: u32,
    pub inodes_per_group: u32,
    /// Blocks of one group's inode table.
    pub inode_table_blocks: u32,
    pub inodes_count: u32,
    pub size_type: SizeType,
    pub journal_blocks: u32,
    /// Inode record size.
    pub inode_size: u16,
}

impl Geometry {
    /// First block of group `g`.
    pub fn group_first_block(&self, g: u32) -> u64 {
        u64::from(self.first_data_block) + u64::from(g) * u64::from(self.blocks_per_group)
    }

    /// Last block of group `g` (the last group may be short).
    pub fn group_last_block(&self, g: u32) -> u64 {
        if g.saturating_add(1) >= self.group_count {
            self.blocks_count - 1
        } else {
            self.group_first_block(g) + u64::from(self.blocks_per_group) - 1
        }
    }

    /// The group holding block `b` (`b` ≥ first data block).
    pub fn group_of_block(&self, b: u64) -> u32 {
        let g =
            b.saturating_sub(u64::from(self.first_data_block)) / u64::from(self.blocks_per_group);
        u32::try_from(g).unwrap_or(u32::MAX)
    }

    /// Last group of the flex group holding `g`.
    pub fn flex_last_group(&self, g: u32) -> u32 {
        (g | (GROUPS_PER_FLEX - 1)).min(self.group_count - 1)
    }
}

/// `true` if group `g` carries a superblock backup under sparse_super
/// (groups 0, 1 and powers of 3, 5 and 7).
pub(crate) fn group_has_super(g: u32) -> bool {
    fn power_of(mut n: u32, base: u32) -> bool {
        while n % base == 0 {
            n /= base;
        }
        n == 1
    }
    g <= 1 || (g % 2 == 1 && (power_of(g, 3) || power_of(g, 5) || power_of(g, 7)))
}

/// Groups with a superblock backup below `group_count`, ascending.
pub(crate) fn super_groups(group_count: u32) -> Vec<u32> {
    let mut v = vec![0];
    if group_count > 1 {
        v.push(1);
    }
    for base in [3u32, 5, 7] {
        let mut p = base;
        while p < group_count {
            v.push(p);
            match p.checked_mul(base) {
                Some(n) => p = n,
                None => break,
            }
        }
    }
    v.sort_unstable();
    v
}

/// `ext2fs_default_journal_size`: journal blocks for a filesystem of `blocks`
/// blocks, or `None` below 2048 blocks.
pub(crate) fn default_journal_blocks(blocks: u64) -> Option<u32> {
    Some(match blocks {
        0..2048 => return None,
        2048..32768 => 1024,
        32768..262_144 => 4096,
        262_144..524_288 => 8192,
        524_288..4_194_304 => 16384,
        4_194_304..8_388_608 => 32768,
        8_388_608..16_777_216 => 65536,
        16_777_216..33_554_432 => 131_072,
        _ => 262_144,
    })
}

fn invalid(option: &'static str, reason: impl Into<String>) -> MkfsError {
    MkfsError::InvalidOption {
        option,
        reason: reason.into(),
    }
}

/// Reserved blocks as mke2fs computes them: `percent * blocks / 100.0`,
/// truncated (in double precision, as the C code does).
fn reserved_for(percent: f64, blocks: u64) -> u64 {
    (percent * blocks as f64 / 100.0) as u64
}

/// Computes the geometry for `opts` on a device of `device_bytes` bytes whose
/// IO unit is `device_block_size`.
pub(crate) fn plan(
    opts: &MkfsOptions,
    device_bytes: u64,
    device_block_size: u32,
) -> Result<Geometry, MkfsError> {
    let size_bytes = if opts.size_bytes == 0 {
        device_bytes
    } else {
        opts.size_bytes
    };
    if size_bytes > device_bytes {
        return Err(MkfsError::DeviceTooSmall {
            size_bytes,
            device_bytes,
        });
    }

    // Block size: given, or the profile's choice for the size (never below
    // the device's IO unit, as mke2fs never goes below the sector size).
    let block_size = match opts.block_size {
        Some(bs) => bs,
        None => SizeType::for_size(size_bytes)
            .block_size()
            .max(device_block_size.min(4096)),
    };
    if !matches!(block_size, 1024 | 2048 | 4096) {
        return Err(MkfsError::UnsupportedBlockSize(block_size));
    }
    if !device_block_size.is_power_of_two() || device_block_size < 512 {
        return Err(MkfsError::DeviceBlockSize {
            device: device_block_size,
            fs: block_size,
        });
    }
    let log_block_size = block_size.trailing_zeros() - 10;
    let bs = u64::from(block_size);

    // Block count: mke2fs rounds a device size down to whole pages.
    let mut blocks = size_bytes / bs;
    if block_size < 4096 {
        blocks &= !(4096 / bs - 1);
    }
    let too_small = |reason: &str| MkfsError::TooSmall {
        size_bytes,
        block_size,
        reason: reason.to_string(),
    };
    let first_data_block = u32::from(block_size == 1024);
    if blocks <= u64::from(first_data_block) + 1 {
        return Err(too_small("not even one block group fits"));
    }
    // mke2fs's guard against absurd group counts: blocks < 2^(log2(bs) + 35).
    let limit = 1u64 << (block_size.trailing_zeros() + 3 + 32);
    if blocks >= limit {
        return Err(MkfsError::TooLarge {
            blocks,
            block_size,
            reason: "the group count would overflow 32 bits".into(),
        });
    }
    let size_type = SizeType::for_size(blocks * bs);

    // Inode size: 256 (mke2fs.conf) or a larger power of two up to the block size. 128-byte
    // inodes have no room for nanosecond timestamps and crtime, which ext4kit always writes.
    let isz = opts.inode_size.unwrap_or(INODE_SIZE);
    if !isz.is_power_of_two() || isz < INODE_SIZE || u32::from(isz) > block_size {
        return Err(invalid(
            "inode_size",
            format!(
                "{isz} is not a power of two from 256 to the block size {block_size} (ext4kit does not make 128-byte inodes)"
            ),
        ));
    }
    // Inode count: given, or one per `inode_ratio` bytes.
    let inodes_wanted: u64 = match (opts.inode_count, opts.inode_ratio) {
        (Some(n), _) => u64::from(n),
        (None, ratio) => {
            let ratio = match ratio {
                Some(r) => {
                    if !(1024..=65536 * 1024).contains(&r) {
                        return Err(invalid(
                            "inode_ratio",
                            format!("{r} is outside 1024..=67108864 bytes per inode"),
                        ));
                    }
                    r
                }
                None => size_type.inode_ratio().max(bs),
            };
            let n = u128::from(blocks) * u128::from(bs) / u128::from(ratio);
            u64::try_from(n).unwrap_or(u64::MAX).min(MAX_INODES)
        }
    };
    if u128::from(inodes_wanted) * u128::from(isz) >= u128::from(blocks) * u128::from(bs) {
        return Err(MkfsError::TooManyInodes {
            inodes: inodes_wanted,
            reason: "the inode tables would not fit in the filesystem".into(),
        });
    }

    if opts.reserved_percent > 50 {
        return Err(invalid(
            "reserved_percent",
            format!("{}% is above 50%", opts.reserved_percent),
        ));
    }
    let percent = f64::from(opts.reserved_percent);
    let param_blocks = blocks;
    let param_reserved = reserved_for(percent, param_blocks);

    // ext2fs_initialize: find blocks per group, inodes per group, and drop a
    // last group too small for its own metadata.
    let max_bpg_bits = block_size * 8;
    let mut bpg: u32 = max_bpg_bits;
    let mut reserved = param_reserved;
    let inodes_per_block = block_size / u32::from(isz);
    let geo = 'retry: loop {
        let group_count = (blocks - u64::from(first_data_block)).div_ceil(u64::from(bpg));
        let group_count = match u32::try_from(group_count) {
            Ok(0) => return Err(too_small("no block group fits")),
            Ok(n) => n,
            Err(_) => {
                return Err(MkfsError::TooLarge {
                    blocks,
                    block_size,
                    reason: "more than 2^32 block groups".into(),
                });
            }
        };
        let desc_per_block = block_size / DESC_SIZE;
        let gdt_blocks = group_count.div_ceil(desc_per_block);
        let mut ipg_start = inodes_wanted.div_ceil(u64::from(group_count));
        if ipg_start > u64::from(max_bpg_bits) {
            if bpg >= 256 {
                // mke2fs restores the block count but keeps the reserved count
                // of the last trim.
                bpg -= 8;
                blocks = param_blocks;
                continue 'retry;
            }
            return Err(MkfsError::TooManyInodes {
                inodes: inodes_wanted,
                reason: "more inodes per group than a bitmap block holds".into(),
            });
        }
        let max_ipg = u64::from((1u32 << 16) - inodes_per_block);
        ipg_start = ipg_start.min(max_ipg);
        // Round up to fill the inode table blocks, keep a multiple of 8, and
        // keep the total within 32 bits and above the reserved inodes.
        let (ipg, itb) = loop {
            let itb = (ipg_start * u64::from(isz)).div_ceil(bs);
            let mut ipg = itb * bs / u64::from(isz);
            ipg = ipg.max(8) & !7;
            let itb = (ipg * u64::from(isz)).div_ceil(bs);
            let total = ipg * u64::from(group_count);
            if total > MAX_INODES {
                ipg_start = ipg_start.saturating_sub(1);
                if ipg_start == 0 {
                    return Err(MkfsError::TooManyInodes {
                        inodes: inodes_wanted,
                        reason: "the inode count overflows 32 bits".into(),
                    });
                }
                continue;
            }
            if total < u64::from(FIRST_INO) + 1 {
                ipg_start += 8;
                continue;
            }
            // Both fit u32: ipg ≤ 65536, itb ≤ ipg.
            break (
                u32::try_from(ipg).unwrap_or(u32::MAX),
                u32::try_from(itb).unwrap_or(u32::MAX),
            );
        };
        if u64::from(gdt_blocks) > u64::from(bpg) * 3 / 4 {
            // mke2fs switches to meta_bg here; we do not write meta_bg.
            return Err(MkfsError::TooLarge {
                blocks,
                block_size,
                reason: format!(
                    "{gdt_blocks} group descriptor blocks would need meta_bg, which ext4kit mkfs does not create; use a larger block size"
                ),
            });
        }
        let overhead = 3 + u64::from(itb) + u64::from(gdt_blocks);
        if overhead > u64::from(bpg) {
            return Err(MkfsError::TooManyInodes {
                inodes: inodes_wanted,
                reason: "the inode table does not fit in a block group".into(),
            });
        }
        let mut last_overhead = 2 + u64::from(itb);
        if group_has_super(group_count - 1) {
            last_overhead += 1 + u64::from(gdt_blocks);
        }
        let rem = (blocks - u64::from(first_data_block)) % u64::from(bpg);
        if group_count == 1 && rem != 0 && rem < last_overhead {
            return Err(too_small(
                "the only block group cannot hold its own metadata",
            ));
        }
        if rem != 0 && rem < last_overhead + 50 {
            blocks -= rem;
            let ratio = 100.0 * param_reserved as f64 / param_blocks as f64;
            reserved = reserved_for(ratio, blocks);
            continue 'retry;
        }
        break Geometry {
            block_size,
            log_block_size,
            first_data_block,
            blocks_count: blocks,
            reserved_blocks: reserved,
            blocks_per_group: bpg,
            group_count,
            gdt_blocks,
            inodes_per_group: ipg,
            inode_table_blocks: itb,
            inodes_count: ipg.saturating_mul(group_count),
            size_type,
            journal_blocks: 0,
            inode_size: isz,
        };
    };
    let mut geo = geo;
    if geo.reserved_blocks >= geo.blocks_count {
        return Err(invalid("reserved_percent", "reserves the whole filesystem"));
    }

    // Journal size.
    geo.journal_blocks = match opts.journal_blocks {
        None => default_journal_blocks(geo.blocks_count)
            .ok_or_else(|| too_small("a journal needs at least 2048 blocks"))?,
        Some(n) => {
            if !(MIN_JOURNAL_BLOCKS..=MAX_JOURNAL_BLOCKS).contains(&n) {
                return Err(invalid(
                    "journal_blocks",
                    format!("{n} is outside {MIN_JOURNAL_BLOCKS}..={MAX_JOURNAL_BLOCKS}"),
                ));
            }
            // mke2fs: at most half of the free blocks (superblocks and
            // descriptor tables already taken out).
            let meta: u64 = super_groups(geo.group_count)
                .len()
                .try_into()
                .unwrap_or(u64::MAX);
            let free = geo
                .blocks_count
                .saturating_sub(u64::from(geo.first_data_block))
                .saturating_sub(meta.saturating_mul(1 + u64::from(geo.gdt_blocks)));
            if u64::from(n) > free / 2 {
                return Err(invalid(
                    "journal_blocks",
                    format!("{n} blocks is more than half of the {free} free blocks"),
                ));
            }
            n
        }
    };
    Ok(geo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(size: u64, bs: u32) -> Geometry {
        let opts = MkfsOptions {
            block_size: Some(bs),
            size_bytes: size,
            ..MkfsOptions::default()
        };
        plan(&opts, size, 512).unwrap()
    }

    #[test]
    fn backups() {
        let got: Vec<u32> = (0..400).filter(|&g| group_has_super(g)).collect();
        assert_eq!(got, super_groups(400));
        assert_eq!(got, [0, 1, 3, 5, 7, 9, 25, 27, 49, 81, 125, 243, 343]);
        assert_eq!(super_groups(1), [0]);
        assert_eq!(super_groups(131_072).len(), 25);
    }

    // Numbers from `dumpe2fs -h` of mkfs.ext4 1.47.0 -O ^resize_inode.
    #[test]
    fn matches_mke2fs() {
        let g = geo(64 << 20, 4096);
        assert_eq!(
            (g.blocks_count, g.inodes_count, g.inodes_per_group),
            (16384, 16384, 16384)
        );
        assert_eq!(
            (g.reserved_blocks, g.journal_blocks, g.inode_table_blocks),
            (819, 1024, 1024)
        );
        let g = geo(1 << 30, 4096);
        assert_eq!(
            (g.blocks_count, g.inodes_count, g.inodes_per_group),
            (262_144, 65536, 8192)
        );
        assert_eq!(
            (g.reserved_blocks, g.journal_blocks, g.group_count),
            (13107, 8192, 8)
        );
        let g = geo(8 << 20, 1024);
        assert_eq!(
            (g.blocks_count, g.inodes_count, g.inodes_per_group),
            (8192, 2048, 2048)
        );
        assert_eq!(
            (g.reserved_blocks, g.journal_blocks, g.first_data_block),
            (409, 1024, 1)
        );
        let g = geo(2 << 30, 1024);
        assert_eq!(
            (g.blocks_count, g.inodes_count, g.inodes_per_group),
            (2_097_152, 131_072, 512)
        );
        assert_eq!(
            (g.reserved_blocks, g.journal_blocks, g.gdt_blocks),
            (104_857, 16384, 16)
        );
        let g = geo(16 << 40, 4096);
        assert_eq!(
            (g.blocks_count, g.inodes_count, g.inodes_per_group),
            (1 << 32, 1 << 28, 2048)
        );
        assert_eq!(
            (g.reserved_blocks, g.journal_blocks, g.group_count),
            (214_748_364, 262_144, 131_072)
        );
        assert_eq!(g.size_type, SizeType::Huge);
        // Too many inodes per group: blocks per group shrink in steps of 8, and the reserved
        // count keeps the value of the last trim of a short last group.
        let g = geo(408_108_544, 4096);
        assert_eq!(
            (g.blocks_count, g.blocks_per_group, g.inodes_per_group),
            (99_635, 32_672, 24_912)
        );
        assert_eq!(g.reserved_blocks, 4901);
    }

    #[test]
    fn short_last_group_is_dropped() {
        // 1 KiB blocks: 8193 + 40 blocks leave a 40-block last group, too
        // small for 2 bitmaps + 128 inode table blocks + 50.
        let g = geo((8192 * 2 + 1 + 100) * 1024, 1024);
        assert_eq!(g.group_count, 2);
        assert_eq!(g.blocks_count, 8192 * 2 + 1);
    }

    #[test]
    fn errors() {
        let o = |bs, size| MkfsOptions {
            block_size: Some(bs),
            size_bytes: size,
            ..MkfsOptions::default()
        };
        assert!(matches!(
            plan(&o(512, 1 << 30), 1 << 30, 512),
            Err(MkfsError::UnsupportedBlockSize(512))
        ));
        assert!(matches!(
            plan(&o(4096, 4 << 20), 4 << 20, 512),
            Err(MkfsError::TooSmall { .. })
        ));
        assert!(matches!(
            plan(&o(4096, 2 << 30), 1 << 30, 512),
            Err(MkfsError::DeviceTooSmall { .. })
        ));
        assert!(matches!(
            plan(&o(1024, 1 << 40), 1 << 40, 512),
            Err(MkfsError::TooLarge { .. })
        ));
        assert!(matches!(
            plan(&o(4096, 4096), 4096, 512),
            Err(MkfsError::TooSmall { .. })
        ));
    }
}
