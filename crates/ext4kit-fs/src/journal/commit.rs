//! Crash-safe `sync`: the metadata of each sync goes through the jbd2 journal as one
//! transaction before it goes home, as the kernel's data=ordered commit does
//! (`fs/jbd2/commit.c`), and the journal is emptied again before the sync returns.
//!
//! # One sync
//! 1. File data is written back and waited for ([`Fs::flush_data`]); orphans and loose
//!    extent trees are dealt with (`prepare_sync`); both in [`crate::sync`], which then calls
//!    `commit` with the journal writer still locked.
//! 2. Under the metadata lock, `MetaState::write_back` fills the metadata cache and every
//!    dirty block (exactly the set `MetaCache::write_back` would write) is copied and marked
//!    clean: that copy is the transaction. The lock is held until the commit is durable, so no
//!    block this transaction frees is reused before then (frees are deferred until the commit:
//!    see [`crate::alloc`]).
//! 3. The superblock at home with `needs_recovery` set (its last durable contents otherwise),
//!    then a flush; then one batch, then a flush: the journal superblock with
//!    `s_start = s_first`, `s_sequence = tid`, the descriptor blocks and the logged copies.
//!    The first flush also makes the data of step 1 durable.
//! 4. The commit block, then a flush: from here a crash leaves the transaction to replay.
//! 5. The blocks home, then a flush.
//! 6. The journal superblock with `s_start = 0`, `s_sequence = tid + 1`, then a flush; then
//!    the superblock without `needs_recovery`, then a flush.
//!
//! A crash before step 4's flush leaves the state before the sync (`needs_recovery` may be
//! set and the journal start set with nothing valid to replay: the scan stops at the first
//! block that is not of sequence `tid`, since every older log block has an older sequence);
//! after it, the state after the sync, once replayed. The flag is set, durably, before the
//! journal superblock says the log holds anything, and cleared only after the journal
//! superblock that says it is empty is durable (jbd2's order): a crash never leaves
//! `needs_recovery` clear over a busy journal, which `e2fsck -fn` reports ("needs_recovery
//! flag is clear, but journal has data"). A clear flag means the image is clean as it is.
//!
//! # Format
//! At the first transaction the journal's features are set as a kernel mount sets them
//! (`set_journal_csum_feature_set`): checksum v3 (crc32c) when the filesystem has
//! metadata_csum, none otherwise (v1, v2 and async_commit cleared); 64bit tags when the
//! filesystem is 64bit. A transaction on a clean journal gets `s_sequence + 1`, as the first
//! one after a mount does. Descriptor tags (v3 / classic, 64bit or not) come from
//! [`DescriptorBuilder`]: UUID after the first tag, SAME_UUID on the others, LAST_TAG, tail
//! checksum; a logged block starting with the jbd2 magic is logged with the magic zeroed and
//! ESCAPE set; tag checksums cover the logged (escaped) copy. The commit block carries the
//! commit time and, with v2/v3, its crc32c (type and size 0, as the kernel leaves them).
//! No revoke records are needed: the journal is empty at the start of every sync, so no
//! transaction older than the one being written can ever be replayed over a reused block.
//!
//! # Size
//! A transaction holds at most [`JournalWriter::max_transaction_blocks`] blocks (the log minus
//! descriptors and the commit block). Operations commit early — a whole sync — once the
//! metadata they dirtied reaches half of that (`Fs::commit_if_full`), as jbd2 closes a
//! transaction at its size limit. A sync that still does not fit is split into several
//! transactions, each atomic but not the whole sync; [`JournalStats::split_syncs`] counts them.
//!
//! # Errors
//! A failed write or flush aborts the journal (`jbd2_journal_abort`): the sync returns the IO
//! error and every later sync refuses. The image is left as before the sync or with a
//! committed transaction that recovery completes (a writable open with
//! `OpenOptions::recover_journal`, `e2fsck`, or a kernel mount).
//!
//! # Not journaled
//! Filesystems without a journal, with an external journal (`s_journal_inum == 0`), and
//! writers opened with `OpenOptions::use_journal` off (image building) keep writing metadata
//! in place with one flush, as before.

use std::sync::Arc;

use ext4kit_blockdev::{Bio, BioBuf, BioOp, BioVec, BlockDevice, BlockDeviceExt, Completion};
use ext4kit_format::journal::{
    CHECKSUM_TYPE_CRC32C, CommitBlock, DescriptorBuilder, JournalSuperblock, data_block_checksum,
    escape_block, features as jf, needs_escape,
};
use ext4kit_format::superblock::{SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use ext4kit_format::{CompatFeatures, IncompatFeatures, Structure, Superblock};
use parking_lot::MutexGuard;

use crate::alloc::MetaState;
use crate::error::{Corruption, Error, Result, ResultExt, Unsupported};
use crate::fs::{Core, Fs, WriteState};
use crate::journal::JournalMap;

/// A block's bytes, shared between the home write and the log write.
type Bytes = Arc<Vec<u8>>;

/// What the journal writer has done since the filesystem was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Transactions committed (and checkpointed).
    pub transactions: u64,
    /// Metadata blocks logged (descriptors and commit blocks not counted).
    pub logged_blocks: u64,
    /// Syncs started by an operation because the dirty metadata neared the journal's size.
    pub early_commits: u64,
    /// Syncs too large for one transaction, written as several.
    pub split_syncs: u64,
    /// Sequence number of the last committed transaction (0: none yet).
    pub last_sequence: u32,
}

fn journal_corrupt(ino: u32, what: String) -> Error {
    Error::corrupt(Structure::JournalSuperblock, Corruption::Journal(what)).with_inode(ino)
}

/// Writes `items` (filesystem block, bytes) with as few bios as contiguity allows, waits for
/// all of them, and returns the first error.
fn write_blocks(
    dev: &Arc<dyn BlockDevice>,
    dev_per_block: u64,
    mut items: Vec<(u64, Bytes)>,
) -> Result<()> {
    items.sort_by_key(|(b, _)| *b);
    let mut waits = Vec::new();
    let mut i = 0;
    while i < items.len() {
        let start = items[i].0;
        let mut j = i + 1;
        while j < items.len() && items[j].0 == items[j - 1].0 + 1 && j - i < 1024 {
            j += 1;
        }
        let mut bio = Bio::new(BioOp::Write, start * dev_per_block);
        for (_, data) in &items[i..j] {
            let len = data.len();
            let shared: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::clone(data) as _;
            bio.push(BioVec::new(BioBuf::Shared(shared), 0, len));
        }
        let done = Completion::new();
        done.attach(&mut bio);
        dev.submit(bio);
        waits.push((start, done));
        i = j;
    }
    let mut first = None;
    for (start, done) in waits {
        if let Err(e) = done.wait().1 {
            first.get_or_insert(Error::io(e, Some(start)));
        }
    }
    first.map_or(Ok(()), Err)
}

fn flush(dev: &Arc<dyn BlockDevice>) -> Result<()> {
    dev.flush().map_err(|e| Error::io(e, None))
}

/// The superblock's filesystem block and the superblock's offset in it.
fn superblock_position(block_size: u32) -> (u64, usize) {
    let bs = u64::from(block_size);
    (SUPERBLOCK_OFFSET / bs, (SUPERBLOCK_OFFSET % bs) as usize)
}

/// `block` (the superblock's filesystem block) with `needs_recovery` set or cleared and the
/// superblock checksum updated.
fn with_recover_flag(block: &[u8], off: usize, set: bool) -> Result<Vec<u8>> {
    let mut out = block.to_vec();
    let raw = out.get_mut(off..off + SUPERBLOCK_SIZE).ok_or_else(|| {
        Error::corrupt(
            Structure::Superblock,
            Corruption::BlockOutOfRange { block: 0 },
        )
    })?;
    let mut sb = Superblock::parse(raw)?;
    let mut f = sb.feature_incompat();
    if set {
        f.insert(IncompatFeatures::RECOVER);
    } else {
        f.remove(IncompatFeatures::RECOVER);
    }
    sb.set_feature_incompat(f);
    sb.update_checksum();
    raw.copy_from_slice(sb.as_bytes());
    Ok(out)
}

fn now() -> (u64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

/// Writes the metadata of each sync through the filesystem's internal journal (see the
/// module docs).
pub struct JournalWriter {
    map: JournalMap,
    /// The journal superblock as this writer last wrote it (or found it), features set.
    jsb: JournalSuperblock,
    /// The whole first journal block (the superblock is its first 1024 bytes).
    jsb_block: Vec<u8>,
    /// The superblock's filesystem block as last made durable (needs_recovery clear).
    home_sb_block: Vec<u8>,
    sb_block: u64,
    sb_off: usize,
    dev: Arc<dyn BlockDevice>,
    dev_per_block: u64,
    max_blocks: usize,
    /// Why the journal was aborted, if it was.
    aborted: Option<String>,
    stats: JournalStats,
}

impl std::fmt::Debug for JournalWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalWriter")
            .field("ino", &self.map.ino)
            .field("jsb", &self.jsb)
            .field("max_blocks", &self.max_blocks)
            .field("aborted", &self.aborted)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl JournalWriter {
    /// The writer for `core`'s filesystem, when it has an internal journal (`None` without a
    /// journal or with an external one). A journal left busy without `needs_recovery` is
    /// dropped as the kernel drops it (`jbd2_journal_wipe`): marked empty on disk now, with a
    /// sequence past everything in the log.
    pub(crate) fn open(core: &Core) -> Result<Option<JournalWriter>> {
        let sb = &core.sb;
        if !sb.has_compat(CompatFeatures::HAS_JOURNAL) || sb.journal_inum() == 0 {
            return Ok(None);
        }
        let map = JournalMap::load(core)?;
        let ino = map.ino;
        let p0 = map.physical(0)?;
        let bs = core.block_size as usize;
        let mut jsb_block = vec![0u8; bs];
        core.cache
            .read_uncached(p0, &mut jsb_block)
            .ctx_inode(ino)?;
        let mut jsb = JournalSuperblock::parse(&jsb_block)
            .ctx_inode(ino)
            .ctx_block(p0)?;
        jsb.check_features().ctx_inode(ino).ctx_block(p0)?;
        if jsb.block_size() != core.block_size {
            return Err(journal_corrupt(
                ino,
                format!(
                    "journal block size {} differs from the filesystem's {}",
                    jsb.block_size(),
                    core.block_size
                ),
            )
            .with_block(p0));
        }
        if jsb.log_end() > map.len || jsb.first() + 2 >= jsb.log_end() {
            return Err(Error::corrupt(
                Structure::JournalSuperblock,
                Corruption::Format(ext4kit_format::CorruptKind::JournalGeometry),
            )
            .with_inode(ino)
            .with_block(p0));
        }
        if jsb.errno() != 0 {
            return Err(Error::ReadOnly(format!(
                "the journal records an error ({}) from its last writer; run e2fsck before writing",
                jsb.errno()
            )));
        }
        let dev = Arc::clone(core.cache.device());
        let dev_per_block =
            (u64::from(core.block_size) / u64::from(dev.geometry().block_size.max(1))).max(1);
        if jsb.start() != 0 {
            // Busy but needs_recovery is clear: skip it, as jbd2_journal_skip_recovery does,
            // and say so on disk.
            let (_, report) = crate::journal::replay(core)?;
            let end = report.first_sequence.wrapping_add(report.transactions);
            jsb.set_start(0);
            jsb.set_sequence(end.wrapping_add(1));
            jsb.update_checksum();
            jsb_block[..jsb.as_bytes().len()].copy_from_slice(jsb.as_bytes());
            write_blocks(&dev, dev_per_block, vec![(p0, Arc::new(jsb_block.clone()))])?;
            flush(&dev)?;
        }
        if jsb.is_v2() {
            let mut incompat = jsb.feature_incompat_raw()
                & !(jf::INCOMPAT_CSUM_V2 | jf::INCOMPAT_CSUM_V3 | jf::INCOMPAT_ASYNC_COMMIT);
            if sb.has_metadata_csum() {
                incompat |= jf::INCOMPAT_CSUM_V3;
                jsb.set_checksum_type(CHECKSUM_TYPE_CRC32C);
            }
            if sb.is_64bit() {
                incompat |= jf::INCOMPAT_64BIT;
            }
            jsb.set_feature_incompat(incompat);
            jsb.set_feature_compat(jsb.feature_compat_raw() & !jf::COMPAT_CHECKSUM);
        }
        if !jsb.is_64bit() && sb.blocks_count() > u64::from(u32::MAX) {
            return Err(Error::unsupported(Unsupported::Other(
                "the journal has a v1 superblock (no 64bit tags) but the filesystem has blocks past 2^32".into(),
            )));
        }
        jsb.update_checksum();
        let (sb_block, sb_off) = superblock_position(core.block_size);
        let home_sb_block = core.cache.get(sb_block)?.to_vec();
        let log = (jsb.log_end() - jsb.first()) as usize;
        let per = jsb.tags_per_descriptor().max(1);
        // log = data + descriptors (one per `per` data blocks) + the commit block.
        let usable = log - 1;
        let max_blocks = usable / (per + 1) * per + (usable % (per + 1)).saturating_sub(1);
        Ok(Some(JournalWriter {
            map,
            jsb,
            jsb_block,
            home_sb_block,
            sb_block,
            sb_off,
            dev,
            dev_per_block,
            max_blocks,
            aborted: None,
            stats: JournalStats::default(),
        }))
    }

    /// Most blocks one transaction can log.
    pub fn max_transaction_blocks(&self) -> usize {
        self.max_blocks
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> JournalStats {
        self.stats
    }

    /// Counts a sync started early because the transaction grew large (`Fs::commit_if_full`).
    pub(crate) fn count_early_commit(&mut self) {
        self.stats.early_commits += 1;
    }

    fn jsb_bytes(&mut self) -> Bytes {
        self.jsb.update_checksum();
        self.jsb_block[..self.jsb.as_bytes().len()].copy_from_slice(self.jsb.as_bytes());
        Arc::new(self.jsb_block.clone())
    }

    /// Commits `blocks` (sorted by block number) as one transaction and writes them home.
    /// `meta` is released once the commit is durable.
    fn commit_one(
        &mut self,
        blocks: &[(u64, Bytes)],
        meta: &mut Option<MutexGuard<'_, MetaState>>,
    ) -> Result<()> {
        let tid = self.jsb.sequence().wrapping_add(1);
        let v23 = self.jsb.has_csum_v2_or_v3();
        let seed = self.jsb.csum_seed();
        let per = self.jsb.tags_per_descriptor().max(1);
        // The superblock goes to the log and home with needs_recovery set, as a mounted
        // filesystem's does; the final write clears it.
        let mut txn: Vec<(u64, Bytes)> = Vec::with_capacity(blocks.len());
        let mut new_home_sb = None;
        for (b, data) in blocks {
            if *b == self.sb_block {
                new_home_sb = Some(data.to_vec());
                txn.push((*b, Arc::new(with_recover_flag(data, self.sb_off, true)?)));
            } else {
                txn.push((*b, Arc::clone(data)));
            }
        }
        // ---- step 3a: needs_recovery, durable before the journal says it holds anything ----
        let flagged = Arc::new(with_recover_flag(&self.home_sb_block, self.sb_off, true)?);
        self.io(write_blocks(
            &self.dev,
            self.dev_per_block,
            vec![(self.sb_block, flagged)],
        ))?;
        self.io(flush(&self.dev))?;
        // ---- step 3b: journal superblock, descriptors and logged copies ----
        let first = self.jsb.first();
        let mut writes: Vec<(u64, Bytes)> = Vec::with_capacity(txn.len() + txn.len() / per + 2);
        self.jsb.set_start(first);
        self.jsb.set_sequence(tid);
        let jsb_bytes = self.jsb_bytes();
        writes.push((self.map.physical(0)?, jsb_bytes));
        let mut pos = first;
        for chunk in txn.chunks(per) {
            let desc_pos = pos;
            pos += 1;
            let mut desc = DescriptorBuilder::new(&self.jsb, tid);
            for (b, data) in chunk {
                let (logged, escaped) = if needs_escape(data) {
                    let mut copy = data.to_vec();
                    escape_block(&mut copy);
                    (Arc::new(copy), true)
                } else {
                    (Arc::clone(data), false)
                };
                let csum = if v23 {
                    data_block_checksum(seed, tid, &logged)
                } else {
                    0
                };
                if !desc.push(*b, escaped, csum)? {
                    return Err(journal_corrupt(
                        self.map.ino,
                        "descriptor block overflow".into(),
                    ));
                }
                writes.push((self.map.physical(pos)?, logged));
                pos += 1;
            }
            writes.push((
                self.map.physical(desc_pos)?,
                Arc::new(desc.finish(&self.jsb)),
            ));
        }
        let commit_pos = pos;
        if commit_pos >= self.jsb.log_end() {
            return Err(journal_corrupt(
                self.map.ino,
                format!("transaction of {} blocks does not fit the log", txn.len()),
            ));
        }
        self.io(write_blocks(&self.dev, self.dev_per_block, writes))?;
        self.io(flush(&self.dev))?;
        // ---- step 4: the commit block ----
        let (secs, nsecs) = now();
        let mut commit = CommitBlock::new(self.jsb.block_size() as usize, tid, secs, nsecs);
        commit.update_checksum(&self.jsb);
        let commit_block = Arc::new(commit.as_bytes().to_vec());
        self.io(write_blocks(
            &self.dev,
            self.dev_per_block,
            vec![(self.map.physical(commit_pos)?, commit_block)],
        ))?;
        self.io(flush(&self.dev))?;
        // Durable: blocks this transaction freed may be reused from here on.
        drop(meta.take());
        self.stats.transactions += 1;
        self.stats.logged_blocks += txn.len() as u64;
        self.stats.last_sequence = tid;
        // ---- step 5: home ----
        self.io(write_blocks(&self.dev, self.dev_per_block, txn))?;
        self.io(flush(&self.dev))?;
        // ---- step 6a: the journal is empty (durable before the flag is cleared) ----
        if let Some(sb) = new_home_sb {
            self.home_sb_block = sb;
        }
        self.jsb.set_start(0);
        self.jsb.set_sequence(tid.wrapping_add(1));
        let jsb_bytes = self.jsb_bytes();
        self.io(write_blocks(
            &self.dev,
            self.dev_per_block,
            vec![(self.map.physical(0)?, jsb_bytes)],
        ))?;
        self.io(flush(&self.dev))?;
        // ---- step 6b: nothing needs recovery ----
        let home_sb = Arc::new(self.home_sb_block.clone());
        self.io(write_blocks(
            &self.dev,
            self.dev_per_block,
            vec![(self.sb_block, home_sb)],
        ))?;
        self.io(flush(&self.dev))?;
        Ok(())
    }

    /// Passes `r` through, aborting the journal on an error.
    fn io<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            self.aborted.get_or_insert_with(|| e.to_string());
        }
        r
    }

    pub(crate) fn check_usable(&self) -> Result<()> {
        match &self.aborted {
            None => Ok(()),
            Some(why) => Err(Error::ReadOnly(format!(
                "the journal was aborted by an earlier write error ({why}); reopen the image to recover it"
            ))),
        }
    }
}

/// The metadata half of a journaled `Fs::sync` (see the module docs): `j` is locked, was found
/// usable ([`JournalWriter::check_usable`]), and the file data is written back and the
/// orphans and trees prepared (steps 1); this commits the rest (steps 2 to 6).
pub(crate) fn commit(core: &Core, w: &WriteState, j: &mut JournalWriter) -> Result<()> {
    let mut meta = Some(w.meta.lock());
    // The transaction: every dirty block, copied and marked clean while no operation can
    // change metadata. `dirty` keeps the blocks referenced (not evictable) until the end.
    let (dirty, blocks) = {
        let Some(m) = meta.as_mut() else {
            return Ok(());
        };
        m.write_back(core)?;
        let dirty = core.cache.dirty_blocks();
        let blocks: Vec<(u64, Bytes)> = dirty
            .iter()
            .map(|b| {
                b.clear_dirty();
                (b.block(), Arc::new(b.to_vec()))
            })
            .collect();
        (dirty, blocks)
    };
    core.cache.recount_dirty();
    // Nothing but an unchanged superblock: no transaction, only the data to make durable.
    let unchanged = blocks
        .iter()
        .all(|(b, d)| *b == j.sb_block && **d == j.home_sb_block);
    if unchanged {
        drop(meta);
        let r = flush(&j.dev);
        return j.io(r);
    }
    let r = if blocks.len() <= j.max_blocks {
        j.commit_one(&blocks, &mut meta)
    } else {
        j.stats.split_syncs += 1;
        let max = j.max_blocks.max(1);
        let parts = blocks.len().div_ceil(max);
        let mut r = Ok(());
        for (i, chunk) in blocks.chunks(max).enumerate() {
            // The metadata lock stays held until the last part is committed.
            let mut keep = None;
            r = j.commit_one(chunk, if i + 1 == parts { &mut meta } else { &mut keep });
            if r.is_err() {
                break;
            }
        }
        r
    };
    if r.is_err() {
        // Not (all) home: keep them dirty, so that the cache never claims they are on disk.
        drop(meta);
        for b in &dirty {
            b.mark_dirty();
        }
    }
    r
}

/// What a writable open's journal recovery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Transactions replayed.
    pub transactions: u32,
    /// Filesystem blocks written home.
    pub blocks: usize,
    /// The scan stopped before an invalid transaction (journal block, error), if it did.
    pub stopped_at: Option<(u32, String)>,
}

impl std::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "journal needed recovery: replayed {} transaction(s), {} block(s) onto the image",
            self.transactions, self.blocks
        )?;
        if let Some((b, e)) = &self.stopped_at {
            write!(f, "; stopped at journal block {b}: {e}")?;
        }
        Ok(())
    }
}

/// Replays the journal of the filesystem on `dev` for real, as a kernel mount does: the
/// replayed blocks are written home and flushed, then the journal is marked empty (sequence
/// past the replayed transactions) and `needs_recovery` cleared, flushed. `core` is the
/// filesystem as on disk (before replay), opened read-only.
pub(crate) fn recover(core: &Core) -> Result<RecoveryReport> {
    let map = JournalMap::load(core)?;
    let p0 = map.physical(0)?;
    let mut jsb_block = vec![0u8; core.block_size as usize];
    core.cache
        .read_uncached(p0, &mut jsb_block)
        .ctx_inode(map.ino)?;
    let mut jsb = JournalSuperblock::parse(&jsb_block)
        .ctx_inode(map.ino)
        .ctx_block(p0)?;
    if jsb.has_fast_commit() {
        return Err(Error::unsupported(Unsupported::Other(
            "the journal has fast-commit blocks, which ext4kit does not replay; recover it with the kernel or e2fsck first".into(),
        )));
    }
    let (blocks, report) = crate::journal::replay(core)?;
    if let Some(&(j, b)) = report.bad_checksum.first() {
        // e2fsck replays the rest and then checks the whole filesystem; the kernel refuses
        // the mount. Nothing is written here.
        return Err(Error::ReadOnly(format!(
            "journal block {j} (a logged copy of block {b}) fails its checksum: replay the journal with `e2fsck -fy`, which then checks the filesystem, before writing"
        )));
    }
    let dev = Arc::clone(core.cache.device());
    let dev_per_block =
        (u64::from(core.block_size) / u64::from(dev.geometry().block_size.max(1))).max(1);
    let items: Vec<(u64, Bytes)> = blocks
        .iter()
        .map(|(b, d)| (*b, Arc::new(d.to_vec())))
        .collect();
    write_blocks(&dev, dev_per_block, items)?;
    flush(&dev)?;
    if jsb.start() != 0 {
        let end = report.first_sequence.wrapping_add(report.transactions);
        jsb.set_start(0);
        jsb.set_sequence(end.wrapping_add(1));
        jsb.update_checksum();
        jsb_block[..jsb.as_bytes().len()].copy_from_slice(jsb.as_bytes());
        write_blocks(&dev, dev_per_block, vec![(p0, Arc::new(jsb_block))])?;
        // The empty journal is durable before needs_recovery is cleared (jbd2's order): a
        // crash in between leaves the flag set over an empty journal, never the reverse.
        flush(&dev)?;
    }
    // The superblock as replayed, without needs_recovery and with the free counts of the
    // replayed group descriptors (the kernel does not log its counters; a mount and e2fsck
    // both take them from the groups).
    let (sb_block, sb_off) = superblock_position(core.block_size);
    let replayed = Core::load(
        Arc::clone(&dev),
        Core::read_superblock(&dev)?,
        &crate::fs::OpenOptions {
            metadata_cache_blocks: 64,
            ..crate::fs::OpenOptions::default()
        },
    )?;
    let mut sb = replayed.sb.clone();
    sb.set_free_blocks_count(
        replayed
            .groups
            .iter()
            .map(|g| u64::from(g.free_blocks_count()))
            .sum(),
    );
    sb.set_free_inodes_count(
        replayed
            .groups
            .iter()
            .map(|g| g.free_inodes_count())
            .fold(0u32, u32::saturating_add),
    );
    let mut f = sb.feature_incompat();
    f.remove(IncompatFeatures::RECOVER);
    sb.set_feature_incompat(f);
    sb.update_checksum();
    let mut home = vec![0u8; core.block_size as usize];
    core.cache.read_uncached(sb_block, &mut home)?;
    home[sb_off..sb_off + SUPERBLOCK_SIZE].copy_from_slice(sb.as_bytes());
    drop(replayed);
    write_blocks(&dev, dev_per_block, vec![(sb_block, Arc::new(home))])?;
    flush(&dev)?;
    Ok(RecoveryReport {
        transactions: report.transactions,
        blocks: report.blocks,
        stopped_at: report.stopped_at.map(|(b, e)| (b, e.to_string())),
    })
}

impl Fs {
    /// What the journal writer has done, when syncs go through the journal.
    pub fn journal_stats(&self) -> Option<JournalStats> {
        let w = self.core.write.as_ref()?;
        Some(w.journal.as_ref()?.lock().stats())
    }
}
