//! jbd2, the journal ext3/ext4 write their metadata through. Everything here
//! is **big-endian**.
//!
//! * [`JournalSuperblock`]: the first journal block (v1 or v2), with features
//!   (checksum v1/v2/v3, 64bit, async_commit, revoke, fast_commit), geometry,
//!   uuid, users and the crc32c superblock checksum.
//! * [`DescriptorBlock`]: lists the filesystem blocks whose copies follow it in
//!   the log, as tags (`journal_block_tag3_t` with csum v3, else the classic
//!   tag whose size depends on 64bit and csum v2), with flags ESCAPE,
//!   SAME_UUID, DELETED, LAST_TAG, and a tail checksum with csum v2/v3.
//!   [`DescriptorBuilder`] builds them.
//! * [`CommitBlock`]: ends a transaction (commit time, checksum).
//! * [`RevokeBlock`]: blocks not to replay (4- or 8-byte records).
//!
//! Checksums (v2/v3) are crc32c seeded with `crc32c_raw(!0, journal uuid)`.
//! Data blocks are covered by their tag: crc32c over `be32(sequence)` and the
//! block (32 bits in v3 tags, the low 16 bits in v2 tags).

use alloc::{boxed::Box, string::String, vec, vec::Vec};

use crate::bytes::{
    read_u16be, read_u32be, read_u64be, write_bytes, write_u16be, write_u32be, write_u64be,
};
use crate::checksum::{CRC32C_INITIAL, crc32c_raw};
use crate::error::{
    CorruptKind, FormatError, IncompatibleKind, Result, Structure, UnknownFeatures,
};
use crate::macros::field;

/// `JBD2_MAGIC_NUMBER`.
pub const JBD2_MAGIC: u32 = 0xC03B_3998;
/// Size of the journal superblock structure.
pub const JOURNAL_SUPERBLOCK_SIZE: usize = 1024;
/// Size of the common block header.
pub const HEADER_SIZE: usize = 12;
/// Size of the descriptor / revoke block tail.
pub const BLOCK_TAIL_SIZE: usize = 4;
/// Maximum number of filesystems sharing a journal (`JBD2_USERS_MAX`).
pub const USERS_MAX: u32 = 48;
/// `JBD2_CRC32C_CHKSUM`.
pub const CHECKSUM_TYPE_CRC32C: u8 = 4;
/// `JBD2_CRC32_CHKSUM` (checksum v1 commit blocks).
pub const CHECKSUM_TYPE_CRC32: u8 = 1;
/// `JBD2_DEFAULT_FAST_COMMIT_BLOCKS`.
pub const DEFAULT_FAST_COMMIT_BLOCKS: u32 = 256;

/// `h_blocktype` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JournalBlockType {
    /// `JBD2_DESCRIPTOR_BLOCK`
    Descriptor,
    /// `JBD2_COMMIT_BLOCK`
    Commit,
    /// `JBD2_SUPERBLOCK_V1`
    SuperblockV1,
    /// `JBD2_SUPERBLOCK_V2`
    SuperblockV2,
    /// `JBD2_REVOKE_BLOCK`
    Revoke,
    /// `JBD2_FC_BLOCK`
    FastCommit,
}

impl JournalBlockType {
    /// From the on-disk code.
    pub fn from_code(c: u32) -> Option<Self> {
        Some(match c {
            1 => Self::Descriptor,
            2 => Self::Commit,
            3 => Self::SuperblockV1,
            4 => Self::SuperblockV2,
            5 => Self::Revoke,
            6 => Self::FastCommit,
            _ => return None,
        })
    }
    /// The on-disk code.
    pub fn code(self) -> u32 {
        match self {
            Self::Descriptor => 1,
            Self::Commit => 2,
            Self::SuperblockV1 => 3,
            Self::SuperblockV2 => 4,
            Self::Revoke => 5,
            Self::FastCommit => 6,
        }
    }
}

/// The 12-byte header every journal metadata block starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JournalHeader {
    /// `h_blocktype` (raw).
    pub block_type: u32,
    /// `h_sequence`: the transaction id.
    pub sequence: u32,
}

impl JournalHeader {
    /// Reads a header; `None` if the block does not start with the jbd2 magic
    /// (a data block or the end of the log).
    pub fn read(block: &[u8]) -> Option<Self> {
        if block.len() < HEADER_SIZE || read_u32be(block, 0) != JBD2_MAGIC {
            return None;
        }
        Some(JournalHeader {
            block_type: read_u32be(block, 4),
            sequence: read_u32be(block, 8),
        })
    }

    /// The decoded block type.
    pub fn kind(&self) -> Option<JournalBlockType> {
        JournalBlockType::from_code(self.block_type)
    }

    /// Writes the header.
    pub fn write(&self, block: &mut [u8]) {
        write_u32be(block, 0, JBD2_MAGIC);
        write_u32be(block, 4, self.block_type);
        write_u32be(block, 8, self.sequence);
    }
}

fn check_header(
    block: &[u8],
    want: JournalBlockType,
    structure: Structure,
) -> Result<JournalHeader> {
    if block.len() < HEADER_SIZE {
        return Err(FormatError::too_short(structure, HEADER_SIZE, block.len()));
    }
    let magic = read_u32be(block, 0);
    if magic != JBD2_MAGIC {
        return Err(FormatError::corrupt(
            structure,
            CorruptKind::JournalMagic(magic),
        ));
    }
    let h = JournalHeader {
        block_type: read_u32be(block, 4),
        sequence: read_u32be(block, 8),
    };
    if h.block_type != want.code() {
        return Err(FormatError::corrupt(
            structure,
            CorruptKind::JournalBlockType(h.block_type),
        ));
    }
    Ok(h)
}

/// Journal feature bits.
pub mod features {
    use alloc::{format, string::String, vec::Vec};

    /// `JBD2_FEATURE_COMPAT_CHECKSUM` (checksum v1, crc32 in commit blocks).
    pub const COMPAT_CHECKSUM: u32 = 0x1;
    /// `JBD2_FEATURE_INCOMPAT_REVOKE`
    pub const INCOMPAT_REVOKE: u32 = 0x1;
    /// `JBD2_FEATURE_INCOMPAT_64BIT`
    pub const INCOMPAT_64BIT: u32 = 0x2;
    /// `JBD2_FEATURE_INCOMPAT_ASYNC_COMMIT`
    pub const INCOMPAT_ASYNC_COMMIT: u32 = 0x4;
    /// `JBD2_FEATURE_INCOMPAT_CSUM_V2`
    pub const INCOMPAT_CSUM_V2: u32 = 0x8;
    /// `JBD2_FEATURE_INCOMPAT_CSUM_V3`
    pub const INCOMPAT_CSUM_V3: u32 = 0x10;
    /// `JBD2_FEATURE_INCOMPAT_FAST_COMMIT`
    pub const INCOMPAT_FAST_COMMIT: u32 = 0x20;
    /// Known compat bits.
    pub const KNOWN_COMPAT: u32 = COMPAT_CHECKSUM;
    /// Known incompat bits.
    pub const KNOWN_INCOMPAT: u32 = INCOMPAT_REVOKE
        | INCOMPAT_64BIT
        | INCOMPAT_ASYNC_COMMIT
        | INCOMPAT_CSUM_V2
        | INCOMPAT_CSUM_V3
        | INCOMPAT_FAST_COMMIT;
    /// Known ro_compat bits.
    pub const KNOWN_RO_COMPAT: u32 = 0;

    /// Names as `dumpe2fs` prints them (`Journal features:`).
    pub fn names(compat: u32, incompat: u32, ro_compat: u32) -> Vec<String> {
        let mut v = Vec::new();
        for bit in 0..32 {
            let m = 1u32 << bit;
            if compat & m != 0 {
                v.push(if m == COMPAT_CHECKSUM {
                    "journal_checksum".into()
                } else {
                    format!("FEATURE_C{bit}")
                });
            }
        }
        for bit in 0..32 {
            let m = 1u32 << bit;
            if incompat & m != 0 {
                v.push(match m {
                    INCOMPAT_REVOKE => "journal_incompat_revoke".into(),
                    INCOMPAT_64BIT => "journal_64bit".into(),
                    INCOMPAT_ASYNC_COMMIT => "journal_async_commit".into(),
                    INCOMPAT_CSUM_V2 => "journal_checksum_v2".into(),
                    INCOMPAT_CSUM_V3 => "journal_checksum_v3".into(),
                    _ => format!("FEATURE_I{bit}"),
                });
            }
        }
        for bit in 0..32 {
            if ro_compat & (1 << bit) != 0 {
                v.push(format!("FEATURE_R{bit}"));
            }
        }
        v
    }
}

/// The journal superblock, owning its 1024 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct JournalSuperblock {
    raw: Box<[u8; JOURNAL_SUPERBLOCK_SIZE]>,
}

impl core::fmt::Debug for JournalSuperblock {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("JournalSuperblock")
            .field("block_size", &self.block_size())
            .field("maxlen", &self.maxlen())
            .field("first", &self.first())
            .field("sequence", &self.sequence())
            .field("start", &self.start())
            .field("incompat", &format_args!("{:#x}", self.feature_incompat()))
            .finish_non_exhaustive()
    }
}

impl JournalSuperblock {
    /// Parses and validates a journal superblock (first 1024 bytes of the
    /// journal's first block): magic, type v1/v2, block size, geometry, users,
    /// checksum features, checksum type and checksum.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let src = bytes.get(..JOURNAL_SUPERBLOCK_SIZE).ok_or_else(|| {
            FormatError::too_short(
                Structure::JournalSuperblock,
                JOURNAL_SUPERBLOCK_SIZE,
                bytes.len(),
            )
        })?;
        let mut raw = Box::new([0u8; JOURNAL_SUPERBLOCK_SIZE]);
        raw.copy_from_slice(src);
        let sb = Self { raw };
        sb.validate()?;
        Ok(sb)
    }

    /// A new v2 superblock for a journal of `maxlen` blocks of `block_size`
    /// (first log block 1, clean, sequence 1, one user); features and uuid to
    /// be set by the caller, then [`JournalSuperblock::update_checksum`].
    pub fn new(block_size: u32, maxlen: u32) -> Self {
        let mut sb = Self {
            raw: Box::new([0u8; JOURNAL_SUPERBLOCK_SIZE]),
        };
        JournalHeader {
            block_type: JournalBlockType::SuperblockV2.code(),
            sequence: 0,
        }
        .write(&mut sb.raw[..]);
        sb.set_block_size(block_size);
        sb.set_maxlen(maxlen);
        sb.set_first(1);
        sb.set_sequence(1);
        sb.set_nr_users(1);
        sb
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; JOURNAL_SUPERBLOCK_SIZE] {
        &self.raw
    }

    field!(
        block_type,
        set_block_type,
        u32be,
        0x04,
        "h_blocktype",
        "3 for a v1 superblock, 4 for v2."
    );
    field!(
        block_size,
        set_block_size,
        u32be,
        0x0C,
        "s_blocksize",
        "Journal block size."
    );
    field!(
        maxlen,
        set_maxlen,
        u32be,
        0x10,
        "s_maxlen",
        "Total blocks in the journal."
    );
    field!(
        first,
        set_first,
        u32be,
        0x14,
        "s_first",
        "First block of log information."
    );
    field!(
        sequence,
        set_sequence,
        u32be,
        0x18,
        "s_sequence",
        "First transaction id expected in the log."
    );
    field!(
        start,
        set_start,
        u32be,
        0x1C,
        "s_start",
        "Block where the log starts; 0 = the journal is clean."
    );
    field!(
        errno_raw,
        set_errno_raw,
        u32be,
        0x20,
        "s_errno",
        "Error set by journal abort (signed)."
    );
    field!(
        feature_compat_raw,
        set_feature_compat,
        u32be,
        0x24,
        "s_feature_compat",
        "Compatible features (raw; see [`JournalSuperblock::feature_compat`])."
    );
    field!(
        feature_incompat_raw,
        set_feature_incompat,
        u32be,
        0x28,
        "s_feature_incompat",
        "Incompatible features (raw)."
    );
    field!(
        feature_ro_compat_raw,
        set_feature_ro_compat,
        u32be,
        0x2C,
        "s_feature_ro_compat",
        "Read-only compatible features (raw)."
    );
    field!(
        uuid,
        set_uuid,
        [u8; 16],
        0x30,
        "s_uuid",
        "Journal UUID (seeds the checksums)."
    );
    field!(
        nr_users,
        set_nr_users,
        u32be,
        0x40,
        "s_nr_users",
        "Filesystems sharing the journal."
    );
    field!(
        dynsuper,
        set_dynsuper,
        u32be,
        0x44,
        "s_dynsuper",
        "Block of a dynamic superblock copy."
    );
    field!(
        max_transaction,
        set_max_transaction,
        u32be,
        0x48,
        "s_max_transaction",
        "Limit of journal blocks per transaction."
    );
    field!(
        max_trans_data,
        set_max_trans_data,
        u32be,
        0x4C,
        "s_max_trans_data",
        "Limit of data blocks per transaction."
    );
    field!(
        checksum_type,
        set_checksum_type,
        u8,
        0x50,
        "s_checksum_type",
        "Checksum algorithm (4 = crc32c)."
    );
    field!(
        num_fc_blocks_raw,
        set_num_fc_blocks,
        u32be,
        0x54,
        "s_num_fc_blks",
        "Fast-commit blocks (0 = default 256)."
    );
    field!(
        head,
        set_head,
        u32be,
        0x58,
        "s_head",
        "Head of the log, valid while the filesystem is clean."
    );
    field!(
        checksum,
        set_checksum,
        u32be,
        0xFC,
        "s_checksum",
        "crc32c of the superblock."
    );

    /// `s_errno` as the signed value it is.
    pub fn errno(&self) -> i32 {
        self.errno_raw() as i32
    }
    /// `true` for a v2 superblock (the only one with features).
    pub fn is_v2(&self) -> bool {
        self.block_type() == JournalBlockType::SuperblockV2.code()
    }
    /// Compatible features (0 for v1).
    pub fn feature_compat(&self) -> u32 {
        if self.is_v2() {
            self.feature_compat_raw()
        } else {
            0
        }
    }
    /// Incompatible features (0 for v1).
    pub fn feature_incompat(&self) -> u32 {
        if self.is_v2() {
            self.feature_incompat_raw()
        } else {
            0
        }
    }
    /// Read-only-compatible features (0 for v1).
    pub fn feature_ro_compat(&self) -> u32 {
        if self.is_v2() {
            self.feature_ro_compat_raw()
        } else {
            0
        }
    }
    /// Feature names as `dumpe2fs` prints them.
    pub fn feature_names(&self) -> Vec<String> {
        features::names(
            self.feature_compat(),
            self.feature_incompat(),
            self.feature_ro_compat(),
        )
    }
    /// 64-bit block numbers in tags and revoke records.
    pub fn is_64bit(&self) -> bool {
        self.feature_incompat() & features::INCOMPAT_64BIT != 0
    }
    /// Checksum v2 (16-bit tag checksums).
    pub fn has_csum_v2(&self) -> bool {
        self.feature_incompat() & features::INCOMPAT_CSUM_V2 != 0
    }
    /// Checksum v3 (tag3 with 32-bit checksums).
    pub fn has_csum_v3(&self) -> bool {
        self.feature_incompat() & features::INCOMPAT_CSUM_V3 != 0
    }
    /// Checksum v2 or v3: metadata blocks carry crc32c checksums.
    pub fn has_csum_v2_or_v3(&self) -> bool {
        self.has_csum_v2() || self.has_csum_v3()
    }
    /// Checksum v1 (crc32 of the transaction in the commit block).
    pub fn has_csum_v1(&self) -> bool {
        self.feature_compat() & features::COMPAT_CHECKSUM != 0
    }
    /// Fast-commit area present.
    pub fn has_fast_commit(&self) -> bool {
        self.feature_incompat() & features::INCOMPAT_FAST_COMMIT != 0
    }
    /// Fast-commit blocks (`s_num_fc_blks`, default 256) when the feature is set, else 0.
    pub fn fast_commit_blocks(&self) -> u32 {
        if !self.has_fast_commit() {
            0
        } else if self.num_fc_blocks_raw() == 0 {
            DEFAULT_FAST_COMMIT_BLOCKS
        } else {
            self.num_fc_blocks_raw()
        }
    }
    /// Last block usable for the regular log (`maxlen` minus the fast-commit area).
    pub fn log_end(&self) -> u32 {
        self.maxlen().saturating_sub(self.fast_commit_blocks())
    }

    /// Bytes of a descriptor tag (`journal_tag_bytes`): 16 with v3; else 8,
    /// +4 with 64bit, +2 with v2.
    pub fn tag_size(&self) -> usize {
        if self.has_csum_v3() {
            return 16;
        }
        let mut sz = 12;
        if self.has_csum_v2() {
            sz += 2;
        }
        if self.is_64bit() { sz } else { sz - 4 }
    }

    /// Tags one descriptor block holds (what [`DescriptorBuilder`] accepts): the header, the
    /// UUID after the first tag and the tail (v2/v3) leave room for this many.
    pub fn tags_per_descriptor(&self) -> usize {
        let limit = (self.block_size() as usize).saturating_sub(self.block_tail_size());
        limit.saturating_sub(HEADER_SIZE + 16) / self.tag_size()
    }

    /// Bytes reserved at the end of descriptor and revoke blocks (4 with v2/v3).
    pub fn block_tail_size(&self) -> usize {
        if self.has_csum_v2_or_v3() {
            BLOCK_TAIL_SIZE
        } else {
            0
        }
    }

    /// The checksum seed: crc32c of the uuid.
    pub fn csum_seed(&self) -> u32 {
        crc32c_raw(CRC32C_INITIAL, &self.uuid())
    }

    /// UUID of user `i` (`s_users`).
    pub fn user(&self, i: usize) -> Option<[u8; 16]> {
        (i < USERS_MAX as usize)
            .then(|| crate::bytes::read_array::<16>(&self.raw[..], 0x100 + 16 * i))
    }
    /// Sets the UUID of user `i`.
    pub fn set_user(&mut self, i: usize, uuid: [u8; 16]) {
        if i < USERS_MAX as usize {
            write_bytes(&mut self.raw[..], 0x100 + 16 * i, &uuid);
        }
    }

    /// crc32c over the superblock with `s_checksum` zeroed.
    pub fn compute_checksum(&self) -> u32 {
        let mut crc = crc32c_raw(CRC32C_INITIAL, &self.raw[..0xFC]);
        crc = crc32c_raw(crc, &[0; 4]);
        crc32c_raw(crc, &self.raw[0x100..])
    }
    /// Verifies the checksum (Ok without v2/v3).
    pub fn verify_checksum(&self) -> Result<()> {
        if !self.has_csum_v2_or_v3() {
            return Ok(());
        }
        let c = self.compute_checksum();
        if c != self.checksum() {
            return Err(FormatError::checksum(
                Structure::JournalSuperblock,
                c,
                self.checksum(),
            ));
        }
        Ok(())
    }
    /// Recomputes the checksum (with v2/v3).
    pub fn update_checksum(&mut self) {
        if self.has_csum_v2_or_v3() {
            let c = self.compute_checksum();
            self.set_checksum(c);
        }
    }

    /// Refuses unknown incompat / ro_compat bits.
    pub fn check_features(&self) -> Result<()> {
        let incompat = self.feature_incompat() & !features::KNOWN_INCOMPAT;
        let ro_compat = self.feature_ro_compat() & !features::KNOWN_RO_COMPAT;
        if incompat != 0 || ro_compat != 0 {
            return Err(FormatError::incompatible(
                Structure::JournalSuperblock,
                IncompatibleKind::JournalFeatures(UnknownFeatures {
                    compat: 0,
                    incompat,
                    ro_compat,
                }),
            ));
        }
        Ok(())
    }

    /// Validates everything [`JournalSuperblock::parse`] checks.
    pub fn validate(&self) -> Result<()> {
        let bad = |k| Err(FormatError::corrupt(Structure::JournalSuperblock, k));
        let magic = read_u32be(&self.raw[..], 0);
        if magic != JBD2_MAGIC {
            return bad(CorruptKind::JournalMagic(magic));
        }
        let t = self.block_type();
        if t != JournalBlockType::SuperblockV1.code() && t != JournalBlockType::SuperblockV2.code()
        {
            return bad(CorruptKind::JournalBlockType(t));
        }
        let bs = self.block_size();
        if !(1024..=65536).contains(&bs) || !bs.is_power_of_two() {
            return bad(CorruptKind::JournalBlockSize(bs));
        }
        let (first, maxlen, start) = (self.first(), self.maxlen(), self.start());
        if first == 0 || first >= maxlen || (start != 0 && (start < first || start >= maxlen)) {
            return bad(CorruptKind::JournalGeometry);
        }
        if self.is_v2() {
            if self.nr_users() > USERS_MAX {
                return bad(CorruptKind::JournalUsers(self.nr_users()));
            }
            if (self.has_csum_v2() && self.has_csum_v3())
                || (self.has_csum_v2_or_v3() && self.has_csum_v1())
            {
                return bad(CorruptKind::JournalChecksumFeatures);
            }
            if self.has_csum_v2_or_v3() && self.checksum_type() != CHECKSUM_TYPE_CRC32C {
                return Err(FormatError::incompatible(
                    Structure::JournalSuperblock,
                    IncompatibleKind::ChecksumType(self.checksum_type()),
                ));
            }
            self.verify_checksum()?;
        }
        Ok(())
    }
}

/// Descriptor tag flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TagFlags(pub u32);

impl TagFlags {
    /// `JBD2_FLAG_ESCAPE`: the logged copy had the jbd2 magic zeroed.
    pub const ESCAPE: Self = Self(1);
    /// `JBD2_FLAG_SAME_UUID`: no UUID follows this tag.
    pub const SAME_UUID: Self = Self(2);
    /// `JBD2_FLAG_DELETED`: block deleted by this transaction.
    pub const DELETED: Self = Self(4);
    /// `JBD2_FLAG_LAST_TAG`: last tag of the descriptor.
    pub const LAST_TAG: Self = Self(8);

    /// `true` if all bits of `o` are set.
    pub fn contains(self, o: Self) -> bool {
        self.0 & o.0 == o.0
    }
}

/// One descriptor tag: the filesystem block the next logged block belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JournalTag {
    /// Byte offset of the tag in the descriptor.
    pub offset: usize,
    /// Filesystem block number (`t_blocknr` | `t_blocknr_high` << 32 with 64bit).
    pub block: u64,
    /// Flags.
    pub flags: TagFlags,
    /// Data block checksum (`t_checksum`; 16 bits with v2, 32 with v3, 0 otherwise).
    pub checksum: u32,
    /// The UUID following the tag when SAME_UUID is clear.
    pub uuid: Option<[u8; 16]>,
}

/// Checksum of a logged data block for its tag: crc32c over `be32(sequence)`
/// and the block, journal seed (truncate to 16 bits for v2 tags).
pub fn data_block_checksum(csum_seed: u32, sequence: u32, data: &[u8]) -> u32 {
    crc32c_raw(crc32c_raw(csum_seed, &sequence.to_be_bytes()), data)
}

/// Verifies a logged data block against its tag (Ok without v2/v3).
pub fn verify_data_block(
    jsb: &JournalSuperblock,
    sequence: u32,
    tag: &JournalTag,
    data: &[u8],
) -> Result<()> {
    if !jsb.has_csum_v2_or_v3() {
        return Ok(());
    }
    let mut c = data_block_checksum(jsb.csum_seed(), sequence, data);
    if jsb.has_csum_v2() {
        c &= 0xFFFF;
    }
    if c != tag.checksum {
        return Err(
            FormatError::checksum(Structure::JournalDataBlock, c, tag.checksum)
                .with_block(tag.block),
        );
    }
    Ok(())
}

/// Whether a block logged as data must be escaped: it starts with the jbd2
/// magic, which replay would take for a journal block ([`escape_block`]).
pub fn needs_escape(data: &[u8]) -> bool {
    data.len() >= 4 && read_u32be(data, 0) == JBD2_MAGIC
}

/// If `data` starts with the jbd2 magic, zeroes it (the copy written to the
/// log) and returns `true`: the tag must then carry ESCAPE.
pub fn escape_block(data: &mut [u8]) -> bool {
    if needs_escape(data) {
        write_u32be(data, 0, 0);
        true
    } else {
        false
    }
}

/// Restores the magic of an escaped block when replaying.
pub fn unescape_block(data: &mut [u8]) {
    if data.len() >= 4 {
        write_u32be(data, 0, JBD2_MAGIC);
    }
}

/// crc32c of a descriptor or revoke block with its 4-byte tail zeroed.
fn block_tail_checksum(block: &[u8], csum_seed: u32) -> u32 {
    let end = block.len().saturating_sub(BLOCK_TAIL_SIZE);
    crc32c_raw(crc32c_raw(csum_seed, &block[..end]), &[0; 4])
}

fn verify_tail(block: &[u8], jsb: &JournalSuperblock, structure: Structure) -> Result<()> {
    if !jsb.has_csum_v2_or_v3() {
        return Ok(());
    }
    let c = block_tail_checksum(block, jsb.csum_seed());
    let stored = block
        .len()
        .checked_sub(4)
        .map_or(0, |o| read_u32be(block, o));
    if c != stored {
        return Err(FormatError::checksum(structure, c, stored));
    }
    Ok(())
}

fn update_tail(block: &mut [u8], jsb: &JournalSuperblock) {
    if jsb.has_csum_v2_or_v3() {
        let c = block_tail_checksum(block, jsb.csum_seed());
        if let Some(o) = block.len().checked_sub(4) {
            write_u32be(block, o, c);
        }
    }
}

/// A descriptor block, owning its bytes, with its parsed tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorBlock {
    raw: Vec<u8>,
    sequence: u32,
    tags: Vec<JournalTag>,
}

impl DescriptorBlock {
    /// Parses a descriptor block with the journal's tag format. The tail
    /// checksum is checked separately ([`DescriptorBlock::verify_checksum`]).
    pub fn parse(block: &[u8], jsb: &JournalSuperblock) -> Result<Self> {
        let s = Structure::JournalDescriptor;
        let h = check_header(block, JournalBlockType::Descriptor, s)?;
        let tag_bytes = jsb.tag_size();
        let size = block.len().saturating_sub(jsb.block_tail_size());
        let mut tags = Vec::new();
        let mut off = HEADER_SIZE;
        while off + tag_bytes <= size {
            let (block_lo, flags, hi, checksum) = if jsb.has_csum_v3() {
                (
                    read_u32be(block, off),
                    read_u32be(block, off + 4),
                    read_u32be(block, off + 8),
                    read_u32be(block, off + 12),
                )
            } else {
                let hi = if jsb.is_64bit() {
                    read_u32be(block, off + 8)
                } else {
                    0
                };
                (
                    read_u32be(block, off),
                    u32::from(read_u16be(block, off + 6)),
                    hi,
                    u32::from(read_u16be(block, off + 4)),
                )
            };
            let number = u64::from(block_lo)
                | if jsb.is_64bit() {
                    u64::from(hi) << 32
                } else {
                    0
                };
            let flags = TagFlags(flags);
            let tag_off = off;
            off += tag_bytes;
            let uuid = if flags.contains(TagFlags::SAME_UUID) {
                None
            } else {
                if off + 16 > size {
                    return Err(FormatError::corrupt(
                        s,
                        CorruptKind::JournalTagOverrun { offset: tag_off },
                    ));
                }
                let u = crate::bytes::read_array::<16>(block, off);
                off += 16;
                Some(u)
            };
            tags.push(JournalTag {
                offset: tag_off,
                block: number,
                flags,
                checksum,
                uuid,
            });
            if flags.contains(TagFlags::LAST_TAG) {
                break;
            }
        }
        Ok(Self {
            raw: block.to_vec(),
            sequence: h.sequence,
            tags,
        })
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }
    /// Transaction id.
    pub fn sequence(&self) -> u32 {
        self.sequence
    }
    /// The tags, in log order.
    pub fn tags(&self) -> &[JournalTag] {
        &self.tags
    }
    /// Verifies the tail checksum (Ok without v2/v3).
    pub fn verify_checksum(&self, jsb: &JournalSuperblock) -> Result<()> {
        verify_tail(&self.raw, jsb, Structure::JournalDescriptor)
    }
}

/// Builds descriptor blocks tag by tag.
#[derive(Debug, Clone)]
pub struct DescriptorBuilder {
    raw: Vec<u8>,
    off: usize,
    last_tag: Option<usize>,
    tag_bytes: usize,
    limit: usize,
    v3: bool,
    v2: bool,
    bit64: bool,
    uuid: [u8; 16],
}

impl DescriptorBuilder {
    /// Starts a descriptor for transaction `sequence`.
    pub fn new(jsb: &JournalSuperblock, sequence: u32) -> Self {
        let bs = jsb.block_size() as usize;
        let mut raw = vec![0u8; bs];
        JournalHeader {
            block_type: JournalBlockType::Descriptor.code(),
            sequence,
        }
        .write(&mut raw);
        Self {
            raw,
            off: HEADER_SIZE,
            last_tag: None,
            tag_bytes: jsb.tag_size(),
            limit: bs.saturating_sub(jsb.block_tail_size()),
            v3: jsb.has_csum_v3(),
            v2: jsb.has_csum_v2(),
            bit64: jsb.is_64bit(),
            uuid: jsb.uuid(),
        }
    }

    /// Number of tags added.
    pub fn is_empty(&self) -> bool {
        self.last_tag.is_none()
    }

    /// Adds a tag for filesystem block `block` whose logged copy has checksum
    /// `data_checksum` (see [`data_block_checksum`]) and was escaped or not.
    /// Returns `Ok(false)` when the descriptor is full.
    pub fn push(&mut self, block: u64, escaped: bool, data_checksum: u32) -> Result<bool> {
        let first = self.last_tag.is_none();
        let need = self.tag_bytes + if first { 16 } else { 0 };
        if self.off + need > self.limit {
            return Ok(false);
        }
        if !self.bit64 && block > u64::from(u32::MAX) {
            return Err(FormatError::unrepresentable(
                Structure::JournalDescriptor,
                "t_blocknr",
                block,
            ));
        }
        let mut flags = if first { 0 } else { TagFlags::SAME_UUID.0 };
        if escaped {
            flags |= TagFlags::ESCAPE.0;
        }
        let o = self.off;
        write_u32be(&mut self.raw, o, block as u32);
        if self.v3 {
            write_u32be(&mut self.raw, o + 4, flags);
            write_u32be(&mut self.raw, o + 8, (block >> 32) as u32);
            write_u32be(&mut self.raw, o + 12, data_checksum);
        } else {
            write_u16be(
                &mut self.raw,
                o + 4,
                if self.v2 { data_checksum as u16 } else { 0 },
            );
            write_u16be(&mut self.raw, o + 6, flags as u16);
            if self.bit64 {
                write_u32be(&mut self.raw, o + 8, (block >> 32) as u32);
            }
        }
        self.last_tag = Some(o);
        self.off += self.tag_bytes;
        if first {
            let u = self.uuid;
            write_bytes(&mut self.raw, self.off, &u);
            self.off += 16;
        }
        Ok(true)
    }

    /// Marks the last tag and computes the tail checksum.
    pub fn finish(mut self, jsb: &JournalSuperblock) -> Vec<u8> {
        if let Some(o) = self.last_tag {
            if self.v3 {
                let f = read_u32be(&self.raw, o + 4) | TagFlags::LAST_TAG.0;
                write_u32be(&mut self.raw, o + 4, f);
            } else {
                let f = read_u16be(&self.raw, o + 6) | TagFlags::LAST_TAG.0 as u16;
                write_u16be(&mut self.raw, o + 6, f);
            }
        }
        update_tail(&mut self.raw, jsb);
        self.raw
    }
}

/// A commit block, owning its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitBlock {
    raw: Vec<u8>,
}

impl CommitBlock {
    /// Parses a commit block (header only; checksum separately).
    pub fn parse(block: &[u8]) -> Result<Self> {
        check_header(block, JournalBlockType::Commit, Structure::JournalCommit)?;
        if block.len() < 0x3C {
            return Err(FormatError::too_short(
                Structure::JournalCommit,
                0x3C,
                block.len(),
            ));
        }
        Ok(Self {
            raw: block.to_vec(),
        })
    }

    /// A commit block for `sequence` committed at (`seconds`, `nanoseconds`);
    /// call [`CommitBlock::update_checksum`] (v2/v3) or [`CommitBlock::set_v1_checksum`].
    pub fn new(block_size: usize, sequence: u32, seconds: u64, nanoseconds: u32) -> Self {
        let mut raw = vec![0u8; block_size.max(0x3C)];
        JournalHeader {
            block_type: JournalBlockType::Commit.code(),
            sequence,
        }
        .write(&mut raw);
        write_u64be(&mut raw, 0x30, seconds);
        write_u32be(&mut raw, 0x38, nanoseconds);
        Self { raw }
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }
    /// Transaction id.
    pub fn sequence(&self) -> u32 {
        read_u32be(&self.raw, 8)
    }
    /// `h_chksum_type`.
    pub fn checksum_type(&self) -> u8 {
        self.raw[0x0C]
    }
    /// `h_chksum_size`.
    pub fn checksum_size(&self) -> u8 {
        self.raw[0x0D]
    }
    /// `h_chksum[0]`.
    pub fn checksum(&self) -> u32 {
        read_u32be(&self.raw, 0x10)
    }
    /// Commit time (`h_commit_sec`, `h_commit_nsec`).
    pub fn commit_time(&self) -> (u64, u32) {
        (read_u64be(&self.raw, 0x30), read_u32be(&self.raw, 0x38))
    }

    /// crc32c of the block with `h_chksum[0]` zeroed (v2/v3).
    pub fn compute_checksum(&self, csum_seed: u32) -> u32 {
        let mut crc = crc32c_raw(csum_seed, &self.raw[..0x10]);
        crc = crc32c_raw(crc, &[0; 4]);
        crc32c_raw(crc, &self.raw[0x14..])
    }
    /// Verifies the v2/v3 checksum (Ok without v2/v3).
    pub fn verify_checksum(&self, jsb: &JournalSuperblock) -> Result<()> {
        if !jsb.has_csum_v2_or_v3() {
            return Ok(());
        }
        let c = self.compute_checksum(jsb.csum_seed());
        if c != self.checksum() {
            return Err(FormatError::checksum(
                Structure::JournalCommit,
                c,
                self.checksum(),
            ));
        }
        Ok(())
    }
    /// Stores the v2/v3 checksum.
    pub fn update_checksum(&mut self, jsb: &JournalSuperblock) {
        if jsb.has_csum_v2_or_v3() {
            let c = self.compute_checksum(jsb.csum_seed());
            write_u32be(&mut self.raw, 0x10, c);
        }
    }
    /// Stores a checksum-v1 value (crc32_be of descriptor and data blocks, see
    /// [`crate::checksum::crc32_be`]) with type crc32 and size 4.
    pub fn set_v1_checksum(&mut self, crc: u32) {
        self.raw[0x0C] = CHECKSUM_TYPE_CRC32;
        self.raw[0x0D] = 4;
        write_u32be(&mut self.raw, 0x10, crc);
    }
}

/// A revoke block, owning its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeBlock {
    raw: Vec<u8>,
    blocks: Vec<u64>,
}

/// Size of the revoke header (journal header + `r_count`).
pub const REVOKE_HEADER_SIZE: usize = 16;

impl RevokeBlock {
    /// Parses a revoke block: `r_count` (bytes used, header included) must fit
    /// the block minus the tail; records are 8 bytes with 64bit, else 4.
    pub fn parse(block: &[u8], jsb: &JournalSuperblock) -> Result<Self> {
        let s = Structure::JournalRevoke;
        check_header(block, JournalBlockType::Revoke, s)?;
        if block.len() < REVOKE_HEADER_SIZE {
            return Err(FormatError::too_short(s, REVOKE_HEADER_SIZE, block.len()));
        }
        let count = read_u32be(block, 12);
        let max = block.len().saturating_sub(jsb.block_tail_size());
        if (count as usize) > max || (count as usize) < REVOKE_HEADER_SIZE {
            return Err(FormatError::corrupt(
                s,
                CorruptKind::JournalRevokeCount(count),
            ));
        }
        let rs = if jsb.is_64bit() { 8 } else { 4 };
        let mut off = REVOKE_HEADER_SIZE;
        let mut blocks = Vec::new();
        while off + rs <= count as usize {
            blocks.push(if rs == 8 {
                read_u64be(block, off)
            } else {
                u64::from(read_u32be(block, off))
            });
            off += rs;
        }
        Ok(Self {
            raw: block.to_vec(),
            blocks,
        })
    }

    /// Builds a revoke block for `sequence` with as many of `blocks` as fit;
    /// returns the block and how many were taken. The tail checksum is set.
    pub fn build(jsb: &JournalSuperblock, sequence: u32, blocks: &[u64]) -> Result<(Self, usize)> {
        let bs = jsb.block_size() as usize;
        let rs = if jsb.is_64bit() { 8 } else { 4 };
        let room = (bs
            .saturating_sub(jsb.block_tail_size())
            .saturating_sub(REVOKE_HEADER_SIZE))
            / rs;
        let n = blocks.len().min(room);
        let mut raw = vec![0u8; bs];
        JournalHeader {
            block_type: JournalBlockType::Revoke.code(),
            sequence,
        }
        .write(&mut raw);
        let mut off = REVOKE_HEADER_SIZE;
        for &b in &blocks[..n] {
            if rs == 8 {
                write_u64be(&mut raw, off, b);
            } else {
                let b32 = u32::try_from(b).map_err(|_| {
                    FormatError::unrepresentable(Structure::JournalRevoke, "revoke record", b)
                })?;
                write_u32be(&mut raw, off, b32);
            }
            off += rs;
        }
        write_u32be(&mut raw, 12, off as u32);
        update_tail(&mut raw, jsb);
        Ok((
            Self {
                raw,
                blocks: blocks[..n].to_vec(),
            },
            n,
        ))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }
    /// Transaction id.
    pub fn sequence(&self) -> u32 {
        read_u32be(&self.raw, 8)
    }
    /// `r_count`.
    pub fn count_bytes(&self) -> u32 {
        read_u32be(&self.raw, 12)
    }
    /// Revoked filesystem blocks.
    pub fn blocks(&self) -> &[u64] {
        &self.blocks
    }
    /// Verifies the tail checksum (Ok without v2/v3).
    pub fn verify_checksum(&self, jsb: &JournalSuperblock) -> Result<()> {
        verify_tail(&self.raw, jsb, Structure::JournalRevoke)
    }
}

// ---- ext4 fast commits (the area after the regular log) ----

/// Tag of the record that starts a fast commit (`EXT4_FC_TAG_HEAD`).
pub const FC_TAG_HEAD: u16 = 9;

/// Size of a fast-commit record header (`struct ext4_fc_tl`: le16 tag, le16 length).
pub const FC_TL_SIZE: usize = 4;

/// Size of the head record's value (`struct ext4_fc_head`: le32 features, le32 tid).
pub const FC_HEAD_SIZE: usize = 8;

/// The head record a fast commit starts with (`struct ext4_fc_head`). Unlike
/// jbd2's own blocks, fast-commit records are little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FastCommitHead {
    /// `fc_features`.
    pub features: u32,
    /// `fc_tid`: the transaction the fast commit follows.
    pub tid: u32,
}

impl FastCommitHead {
    /// Reads the head record at the start of the first fast-commit block:
    /// tag [`FC_TAG_HEAD`] with a value of at least [`FC_HEAD_SIZE`] bytes.
    /// `None` when the block does not start with one (no fast commit there).
    pub fn read(block: &[u8]) -> Option<Self> {
        if block.len() < FC_TL_SIZE + FC_HEAD_SIZE
            || crate::bytes::read_u16le(block, 0) != FC_TAG_HEAD
            || usize::from(crate::bytes::read_u16le(block, 2)) < FC_HEAD_SIZE
        {
            return None;
        }
        Some(Self {
            features: crate::bytes::read_u32le(block, FC_TL_SIZE),
            tid: crate::bytes::read_u32le(block, FC_TL_SIZE + 4),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jsb(incompat: u32) -> JournalSuperblock {
        let mut s = JournalSuperblock::new(1024, 1024);
        s.set_feature_incompat(incompat);
        s.set_uuid([7; 16]);
        if incompat & (features::INCOMPAT_CSUM_V2 | features::INCOMPAT_CSUM_V3) != 0 {
            s.set_checksum_type(CHECKSUM_TYPE_CRC32C);
        }
        s.update_checksum();
        JournalSuperblock::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn tag_sizes() {
        use features::*;
        assert_eq!(jsb(0).tag_size(), 8);
        assert_eq!(jsb(INCOMPAT_64BIT).tag_size(), 12);
        assert_eq!(jsb(INCOMPAT_CSUM_V2).tag_size(), 10);
        assert_eq!(jsb(INCOMPAT_CSUM_V2 | INCOMPAT_64BIT).tag_size(), 14);
        assert_eq!(jsb(INCOMPAT_CSUM_V3).tag_size(), 16);
    }

    #[test]
    fn descriptor_round_trip_all_formats() {
        use features::*;
        for inc in [
            0,
            INCOMPAT_64BIT,
            INCOMPAT_CSUM_V2,
            INCOMPAT_CSUM_V2 | INCOMPAT_64BIT,
            INCOMPAT_CSUM_V3 | INCOMPAT_64BIT,
            INCOMPAT_CSUM_V3,
        ] {
            let j = jsb(inc | INCOMPAT_REVOKE);
            let mut b = DescriptorBuilder::new(&j, 42);
            let mut n = 0u64;
            let big = if j.is_64bit() { 1u64 << 33 } else { 0 };
            while b
                .push(100 + n + big, n == 3, 0xABCD_1234 ^ n as u32)
                .unwrap()
            {
                n += 1;
            }
            assert_eq!(n as usize, j.tags_per_descriptor(), "incompat {inc:#x}");
            let bytes = b.finish(&j);
            let d = DescriptorBlock::parse(&bytes, &j).unwrap();
            d.verify_checksum(&j).unwrap();
            assert_eq!(d.tags().len() as u64, n, "incompat {inc:#x}");
            assert_eq!(d.tags()[0].uuid, Some([7; 16]));
            assert!(d.tags().last().unwrap().flags.contains(TagFlags::LAST_TAG));
            assert!(d.tags()[3].flags.contains(TagFlags::ESCAPE));
            assert_eq!(d.tags()[5].block, 105 + big);
            let expect_csum = if j.has_csum_v3() {
                0xABCD_1234 ^ 5
            } else if j.has_csum_v2() {
                (0xABCD_1234u32 ^ 5) & 0xFFFF
            } else {
                0
            };
            assert_eq!(d.tags()[5].checksum, expect_csum);
            let (r, taken) = RevokeBlock::build(&j, 42, &[1, 2, 3, 4]).unwrap();
            assert_eq!(taken, 4);
            let p = RevokeBlock::parse(r.as_bytes(), &j).unwrap();
            p.verify_checksum(&j).unwrap();
            assert_eq!(p.blocks(), &[1, 2, 3, 4]);
            let mut c = CommitBlock::new(1024, 42, 1_700_000_000, 5);
            c.update_checksum(&j);
            let p = CommitBlock::parse(c.as_bytes()).unwrap();
            p.verify_checksum(&j).unwrap();
            assert_eq!(p.commit_time(), (1_700_000_000, 5));
        }
    }

    #[test]
    fn fast_commit_head() {
        let mut b = vec![0u8; 1024];
        assert_eq!(FastCommitHead::read(&b), None);
        b[0..2].copy_from_slice(&FC_TAG_HEAD.to_le_bytes());
        b[2..4].copy_from_slice(&8u16.to_le_bytes());
        b[4..8].copy_from_slice(&3u32.to_le_bytes());
        b[8..12].copy_from_slice(&0x0102_0304u32.to_le_bytes());
        assert_eq!(
            FastCommitHead::read(&b),
            Some(FastCommitHead {
                features: 3,
                tid: 0x0102_0304
            })
        );
        assert_eq!(FastCommitHead::read(&b[..11]), None);
        b[2..4].copy_from_slice(&7u16.to_le_bytes());
        assert_eq!(FastCommitHead::read(&b), None);
        b[2..4].copy_from_slice(&8u16.to_le_bytes());
        b[0] = 8;
        assert_eq!(FastCommitHead::read(&b), None);
    }

    #[test]
    fn escape_round_trip() {
        let mut b = vec![0u8; 1024];
        assert!(!needs_escape(&b));
        b[..4].copy_from_slice(&[0xC0, 0x3B, 0x39, 0x98]);
        b[4] = 7;
        assert!(needs_escape(&b));
        assert!(!needs_escape(&b[..3]));
        let orig = b.clone();
        assert!(escape_block(&mut b));
        assert_eq!(b[..4], [0; 4]);
        assert!(!escape_block(&mut b));
        unescape_block(&mut b);
        assert_eq!(b, orig);
    }
}
