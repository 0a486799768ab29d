//! Linear directory blocks, inline directories, htree nodes and symlinks,
//! against debugfs (`ls -p`, `htree_dump`) and e2fsck.

use std::collections::BTreeSet;

use ext4kit_format::dir::{DirBlock, DirBlockOptions};
use ext4kit_format::htree::{self, DxBlock, DxEntry, DxKind, DxOptions};
use ext4kit_format::inline_data::{self, InlineDir, SymlinkStorage};
use ext4kit_format::inode::InodeFlags;
use ext4kit_format::{CorruptKind, FormatError, IncompatFeatures, dirhash};

use crate::fixtures::{self, Image};

fn debugfs_names(img: &Image, path: &str) -> BTreeSet<Vec<u8>> {
    let out = img.debugfs(&format!("ls -p {path}"));
    out.lines()
        .filter(|l| l.starts_with('/') && !l.starts_with("/0/"))
        .map(|l| l.split('/').nth(5).unwrap().as_bytes().to_vec())
        .filter(|n| n != b"." && n != b"..")
        .collect()
}

/// Names of a directory read with our parsers (verifying every checksum).
fn our_names(img: &Image, ino: u32) -> BTreeSet<Vec<u8>> {
    let sb = img.sb();
    let inode = img.inode(ino);
    let bs = sb.block_size();
    let mut names = BTreeSet::new();
    if inode.flags().contains(InodeFlags::INLINE_DATA) {
        let d = InlineDir::parse(&inode, bs, false).unwrap();
        for region in std::iter::once(&d.head).chain(d.tail.as_ref()) {
            for e in region.live_entries().unwrap() {
                names.insert(e.name.to_vec());
            }
        }
        return names;
    }
    let csum = sb.has_metadata_csum();
    let opts = DirBlockOptions {
        block_size: bs,
        has_tail: csum,
        max_inode: Some(sb.inodes_count()),
    };
    let indexed = inode.flags().contains(InodeFlags::INDEX);
    for (l, p, len, _) in img.map_file(ino).0 {
        for i in 0..u64::from(len) {
            let blk = img.block(p + i);
            if indexed && htree::detect(blk, bs).is_some() {
                let _ = l;
                continue;
            }
            let b = DirBlock::parse(blk, opts)
                .unwrap_or_else(|e| panic!("dir {ino} block {}: {e}", p + i));
            assert_eq!(b.as_bytes(), blk);
            if csum {
                b.verify_checksum(sb.csum_seed(), ino, inode.generation())
                    .unwrap();
            }
            for e in b.live_entries().unwrap() {
                if !e.is_dot_or_dotdot() {
                    names.insert(e.name.to_vec());
                }
            }
        }
    }
    names
}

#[test]
fn directories_match_debugfs() {
    let mut images: Vec<&Image> = fixtures::all_images();
    if let Some(k) = fixtures::kernel_csum() {
        images.push(&k.clean);
    }
    for img in images {
        for path in ["/", "/sub", "/sub/deeper", "/many", "/idir", "/bigdir"] {
            if img.debugfs(&format!("stat {path}")).is_empty() {
                continue;
            }
            let Some(first) = img
                .debugfs(&format!("stat {path}"))
                .lines()
                .next()
                .map(str::to_string)
            else {
                continue;
            };
            if !first.starts_with("Inode:") {
                continue;
            }
            let ino = img.ino(path);
            let (ours, theirs) = (our_names(img, ino), debugfs_names(img, path));
            if ours != theirs {
                let only_ours: Vec<String> = ours
                    .difference(&theirs)
                    .take(5)
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .collect();
                let only_theirs: Vec<String> = theirs
                    .difference(&ours)
                    .take(5)
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .collect();
                panic!(
                    "{} {path}: {} vs {} names; only ours {only_ours:?}; only debugfs {only_theirs:?}",
                    img.path.display(),
                    ours.len(),
                    theirs.len()
                );
            }
        }
    }
}

#[test]
fn kernel_inline_data_and_symlinks() {
    let Some(k) = fixtures::kernel_csum() else {
        return;
    };
    let img = &k.clean;
    let sb = img.sb();
    assert!(sb.has_incompat(IncompatFeatures::INLINE_DATA));
    let idir = img.inode(img.ino("/idir"));
    assert!(idir.flags().contains(InodeFlags::INLINE_DATA));
    let d = InlineDir::parse(&idir, sb.block_size(), false).unwrap();
    assert_eq!(d.parent, 2);
    for (path, want) in [
        ("/tiny", b"inline tiny file".to_vec()),
        ("/medium", fixtures::pseudo_random(5, 100)),
    ] {
        let inode = img.inode(img.ino(path));
        assert!(inode.flags().contains(InodeFlags::INLINE_DATA), "{path}");
        assert_eq!(
            inline_data::read_inline_data(&inode, false).unwrap(),
            want,
            "{path}"
        );
    }
    let medium = img.inode(img.ino("/medium"));
    assert_eq!(
        inline_data::system_data(&medium, false)
            .unwrap()
            .unwrap()
            .len(),
        40
    );
    let fast = img.inode(img.ino("/kfast"));
    assert_eq!(
        inline_data::symlink_storage(&fast, &sb),
        SymlinkStorage::Fast
    );
    assert_eq!(
        inline_data::fast_symlink_target(&fast).unwrap(),
        b"/kernel/fast"
    );
    let slow = img.inode(img.ino("/kslow"));
    let storage = inline_data::symlink_storage(&slow, &sb);
    let target = match storage {
        SymlinkStorage::Inline => inline_data::read_inline_data(&slow, false).unwrap(),
        SymlinkStorage::Blocks => img.read_file(img.ino("/kslow")),
        SymlinkStorage::Fast => panic!("200-byte target cannot be fast"),
    };
    assert_eq!(target, "y".repeat(200).as_bytes());
}

#[test]
fn e2fsprogs_fast_and_slow_symlinks_give_their_storage_and_targets() {
    for img in fixtures::all_images() {
        let sb = img.sb();
        let fast = img.inode(img.ino("/fastlink"));
        assert_eq!(
            inline_data::symlink_storage(&fast, &sb),
            SymlinkStorage::Fast
        );
        assert_eq!(
            inline_data::fast_symlink_target(&fast).unwrap(),
            b"/short/target"
        );
        let ino = img.ino("/slowlink");
        let slow = img.inode(ino);
        assert_eq!(
            inline_data::symlink_storage(&slow, &sb),
            SymlinkStorage::Blocks
        );
        assert_eq!(img.read_file(ino), "x".repeat(100).as_bytes());
    }
}

fn leaf_of(img: &Image, path: &str) -> (u32, u32, Vec<u8>, u64) {
    let ino = img.ino(path);
    let inode = img.inode(ino);
    let (map, _) = img.map_file(ino);
    (
        ino,
        inode.generation(),
        img.block(map[0].1).to_vec(),
        map[0].1,
    )
}

#[test]
fn byte_flip_each_dirent_rule() {
    let Some(img) = fixtures::csum1k() else {
        return;
    };
    let sb = img.sb();
    let (ino, generation, blk, _) = leaf_of(img, "/sub");
    let opts = DirBlockOptions {
        block_size: sb.block_size(),
        has_tail: true,
        max_inode: Some(sb.inodes_count()),
    };
    let kind = |b: &[u8]| {
        DirBlock::parse(b, opts)
            .unwrap_err()
            .corrupt_kind()
            .cloned()
            .unwrap()
    };
    // Entry 1 ("..") is at offset 12.
    let set16 =
        |b: &mut Vec<u8>, off: usize, v: u16| b[off..off + 2].copy_from_slice(&v.to_le_bytes());
    let mut b = blk.clone();
    set16(&mut b, 12 + 4, 8);
    assert_eq!(
        kind(&b),
        CorruptKind::DirentRecLen {
            offset: 12,
            rec_len: 8
        }
    );
    let mut b = blk.clone();
    let rec = u16::from_le_bytes([blk[16], blk[17]]);
    set16(&mut b, 12 + 4, rec + 2);
    assert_eq!(
        kind(&b),
        CorruptKind::DirentRecLen {
            offset: 12,
            rec_len: u32::from(rec) + 2
        }
    );
    let mut b = blk.clone();
    set16(&mut b, 4, 12);
    b[6] = 20;
    assert_eq!(
        kind(&b),
        CorruptKind::DirentNameLen {
            offset: 0,
            name_len: 20,
            rec_len: 12
        }
    );
    let last = DirBlock::parse(&blk, opts)
        .unwrap()
        .entries()
        .unwrap()
        .last()
        .map(|e| (e.offset, e.rec_len))
        .unwrap();
    let mut b = blk.clone();
    set16(&mut b, last.0 + 4, last.1 as u16 + 4);
    assert_eq!(
        kind(&b),
        CorruptKind::DirentOverrun {
            offset: last.0,
            rec_len: last.1 + 4
        }
    );
    let mut b = blk.clone();
    b[0..4].copy_from_slice(&(sb.inodes_count() + 1).to_le_bytes());
    assert_eq!(
        kind(&b),
        CorruptKind::DirentInode {
            offset: 0,
            inode: sb.inodes_count() + 1
        }
    );
    let mut b = blk.clone();
    let n = b.len();
    b[n - 5] = 0; // det_reserved_ft
    assert_eq!(kind(&b), CorruptKind::DirentTail);
    // Checksum.
    let mut b = blk.clone();
    b[8] ^= 0x01; // '.' name byte
    let p = DirBlock::parse(&b, opts).unwrap();
    assert!(matches!(
        p.verify_checksum(sb.csum_seed(), ino, generation),
        Err(FormatError::ChecksumMismatch { .. })
    ));
}

#[test]
fn dirent_builders_accepted_by_e2fsck() {
    let Some(img) = fixtures::csum1k() else {
        return;
    };
    let sb = img.sb();
    let (ino, generation, blk, pblk) = leaf_of(img, "/sub");
    let opts = DirBlockOptions::new(sb.block_size(), true);
    let orig = DirBlock::parse(&blk, opts).unwrap();
    let entries: Vec<(Vec<u8>, u32, u8)> = orig
        .live_entries()
        .unwrap()
        .iter()
        .map(|e| (e.name.to_vec(), e.inode, e.file_type))
        .collect();
    // Rebuild: "." and ".." then the rest through add_entry, with a junk entry added and removed.
    let mut b = DirBlock::new_dir(blk.len(), opts, entries[0].1, entries[1].1, true).unwrap();
    assert!(b.add_entry(b"temporary-entry", 11, 1).unwrap());
    for (name, i, ft) in &entries[2..] {
        assert!(b.add_entry(name, *i, *ft).unwrap());
    }
    assert_eq!(b.remove_entry(b"temporary-entry").unwrap(), Some(11));
    b.compact().unwrap();
    b.update_checksum(sb.csum_seed(), ino, generation);
    b.verify_checksum(sb.csum_seed(), ino, generation).unwrap();
    let names: Vec<Vec<u8>> = b
        .live_entries()
        .unwrap()
        .iter()
        .map(|e| e.name.to_vec())
        .collect();
    assert_eq!(
        names,
        entries.iter().map(|e| e.0.clone()).collect::<Vec<_>>()
    );
    let dir = fixtures::temp_dir();
    let path = dir.join("copy.img");
    let mut bytes = img.bytes.clone();
    let bs = blk.len();
    bytes[pblk as usize * bs..(pblk as usize + 1) * bs].copy_from_slice(b.as_bytes());
    std::fs::write(&path, &bytes).unwrap();
    Image::fsck_clean(&path);
}

// ---------------------------------------------------------------------------
// htree

fn dx_opts(img: &Image) -> DxOptions {
    let sb = img.sb();
    DxOptions {
        block_size: sb.block_size(),
        has_csum: sb.has_metadata_csum(),
        largedir: sb.has_incompat(IncompatFeatures::LARGEDIR),
    }
}

/// Walks an htree directory, checking every node and that every leaf name
/// hashes into its range. Returns (levels, number of live names).
fn check_htree(img: &Image, path: &str) -> (u8, usize) {
    let sb = img.sb();
    let ino = img.ino(path);
    let inode = img.inode(ino);
    assert!(
        inode.flags().contains(InodeFlags::INDEX),
        "{path} is not indexed"
    );
    let (map, _) = img.map_file(ino);
    let lblk = |l: u32| -> &[u8] {
        let (s, p, _, _) = map
            .iter()
            .find(|e| u64::from(l) >= e.0 && u64::from(l) < e.0 + u64::from(e.2))
            .unwrap();
        img.block(p + (u64::from(l) - s))
    };
    let opts = dx_opts(img);
    let root_bytes = lblk(0);
    assert_eq!(
        htree::detect(root_bytes, sb.block_size()),
        Some(DxKind::Root)
    );
    let root = DxBlock::parse_root(root_bytes, opts).unwrap();
    assert_eq!(root.as_bytes(), root_bytes);
    if opts.has_csum {
        root.verify_checksum(sb.csum_seed(), ino, inode.generation())
            .unwrap();
    }
    let info = root.root_info();
    let version = sb.effective_hash_version(info.hash_version).unwrap();
    let seed = sb.hash_seed();
    let leaf_opts = DirBlockOptions {
        block_size: sb.block_size(),
        has_tail: opts.has_csum,
        max_inode: Some(sb.inodes_count()),
    };
    let mut count = 0usize;
    // (block, level, low hash, high hash exclusive)
    let mut stack = vec![(root, 0u8, 0u32, u64::from(u32::MAX) + 1)];
    while let Some((node, level, lo, hi)) = stack.pop() {
        let entries = node.entries();
        for (i, e) in entries.iter().enumerate() {
            let start = if i == 0 { lo } else { e.hash & !1 };
            let end = entries
                .get(i + 1)
                .map_or(hi, |n| u64::from(n.hash & !1) + 1);
            let child = lblk(e.block & htree::DX_BLOCK_MASK);
            if level < info.indirect_levels {
                let n = DxBlock::parse_node(child, opts).unwrap();
                if opts.has_csum {
                    n.verify_checksum(sb.csum_seed(), ino, inode.generation())
                        .unwrap();
                }
                stack.push((n, level + 1, start, end));
            } else {
                let leaf = DirBlock::parse(child, leaf_opts).unwrap();
                if opts.has_csum {
                    leaf.verify_checksum(sb.csum_seed(), ino, inode.generation())
                        .unwrap();
                }
                for d in leaf.live_entries().unwrap() {
                    let h = dirhash(d.name, version, &seed).unwrap().major;
                    assert!(
                        h >= start && u64::from(h) < end,
                        "{path}: {:?} hash {h:#x} outside {start:#x}..{end:#x}",
                        String::from_utf8_lossy(d.name)
                    );
                    count += 1;
                }
            }
        }
    }
    (info.indirect_levels, count)
}

fn htree_dump_root(img: &Image, path: &str) -> (u16, u16, u8, Vec<DxEntry>) {
    let out = img.debugfs(&format!("htree_dump {path}"));
    let mut count = 0;
    let mut limit = 0;
    let mut levels = 0;
    let mut entries = Vec::new();
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Number of entries (count): ") {
            if count == 0 {
                count = v.parse().unwrap();
            }
        } else if let Some(v) = t.strip_prefix("Number of entries (limit): ") {
            if limit == 0 {
                limit = v.parse().unwrap();
            }
        } else if let Some(v) = t.strip_prefix("Indirect levels: ") {
            levels = v.parse().unwrap();
        } else if let Some(v) = t.strip_prefix("Entry #") {
            if entries.len() < usize::from(count) {
                let hash = v
                    .split("Hash 0x")
                    .nth(1)
                    .unwrap()
                    .split(',')
                    .next()
                    .unwrap();
                let block = v
                    .split("block ")
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .next()
                    .unwrap();
                entries.push(DxEntry {
                    hash: u32::from_str_radix(hash, 16).unwrap(),
                    block: block.parse().unwrap(),
                });
            }
        }
    }
    (count, limit, levels, entries)
}

#[test]
fn htree_directories_verify_and_match_htree_dump() {
    let mut cases: Vec<(&Image, &str, usize)> = Vec::new();
    for (img, n) in [
        (fixtures::csum4k(), 600),
        (fixtures::csum1k(), 6000),
        (fixtures::gdtcsum1k(), 300),
        (fixtures::ext3_2k(), 300),
        (fixtures::ext2_1k(), 300),
    ] {
        if let Some(img) = img {
            cases.push((img, "/many", n));
        }
    }
    if let Some(k) = fixtures::kernel_csum() {
        cases.push((&k.clean, "/bigdir", 1500));
    }
    let mut saw_two_levels = false;
    for (img, path, n) in cases {
        let (levels, count) = check_htree(img, path);
        assert_eq!(count, n, "{} {path}", img.path.display());
        saw_two_levels |= levels > 0;
        let root = DxBlock::parse_root(img.block(img.map_file(img.ino(path)).0[0].1), dx_opts(img))
            .unwrap();
        let (c, l, lv, e) = htree_dump_root(img, path);
        assert_eq!(
            (c, l, lv),
            (root.count(), root.limit(), root.root_info().indirect_levels)
        );
        assert_eq!(e, root.entries());
    }
    if fixtures::csum1k().is_some() {
        assert!(
            saw_two_levels,
            "the 6000-entry directory should need an index level"
        );
    }
}

#[test]
fn byte_flip_each_htree_rule() {
    let Some(img) = fixtures::csum1k() else {
        return;
    };
    let sb = img.sb();
    let ino = img.ino("/many");
    let inode = img.inode(ino);
    let map = img.map_file(ino).0;
    let root = img.block(map[0].1).to_vec();
    let opts = dx_opts(img);
    let rk = |b: &[u8]| {
        DxBlock::parse_root(b, opts)
            .unwrap_err()
            .corrupt_kind()
            .cloned()
            .unwrap()
    };
    let limit = u16::from_le_bytes([root[32], root[33]]);
    let count = u16::from_le_bytes([root[34], root[35]]);
    let mut b = root.clone();
    b[4] = 16;
    assert_eq!(rk(&b), CorruptKind::DxFakeDirent);
    let mut b = root.clone();
    b[29] = 12;
    assert_eq!(rk(&b), CorruptKind::DxRootInfo);
    let mut b = root.clone();
    b[24] = 1;
    assert_eq!(rk(&b), CorruptKind::DxRootInfo);
    let mut b = root.clone();
    b[28] = 9;
    assert_eq!(rk(&b), CorruptKind::DxHashVersion(9));
    let mut b = root.clone();
    b[31] = 1;
    assert_eq!(rk(&b), CorruptKind::DxUnusedFlags(1));
    let mut b = root.clone();
    b[30] = 2;
    assert_eq!(rk(&b), CorruptKind::DxLevels(2));
    let mut b = root.clone();
    b[32..34].copy_from_slice(&(limit - 1).to_le_bytes());
    assert_eq!(
        rk(&b),
        CorruptKind::DxLimit {
            found: limit - 1,
            expected: limit
        }
    );
    let mut b = root.clone();
    b[34..36].copy_from_slice(&0u16.to_le_bytes());
    assert_eq!(rk(&b), CorruptKind::DxCount { count: 0, limit });
    let mut b = root.clone();
    b[34..36].copy_from_slice(&(limit + 1).to_le_bytes());
    assert_eq!(
        rk(&b),
        CorruptKind::DxCount {
            count: limit + 1,
            limit
        }
    );
    assert!(count >= 3);
    let mut b = root.clone();
    b[40..44].copy_from_slice(&u32::MAX.to_le_bytes()); // entry 1 above entry 2
    assert_eq!(rk(&b), CorruptKind::DxHashOrder { index: 2 });
    // Interior node fake dirent.
    let node_blk = {
        let r = DxBlock::parse_root(&root, opts).unwrap();
        let l = r.entries()[0].block;
        let (s, p, _, _) = map
            .iter()
            .find(|e| u64::from(l) >= e.0 && u64::from(l) < e.0 + u64::from(e.2))
            .unwrap();
        img.block(p + (u64::from(l) - s)).to_vec()
    };
    let mut b = node_blk.clone();
    b[6] = 1;
    assert_eq!(
        DxBlock::parse_node(&b, opts).unwrap_err().corrupt_kind(),
        Some(&CorruptKind::DxFakeDirent)
    );
    // Checksums.
    let mut b = root.clone();
    b[40] ^= 1;
    let p = DxBlock::parse_root(&b, opts).unwrap();
    assert!(matches!(
        p.verify_checksum(sb.csum_seed(), ino, inode.generation()),
        Err(FormatError::ChecksumMismatch { .. })
    ));
    // Bytes past `count` entries are not covered by the checksum.
    let mut b = root.clone();
    let past = 32 + usize::from(count) * 8 + 2;
    b[past] ^= 0xFF;
    DxBlock::parse_root(&b, opts)
        .unwrap()
        .verify_checksum(sb.csum_seed(), ino, inode.generation())
        .unwrap();
}

#[test]
fn rebuilt_dx_root_accepted_by_e2fsck() {
    let Some(img) = fixtures::csum1k() else {
        return;
    };
    let sb = img.sb();
    let ino = img.ino("/many");
    let inode = img.inode(ino);
    let pblk = img.map_file(ino).0[0].1;
    let opts = dx_opts(img);
    let orig = DxBlock::parse_root(img.block(pblk), opts).unwrap();
    let info = orig.root_info();
    let mut b = DxBlock::new_root(
        opts,
        ino,
        orig.parent_inode(),
        2,
        info.hash_version,
        info.indirect_levels,
        &orig.entries(),
    )
    .unwrap();
    b.update_checksum(sb.csum_seed(), ino, inode.generation());
    let p = DxBlock::parse_root(b.as_bytes(), opts).unwrap();
    p.verify_checksum(sb.csum_seed(), ino, inode.generation())
        .unwrap();
    assert_eq!(p.entries(), orig.entries());
    let dir = fixtures::temp_dir();
    let path = dir.join("copy.img");
    let mut bytes = img.bytes.clone();
    let bs = img.block_size();
    bytes[pblk as usize * bs..(pblk as usize + 1) * bs].copy_from_slice(b.as_bytes());
    std::fs::write(&path, &bytes).unwrap();
    Image::fsck_clean(&path);
}

#[test]
fn split_real_htree_leaf() {
    let Some(img) = fixtures::csum1k() else {
        return;
    };
    let sb = img.sb();
    let ino = img.ino("/many");
    let inode = img.inode(ino);
    let bs = sb.block_size();
    let opts = DirBlockOptions::new(bs, true);
    let version = {
        let root = DxBlock::parse_root(img.block(img.map_file(ino).0[0].1), dx_opts(img)).unwrap();
        sb.effective_hash_version(root.root_info().hash_version)
            .unwrap()
    };
    let seed = sb.hash_seed();
    // The fullest leaf of the directory.
    let mut best: Option<(usize, DirBlock)> = None;
    for (_, p, len, _) in img.map_file(ino).0 {
        for i in 0..u64::from(len) {
            let blk = img.block(p + i);
            if htree::detect(blk, bs).is_some() {
                continue;
            }
            let b = DirBlock::parse(blk, opts).unwrap();
            let n = b.live_entries().unwrap().len();
            if best.as_ref().is_none_or(|(m, _)| n > *m) {
                best = Some((n, b));
            }
        }
    }
    let (n, mut old) = best.unwrap();
    let (mut new, split) =
        htree::split_leaf(&mut old, |name| dirhash(name, version, &seed)).unwrap();
    old.validate().unwrap();
    new.validate().unwrap();
    assert_eq!(
        old.live_entries().unwrap().len() + new.live_entries().unwrap().len(),
        n
    );
    assert_eq!(new.live_entries().unwrap().len(), split.moved);
    for e in new.live_entries().unwrap() {
        assert!(dirhash(e.name, version, &seed).unwrap().major >= split.split_hash);
    }
    for e in old.live_entries().unwrap() {
        assert!(dirhash(e.name, version, &seed).unwrap().major <= split.split_hash);
    }
    // Neither half is more than half full.
    assert!(old.free_bytes().unwrap() * 2 >= bs as usize - 12 - 100);
    assert!(new.free_bytes().unwrap() * 2 >= bs as usize - 12 - 100);
    for b in [&mut old, &mut new] {
        b.update_checksum(sb.csum_seed(), ino, inode.generation());
        b.verify_checksum(sb.csum_seed(), ino, inode.generation())
            .unwrap();
    }
}
