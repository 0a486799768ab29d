//! Inodes: every used inode of every fixture parses and verifies; fields agree
//! with debugfs stat; kernel-written timestamps decode exactly; rules and
//! checksums fail on flipped bytes; setters produce inodes e2fsck accepts.

use std::collections::HashMap;

use ext4kit_format::group_desc::GroupFlags;
use ext4kit_format::inode::{FileType, Inode, InodeFlags, Timestamp};
use ext4kit_format::{CorruptKind, FormatError, RoCompatFeatures};

use crate::fixtures::{self, Image};

fn each_used_inode(img: &Image, mut f: impl FnMut(u32, Inode)) {
    let sb = img.sb();
    let seed = sb.has_metadata_csum().then(|| sb.csum_seed());
    for g in 0..sb.group_count() {
        let gd = img.gd(g);
        if gd.flags().contains(GroupFlags::INODE_UNINIT) {
            continue;
        }
        let used = if sb.has_group_desc_csum() {
            sb.inodes_per_group() - gd.itable_unused()
        } else {
            sb.inodes_per_group()
        };
        for i in 0..used {
            let ino = g * sb.inodes_per_group() + i + 1;
            let bytes = img.inode_bytes(ino);
            let inode = Inode::parse_checked(bytes, ino, seed)
                .unwrap_or_else(|e| panic!("{}: {e}", img.path.display()));
            assert_eq!(inode.as_bytes(), bytes);
            f(ino, inode);
        }
    }
}

#[test]
fn every_used_inode_parses_and_verifies() {
    let mut total = 0;
    let mut images: Vec<&Image> = fixtures::all_images();
    if let Some(k) = fixtures::kernel_csum() {
        images.push(&k.clean);
    }
    for img in images {
        each_used_inode(img, |_, i| {
            if i.links_count() > 0 {
                total += 1;
            }
        });
    }
    eprintln!("{total} live inodes verified");
}

fn stat(img: &Image, path: &str) -> HashMap<String, String> {
    let out = img.debugfs(&format!("stat {path}"));
    let mut m = HashMap::new();
    for line in out.lines().filter(|l| !l.starts_with("Fragment")) {
        // Lines hold several "Key: value" pairs separated by runs of spaces.
        let mut rest = line.trim();
        while let Some((k, v)) = rest.split_once(':') {
            let k = k.trim().to_string();
            let v = v.trim_start();
            let (val, next) = match v.find("   ") {
                Some(p) => (v[..p].trim(), v[p..].trim_start()),
                None => (v.trim(), ""),
            };
            m.insert(k, val.to_string());
            rest = next;
        }
    }
    m
}

fn raw_time_pair(inode: &Inode, which: &str) -> String {
    let b = inode.as_bytes();
    let rd = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let (base, extra) = match which {
        "ctime" => (rd(0x0C), 0x84),
        "atime" => (rd(0x08), 0x8C),
        "mtime" => (rd(0x10), 0x88),
        _ => (rd(0x90), 0x94),
    };
    format!("{base:#010x}:{:08x}", rd(extra))
}

#[test]
fn fields_match_debugfs_stat() {
    let Some(img) = fixtures::csum4k() else {
        return;
    };
    let sb = img.sb();
    for path in [
        "/small.txt",
        "/big.bin",
        "/sparse.bin",
        "/sub",
        "/fastlink",
        "/slowlink",
        "/cdev",
        "/bdev",
        "/many",
    ] {
        let ino = img.ino(path);
        let inode = img.inode(ino);
        let s = stat(img, path);
        assert_eq!(s["Mode"], format!("{:04o}", inode.permissions()), "{path}");
        assert_eq!(s["Flags"], format!("{:#x}", inode.flags().0), "{path}");
        assert_eq!(s["Generation"].parse::<u32>().unwrap(), inode.generation());
        assert_eq!(s["User"].parse::<u32>().unwrap(), inode.uid());
        assert_eq!(s["Group"].parse::<u32>().unwrap(), inode.gid());
        assert_eq!(s["Project"].parse::<u32>().unwrap(), inode.project_id());
        assert_eq!(s["Size"].parse::<u64>().unwrap(), inode.size());
        assert_eq!(s["File ACL"].parse::<u64>().unwrap(), inode.file_acl());
        assert_eq!(s["Links"].parse::<u16>().unwrap(), inode.links_count());
        let bc = inode.block_count_512(
            sb.has_ro_compat(RoCompatFeatures::HUGE_FILE),
            sb.block_size_bits(),
        );
        assert_eq!(s["Blockcount"].parse::<u64>().unwrap(), bc, "{path}");
        assert_eq!(
            s["Inode checksum"],
            format!("{:#010x}", inode.stored_checksum())
        );
        assert_eq!(
            s["Size of extra inode fields"].parse::<u16>().unwrap(),
            inode.extra_isize()
        );
        for t in ["ctime", "atime", "mtime", "crtime"] {
            let v = s[t].split_whitespace().next().unwrap().to_string();
            assert_eq!(v, raw_time_pair(&inode, t), "{path} {t}");
        }
        let ts = Timestamp::decode(
            u32::from_str_radix(&s["mtime"][2..10], 16).unwrap(),
            Some(u32::from_str_radix(&s["mtime"][11..19], 16).unwrap()),
        );
        assert_eq!(inode.modification_time(), ts);
        let t = inode.file_type().unwrap();
        match path {
            "/cdev" => {
                assert_eq!(t, FileType::CharDevice);
                assert_eq!(inode.device_number(), (4, 5));
            }
            "/bdev" => {
                assert_eq!(t, FileType::BlockDevice);
                assert_eq!(inode.device_number(), (259, 70000));
            }
            "/sub" | "/many" => assert!(inode.is_dir()),
            "/fastlink" | "/slowlink" => assert!(inode.is_symlink()),
            _ => assert!(inode.is_regular()),
        }
        // Device numbers re-encode identically.
        if matches!(t, FileType::CharDevice | FileType::BlockDevice) {
            let mut copy = inode.clone();
            let (maj, min) = inode.device_number();
            copy.set_device_number(maj, min).unwrap();
            assert_eq!(copy.block_area(), inode.block_area());
        }
    }
}

#[test]
fn kernel_timestamps_decode_exactly() {
    let Some(k) = fixtures::kernel_csum() else {
        return;
    };
    for (path, &(secs, ns)) in &k.times {
        let ino = k.clean.ino(path);
        let inode = k.clean.inode(ino);
        let t = inode.modification_time();
        assert_eq!((t.seconds, t.nanoseconds), (secs, ns), "{path}");
        // Encoding gives back the kernel's bytes.
        let mut copy = inode.clone();
        copy.set_modification_time(t);
        assert_eq!(copy.as_bytes(), inode.as_bytes(), "{path}");
        assert!(inode.creation_time().is_some());
    }
}

#[test]
fn byte_flip_inode_rules() {
    let Some(img) = fixtures::csum4k() else {
        return;
    };
    let ino = img.ino("/small.txt");
    let base = img.inode_bytes(ino).to_vec();
    let mut b = base.clone();
    b[0x80] = 3;
    assert_eq!(
        Inode::parse(&b).unwrap_err().corrupt_kind(),
        Some(&CorruptKind::InodeExtraIsize(3))
    );
    let mut b = base.clone();
    b[0x80] = 200;
    assert_eq!(
        Inode::parse(&b).unwrap_err().corrupt_kind(),
        Some(&CorruptKind::InodeExtraIsize(200))
    );
    let mut b = base.clone();
    b[0x6F] = 0x80;
    let size = u64::from_le_bytes([b[4], b[5], b[6], b[7], b[0x6C], b[0x6D], b[0x6E], b[0x6F]]);
    assert_eq!(
        Inode::parse(&b).unwrap_err().corrupt_kind(),
        Some(&CorruptKind::InodeSize64(size))
    );
    assert!(matches!(
        Inode::parse(&base[..100]).unwrap_err().corrupt_kind(),
        Some(CorruptKind::TooShort {
            needed: 128,
            got: 100
        })
    ));
    // Checksum.
    let sb = img.sb();
    let mut b = base.clone();
    b[0x1A] ^= 1; // links count
    let e = Inode::parse_checked(&b, ino, Some(sb.csum_seed())).unwrap_err();
    assert!(matches!(e, FormatError::ChecksumMismatch { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("inode {ino}: inode checksum mismatch")),
        "{e}"
    );
    // Wrong inode number also fails.
    assert!(Inode::parse_checked(&base, ino + 1, Some(sb.csum_seed())).is_err());
}

#[test]
fn setters_produce_inodes_e2fsck_accepts() {
    let Some(img) = fixtures::csum4k() else {
        return;
    };
    let sb = img.sb();
    let ino = img.ino("/sub/deeper/leaf.txt");
    let mut inode = img.inode(ino);
    inode.set_uid(100_000);
    inode.set_gid(70_000);
    inode.set_modification_time(Timestamp {
        seconds: 5_000_000_000,
        nanoseconds: 123_456_789,
    });
    inode.set_access_time(Timestamp {
        seconds: -1_000_000,
        nanoseconds: 5,
    });
    let mut flags = inode.flags();
    flags.insert(InodeFlags::NOATIME);
    inode.set_flags(flags);
    inode.update_checksum(sb.csum_seed(), ino);
    inode.verify_checksum(sb.csum_seed(), ino).unwrap();
    let dir = fixtures::temp_dir();
    let path = dir.join("copy.img");
    let mut bytes = img.bytes.clone();
    let off = img.inode_offset(ino);
    bytes[off..off + inode.record_size()].copy_from_slice(inode.as_bytes());
    std::fs::write(&path, &bytes).unwrap();
    Image::fsck_clean(&path);
    let copy = Image::load(&path, None);
    let s = stat(&copy, "/sub/deeper/leaf.txt");
    assert_eq!(s["User"], "100000");
    assert_eq!(s["Group"], "70000");
    assert!(s["mtime"].contains("2128"), "{}", s["mtime"]);
    let back = copy.inode(ino);
    assert_eq!(
        back.modification_time(),
        Timestamp {
            seconds: 5_000_000_000,
            nanoseconds: 123_456_789
        }
    );
    assert_eq!(
        back.access_time(),
        Timestamp {
            seconds: -1_000_000,
            nanoseconds: 5
        }
    );
}
