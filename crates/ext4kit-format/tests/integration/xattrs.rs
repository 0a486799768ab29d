//! Extended attributes (in-inode and block) against debugfs ea_list and
//! e2fsck; hashes as written by e2fsprogs and the kernel.

use std::collections::BTreeSet;

use ext4kit_format::xattr::{self, XattrBlock, XattrSpec, XattrValue};
use ext4kit_format::{CorruptKind, FormatError};

use crate::fixtures::{self, Image};

/// (full name, size) pairs from `debugfs ea_list`.
fn ea_list(img: &Image, path: &str) -> BTreeSet<(Vec<u8>, usize)> {
    let out = img.debugfs(&format!("ea_list {path}"));
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let l = l.trim();
            let (name, rest) = l.split_once(" (")?;
            let size = rest.split(')').next()?.parse().ok()?;
            Some((name.as_bytes().to_vec(), size))
        })
        .collect()
}

/// (full name, value) of an inode's xattrs through our parsers.
fn our_xattrs(img: &Image, ino: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
    let sb = img.sb();
    let inode = img.inode(ino);
    let mut v = Vec::new();
    let area = inode.xattr_area();
    for e in xattr::parse_ibody(area, false).unwrap() {
        assert_eq!(e.hash, 0, "in-inode entries carry no hash");
        v.push((e.full_name().unwrap(), xattr::value_of(area, &e).to_vec()));
    }
    if inode.file_acl() != 0 {
        let blk = img.block(inode.file_acl());
        let b = XattrBlock::parse(blk, false).unwrap();
        assert_eq!(b.as_bytes(), blk);
        if sb.has_metadata_csum() {
            b.verify_checksum(sb.csum_seed(), inode.file_acl()).unwrap();
        }
        assert!(b.entry_hashes_ok());
        assert!(xattr::is_block_ordered(b.entries()));
        // e2fsprogs leaves h_hash 0 (never shared); the kernel maintains it.
        if b.hash() != 0 {
            assert_eq!(b.hash(), b.compute_block_hash());
        }
        assert_eq!(b.refcount(), 1);
        for e in b.entries() {
            v.push((e.full_name().unwrap(), b.value(e).to_vec()));
        }
    }
    v
}

#[test]
fn xattrs_match_debugfs() {
    let mut cases: Vec<(&Image, &str)> = fixtures::all_images()
        .into_iter()
        .map(|i| (i, "/small.txt"))
        .collect();
    if let Some(k) = fixtures::kernel_csum() {
        cases.push((&k.clean, "/xfile"));
    }
    for (img, path) in cases {
        let ino = img.ino(path);
        let ours = our_xattrs(img, ino);
        let set: BTreeSet<(Vec<u8>, usize)> =
            ours.iter().map(|(n, v)| (n.clone(), v.len())).collect();
        assert_eq!(set, ea_list(img, path), "{} {path}", img.path.display());
        assert!(
            img.inode(ino).file_acl() != 0,
            "{}: the big value should be in a block",
            img.path.display()
        );
        for (n, v) in &ours {
            match n.as_slice() {
                b"user.small" => assert_eq!(v, b"abc"),
                b"trusted.t2" | b"user.second" => assert_eq!(v, b"0123456789"),
                b"user.big" => assert!(v.iter().all(|&c| c == b'V' || c == b'Q')),
                _ => {}
            }
        }
    }
}

#[test]
fn byte_flip_each_xattr_rule() {
    let Some(img) = fixtures::csum4k() else {
        return;
    };
    let inode = img.inode(img.ino("/small.txt"));
    let blk = img.block(inode.file_acl()).to_vec();
    let kind = |b: &[u8], ea: bool| {
        XattrBlock::parse(b, ea)
            .unwrap_err()
            .corrupt_kind()
            .cloned()
            .unwrap()
    };
    let set32 =
        |b: &mut Vec<u8>, off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    let set16 =
        |b: &mut Vec<u8>, off: usize, v: u16| b[off..off + 2].copy_from_slice(&v.to_le_bytes());
    let mut b = blk.clone();
    set32(&mut b, 0, 0xEA01_0000);
    assert_eq!(kind(&b, false), CorruptKind::XattrMagic(0xEA01_0000));
    let mut b = blk.clone();
    set32(&mut b, 8, 2);
    assert_eq!(kind(&b, false), CorruptKind::XattrBlocks(2));
    // First entry at 32.
    let mut b = blk.clone();
    b[32 + 16] = 0; // NUL in the name
    assert_eq!(kind(&b, false), CorruptKind::XattrName { offset: 32 });
    let mut b = blk.clone();
    set16(&mut b, 32 + 2, (blk.len() - 2) as u16);
    assert_eq!(
        kind(&b, false),
        CorruptKind::XattrValueBounds { offset: 32 }
    );
    let mut b = blk.clone();
    set16(&mut b, 32 + 2, 36);
    assert_eq!(
        kind(&b, false),
        CorruptKind::XattrValueBounds { offset: 32 }
    );
    let mut b = blk.clone();
    set32(&mut b, 32 + 8, (1 << 24) + 1);
    assert_eq!(kind(&b, false), CorruptKind::XattrValueSize((1 << 24) + 1));
    let mut b = blk.clone();
    set32(&mut b, 32 + 4, 99);
    assert_eq!(kind(&b, false), CorruptKind::XattrValueInode(99));
    // Entries running off the block: a huge name length on an entry at the end.
    let mut b = vec![0u8; 64];
    b[..blk.len().min(32)].copy_from_slice(&blk[..32]);
    b[32] = 255;
    b[33] = 1;
    assert_eq!(
        kind(&b, false),
        CorruptKind::XattrEntryBounds { offset: 32 }
    );
    // Overlapping values: point the second entry's value into the first's.
    let two = xattr::build_block(
        1024,
        &[
            XattrSpec::inline(b"user.a", &[1; 40]),
            XattrSpec::inline(b"user.b", &[2; 40]),
        ],
        false,
    )
    .unwrap()
    .unwrap();
    let (e0, e1) = (two.entries()[0].clone(), two.entries()[1].clone());
    let mut b = two.as_bytes().to_vec();
    set16(&mut b, e1.offset + 2, e0.value_offset - 4);
    assert_eq!(
        kind(&b, false),
        CorruptKind::XattrValueOverlap { offset: e0.offset }
    );
    // Checksum (seeded with the block number).
    let sb = img.sb();
    let mut b = blk.clone();
    let n = b.len();
    b[n - 1] ^= 0x55;
    let parsed = XattrBlock::parse(&b, false).unwrap();
    let e = parsed
        .verify_checksum(sb.csum_seed(), inode.file_acl())
        .unwrap_err();
    assert!(matches!(e, FormatError::ChecksumMismatch { .. }));
    assert!(
        e.to_string()
            .contains(&format!("block {}", inode.file_acl()))
    );
}

#[test]
fn xattr_builders_accepted_by_e2fsck() {
    let Some(img) = fixtures::csum4k() else {
        return;
    };
    let sb = img.sb();
    let ino = img.ino("/big.bin");
    let mut inode = img.inode(ino);
    assert_eq!(inode.file_acl(), 0);
    // Move everything to a new layout: two in-inode attrs, a block with three.
    let ibody = vec![
        XattrSpec::inline(b"user.in1", b"one"),
        XattrSpec::inline(b"security.in2", b"two!"),
    ];
    let area_len = inode.xattr_area().len();
    let area = xattr::build_ibody(area_len, &ibody).unwrap().unwrap();
    inode.xattr_area_mut().copy_from_slice(&area);
    let block_specs = vec![
        XattrSpec::inline(b"user.blk-b", &[7u8; 500]),
        XattrSpec::inline(b"user.blk-a", b"short"),
        XattrSpec {
            name_index: 4,
            name: b"trusted-ish".to_vec(),
            value: XattrValue::Inline(vec![1, 2, 3]),
        },
    ];
    let mut blk = xattr::build_block(img.block_size(), &block_specs, false)
        .unwrap()
        .unwrap();
    // Use a free block near the end of the filesystem (mark it used in the bitmap).
    let target = sb.blocks_count() - 10;
    let (g, idx) = sb.block_group(target).unwrap();
    let mut gd = img.gd(g);
    let mut bitmap = img.block(gd.block_bitmap()).to_vec();
    assert_eq!(
        ext4kit_format::bitmap::set(&mut bitmap, idx as usize),
        Some(false)
    );
    gd.set_free_blocks_count(gd.free_blocks_count() - 1)
        .unwrap();
    gd.set_block_bitmap_checksum(&sb, &bitmap);
    gd.update_checksum(&sb, g);
    blk.update_checksum(sb.csum_seed(), target);
    inode.set_file_acl(target).unwrap();
    let bc = inode.block_count_512(true, sb.block_size_bits());
    inode
        .set_block_count_512(
            bc + u64::from(sb.block_size() / 512),
            true,
            sb.block_size_bits(),
        )
        .unwrap();
    inode.update_checksum(sb.csum_seed(), ino);
    let mut sbm = sb.clone();
    sbm.set_free_blocks_count(sb.free_blocks_count() - 1);
    sbm.update_checksum();

    let bs = img.block_size();
    let mut bytes = img.bytes.clone();
    bytes[1024..2048].copy_from_slice(sbm.as_bytes());
    let off = img.gd_offset(g);
    bytes[off..off + gd.size()].copy_from_slice(gd.as_bytes());
    let bb = img.gd(g).block_bitmap() as usize;
    bytes[bb * bs..(bb + 1) * bs].copy_from_slice(&bitmap);
    bytes[target as usize * bs..(target as usize + 1) * bs].copy_from_slice(blk.as_bytes());
    let ioff = img.inode_offset(ino);
    bytes[ioff..ioff + inode.record_size()].copy_from_slice(inode.as_bytes());
    let dir = fixtures::temp_dir();
    let path = dir.join("copy.img");
    std::fs::write(&path, &bytes).unwrap();
    Image::fsck_clean(&path);
    let copy = Image::load(&path, None);
    let names: BTreeSet<Vec<u8>> = ea_list(&copy, "/big.bin")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let want: BTreeSet<Vec<u8>> = [
        "user.in1",
        "security.in2",
        "user.blk-b",
        "user.blk-a",
        "trusted.trusted-ish",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    assert_eq!(names, want);
}
