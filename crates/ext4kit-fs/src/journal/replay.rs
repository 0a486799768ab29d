//! Journal recovery in memory: reading an image whose jbd2 journal needs replay without ever
//! writing it.
//!
//! [`replay`] follows jbd2's recovery (`fs/jbd2/recovery.c`, e2fsck's copy of it):
//! 1. **scan** the log from `s_start`, transaction `s_sequence` onwards: a transaction is its
//!    descriptor blocks (each followed by the logged copies of the blocks its tags name),
//!    revoke blocks, and a commit block with the same sequence number. The scan ends at the
//!    first block that is not a journal block of the expected sequence (the normal end), or at
//!    the first **invalid** transaction: a descriptor, revoke or commit block that does not
//!    parse or whose checksum (v2/v3) fails, or a commit whose crc32 (checksum v1) does not
//!    match. Only the complete, valid transactions before that point are replayed. A logged
//!    block whose tag checksum (v2/v3) fails does not end the scan: as jbd2's `do_one_pass`
//!    (and e2fsck's copy of it) in its replay pass, that one block is not replayed and
//!    everything else is ([`ReplayReport::bad_checksum`] names it; the kernel then fails the
//!    mount and e2fsck marks the filesystem as having errors).
//! 2. **revoke**: a block revoked in transaction R is not replayed from transactions ≤ R.
//! 3. **replay** in log order into a map `filesystem block → contents` (later copies win;
//!    escaped blocks get their magic back).
//!
//! [`OverlayDevice`] serves those blocks over the unchanged device; the filesystem is then
//! opened again on it. Fast commits are not replayed: a journal whose fast-commit area holds
//! commits that follow the last full transaction (what the kernel's `ext4_fc_replay` would
//! apply) is refused by [`crate::Fs::open`] instead of showing an older tree
//! ([`ReplayReport::fast_commits_pending`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use ext4kit_blockdev::{Bio, BioOp, BlockDevice, Geometry, IoError};
use ext4kit_format::checksum::crc32_be;
use ext4kit_format::journal::{
    CHECKSUM_TYPE_CRC32, CommitBlock, DescriptorBlock, FastCommitHead, JournalBlockType,
    JournalHeader, JournalSuperblock, RevokeBlock, TagFlags, unescape_block, verify_data_block,
};
use ext4kit_format::{CompatFeatures, Structure};
use ext4kit_pagecache::{Extent, ExtentKind};

use crate::error::{Corruption, Error, Result, ResultExt, Unsupported};
use crate::fs::Core;

/// Filesystem block → its contents after replay.
pub type ReplayedBlocks = HashMap<u64, Arc<[u8]>>;

/// What the in-memory replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Transactions replayed.
    pub transactions: u32,
    /// Sequence number of the first replayed transaction.
    pub first_sequence: u32,
    /// Filesystem blocks now served from the journal.
    pub blocks: usize,
    /// Logged block copies skipped because a later transaction revoked them.
    pub revoked: usize,
    /// Why the scan stopped before a block that looked like the next transaction, if it did:
    /// the (journal block, error) of the first invalid transaction.
    pub stopped_at: Option<(u32, Error)>,
    /// The journal has a fast-commit area, which is not replayed.
    pub fast_commit_ignored: bool,
    /// The fast-commit area starts with a fast commit of the transaction after the last one
    /// replayed: the kernel would apply it, so the tree without it is out of date.
    pub fast_commits_pending: bool,
    /// Logged blocks not replayed because their tag checksum failed: (journal block,
    /// filesystem block).
    pub bad_checksum: Vec<(u32, u64)>,
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "journal needed recovery: replayed {} transaction(s), {} block(s), in memory only (the image was not modified)",
            self.transactions, self.blocks
        )?;
        if let Some((b, e)) = &self.stopped_at {
            write!(f, "; stopped at journal block {b}: {e}")?;
        }
        if !self.bad_checksum.is_empty() {
            let (j, b) = self.bad_checksum[0];
            write!(
                f,
                "; {} logged block(s) failed their checksum and were skipped, as e2fsck and the kernel do (first: journal block {j}, for block {b}); the filesystem may be inconsistent (e2fsck -fy checks it)",
                self.bad_checksum.len()
            )?;
        }
        if self.fast_commit_ignored {
            f.write_str("; fast-commit area empty")?;
        }
        Ok(())
    }
}

/// One logged block of a transaction.
struct Logged {
    fs_block: u64,
    data: Vec<u8>,
}

struct Txn {
    sequence: u32,
    blocks: Vec<Logged>,
}

/// The journal inode's blocks: journal block → filesystem block. The one journal block map,
/// for replay and for the journal writer.
#[derive(Debug, Clone)]
pub(crate) struct JournalMap {
    pub(crate) ino: u32,
    runs: Vec<Extent>,
    pub(crate) len: u32,
}

fn journal_corrupt(ino: u32, what: String) -> Error {
    Error::corrupt(Structure::JournalSuperblock, Corruption::Journal(what)).with_inode(ino)
}

impl JournalMap {
    /// Maps the journal inode of `core`'s filesystem (internal journals only).
    pub(crate) fn load(core: &Core) -> Result<JournalMap> {
        let ino = core.sb.journal_inum();
        if ino == 0 {
            return Err(Error::unsupported(Unsupported::ExternalJournal));
        }
        let inode = core.read_inode(ino)?;
        let nblocks = inode.size() / u64::from(core.block_size);
        let runs = core.runs(ino, &inode, nblocks)?;
        let len = u32::try_from(nblocks).map_err(|_| {
            journal_corrupt(ino, format!("journal of {nblocks} blocks is too large"))
        })?;
        Ok(JournalMap { ino, runs, len })
    }

    /// The filesystem block holding journal block `j`.
    pub(crate) fn physical(&self, j: u32) -> Result<u64> {
        let l = u64::from(j);
        let i = self.runs.partition_point(|e| e.lblk + e.len <= l);
        match self.runs.get(i) {
            Some(e) if e.lblk <= l && e.kind == ExtentKind::Written => Ok(e.pblk + (l - e.lblk)),
            _ => Err(journal_corrupt(
                self.ino,
                format!("journal block {j} is not mapped"),
            )),
        }
    }
}

/// The journal's blocks, read through its [`JournalMap`].
struct JournalFile<'a> {
    core: &'a Core,
    map: JournalMap,
}

impl JournalFile<'_> {
    fn physical(&self, jblock: u32) -> Result<u64> {
        self.map.physical(jblock)
    }

    fn read(&self, jblock: u32) -> Result<(u64, Vec<u8>)> {
        let p = self.physical(jblock)?;
        let mut buf = vec![0u8; self.core.block_size as usize];
        self.core
            .cache
            .read_uncached(p, &mut buf)
            .ctx_inode(self.map.ino)?;
        Ok((p, buf))
    }
}

fn tid_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Replays the journal of `core`'s filesystem in memory: the blocks to serve instead of the
/// device's, and a report.
pub fn replay(core: &Core) -> Result<(ReplayedBlocks, ReplayReport)> {
    let sb = &core.sb;
    if !sb.has_compat(CompatFeatures::HAS_JOURNAL) {
        return Err(Error::corrupt(
            Structure::Superblock,
            Corruption::Journal("needs_recovery is set but the filesystem has no journal".into()),
        ));
    }
    let map = JournalMap::load(core)?;
    let ino = map.ino;
    let jf = JournalFile { core, map };
    let (p0, b0) = jf.read(0)?;
    let jsb = JournalSuperblock::parse(&b0).ctx_inode(ino).ctx_block(p0)?;
    jsb.check_features().ctx_inode(ino).ctx_block(p0)?;
    if jsb.block_size() != core.block_size {
        return Err(Error::corrupt(
            Structure::JournalSuperblock,
            Corruption::Journal(format!(
                "journal block size {} differs from the filesystem's {}",
                jsb.block_size(),
                core.block_size
            )),
        )
        .with_inode(ino)
        .with_block(p0));
    }
    let last = jsb.log_end().min(jf.map.len);
    let first = jsb.first();
    let mut report = ReplayReport {
        transactions: 0,
        first_sequence: jsb.sequence(),
        blocks: 0,
        revoked: 0,
        stopped_at: None,
        fast_commit_ignored: jsb.has_fast_commit(),
        fast_commits_pending: false,
        bad_checksum: Vec::new(),
    };
    if jsb.start() == 0 {
        return Ok((HashMap::new(), report));
    }
    if first >= last || jsb.start() >= last {
        return Err(Error::corrupt(
            Structure::JournalSuperblock,
            Corruption::Format(ext4kit_format::CorruptKind::JournalGeometry),
        )
        .with_inode(ino)
        .with_block(p0));
    }
    let wrap = |b: u32| if b >= last { first + (b - last) } else { b };
    // ---- pass 1: scan (keeping the logged copies of valid transactions) ----
    let mut txns: Vec<Txn> = Vec::new();
    let mut revokes: HashMap<u64, u32> = HashMap::new();
    let mut next = jsb.start();
    let mut seq = jsb.sequence();
    let mut budget = u64::from(last - first);
    let mut cur = Txn {
        sequence: seq,
        blocks: Vec::new(),
    };
    let mut cur_revokes: Vec<u64> = Vec::new();
    let mut cur_bad: Vec<(u32, u64)> = Vec::new();
    let mut crc: u32 = !0;
    let v1 = jsb.has_csum_v1();
    let stop = |at: u32, e: Error, report: &mut ReplayReport| {
        report.stopped_at = Some((at, e.with_inode(ino)));
    };
    loop {
        if budget == 0 {
            break;
        }
        budget -= 1;
        let at = next;
        let (pblk, block) = jf.read(at)?;
        let Some(h) = JournalHeader::read(&block) else {
            break;
        };
        if h.sequence != seq {
            break;
        }
        match h.kind() {
            Some(JournalBlockType::Descriptor) => {
                let d = match DescriptorBlock::parse(&block, &jsb)
                    .and_then(|d| d.verify_checksum(&jsb).map(|()| d))
                {
                    Ok(d) => d,
                    Err(e) => {
                        stop(at, Error::from(e).with_block(pblk), &mut report);
                        break;
                    }
                };
                if v1 {
                    crc = crc32_be(crc, &block);
                }
                next = wrap(at + 1);
                for tag in d.tags() {
                    if budget == 0 {
                        break;
                    }
                    budget -= 1;
                    let (_, mut data) = jf.read(next)?;
                    if verify_data_block(&jsb, seq, tag, &data).is_err() {
                        // Skipped, not the end of the log (jbd2 checks data block checksums
                        // only when replaying, and goes on). Kept out of the v1 crc: v1 and
                        // v2/v3 checksums are exclusive.
                        cur_bad.push((next, tag.block));
                        next = wrap(next + 1);
                        continue;
                    }
                    if v1 {
                        crc = crc32_be(crc, &data);
                    }
                    if tag.flags.contains(TagFlags::ESCAPE) {
                        unescape_block(&mut data);
                    }
                    cur.blocks.push(Logged {
                        fs_block: tag.block,
                        data,
                    });
                    next = wrap(next + 1);
                }
            }
            Some(JournalBlockType::Revoke) => {
                match RevokeBlock::parse(&block, &jsb)
                    .and_then(|r| r.verify_checksum(&jsb).map(|()| r))
                {
                    Ok(r) => cur_revokes.extend_from_slice(r.blocks()),
                    Err(e) => {
                        stop(at, Error::from(e).with_block(pblk), &mut report);
                        break;
                    }
                }
                next = wrap(at + 1);
            }
            Some(JournalBlockType::Commit) => {
                let c = match CommitBlock::parse(&block)
                    .and_then(|c| c.verify_checksum(&jsb).map(|()| c))
                {
                    Ok(c) => c,
                    Err(e) => {
                        stop(at, Error::from(e).with_block(pblk), &mut report);
                        break;
                    }
                };
                if v1
                    && c.checksum_type() == CHECKSUM_TYPE_CRC32
                    && c.checksum_size() == 4
                    && c.checksum() != crc
                {
                    stop(
                        at,
                        Error::from(ext4kit_format::FormatError::checksum(
                            Structure::JournalCommit,
                            crc,
                            c.checksum(),
                        ))
                        .with_block(pblk),
                        &mut report,
                    );
                    break;
                }
                for b in cur_revokes.drain(..) {
                    let e = revokes.entry(b).or_insert(seq);
                    if tid_gt(seq, *e) {
                        *e = seq;
                    }
                }
                report.bad_checksum.append(&mut cur_bad);
                seq = seq.wrapping_add(1);
                txns.push(std::mem::replace(
                    &mut cur,
                    Txn {
                        sequence: seq,
                        blocks: Vec::new(),
                    },
                ));
                crc = !0;
                next = wrap(at + 1);
            }
            _ => break,
        }
    }
    report.fast_commits_pending = fast_commit_follows(&jf, &jsb, seq)?;
    // ---- passes 2 and 3: revoke, replay ----
    let mut out: HashMap<u64, Arc<[u8]>> = HashMap::new();
    for t in txns {
        report.transactions += 1;
        for l in t.blocks {
            if revokes
                .get(&l.fs_block)
                .is_some_and(|&r| !tid_gt(t.sequence, r))
            {
                report.revoked += 1;
                continue;
            }
            if l.fs_block >= sb.blocks_count() {
                return Err(Error::corrupt(
                    Structure::JournalDescriptor,
                    Corruption::Journal(format!(
                        "journal replays block {} beyond the filesystem",
                        l.fs_block
                    )),
                )
                .with_inode(ino));
            }
            out.insert(l.fs_block, Arc::from(l.data.into_boxed_slice()));
        }
    }
    report.blocks = out.len();
    Ok((out, report))
}

/// A read-only device serving replayed journal blocks over another device.
#[derive(Debug)]
pub struct OverlayDevice {
    inner: Arc<dyn BlockDevice>,
    fs_block_size: u64,
    blocks: Arc<HashMap<u64, Arc<[u8]>>>,
    min: u64,
    max: u64,
}

impl OverlayDevice {
    /// `blocks` (filesystem blocks of `fs_block_size` bytes) replace the device's contents.
    pub fn new(
        inner: Arc<dyn BlockDevice>,
        fs_block_size: u64,
        blocks: HashMap<u64, Arc<[u8]>>,
    ) -> Self {
        let min = blocks.keys().copied().min().unwrap_or(u64::MAX);
        let max = blocks.keys().copied().max().unwrap_or(0);
        OverlayDevice {
            inner,
            fs_block_size: fs_block_size.max(1),
            blocks: Arc::new(blocks),
            min,
            max,
        }
    }
}

/// Copies the replayed blocks overlapping a completed read bio into its segments.
fn patch(
    bio: &mut Bio,
    dev_bs: u64,
    fs_bs: u64,
    blocks: &HashMap<u64, Arc<[u8]>>,
    min: u64,
    max: u64,
) {
    let start = bio.start_block().saturating_mul(dev_bs);
    let len = bio.len_bytes() as u64;
    let first = start / fs_bs;
    let last = (start + len).div_ceil(fs_bs);
    if last <= min || first > max {
        return;
    }
    let mut pos = start;
    for v in bio.vecs_mut() {
        let vlen = v.len() as u64;
        let Some(dst) = v.bytes_mut() else {
            pos += vlen;
            continue;
        };
        let mut off = 0u64;
        while off < vlen {
            let abs = pos + off;
            let fb = abs / fs_bs;
            let in_block = abs % fs_bs;
            let n = (fs_bs - in_block).min(vlen - off);
            if let Some(data) = blocks.get(&fb) {
                let s = in_block as usize;
                dst[off as usize..(off + n) as usize].copy_from_slice(&data[s..s + n as usize]);
            }
            off += n;
        }
        pos += vlen;
    }
}

impl BlockDevice for OverlayDevice {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }

    fn submit(&self, mut bio: Bio) {
        match bio.op() {
            BioOp::Read => {
                let end = bio.take_end_io();
                let blocks = Arc::clone(&self.blocks);
                let (fs_bs, min, max) = (self.fs_block_size, self.min, self.max);
                let dev_bs = u64::from(self.inner.geometry().block_size);
                bio.set_end_io(Box::new(move |mut bio, status| {
                    if status.is_ok() {
                        patch(&mut bio, dev_bs, fs_bs, &blocks, min, max);
                    }
                    if let Some(end) = end {
                        end(bio, status);
                    }
                }));
                self.inner.submit(bio);
            }
            BioOp::Write => bio.complete(Err(IoError::ReadOnly)),
            _ => self.inner.submit(bio),
        }
    }

    fn kind(&self) -> &'static str {
        "journal overlay"
    }
}

/// Whether the journal's fast-commit area begins with a fast commit of transaction `tid` (the
/// one after the last full commit): its first record is a head tag whose tid is `tid`, as
/// `ext4_fc_replay_scan` requires before it applies anything. The area starts one block after
/// the regular log's end (jbd2's `j_fc_first = j_last + 1`).
fn fast_commit_follows(jf: &JournalFile<'_>, jsb: &JournalSuperblock, tid: u32) -> Result<bool> {
    if !jsb.has_fast_commit() {
        return Ok(false);
    }
    let first = jsb.log_end().saturating_add(1);
    if first >= jf.map.len.min(jsb.maxlen()) {
        return Ok(false);
    }
    let (_, b) = jf.read(first)?;
    Ok(FastCommitHead::read(&b).is_some_and(|h| h.tid == tid))
}
