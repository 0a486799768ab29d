//! The read side of ext4kit-fs against images made at test time by mke2fs / e2fsck / the
//! kernel:
//! - one byte-flip test per validation rule: a typed error naming the structure, inode, block;
//! - cycles in an extent tree and in a directory's dx nodes end with an error;
//! - htree hashes and lookups agree with `debugfs htree_dump` for every hash variant, and a
//!   lookup in an indexed directory reads a handful of blocks, not the directory;
//! - journal replay in memory: revoke records honoured, replay stops at the first invalid
//!   transaction (a corrupt descriptor), `JournalMode::Ignore` reads the disk as it is.
//!
//! Without e2fsprogs / root the tests skip with a note (`EXT4KIT_REQUIRE_KERNEL=1` fails).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ext4kit_blockdev::{BlockDevice, FaultDevice, MemDevice};
use ext4kit_fs::format::checksum;
use ext4kit_fs::format::extent::{ExtentIndex, ExtentNode, NodeLocation};
use ext4kit_fs::format::htree::{DxBlock, DxEntry, DxOptions};
use ext4kit_fs::format::inode::Inode;
use ext4kit_fs::format::{CorruptKind, Structure};
use ext4kit_fs::{Corruption, Error, ExtentKind, Fs, JournalMode, OpenOptions, ROOT_INO};
use ext4kit_testkit::{
    LoopMount, Mke2fs, debugfs, e2fsck_repair, process_temp_dir, require_kernel, run_ok,
};

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An image held in memory.
#[derive(Clone)]
struct Img {
    bytes: Vec<u8>,
}

impl Img {
    fn open_with(&self, journal: JournalMode) -> Result<Fs, Error> {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::from_image(1024, self.bytes.clone()));
        Fs::open(
            dev,
            &OpenOptions {
                journal,
                ..OpenOptions::default()
            },
        )
    }
    fn open(&self) -> Result<Fs, Error> {
        self.open_with(JournalMode::Replay)
    }
    fn bs(&self) -> usize {
        self.open_with(JournalMode::Ignore).unwrap().block_size() as usize
    }
    fn block_mut(&mut self, b: u64) -> &mut [u8] {
        let bs = self.bs();
        &mut self.bytes[b as usize * bs..(b as usize + 1) * bs]
    }
    /// Byte offset of inode `ino`'s record and its inode table block.
    fn inode_at(&self, ino: u32) -> (usize, u64) {
        let fs = self.open_with(JournalMode::Ignore).unwrap();
        let sb = fs.superblock();
        let (g, off) = sb.inode_table_offset(ino).unwrap();
        let start = fs.group_descs()[g as usize].inode_table() * u64::from(sb.block_size()) + off;
        (start as usize, start / u64::from(sb.block_size()))
    }
    /// Applies `f` to inode `ino` and fixes its checksum.
    fn edit_inode(&mut self, ino: u32, f: impl FnOnce(&mut Inode)) {
        let fs = self.open_with(JournalMode::Ignore).unwrap();
        let isz = usize::from(fs.superblock().inode_size());
        let seed = fs.superblock().csum_seed();
        let csum = fs.superblock().has_metadata_csum();
        drop(fs);
        let (at, _) = self.inode_at(ino);
        let mut inode = Inode::from_bytes_unchecked(&self.bytes[at..at + isz]).unwrap();
        f(&mut inode);
        if csum {
            inode.update_checksum(seed, ino);
        }
        self.bytes[at..at + isz].copy_from_slice(inode.as_bytes());
    }
}

/// Asserts a corruption / checksum error about `structure` naming `ino` and `block`.
fn assert_typed(e: &Error, structure: Structure, ino: Option<u32>, block: Option<u64>) {
    assert_eq!(e.structure(), Some(structure), "{e}");
    if ino.is_some() {
        assert_eq!(e.context().inode, ino, "inode in {e}");
    }
    if block.is_some() {
        assert_eq!(e.context().block, block, "block in {e}");
    }
    let msg = e.to_string();
    assert!(msg.contains(&structure.to_string()), "{msg}");
}

/// A POSIX ACL as getxattr(2) returns it: user::rw-, user:1000:r--, group::r--, mask::r--,
/// other::r--.
fn acl_xattr() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 4, 1000),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

fn build_tree(root: &Path, big_entries: usize, xattr_len: usize) {
    use std::io::{Seek, SeekFrom, Write};
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    fs::write(root.join("small"), b"hello\n").unwrap();
    fs::write(root.join("sub/deeper/leaf.txt"), b"leaf").unwrap();
    let mut f = fs::File::create(root.join("sparse")).unwrap();
    for i in 0..21u64 {
        f.seek(SeekFrom::Start(i * 3 * 4096)).unwrap();
        f.write_all(&ext4kit_testkit::pattern(i, 4096)).unwrap();
    }
    // Past 4 GiB: i_size_high, logical blocks above 2^20.
    let f = fs::File::create(root.join("huge")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"tail of a 5 GiB file", 5 << 30).unwrap();
    std::os::unix::fs::symlink("x".repeat(100), root.join("slowlink")).unwrap();
    std::os::unix::fs::symlink("small", root.join("fastlink")).unwrap();
    std::os::unix::fs::symlink("loop2", root.join("loop1")).unwrap();
    std::os::unix::fs::symlink("./loop1", root.join("loop2")).unwrap();
    fs::write(root.join("xfile"), b"x").unwrap();
    fs::write(root.join("acl"), b"acl").unwrap();
    rustix::fs::setxattr(
        root.join("acl"),
        "system.posix_acl_access",
        &acl_xattr(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(
        root.join("xfile"),
        "user.big",
        &vec![b'V'; xattr_len],
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::create_dir(root.join("big")).unwrap();
    for i in 0..big_entries {
        fs::write(
            root.join(format!("big/entry-{i:05}-with-a-longer-name")),
            b"",
        )
        .unwrap();
    }
}

fn make_image(
    name: &str,
    bs: u32,
    big_entries: usize,
    mkfs_extra: &[&str],
    debugfs_cmds: &str,
) -> PathBuf {
    let dir = process_temp_dir("ext4kit-fs-read-");
    let tree = dir.join("tree");
    build_tree(&tree, big_entries, if bs < 2048 { 500 } else { 1500 });
    let img = dir.join(format!("{name}.img"));
    ext4kit_testkit::mke2fs_d(&tree, &img, "ext4", bs, 32 << 20, mkfs_extra);
    if !debugfs_cmds.is_empty() {
        let cmdfile = dir.join("cmds");
        fs::write(&cmdfile, debugfs_cmds).unwrap();
        run_ok(
            "debugfs",
            &["-w", "-f", cmdfile.to_str().unwrap(), img.to_str().unwrap()],
        );
    }
    e2fsck_repair(&img, "-fyD");
    ext4kit_testkit::assert_e2fsck_clean(&img);
    img
}

/// The main fixture: ext4, 4 KiB blocks, metadata_csum, indexed `big`.
fn fixture() -> Option<&'static Img> {
    static CELL: OnceLock<Option<Img>> = OnceLock::new();
    CELL.get_or_init(|| {
        require_kernel("ext4kit-fs read fixture").then(|| Img {
            bytes: fs::read(make_image(
                "csum4k",
                4096,
                600,
                &["-O", "metadata_csum,64bit"],
                "",
            ))
            .unwrap(),
        })
    })
    .as_ref()
}

fn ino_of(img: &Img, path: &str) -> u32 {
    img.open().unwrap().resolve(path.as_bytes(), false).unwrap()
}

#[test]
fn fixture_files_links_paths_xattrs_and_extents_read_back_as_written() {
    let Some(img) = fixture() else { return };
    let fs = img.open().unwrap();
    let small = fs.resolve(b"/small", true).unwrap();
    assert_eq!(
        fs.open_file(small).unwrap().read_to_end(1 << 20).unwrap(),
        b"hello\n"
    );
    assert_eq!(fs.resolve(b"/fastlink", true).unwrap(), small);
    assert_eq!(
        fs.read_link(fs.resolve(b"/slowlink", false).unwrap())
            .unwrap(),
        vec![b'x'; 100]
    );
    assert_eq!(
        fs.resolve(b"sub/deeper/../deeper/./leaf.txt", true)
            .unwrap(),
        fs.resolve(b"/sub/deeper/leaf.txt", true).unwrap()
    );
    assert_eq!(fs.resolve(b"/..", true).unwrap(), ROOT_INO);
    let x = fs.resolve(b"/xfile", true).unwrap();
    assert_eq!(fs.get_xattr(x, b"user.big").unwrap(), vec![b'V'; 1500]);
    assert!(matches!(
        fs.get_xattr(x, b"user.none"),
        Err(Error::NoXattr { .. })
    ));
    let sparse = fs.resolve(b"/sparse", true).unwrap();
    let runs = fs.file_runs(sparse).unwrap();
    assert_eq!(
        runs.iter()
            .filter(|r| r.kind == ExtentKind::Written)
            .count(),
        21
    );
    assert_eq!(
        runs.iter().map(|r| r.len).sum::<u64>(),
        fs.stat(sparse).unwrap().size.div_ceil(4096)
    );
    let data = fs.open_file(sparse).unwrap().read_to_end(1 << 30).unwrap();
    for i in 0..21usize {
        assert_eq!(
            &data[i * 3 * 4096..i * 3 * 4096 + 4096],
            &ext4kit_testkit::pattern(i as u64, 4096)[..]
        );
        if i < 20 {
            assert!(
                data[i * 3 * 4096 + 4096..(i + 1) * 3 * 4096]
                    .iter()
                    .all(|&b| b == 0)
            );
        }
    }
    let huge = fs.resolve(b"/huge", true).unwrap();
    let r = fs.open_file(huge).unwrap();
    assert_eq!(r.size(), (5 << 30) + 20);
    let mut buf = vec![1u8; 4096 + 20];
    assert_eq!(r.read_at((5 << 30) - 4096, &mut buf).unwrap(), 4096 + 20);
    assert!(buf[..4096].iter().all(|&b| b == 0));
    assert_eq!(&buf[4096..], b"tail of a 5 GiB file");
    let runs = fs.file_runs(huge).unwrap();
    assert_eq!(
        runs.iter()
            .filter(|r| r.kind == ExtentKind::Written)
            .count(),
        1
    );
    // Path errors.
    assert!(matches!(
        fs.resolve(b"/small/x", true),
        Err(Error::NotDir { .. })
    ));
    assert!(matches!(
        fs.resolve(b"/nope", true),
        Err(Error::NotFound { .. })
    ));
    let long = vec![b'a'; 256];
    assert!(matches!(
        fs.resolve(&long, true),
        Err(Error::NameTooLong { .. })
    ));
    assert_eq!(
        Error::NotFound {
            path: ext4kit_fs::PathBytes(b"/x".to_vec())
        }
        .errno(),
        2
    );
}

#[test]
fn symlink_loops_and_huge_sparse_directories_terminate() {
    let Some(img) = fixture() else { return };
    let fs = img.open().unwrap();
    let e = fs.resolve(b"/loop1", true).unwrap_err();
    assert!(matches!(e, Error::SymlinkLoop { .. }), "{e}");
    assert_eq!(e.errno(), 40);
    assert!(fs.resolve(b"/loop1/x", false).is_err());
    assert!(fs.resolve(b"/loop1", false).is_ok());
    // A directory claiming 2^40 bytes: its holes are skipped a run at a time.
    let sub = fs.resolve(b"/sub", true).unwrap();
    drop(fs);
    let mut m = img.clone();
    m.edit_inode(sub, |i| i.set_size(1 << 40));
    let fs = m.open().unwrap();
    let t = std::time::Instant::now();
    let names: Vec<Vec<u8>> = fs
        .read_dir(sub)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(names.contains(&b"deeper".to_vec()));
    assert!(fs.lookup(sub, b"nothing-here").unwrap().is_none());
    assert!(t.elapsed().as_secs() < 5, "took {:?}", t.elapsed());
}

#[test]
fn posix_acls_read_as_getxattr_returns_them() {
    let Some(img) = fixture() else { return };
    let fs = img.open().unwrap();
    let f = fs.resolve(b"/acl", true).unwrap();
    assert_eq!(
        fs.get_xattr(f, b"system.posix_acl_access").unwrap(),
        acl_xattr()
    );
    // On disk it is ext4's shorter form (version 1, 4-byte entries without ids).
    let disk = [
        1u32.to_le_bytes().to_vec(),
        vec![1, 0, 6, 0],
        vec![2, 0, 4, 0],
        1000u32.to_le_bytes().to_vec(),
        vec![4, 0, 4, 0, 0x10, 0, 4, 0, 0x20, 0, 4, 0],
    ]
    .concat();
    assert_eq!(ext4kit_fs::acl_from_disk(&disk).unwrap(), Some(acl_xattr()));
    assert!(ext4kit_fs::acl_from_disk(&disk[..disk.len() - 2]).is_err());
    assert!(ext4kit_fs::acl_from_disk(&[2, 0, 0, 0]).is_err());
}

// ---------------------------------------------------------------------------------------------
// One byte flip per validation rule.

#[test]
fn flip_superblock_magic_and_checksum() {
    let Some(img) = fixture() else { return };
    let mut m = img.clone();
    m.bytes[1024 + 0x38] ^= 0xFF;
    let e = m.open().unwrap_err();
    assert_typed(&e, Structure::Superblock, None, None);
    assert!(
        matches!(
            e.corruption(),
            Some(Corruption::Format(CorruptKind::SuperblockMagic(_)))
        ),
        "{e}"
    );
    let mut m = img.clone();
    m.bytes[1024 + 0x78] ^= 0x01; // s_volume_name
    let e = m.open().unwrap_err();
    assert!(
        matches!(
            e,
            Error::ChecksumMismatch {
                structure: Structure::Superblock,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.errno(), 74);
}

#[test]
fn flip_unknown_incompat_feature_is_named() {
    let Some(img) = fixture() else { return };
    let mut m = img.clone();
    let sbb = &mut m.bytes[1024..2048];
    let mut sb = ext4kit_fs::format::Superblock::from_bytes_unchecked(sbb).unwrap();
    sb.set_feature_incompat(ext4kit_fs::format::IncompatFeatures(
        sb.feature_incompat().0 | (1 << 20),
    ));
    sb.update_checksum();
    sbb.copy_from_slice(sb.as_bytes());
    let e = m.open().unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("FEATURE_I20"), "{e}");
}

#[test]
fn flip_group_descriptor_gives_a_checksum_mismatch_naming_group_and_block() {
    let Some(img) = fixture() else { return };
    let fs = img.open().unwrap();
    let gdt = fs.superblock().group_desc_block_location(0);
    drop(fs);
    let mut m = img.clone();
    m.block_mut(gdt)[0x0E] ^= 0x01; // bg_free_inodes_count_lo of group 0
    let e = m.open().unwrap_err();
    assert!(
        matches!(
            e,
            Error::ChecksumMismatch {
                structure: Structure::GroupDescriptor,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.context().group, Some(0));
    assert_eq!(e.context().block, Some(gdt));
}

#[test]
fn flip_inode_gives_a_checksum_mismatch_naming_inode_and_block() {
    let Some(img) = fixture() else { return };
    let ino = ino_of(img, "/small");
    let (at, block) = img.inode_at(ino);
    let mut m = img.clone();
    m.bytes[at + 0x10] ^= 0x01; // i_mtime
    let fs = m.open().unwrap();
    let e = fs.stat(ino).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ChecksumMismatch {
                structure: Structure::Inode,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        (e.context().inode, e.context().block),
        (Some(ino), Some(block))
    );
    // And through the path: the lookup that reaches it fails the same way.
    assert!(fs.resolve(b"/small", true).is_err());
}

#[test]
fn flip_extent_header_in_inode() {
    let Some(img) = fixture() else { return };
    let ino = ino_of(img, "/small");
    let mut m = img.clone();
    m.edit_inode(ino, |i| i.block_area_mut()[0] ^= 0xFF);
    let fs = m.open().unwrap();
    let e = fs.open_file(ino).unwrap().read_to_end(1 << 20).unwrap_err();
    assert_typed(&e, Structure::ExtentTree, Some(ino), None);
    assert!(
        matches!(
            e.corruption(),
            Some(Corruption::Format(CorruptKind::ExtentMagic(_)))
        ),
        "{e}"
    );
    let e = fs.file_runs(ino).unwrap_err();
    assert_typed(&e, Structure::ExtentTree, Some(ino), None);
}

/// The leaf block of `/sparse` (its tree has depth 1).
fn sparse_leaf(img: &Img) -> (u32, u64) {
    let fs = img.open().unwrap();
    let ino = fs.resolve(b"/sparse", true).unwrap();
    let inode = fs.inode(ino).unwrap();
    let root = ExtentNode::parse_root(inode.block_area()).unwrap();
    assert_eq!(
        root.depth(),
        1,
        "fixture: /sparse must have an extent tree of depth 1"
    );
    (ino, root.indexes()[0].child_block)
}

#[test]
fn flip_extent_tree_block() {
    let Some(img) = fixture() else { return };
    let (ino, leaf) = sparse_leaf(img);
    // Header magic.
    let mut m = img.clone();
    m.block_mut(leaf)[1] ^= 0xFF;
    let e = m.open().unwrap().file_runs(ino).unwrap_err();
    assert_typed(&e, Structure::ExtentTree, Some(ino), Some(leaf));
    // An entry byte: the tail checksum catches it.
    let mut m = img.clone();
    m.block_mut(leaf)[12 + 8] ^= 0x01;
    let fs = m.open().unwrap();
    let e = fs.open_file(ino).unwrap().read_to_end(1 << 30).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ChecksumMismatch {
                structure: Structure::ExtentTree,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        (e.context().inode, e.context().block),
        (Some(ino), Some(leaf))
    );
    // eh_entries above eh_max.
    let mut m = img.clone();
    m.block_mut(leaf)[2..4].copy_from_slice(&0xFFFFu16.to_le_bytes());
    let e = m.open().unwrap().file_runs(ino).unwrap_err();
    assert!(
        matches!(
            e.corruption(),
            Some(Corruption::Format(CorruptKind::ExtentEntries { .. }))
        ),
        "{e}"
    );
    // A physical block beyond the filesystem (checksum fixed so the range rule is what fails).
    let mut m = img.clone();
    let fs = m.open().unwrap();
    let (seed, generation) = (
        fs.superblock().csum_seed(),
        fs.inode(ino).unwrap().generation(),
    );
    drop(fs);
    let b = m.block_mut(leaf);
    b[12 + 8..12 + 12].copy_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
    let mut node = ExtentNode::parse(b, NodeLocation::Block, Some(0)).unwrap();
    node.update_checksum(seed, ino, generation);
    b.copy_from_slice(node.as_bytes());
    let e = m
        .open()
        .unwrap()
        .open_file(ino)
        .unwrap()
        .read_to_end(1 << 30)
        .unwrap_err();
    assert!(
        matches!(e.corruption(), Some(Corruption::BlockOutOfRange { .. })),
        "{e}"
    );
    assert_eq!(e.context().inode, Some(ino));
}

#[test]
fn extent_tree_cycle_ends_with_an_error() {
    let Some(img) = fixture() else { return };
    let (ino, leaf) = sparse_leaf(img);
    let mut m = img.clone();
    let fs = m.open().unwrap();
    let (seed, generation) = (
        fs.superblock().csum_seed(),
        fs.inode(ino).unwrap().generation(),
    );
    let bs = fs.block_size() as usize;
    drop(fs);
    // The leaf becomes an index node of depth 1 pointing at itself; the root claims depth 2.
    let idx = ExtentIndex {
        logical_block: 0,
        child_block: leaf,
        unused: 0,
    };
    let mut node = ExtentNode::build_index(bs, NodeLocation::Block, 1, &[idx]).unwrap();
    node.update_checksum(seed, ino, generation);
    m.block_mut(leaf).copy_from_slice(node.as_bytes());
    m.edit_inode(ino, |i| {
        let root = ExtentNode::build_index(60, NodeLocation::Inode, 2, &[idx]).unwrap();
        i.block_area_mut().copy_from_slice(root.as_bytes());
    });
    let fs = m.open().unwrap();
    let e = fs.open_file(ino).unwrap().read_to_end(1 << 30).unwrap_err();
    assert_typed(&e, Structure::ExtentTree, Some(ino), Some(leaf));
    let e = fs.file_runs(ino).unwrap_err();
    assert!(e.is_corruption(), "{e}");
    // Same depth claimed all the way down: the walk refuses to visit the block twice.
    let mut m2 = m.clone();
    m2.edit_inode(ino, |i| {
        let root = ExtentNode::build_index(
            60,
            NodeLocation::Inode,
            2,
            &[
                idx,
                ExtentIndex {
                    logical_block: 100,
                    ..idx
                },
            ],
        )
        .unwrap();
        i.block_area_mut().copy_from_slice(root.as_bytes());
    });
    let e = m2.open().unwrap().file_runs(ino).unwrap_err();
    assert!(e.is_corruption(), "{e}");
}

/// A hostile extent tree whose index entries all name one child, two levels deep (4 × 340 ×
/// 340 paths to one leaf): reading the file's runs and writing through it both end with a
/// `TreeCycle` error at the second visit of a block, instead of walking every path.
#[test]
fn an_extent_tree_whose_index_entries_repeat_one_child_fails_fast_for_writes_as_for_reads() {
    let Some(img) = fixture() else { return };
    let (ino, leaf) = sparse_leaf(img);
    let fs = img.open().unwrap();
    let (seed, generation) = (
        fs.superblock().csum_seed(),
        fs.inode(ino).unwrap().generation(),
    );
    let bs = fs.block_size() as usize;
    // Two of the file's own data blocks become the index nodes.
    let data: Vec<u64> = fs
        .file_runs(ino)
        .unwrap()
        .iter()
        .filter(|r| r.kind == ExtentKind::Written)
        .flat_map(|r| r.pblk..r.pblk + r.len)
        .take(2)
        .collect();
    assert_eq!(data.len(), 2, "fixture: /sparse needs two data blocks");
    drop(fs);
    let per = (bs - 12) / 12;
    let entries = |child: u64| -> Vec<ExtentIndex> {
        (0..per as u32)
            .map(|k| ExtentIndex {
                logical_block: k,
                child_block: child,
                unused: 0,
            })
            .collect()
    };
    let mut m = img.clone();
    let (x1, x2) = (data[0], data[1]);
    for (block, depth, child) in [(x1, 1u16, leaf), (x2, 2, x1)] {
        let mut node =
            ExtentNode::build_index(bs, NodeLocation::Block, depth, &entries(child)).unwrap();
        node.update_checksum(seed, ino, generation);
        m.block_mut(block).copy_from_slice(node.as_bytes());
    }
    m.edit_inode(ino, |i| {
        let root = ExtentNode::build_index(60, NodeLocation::Inode, 3, &entries(x2)[..4]).unwrap();
        i.block_area_mut().copy_from_slice(root.as_bytes());
    });
    let cycle = |e: &Error| {
        assert_eq!(e.structure(), Some(Structure::ExtentTree), "{e}");
        assert!(
            matches!(e.corruption(), Some(Corruption::TreeCycle { .. })),
            "{e}"
        );
    };
    cycle(&m.open().unwrap().file_runs(ino).unwrap_err());
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::from_image(1024, m.bytes.clone()));
    let fs = Fs::open(
        dev,
        &OpenOptions {
            writable: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    // A write far past the data, then the sync that checks the changed tree before writing it.
    let r = fs
        .write_at(ino, 50 << 20, b"through the hostile tree")
        .and_then(|()| fs.sync());
    cycle(&r.unwrap_err());
}

/// The physical blocks of a directory.
fn dir_blocks(fs: &Fs, ino: u32) -> Vec<u64> {
    fs.file_runs(ino)
        .unwrap()
        .iter()
        .filter(|r| r.kind == ExtentKind::Written)
        .flat_map(|r| r.pblk..r.pblk + r.len)
        .collect()
}

#[test]
fn flip_directory_leaf_gives_typed_rec_len_checksum_and_inode_errors() {
    let Some(img) = fixture() else { return };
    let fs = img.open().unwrap();
    let sub = fs.resolve(b"/sub", true).unwrap();
    let block = dir_blocks(&fs, sub)[0];
    drop(fs);
    // rec_len of "." made odd.
    let mut m = img.clone();
    m.block_mut(block)[4] = 13;
    let e = m.open().unwrap().read_dir(sub).unwrap_err();
    assert_typed(&e, Structure::DirectoryBlock, Some(sub), Some(block));
    assert!(
        matches!(
            e.corruption(),
            Some(Corruption::Format(CorruptKind::DirentRecLen { .. }))
        ),
        "{e}"
    );
    let e = m.open().unwrap().resolve(b"/sub/deeper", true).unwrap_err();
    assert_typed(&e, Structure::DirectoryBlock, Some(sub), Some(block));
    // A name byte: the leaf checksum catches it.
    let mut m = img.clone();
    m.block_mut(block)[8] ^= 0x01;
    let e = m.open().unwrap().read_dir(sub).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ChecksumMismatch {
                structure: Structure::DirectoryBlock,
                ..
            }
        ),
        "{e}"
    );
    // An inode number beyond the inode count.
    let mut m = img.clone();
    m.block_mut(block)[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = m.open().unwrap().read_dir(sub).unwrap_err();
    assert!(
        matches!(
            e.corruption(),
            Some(Corruption::Format(CorruptKind::DirentInode { .. }))
        ),
        "{e}"
    );
}

#[test]
fn flip_dx_root_gives_typed_count_hash_version_and_checksum_errors() {
    let Some(img) = fixture() else { return };
    let fs = img.open().unwrap();
    let big = fs.resolve(b"/big", true).unwrap();
    let root = dir_blocks(&fs, big)[0];
    drop(fs);
    // count above limit.
    let mut m = img.clone();
    m.block_mut(root)[0x22..0x24].copy_from_slice(&0x7FFFu16.to_le_bytes());
    let e = m
        .open()
        .unwrap()
        .lookup(big, b"entry-00001-with-a-longer-name")
        .unwrap_err();
    assert_typed(&e, Structure::HtreeNode, Some(big), Some(root));
    assert!(
        matches!(
            e.corruption(),
            Some(Corruption::Format(CorruptKind::DxCount { .. }))
        ),
        "{e}"
    );
    // Unknown hash version.
    let mut m = img.clone();
    m.block_mut(root)[0x1C] = 9;
    let e = m
        .open()
        .unwrap()
        .lookup(big, b"entry-00001-with-a-longer-name")
        .unwrap_err();
    assert!(
        matches!(
            e.corruption(),
            Some(Corruption::Format(CorruptKind::DxHashVersion(9)))
        ),
        "{e}"
    );
    // An entry's block: the dx checksum catches it.
    let mut m = img.clone();
    m.block_mut(root)[0x28] ^= 0x01;
    let e = m
        .open()
        .unwrap()
        .lookup(big, b"entry-00001-with-a-longer-name")
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ChecksumMismatch {
                structure: Structure::HtreeNode,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn flip_xattr_block_gives_typed_magic_and_checksum_errors() {
    let Some(img) = fixture() else { return };
    let fs = img.open().unwrap();
    let x = fs.resolve(b"/xfile", true).unwrap();
    let block = fs.stat(x).unwrap().file_acl;
    assert_ne!(block, 0);
    drop(fs);
    let mut m = img.clone();
    m.block_mut(block)[0] ^= 0xFF;
    let e = m.open().unwrap().list_xattrs(x).unwrap_err();
    assert_typed(&e, Structure::XattrBlock, Some(x), Some(block));
    assert!(
        matches!(
            e.corruption(),
            Some(Corruption::Format(CorruptKind::XattrMagic(_)))
        ),
        "{e}"
    );
    let mut m = img.clone();
    m.block_mut(block)[1000] ^= 0x01;
    let e = m.open().unwrap().list_xattrs(x).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ChecksumMismatch {
                structure: Structure::XattrBlock,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.context().block, Some(block));
}

#[test]
fn flip_symlink_size_or_fast_target_gives_typed_symlink_errors() {
    let Some(img) = fixture() else { return };
    let ino = ino_of(img, "/slowlink");
    let mut m = img.clone();
    m.edit_inode(ino, |i| i.set_size(100_000));
    let e = m.open().unwrap().read_link(ino).unwrap_err();
    assert!(
        matches!(
            e.corruption(),
            Some(Corruption::SymlinkSize { size: 100_000 })
        ),
        "{e}"
    );
    assert_eq!(e.context().inode, Some(ino));
    let ino = ino_of(img, "/fastlink");
    let mut m = img.clone();
    m.edit_inode(ino, |i| i.block_area_mut()[1] = 0);
    // A NUL inside a fast symlink target.
    let e = m.open().unwrap().read_link(ino).unwrap_err();
    assert_typed(&e, Structure::Symlink, Some(ino), None);
}

#[test]
fn flip_journal_superblock_refuses_the_open_unless_the_journal_is_ignored() {
    let Some((img, _)) = journal_fixture() else {
        return;
    };
    let fs = img.open_with(JournalMode::Ignore).unwrap();
    let e = fs.map_block(8, 0, 1).unwrap();
    drop(fs);
    let mut m = img.clone();
    m.block_mut(e.pblk)[0] ^= 0xFF;
    let err = m.open().unwrap_err();
    assert_typed(&err, Structure::JournalSuperblock, Some(8), Some(e.pblk));
    // Ignoring the journal still opens.
    assert!(m.open_with(JournalMode::Ignore).is_ok());
}

// ---------------------------------------------------------------------------------------------
// htree: every hash variant against debugfs; index lookups; dx cycles.

/// (name, hash) of every leaf entry in `debugfs htree_dump`.
fn htree_dump_hashes(img: &Path, dir: &str) -> BTreeMap<Vec<u8>, u32> {
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("htree_dump {dir}")])
        .arg(img)
        .output()
        .unwrap();
    let mut m = BTreeMap::new();
    // Leaf lines: "Entry #0: ..." headers, then entries "ino 0xHASH-0xMINOR (reclen) name  ino 0x..."
    let text = out.stdout;
    for line in text.split(|&b| b == b'\n') {
        let s = String::from_utf8_lossy(line);
        if !s.contains("0x")
            || s.starts_with("Entry")
            || s.starts_with("Reading")
            || s.starts_with("Root")
            || s.starts_with("Number")
        {
            continue;
        }
        // Tokens: ino, hash-minor, (reclen), name, repeated.
        let toks: Vec<&str> = s.split_whitespace().collect();
        let mut i = 0;
        while i + 3 < toks.len() + 1 && i + 3 <= toks.len() {
            let (Some(h), Some(name)) = (toks.get(i + 1), toks.get(i + 3)) else {
                break;
            };
            let Some(hex) = h.strip_prefix("0x").and_then(|x| x.split('-').next()) else {
                break;
            };
            let Ok(hash) = u32::from_str_radix(hex, 16) else {
                break;
            };
            m.insert(name.as_bytes().to_vec(), hash);
            i += 4;
        }
    }
    m
}

#[test]
fn htree_hashes_and_lookups_agree_with_debugfs_for_every_variant() {
    if !require_kernel("htree variants") {
        return;
    }
    for (alg, unsigned) in [
        ("legacy", false),
        ("legacy", true),
        ("half_md4", false),
        ("half_md4", true),
        ("tea", false),
        ("tea", true),
    ] {
        let cmds = format!(
            "ssv def_hash_version {alg}\nssv flags {}\n",
            if unsigned { 2 } else { 1 }
        );
        let path = make_image(
            &format!("{alg}-{unsigned}"),
            1024,
            800,
            &["-O", "metadata_csum"],
            &cmds,
        );
        let img = Img {
            bytes: fs::read(&path).unwrap(),
        };
        let fs = img.open().unwrap();
        assert_eq!(fs.superblock().hash_is_unsigned(), unsigned);
        let big = fs.resolve(b"/big", true).unwrap();
        assert!(
            fs.inode(big)
                .unwrap()
                .flags()
                .contains(ext4kit_fs::format::inode::InodeFlags::INDEX),
            "{alg}: not indexed"
        );
        let want = htree_dump_hashes(&path, "/big");
        assert!(want.len() >= 800, "{alg}: htree_dump listed {}", want.len());
        for (name, hash) in &want {
            let (major, _) = fs.dx_hash(big, name).unwrap();
            assert_eq!(
                major,
                *hash,
                "{alg} unsigned={unsigned}: hash of {}",
                String::from_utf8_lossy(name)
            );
            let e = fs
                .lookup(big, name)
                .unwrap()
                .unwrap_or_else(|| panic!("{alg}: lookup {}", String::from_utf8_lossy(name)));
            assert_eq!(&e.name, name);
        }
        // Random names against `debugfs dx_hash` with the filesystem's seed and variant
        // (codes 3..=5 are the unsigned variants).
        let code = ["legacy", "half_md4", "tea"]
            .iter()
            .position(|a| *a == alg)
            .unwrap()
            + if unsigned { 3 } else { 0 };
        let seed = fs.superblock().hash_seed();
        let mut sb = [0u8; 16];
        for (k, w) in seed.iter().enumerate() {
            sb[k * 4..k * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        let seed_s = format!(
            "{}-{}-{}-{}-{}",
            hexs(&sb[0..4]),
            hexs(&sb[4..6]),
            hexs(&sb[6..8]),
            hexs(&sb[8..10]),
            hexs(&sb[10..16])
        );
        let names: Vec<Vec<u8>> = (0..60u64)
            .map(|i| {
                let raw =
                    ext4kit_testkit::pattern(i * 7 + code as u64, 1 + (i as usize * 13) % 120);
                raw.iter()
                    .map(|b| 0x21 + (b % 0x5E))
                    .filter(|&b| b != b'"' && b != b'/' && b != b'-' && b != b'#')
                    .chain(std::iter::once(b'z'))
                    .collect()
            })
            .collect();
        let mut cmds = Vec::new();
        for n in &names {
            cmds.extend_from_slice(format!("dx_hash -h {code} -s {seed_s} ").as_bytes());
            cmds.extend_from_slice(n);
            cmds.push(b'\n');
        }
        let cmdfile = path.with_extension("dxcmds");
        fs::write(&cmdfile, &cmds).unwrap();
        let out = std::process::Command::new("debugfs")
            .arg("-f")
            .arg(&cmdfile)
            .arg(&path)
            .output()
            .unwrap();
        let got: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("Hash of "))
            .map(|l| {
                u32::from_str_radix(
                    l.rsplit(" is 0x")
                        .next()
                        .unwrap()
                        .split(' ')
                        .next()
                        .unwrap(),
                    16,
                )
                .unwrap()
            })
            .collect();
        assert_eq!(
            got.len(),
            names.len(),
            "{alg}: debugfs answered {} of {}",
            got.len(),
            names.len()
        );
        for (n, h) in names.iter().zip(&got) {
            assert_eq!(
                fs.dx_hash(big, n).unwrap().0,
                *h,
                "{alg} unsigned={unsigned}: {}",
                String::from_utf8_lossy(n)
            );
        }
        // Random names that are not there.
        for i in 0..200u64 {
            let name = format!(
                "missing-{}",
                ext4kit_testkit::pattern(i, 8)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
            assert!(fs.lookup(big, name.as_bytes()).unwrap().is_none());
        }
    }
}

#[test]
fn lookup_in_an_indexed_directory_reads_few_blocks() {
    let Some(img) = fixture() else { return };
    let mem: Arc<dyn BlockDevice> = Arc::new(MemDevice::from_image(1024, img.bytes.clone()));
    let fault = Arc::new(FaultDevice::new(mem));
    let fs = Fs::open(fault.clone(), &OpenOptions::default()).unwrap();
    let big = fs.resolve(b"/big", true).unwrap();
    let nblocks = dir_blocks(&fs, big).len();
    assert!(nblocks >= 5, "fixture: /big has only {nblocks} blocks");
    for name in [
        "entry-00000-with-a-longer-name",
        "entry-00599-with-a-longer-name",
        "entry-00321-with-a-longer-name",
    ] {
        fault.clear_log();
        assert!(fs.lookup(big, name.as_bytes()).unwrap().is_some());
        let reads = fault.log().len();
        // Inode table block (cached), dx root, one leaf.
        assert!(
            reads <= 3,
            "lookup of {name} read {reads} blocks of a {nblocks}-block directory"
        );
    }
}

#[test]
fn dx_cycles_end_with_an_error() {
    let Some(img) = fixture() else { return };
    let fs = img.open().unwrap();
    let big = fs.resolve(b"/big", true).unwrap();
    let blocks = dir_blocks(&fs, big);
    let seed = fs.superblock().csum_seed();
    let generation = fs.inode(big).unwrap().generation();
    let opts = DxOptions {
        block_size: fs.block_size(),
        has_csum: true,
        largedir: false,
    };
    drop(fs);
    // Every root entry points back at the root (block 0).
    let mut m = img.clone();
    let root = DxBlock::parse_root(m.block_mut(blocks[0]), opts).unwrap();
    let entries: Vec<DxEntry> = root
        .entries()
        .iter()
        .map(|e| DxEntry {
            hash: e.hash,
            block: 0,
        })
        .collect();
    let mut root2 = root.clone();
    root2.set_entries(&entries).unwrap();
    root2.update_checksum(seed, big, generation);
    m.block_mut(blocks[0]).copy_from_slice(root2.as_bytes());
    let e = m
        .open()
        .unwrap()
        .lookup(big, b"entry-00007-with-a-longer-name")
        .unwrap_err();
    assert!(
        matches!(e.corruption(), Some(Corruption::HtreeCycle { lblk: 0 })),
        "{e}"
    );
    assert_eq!(e.context().inode, Some(big));
    // One level of nodes where the node points at itself.
    let mut m = img.clone();
    let mut root3 = root.clone();
    root3.set_indirect_levels(1);
    root3.set_entries(&[DxEntry { hash: 0, block: 1 }]).unwrap();
    root3.update_checksum(seed, big, generation);
    m.block_mut(blocks[0]).copy_from_slice(root3.as_bytes());
    let mut node = DxBlock::new_node(opts, &[DxEntry { hash: 0, block: 1 }]).unwrap();
    node.update_checksum(seed, big, generation);
    m.block_mut(blocks[1]).copy_from_slice(node.as_bytes());
    let e = m
        .open()
        .unwrap()
        .lookup(big, b"entry-00007-with-a-longer-name")
        .unwrap_err();
    assert!(
        matches!(e.corruption(), Some(Corruption::HtreeCycle { lblk: 1 })),
        "{e}"
    );
    // An entry past the end of the directory.
    let mut m = img.clone();
    let mut root4 = root.clone();
    let far: Vec<DxEntry> = root
        .entries()
        .iter()
        .map(|e| DxEntry {
            hash: e.hash,
            block: 100_000,
        })
        .collect();
    root4.set_entries(&far).unwrap();
    root4.update_checksum(seed, big, generation);
    m.block_mut(blocks[0]).copy_from_slice(root4.as_bytes());
    let e = m
        .open()
        .unwrap()
        .lookup(big, b"entry-00007-with-a-longer-name")
        .unwrap_err();
    assert!(
        matches!(e.corruption(), Some(Corruption::HtreeBlockBeyondEnd { .. })),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Journal.

/// A kernel-written image copied while mounted, after fsync'd transactions that include
/// revokes (a directory's blocks freed and reused). Returns the image and the mount's view of
/// `/after` (name → contents).
type JournalFixture = (Img, BTreeMap<String, Vec<u8>>);

fn journal_fixture() -> Option<&'static JournalFixture> {
    static CELL: OnceLock<Option<JournalFixture>> = OnceLock::new();
    CELL.get_or_init(|| make_journal_fixture(&[])).as_ref()
}

/// The same on a filesystem without metadata_csum and 64bit: a journal without checksums and
/// with 32-bit tags.
fn journal_fixture_plain() -> Option<&'static JournalFixture> {
    static CELL: OnceLock<Option<JournalFixture>> = OnceLock::new();
    CELL.get_or_init(|| make_journal_fixture(&["-O", "^metadata_csum,^64bit"]))
        .as_ref()
}

fn make_journal_fixture(extra: &[&str]) -> Option<JournalFixture> {
    {
        if !require_kernel("journal fixture") {
            return None;
        }
        let dir = process_temp_dir("ext4kit-fs-journal-");
        let img = dir.join("j.img");
        Mke2fs::new(&img)
            .block_size(1024)
            .size(32 << 20)
            .no_lazy_init()
            .extra(extra)
            .run();
        let m = LoopMount::new(&img, false).unwrap();
        let p = m.path();
        let fsync = |q: &Path| fs::File::open(q).unwrap().sync_all().unwrap();
        // A directory whose blocks are journaled, then freed (revoked) in a later transaction.
        fs::create_dir(p.join("doomed")).unwrap();
        for i in 0..200 {
            fs::write(
                p.join(format!("doomed/a-rather-long-file-name-{i:04}")),
                b"d",
            )
            .unwrap();
        }
        fsync(&p.join("doomed"));
        fsync(p);
        fs::remove_dir_all(p.join("doomed")).unwrap();
        fsync(p);
        fs::create_dir(p.join("after")).unwrap();
        let mut want = BTreeMap::new();
        for i in 0..60u64 {
            let name = format!("file-{i:02}");
            let data = ext4kit_testkit::pattern(i, (i as usize * 331) % 7000);
            fs::write(p.join("after").join(&name), &data).unwrap();
            fsync(&p.join("after").join(&name));
            want.insert(name, data);
        }
        fsync(&p.join("after"));
        let copy = dir.join("copy.img");
        fs::copy(&img, &copy).unwrap();
        m.unmount().unwrap();
        let hdr = run_ok("dumpe2fs", &["-h", copy.to_str().unwrap()]);
        assert!(hdr.contains("needs_recovery"), "{hdr}");
        Some((
            Img {
                bytes: fs::read(&copy).unwrap(),
            },
            want,
        ))
    }
}

fn read_after(fs: &Fs) -> BTreeMap<String, Vec<u8>> {
    let Ok(dir) = fs.resolve(b"/after", true) else {
        return BTreeMap::new();
    };
    fs.read_dir(dir)
        .unwrap()
        .into_iter()
        .filter(|e| !e.is_dot_or_dotdot())
        .map(|e| {
            (
                String::from_utf8(e.name).unwrap(),
                fs.open_file(e.ino).unwrap().read_to_end(1 << 20).unwrap(),
            )
        })
        .collect()
}

#[test]
fn journal_replayed_in_memory_with_revokes() {
    let Some((img, want)) = journal_fixture() else {
        return;
    };
    let fs = img.open().unwrap();
    let r = fs.journal_replay().expect("replayed").clone();
    assert!(r.transactions >= 2 && r.blocks > 0, "{r}");
    assert!(r.revoked > 0, "the fixture should have revoke records: {r}");
    assert!(r.stopped_at.is_none(), "{r}");
    assert_eq!(&read_after(&fs), want);
    assert!(fs.resolve(b"/doomed", true).is_err());
    let plain = img.open_with(JournalMode::Ignore).unwrap();
    assert!(plain.journal_replay().is_none());
    assert_ne!(
        &read_after(&plain),
        want,
        "the disk alone already holds everything"
    );
}

#[test]
fn journal_without_checksums_is_replayed() {
    let Some((img, want)) = journal_fixture_plain() else {
        return;
    };
    let fs = img.open().unwrap();
    let r = fs.journal_replay().expect("replayed").clone();
    assert!(
        r.transactions >= 2 && r.revoked > 0 && r.stopped_at.is_none(),
        "{r}"
    );
    assert_eq!(&read_after(&fs), want);
}

#[test]
fn journal_replay_stops_at_a_corrupt_descriptor() {
    let Some((img, _)) = journal_fixture() else {
        return;
    };
    let full = img.open().unwrap().journal_replay().unwrap().clone();
    // Find the journal's descriptor blocks (through the journal inode, on the raw image).
    let fs = img.open_with(JournalMode::Ignore).unwrap();
    let bs = fs.block_size() as usize;
    let runs = fs.file_runs(8).unwrap();
    drop(fs);
    let mut descriptors: Vec<(u32, u64, u32)> = Vec::new(); // (sequence, physical block, journal block)
    for r in runs.iter().filter(|r| r.kind == ExtentKind::Written) {
        for k in 0..r.len {
            let p = r.pblk + k;
            let b = &img.bytes[p as usize * bs..(p as usize + 1) * bs];
            let be = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
            if be(0) == 0xC03B_3998 && be(4) == 1 {
                descriptors.push((be(8), p, (r.lblk + k) as u32));
            }
        }
    }
    let first = full.first_sequence;
    let last = first + full.transactions - 1;
    let &(seq, pblk, jblock) = descriptors
        .iter()
        .find(|d| d.0 == last)
        .expect("descriptor of the last transaction");
    assert_eq!(seq, last);
    let mut m = img.clone();
    m.bytes[pblk as usize * bs + 20] ^= 0x01; // inside the first tag
    let fs = m.open().unwrap();
    let r = fs.journal_replay().unwrap();
    assert_eq!(r.transactions, full.transactions - 1, "{r}");
    let (at, e) = r.stopped_at.as_ref().expect("stop reason");
    assert_eq!(*at, jblock);
    assert_eq!(e.structure(), Some(Structure::JournalDescriptor), "{e}");
    assert_eq!(
        (e.context().inode, e.context().block),
        (Some(8), Some(pblk)),
        "{e}"
    );
    assert!(r.to_string().contains("stopped at journal block"), "{r}");
    let _ = checksum::crc32c_raw(0, b"");
}

#[test]
fn xattr_values_in_ea_inodes() {
    if !require_kernel("ea_inode") {
        return;
    }
    let dir = process_temp_dir("ext4kit-fs-ea-");
    let tree = dir.join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("f"), b"x").unwrap();
    let img = dir.join("ea.img");
    ext4kit_testkit::mke2fs_d(&tree, &img, "ext4", 4096, 16 << 20, &["-O", "ea_inode"]);
    let val = dir.join("val");
    fs::write(&val, ext4kit_testkit::pattern(5, 4096)).unwrap();
    run_ok(
        "debugfs",
        &[
            "-w",
            "-R",
            &format!("ea_set -f {} /f user.huge", val.display()),
            img.to_str().unwrap(),
        ],
    );
    let out = dir.join("out");
    debugfs(&img, &format!("ea_get -f {} /f user.huge", out.display()));
    // debugfs ea_set leaves i_blocks of the owner one block short; let e2fsck fix that.
    e2fsck_repair(&img, "-fy");
    ext4kit_testkit::assert_e2fsck_clean(&img);
    let m = Img {
        bytes: fs::read(&img).unwrap(),
    };
    let fs = m.open().unwrap();
    let f = fs.resolve(b"/f", true).unwrap();
    let v = fs.get_xattr(f, b"user.huge").unwrap();
    assert_eq!(v, fs::read(&out).unwrap());
    assert_eq!(
        v.len(),
        4096,
        "the value must not fit the inode: it lives in an EA inode"
    );
    assert_eq!(fs.stat(f).unwrap().file_acl, 0);
}

#[test]
fn device_errors_are_io_errors_naming_the_block() {
    let Some(img) = fixture() else { return };
    let (ino, leaf) = sparse_leaf(img);
    let mem: Arc<dyn BlockDevice> = Arc::new(MemDevice::from_image(1024, img.bytes.clone()));
    let fault = Arc::new(FaultDevice::new(mem));
    let fs = Fs::open(fault.clone(), &OpenOptions::default()).unwrap();
    // The extent leaf (4 device blocks of 1 KiB per 4 KiB block).
    fault.add_rule(ext4kit_blockdev::FaultRule::Blocks {
        op: None,
        start: leaf * 4,
        end: leaf * 4 + 4,
    });
    let e = fs.file_runs(ino).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert_eq!(
        (e.context().inode, e.context().block),
        (Some(ino), Some(leaf)),
        "{e}"
    );
    assert_eq!(e.errno(), 5);
    // A data block read through the page cache.
    fault.clear_rules();
    let first = fs
        .file_runs(ino)
        .unwrap()
        .into_iter()
        .find(|r| r.kind == ExtentKind::Written)
        .unwrap();
    fault.add_rule(ext4kit_blockdev::FaultRule::Blocks {
        op: None,
        start: first.pblk * 4,
        end: first.pblk * 4 + 4,
    });
    let e = fs.open_file(ino).unwrap().read_to_end(1 << 30).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert_eq!(e.context().inode, Some(ino));
}

/// Opens `img` and touches everything (what the fuzz target does), bounded.
fn walk_all(fs: &Fs) {
    let mut queue = vec![(ROOT_INO, b"/".to_vec())];
    let mut seen = std::collections::HashSet::new();
    let mut buf = vec![0u8; 64 * 1024];
    while let Some((ino, path)) = queue.pop() {
        if seen.len() > 500 || !seen.insert(ino) {
            continue;
        }
        let Ok(st) = fs.stat(ino) else { continue };
        let _ = fs.list_xattrs(ino);
        let _ = fs.file_runs(ino);
        let _ = fs.resolve(&path, true);
        match st.file_type {
            ext4kit_fs::FileType::Directory => {
                for e in fs.read_dir(ino).into_iter().flatten() {
                    let _ = fs.lookup(ino, &e.name);
                    if !e.is_dot_or_dotdot() {
                        let mut p = path.clone();
                        p.push(b'/');
                        p.extend_from_slice(&e.name);
                        queue.push((e.ino, p));
                    }
                }
            }
            ext4kit_fs::FileType::Regular => {
                if let Ok(r) = fs.open_file(ino) {
                    let mut pos = 0;
                    while pos < r.size().min(1 << 20) {
                        match r.read_at(pos, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => pos += n as u64,
                        }
                    }
                }
            }
            ext4kit_fs::FileType::Symlink => {
                let _ = fs.read_link(ino);
            }
            _ => {}
        }
    }
}

/// Random byte flips in the metadata of a small image: never a panic, always an end.
#[test]
fn random_metadata_flips_never_panic() {
    if !require_kernel("random flips") {
        return;
    }
    let dir = process_temp_dir("ext4kit-fs-flips-");
    let tree = dir.join("tree");
    build_tree(&tree, 40, 300);
    fs::remove_file(tree.join("huge")).unwrap();
    let path = dir.join("flips.img");
    ext4kit_testkit::mke2fs_d(
        &tree,
        &path,
        "ext4",
        1024,
        3 << 20,
        &["-O", "metadata_csum,inline_data,^has_journal", "-N", "128"],
    );
    e2fsck_repair(&path, "-fyD");
    let base = Img {
        bytes: fs::read(&path).unwrap(),
    };
    let fs0 = base.open().unwrap();
    walk_all(&fs0);
    drop(fs0);
    let used = base.bytes.len().min(1 << 20);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut opened = 0;
    for _ in 0..1500 {
        let mut m = base.clone();
        for _ in 0..1 + next() % 4 {
            let at = 1024 + (next() as usize % (used - 1024));
            m.bytes[at] ^= 1 << (next() % 8);
        }
        let r = std::panic::catch_unwind(|| {
            for journal in [JournalMode::Replay, JournalMode::Ignore] {
                if let Ok(fs) = m.open_with(journal) {
                    walk_all(&fs);
                    return true;
                }
            }
            false
        });
        assert!(r.is_ok(), "a flip made the reader panic");
        opened += usize::from(r.unwrap_or(false));
    }
    assert!(
        opened > 100,
        "most flipped images should still open ({opened})"
    );
}
