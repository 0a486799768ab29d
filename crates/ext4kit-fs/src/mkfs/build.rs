//! Lays out and builds the metadata of a new filesystem: which blocks the
//! root directory, `lost+found` and the journal get (the libext2fs allocators'
//! choices), then the bytes of the superblocks, descriptor tables, bitmaps,
//! inodes, directory blocks and journal, as a [`WritePlan`].
//!
//! Facts followed (not code): e2fsprogs' `misc/mke2fs.c` (`create_root_dir`,
//! `create_lost_and_found`, `reserve_inodes`, `write_reserved_inodes`,
//! `write_inode_tables`), `lib/ext2fs/mkdir.c`, `expanddir.c`,
//! `mkjournal.c` (`get_midpoint_journal_block`, `write_journal_inode`),
//! `fallocate.c`, `extent.c` (`extent_node_split`), `closefs.c`
//! (`ext2fs_flush2`: backup superblocks without `EXT2_VALID_FS`, numbered in
//! `s_block_group_nr`) and `initialize.c` (`BLOCK_UNINIT` / `INODE_UNINIT`).

use std::collections::BTreeMap;
use std::sync::Arc;

use ext4kit_format::HashVersion;
use ext4kit_format::bitmap;
use ext4kit_format::dir::{DirBlock, DirBlockOptions};
use ext4kit_format::extent::{Extent, ExtentIndex, ExtentNode, MAX_INIT_LEN, NodeLocation};
use ext4kit_format::features::{CompatFeatures, IncompatFeatures, RoCompatFeatures};
use ext4kit_format::group_desc::{GroupDesc, GroupFlags};
use ext4kit_format::inode::{FileType, Inode, InodeFlags, Timestamp, ino as special};
use ext4kit_format::journal::JournalSuperblock;
use ext4kit_format::superblock::{
    CHECKSUM_TYPE_CRC32C, JNL_BLOCKS_LEN, REV_DYNAMIC, SUPER_MAGIC, Superblock, creator_os,
    default_mount_opts, errors_behaviour, flags, state,
};

use super::blockset::BlockSet;
use super::geometry::{
    DESC_SIZE, FIRST_INO, GROUPS_PER_FLEX, Geometry, LOG_GROUPS_PER_FLEX, super_groups,
};
use super::tables::{GroupTables, allocate_tables};
use super::writer::WritePlan;
use super::{MkfsError, MkfsReport, Resolved};

/// `s_jnl_backup_type`: `s_jnl_blocks` holds the journal inode's block map.
const JNL_BACKUP_BLOCKS: u8 = 1;
/// `i_extra_isize` of new inodes and `s_{min,want}_extra_isize`.
const EXTRA_ISIZE: u16 = 32;
/// Journal inode.
const JOURNAL_INO: u32 = special::JOURNAL;
/// Root directory inode.
const ROOT_INO: u32 = special::ROOT;
/// `lost+found` inode (the first non-reserved one).
const LPF_INO: u32 = FIRST_INO;

/// Where the new filesystem's blocks go.
pub(crate) struct Layout {
    used: BlockSet,
    tables: Vec<GroupTables>,
    /// Used blocks once the tables are placed (superblocks, descriptors, bitmaps, inode tables).
    table_blocks: u64,
    root: Vec<(u64, u64)>,
    lpf: Vec<(u64, u64)>,
    journal: Vec<(u64, u64)>,
    journal_tree_block: Option<u64>,
}

fn no_space(what: &'static str) -> MkfsError {
    MkfsError::NoSpace { what }
}

/// Adds one block to a list of runs.
fn push_block(runs: &mut Vec<(u64, u64)>, b: u64) {
    match runs.last_mut() {
        Some((s, l)) if *s + *l == b && *l < u64::from(MAX_INIT_LEN) => *l += 1,
        _ => runs.push((b, 1)),
    }
}

/// Number of blocks `mke2fs` gives `lost+found`: it grows the directory one
/// block at a time (at most 11 times) until it holds 16 KiB and two blocks.
pub(crate) fn lost_found_blocks(block_size: u32) -> u32 {
    let mut size = 0u32;
    let mut blocks = 1;
    for _ in 1..12 {
        size += block_size;
        if size >= 16 * 1024 && size >= 2 * block_size {
            break;
        }
        blocks += 1;
    }
    blocks
}

/// The group `get_midpoint_journal_block` picks: around the middle of the
/// filesystem, the one with the most free blocks among a few neighbours.
fn journal_goal(geo: &Geometry, used: &BlockSet) -> u64 {
    let free = |g: u32| {
        let first = geo.group_first_block(g);
        let end = geo.group_last_block(g) + 1;
        (end - first) - used.count_used(first, end)
    };
    let count = geo.group_count;
    let mut group = geo.group_of_block((geo.blocks_count - u64::from(geo.first_data_block)) / 2);
    let start;
    if group > GROUPS_PER_FLEX {
        group &= !(GROUPS_PER_FLEX - 1);
        while group < count && free(group) == 0 {
            group += 1;
        }
        if group == count {
            group = 0;
        }
        start = group;
    } else {
        start = group.saturating_sub(1);
    }
    let end = if group + 1 < count { group + 1 } else { group };
    let mut best = start;
    for g in start + 1..=end {
        if free(g) > free(best) {
            best = g;
        }
    }
    geo.group_first_block(best)
}

/// `ext2fs_new_block2` + marking: one block at or after `goal`.
fn alloc(used: &mut BlockSet, goal: u64, what: &'static str) -> Result<u64, MkfsError> {
    let b = used.new_block(goal).ok_or_else(|| no_space(what))?;
    if used.insert(b, 1) {
        Ok(b)
    } else {
        Err(MkfsError::Internal(format!("block {b} allocated twice")))
    }
}

/// Places everything: tables, root and `lost+found` blocks, the journal.
pub(crate) fn lay_out(geo: &Geometry) -> Result<Layout, MkfsError> {
    let mut used = BlockSet::new(u64::from(geo.first_data_block), geo.blocks_count);
    for g in super_groups(geo.group_count) {
        if !used.insert(geo.group_first_block(g), 1 + u64::from(geo.gdt_blocks)) {
            return Err(MkfsError::Internal(format!(
                "superblock copy of group {g} overlaps"
            )));
        }
    }
    let tables = allocate_tables(geo, &mut used)?;
    let table_blocks = used.total_used();

    // Root: one block, the first free one of its (flex) group.
    let flex_start = |ino: u32| {
        let g = (ino - 1) / geo.inodes_per_group;
        geo.group_first_block(g - g % GROUPS_PER_FLEX)
    };
    let root_block = alloc(&mut used, flex_start(ROOT_INO), "the root directory")?;
    let mut root = Vec::new();
    push_block(&mut root, root_block);

    // lost+found: first block like root's, then each next one after the last.
    let mut lpf = Vec::new();
    let mut last = alloc(&mut used, flex_start(LPF_INO), "lost+found")?;
    push_block(&mut lpf, last);
    for _ in 1..lost_found_blocks(geo.block_size) {
        last = alloc(&mut used, last, "lost+found")?;
        push_block(&mut lpf, last);
    }

    // Journal: free runs from the goal, at most 32768 blocks per extent; a
    // fifth extent splits the in-inode root into a tree block, placed as near
    // before the first extent as possible.
    let mut goal = journal_goal(geo, &used);
    let mut left = u64::from(geo.journal_blocks);
    let mut journal: Vec<(u64, u64)> = Vec::new();
    let mut journal_tree_block = None;
    while left > 0 {
        let (start, len) = used
            .new_range(goal, left.min(u64::from(MAX_INIT_LEN)))
            .ok_or_else(|| no_space("the journal"))?;
        if !used.insert(start, len) {
            return Err(MkfsError::Internal(format!(
                "journal run at {start} overlaps"
            )));
        }
        journal.push((start, len));
        if journal.len() == 5 && journal_tree_block.is_none() {
            let g = journal[0].0.saturating_sub(1);
            let g = if g == 0 { flex_start(JOURNAL_INO) } else { g };
            journal_tree_block = Some(alloc(&mut used, g, "the journal's extent tree")?);
        }
        left -= len;
        goal = start + len;
        if goal >= geo.blocks_count {
            goal = u64::from(geo.first_data_block);
        }
    }
    Ok(Layout {
        used,
        tables,
        table_blocks,
        root,
        lpf,
        journal,
        journal_tree_block,
    })
}

/// The built image: everything but the primary superblock, which is written last.
pub(crate) struct Image {
    pub plan: WritePlan,
    pub primary_superblock: Vec<u8>,
    pub report: MkfsReport,
}

fn extents_of(runs: &[(u64, u64)]) -> Result<Vec<Extent>, MkfsError> {
    let mut logical = 0u64;
    let mut v = Vec::with_capacity(runs.len());
    for &(start, len) in runs {
        let (Ok(lb), Ok(l)) = (u32::try_from(logical), u32::try_from(len)) else {
            return Err(MkfsError::Internal("extent out of range".into()));
        };
        v.push(Extent {
            logical_block: lb,
            len: l,
            physical_block: start,
            unwritten: false,
        });
        logical += len;
    }
    Ok(v)
}

/// A new inode with `mode`, `links`, times all `t`, i_extra_isize 32.
fn new_inode(isz: u16, mode: u16, links: u16, size: u64, t: Timestamp) -> Result<Inode, MkfsError> {
    let mut i = Inode::new(usize::from(isz), EXTRA_ISIZE)?;
    i.set_mode(mode);
    i.set_links_count(links);
    i.set_size(size);
    i.set_access_time(t);
    i.set_change_time(t);
    i.set_modification_time(t);
    i.set_creation_time(t);
    Ok(i)
}

/// Sets `EXTENTS` and an in-inode extent root mapping `runs` (≤ 4 runs), or
/// an index root pointing at `tree_block` holding them.
fn set_extents(
    inode: &mut Inode,
    runs: &[(u64, u64)],
    tree_block: Option<u64>,
    geo: &Geometry,
    seed: u32,
    ino: u32,
) -> Result<Option<Vec<u8>>, MkfsError> {
    let extents = extents_of(runs)?;
    let blocks = runs.iter().map(|r| r.1).sum::<u64>() + u64::from(tree_block.is_some());
    let mut leaf_block = None;
    let root = match tree_block {
        None => {
            if extents.len() > 4 {
                return Err(MkfsError::Internal(format!(
                    "inode {ino} needs {} extents",
                    extents.len()
                )));
            }
            ExtentNode::build_leaf(60, NodeLocation::Inode, &extents)?
        }
        Some(tb) => {
            let mut leaf =
                ExtentNode::build_leaf(geo.block_size as usize, NodeLocation::Block, &extents)?;
            leaf.update_checksum(seed, ino, 0);
            leaf_block = Some(leaf.into_bytes());
            ExtentNode::build_index(
                60,
                NodeLocation::Inode,
                1,
                &[ExtentIndex {
                    logical_block: 0,
                    child_block: tb,
                    unused: 0,
                }],
            )?
        }
    };
    inode.block_area_mut().copy_from_slice(root.as_bytes());
    if tree_block.is_some() {
        // When libext2fs moves a full in-inode root into a tree block it leaves the old
        // entries 2..4 in the root's unused slots (beyond eh_entries, so every reader ignores
        // them). Keep them too, so that the image matches mkfs.ext4's byte for byte.
        for (k, e) in extents.iter().enumerate().take(4).skip(1) {
            let at = 12 + 12 * k;
            e.encode(&mut inode.block_area_mut()[at..at + 12])?;
        }
    }
    let mut f = inode.flags();
    f.insert(InodeFlags::EXTENTS);
    inode.set_flags(f);
    inode.set_block_count_512(
        blocks * u64::from(geo.block_size / 512),
        true,
        geo.block_size.trailing_zeros(),
    )?;
    Ok(leaf_block)
}

fn byte_offset(geo: &Geometry, block: u64) -> u64 {
    block * u64::from(geo.block_size)
}

/// The superblock of the new filesystem, free counts and `s_jnl_blocks` still unset.
fn new_superblock(geo: &Geometry, p: &Resolved) -> Superblock {
    let mut sb = Superblock::new_zeroed();
    sb.set_magic(SUPER_MAGIC);
    sb.set_rev_level(REV_DYNAMIC);
    sb.set_feature_compat(
        CompatFeatures::HAS_JOURNAL | CompatFeatures::EXT_ATTR | CompatFeatures::DIR_INDEX,
    );
    sb.set_feature_incompat(
        IncompatFeatures::FILETYPE
            | IncompatFeatures::EXTENTS
            | IncompatFeatures::BIT64
            | IncompatFeatures::FLEX_BG,
    );
    sb.set_feature_ro_compat(
        RoCompatFeatures::SPARSE_SUPER
            | RoCompatFeatures::LARGE_FILE
            | RoCompatFeatures::HUGE_FILE
            | RoCompatFeatures::DIR_NLINK
            | RoCompatFeatures::EXTRA_ISIZE
            | RoCompatFeatures::METADATA_CSUM,
    );
    sb.set_inodes_count(geo.inodes_count);
    sb.set_blocks_count(geo.blocks_count);
    sb.set_reserved_blocks_count(geo.reserved_blocks);
    sb.set_first_data_block(geo.first_data_block);
    sb.set_log_block_size(geo.log_block_size);
    sb.set_log_cluster_size(geo.log_block_size);
    sb.set_blocks_per_group(geo.blocks_per_group);
    sb.set_clusters_per_group(geo.blocks_per_group);
    sb.set_inodes_per_group(geo.inodes_per_group);
    sb.set_max_mount_count(-1);
    sb.set_state(state::VALID);
    sb.set_errors_behaviour(errors_behaviour::CONTINUE);
    sb.set_creator_os(creator_os::LINUX);
    sb.set_first_ino(FIRST_INO);
    sb.set_inode_size(geo.inode_size);
    sb.set_uuid(p.uuid);
    sb.set_volume_name(p.label);
    sb.set_journal_inum(JOURNAL_INO);
    // s_hash_seed holds the seed's raw bytes (four le32 words).
    sb.set_hash_seed_bytes(p.hash_seed);
    sb.set_def_hash_version(HashVersion::HalfMd4.disk_code());
    sb.set_jnl_backup_type(JNL_BACKUP_BLOCKS);
    sb.set_desc_size(DESC_SIZE as u16);
    sb.set_default_mount_opts(default_mount_opts::XATTR_USER | default_mount_opts::ACL);
    sb.set_min_extra_isize(EXTRA_ISIZE);
    sb.set_want_extra_isize(EXTRA_ISIZE);
    sb.set_flags(flags::SIGNED_HASH);
    sb.set_log_groups_per_flex(LOG_GROUPS_PER_FLEX);
    sb.set_checksum_type(CHECKSUM_TYPE_CRC32C);
    sb.set_mkfs_time(p.time);
    sb.set_last_check_time(p.time);
    sb.set_write_time(p.time);
    sb
}

/// Inodes 1..=11 as they go to disk, and the journal's extent tree block.
struct SpecialInodes {
    /// Inode table block → its bytes, for the blocks holding inodes 1..=11
    /// (they span groups when groups hold fewer than 11 inodes).
    table_blocks: BTreeMap<u64, Vec<u8>>,
    /// `s_jnl_blocks`: the journal inode's `i_block`, then `i_size_high`, `i_size`.
    jnl_blocks: [u32; JNL_BLOCKS_LEN],
    /// The journal's extent leaf, when it does not fit in the inode.
    journal_leaf: Option<Vec<u8>>,
}

fn special_inodes(
    geo: &Geometry,
    lay: &Layout,
    seed: u32,
    t: Timestamp,
) -> Result<SpecialInodes, MkfsError> {
    let bs64 = u64::from(geo.block_size);
    let lpf_blocks: u64 = lay.lpf.iter().map(|r| r.1).sum();
    let mut root = new_inode(
        geo.inode_size,
        FileType::Directory.mode_bits() | 0o755,
        3,
        bs64,
        t,
    )?;
    set_extents(&mut root, &lay.root, None, geo, seed, ROOT_INO)?;
    let mut lpf = new_inode(
        geo.inode_size,
        FileType::Directory.mode_bits() | 0o700,
        2,
        lpf_blocks * bs64,
        t,
    )?;
    set_extents(&mut lpf, &lay.lpf, None, geo, seed, LPF_INO)?;
    let journal_bytes = u64::from(geo.journal_blocks) * bs64;
    let mut journal = new_inode(
        geo.inode_size,
        FileType::Regular.mode_bits() | 0o600,
        1,
        journal_bytes,
        t,
    )?;
    let journal_leaf = set_extents(
        &mut journal,
        &lay.journal,
        lay.journal_tree_block,
        geo,
        seed,
        JOURNAL_INO,
    )?;
    let mut jnl_blocks = [0u32; JNL_BLOCKS_LEN];
    for (i, w) in jnl_blocks.iter_mut().take(15).enumerate() {
        *w = journal.block_word(i);
    }
    jnl_blocks[15] = (journal_bytes >> 32) as u32;
    jnl_blocks[16] = journal_bytes as u32;

    let isz = u64::from(geo.inode_size);
    let ipg = geo.inodes_per_group;
    let mut table_blocks = BTreeMap::new();
    for ino in 1..=FIRST_INO {
        let mut inode = match ino {
            ROOT_INO => root.clone(),
            LPF_INO => lpf.clone(),
            JOURNAL_INO => journal.clone(),
            _ => {
                // Reserved inodes are zero but for a valid checksum; the bad
                // blocks inode (1) has its times, as ext2fs_update_bb_inode writes them.
                let mut i = Inode::new(usize::from(geo.inode_size), 0)?;
                if ino == special::BAD {
                    i.set_access_time(t);
                    i.set_change_time(t);
                    i.set_modification_time(t);
                }
                i
            }
        };
        inode.update_checksum(seed, ino);
        let tables = lay
            .tables
            .get(((ino - 1) / ipg) as usize)
            .ok_or_else(|| MkfsError::Internal(format!("no group for inode {ino}")))?;
        let at = u64::from((ino - 1) % ipg) * isz;
        let buf = table_blocks
            .entry(tables.inode_table + at / bs64)
            .or_insert_with(|| vec![0u8; geo.block_size as usize]);
        let off = (at % bs64) as usize;
        buf[off..off + usize::from(geo.inode_size)].copy_from_slice(inode.as_bytes());
    }
    Ok(SpecialInodes {
        table_blocks,
        jnl_blocks,
        journal_leaf,
    })
}

/// The root directory block and the `lost+found` blocks.
fn write_directories(
    geo: &Geometry,
    lay: &Layout,
    seed: u32,
    plan: &mut WritePlan,
) -> Result<(), MkfsError> {
    let bs = geo.block_size as usize;
    let opts = DirBlockOptions::new(geo.block_size, true);
    let mut root = DirBlock::new_dir(bs, opts, ROOT_INO, ROOT_INO, true)?;
    if !root.add_entry(b"lost+found", LPF_INO, FileType::Directory.dirent_code())? {
        return Err(MkfsError::Internal(
            "lost+found does not fit the root block".into(),
        ));
    }
    root.update_checksum(seed, ROOT_INO, 0);
    let root_block = lay
        .root
        .first()
        .ok_or_else(|| MkfsError::Internal("root has no block".into()))?
        .0;
    plan.data(byte_offset(geo, root_block), root.into_bytes());
    let lpf_blocks = lay.lpf.iter().flat_map(|&(start, len)| start..start + len);
    for (i, b) in lpf_blocks.enumerate() {
        let mut blk = if i == 0 {
            DirBlock::new_dir(bs, opts, LPF_INO, ROOT_INO, true)?
        } else {
            DirBlock::new_empty(bs, opts)?
        };
        blk.update_checksum(seed, LPF_INO, 0);
        plan.data(byte_offset(geo, b), blk.into_bytes());
    }
    Ok(())
}

/// The journal superblock, the zeroed log, the extent tree block.
fn write_journal(
    geo: &Geometry,
    lay: &Layout,
    p: &Resolved,
    leaf: Option<Vec<u8>>,
    plan: &mut WritePlan,
) -> Result<(), MkfsError> {
    let mut jsb = JournalSuperblock::new(geo.block_size, geo.journal_blocks);
    jsb.set_uuid(p.uuid);
    jsb.update_checksum();
    let mut first = vec![0u8; geo.block_size as usize];
    first[..jsb.as_bytes().len()].copy_from_slice(jsb.as_bytes());
    let start = lay
        .journal
        .first()
        .ok_or_else(|| MkfsError::Internal("empty journal".into()))?
        .0;
    plan.data(byte_offset(geo, start), first);
    if !p.assume_zeroed {
        for &(start, len) in &lay.journal {
            plan.zero(byte_offset(geo, start), len * u64::from(geo.block_size));
        }
    }
    if let (Some(tb), Some(leaf)) = (lay.journal_tree_block, leaf) {
        plan.data(byte_offset(geo, tb), leaf);
    }
    Ok(())
}

/// The descriptor table, with the totals it adds up to.
struct Groups {
    gdt: Vec<u8>,
    free_blocks: u64,
    free_inodes: u32,
}

/// Builds every group descriptor, writes the bitmaps of initialised groups
/// and zeroes inode tables as the options ask.
fn write_groups(
    geo: &Geometry,
    lay: &Layout,
    p: &Resolved,
    sb: &Superblock,
    plan: &mut WritePlan,
) -> Result<Groups, MkfsError> {
    let bs = geo.block_size as usize;
    let bs64 = u64::from(geo.block_size);
    let ipg = geo.inodes_per_group;
    let internal = |what: &str| MkfsError::Internal(what.to_string());
    // Inodes 1..=FIRST_INO are the used ones.
    let used_inodes = |g: u32| -> u32 {
        let first = u64::from(g) * u64::from(ipg) + 1;
        let last = (first + u64::from(ipg) - 1).min(u64::from(FIRST_INO));
        if first > last {
            0
        } else {
            (last - first + 1) as u32
        }
    };
    let sgroups = super_groups(geo.group_count);
    let mut out = Groups {
        gdt: vec![0u8; geo.gdt_blocks as usize * bs],
        free_blocks: 0,
        free_inodes: 0,
    };
    for g in 0..geo.group_count {
        let tb = *lay
            .tables
            .get(g as usize)
            .ok_or_else(|| internal("group tables"))?;
        let first = geo.group_first_block(g);
        let end = geo.group_last_block(g) + 1;
        let used_blocks = lay.used.count_used(first, end);
        let free_blocks = (end - first) - used_blocks;
        let inodes_used = used_inodes(g);
        let free_inodes = ipg - inodes_used;
        out.free_blocks += free_blocks;
        out.free_inodes = out
            .free_inodes
            .checked_add(free_inodes)
            .ok_or_else(|| internal("free inodes"))?;

        let mut d = GroupDesc::new_zeroed(DESC_SIZE as usize);
        d.set_block_bitmap(tb.block_bitmap)?;
        d.set_inode_bitmap(tb.inode_bitmap)?;
        d.set_inode_table(tb.inode_table)?;
        d.set_free_blocks_count(u32::try_from(free_blocks).map_err(|_| internal("free blocks"))?)?;
        d.set_free_inodes_count(free_inodes)?;
        let dirs = [ROOT_INO, LPF_INO]
            .iter()
            .filter(|&&i| (i - 1) / ipg == g)
            .count();
        d.set_used_dirs_count(dirs as u32)?;
        d.set_itable_unused(free_inodes)?;

        // A group whose only used blocks are its superblock backup is left
        // for the kernel to initialise (the last group never is: its bitmap
        // needs padding).
        let base_meta = if sgroups.binary_search(&g).is_ok() {
            1 + u64::from(geo.gdt_blocks)
        } else {
            0
        };
        let mut fl = GroupFlags::default();
        if g + 1 != geo.group_count && used_blocks == base_meta {
            fl.insert(GroupFlags::BLOCK_UNINIT);
        } else {
            let mut bm = vec![0u8; bs];
            for (s, e) in lay.used.used_runs(first, end) {
                bitmap::set_range(&mut bm, (s - first) as usize, (e - s) as usize);
            }
            bitmap::mark_padding(&mut bm, (end - first) as usize);
            d.set_block_bitmap_checksum(sb, &bm);
            plan.data(byte_offset(geo, tb.block_bitmap), bm);
        }
        if inodes_used == 0 {
            fl.insert(GroupFlags::INODE_UNINIT);
        } else {
            let mut im = vec![0u8; bs];
            bitmap::set_range(&mut im, 0, inodes_used as usize);
            bitmap::mark_padding(&mut im, ipg as usize);
            d.set_inode_bitmap_checksum(sb, &im);
            plan.data(byte_offset(geo, tb.inode_bitmap), im);
        }
        if p.assume_zeroed || !p.lazy_itable_init {
            fl.insert(GroupFlags::ITABLE_ZEROED);
        }
        d.set_flags(fl);
        d.update_checksum(sb, g);
        let off = g as usize * DESC_SIZE as usize;
        out.gdt[off..off + DESC_SIZE as usize].copy_from_slice(d.as_bytes());

        // Zero the used part of the inode table (mke2fs's lazy init), or all of it.
        if !p.assume_zeroed {
            let blocks = if p.lazy_itable_init {
                (u64::from(inodes_used) * u64::from(geo.inode_size)).div_ceil(bs64)
            } else {
                u64::from(geo.inode_table_blocks)
            };
            plan.zero(byte_offset(geo, tb.inode_table), blocks * bs64);
        }
    }
    Ok(out)
}

/// Builds every structure and the write plan.
pub(crate) fn build(geo: &Geometry, lay: &Layout, p: &Resolved) -> Result<Image, MkfsError> {
    let bs64 = u64::from(geo.block_size);
    let t = Timestamp {
        seconds: p.time,
        nanoseconds: 0,
    };
    let mut plan = WritePlan::default();
    let mut sb = new_superblock(geo, p);
    let seed = sb.csum_seed();

    let special = special_inodes(geo, lay, seed, t)?;
    sb.set_jnl_blocks(special.jnl_blocks);
    write_directories(geo, lay, seed, &mut plan)?;
    write_journal(geo, lay, p, special.journal_leaf, &mut plan)?;
    let groups = write_groups(geo, lay, p, &sb, &mut plan)?;
    for (block, bytes) in special.table_blocks {
        plan.data(byte_offset(geo, block), bytes);
    }

    // Zeroing mke2fs does besides the tables: the old superblock area
    // (bytes 1024..4096) and the last 64..128 KiB of the filesystem.
    if !p.assume_zeroed {
        plan.zero(1024, 3072);
        let rsv = 65536 / bs64;
        let mut start = geo.blocks_count & !(rsv - 1);
        if start > rsv {
            start -= rsv;
        }
        if start > 0 {
            plan.zero(byte_offset(geo, start), (geo.blocks_count - start) * bs64);
        }
    }

    // Descriptor table copies, then the superblock backups.
    let sgroups = super_groups(geo.group_count);
    let gdt = Arc::new(groups.gdt);
    for &g in &sgroups {
        let at = byte_offset(geo, geo.group_first_block(g) + 1);
        plan.shared(at, Arc::clone(&gdt), 0, gdt.len());
    }
    let overhead =
        lay.table_blocks + u64::from(geo.journal_blocks) + u64::from(geo.first_data_block);
    sb.set_free_blocks_count(groups.free_blocks);
    sb.set_free_inodes_count(groups.free_inodes);
    sb.set_overhead_clusters(u32::try_from(overhead).unwrap_or(0));
    // Lifetime writes: the metadata this mkfs writes, in KiB (the kernel
    // adds to it from the first mount on).
    sb.set_kbytes_written((plan.data_bytes() + 1024 * sgroups.len() as u64) / 1024);
    for &g in sgroups.iter().filter(|&&g| g != 0) {
        // ext2fs_flush2 writes the backups while the state lacks VALID.
        let mut backup = sb.clone();
        backup.set_state(sb.state() & !state::VALID);
        backup.set_block_group_nr(u16::try_from(g).unwrap_or(u16::MAX));
        backup.update_checksum();
        plan.data(
            byte_offset(geo, geo.group_first_block(g)),
            backup.as_bytes().to_vec(),
        );
    }
    sb.update_checksum();

    let report = MkfsReport {
        block_size: geo.block_size,
        blocks_count: geo.blocks_count,
        reserved_blocks: geo.reserved_blocks,
        free_blocks: groups.free_blocks,
        first_data_block: geo.first_data_block,
        blocks_per_group: geo.blocks_per_group,
        group_count: geo.group_count,
        groups_per_flex: GROUPS_PER_FLEX,
        gdt_blocks: geo.gdt_blocks,
        backup_groups: sgroups.iter().copied().filter(|&g| g != 0).collect(),
        inodes_count: geo.inodes_count,
        inodes_per_group: geo.inodes_per_group,
        inode_size: geo.inode_size,
        inode_table_blocks: geo.inode_table_blocks,
        free_inodes: groups.free_inodes,
        overhead_blocks: overhead,
        journal_inode: JOURNAL_INO,
        journal_blocks: geo.journal_blocks,
        journal_extents: lay.journal.iter().map(|&(s, l)| (s, l as u32)).collect(),
        root_inode: ROOT_INO,
        lost_found_inode: LPF_INO,
        lost_found_blocks: u32::try_from(lay.lpf.iter().map(|r| r.1).sum::<u64>())
            .unwrap_or(u32::MAX),
        uuid: p.uuid,
        hash_seed: p.hash_seed,
        time: p.time,
        size_type: geo.size_type,
        resize_inode: false,
        bytes_written: 0,
    };
    Ok(Image {
        plan,
        primary_superblock: sb.as_bytes().to_vec(),
        report,
    })
}
