//! Changing directories: add and remove entries in linear and htree directories, turn a full
//! one-block directory into an htree, and build a whole directory at once.
//!
//! Follows fs/ext4/namei.c:
//! - linear directories take a new entry in the first block with room, else a new block — unless
//!   the directory is one full block and dir_index is on: then it becomes indexed
//!   (`make_indexed_dir`): block 0 turns into the dx root (keeping `.` and `..`) and the entries
//!   move to leaves ordered by hash;
//! - indexed directories find the leaf by hash through the root (and one level of index nodes);
//!   a full leaf is split by hash (`do_split`), its upper half going to a new block whose first
//!   hash (with the continuation bit when a hash run crosses the split) is inserted in the
//!   parent; a full root grows a level (`indirect_levels` 0 → 1); a full node is split in two;
//!   a full root above full nodes is "directory index full" (as without largedir);
//! - removal frees the entry in place (merged into its predecessor), leaving empty leaves in
//!   the tree as the kernel does.
//!
//! Blocks go through a [`DirStore`], which knows the directory's inode (for checksums), can
//! append blocks, and hashes names with the filesystem's hash and seed.

use ext4kit_format::dir::{DirBlock, DirBlockOptions, rec_len_for_name};
use ext4kit_format::hash::DirHash;
use ext4kit_format::htree::{DxBlock, DxEntry, DxOptions, split_leaf};
use ext4kit_format::inode::FileType;
use ext4kit_format::{CorruptKind, Structure};

use crate::error::{Corruption, Error, Result};

/// A directory's blocks and what is needed to change them.
pub trait DirStore {
    /// Block size.
    fn block_size(&self) -> u32;
    /// Leaves carry a checksum tail and dx blocks a dx tail (metadata_csum).
    fn has_csum(&self) -> bool;
    /// The filesystem allows indexed directories (dir_index).
    fn can_index(&self) -> bool;
    /// Hash of a name with the filesystem's hash version and seed.
    fn hash(&self, name: &[u8]) -> Result<DirHash>;
    /// The hash version as the dx root stores it (0 legacy, 1 half_md4, 2 tea).
    fn root_hash_version(&self) -> u8;
    /// Inode of the directory and of its parent.
    fn inos(&self) -> (u32, u32);
    /// Number of blocks.
    fn nblocks(&self) -> u32;
    /// Reads logical block `lblk`.
    fn read_block(&mut self, lblk: u32) -> Result<Vec<u8>>;
    /// Writes a leaf (the store sets its checksum tail).
    fn write_leaf(&mut self, lblk: u32, block: DirBlock) -> Result<()>;
    /// Writes a dx root or node (the store sets its dx tail).
    fn write_dx(&mut self, lblk: u32, block: DxBlock) -> Result<()>;
    /// Adds a block at the end of the directory; returns its logical number.
    fn append_block(&mut self) -> Result<u32>;
    /// Whether the directory is indexed (the inode's INDEX flag).
    fn is_indexed(&self) -> bool;
    /// Sets or clears the INDEX flag.
    fn set_indexed(&mut self, on: bool);
}

fn opts<S: DirStore + ?Sized>(s: &S) -> DirBlockOptions {
    DirBlockOptions::new(s.block_size(), s.has_csum())
}

fn dx_opts<S: DirStore + ?Sized>(s: &S) -> DxOptions {
    DxOptions {
        block_size: s.block_size(),
        has_csum: s.has_csum(),
        largedir: false,
    }
}

fn dir_ft() -> u8 {
    FileType::Directory.dirent_code()
}

/// The first block of a new directory: `.` and `..`.
pub fn new_dir_block<S: DirStore + ?Sized>(s: &S) -> Result<DirBlock> {
    let (me, parent) = s.inos();
    Ok(DirBlock::new_dir(
        s.block_size() as usize,
        opts(s),
        me,
        parent,
        true,
    )?)
}

/// Adds `name` → `ino` (dirent file type `ft`). The caller has checked that the name is absent.
pub fn add_entry<S: DirStore + ?Sized>(s: &mut S, name: &[u8], ino: u32, ft: u8) -> Result<()> {
    if s.is_indexed() {
        return dx_add(s, name, ino, ft);
    }
    let n = s.nblocks();
    for lblk in 0..n {
        let raw = s.read_block(lblk)?;
        let mut b = DirBlock::parse(&raw, opts(s))?;
        if b.add_entry(name, ino, ft)? {
            return s.write_leaf(lblk, b);
        }
    }
    if n == 1 && s.can_index() {
        return make_indexed(s, Some((name, ino, ft)));
    }
    let lblk = s.append_block()?;
    let b = DirBlock::build(s.block_size() as usize, opts(s), &[(name, ino, ft)])?
        .ok_or_else(|| Error::InvalidArgument("name too long for a directory block".into()))?;
    s.write_leaf(lblk, b)
}

/// Removes `name`; returns its inode, or `None` if absent.
pub fn remove_entry<S: DirStore + ?Sized>(s: &mut S, name: &[u8]) -> Result<Option<u32>> {
    if s.is_indexed() {
        let h = s.hash(name)?.major;
        let path = dx_path(s, h)?;
        let mut lblk = path.leaf;
        // A run of equal hashes may continue into the following leaves.
        for _ in 0..s.nblocks().max(1) {
            let raw = s.read_block(lblk)?;
            let mut b = DirBlock::parse(&raw, opts(s))?;
            if let Some(ino) = b.remove_entry(name)? {
                s.write_leaf(lblk, b)?;
                return Ok(Some(ino));
            }
            match next_leaf_with_hash(s, &path, lblk, h)? {
                Some(next) => lblk = next,
                None => return Ok(None),
            }
        }
        return Ok(None);
    }
    for lblk in 0..s.nblocks() {
        let raw = s.read_block(lblk)?;
        let mut b = DirBlock::parse(&raw, opts(s))?;
        if let Some(ino) = b.remove_entry(name)? {
            s.write_leaf(lblk, b)?;
            return Ok(Some(ino));
        }
    }
    Ok(None)
}

/// Builds a directory holding `entries` (besides `.` and `..`) in a store with no blocks yet:
/// one linear block if they fit, else an htree with full leaves (sorted by hash).
pub fn build_dir<S: DirStore + ?Sized>(s: &mut S, entries: &[(Vec<u8>, u32, u8)]) -> Result<()> {
    let (me, parent) = s.inos();
    let bs = s.block_size() as usize;
    let o = opts(s);
    let mut all: Vec<(&[u8], u32, u8)> = vec![(b".", me, dir_ft()), (b"..", parent, dir_ft())];
    all.extend(entries.iter().map(|(n, i, f)| (n.as_slice(), *i, *f)));
    if let Some(b) = DirBlock::build(bs, o, &all)? {
        let lblk = s.append_block()?;
        s.set_indexed(false);
        return s.write_leaf(lblk, b);
    }
    if !s.can_index() {
        // No dir_index: linear blocks, filled in order.
        let root = new_dir_block(s)?;
        let mut cur = root;
        let mut cur_lblk = s.append_block()?;
        for (n, i, f) in entries {
            if !cur.add_entry(n, *i, *f)? {
                s.write_leaf(cur_lblk, cur)?;
                cur_lblk = s.append_block()?;
                cur = DirBlock::build(bs, o, &[])?
                    .ok_or_else(|| Error::InvalidArgument("block".into()))?;
                if !cur.add_entry(n, *i, *f)? {
                    return Err(Error::InvalidArgument(
                        "name too long for a directory block".into(),
                    ));
                }
            }
        }
        return s.write_leaf(cur_lblk, cur);
    }
    let root_lblk = s.append_block()?;
    debug_assert_eq!(root_lblk, 0);
    let mut hashed: Vec<(u32, &[u8], u32, u8)> = Vec::with_capacity(entries.len());
    for (n, i, f) in entries {
        hashed.push((s.hash(n)?.major, n.as_slice(), *i, *f));
    }
    hashed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)));
    let leaves = pack_leaves(s, &hashed)?;
    write_tree(s, leaves)
}

/// Packs hash-sorted entries into full leaves; returns (index hash, leaf) per leaf.
fn pack_leaves<S: DirStore + ?Sized>(
    s: &S,
    hashed: &[(u32, &[u8], u32, u8)],
) -> Result<Vec<(u32, DirBlock)>> {
    let bs = s.block_size() as usize;
    let o = opts(s);
    let area = bs
        - if s.has_csum() {
            ext4kit_format::dir::TAIL_SIZE
        } else {
            0
        };
    let mut out = Vec::new();
    let mut start = 0usize;
    while start < hashed.len() {
        let mut used = 0usize;
        let mut end = start;
        while end < hashed.len() {
            let need = rec_len_for_name(hashed[end].1.len()) as usize;
            if used + need > area {
                break;
            }
            used += need;
            end += 1;
        }
        if end == start {
            return Err(Error::InvalidArgument(
                "name too long for a directory block".into(),
            ));
        }
        let refs: Vec<(&[u8], u32, u8)> =
            hashed[start..end].iter().map(|h| (h.1, h.2, h.3)).collect();
        let leaf = DirBlock::build(bs, o, &refs)?
            .ok_or_else(|| Error::InvalidArgument("leaf overflow".into()))?;
        let hash = if start == 0 {
            0
        } else {
            let continued = hashed[start].0 == hashed[start - 1].0;
            hashed[start].0 | u32::from(continued)
        };
        out.push((hash, leaf));
        start = end;
    }
    Ok(out)
}

/// Writes a root (block 0, already appended) over `leaves`, with a level of nodes if needed.
fn write_tree<S: DirStore + ?Sized>(s: &mut S, leaves: Vec<(u32, DirBlock)>) -> Result<()> {
    let (me, parent) = s.inos();
    let dxo = dx_opts(s);
    let root_limit = usize::from(
        DxBlock::new_root(dxo, me, parent, dir_ft(), s.root_hash_version(), 0, &[])?.limit(),
    );
    let mut entries = Vec::with_capacity(leaves.len());
    for (hash, leaf) in leaves {
        let lblk = s.append_block()?;
        s.write_leaf(lblk, leaf)?;
        entries.push(DxEntry { hash, block: lblk });
    }
    s.set_indexed(true);
    if entries.len() <= root_limit {
        let root = DxBlock::new_root(
            dxo,
            me,
            parent,
            dir_ft(),
            s.root_hash_version(),
            0,
            &entries,
        )?;
        return s.write_dx(0, root);
    }
    let node_limit = usize::from(DxBlock::new_node(dxo, &[])?.limit());
    let chunks: Vec<Vec<DxEntry>> = entries
        .chunks(node_limit)
        .map(<[DxEntry]>::to_vec)
        .collect();
    if chunks.len() > root_limit {
        return Err(Error::NoSpace(
            "directory index full (too many entries for two levels)".into(),
        ));
    }
    let mut root_entries = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        let hash = chunk.first().map_or(0, |e| e.hash);
        let lblk = s.append_block()?;
        s.write_dx(lblk, DxBlock::new_node(dxo, &chunk)?)?;
        root_entries.push(DxEntry { hash, block: lblk });
    }
    let root = DxBlock::new_root(
        dxo,
        me,
        parent,
        dir_ft(),
        s.root_hash_version(),
        1,
        &root_entries,
    )?;
    s.write_dx(0, root)
}

/// Turns a one-block linear directory into an htree, adding `extra` on the way.
fn make_indexed<S: DirStore + ?Sized>(s: &mut S, extra: Option<(&[u8], u32, u8)>) -> Result<()> {
    let raw = s.read_block(0)?;
    let b = DirBlock::parse(&raw, opts(s))?;
    let mut hashed: Vec<(u32, Vec<u8>, u32, u8)> = Vec::new();
    for e in b.live_entries()? {
        if e.is_dot_or_dotdot() {
            continue;
        }
        hashed.push((s.hash(e.name)?.major, e.name.to_vec(), e.inode, e.file_type));
    }
    if let Some((n, i, f)) = extra {
        hashed.push((s.hash(n)?.major, n.to_vec(), i, f));
    }
    hashed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let refs: Vec<(u32, &[u8], u32, u8)> = hashed
        .iter()
        .map(|h| (h.0, h.1.as_slice(), h.2, h.3))
        .collect();
    // Leave room in each leaf, as the kernel's split does: two leaves at least.
    let mut leaves = pack_leaves(s, &refs)?;
    if leaves.len() == 1 && refs.len() >= 2 {
        let mid = refs.len() / 2;
        leaves = pack_leaves(s, &refs[..mid])?;
        let mut upper = pack_leaves(s, &refs[mid..])?;
        if let Some(first) = upper.first_mut() {
            let continued = refs[mid].0 == refs[mid - 1].0;
            first.0 = refs[mid].0 | u32::from(continued);
        }
        leaves.extend(upper);
    }
    write_tree(s, leaves)
}

/// Where a hash leads: the index frames followed and the leaf.
struct DxPath {
    /// (lblk, block, entry followed) from the root down.
    frames: Vec<(u32, DxBlock, usize)>,
    leaf: u32,
}

fn dx_path<S: DirStore + ?Sized>(s: &mut S, hash: u32) -> Result<DxPath> {
    let dxo = dx_opts(s);
    let raw = s.read_block(0)?;
    let root = DxBlock::parse_root(&raw, dxo)?;
    let levels = root.root_info().indirect_levels;
    let mut frames = Vec::new();
    let idx = root.lookup(hash);
    let mut next = root
        .entries()
        .get(idx)
        .map(|e| e.block)
        .ok_or_else(bad_dx)?;
    frames.push((0, root, idx));
    for _ in 0..levels {
        if next == 0 || next >= s.nblocks() {
            return Err(bad_dx());
        }
        let raw = s.read_block(next)?;
        let node = DxBlock::parse_node(&raw, dxo)?;
        let idx = node.lookup(hash);
        let child = node
            .entries()
            .get(idx)
            .map(|e| e.block)
            .ok_or_else(bad_dx)?;
        frames.push((next, node, idx));
        next = child;
    }
    if next == 0 || next >= s.nblocks() {
        return Err(bad_dx());
    }
    Ok(DxPath { frames, leaf: next })
}

fn bad_dx() -> Error {
    Error::corrupt(
        Structure::HtreeNode,
        Corruption::Format(CorruptKind::DxCount { count: 0, limit: 0 }),
    )
}

/// The leaf after `lblk` in index order if its index hash continues `hash` (collision run).
fn next_leaf_with_hash<S: DirStore + ?Sized>(
    _s: &mut S,
    path: &DxPath,
    lblk: u32,
    hash: u32,
) -> Result<Option<u32>> {
    // Only the deepest frame is searched: runs crossing index nodes are rare enough to scan.
    let Some((_, block, _)) = path.frames.last() else {
        return Ok(None);
    };
    let e = block.entries();
    let Some(pos) = e.iter().position(|x| x.block == lblk) else {
        return Ok(None);
    };
    match e.get(pos + 1) {
        Some(n) if n.hash & 1 == 1 && n.hash & !1 == hash => Ok(Some(n.block)),
        _ => Ok(None),
    }
}

/// Adds an entry to an indexed directory.
fn dx_add<S: DirStore + ?Sized>(s: &mut S, name: &[u8], ino: u32, ft: u8) -> Result<()> {
    let hash = s.hash(name)?.major;
    for _attempt in 0..3 {
        let mut path = dx_path(s, hash)?;
        let raw = s.read_block(path.leaf)?;
        let mut leaf = DirBlock::parse(&raw, opts(s))?;
        if leaf.add_entry(name, ino, ft)? {
            return s.write_leaf(path.leaf, leaf);
        }
        // Make room in the parent first.
        let parent_full = path.frames.last().is_some_and(|f| f.1.is_full());
        if parent_full {
            grow_index(s, &mut path, hash)?;
            continue;
        }
        if leaf.live_entries()?.len() < 2 {
            return Err(Error::InvalidArgument(
                "name too long for a directory block".into(),
            ));
        }
        let new_lblk = s.append_block()?;
        let (mut upper, split) = split_leaf(&mut leaf, |n| {
            s.hash(n).map_err(|_| {
                ext4kit_format::FormatError::corrupt(
                    Structure::DirectoryBlock,
                    CorruptKind::DirentNameLen {
                        offset: 0,
                        name_len: 0,
                        rec_len: 0,
                    },
                )
            })
        })?;
        let target_upper = hash >= split.split_hash;
        let added = if target_upper {
            upper.add_entry(name, ino, ft)?
        } else {
            leaf.add_entry(name, ino, ft)?
        };
        s.write_leaf(path.leaf, leaf)?;
        s.write_leaf(new_lblk, upper)?;
        let Some((plblk, mut pblock, pidx)) = path.frames.pop() else {
            return Err(bad_dx());
        };
        if !pblock.insert_after(
            pidx,
            DxEntry {
                hash: split.index_hash(),
                block: new_lblk,
            },
        )? {
            return Err(bad_dx());
        }
        s.write_dx(plblk, pblock)?;
        if added {
            return Ok(());
        }
        // Did not fit even after the split (very long names): try again from the top.
    }
    Err(Error::NoSpace("directory leaf full after splitting".into()))
}

/// Makes room for one more entry in the deepest index frame of `path`.
fn grow_index<S: DirStore + ?Sized>(s: &mut S, path: &mut DxPath, _hash: u32) -> Result<()> {
    let dxo = dx_opts(s);
    let (me, parent) = s.inos();
    if path.frames.len() == 1 {
        // The root is full and points at leaves: move its entries to a node, add a level.
        let (_, root, _) = &path.frames[0];
        let entries = root.entries();
        let node_lblk = s.append_block()?;
        s.write_dx(node_lblk, DxBlock::new_node(dxo, &entries)?)?;
        let new_root = DxBlock::new_root(
            dxo,
            me,
            parent,
            dir_ft(),
            root.root_info().hash_version,
            1,
            &[DxEntry {
                hash: 0,
                block: node_lblk,
            }],
        )?;
        s.write_dx(0, new_root)?;
        // The node is now full too: split it right away.
        let raw = s.read_block(0)?;
        let root = DxBlock::parse_root(&raw, dxo)?;
        let raw = s.read_block(node_lblk)?;
        let node = DxBlock::parse_node(&raw, dxo)?;
        return split_node(s, (0, root, 0), (node_lblk, node));
    }
    // A full node under the root: split it, unless the root is full as well.
    let (root_lblk, root, ridx) = path.frames[0].clone_parts();
    if root.is_full() {
        return Err(Error::NoSpace("directory index full".into()));
    }
    let (nlblk, node, _) = path.frames[1].clone_parts();
    split_node(s, (root_lblk, root, ridx), (nlblk, node))
}

/// Splits the index node `node` (child `ridx` of the root) into two halves.
fn split_node<S: DirStore + ?Sized>(
    s: &mut S,
    root: (u32, DxBlock, usize),
    node: (u32, DxBlock),
) -> Result<()> {
    let dxo = dx_opts(s);
    let (root_lblk, mut root, ridx) = root;
    let (nlblk, node) = node;
    let entries = node.entries();
    let mid = entries.len() / 2;
    let (left, right) = entries.split_at(mid);
    let new_lblk = s.append_block()?;
    s.write_dx(nlblk, DxBlock::new_node(dxo, left)?)?;
    s.write_dx(new_lblk, DxBlock::new_node(dxo, right)?)?;
    let hash = right.first().map_or(0, |e| e.hash);
    if !root.insert_after(
        ridx,
        DxEntry {
            hash,
            block: new_lblk,
        },
    )? {
        return Err(Error::NoSpace("directory index full".into()));
    }
    s.write_dx(root_lblk, root)
}

trait CloneParts {
    fn clone_parts(&self) -> (u32, DxBlock, usize);
}

impl CloneParts for (u32, DxBlock, usize) {
    fn clone_parts(&self) -> (u32, DxBlock, usize) {
        (self.0, self.1.clone(), self.2)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use ext4kit_format::hash::{HashVersion, dirhash};

    use super::*;

    struct MemDir {
        bs: u32,
        csum: bool,
        blocks: Vec<Vec<u8>>,
        indexed: bool,
        seed: [u32; 4],
    }

    impl DirStore for MemDir {
        fn block_size(&self) -> u32 {
            self.bs
        }
        fn has_csum(&self) -> bool {
            self.csum
        }
        fn can_index(&self) -> bool {
            true
        }
        fn hash(&self, name: &[u8]) -> Result<DirHash> {
            Ok(dirhash(name, HashVersion::HalfMd4Unsigned, &self.seed)?)
        }
        fn root_hash_version(&self) -> u8 {
            1
        }
        fn inos(&self) -> (u32, u32) {
            (12, 2)
        }
        fn nblocks(&self) -> u32 {
            self.blocks.len() as u32
        }
        fn read_block(&mut self, lblk: u32) -> Result<Vec<u8>> {
            Ok(self.blocks[lblk as usize].clone())
        }
        fn write_leaf(&mut self, lblk: u32, mut block: DirBlock) -> Result<()> {
            if self.csum {
                block.init_tail();
                block.update_checksum(1, 12, 0);
            }
            self.blocks[lblk as usize] = block.into_bytes();
            Ok(())
        }
        fn write_dx(&mut self, lblk: u32, mut block: DxBlock) -> Result<()> {
            if self.csum {
                block.update_checksum(1, 12, 0);
            }
            self.blocks[lblk as usize] = block.into_bytes();
            Ok(())
        }
        fn append_block(&mut self) -> Result<u32> {
            self.blocks.push(vec![0; self.bs as usize]);
            Ok(self.blocks.len() as u32 - 1)
        }
        fn is_indexed(&self) -> bool {
            self.indexed
        }
        fn set_indexed(&mut self, on: bool) {
            self.indexed = on;
        }
    }

    /// Every live name in the directory, checking the htree's rules on the way: leaves reached
    /// from the index hold only names hashing into their range.
    fn names(d: &mut MemDir) -> BTreeMap<Vec<u8>, u32> {
        let mut out = BTreeMap::new();
        let o = DirBlockOptions::new(d.bs, d.csum);
        if !d.indexed {
            for l in 0..d.nblocks() {
                let b = DirBlock::parse(&d.read_block(l).unwrap(), o).unwrap();
                for e in b.live_entries().unwrap() {
                    if !e.is_dot_or_dotdot() {
                        assert!(out.insert(e.name.to_vec(), e.inode).is_none());
                    }
                }
            }
            return out;
        }
        let dxo = DxOptions {
            block_size: d.bs,
            has_csum: d.csum,
            largedir: false,
        };
        let root = DxBlock::parse_root(&d.read_block(0).unwrap(), dxo).unwrap();
        if d.csum {
            root.verify_checksum(1, 12, 0).unwrap();
        }
        let levels = root.root_info().indirect_levels;
        let mut leaves: Vec<(u32, u32, u32)> = Vec::new(); // (lo, hi, lblk)
        let re = root.entries();
        for (i, e) in re.iter().enumerate() {
            let hi = re.get(i + 1).map_or(u32::MAX, |n| n.hash);
            let lo = if i == 0 { 0 } else { e.hash };
            if levels == 0 {
                leaves.push((lo, hi, e.block));
            } else {
                let node = DxBlock::parse_node(&d.read_block(e.block).unwrap(), dxo).unwrap();
                let ne = node.entries();
                for (j, x) in ne.iter().enumerate() {
                    let nhi = ne.get(j + 1).map_or(hi, |n| n.hash);
                    let nlo = if j == 0 { lo } else { x.hash };
                    leaves.push((nlo, nhi, x.block));
                }
            }
        }
        for (lo, hi, l) in leaves {
            let b = DirBlock::parse(&d.read_block(l).unwrap(), o).unwrap();
            if d.csum {
                b.verify_checksum(1, 12, 0).unwrap();
            }
            for e in b.live_entries().unwrap() {
                let h = d.hash(e.name).unwrap().major;
                assert!(
                    h >= lo & !1 && (h <= hi),
                    "name hash {h:#x} outside leaf range {lo:#x}..{hi:#x}"
                );
                assert!(out.insert(e.name.to_vec(), e.inode).is_none(), "duplicate");
            }
        }
        out
    }

    fn fresh(bs: u32, csum: bool) -> MemDir {
        let mut d = MemDir {
            bs,
            csum,
            blocks: Vec::new(),
            indexed: false,
            seed: [1, 2, 3, 4],
        };
        build_dir(&mut d, &[]).unwrap();
        d
    }

    #[test]
    fn incremental_adds_and_removes_match_a_model() {
        for (bs, csum) in [(1024u32, true), (4096, true), (1024, false)] {
            let mut d = fresh(bs, csum);
            let mut model: HashMap<Vec<u8>, u32> = HashMap::new();
            for i in 0..20_000u32 {
                let name = format!("file-{i:06}-{}", "x".repeat((i % 37) as usize)).into_bytes();
                add_entry(&mut d, &name, 100 + i, 1).unwrap();
                model.insert(name, 100 + i);
                if i % 3 == 0 {
                    let victim =
                        format!("file-{:06}-{}", i / 2, "x".repeat(((i / 2) % 37) as usize))
                            .into_bytes();
                    let got = remove_entry(&mut d, &victim).unwrap();
                    assert_eq!(
                        got,
                        model.remove(&victim),
                        "removing {}",
                        String::from_utf8_lossy(&victim)
                    );
                }
            }
            assert!(d.indexed);
            let found = names(&mut d);
            assert_eq!(found.len(), model.len());
            for (k, v) in &model {
                assert_eq!(found.get(k), Some(v));
            }
            let root = DxBlock::parse_root(
                &d.blocks[0],
                DxOptions {
                    block_size: bs,
                    has_csum: csum,
                    largedir: false,
                },
            )
            .unwrap();
            if bs == 1024 {
                assert_eq!(
                    root.root_info().indirect_levels,
                    1,
                    "20,000 names in 1K blocks need two levels"
                );
            }
        }
    }

    #[test]
    fn bulk_build_packs_leaves_and_every_name_is_in_its_hash_range() {
        for (bs, n) in [(1024u32, 100_000u32), (4096, 100_000), (4096, 10)] {
            let mut d = MemDir {
                bs,
                csum: true,
                blocks: Vec::new(),
                indexed: false,
                seed: [9, 8, 7, 6],
            };
            let entries: Vec<(Vec<u8>, u32, u8)> = (0..n)
                .map(|i| (format!("n{i}").into_bytes(), 20 + i, 1))
                .collect();
            build_dir(&mut d, &entries).unwrap();
            assert_eq!(d.indexed, n > 10);
            let found = names(&mut d);
            assert_eq!(found.len(), n as usize);
            // Further adds still work on a bulk-built tree.
            add_entry(&mut d, b"late-addition", 7, 1).unwrap();
            assert_eq!(names(&mut d).get(b"late-addition".as_slice()), Some(&7));
        }
    }
}
