//! Changing extent trees: insert a mapping, convert unwritten ranges, remove ranges.
//!
//! The tree is the kernel's (fs/ext4/extents.c): a root of up to four entries in the inode's
//! 60-byte `i_block`, tree blocks of `(block size - 12) / 12` entries with a checksum tail,
//! index entries whose key is the first logical block of their child. The operations here work
//! on one root path at a time, like `ext4_ext_insert_extent` / `ext4_ext_remove_space`:
//!
//! - a leaf that overflows is split in two (a new block holds the upper half — only the new last
//!   entry when the insertion was an append, so sequential files pack leaves full) and the new
//!   leaf is inserted in the parent, which may split in turn;
//! - a root that overflows grows the tree: its entries move to a new block and the root becomes
//!   an index with one entry (depth + 1);
//! - index keys always equal the first key of their child (e2fsck checks it), so a change of a
//!   node's first entry is carried up the path;
//! - a node left empty is freed and its index entry removed; a root index left empty becomes an
//!   empty leaf again.
//!
//! Adjacent extents are merged when they are contiguous logically and physically, have the same
//! written/unwritten state and fit in one entry (32768 blocks written, 32767 unwritten).
//!
//! Blocks are read, written, allocated and freed through a [`NodeStore`], so the algorithms can
//! be tested on their own and used by the filesystem with its metadata cache and allocator.

use std::collections::HashSet;

use ext4kit_format::extent::{
    Extent, ExtentIndex, ExtentNode, MAX_DEPTH, MAX_INIT_LEN, MAX_UNWRITTEN_LEN, NodeLocation,
};
use ext4kit_format::{CorruptKind, Structure};

use crate::error::{Corruption, Error, Result};

/// Size of the root in `i_block`.
pub const ROOT_BYTES: usize = 60;

/// Where tree blocks come from and go to.
pub trait NodeStore {
    /// Reads tree block `pblk`, expected at `depth` (validated, checksum verified).
    fn read_node(&mut self, pblk: u64, depth: u16) -> Result<ExtentNode>;
    /// Writes tree block `pblk` (the store sets the checksum tail).
    fn write_node(&mut self, pblk: u64, node: &ExtentNode) -> Result<()>;
    /// Allocates a block for a new tree node, near `goal`.
    fn alloc_node(&mut self, goal: u64) -> Result<u64>;
    /// Frees a tree node block.
    fn free_node(&mut self, pblk: u64) -> Result<()>;
    /// Frees `len` data blocks from `pblk`.
    fn free_data(&mut self, pblk: u64, len: u64) -> Result<()>;
    /// The most tree nodes a full walk may visit (the filesystem's block count).
    fn node_limit(&self) -> u64 {
        u64::MAX
    }
}

fn corrupt(lblk: u64) -> Error {
    Error::corrupt(
        Structure::ExtentTree,
        Corruption::Format(CorruptKind::ExtentOrder {
            index: (lblk & 0xffff) as u16,
        }),
    )
}

fn max_len(unwritten: bool) -> u32 {
    if unwritten {
        MAX_UNWRITTEN_LEN
    } else {
        MAX_INIT_LEN
    }
}

/// Whether `b` continues `a` logically and physically with the same state and fits.
fn can_merge(a: &Extent, b: &Extent) -> bool {
    a.unwritten == b.unwritten
        && a.logical_end() == u64::from(b.logical_block)
        && a.physical_block + u64::from(a.len) == b.physical_block
        && a.len + b.len <= max_len(a.unwritten)
}

/// Merges neighbours in a sorted extent list.
fn merge_all(exts: &mut Vec<Extent>) {
    let mut out: Vec<Extent> = Vec::with_capacity(exts.len());
    for e in exts.drain(..) {
        match out.last_mut() {
            Some(last) if can_merge(last, &e) => last.len += e.len,
            _ => out.push(e),
        }
    }
    *exts = out;
}

/// One node on the path from the root to a leaf.
pub(crate) struct Level {
    /// Tree block, `None` for the root in the inode.
    pub(crate) pblk: Option<u64>,
    pub(crate) node: ExtentNode,
    /// Entry of this node followed to the next level (index nodes).
    pub(crate) idx: usize,
}

/// The one descent of an extent tree, for reading and writing: the path from `root` to the leaf
/// whose range holds `lblk` (the leftmost leaf for a block before the first key), children read
/// through `read(block, expected depth)`. A child must have its parent's depth minus one (the
/// reader checks), and the path never exceeds `MAX_DEPTH` levels, so a cycle ends in an error.
pub(crate) fn descend(
    root: ExtentNode,
    lblk: u64,
    mut read: impl FnMut(u64, u16) -> Result<ExtentNode>,
) -> Result<Vec<Level>> {
    let mut path = vec![Level {
        pblk: None,
        node: root,
        idx: 0,
    }];
    loop {
        let Some(level) = path.last_mut() else {
            return Err(corrupt(lblk));
        };
        if level.node.is_leaf() {
            return Ok(path);
        }
        let idx = u32::try_from(lblk)
            .ok()
            .and_then(|l| level.node.find(l))
            .unwrap_or(0);
        level.idx = idx;
        let depth = level.node.depth();
        let child = level
            .node
            .indexes()
            .get(idx)
            .map(|i| i.child_block)
            .ok_or_else(|| corrupt(lblk))?;
        if path.len() > usize::from(MAX_DEPTH) {
            return Err(Error::corrupt(
                Structure::ExtentTree,
                Corruption::TreeCycle { block: child },
            ));
        }
        let node = read(child, depth - 1)?;
        path.push(Level {
            pblk: Some(child),
            node,
            idx: 0,
        });
    }
}

/// The first key after the subtree `path` descended into (what bounds a hole at the end of its
/// leaf), if any: the next index entry of the deepest level that has one.
pub(crate) fn next_key(path: &[Level]) -> Option<u32> {
    path.iter().rev().skip(1).find_map(|level| {
        level
            .node
            .indexes()
            .get(level.idx + 1)
            .map(|i| i.logical_block)
    })
}

/// The one full walk of an extent tree, for reading and writing: every node from `root` down,
/// depth first and leftmost child first, handed to `visit(node, level, block)` (level 0 and no
/// block for the root). A block met twice ends the walk with `TreeCycle` — a hostile tree whose
/// index entries all name one child would otherwise cost fan-out^depth reads — as do more
/// than `limit` nodes or a level past `MAX_DEPTH`.
pub(crate) fn walk_tree(
    root: ExtentNode,
    limit: u64,
    mut read: impl FnMut(u64, u16) -> Result<ExtentNode>,
    mut visit: impl FnMut(&ExtentNode, usize, Option<u64>) -> Result<()>,
) -> Result<()> {
    let mut seen: HashSet<u64> = HashSet::new();
    let mut stack = vec![(root, 0usize, None)];
    while let Some((node, level, pblk)) = stack.pop() {
        visit(&node, level, pblk)?;
        if node.is_leaf() {
            continue;
        }
        if level >= usize::from(MAX_DEPTH) {
            return Err(Error::corrupt(
                Structure::ExtentTree,
                Corruption::TooManyNodes,
            ));
        }
        // Children pushed in reverse so the leftmost is visited first.
        for idx in node.indexes().iter().rev() {
            let b = idx.child_block;
            if !seen.insert(b) {
                return Err(Error::corrupt(
                    Structure::ExtentTree,
                    Corruption::TreeCycle { block: b },
                ));
            }
            if seen.len() as u64 > limit {
                return Err(Error::corrupt(
                    Structure::ExtentTree,
                    Corruption::TooManyNodes,
                ));
            }
            stack.push((read(b, node.depth() - 1)?, level + 1, Some(b)));
        }
    }
    Ok(())
}

/// An extent tree rooted in an inode's `i_block`.
pub struct ExtentTree<'a, S: NodeStore> {
    root: &'a mut [u8],
    store: &'a mut S,
    block_size: usize,
    /// Allocation goal for new tree blocks.
    goal: u64,
}

impl<'a, S: NodeStore> ExtentTree<'a, S> {
    /// The tree whose root is `root` (the inode's 60-byte `i_block`).
    pub fn new(root: &'a mut [u8], store: &'a mut S, block_size: usize, goal: u64) -> Self {
        ExtentTree {
            root,
            store,
            block_size,
            goal,
        }
    }

    /// Makes `root` an empty leaf (a new extent-mapped inode).
    pub fn init_root(root: &mut [u8]) {
        let n = ExtentNode::new_leaf(ROOT_BYTES, NodeLocation::Inode);
        root[..ROOT_BYTES].copy_from_slice(n.as_bytes());
    }

    fn read_root(&self) -> Result<ExtentNode> {
        Ok(ExtentNode::parse_root(&self.root[..ROOT_BYTES])?)
    }

    /// The path from the root to the leaf that covers (or would cover) `lblk`.
    fn find_path(&mut self, lblk: u32) -> Result<Vec<Level>> {
        let root = self.read_root()?;
        let store = &mut *self.store;
        descend(root, u64::from(lblk), |b, d| store.read_node(b, d))
    }

    /// [`walk_tree`] through the store.
    fn walk(
        &mut self,
        visit: impl FnMut(&ExtentNode, usize, Option<u64>) -> Result<()>,
    ) -> Result<()> {
        let root = self.read_root()?;
        let limit = self.store.node_limit();
        let store = &mut *self.store;
        walk_tree(root, limit, |b, d| store.read_node(b, d), visit)
    }

    /// Every extent of the tree, in order.
    pub fn extents(&mut self) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        self.walk(|node, _, _| {
            if node.is_leaf() {
                out.extend(node.extents());
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Per level (the root is level 0): entries and capacity, counted as e2fsck's pass 1 does —
    /// a tree block that is not full counts one entry less of capacity (appends leave one free
    /// entry behind a split).
    fn level_stats(&mut self) -> Result<Vec<(u64, u64)>> {
        let root = self.read_root()?;
        let mut stats = vec![(0u64, 0u64); usize::from(root.depth()) + 1];
        self.walk(|node, level, _| {
            let (n, m) = (node.entry_count() as u64, node.max_entries() as u64);
            let s = stats.get_mut(level).ok_or_else(|| corrupt(0))?;
            s.0 += n;
            s.1 += m;
            if level > 0 && n < m {
                s.1 -= 1;
            }
            Ok(())
        })?;
        Ok(stats)
    }

    /// Whether e2fsck would find the tree wider or deeper than it needs to be ("extent tree
    /// could be narrower / shallower"): some level has more than one block's worth of free
    /// entries, or fewer entries than a level above it could hold.
    pub fn needs_packing(&mut self) -> Result<bool> {
        let stats = self.level_stats()?;
        let per = u64::from(ext4kit_format::extent::capacity(self.block_size));
        for (i, &(num, max)) in stats.iter().enumerate() {
            if max.saturating_sub(num) > per || stats[..i].iter().any(|&(_, above)| num < above) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Rewrites the tree packed (what e2fsck's rebuild makes): every node full but the last of
    /// its level, the least depth that holds the extents (in the root when they fit), adjacent
    /// extents merged. The old tree blocks are reused first; more are allocated, or the rest
    /// freed. Data blocks do not move.
    pub fn rebuild_packed(&mut self) -> Result<()> {
        let mut exts = self.extents()?;
        merge_all(&mut exts);
        let mut spare = self.node_blocks()?;
        spare.sort_unstable_by(|a, b| b.cmp(a));
        if self.goal == 0 {
            self.goal = exts.first().map_or(0, |e| e.physical_block);
        }
        let root_cap = usize::from(ext4kit_format::extent::capacity(ROOT_BYTES));
        if exts.len() <= root_cap {
            let root = self.leaf_node(true, &exts)?;
            self.set_root(&root);
        } else {
            let per = usize::from(ext4kit_format::extent::capacity(self.block_size)).max(2);
            let mut level: Vec<ExtentIndex> = Vec::with_capacity(exts.len().div_ceil(per));
            for chunk in exts.chunks(per) {
                let blk = self.take_block(&mut spare)?;
                let node = self.leaf_node(false, chunk)?;
                self.store.write_node(blk, &node)?;
                level.push(ExtentIndex {
                    logical_block: chunk[0].logical_block,
                    child_block: blk,
                    unused: 0,
                });
            }
            let mut depth = 1u16;
            while level.len() > root_cap {
                if depth >= MAX_DEPTH {
                    return Err(Error::corrupt(
                        Structure::ExtentTree,
                        Corruption::TooManyNodes,
                    ));
                }
                let mut up = Vec::with_capacity(level.len().div_ceil(per));
                for chunk in level.chunks(per) {
                    let blk = self.take_block(&mut spare)?;
                    let node = self.index_node(false, depth, chunk)?;
                    self.store.write_node(blk, &node)?;
                    up.push(ExtentIndex {
                        logical_block: chunk[0].logical_block,
                        child_block: blk,
                        unused: 0,
                    });
                }
                level = up;
                depth += 1;
            }
            let root = self.index_node(true, depth, &level)?;
            self.set_root(&root);
        }
        for b in spare {
            self.store.free_node(b)?;
        }
        Ok(())
    }

    /// An old tree block to reuse (lowest first), else a new one.
    fn take_block(&mut self, spare: &mut Vec<u64>) -> Result<u64> {
        if let Some(b) = spare.pop() {
            return Ok(b);
        }
        let b = self.store.alloc_node(self.goal)?;
        self.goal = b + 1;
        Ok(b)
    }

    /// Every tree block (not the root), for accounting (`i_blocks`).
    pub fn node_blocks(&mut self) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        self.walk(|_, _, pblk| {
            out.extend(pblk);
            Ok(())
        })?;
        Ok(out)
    }

    /// The extent covering `lblk`, if any.
    pub fn lookup(&mut self, lblk: u32) -> Result<Option<Extent>> {
        let path = self.find_path(lblk)?;
        let Some(leaf) = path.last() else {
            return Ok(None);
        };
        Ok(leaf
            .node
            .find(lblk)
            .and_then(|i| leaf.node.extents().get(i).copied()))
    }

    /// The extent before `lblk` in its leaf (if any) and the first mapped block after `lblk`
    /// (if any): what bounds a hole at `lblk` and gives an allocation goal.
    pub fn neighbours(&mut self, lblk: u32) -> Result<(Option<Extent>, Option<u32>)> {
        let path = self.find_path(lblk)?;
        let Some(leaf) = path.last() else {
            return Ok((None, None));
        };
        let exts = leaf.node.extents();
        let pos = exts.partition_point(|e| e.logical_block <= lblk);
        let prev = pos.checked_sub(1).map(|i| exts[i]);
        let next = match exts.get(pos) {
            Some(e) => Some(e.logical_block),
            None => self.next_leaf_key(lblk)?,
        };
        Ok((prev, next))
    }

    /// Inserts a mapping for blocks that are a hole in the tree (merging with neighbours).
    pub fn insert(&mut self, new: Extent) -> Result<()> {
        if new.len == 0 || new.len > max_len(new.unwritten) {
            return Err(Error::InvalidArgument(format!(
                "extent length {} out of range",
                new.len
            )));
        }
        let mut path = self.find_path(new.logical_block)?;
        let Some(leaf) = path.last() else {
            return Err(corrupt(0));
        };
        let mut exts = leaf.node.extents();
        let pos = exts.partition_point(|e| e.logical_block < new.logical_block);
        if pos > 0 && exts[pos - 1].logical_end() > u64::from(new.logical_block) {
            return Err(corrupt(u64::from(new.logical_block)));
        }
        if pos < exts.len() && u64::from(exts[pos].logical_block) < new.logical_end() {
            return Err(corrupt(u64::from(new.logical_block)));
        }
        exts.insert(pos, new);
        let appended = pos + 1 == exts.len();
        merge_all(&mut exts);
        self.write_leaf(&mut path, exts, appended)
    }

    /// Marks blocks `lblk..lblk+len` written (or unwritten), splitting and merging extents. Blocks
    /// in the range that are not mapped are left alone.
    pub fn set_unwritten(&mut self, lblk: u32, len: u32, unwritten: bool) -> Result<()> {
        let end = u64::from(lblk) + u64::from(len);
        let mut at = u64::from(lblk);
        let mut rounds = 0u64;
        while at < end {
            rounds += 1;
            if rounds > 1 << 24 {
                return Err(Error::corrupt(
                    Structure::ExtentTree,
                    Corruption::TooManyNodes,
                ));
            }
            let at32 = u32::try_from(at).map_err(|_| corrupt(at))?;
            let mut path = self.find_path(at32)?;
            let Some(leaf) = path.last() else {
                return Err(corrupt(at));
            };
            let exts = leaf.node.extents();
            let leaf_end = exts.last().map_or(0, Extent::logical_end);
            let mut out = Vec::with_capacity(exts.len() + 2);
            let mut changed = false;
            for e in exts {
                let (s, t) = (u64::from(e.logical_block), e.logical_end());
                if t <= at || s >= end || e.unwritten == unwritten {
                    out.push(e);
                    continue;
                }
                changed = true;
                let (cs, ct) = (s.max(at), t.min(end));
                let piece = |from: u64, to: u64, uw: bool| Extent {
                    logical_block: from as u32,
                    len: (to - from) as u32,
                    physical_block: e.physical_block + (from - s),
                    unwritten: uw,
                };
                if s < cs {
                    out.push(piece(s, cs, e.unwritten));
                }
                out.push(piece(cs, ct, unwritten));
                if ct < t {
                    out.push(piece(ct, t, e.unwritten));
                }
            }
            if changed {
                merge_all(&mut out);
                // A written piece may be longer than an unwritten extent can be: split it.
                let mut fixed = Vec::with_capacity(out.len());
                for e in out {
                    let mut e = e;
                    while e.len > max_len(e.unwritten) {
                        let m = max_len(e.unwritten);
                        fixed.push(Extent { len: m, ..e });
                        e.logical_block += m;
                        e.physical_block += u64::from(m);
                        e.len -= m;
                    }
                    fixed.push(e);
                }
                self.write_leaf(&mut path, fixed, false)?;
            }
            // Continue after this leaf.
            if leaf_end <= at {
                // No extent at or after `at` in this leaf: the next leaf starts at the next key.
                match self.next_leaf_key(at32)? {
                    Some(k) if u64::from(k) > at => at = u64::from(k),
                    _ => break,
                }
            } else {
                at = leaf_end;
            }
        }
        Ok(())
    }

    /// The first key of the leaf after the one covering `lblk`, if any.
    fn next_leaf_key(&mut self, lblk: u32) -> Result<Option<u32>> {
        Ok(next_key(&self.find_path(lblk)?))
    }

    /// Removes every mapping in `from..to`, freeing its data blocks and the tree blocks left
    /// empty. Returns the number of data blocks freed.
    pub fn remove_range(&mut self, from: u64, to: u64) -> Result<u64> {
        let to = to.min(1 << 32);
        if from >= to {
            return Ok(0);
        }
        let mut freed = 0u64;
        let mut hi = to;
        let mut rounds = 0u64;
        loop {
            rounds += 1;
            if rounds > 1 << 24 {
                return Err(Error::corrupt(
                    Structure::ExtentTree,
                    Corruption::TooManyNodes,
                ));
            }
            let probe = u32::try_from(hi - 1).map_err(|_| corrupt(hi))?;
            let mut path = self.find_path(probe)?;
            let Some(leaf) = path.last() else {
                return Err(corrupt(hi));
            };
            let exts = leaf.node.extents();
            let leaf_start = exts.first().map(|e| u64::from(e.logical_block));
            let mut out = Vec::with_capacity(exts.len() + 1);
            let mut changed = false;
            for e in exts {
                let (s, t) = (u64::from(e.logical_block), e.logical_end());
                if t <= from || s >= hi {
                    out.push(e);
                    continue;
                }
                changed = true;
                let (cs, ct) = (s.max(from), t.min(hi));
                self.store.free_data(e.physical_block + (cs - s), ct - cs)?;
                freed += ct - cs;
                if s < cs {
                    out.push(Extent {
                        len: (cs - s) as u32,
                        ..e
                    });
                }
                if ct < t {
                    out.push(Extent {
                        logical_block: ct as u32,
                        len: (t - ct) as u32,
                        physical_block: e.physical_block + (ct - s),
                        unwritten: e.unwritten,
                    });
                }
            }
            if changed {
                if out.is_empty() && path.len() > 1 {
                    self.remove_node(&mut path)?;
                } else {
                    self.write_leaf(&mut path, out, false)?;
                }
            }
            // Go on with the leaf before this one.
            match leaf_start {
                Some(s) if s > from => hi = s,
                Some(_) => break,
                None => {
                    // An empty leaf (only the root can be one): nothing more.
                    break;
                }
            }
            if !changed && self.prev_leaf_exists(probe)? == Some(false) {
                break;
            }
        }
        Ok(freed)
    }

    /// Whether a leaf lies before the one covering `lblk` (`None` if the tree is a single leaf).
    fn prev_leaf_exists(&mut self, lblk: u32) -> Result<Option<bool>> {
        let path = self.find_path(lblk)?;
        if path.len() == 1 {
            return Ok(Some(false));
        }
        Ok(Some(path.iter().rev().skip(1).any(|l| l.idx > 0)))
    }

    /// Writes `exts` into the leaf at the end of `path`, splitting or growing as needed.
    fn write_leaf(
        &mut self,
        path: &mut Vec<Level>,
        exts: Vec<Extent>,
        appended: bool,
    ) -> Result<()> {
        let depth_idx = path.len() - 1;
        let level = &path[depth_idx];
        let cap = level.node.max_entries();
        if exts.len() <= cap {
            let node = self.leaf_node(level.pblk.is_none(), &exts)?;
            let first = exts.first().map(|e| e.logical_block);
            self.store_node(&path[depth_idx], &node)?;
            path[depth_idx].node = node;
            if let Some(k) = first {
                self.fix_keys(path, depth_idx, k)?;
            }
            return Ok(());
        }
        if level.pblk.is_none() {
            // The root leaf is full: move everything into a new block below a one-entry root.
            let new_blk = self.store.alloc_node(self.goal)?;
            self.goal = new_blk + 1;
            let leaf_cap = ext4kit_format::extent::capacity(self.block_size) as usize;
            if exts.len() > leaf_cap {
                return Err(corrupt(0));
            }
            let child = self.leaf_node(false, &exts)?;
            self.store.write_node(new_blk, &child)?;
            let key = exts.first().map_or(0, |e| e.logical_block);
            let root = ExtentNode::build_index(
                ROOT_BYTES,
                NodeLocation::Inode,
                1,
                &[ExtentIndex {
                    logical_block: key,
                    child_block: new_blk,
                    unused: 0,
                }],
            )?;
            self.set_root(&root);
            return Ok(());
        }
        // Split the leaf.
        let mid = if appended {
            exts.len() - 1
        } else {
            exts.len() / 2
        };
        let (left, right) = exts.split_at(mid);
        let new_blk = self.store.alloc_node(self.goal)?;
        self.goal = new_blk + 1;
        let lnode = self.leaf_node(false, left)?;
        let rnode = self.leaf_node(false, right)?;
        self.store_node(&path[depth_idx], &lnode)?;
        self.store.write_node(new_blk, &rnode)?;
        path[depth_idx].node = lnode;
        if let Some(k) = left.first().map(|e| e.logical_block) {
            self.fix_keys(path, depth_idx, k)?;
        }
        let key = right.first().map_or(0, |e| e.logical_block);
        self.insert_index(
            path,
            depth_idx - 1,
            ExtentIndex {
                logical_block: key,
                child_block: new_blk,
                unused: 0,
            },
        )
    }

    /// Inserts `entry` after the followed entry of the index node at `path[at]`.
    fn insert_index(&mut self, path: &mut Vec<Level>, at: usize, entry: ExtentIndex) -> Result<()> {
        let level = &path[at];
        let mut idx = level.node.indexes();
        let pos = level.idx + 1;
        idx.insert(pos.min(idx.len()), entry);
        self.write_index(path, at, idx)
    }

    /// Writes `idx` into the index node at `path[at]`, splitting or growing as needed.
    fn write_index(
        &mut self,
        path: &mut Vec<Level>,
        at: usize,
        idx: Vec<ExtentIndex>,
    ) -> Result<()> {
        let level = &path[at];
        let depth = level.node.depth();
        if idx.len() <= level.node.max_entries() {
            let node = self.index_node(level.pblk.is_none(), depth, &idx)?;
            self.store_node(&path[at], &node)?;
            path[at].node = node;
            if let Some(k) = idx.first().map(|e| e.logical_block) {
                self.fix_keys(path, at, k)?;
            }
            return Ok(());
        }
        if level.pblk.is_none() {
            if depth >= MAX_DEPTH {
                return Err(Error::corrupt(
                    Structure::ExtentTree,
                    Corruption::TooManyNodes,
                ));
            }
            let new_blk = self.store.alloc_node(self.goal)?;
            self.goal = new_blk + 1;
            let child = self.index_node(false, depth, &idx)?;
            self.store.write_node(new_blk, &child)?;
            let key = idx.first().map_or(0, |e| e.logical_block);
            let root = ExtentNode::build_index(
                ROOT_BYTES,
                NodeLocation::Inode,
                depth + 1,
                &[ExtentIndex {
                    logical_block: key,
                    child_block: new_blk,
                    unused: 0,
                }],
            )?;
            self.set_root(&root);
            return Ok(());
        }
        let mid = idx.len() / 2;
        let (left, right) = idx.split_at(mid);
        let new_blk = self.store.alloc_node(self.goal)?;
        self.goal = new_blk + 1;
        let lnode = self.index_node(false, depth, left)?;
        let rnode = self.index_node(false, depth, right)?;
        self.store_node(&path[at], &lnode)?;
        self.store.write_node(new_blk, &rnode)?;
        path[at].node = lnode;
        if let Some(k) = left.first().map(|e| e.logical_block) {
            self.fix_keys(path, at, k)?;
        }
        let key = right.first().map_or(0, |e| e.logical_block);
        self.insert_index(
            path,
            at - 1,
            ExtentIndex {
                logical_block: key,
                child_block: new_blk,
                unused: 0,
            },
        )
    }

    /// Removes the (now empty) node at the end of `path` from its parent and frees it.
    fn remove_node(&mut self, path: &mut Vec<Level>) -> Result<()> {
        let Some(level) = path.pop() else {
            return Ok(());
        };
        if let Some(pblk) = level.pblk {
            self.store.free_node(pblk)?;
        }
        let at = path.len() - 1;
        let parent = &path[at];
        let mut idx = parent.node.indexes();
        if parent.idx < idx.len() {
            idx.remove(parent.idx);
        }
        if idx.is_empty() {
            if parent.pblk.is_none() {
                // The whole tree is empty: the root becomes an empty leaf.
                let root = ExtentNode::new_leaf(ROOT_BYTES, NodeLocation::Inode);
                self.set_root(&root);
                return Ok(());
            }
            return self.remove_node(path);
        }
        let depth = parent.node.depth();
        let node = self.index_node(parent.pblk.is_none(), depth, &idx)?;
        self.store_node(&path[at], &node)?;
        path[at].node = node;
        if let Some(k) = idx.first().map(|e| e.logical_block) {
            self.fix_keys(path, at, k)?;
        }
        Ok(())
    }

    /// After the node at `path[at]` got first key `key`, makes the parents' keys agree.
    fn fix_keys(&mut self, path: &mut [Level], at: usize, key: u32) -> Result<()> {
        let mut at = at;
        let mut key = key;
        while at > 0 {
            let parent_at = at - 1;
            let parent = &path[parent_at];
            let mut idx = parent.node.indexes();
            let i = parent.idx;
            if i >= idx.len() || idx[i].logical_block == key {
                return Ok(());
            }
            idx[i].logical_block = key;
            let depth = parent.node.depth();
            let node = self.index_node(parent.pblk.is_none(), depth, &idx)?;
            self.store_node(&path[parent_at], &node)?;
            path[parent_at].node = node;
            if i != 0 {
                return Ok(());
            }
            key = idx[0].logical_block;
            at = parent_at;
        }
        Ok(())
    }

    fn leaf_node(&self, root: bool, exts: &[Extent]) -> Result<ExtentNode> {
        let (len, loc) = if root {
            (ROOT_BYTES, NodeLocation::Inode)
        } else {
            (self.block_size, NodeLocation::Block)
        };
        Ok(ExtentNode::build_leaf(len, loc, exts)?)
    }

    fn index_node(&self, root: bool, depth: u16, idx: &[ExtentIndex]) -> Result<ExtentNode> {
        let (len, loc) = if root {
            (ROOT_BYTES, NodeLocation::Inode)
        } else {
            (self.block_size, NodeLocation::Block)
        };
        Ok(ExtentNode::build_index(len, loc, depth, idx)?)
    }

    fn store_node(&mut self, level: &Level, node: &ExtentNode) -> Result<()> {
        match level.pblk {
            None => {
                self.set_root(node);
                Ok(())
            }
            Some(pblk) => self.store.write_node(pblk, node),
        }
    }

    fn set_root(&mut self, node: &ExtentNode) {
        self.root[..ROOT_BYTES].copy_from_slice(&node.as_bytes()[..ROOT_BYTES]);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use proptest::prelude::*;

    use super::*;

    /// Tree blocks in memory; data and node blocks are numbers handed out by a counter.
    #[derive(Default)]
    struct MemStore {
        nodes: HashMap<u64, Vec<u8>>,
        next: u64,
        freed_nodes: BTreeSet<u64>,
        freed_data: u64,
        bs: usize,
    }

    impl NodeStore for MemStore {
        fn read_node(&mut self, pblk: u64, depth: u16) -> Result<ExtentNode> {
            let b = self.nodes.get(&pblk).ok_or_else(|| corrupt(pblk))?;
            Ok(ExtentNode::parse(b, NodeLocation::Block, Some(depth))?)
        }
        fn write_node(&mut self, pblk: u64, node: &ExtentNode) -> Result<()> {
            assert_eq!(node.as_bytes().len(), self.bs);
            self.nodes.insert(pblk, node.as_bytes().to_vec());
            Ok(())
        }
        fn alloc_node(&mut self, _goal: u64) -> Result<u64> {
            self.next += 1;
            Ok(1_000_000_000 + self.next)
        }
        fn free_node(&mut self, pblk: u64) -> Result<()> {
            assert!(
                self.nodes.remove(&pblk).is_some(),
                "freeing an unknown node {pblk}"
            );
            assert!(self.freed_nodes.insert(pblk));
            Ok(())
        }
        fn free_data(&mut self, _pblk: u64, len: u64) -> Result<()> {
            self.freed_data += len;
            Ok(())
        }
    }

    /// Checks the structural rules e2fsck checks: sorted, keys equal to the child's first key,
    /// no empty non-root node, consistent depth.
    fn check(root: &[u8], store: &mut MemStore) -> Vec<Extent> {
        fn walk(
            node: &ExtentNode,
            store: &mut MemStore,
            out: &mut Vec<Extent>,
            lo: u64,
            hi: u64,
            is_root: bool,
        ) -> Option<u32> {
            if node.is_leaf() {
                let e = node.extents();
                assert!(is_root || !e.is_empty(), "empty leaf block");
                for x in &e {
                    assert!(
                        u64::from(x.logical_block) >= lo && x.logical_end() <= hi,
                        "extent {x:?} outside its index range {lo}..{hi}"
                    );
                }
                out.extend(e.iter().copied());
                return e.first().map(|x| x.logical_block);
            }
            let idx = node.indexes();
            assert!(!idx.is_empty());
            for (i, ix) in idx.iter().enumerate() {
                let next = idx.get(i + 1).map_or(hi, |n| u64::from(n.logical_block));
                let child = store.read_node(ix.child_block, node.depth() - 1).unwrap();
                let first = walk(&child, store, out, u64::from(ix.logical_block), next, false);
                assert_eq!(
                    first,
                    Some(ix.logical_block),
                    "index key differs from the child's first key"
                );
            }
            idx.first().map(|i| i.logical_block)
        }
        let root = ExtentNode::parse_root(root).unwrap();
        let mut out = Vec::new();
        walk(&root, store, &mut out, 0, 1 << 32, true);
        for w in out.windows(2) {
            assert!(
                w[0].logical_end() <= u64::from(w[1].logical_block),
                "overlap {w:?}"
            );
        }
        out
    }

    /// Model: lblk → (pblk, unwritten).
    fn model_of(exts: &[Extent]) -> BTreeMap<u64, (u64, bool)> {
        let mut m = BTreeMap::new();
        for e in exts {
            for k in 0..u64::from(e.len) {
                m.insert(
                    u64::from(e.logical_block) + k,
                    (e.physical_block + k, e.unwritten),
                );
            }
        }
        m
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert {
            lblk: u32,
            len: u32,
            unwritten: bool,
        },
        Convert {
            lblk: u32,
            len: u32,
        },
        Remove {
            from: u32,
            len: u32,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u32..5000, 1u32..40, any::<bool>()).prop_map(|(lblk, len, unwritten)| Op::Insert { lblk, len, unwritten }),
            2 => (0u32..5000, 1u32..300).prop_map(|(lblk, len)| Op::Convert { lblk, len }),
            2 => (0u32..5000, 1u32..600).prop_map(|(from, len)| Op::Remove { from, len }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        #[test]
        fn tree_matches_a_model_under_random_changes(ops in prop::collection::vec(op(), 1..400), bs in prop::sample::select(vec![1024usize, 4096])) {
            let mut root = [0u8; 60];
            ExtentTree::<MemStore>::init_root(&mut root);
            let mut store = MemStore { bs, ..MemStore::default() };
            let mut model: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
            let mut next_pblk = 100u64;
            let mut freed_model = 0u64;
            for op in ops {
                let mut t = ExtentTree::new(&mut root, &mut store, bs, 0);
                match op {
                    Op::Insert { lblk, len, unwritten } => {
                        // Insert only into a hole: clip to the first mapped block.
                        let mut n = 0;
                        while n < len && !model.contains_key(&(u64::from(lblk) + u64::from(n))) { n += 1; }
                        if n == 0 { continue; }
                        // Physically contiguous with the previous allocation half of the time.
                        let pblk = next_pblk;
                        next_pblk += u64::from(n) + u64::from(lblk % 2);
                        t.insert(Extent { logical_block: lblk, len: n, physical_block: pblk, unwritten }).unwrap();
                        for k in 0..u64::from(n) { model.insert(u64::from(lblk) + k, (pblk + k, unwritten)); }
                    }
                    Op::Convert { lblk, len } => {
                        t.set_unwritten(lblk, len, false).unwrap();
                        for k in u64::from(lblk)..u64::from(lblk) + u64::from(len) {
                            if let Some(v) = model.get_mut(&k) { v.1 = false; }
                        }
                    }
                    Op::Remove { from, len } => {
                        let f = t.remove_range(u64::from(from), u64::from(from) + u64::from(len)).unwrap();
                        let keys: Vec<u64> = model.range(u64::from(from)..u64::from(from) + u64::from(len)).map(|(k, _)| *k).collect();
                        for k in &keys { model.remove(k); }
                        prop_assert_eq!(f, keys.len() as u64);
                        freed_model += keys.len() as u64;
                    }
                }
                let exts = check(&root, &mut store);
                prop_assert_eq!(model_of(&exts), model.clone());
            }
            prop_assert_eq!(store.freed_data, freed_model);
            // Remove everything: the tree returns to an empty root leaf, all nodes freed.
            let mut t = ExtentTree::new(&mut root, &mut store, bs, 0);
            t.remove_range(0, 1 << 32).unwrap();
            let r = ExtentNode::parse_root(&root).unwrap();
            prop_assert!(r.is_leaf() && r.entry_count() == 0);
            prop_assert!(store.nodes.is_empty(), "{} tree blocks leaked", store.nodes.len());
        }
    }

    #[test]
    fn packing_keeps_every_mapping_and_leaves_nothing_for_e2fsck_to_narrow() {
        for bs in [1024usize, 4096] {
            let mut root = [0u8; 60];
            ExtentTree::<MemStore>::init_root(&mut root);
            let mut store = MemStore {
                bs,
                ..MemStore::default()
            };
            let mut model: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
            // Every other block, inserted out of order (mid-leaf splits), then punched.
            let n = 20_000u32;
            for k in 0..n {
                let lblk = (k.wrapping_mul(7919) % n) * 2;
                let mut t = ExtentTree::new(&mut root, &mut store, bs, 0);
                let e = Extent {
                    logical_block: lblk,
                    len: 1,
                    physical_block: 1_000 + u64::from(lblk) * 3,
                    unwritten: k % 3 == 0,
                };
                t.insert(e).unwrap();
                model.insert(u64::from(lblk), (e.physical_block, e.unwritten));
            }
            for (from, to) in [(1000u64, 9000u64), (20_000, 30_001), (39_000, 39_990)] {
                ExtentTree::new(&mut root, &mut store, bs, 0)
                    .remove_range(from, to)
                    .unwrap();
                let keys: Vec<u64> = model.range(from..to).map(|(k, _)| *k).collect();
                for k in keys {
                    model.remove(&k);
                }
            }
            let mut t = ExtentTree::new(&mut root, &mut store, bs, 0);
            assert!(
                t.needs_packing().unwrap(),
                "{bs}: scattered inserts and punches leave a loose tree"
            );
            t.rebuild_packed().unwrap();
            assert!(!t.needs_packing().unwrap(), "{bs}: packed tree still loose");
            let exts = check(&root, &mut store);
            assert_eq!(model_of(&exts), model);
            // Down to a handful: back in the root, every tree block freed.
            let mut t = ExtentTree::new(&mut root, &mut store, bs, 0);
            t.remove_range(6, 1 << 32).unwrap();
            t.rebuild_packed().unwrap();
            let r = ExtentNode::parse_root(&root).unwrap();
            assert!(r.is_leaf() && r.entry_count() == 3);
            assert!(
                store.nodes.is_empty(),
                "{} tree blocks left",
                store.nodes.len()
            );
        }
    }

    #[test]
    fn sequential_appends_pack_leaves_and_grow_depth() {
        let bs = 1024;
        let mut root = [0u8; 60];
        ExtentTree::<MemStore>::init_root(&mut root);
        let mut store = MemStore {
            bs,
            ..MemStore::default()
        };
        // 10,000 discontiguous single-block extents, appended in order.
        for i in 0..10_000u32 {
            let mut t = ExtentTree::new(&mut root, &mut store, bs, 0);
            t.insert(Extent {
                logical_block: i * 2,
                len: 1,
                physical_block: 10 + u64::from(i) * 3,
                unwritten: false,
            })
            .unwrap();
        }
        let exts = check(&root, &mut store);
        assert_eq!(exts.len(), 10_000);
        let r = ExtentNode::parse_root(&root).unwrap();
        assert_eq!(
            r.depth(),
            2,
            "84 entries per 1K leaf: 10,000 extents need two levels"
        );
        // Appends split off only the new entry: leaves are full except the last.
        let leaves = store
            .nodes
            .values()
            .filter(|b| {
                ExtentNode::parse(b, NodeLocation::Block, None)
                    .unwrap()
                    .is_leaf()
            })
            .count();
        assert_eq!(leaves, 10_000usize.div_ceil(84));
    }
}
