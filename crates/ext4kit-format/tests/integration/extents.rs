//! Extent trees and indirect maps: our block maps equal debugfs's and read the
//! right bytes; each extent rule fails on a flipped byte; rebuilt nodes verify.

use ext4kit_format::extent::{EXTENT_MAGIC, Extent, ExtentIndex, ExtentNode, NodeLocation};
use ext4kit_format::{CorruptKind, FormatError};

use crate::fixtures::{self, Image};

/// Leaf extents from `debugfs ex`: (logical, physical, len).
fn debugfs_leaf_extents(img: &Image, path: &str) -> Vec<(u64, u64, u32)> {
    let out = img.debugfs(&format!("ex {path}"));
    let mut v = Vec::new();
    for line in out.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "1/ 1  3/ 21  4 -  4  2144 -  2144  1" ; leaves have "a - b" physical ranges.
        let (lvl, max) = (f[0].trim_end_matches('/'), f[1]);
        if lvl != max {
            continue;
        }
        let logical: u64 = f[4].parse().unwrap();
        let phys: u64 = f[7].parse().unwrap();
        let len: u32 = f[10].parse().unwrap();
        v.push((logical, phys, len));
    }
    v
}

fn debugfs_blocks(img: &Image, path: &str) -> Vec<u64> {
    img.debugfs(&format!("blocks {path}"))
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect()
}

#[test]
fn block_maps_match_debugfs_and_contents() {
    for img in fixtures::all_images() {
        let tree = img.tree.as_ref().unwrap();
        for path in [
            "/small.txt",
            "/big.bin",
            "/sparse.bin",
            "/sub/deeper/leaf.txt",
        ] {
            let ino = img.ino(path);
            let inode = img.inode(ino);
            let (map, _) = img.map_file(ino);
            if inode
                .flags()
                .contains(ext4kit_format::inode::InodeFlags::EXTENTS)
            {
                let ours: Vec<(u64, u64, u32)> = map.iter().map(|e| (e.0, e.1, e.2)).collect();
                assert_eq!(
                    ours,
                    debugfs_leaf_extents(img, path),
                    "{} {path}",
                    img.path.display()
                );
                let root = ExtentNode::parse_root(inode.block_area()).unwrap();
                assert_eq!(root.as_bytes(), inode.block_area());
            } else {
                // debugfs lists data and indirect blocks.
                let (_, meta) = img.map_file(ino);
                let mut ours: Vec<u64> = map.iter().map(|e| e.1).chain(meta).collect();
                ours.sort_unstable();
                let mut theirs = debugfs_blocks(img, path);
                theirs.sort_unstable();
                assert_eq!(ours, theirs, "{} {path}", img.path.display());
            }
            let want = std::fs::read(tree.join(path.trim_start_matches('/'))).unwrap();
            assert!(
                img.read_file(ino) == want,
                "{} {path}: contents differ",
                img.path.display()
            );
        }
    }
}

#[test]
fn sparse_file_has_an_index_level() {
    let Some(img) = fixtures::csum4k() else {
        return;
    };
    let ino = img.ino("/sparse.bin");
    let inode = img.inode(ino);
    let root = ExtentNode::parse_root(inode.block_area()).unwrap();
    assert_eq!(root.depth(), 1);
    assert_eq!(root.header().max, 4);
    let (_, blocks) = img.map_file(ino);
    assert_eq!(blocks.len(), 1);
}

/// The index root and leaf block of /sparse.bin in a metadata_csum image.
fn sparse_nodes(img: &Image) -> (u32, u32, Vec<u8>, Vec<u8>, u64) {
    let ino = img.ino("/sparse.bin");
    let inode = img.inode(ino);
    let root = inode.block_area().to_vec();
    let idx = ExtentNode::parse_root(&root).unwrap().indexes()[0];
    (
        ino,
        inode.generation(),
        root,
        img.block(idx.child_block).to_vec(),
        idx.child_block,
    )
}

fn kind_of(bytes: &[u8], loc: NodeLocation, depth: Option<u16>) -> CorruptKind {
    ExtentNode::parse(bytes, loc, depth)
        .unwrap_err()
        .corrupt_kind()
        .cloned()
        .unwrap()
}

#[test]
fn byte_flip_each_extent_rule() {
    let Some(img) = fixtures::csum4k() else {
        return;
    };
    let (_, _, root, leaf, _) = sparse_nodes(img);
    let bs = leaf.len();
    let cap = ((bs - 12) / 12) as u16;
    let set16 =
        |b: &mut Vec<u8>, off: usize, v: u16| b[off..off + 2].copy_from_slice(&v.to_le_bytes());
    let set32 =
        |b: &mut Vec<u8>, off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());

    let mut b = root.clone();
    b[0] = 0;
    b[1] = 0;
    assert_eq!(
        kind_of(&b, NodeLocation::Inode, None),
        CorruptKind::ExtentMagic(0)
    );
    let mut b = root.clone();
    set16(&mut b, 4, 0);
    assert_eq!(
        kind_of(&b, NodeLocation::Inode, None),
        CorruptKind::ExtentMax {
            found: 0,
            capacity: 4
        }
    );
    let mut b = root.clone();
    set16(&mut b, 4, 5);
    assert_eq!(
        kind_of(&b, NodeLocation::Inode, None),
        CorruptKind::ExtentMax {
            found: 5,
            capacity: 4
        }
    );
    let mut b = leaf.clone();
    set16(&mut b, 4, cap + 1);
    assert_eq!(
        kind_of(&b, NodeLocation::Block, Some(0)),
        CorruptKind::ExtentMax {
            found: cap + 1,
            capacity: cap
        }
    );
    let mut b = root.clone();
    set16(&mut b, 2, 5);
    assert_eq!(
        kind_of(&b, NodeLocation::Inode, None),
        CorruptKind::ExtentEntries { entries: 5, max: 4 }
    );
    let mut b = root.clone();
    set16(&mut b, 6, 6);
    assert_eq!(
        kind_of(&b, NodeLocation::Inode, None),
        CorruptKind::ExtentDepth(6)
    );
    assert_eq!(
        kind_of(&leaf, NodeLocation::Block, Some(1)),
        CorruptKind::ExtentDepth(0)
    );
    let mut b = root.clone();
    set16(&mut b, 2, 0);
    assert_eq!(
        kind_of(&b, NodeLocation::Inode, None),
        CorruptKind::ExtentEmptyIndex
    );
    // Leaf entry 2: zero length, then before entry 1, then past 2^32.
    let e2 = 12 + 2 * 12;
    let mut b = leaf.clone();
    set16(&mut b, e2 + 4, 0);
    assert_eq!(
        kind_of(&b, NodeLocation::Block, Some(0)),
        CorruptKind::ExtentZeroLength { index: 2 }
    );
    let mut b = leaf.clone();
    set32(&mut b, e2, 0);
    assert_eq!(
        kind_of(&b, NodeLocation::Block, Some(0)),
        CorruptKind::ExtentOrder { index: 2 }
    );
    let n = u16::from_le_bytes([leaf[2], leaf[3]]) as usize;
    let last = 12 + (n - 1) * 12;
    let mut b = leaf.clone();
    set32(&mut b, last, u32::MAX);
    set16(&mut b, last + 4, 2);
    assert_eq!(
        kind_of(&b, NodeLocation::Block, Some(0)),
        CorruptKind::ExtentLogicalOverflow {
            index: (n - 1) as u16
        }
    );
    // Index order.
    let mut idx_node = ExtentNode::build_index(
        bs,
        NodeLocation::Block,
        1,
        &[
            ExtentIndex {
                logical_block: 10,
                child_block: 5,
                unused: 0,
            },
            ExtentIndex {
                logical_block: 20,
                child_block: 6,
                unused: 0,
            },
        ],
    )
    .unwrap();
    idx_node
        .set_indexes(&[
            ExtentIndex {
                logical_block: 10,
                child_block: 5,
                unused: 0,
            },
            ExtentIndex {
                logical_block: 10,
                child_block: 6,
                unused: 0,
            },
        ])
        .unwrap();
    assert_eq!(
        kind_of(idx_node.as_bytes(), NodeLocation::Block, None),
        CorruptKind::ExtentOrder { index: 1 }
    );
    assert_eq!(u16::from_le_bytes([root[0], root[1]]), EXTENT_MAGIC);
}

#[test]
fn tail_checksum_and_rebuild() {
    let Some(img) = fixtures::csum4k() else {
        return;
    };
    let sb = img.sb();
    let (ino, generation, _, leaf, blk) = sparse_nodes(img);
    let node = ExtentNode::parse(&leaf, NodeLocation::Block, Some(0)).unwrap();
    node.verify_checksum(sb.csum_seed(), ino, generation)
        .unwrap();
    let mut b = leaf.clone();
    b[12 + 8] ^= 0x01; // physical block of entry 0
    let bad = ExtentNode::parse(&b, NodeLocation::Block, Some(0)).unwrap();
    let e = bad
        .verify_checksum(sb.csum_seed(), ino, generation)
        .unwrap_err();
    assert!(matches!(e, FormatError::ChecksumMismatch { .. }), "{e}");
    assert!(
        node.verify_checksum(sb.csum_seed(), ino, generation + 1)
            .is_err()
    );
    // Rebuilding the leaf from its extents with the builder gives a block that verifies
    // and that e2fsck accepts in place of the original.
    let extents: Vec<Extent> = node.extents();
    let mut rebuilt = ExtentNode::build_leaf(leaf.len(), NodeLocation::Block, &extents).unwrap();
    rebuilt.set_generation(node.header().generation);
    rebuilt.update_checksum(sb.csum_seed(), ino, generation);
    rebuilt
        .verify_checksum(sb.csum_seed(), ino, generation)
        .unwrap();
    assert_eq!(rebuilt.extents(), extents);
    let dir = fixtures::temp_dir();
    let path = dir.join("copy.img");
    let mut bytes = img.bytes.clone();
    let bs = img.block_size();
    bytes[blk as usize * bs..(blk as usize + 1) * bs].copy_from_slice(rebuilt.as_bytes());
    std::fs::write(&path, &bytes).unwrap();
    Image::fsck_clean(&path);
}
