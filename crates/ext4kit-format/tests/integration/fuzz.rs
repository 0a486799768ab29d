//! Parsers fed random, truncated and mutated bytes never panic.

use ext4kit_format::dir::{DirBlock, DirBlockOptions};
use ext4kit_format::extent::{ExtentNode, NodeLocation};
use ext4kit_format::group_desc::GroupDesc;
use ext4kit_format::htree::{DxBlock, DxOptions};
use ext4kit_format::inline_data::{self, InlineDir};
use ext4kit_format::inode::Inode;
use ext4kit_format::journal::{CommitBlock, DescriptorBlock, JournalSuperblock, RevokeBlock};
use ext4kit_format::xattr::{self, XattrBlock};
use ext4kit_format::{HashVersion, Superblock, bitmap, dirhash, htree, indirect};
use proptest::prelude::*;

fn all_parsers(bytes: &[u8]) {
    let _ = Superblock::parse(bytes);
    if let Ok(sb) = Superblock::from_bytes_unchecked(bytes) {
        let _ = sb.validate();
        let _ = sb.group_count();
        let _ = sb.group_metadata(3);
        let _ = sb.group_desc_block_location(2);
        let _ = sb.block_group(12345);
        let _ = sb.csum_seed();
        let _ = sb.feature_names();
        if let Ok(gd) = GroupDesc::parse(bytes, 64) {
            let _ = gd.validate(&sb, 1);
            let _ = gd.compute_checksum(&sb, 1);
            let _ = gd.verify_block_bitmap_checksum(&sb, bytes);
        }
        if let Ok(i) = Inode::from_bytes_unchecked(bytes) {
            let _ = inline_data::symlink_storage(&i, &sb);
        }
    }
    for ds in [32, 64] {
        let _ = GroupDesc::parse(bytes, ds);
    }
    if let Ok(i) = Inode::parse(bytes) {
        let _ = i.compute_checksum(1, 2);
        let _ = i.verify_checksum(1, 2);
        let _ = i.creation_time();
        let _ = i.device_number();
        let _ = inline_data::read_inline_data(&i, true);
        let _ = inline_data::fast_symlink_target(&i);
        let _ = InlineDir::parse(&i, 4096, false);
        let _ = xattr::parse_ibody(i.xattr_area(), true);
    }
    for loc in [NodeLocation::Inode, NodeLocation::Block] {
        if let Ok(n) = ExtentNode::parse(bytes, loc, None) {
            let _ = n.extents();
            let _ = n.indexes();
            let _ = n.find(7);
            let _ = n.verify_checksum(1, 2, 3);
        }
    }
    for bs in [1024u32, 4096, 65536] {
        for has_tail in [false, true] {
            if let Ok(d) = DirBlock::parse(
                bytes,
                DirBlockOptions {
                    block_size: bs,
                    has_tail,
                    max_inode: Some(100),
                },
            ) {
                let _ = d.entries();
                let _ = d.verify_checksum(1, 2, 3);
            }
        }
        let _ = htree::detect(bytes, bs);
        for has_csum in [false, true] {
            let o = DxOptions {
                block_size: bs,
                has_csum,
                largedir: true,
            };
            if let Ok(d) = DxBlock::parse_root(bytes, o) {
                let _ = d.entries();
                let _ = d.lookup(0x1234);
                let _ = d.verify_checksum(1, 2, 3);
            }
            let _ = DxBlock::parse_node(bytes, o).map(|d| d.verify_checksum(1, 2, 3));
        }
    }
    for ea in [false, true] {
        let _ = xattr::parse_ibody(bytes, ea);
        if let Ok(b) = XattrBlock::parse(bytes, ea) {
            let _ = b.entry_hashes_ok();
            let _ = b.verify_checksum(1, 2);
            for e in b.entries() {
                let _ = b.value(e);
            }
        }
    }
    if let Ok(j) = JournalSuperblock::parse(bytes) {
        let _ = DescriptorBlock::parse(bytes, &j);
        let _ = RevokeBlock::parse(bytes, &j);
    }
    let _ = CommitBlock::parse(bytes).map(|c| c.commit_time());
    let _ = bitmap::find_zero_run(bytes, 3, 9999, 5);
    let _ = bitmap::count_set(bytes, 1, 77777);
    for v in HashVersion::ALL {
        let _ = dirhash(bytes, v, &[1, 2, 3, 4]);
    }
    let _ = indirect::path_for(bytes.len() as u64 * 1_000_003, 1024);
}

/// A journal superblock with the given features, to drive the block parsers.
fn jsb(incompat: u32, bs: u32) -> JournalSuperblock {
    let mut s = JournalSuperblock::new(bs, 1024);
    s.set_feature_incompat(incompat);
    s.set_checksum_type(4);
    s.update_checksum();
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4200)) {
        all_parsers(&bytes);
    }

    #[test]
    fn structured_headers_never_panic(
        kind in 0u8..6,
        mut bytes in proptest::collection::vec(any::<u8>(), 64..4097),
        fields in proptest::collection::vec(any::<u16>(), 8),
    ) {
        // Plant plausible magics / headers so parsers get past the first check.
        match kind {
            0 => { bytes[0..2].copy_from_slice(&0xF30Au16.to_le_bytes()); bytes[2..4].copy_from_slice(&(fields[0] % 400).to_le_bytes()); bytes[4..6].copy_from_slice(&(fields[1] % 400).to_le_bytes()); bytes[6..8].copy_from_slice(&(fields[2] % 6).to_le_bytes()); }
            1 => { bytes[0..4].copy_from_slice(&0xEA02_0000u32.to_le_bytes()); bytes[8..12].copy_from_slice(&1u32.to_le_bytes()); }
            2 => { bytes[0..4].copy_from_slice(&0xC03B_3998u32.to_be_bytes()); bytes[4..8].copy_from_slice(&u32::from(fields[0] % 6 + 1).to_be_bytes()); }
            3 => { // dx root-ish
                bytes[4..6].copy_from_slice(&12u16.to_le_bytes());
                let l = bytes.len() as u16 - 12;
                bytes[16..18].copy_from_slice(&l.to_le_bytes());
                bytes[24..28].fill(0);
                bytes[29] = 8;
            }
            4 => { bytes[4..6].copy_from_slice(&(fields[0] & !3).to_le_bytes()); }
            _ => { if bytes.len() > 0x3A { bytes[0x38..0x3A].copy_from_slice(&0xEF53u16.to_le_bytes()); } }
        }
        all_parsers(&bytes);
        for inc in [0u32, 0x2, 0x8, 0xA, 0x12] {
            let j = jsb(inc, 1024);
            let _ = DescriptorBlock::parse(&bytes, &j).map(|d| d.tags().len());
            let _ = RevokeBlock::parse(&bytes, &j).map(|r| r.blocks().len());
        }
    }

    #[test]
    fn truncations_of_valid_structures_never_panic(cut in 0usize..4096, flip in any::<(u16, u8)>()) {
        let opts = DirBlockOptions::new(1024, true);
        let mut d = DirBlock::new_dir(1024, opts, 12, 2, true).unwrap();
        for i in 0..20 { let _ = d.add_entry(format!("n{i}").as_bytes(), 20 + i, 1); }
        let mut bytes = d.as_bytes().to_vec();
        let n = bytes.len();
        bytes[usize::from(flip.0) % n] ^= flip.1;
        all_parsers(&bytes[..cut.min(n)]);
        let x = xattr::build_block(1024, &[xattr::XattrSpec::inline(b"user.a", b"b")], false).unwrap().unwrap();
        let mut xb = x.as_bytes().to_vec();
        xb[usize::from(flip.0) % 1024] ^= flip.1;
        all_parsers(&xb[..cut.min(1024)]);
    }
}
