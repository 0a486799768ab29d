//! Fixture images and oracle helpers shared by the integration tests.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ext4kit_format::Superblock;
use ext4kit_format::extent::{ExtentNode, NodeLocation};
use ext4kit_format::group_desc::GroupDesc;
use ext4kit_format::indirect;
use ext4kit_format::inode::{Inode, InodeFlags};
use ext4kit_testkit::Mke2fs;

/// Returns `false` (after printing a note) if e2fsprogs is missing and not required
/// (`EXT4KIT_REQUIRE_KERNEL=1` makes it a failure).
pub fn e2fsprogs_available() -> bool {
    ext4kit_testkit::require_tools(
        "image-based test",
        &["mke2fs", "debugfs", "dumpe2fs", "e2fsck"],
    )
}

/// Runs a command, panicking with its output on failure (exit codes in `ok` accepted).
pub fn run(cmd: &mut Command, ok: &[i32]) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let code = out.status.code().unwrap_or(-1);
    assert!(
        ok.contains(&code),
        "{cmd:?} exited {code}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (logical block, physical block, length, unwritten) runs of a file.
pub type BlockRuns = Vec<(u64, u64, u32, bool)>;

/// A filesystem image read into memory.
pub struct Image {
    /// Where the image file is.
    pub path: PathBuf,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Source tree it was built from (if any), for content comparisons.
    pub tree: Option<PathBuf>,
}

impl Image {
    pub fn load(path: &Path, tree: Option<PathBuf>) -> Image {
        Image {
            path: path.to_path_buf(),
            bytes: fs::read(path).unwrap(),
            tree,
        }
    }

    pub fn sb(&self) -> Superblock {
        Superblock::parse(&self.bytes[1024..2048]).unwrap()
    }

    pub fn block_size(&self) -> usize {
        self.sb().block_size() as usize
    }

    pub fn block(&self, n: u64) -> &[u8] {
        let bs = self.block_size();
        &self.bytes[n as usize * bs..(n as usize + 1) * bs]
    }

    /// Byte offset of group `g`'s descriptor in the primary table.
    pub fn gd_offset(&self, g: u32) -> usize {
        let sb = self.sb();
        let (blk, off) = sb.group_desc_position(g);
        sb.group_desc_block_location(blk) as usize * self.block_size() + off
    }

    pub fn gd(&self, g: u32) -> GroupDesc {
        let sb = self.sb();
        let o = self.gd_offset(g);
        GroupDesc::parse(&self.bytes[o..], usize::from(sb.desc_size())).unwrap()
    }

    pub fn inode_offset(&self, ino: u32) -> usize {
        let sb = self.sb();
        let (g, off) = sb.inode_table_offset(ino).unwrap();
        self.gd(g).inode_table() as usize * self.block_size() + off as usize
    }

    pub fn inode_bytes(&self, ino: u32) -> &[u8] {
        let o = self.inode_offset(ino);
        &self.bytes[o..o + usize::from(self.sb().inode_size())]
    }

    pub fn inode(&self, ino: u32) -> Inode {
        let sb = self.sb();
        let seed = sb.has_metadata_csum().then(|| sb.csum_seed());
        Inode::parse_checked(self.inode_bytes(ino), ino, seed).unwrap()
    }

    pub fn debugfs(&self, cmd: &str) -> String {
        run(
            Command::new("debugfs").arg("-R").arg(cmd).arg(&self.path),
            &[0],
        )
    }

    /// Inode number of `path` (via debugfs stat).
    pub fn ino(&self, path: &str) -> u32 {
        let out = self.debugfs(&format!("stat {path}"));
        let first = out.lines().next().unwrap_or_default();
        let n = first
            .strip_prefix("Inode:")
            .unwrap_or_else(|| panic!("stat {path}: {out}"));
        n.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// Logical → physical map of a file (our parsers), plus the tree blocks visited.
    pub fn map_file(&self, ino: u32) -> (BlockRuns, Vec<u64>) {
        let inode = self.inode(ino);
        let sb = self.sb();
        let mut extents = Vec::new();
        let mut tree_blocks = Vec::new();
        if inode.flags().contains(InodeFlags::EXTENTS) {
            let root = ExtentNode::parse_root(inode.block_area()).unwrap();
            self.walk_extents(
                &root,
                ino,
                inode.generation(),
                &mut extents,
                &mut tree_blocks,
            );
        } else {
            let bs = sb.block_size();
            let nblocks = inode.size().div_ceil(u64::from(bs));
            for l in 0..nblocks {
                let path = indirect::path_for(l, bs).unwrap();
                let mut b = u64::from(inode.block_word(path.slot()));
                for &off in path.offsets() {
                    if b == 0 {
                        break;
                    }
                    tree_blocks.push(b);
                    b = u64::from(indirect::pointer(self.block(b), off));
                }
                if b != 0 {
                    extents.push((l, b, 1, false));
                }
            }
            tree_blocks.sort_unstable();
            tree_blocks.dedup();
        }
        (extents, tree_blocks)
    }

    fn walk_extents(
        &self,
        node: &ExtentNode,
        ino: u32,
        generation: u32,
        out: &mut BlockRuns,
        blocks: &mut Vec<u64>,
    ) {
        let sb = self.sb();
        if node.is_leaf() {
            for e in node.extents() {
                out.push((
                    u64::from(e.logical_block),
                    e.physical_block,
                    e.len,
                    e.unwritten,
                ));
            }
            return;
        }
        for idx in node.indexes() {
            let child = ExtentNode::parse(
                self.block(idx.child_block),
                NodeLocation::Block,
                Some(node.depth() - 1),
            )
            .unwrap();
            if sb.has_metadata_csum() {
                child
                    .verify_checksum(sb.csum_seed(), ino, generation)
                    .unwrap();
            }
            assert_eq!(
                child.as_bytes(),
                self.block(idx.child_block),
                "extent block round trip"
            );
            blocks.push(idx.child_block);
            self.walk_extents(&child, ino, generation, out, blocks);
        }
    }

    /// Reads a whole file through our block map.
    pub fn read_file(&self, ino: u32) -> Vec<u8> {
        let inode = self.inode(ino);
        let bs = self.block_size() as u64;
        let mut data = vec![0u8; inode.size() as usize];
        for (l, p, len, unwritten) in self.map_file(ino).0 {
            if unwritten {
                continue;
            }
            for i in 0..u64::from(len) {
                let start = ((l + i) * bs) as usize;
                if start >= data.len() {
                    break;
                }
                let end = (start + bs as usize).min(data.len());
                data[start..end].copy_from_slice(&self.block(p + i)[..end - start]);
            }
        }
        data
    }

    /// Strict `e2fsck -fn` on this image: exit 0 and nothing but the pass and summary lines.
    pub fn fsck_clean(path: &Path) {
        ext4kit_testkit::assert_e2fsck_clean(path);
    }
}

/// A fresh temporary directory that lives for the whole test process (fixtures live in
/// statics, which are never dropped): removed when the process exits, failed tests or not.
pub fn temp_dir() -> PathBuf {
    ext4kit_testkit::process_temp_dir("ext4kit-format-")
}

fn write(path: &Path, data: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

/// Deterministic pseudo-random bytes.
pub fn pseudo_random(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Builds the source tree mke2fs -d copies.
fn build_tree(root: &Path, big_dir_entries: usize, chunk: usize) {
    write(&root.join("small.txt"), b"hello, ext4\n");
    write(&root.join("big.bin"), &pseudo_random(1, 300 * 1024));
    // A sparse file: chunks with holes between them, for a multi-extent tree.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(root.join("sparse.bin")).unwrap();
        for i in 0..21u64 {
            f.seek(SeekFrom::Start(i * 2 * chunk as u64)).unwrap();
            f.write_all(&pseudo_random(i + 10, chunk)).unwrap();
        }
    }
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    write(&root.join("sub/deeper/leaf.txt"), b"leaf");
    std::os::unix::fs::symlink("/short/target", root.join("fastlink")).unwrap();
    std::os::unix::fs::symlink("x".repeat(100), root.join("slowlink")).unwrap();
    let many = root.join("many");
    fs::create_dir_all(&many).unwrap();
    for i in 0..big_dir_entries {
        fs::File::create(many.join(format!("entry-{i:05}-with-a-longer-name"))).unwrap();
    }
    run(
        Command::new("mknod")
            .arg(root.join("cdev"))
            .args(["c", "4", "5"]),
        &[0],
    );
    run(
        Command::new("mknod")
            .arg(root.join("bdev"))
            .args(["b", "259", "70000"]),
        &[0],
    );
}

/// How to make an image.
pub struct Spec {
    pub name: &'static str,
    /// The mke2fs options (beyond `-E lazy_itable_init=0 -d TREE`).
    pub mkfs: fn(Mke2fs) -> Mke2fs,
    pub size_mb: u64,
    pub big_dir_entries: usize,
    pub chunk: usize,
    /// Large xattr value size (goes to a block).
    pub big_xattr: usize,
}

fn make_image(spec: &Spec) -> Image {
    let dir = temp_dir();
    let tree = dir.join("tree");
    build_tree(&tree, spec.big_dir_entries, spec.chunk);
    let img = dir.join(format!("{}.img", spec.name));
    (spec.mkfs)(Mke2fs::new(&img).size(spec.size_mb << 20))
        .extended("lazy_itable_init=0")
        .tree(&tree)
        .run();
    // Index large directories (mke2fs -d leaves them linear).
    ext4kit_testkit::e2fsck_repair(&img, "-fyD");
    // Extended attributes through e2fsprogs.
    let valfile = dir.join("bigval");
    write(&valfile, &vec![b'V'; spec.big_xattr]);
    let cmds = format!(
        "ea_set /small.txt user.small abc\nea_set /small.txt trusted.t2 0123456789\nea_set -f {} /small.txt user.big\nea_set /big.bin user.x y\n",
        valfile.display()
    );
    let cmdfile = dir.join("cmds");
    write(&cmdfile, cmds.as_bytes());
    run(
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&cmdfile)
            .arg(&img),
        &[0],
    );
    Image::fsck_clean(&img);
    Image::load(&img, Some(tree))
}

macro_rules! fixture {
    ($fn:ident, $spec:expr) => {
        /// The fixture image, or `None` when e2fsprogs is unavailable.
        pub fn $fn() -> Option<&'static Image> {
            static CELL: OnceLock<Option<Image>> = OnceLock::new();
            CELL.get_or_init(|| e2fsprogs_available().then(|| make_image(&$spec)))
                .as_ref()
        }
    };
}

fixture!(
    csum4k,
    Spec {
        name: "csum4k",
        mkfs: |m| m
            .block_size(4096)
            .features("metadata_csum,64bit")
            .inode_size(256),
        size_mb: 64,
        big_dir_entries: 600,
        chunk: 4096,
        big_xattr: 3000,
    }
);

fixture!(
    csum1k,
    Spec {
        name: "csum1k",
        mkfs: |m| m
            .block_size(1024)
            .features("metadata_csum,^64bit")
            .inode_size(256)
            .inodes(8192),
        size_mb: 48,
        big_dir_entries: 6000,
        chunk: 4096,
        big_xattr: 600,
    }
);

fixture!(
    gdtcsum1k,
    Spec {
        name: "gdtcsum1k",
        mkfs: |m| m
            .block_size(1024)
            .features("^metadata_csum,^64bit,uninit_bg")
            .inode_size(256),
        size_mb: 32,
        big_dir_entries: 300,
        chunk: 4096,
        big_xattr: 600,
    }
);

fixture!(
    ext2_1k,
    Spec {
        name: "ext2",
        mkfs: |m| m.fs_type("ext2").block_size(1024).inode_size(128),
        size_mb: 24,
        big_dir_entries: 300,
        chunk: 1024,
        big_xattr: 600,
    }
);

fixture!(
    ext3_2k,
    Spec {
        name: "ext3",
        mkfs: |m| m.fs_type("ext3").block_size(2048),
        size_mb: 32,
        big_dir_entries: 300,
        chunk: 2048,
        big_xattr: 1200,
    }
);

fixture!(
    meta_bg1k,
    Spec {
        name: "metabg",
        mkfs: |m| m
            .block_size(1024)
            .features("meta_bg,^resize_inode,sparse_super2")
            .extra(&["-g", "1024"]),
        size_mb: 40,
        big_dir_entries: 10,
        chunk: 1024,
        big_xattr: 600,
    }
);

/// All e2fsprogs-made fixtures.
pub fn all_images() -> Vec<&'static Image> {
    [
        csum4k(),
        csum1k(),
        gdtcsum1k(),
        ext2_1k(),
        ext3_2k(),
        meta_bg1k(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

// ---------------------------------------------------------------------------
// Kernel-written fixtures (loop mount).

/// Images written by the Linux kernel.
pub struct KernelImages {
    /// Cleanly unmounted, with timestamps, xattrs, inline data, htree written by the kernel.
    pub clean: Image,
    /// Copied while mounted after committed transactions (descriptor, commit, revoke).
    pub journal: Image,
    /// Times set through `touch -d`: path → (seconds, nanoseconds).
    pub times: HashMap<String, (i64, u32)>,
}

/// mount(8) with `args`, retried while the kernel answers EBUSY (a loaded machine).
fn mount_or_umount(args: &[&std::ffi::OsStr]) {
    if let Err(text) = ext4kit_testkit::retry_busy(|| ext4kit_testkit::run("mount", args)) {
        panic!("mount {args:?} failed: {text}");
    }
}

/// umount(8), retried while busy; says what held the mount if it never lets go.
fn umount(mnt: &Path) {
    if let Err(text) =
        ext4kit_testkit::retry_busy(|| ext4kit_testkit::run("umount", &[mnt.as_os_str()]))
    {
        panic!(
            "umount {} failed: {text} (held by: {})",
            mnt.display(),
            ext4kit_testkit::mount_holders(mnt)
        );
    }
}

/// Kernel loop mounts (root, loop devices, mount); a note and `false` without them, a
/// failure with `EXT4KIT_REQUIRE_KERNEL=1`.
fn can_mount() -> bool {
    ext4kit_testkit::require_kernel("kernel-written fixture")
}

/// `mkfs` gives the mke2fs options beyond `-E lazy_itable_init=0`.
fn kernel_images(mkfs: fn(Mke2fs) -> Mke2fs, populate: bool) -> KernelImages {
    let dir = temp_dir();
    let img = dir.join("kernel.img");
    let mnt = dir.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    mkfs(Mke2fs::new(&img).size(64 << 20))
        .extended("lazy_itable_init=0")
        .run();
    mount_or_umount(&[
        "-o".as_ref(),
        "loop".as_ref(),
        img.as_os_str(),
        mnt.as_os_str(),
    ]);
    let m = |p: &str| mnt.join(p);
    let mut times = HashMap::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if populate {
            for (name, date) in [
                ("t-future", "2100-01-01 00:00:00.123456789 UTC"),
                ("t-past", "1960-06-15 12:00:00.987654321 UTC"),
                ("t-epoch3", "2400-02-29 23:59:59.999999999 UTC"),
                ("t-now", "2024-05-05 05:05:05.5 UTC"),
                ("t-min", "1901-12-14 00:00:00 UTC"),
            ] {
                fs::write(m(name), b"t").unwrap();
                run(
                    Command::new("touch")
                        .arg("-m")
                        .arg("-d")
                        .arg(date)
                        .arg(m(name)),
                    &[0],
                );
                let secs: i64 = run(Command::new("date").arg("-d").arg(date).arg("+%s"), &[0])
                    .trim()
                    .parse()
                    .unwrap();
                let ns: u32 = run(Command::new("date").arg("-d").arg(date).arg("+%N"), &[0])
                    .trim()
                    .parse()
                    .unwrap();
                times.insert(format!("/{name}"), (secs, ns));
            }
            fs::write(m("tiny"), b"inline tiny file").unwrap();
            fs::write(m("medium"), pseudo_random(5, 100)).unwrap();
            fs::create_dir(m("idir")).unwrap();
            fs::write(m("idir/a"), b"1").unwrap();
            fs::write(m("idir/bb"), b"2").unwrap();
            fs::write(m("xfile"), b"xattrs").unwrap();
            let set = |path: &Path, name: &str, value: &[u8]| {
                // setfattr may be missing; python's os.setxattr is not.
                let script = "import os,sys; os.setxattr(sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]))";
                let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
                run(
                    Command::new("python3")
                        .arg("-c")
                        .arg(script)
                        .arg(path)
                        .arg(name)
                        .arg(hex),
                    &[0],
                );
            };
            set(&m("xfile"), "user.small", b"abc");
            set(&m("xfile"), "user.second", b"0123456789");
            set(&m("xfile"), "user.big", &vec![b'Q'; 2000]);
            set(&m("xfile"), "trusted.zzz", &pseudo_random(9, 700));
            fs::create_dir(m("bigdir")).unwrap();
            for i in 0..1500 {
                fs::write(m(&format!("bigdir/kernel-entry-{i:05}")), b"").unwrap();
            }
            std::os::unix::fs::symlink("/kernel/fast", m("kfast")).unwrap();
            std::os::unix::fs::symlink("y".repeat(200), m("kslow")).unwrap();
        }
        // Transactions for the journal copy: create, sync, delete (revokes), sync.
        fs::create_dir(m("churn")).unwrap();
        for i in 0..200 {
            fs::write(m(&format!("churn/f{i}")), format!("{i}")).unwrap();
        }
        run(&mut Command::new("sync"), &[0]);
        fs::remove_dir_all(m("churn")).unwrap();
        run(&mut Command::new("sync"), &[0]);
        run(
            Command::new("cp")
                .arg("--sparse=always")
                .arg(&img)
                .arg(dir.join("journal.img")),
            &[0],
        );
    }));
    umount(&mnt);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    Image::fsck_clean(&img);
    KernelImages {
        clean: Image::load(&img, None),
        journal: Image::load(&dir.join("journal.img"), None),
        times,
    }
}

/// Kernel-written ext4 with metadata_csum, 64bit, inline_data, 4 KiB blocks.
pub fn kernel_csum() -> Option<&'static KernelImages> {
    static CELL: OnceLock<Option<KernelImages>> = OnceLock::new();
    CELL.get_or_init(|| {
        (e2fsprogs_available() && can_mount()).then(|| {
            kernel_images(
                |m| {
                    m.block_size(4096)
                        .features("metadata_csum,64bit,inline_data")
                        .inode_size(256)
                },
                true,
            )
        })
    })
    .as_ref()
}

/// Kernel-written ext4 without metadata_csum and 64bit, 1 KiB blocks (classic journal tags).
pub fn kernel_plain() -> Option<&'static KernelImages> {
    static CELL: OnceLock<Option<KernelImages>> = OnceLock::new();
    CELL.get_or_init(|| {
        (e2fsprogs_available() && can_mount()).then(|| {
            kernel_images(
                |m| m.block_size(1024).features("^metadata_csum,^64bit"),
                false,
            )
        })
    })
    .as_ref()
}

/// `dumpe2fs -h` as key → value.
pub use ext4kit_testkit::dumpe2fs_header;
