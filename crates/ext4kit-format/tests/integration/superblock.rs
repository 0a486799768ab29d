//! Superblock: parse every fixture, compare with dumpe2fs, byte-flip each
//! validation rule, and write changes that e2fsck accepts.

use std::collections::BTreeMap;

use ext4kit_format::features::{IncompatFeatures, RoCompatFeatures};
use ext4kit_format::{CorruptKind, FormatError, IncompatibleKind, Superblock};

use crate::fixtures::{self, Image, dumpe2fs_header};

pub fn fmt_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn check_against_dumpe2fs(img: &Image) {
    let sb = img.sb();
    assert_eq!(&sb.as_bytes()[..], &img.bytes[1024..2048], "round trip");
    let h = dumpe2fs_header(&img.path);
    let num = |k: &str| -> u64 {
        h.get(k)
            .unwrap_or_else(|| panic!("{k} missing"))
            .parse()
            .unwrap()
    };
    assert_eq!(num("Inode count"), u64::from(sb.inodes_count()));
    assert_eq!(num("Block count"), sb.blocks_count());
    assert_eq!(num("Reserved block count"), sb.reserved_blocks_count());
    assert_eq!(num("Free blocks"), sb.free_blocks_count());
    assert_eq!(num("Free inodes"), u64::from(sb.free_inodes_count()));
    assert_eq!(num("First block"), u64::from(sb.first_data_block()));
    assert_eq!(num("Block size"), u64::from(sb.block_size()));
    assert_eq!(num("Blocks per group"), u64::from(sb.blocks_per_group()));
    assert_eq!(num("Inodes per group"), u64::from(sb.inodes_per_group()));
    assert_eq!(num("Inode size"), u64::from(sb.inode_size()));
    assert_eq!(num("First inode"), u64::from(sb.first_ino()));
    assert_eq!(h["Filesystem UUID"], fmt_uuid(&sb.uuid()));
    assert_eq!(h["Filesystem features"], sb.feature_names());
    let rgdt = h
        .get("Reserved GDT blocks")
        .map_or(0, |v| v.parse::<u64>().unwrap());
    assert_eq!(rgdt, u64::from(sb.reserved_gdt_blocks()));
    if sb.is_64bit() {
        assert_eq!(num("Group descriptor size"), u64::from(sb.desc_size()));
    }
    let mut seed = [0u8; 16];
    for (i, w) in sb.hash_seed().iter().enumerate() {
        seed[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    assert_eq!(h["Directory Hash Seed"], fmt_uuid(&seed));
    assert_eq!(
        h["Default directory hash"],
        ["legacy", "half_md4", "tea"][usize::from(sb.def_hash_version())]
    );
    let flags = &h["Filesystem flags"];
    assert_eq!(
        flags.contains("unsigned_directory_hash"),
        sb.hash_is_unsigned()
    );
    if sb.has_metadata_csum() {
        assert_eq!(h["Checksum type"], "crc32c");
        assert_eq!(h["Checksum"], format!("{:#010x}", sb.compute_checksum()));
        sb.verify_checksum().unwrap();
    }
    if let Some(fpg) = h.get("Flex block group size") {
        assert_eq!(fpg.parse::<u32>().unwrap(), sb.groups_per_flex());
    }
    if let Some(j) = h.get("Journal inode") {
        assert_eq!(j.parse::<u32>().unwrap(), sb.journal_inum());
    }
    assert_eq!(sb.group_count(), sb.inodes_count() / sb.inodes_per_group());
    sb.check_features(true).unwrap();
}

#[test]
fn parse_all_fixtures_matches_dumpe2fs() {
    for img in fixtures::all_images() {
        check_against_dumpe2fs(img);
    }
    if let Some(k) = fixtures::kernel_csum() {
        check_against_dumpe2fs(&k.clean);
    }
}

/// Mutates a valid csum superblock, refreshes the checksum, and returns the parse error.
fn flip(base: &Superblock, f: impl Fn(&mut Superblock)) -> FormatError {
    let mut sb = base.clone();
    f(&mut sb);
    sb.update_checksum();
    Superblock::parse(sb.as_bytes()).expect_err("mutation must be rejected")
}

#[test]
fn byte_flip_each_rule() {
    let Some(img) = fixtures::csum4k() else {
        return;
    };
    let base = img.sb();
    let bs = base.block_size();
    type Mutation = Box<dyn Fn(&mut Superblock)>;
    let cases: Vec<(&str, Mutation, CorruptKind)> = vec![
        (
            "magic",
            Box::new(|s| s.set_magic(0xEF54)),
            CorruptKind::SuperblockMagic(0xEF54),
        ),
        (
            "log block size",
            Box::new(|s| s.set_log_block_size(7)),
            CorruptKind::LogBlockSize(7),
        ),
        (
            "log cluster size",
            Box::new(|s| s.set_log_cluster_size(3)),
            CorruptKind::LogClusterSize(3),
        ),
        (
            "clusters per group 0",
            Box::new(|s| s.set_clusters_per_group(0)),
            CorruptKind::ClustersPerGroup(0),
        ),
        (
            "clusters per group big",
            Box::new(move |s| s.set_clusters_per_group(8 * bs + 8)),
            CorruptKind::ClustersPerGroup(8 * bs + 8),
        ),
        (
            "blocks per group",
            Box::new(|s| s.set_blocks_per_group(1000)),
            CorruptKind::BlocksPerGroup(1000),
        ),
        (
            "inodes per group 0",
            Box::new(|s| s.set_inodes_per_group(0)),
            CorruptKind::InodesPerGroup(0),
        ),
        (
            "inodes per group big",
            Box::new(move |s| s.set_inodes_per_group(8 * bs + 1)),
            CorruptKind::InodesPerGroup(8 * bs + 1),
        ),
        (
            "inode size odd",
            Box::new(|s| s.set_inode_size(200)),
            CorruptKind::InodeSize(200),
        ),
        (
            "inode size small",
            Box::new(|s| s.set_inode_size(64)),
            CorruptKind::InodeSize(64),
        ),
        (
            "inode size > block",
            Box::new(|s| s.set_inode_size(8192)),
            CorruptKind::InodeSize(8192),
        ),
        (
            "desc size small",
            Box::new(|s| s.set_desc_size(32)),
            CorruptKind::DescSize(32),
        ),
        (
            "desc size odd",
            Box::new(|s| s.set_desc_size(96)),
            CorruptKind::DescSize(96),
        ),
        (
            "first data block",
            Box::new(|s| s.set_first_data_block(1)),
            CorruptKind::FirstDataBlock(1),
        ),
        (
            "first ino",
            Box::new(|s| s.set_first_ino(5)),
            CorruptKind::FirstIno(5),
        ),
        (
            "reserved gdt",
            Box::new(move |s| s.set_reserved_gdt_blocks((bs / 4 + 1) as u16)),
            CorruptKind::ReservedGdtBlocks((bs / 4 + 1) as u16),
        ),
        (
            "log groups per flex",
            Box::new(|s| s.set_log_groups_per_flex(40)),
            CorruptKind::LogGroupsPerFlex(40),
        ),
    ];
    for (name, f, want) in cases {
        let e = flip(&base, f);
        assert_eq!(e.corrupt_kind(), Some(&want), "{name}: {e}");
    }
    // Counts that depend on the image.
    let blocks = base.blocks_count();
    let e = flip(&base, |s| s.set_free_blocks_count(blocks + 1));
    assert_eq!(
        e.corrupt_kind(),
        Some(&CorruptKind::FreeBlocksCount(blocks + 1))
    );
    let e = flip(&base, |s| s.set_reserved_blocks_count(blocks + 1));
    assert_eq!(
        e.corrupt_kind(),
        Some(&CorruptKind::ReservedBlocksCount(blocks + 1))
    );
    let inodes = base.inodes_count();
    let e = flip(&base, |s| s.set_free_inodes_count(inodes + 1));
    assert_eq!(
        e.corrupt_kind(),
        Some(&CorruptKind::FreeInodesCount(inodes + 1))
    );
    let e = flip(&base, |s| s.set_inodes_count(inodes + 1));
    assert_eq!(
        e.corrupt_kind(),
        Some(&CorruptKind::InodesCount {
            found: inodes + 1,
            expected: u64::from(inodes)
        })
    );
    let fdb = u64::from(base.first_data_block());
    let e = flip(&base, |s| s.set_blocks_count(fdb));
    assert_eq!(e.corrupt_kind(), Some(&CorruptKind::BlocksCount(fdb)));
    let e = flip(&base, |s| {
        let mut f = s.feature_incompat();
        f.insert(IncompatFeatures::META_BG);
        s.set_feature_incompat(f);
        s.set_first_meta_bg(1000);
    });
    assert_eq!(e.corrupt_kind(), Some(&CorruptKind::FirstMetaBg(1000)));
    // Checksum: a changed byte without a checksum update.
    let mut raw = *base.as_bytes();
    raw[0x78] ^= 0x20; // label byte
    match Superblock::parse(&raw) {
        Err(FormatError::ChecksumMismatch {
            expected, found, ..
        }) => {
            assert_eq!(found, base.checksum());
            assert_ne!(expected, found);
        }
        other => panic!("expected checksum mismatch, got {other:?}"),
    }
    // Unknown checksum type and revision are incompatibilities, not corruption.
    let e = flip(&base, |s| s.set_checksum_type(9));
    assert!(
        matches!(
            e,
            FormatError::Incompatible {
                what: IncompatibleKind::ChecksumType(9),
                ..
            }
        ),
        "{e}"
    );
    let e = flip(&base, |s| s.set_rev_level(2));
    assert!(
        matches!(
            e,
            FormatError::Incompatible {
                what: IncompatibleKind::RevisionLevel(2),
                ..
            }
        ),
        "{e}"
    );
    // Unknown feature bits.
    let mut sb = base.clone();
    sb.set_feature_incompat(IncompatFeatures(sb.feature_incompat().0 | 1 << 24));
    sb.set_feature_ro_compat(RoCompatFeatures(sb.feature_ro_compat().0 | 1 << 30));
    sb.update_checksum();
    let sb = Superblock::parse(sb.as_bytes()).unwrap();
    assert_eq!(sb.unknown_incompat(), IncompatFeatures(1 << 24));
    assert_eq!(sb.unknown_ro_compat(), RoCompatFeatures(1 << 30));
    let e = sb.check_features(false).unwrap_err();
    assert_eq!(e.to_string(), "superblock: unknown features: FEATURE_I24");
    let e = sb.check_features(true).unwrap_err();
    assert_eq!(
        e.to_string(),
        "superblock: unknown features: FEATURE_I24 FEATURE_R30"
    );
}

#[test]
fn setters_and_checksum_accepted_by_e2fsck() {
    let Some(img) = fixtures::csum4k() else {
        return;
    };
    let mut sb = img.sb();
    sb.set_label("ext4kit-test").unwrap();
    sb.set_mount_count(7);
    sb.set_write_time(0x12_3456_7890);
    sb.set_kbytes_written(4242);
    sb.update_checksum();
    Superblock::parse(sb.as_bytes()).unwrap();
    let dir = fixtures::temp_dir();
    let path = dir.join("copy.img");
    let mut bytes = img.bytes.clone();
    bytes[1024..2048].copy_from_slice(sb.as_bytes());
    std::fs::write(&path, &bytes).unwrap();
    Image::fsck_clean(&path);
    let h: BTreeMap<String, String> = dumpe2fs_header(&path);
    assert_eq!(h["Filesystem volume name"], "ext4kit-test");
    assert_eq!(h["Mount count"], "7");
    assert_eq!(h["Lifetime writes"], "4242 kB");
}

#[test]
fn csum_seed_feature_keeps_the_checksum_seed_when_the_uuid_changes() {
    let Some(img) = fixtures::csum4k() else {
        return;
    };
    let mut sb = img.sb();
    let seed = sb.csum_seed();
    sb.set_uuid([0x11; 16]);
    assert_ne!(sb.csum_seed(), seed);
    let mut f = sb.feature_incompat();
    f.insert(IncompatFeatures::CSUM_SEED);
    sb.set_feature_incompat(f);
    sb.set_checksum_seed(seed);
    assert_eq!(sb.csum_seed(), seed);
}
