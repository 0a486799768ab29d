//! Group descriptors, group layout and bitmap checksums against dumpe2fs.

use std::process::Command;

use ext4kit_format::group_desc::{GroupDesc, GroupFlags};
use ext4kit_format::{CorruptKind, FormatError, bitmap};

use crate::fixtures::{self, Image, run};

#[derive(Debug, Default)]
struct DumpGroup {
    first: u64,
    last: u64,
    csum: Option<u32>,
    flags: Vec<String>,
    superblock: Option<u64>,
    gdt: Option<(u64, u64)>,
    reserved_gdt: Option<(u64, u64)>,
    meta_gdt: Option<u64>,
    block_bitmap: u64,
    block_bitmap_csum: Option<u32>,
    inode_bitmap: u64,
    inode_bitmap_csum: Option<u32>,
    inode_table: u64,
    free_blocks: u32,
    free_inodes: u32,
    dirs: u32,
    unused: Option<u32>,
}

fn hex(s: &str) -> u32 {
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).unwrap()
}

fn range(s: &str) -> (u64, u64) {
    let s = s.trim().trim_end_matches(',');
    match s.split_once('-') {
        Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
        None => (s.parse().unwrap(), s.parse().unwrap()),
    }
}

fn dump_groups(img: &Image) -> Vec<DumpGroup> {
    let out = run(Command::new("dumpe2fs").arg(&img.path), &[0]);
    let mut groups = Vec::new();
    for line in out.lines() {
        let t = line.trim();
        if let Some(rest) = line
            .strip_prefix("Group ")
            .filter(|r| r.contains("(Blocks "))
        {
            let mut g = DumpGroup::default();
            let blocks = rest
                .split("(Blocks ")
                .nth(1)
                .unwrap()
                .split(')')
                .next()
                .unwrap();
            (g.first, g.last) = range(blocks);
            if let Some(c) = rest.split("csum ").nth(1) {
                g.csum = Some(hex(c.split_whitespace().next().unwrap()));
            }
            if let Some(f) = rest.split('[').nth(1) {
                g.flags = f
                    .trim_end_matches(']')
                    .split(", ")
                    .map(str::to_string)
                    .collect();
            }
            groups.push(g);
            continue;
        }
        let Some(g) = groups.last_mut() else { continue };
        for part in t.split(", ") {
            if let Some(v) = part
                .strip_prefix("Primary superblock at ")
                .or_else(|| part.strip_prefix("Backup superblock at "))
            {
                g.superblock = Some(v.trim().parse().unwrap());
            } else if let Some(v) = part.strip_prefix("Group descriptors at ") {
                g.gdt = Some(range(v));
            } else if let Some(v) = part.strip_prefix("Reserved GDT blocks at ") {
                g.reserved_gdt = Some(range(v));
            } else if let Some(v) = part
                .trim_start_matches(',')
                .trim()
                .strip_prefix("Group descriptor at ")
            {
                g.meta_gdt = Some(v.trim().parse().unwrap());
            }
        }
        if let Some(v) = t.strip_prefix("Block bitmap at ") {
            g.block_bitmap = v.split_whitespace().next().unwrap().parse().unwrap();
            g.block_bitmap_csum = v.split("csum ").nth(1).map(hex);
        } else if let Some(v) = t.strip_prefix("Inode bitmap at ") {
            g.inode_bitmap = v.split_whitespace().next().unwrap().parse().unwrap();
            g.inode_bitmap_csum = v.split("csum ").nth(1).map(hex);
        } else if let Some(v) = t.strip_prefix("Inode table at ") {
            g.inode_table = range(v.split_whitespace().next().unwrap()).0;
        } else if t.contains("free blocks,") && t.contains("free inodes,") {
            let nums: Vec<u32> = t
                .split(", ")
                .map(|p| p.split_whitespace().next().unwrap().parse().unwrap())
                .collect();
            g.free_blocks = nums[0];
            g.free_inodes = nums[1];
            g.dirs = nums[2];
            g.unused = nums.get(3).copied();
        }
    }
    groups
}

fn check_image(img: &Image) {
    let sb = img.sb();
    let dump = dump_groups(img);
    assert_eq!(dump.len() as u32, sb.group_count());
    for (g, d) in dump.iter().enumerate() {
        let g = g as u32;
        let gd = img.gd(g);
        let off = img.gd_offset(g);
        assert_eq!(
            gd.as_bytes(),
            &img.bytes[off..off + usize::from(sb.desc_size())],
            "round trip"
        );
        gd.validate(&sb, g).unwrap();
        gd.verify_checksum(&sb, g).unwrap();
        // Geometry.
        assert_eq!(sb.group_first_block(g), d.first, "group {g} first block");
        assert_eq!(
            sb.group_first_block(g) + u64::from(sb.group_block_count(g)) - 1,
            d.last
        );
        let m = sb.group_metadata(g);
        assert_eq!(m.superblock, d.superblock, "group {g} superblock");
        assert_eq!(
            m.gdt.map(|(s, n)| (s, s + u64::from(n) - 1)),
            d.gdt,
            "group {g} gdt"
        );
        assert_eq!(
            m.reserved_gdt.map(|(s, n)| (s, s + u64::from(n) - 1)),
            d.reserved_gdt,
            "group {g} reserved gdt"
        );
        assert_eq!(m.meta_bg_gdt, d.meta_gdt, "group {g} meta_bg gdt");
        // Fields.
        assert_eq!(gd.block_bitmap(), d.block_bitmap);
        assert_eq!(gd.inode_bitmap(), d.inode_bitmap);
        assert_eq!(gd.inode_table(), d.inode_table);
        assert_eq!(gd.free_blocks_count(), d.free_blocks);
        assert_eq!(gd.free_inodes_count(), d.free_inodes);
        assert_eq!(gd.used_dirs_count(), d.dirs);
        if let Some(u) = d.unused {
            assert_eq!(gd.itable_unused(), u);
        }
        if let Some(c) = d.csum {
            assert_eq!(u32::from(gd.checksum()), c, "group {g} csum");
        }
        let flags = gd.flags();
        if sb.has_group_desc_csum() {
            // dumpe2fs prints the flags only when descriptors are checksummed.
            assert_eq!(
                flags.contains(GroupFlags::INODE_UNINIT),
                d.flags.iter().any(|f| f == "INODE_UNINIT")
            );
            assert_eq!(
                flags.contains(GroupFlags::BLOCK_UNINIT),
                d.flags.iter().any(|f| f == "BLOCK_UNINIT")
            );
            assert_eq!(
                flags.contains(GroupFlags::ITABLE_ZEROED),
                d.flags.iter().any(|f| f == "ITABLE_ZEROED")
            );
        }
        // Bitmap checksums.
        if sb.has_metadata_csum() {
            assert_eq!(
                Some(gd.block_bitmap_checksum().0),
                d.block_bitmap_csum,
                "group {g}"
            );
            assert_eq!(
                Some(gd.inode_bitmap_checksum().0),
                d.inode_bitmap_csum,
                "group {g}"
            );
            if !flags.contains(GroupFlags::BLOCK_UNINIT) {
                let bm = img.block(gd.block_bitmap());
                gd.verify_block_bitmap_checksum(&sb, bm).unwrap();
                // Used blocks in the bitmap agree with the free count.
                let used = bitmap::count_set(bm, 0, sb.group_block_count(g) as usize);
                assert_eq!(
                    used as u32 + gd.free_blocks_count(),
                    sb.group_block_count(g)
                );
                let mut bad = bm.to_vec();
                bad[0] ^= 1;
                assert!(matches!(
                    gd.verify_block_bitmap_checksum(&sb, &bad),
                    Err(FormatError::ChecksumMismatch { .. })
                ));
            }
            if !flags.contains(GroupFlags::INODE_UNINIT) {
                let bm = img.block(gd.inode_bitmap());
                gd.verify_inode_bitmap_checksum(&sb, bm).unwrap();
                let used = bitmap::count_set(bm, 0, sb.inodes_per_group() as usize);
                assert_eq!(used as u32 + gd.free_inodes_count(), sb.inodes_per_group());
            }
            // Setting the bitmap checksums reproduces the stored values.
            let mut copy = gd.clone();
            copy.set_block_bitmap_csum_lo(0);
            copy.set_inode_bitmap_csum_lo(0);
            if !flags.contains(GroupFlags::BLOCK_UNINIT) {
                copy.set_block_bitmap_checksum(&sb, img.block(gd.block_bitmap()));
                assert_eq!(copy.block_bitmap_checksum(), gd.block_bitmap_checksum());
            }
            if !flags.contains(GroupFlags::INODE_UNINIT) {
                copy.set_inode_bitmap_checksum(&sb, img.block(gd.inode_bitmap()));
                assert_eq!(copy.inode_bitmap_checksum(), gd.inode_bitmap_checksum());
            }
        }
        // Descriptor checksum: setters + update reproduce it, a flipped byte breaks it.
        if sb.has_group_desc_csum() {
            let mut copy = gd.clone();
            copy.set_checksum(0);
            copy.set_free_blocks_count(gd.free_blocks_count()).unwrap();
            copy.update_checksum(&sb, g);
            assert_eq!(copy, gd);
            let mut raw = gd.as_bytes().to_vec();
            raw[0x10] ^= 0x40;
            let bad = GroupDesc::parse(&raw, raw.len()).unwrap();
            match bad.verify_checksum(&sb, g) {
                Err(FormatError::ChecksumMismatch { found, context, .. }) => {
                    assert_eq!(found, u32::from(gd.checksum()));
                    assert_eq!(context.group, Some(g));
                }
                other => panic!("expected mismatch, got {other:?}"),
            }
            // Another group number gives another checksum.
            assert_ne!(gd.compute_checksum(&sb, g + 1), gd.compute_checksum(&sb, g));
        } else {
            assert_eq!(gd.compute_checksum(&sb, g), None);
        }
    }
}

#[test]
fn descriptors_and_layout_match_dumpe2fs() {
    for img in fixtures::all_images() {
        check_image(img);
    }
}

#[test]
fn byte_flip_each_descriptor_rule() {
    let Some(img) = fixtures::csum1k() else {
        return;
    };
    let sb = img.sb();
    let g = 1;
    let base = img.gd(g);
    let blocks = sb.blocks_count();
    let mut d = base.clone();
    d.set_block_bitmap(blocks).unwrap();
    assert_eq!(
        d.validate(&sb, g).unwrap_err().corrupt_kind(),
        Some(&CorruptKind::GroupBlockBitmap(blocks))
    );
    let mut d = base.clone();
    d.set_block_bitmap(u64::from(sb.first_data_block()))
        .unwrap();
    assert_eq!(
        d.validate(&sb, g).unwrap_err().corrupt_kind(),
        Some(&CorruptKind::GroupBlockBitmap(u64::from(
            sb.first_data_block()
        )))
    );
    let mut d = base.clone();
    d.set_inode_bitmap(0).unwrap();
    assert_eq!(
        d.validate(&sb, g).unwrap_err().corrupt_kind(),
        Some(&CorruptKind::GroupInodeBitmap(0))
    );
    let mut d = base.clone();
    d.set_inode_table(blocks - 1).unwrap();
    assert_eq!(
        d.validate(&sb, g).unwrap_err().corrupt_kind(),
        Some(&CorruptKind::GroupInodeTable(blocks - 1))
    );
    let mut d = base.clone();
    d.set_free_blocks_count(sb.clusters_per_group() + 1)
        .unwrap();
    assert_eq!(
        d.validate(&sb, g).unwrap_err().corrupt_kind(),
        Some(&CorruptKind::GroupFreeCount {
            inodes: false,
            found: sb.clusters_per_group() + 1
        })
    );
    let mut d = base.clone();
    d.set_free_inodes_count(sb.inodes_per_group() + 1).unwrap();
    assert_eq!(
        d.validate(&sb, g).unwrap_err().corrupt_kind(),
        Some(&CorruptKind::GroupFreeCount {
            inodes: true,
            found: sb.inodes_per_group() + 1
        })
    );
    // 32-byte descriptors cannot hold 64-bit locations.
    assert_eq!(base.size(), 32);
    assert!(base.clone().set_block_bitmap(1 << 33).is_err());
}
