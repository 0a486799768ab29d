//! jbd2 structures from a journal with committed transactions, copied while
//! the kernel had the filesystem mounted, checked against `debugfs logdump`.

use ext4kit_format::journal::{
    self, CommitBlock, DescriptorBlock, DescriptorBuilder, JournalBlockType, JournalHeader,
    JournalSuperblock, RevokeBlock, TagFlags,
};
use ext4kit_format::{CorruptKind, FormatError, IncompatibleKind};

use crate::fixtures::{self, Image, KernelImages};

/// (fs block, journal block, tag flags)
type Tag = (u64, u64, u32);

#[derive(Debug, Default, PartialEq, Eq)]
struct Log {
    /// (sequence, journal block of the descriptor, [(fs block, journal block, flags)])
    descriptors: Vec<(u32, u64, Vec<Tag>)>,
    /// (sequence, journal block)
    commits: Vec<(u32, u64)>,
    /// (sequence, journal block, revoked fs blocks)
    revokes: Vec<(u32, u64, Vec<u64>)>,
}

fn logdump(img: &Image) -> Log {
    let mut log = Log::default();
    let verbose = img.debugfs("logdump -a");
    let mut current: Option<usize> = None;
    let mut revoke: Option<usize> = None;
    for line in verbose.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("Found expected sequence ") {
            let seq: u32 = rest.split(',').next().unwrap().parse().unwrap();
            let blk: u64 = rest.rsplit("at block ").next().unwrap().parse().unwrap();
            current = None;
            revoke = None;
            if rest.contains("(descriptor block)") {
                log.descriptors.push((seq, blk, Vec::new()));
                current = Some(log.descriptors.len() - 1);
            } else if rest.contains("(commit block)") {
                log.commits.push((seq, blk));
            } else if rest.contains("(revoke table)") {
                // logdump -a prints revoke blocks twice (scan + dump); keep one.
                if !log.revokes.iter().any(|r| r.1 == blk) {
                    log.revokes.push((seq, blk, Vec::new()));
                    revoke = Some(log.revokes.len() - 1);
                }
            }
        } else if let Some(rest) = t.strip_prefix("FS block ") {
            if let Some(i) = current {
                let fs: u64 = rest.split_whitespace().next().unwrap().parse().unwrap();
                let jb: u64 = rest
                    .split("journal block ")
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                let flags = u32::from_str_radix(
                    rest.split("flags 0x").nth(1).unwrap().trim_end_matches(')'),
                    16,
                )
                .unwrap();
                if !log.descriptors[i].2.iter().any(|x| x.1 == jb) {
                    log.descriptors[i].2.push((fs, jb, flags));
                }
            }
        } else if let Some(rest) = t.strip_prefix("Revoke FS block ") {
            if let Some(i) = revoke {
                log.revokes[i].2.push(rest.trim().parse().unwrap());
            }
        }
    }
    log
}

/// Walks the log with our parsers, verifying every checksum.
fn walk(img: &Image) -> (JournalSuperblock, Log) {
    let sb = img.sb();
    let jino = sb.journal_inum();
    let (map, _) = img.map_file(jino);
    let jblock = |n: u64| -> &[u8] {
        let (s, p, _, _) = map
            .iter()
            .find(|e| n >= e.0 && n < e.0 + u64::from(e.2))
            .unwrap();
        img.block(p + (n - s))
    };
    let jsb = JournalSuperblock::parse(jblock(0)).unwrap();
    assert_eq!(&jsb.as_bytes()[..], &jblock(0)[..1024]);
    jsb.check_features().unwrap();
    assert_ne!(
        jsb.start(),
        0,
        "journal copied while mounted must not be clean"
    );
    let mut log = Log::default();
    let mut blk = u64::from(jsb.start());
    let mut seq = jsb.sequence();
    let first = u64::from(jsb.first());
    let end = u64::from(jsb.log_end());
    let wrap = |b: u64| if b >= end { b - (end - first) } else { b };
    loop {
        let data = jblock(blk);
        let Some(h) = JournalHeader::read(data) else {
            break;
        };
        if h.sequence != seq {
            break;
        }
        match h.kind() {
            Some(JournalBlockType::Descriptor) => {
                let at = blk;
                let d = DescriptorBlock::parse(data, &jsb).unwrap();
                d.verify_checksum(&jsb).unwrap();
                assert_eq!(d.as_bytes(), data);
                let mut tags = Vec::new();
                for t in d.tags() {
                    blk = wrap(blk + 1);
                    let mut copy = jblock(blk).to_vec();
                    journal::verify_data_block(&jsb, seq, t, &copy).unwrap();
                    if t.flags.contains(TagFlags::ESCAPE) {
                        journal::unescape_block(&mut copy);
                    }
                    tags.push((t.block, blk, t.flags.0));
                }
                log.descriptors.push((seq, at, tags));
            }
            Some(JournalBlockType::Commit) => {
                let c = CommitBlock::parse(data).unwrap();
                assert_eq!(c.as_bytes(), data);
                c.verify_checksum(&jsb).unwrap();
                assert!(c.commit_time().0 > 1_600_000_000);
                log.commits.push((seq, blk));
                seq = seq.wrapping_add(1);
            }
            Some(JournalBlockType::Revoke) => {
                let r = RevokeBlock::parse(data, &jsb).unwrap();
                assert_eq!(r.as_bytes(), data);
                r.verify_checksum(&jsb).unwrap();
                log.revokes.push((seq, blk, r.blocks().to_vec()));
            }
            other => panic!("unexpected block {other:?} at {blk}"),
        }
        blk = wrap(blk + 1);
    }
    (jsb, log)
}

fn check(k: &KernelImages) {
    let img = &k.journal;
    let (jsb, ours) = walk(img);
    let theirs = logdump(img);
    assert_eq!(ours.commits, theirs.commits);
    assert_eq!(ours.revokes, theirs.revokes);
    assert_eq!(ours.descriptors, theirs.descriptors);
    assert!(!ours.commits.is_empty() && !ours.descriptors.is_empty());
    assert!(
        !ours.revokes.is_empty(),
        "deleting a directory should have logged revokes"
    );
    let h = fixtures::dumpe2fs_header(&img.path);
    let names = jsb.feature_names().join(" ");
    assert_eq!(
        h.get("Journal features")
            .map(String::as_str)
            .unwrap_or("(none)"),
        if names.is_empty() { "(none)" } else { &names }
    );
    if jsb.has_csum_v2_or_v3() {
        assert_eq!(h["Journal checksum"], format!("{:#010x}", jsb.checksum()));
    }
}

#[test]
fn kernel_journal_csum_v3_64bit() {
    let Some(k) = fixtures::kernel_csum() else {
        return;
    };
    check(k);
    let (jsb, _) = walk(&k.journal);
    assert!(jsb.has_csum_v3() && jsb.is_64bit() && jsb.tag_size() == 16);
}

#[test]
fn kernel_journal_classic_tags() {
    let Some(k) = fixtures::kernel_plain() else {
        return;
    };
    check(k);
    let (jsb, _) = walk(&k.journal);
    assert!(!jsb.has_csum_v2_or_v3());
    assert_eq!(jsb.tag_size(), 8);
}

#[test]
fn journal_byte_flips_and_builders() {
    let Some(k) = fixtures::kernel_csum() else {
        return;
    };
    let img = &k.journal;
    let (map, _) = img.map_file(img.sb().journal_inum());
    let jsb_bytes = img.block(map[0].1)[..1024].to_vec();
    let jsb = JournalSuperblock::parse(&jsb_bytes).unwrap();
    let kind = |b: &[u8]| JournalSuperblock::parse(b).unwrap_err();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = jsb_bytes.clone();
        f(&mut b);
        // Refresh the checksum so that the rule under test is what fails.
        let c = {
            let mut t = b.clone();
            t[0xFC..0x100].fill(0);
            ext4kit_format::checksum::crc32c_raw(!0, &t)
        };
        b[0xFC..0x100].copy_from_slice(&c.to_be_bytes());
        b
    };
    let be =
        |b: &mut Vec<u8>, off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_be_bytes());
    assert_eq!(
        kind(&with(&|b| be(b, 0, 0x1234))).corrupt_kind(),
        Some(&CorruptKind::JournalMagic(0x1234))
    );
    assert_eq!(
        kind(&with(&|b| be(b, 4, 1))).corrupt_kind(),
        Some(&CorruptKind::JournalBlockType(1))
    );
    assert_eq!(
        kind(&with(&|b| be(b, 0x0C, 3000))).corrupt_kind(),
        Some(&CorruptKind::JournalBlockSize(3000))
    );
    assert_eq!(
        kind(&with(&|b| be(b, 0x14, 0))).corrupt_kind(),
        Some(&CorruptKind::JournalGeometry)
    );
    assert_eq!(
        kind(&with(&|b| be(b, 0x1C, jsb.maxlen()))).corrupt_kind(),
        Some(&CorruptKind::JournalGeometry)
    );
    assert_eq!(
        kind(&with(&|b| be(b, 0x40, 49))).corrupt_kind(),
        Some(&CorruptKind::JournalUsers(49))
    );
    let inc = jsb.feature_incompat();
    assert_eq!(
        kind(&with(&|b| be(
            b,
            0x28,
            inc | journal::features::INCOMPAT_CSUM_V2
        )))
        .corrupt_kind(),
        Some(&CorruptKind::JournalChecksumFeatures)
    );
    assert!(matches!(
        kind(&with(&|b| b[0x50] = 1)),
        FormatError::Incompatible {
            what: IncompatibleKind::ChecksumType(1),
            ..
        }
    ));
    let mut b = jsb_bytes.clone();
    b[0x300] ^= 1;
    assert!(matches!(
        JournalSuperblock::parse(&b),
        Err(FormatError::ChecksumMismatch { .. })
    ));
    let unknown = JournalSuperblock::parse(&with(&|b| be(b, 0x28, inc | 0x100))).unwrap();
    assert!(unknown.check_features().is_err());
    // Builders produce blocks that our parser and checksums accept (formats
    // are covered against the kernel above); a descriptor's tag checksum covers the data.
    let data = vec![0xAB; jsb.block_size() as usize];
    let mut b = DescriptorBuilder::new(&jsb, 77);
    b.push(
        1234,
        false,
        journal::data_block_checksum(jsb.csum_seed(), 77, &data),
    )
    .unwrap();
    let d = DescriptorBlock::parse(&b.finish(&jsb), &jsb).unwrap();
    d.verify_checksum(&jsb).unwrap();
    journal::verify_data_block(&jsb, 77, &d.tags()[0], &data).unwrap();
    assert!(journal::verify_data_block(&jsb, 78, &d.tags()[0], &data).is_err());
    let mut esc = vec![0u8; 16];
    esc[..4].copy_from_slice(&journal::JBD2_MAGIC.to_be_bytes());
    assert!(journal::escape_block(&mut esc));
    assert_eq!(&esc[..4], &[0; 4]);
}
