//! Directories: reading entries (linear, htree and inline-data directories) and looking names
//! up — in indexed directories through the dx index (`dx_probe` + the collision chain of
//! `ext4_htree_next_block`), never by a linear scan.
//!
//! Every block is checked as it is read: the entry chain (`rec_len`, name lengths, inode
//! numbers), the leaf checksum tail or the dx tail with metadata_csum, the dx root and node
//! headers (fake entries, root info, hash version, limit, count, hash order).
//!
//! # Termination on corrupt directories
//! A dx lookup descends exactly `indirect_levels + 1` steps; a step to a block already on the
//! path (the root or a dx node) is refused as a cycle, and the collision chain visits at most as
//! many leaves as the directory has blocks. Linear reads visit each block once.

use ext4kit_format::dir::{DirBlock, DirBlockOptions};
use ext4kit_format::htree::{self, DX_BLOCK_MASK, DxBlock, DxKind, DxOptions};
use ext4kit_format::inline_data::InlineDir;
use ext4kit_format::inode::{FileType, Inode, InodeFlags};
use ext4kit_format::{CompatFeatures, HashVersion, IncompatFeatures, Structure, dirhash};
use ext4kit_pagecache::ExtentKind;
use std::sync::Arc;

use crate::error::{Corruption, Error, Result, ResultExt, Unsupported};
use crate::fs::Core;
use crate::metacache::MetaBlock;

/// Longest name of a directory entry.
pub const NAME_MAX: usize = 255;

/// A directory entry, owned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DirEntry {
    /// The name (any bytes but `/` and NUL).
    pub name: Vec<u8>,
    /// Inode number.
    pub ino: u32,
    /// File type from the entry (`None` without the filetype feature or for unknown codes).
    pub file_type: Option<FileType>,
}

impl DirEntry {
    /// `true` for `.` and `..`.
    pub fn is_dot_or_dotdot(&self) -> bool {
        self.name == b"." || self.name == b".."
    }
}

/// A directory inode, with what reading it needs.
pub(crate) struct DirInode<'a> {
    pub ino: u32,
    pub inode: &'a Inode,
}

impl Core {
    fn leaf_options(&self) -> DirBlockOptions {
        DirBlockOptions {
            block_size: self.block_size,
            has_tail: self.csum_seed.is_some(),
            max_inode: Some(self.sb.inodes_count()),
        }
    }

    fn dx_options(&self) -> DxOptions {
        DxOptions {
            block_size: self.block_size,
            has_csum: self.csum_seed.is_some(),
            largedir: self.sb.has_incompat(IncompatFeatures::LARGEDIR),
        }
    }

    /// `true` if the directory is hash-indexed (dir_index feature and INDEX flag).
    pub(crate) fn is_dx(&self, inode: &Inode) -> bool {
        self.sb.has_compat(CompatFeatures::DIR_INDEX) && inode.flags().contains(InodeFlags::INDEX)
    }

    fn check_dir_flags(&self, d: &DirInode<'_>) -> Result<()> {
        if !d.inode.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "inode {} is not a directory",
                d.ino
            )));
        }
        if d.inode.flags().contains(InodeFlags::ENCRYPT) {
            return Err(Error::unsupported(Unsupported::Encrypted).with_inode(d.ino));
        }
        Ok(())
    }

    /// Number of blocks of a block-mapped directory.
    fn dir_blocks(&self, d: &DirInode<'_>) -> Result<u64> {
        let n = d.inode.size().div_ceil(u64::from(self.block_size));
        if n > u64::from(u32::MAX) {
            return Err(Error::corrupt(
                Structure::DirectoryBlock,
                Corruption::FileTooLarge {
                    size: d.inode.size(),
                },
            )
            .with_inode(d.ino));
        }
        Ok(n)
    }

    /// (logical, physical) of every written block of a block-mapped directory, in order
    /// (holes skipped a run at a time, so a huge sparse directory costs nothing).
    fn mapped_dir_blocks(&self, d: &DirInode<'_>) -> Result<Vec<(u64, u64)>> {
        let n = self.dir_blocks(d)?;
        let mut out = Vec::new();
        for r in self.runs(d.ino, d.inode, n)? {
            if r.kind == ExtentKind::Written {
                out.extend((0..r.len).map(|k| (r.lblk + k, r.pblk + k)));
            }
        }
        Ok(out)
    }

    /// The physical block and cached bytes of directory block `lblk`, `None` for a hole.
    fn dir_block(&self, d: &DirInode<'_>, lblk: u64) -> Result<Option<Arc<MetaBlock>>> {
        let e = self.map_inode(d.ino, d.inode, lblk, 1)?;
        match e.kind {
            ExtentKind::Written => Ok(Some(self.cache.get(e.pblk).ctx_inode(d.ino)?)),
            ExtentKind::Hole | ExtentKind::Unwritten => Ok(None),
        }
    }

    fn parse_leaf(&self, d: &DirInode<'_>, mb: &MetaBlock) -> Result<DirBlock> {
        let block = mb.block();
        let leaf = DirBlock::parse(&mb.read(), self.leaf_options())
            .ctx_inode(d.ino)
            .ctx_block(block)?;
        if let Some(seed) = self.csum_seed {
            leaf.verify_checksum(seed, d.ino, d.inode.generation())
                .ctx_inode(d.ino)
                .ctx_block(block)?;
        }
        Ok(leaf)
    }

    fn parse_dx(&self, d: &DirInode<'_>, mb: &MetaBlock, kind: DxKind) -> Result<DxBlock> {
        let block = mb.block();
        let bytes = mb.read();
        let dx = match kind {
            DxKind::Root => DxBlock::parse_root(&bytes, self.dx_options()),
            DxKind::Node => DxBlock::parse_node(&bytes, self.dx_options()),
        }
        .ctx_inode(d.ino)
        .ctx_block(block)?;
        if let Some(seed) = self.csum_seed {
            dx.verify_checksum(seed, d.ino, d.inode.generation())
                .ctx_inode(d.ino)
                .ctx_block(block)?;
        }
        Ok(dx)
    }

    fn push_entries(
        &self,
        d: &DirInode<'_>,
        leaf: &DirBlock,
        out: &mut Vec<DirEntry>,
    ) -> Result<()> {
        self.push_entries_with(d, leaf, out, None, None)
    }

    /// [`Core::push_entries`]; with `bad`, an entry whose name no path can hold (empty, `/`,
    /// NUL) is recorded there and skipped instead of failing the block.
    fn push_entries_with(
        &self,
        d: &DirInode<'_>,
        leaf: &DirBlock,
        out: &mut Vec<DirEntry>,
        mut bad: Option<&mut Vec<Error>>,
        block: Option<u64>,
    ) -> Result<()> {
        let filetype = self.sb.has_incompat(IncompatFeatures::FILETYPE);
        for e in leaf.live_entries().ctx_inode(d.ino)? {
            if e.name.is_empty() || e.name.contains(&b'/') || e.name.contains(&0) {
                let mut err = Error::corrupt(
                    Structure::DirectoryBlock,
                    Corruption::BadName {
                        offset: e.offset,
                        name: e.name.to_vec(),
                    },
                )
                .with_inode(d.ino);
                if let Some(b) = block {
                    err = err.with_block(b);
                }
                match bad.as_deref_mut() {
                    Some(b) => {
                        b.push(err);
                        continue;
                    }
                    None => return Err(err),
                }
            }
            out.push(DirEntry {
                name: e.name.to_vec(),
                ino: e.inode,
                file_type: if filetype { e.file_type() } else { None },
            });
        }
        Ok(())
    }

    /// Every entry of a directory, `.` and `..` included, in on-disk order (for indexed
    /// directories: `.`, `..`, then leaf blocks in block order).
    pub(crate) fn read_dir_entries(&self, d: &DirInode<'_>) -> Result<Vec<DirEntry>> {
        self.read_dir_entries_with(d, None)
    }

    /// [`Core::read_dir_entries`]; with `bad`, entries with impossible names are skipped and
    /// recorded there (everything else wrong still fails).
    pub(crate) fn read_dir_entries_with(
        &self,
        d: &DirInode<'_>,
        mut bad: Option<&mut Vec<Error>>,
    ) -> Result<Vec<DirEntry>> {
        match self.read_dir_entries_checked(d, bad.as_deref_mut()) {
            Err(e) if self.salvage_dir(d, &e) => self.read_dir_linear_salvage(d, bad, &e),
            r => r,
        }
    }

    /// Whether a failed read of directory `d` is read again block by block: salvaging, the
    /// directory is block-mapped, and the failure is damage in it.
    fn salvage_dir(&self, d: &DirInode<'_>, e: &Error) -> bool {
        self.salvage
            && e.is_corruption()
            && d.inode.is_dir()
            && !d.inode.flags().contains(InodeFlags::INLINE_DATA)
            && !d.inode.flags().contains(InodeFlags::ENCRYPT)
    }

    /// Records, once per directory, that it is read as a linear directory because of `e`.
    fn warn_linear(&self, d: &DirInode<'_>, e: &Error) {
        let what = if self.is_dx(d.inode) {
            "htree index"
        } else {
            "directory"
        };
        self.warn_once(
            format!("dir {}", d.ino),
            format!(
                "directory inode {}: bad {what}: {e} (reading its blocks in order as a linear directory)",
                d.ino
            ),
        );
    }

    /// A directory leaf block as salvage reads it: checked as usual, or else (the checksum
    /// failing, or an htree block read as a leaf) its entry chain alone.
    fn parse_leaf_salvage(&self, d: &DirInode<'_>, mb: &MetaBlock) -> Result<DirBlock> {
        self.parse_leaf(d, mb).or_else(|e| {
            let opts = DirBlockOptions {
                has_tail: false,
                ..self.leaf_options()
            };
            DirBlock::parse(&mb.read(), opts).map_err(|_| e)
        })
    }

    /// Every entry of `d` read from its blocks in logical order, ignoring any htree index (the
    /// kernel's readdir does this for a bad index without metadata_csum; debugfs `ls` and
    /// `rdump` always do). A block whose entry chain is broken is left out, with a warning.
    fn read_dir_linear_salvage(
        &self,
        d: &DirInode<'_>,
        mut bad: Option<&mut Vec<Error>>,
        why: &Error,
    ) -> Result<Vec<DirEntry>> {
        self.warn_linear(d, why);
        let mut out = Vec::new();
        for (lblk, pblk) in self.mapped_dir_blocks(d)? {
            let leaf = self
                .cache
                .get(pblk)
                .ctx_inode(d.ino)
                .and_then(|mb| self.parse_leaf_salvage(d, &mb));
            let leaf = match leaf {
                Ok(l) => l,
                Err(e) => {
                    self.warn_once(
                        format!("dir {} block {lblk}", d.ino),
                        format!(
                            "directory inode {}, block {lblk}: {e} (its entries are left out)",
                            d.ino
                        ),
                    );
                    continue;
                }
            };
            if let Err(e) =
                self.push_entries_with(d, &leaf, &mut out, bad.as_deref_mut(), Some(pblk))
            {
                self.warn_once(
                    format!("dir {} block {lblk}", d.ino),
                    format!(
                        "directory inode {}, block {lblk}: {e} (its entries are left out)",
                        d.ino
                    ),
                );
            }
        }
        if out.len() < 2 || out[0].name != b"." || out[1].name != b".." {
            self.warn_once(
                format!("dir {} dots", d.ino),
                format!(
                    "directory inode {}: no . and .. at its start (reading the rest)",
                    d.ino
                ),
            );
        }
        Ok(out)
    }

    /// [`Core::read_dir_entries_with`] without salvage.
    fn read_dir_entries_checked(
        &self,
        d: &DirInode<'_>,
        mut bad: Option<&mut Vec<Error>>,
    ) -> Result<Vec<DirEntry>> {
        self.check_dir_flags(d)?;
        let mut out = Vec::new();
        if d.inode.flags().contains(InodeFlags::INLINE_DATA) {
            let dir = self.inline_dir(d)?;
            out.push(DirEntry {
                name: b".".to_vec(),
                ino: d.ino,
                file_type: Some(FileType::Directory),
            });
            out.push(DirEntry {
                name: b"..".to_vec(),
                ino: dir.parent,
                file_type: Some(FileType::Directory),
            });
            self.push_entries_with(d, &dir.head, &mut out, bad.as_deref_mut(), None)?;
            if let Some(t) = &dir.tail {
                self.push_entries_with(d, t, &mut out, bad.as_deref_mut(), None)?;
            }
            return Ok(out);
        }
        let dx = self.is_dx(d.inode);
        let blocks = self.mapped_dir_blocks(d)?;
        if blocks.first().is_none_or(|b| b.0 != 0) {
            return Err(Error::corrupt(
                Structure::DirectoryBlock,
                Corruption::DirectoryHole { lblk: 0 },
            )
            .with_inode(d.ino));
        }
        for (lblk, pblk) in blocks {
            let mb = self.cache.get(pblk).ctx_inode(d.ino)?;
            if dx && lblk == 0 {
                let root = self.parse_dx(d, &mb, DxKind::Root)?;
                let dot = root.self_inode();
                for (name, ino) in [(&b"."[..], dot), (&b".."[..], root.parent_inode())] {
                    out.push(DirEntry {
                        name: name.to_vec(),
                        ino,
                        file_type: Some(FileType::Directory),
                    });
                }
                continue;
            }
            if dx && htree::detect(&mb.read(), self.block_size) == Some(DxKind::Node) {
                continue;
            }
            let leaf = self.parse_leaf(d, &mb)?;
            self.push_entries_with(d, &leaf, &mut out, bad.as_deref_mut(), Some(pblk))?;
        }
        if out.len() < 2 || out[0].name != b"." || out[1].name != b".." {
            return Err(
                Error::corrupt(Structure::DirectoryBlock, Corruption::DirectoryDots)
                    .with_inode(d.ino),
            );
        }
        Ok(out)
    }

    fn inline_dir(&self, d: &DirInode<'_>) -> Result<InlineDir> {
        if !self.sb.has_incompat(IncompatFeatures::INLINE_DATA) {
            return Err(
                Error::corrupt(Structure::InlineData, Corruption::InlineData).with_inode(d.ino),
            );
        }
        InlineDir::parse(d.inode, self.block_size, self.ea_inode).ctx_inode(d.ino)
    }

    /// The parent of directory `d` (its `..` entry: in block 0, or the dx root's, or the
    /// inline header). The one `..` lookup, for reading and for the write side.
    pub(crate) fn dir_parent(&self, d: &DirInode<'_>) -> Result<u32> {
        self.check_dir_flags(d)?;
        if d.inode.flags().contains(InodeFlags::INLINE_DATA) {
            return Ok(self.inline_dir(d)?.parent);
        }
        // `.` and `..` live in block 0, even in indexed directories.
        let mb = self.dir_block(d, 0)?.ok_or_else(|| {
            Error::corrupt(
                Structure::DirectoryBlock,
                Corruption::DirectoryHole { lblk: 0 },
            )
            .with_inode(d.ino)
        })?;
        let dx_root = if self.is_dx(d.inode) {
            match self.parse_dx(d, &mb, DxKind::Root) {
                Ok(r) => Some(r),
                Err(e) if self.salvage_dir(d, &e) => {
                    self.warn_linear(d, &e);
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let parent = if let Some(root) = dx_root {
            root.parent_inode()
        } else {
            let leaf = if self.salvage {
                self.parse_leaf_salvage(d, &mb)?
            } else {
                self.parse_leaf(d, &mb)?
            };
            let entries = leaf.entries().ctx_inode(d.ino)?;
            match entries.get(1) {
                Some(e) if e.name == b".." => e.inode,
                _ => {
                    return Err(Error::corrupt(
                        Structure::DirectoryBlock,
                        Corruption::DirectoryDots,
                    )
                    .with_inode(d.ino)
                    .with_block(mb.block()));
                }
            }
        };
        Ok(parent)
    }

    /// Looks `name` up in a directory: the inode and file type of the entry, or `None`.
    pub(crate) fn lookup_entry(&self, d: &DirInode<'_>, name: &[u8]) -> Result<Option<DirEntry>> {
        self.check_dir_flags(d)?;
        if name.is_empty() || name.len() > NAME_MAX || name.contains(&b'/') || name.contains(&0) {
            return Ok(None);
        }
        if name == b"." {
            return Ok(Some(DirEntry {
                name: name.to_vec(),
                ino: d.ino,
                file_type: Some(FileType::Directory),
            }));
        }
        if name == b".." {
            return Ok(Some(DirEntry {
                name: name.to_vec(),
                ino: self.dir_parent(d)?,
                file_type: Some(FileType::Directory),
            }));
        }
        if d.inode.flags().contains(InodeFlags::INLINE_DATA) {
            let dir = self.inline_dir(d)?;
            for region in std::iter::once(&dir.head).chain(dir.tail.iter()) {
                let mut v = Vec::new();
                self.push_entries(d, region, &mut v)?;
                if let Some(e) = v.into_iter().find(|e| e.name == name) {
                    return Ok(Some(e));
                }
            }
            return Ok(None);
        }
        if d.inode.flags().contains(InodeFlags::CASEFOLD) {
            return Err(Error::unsupported(Unsupported::Other(
                "lookup in a case-insensitive (casefold) directory".into(),
            ))
            .with_inode(d.ino));
        }
        if self.is_dx(d.inode) {
            return match self.dx_lookup(d, name) {
                Err(e) if self.salvage_dir(d, &e) => Ok(self
                    .read_dir_linear_salvage(d, None, &e)?
                    .into_iter()
                    .find(|x| x.name == name)),
                r => r,
            };
        }
        if self.salvage {
            return match self.read_dir_entries_with(d, None) {
                Ok(v) => Ok(v.into_iter().skip(2).find(|x| x.name == name)),
                Err(e) => Err(e),
            };
        }
        for (_, pblk) in self.mapped_dir_blocks(d)? {
            let mb = self.cache.get(pblk).ctx_inode(d.ino)?;
            let leaf = self.parse_leaf(d, &mb)?;
            if leaf.find(name).ctx_inode(d.ino)?.is_some() {
                let mut v = Vec::new();
                self.push_entries(d, &leaf, &mut v)?;
                return Ok(v.into_iter().find(|e| e.name == name));
            }
        }
        Ok(None)
    }

    /// The hash version and seed an indexed directory uses.
    fn dx_hash_of(&self, d: &DirInode<'_>, root: &DxBlock) -> Result<HashVersion> {
        let stored = root.root_info().hash_version;
        match HashVersion::from_disk(stored, self.sb.hash_is_unsigned()) {
            Some(HashVersion::SipHash) | None => Err(Error::unsupported(Unsupported::Format(
                ext4kit_format::IncompatibleKind::HashVersion(stored),
            ))
            .with_inode(d.ino)),
            Some(v) => Ok(v),
        }
    }

    /// The htree hash of `name` in directory `d` (what `debugfs dx_hash` prints for it).
    pub(crate) fn dx_name_hash(
        &self,
        d: &DirInode<'_>,
        name: &[u8],
    ) -> Result<ext4kit_format::DirHash> {
        let mb = self.dir_block(d, 0)?.ok_or_else(|| {
            Error::corrupt(Structure::HtreeNode, Corruption::DirectoryHole { lblk: 0 })
                .with_inode(d.ino)
        })?;
        let root = self.parse_dx(d, &mb, DxKind::Root)?;
        let v = self.dx_hash_of(d, &root)?;
        Ok(dirhash(name, v, &self.sb.hash_seed())?)
    }

    fn dx_lookup(&self, d: &DirInode<'_>, name: &[u8]) -> Result<Option<DirEntry>> {
        let nblocks = self.dir_blocks(d)?;
        let hole = |lblk| {
            Error::corrupt(Structure::HtreeNode, Corruption::DirectoryHole { lblk })
                .with_inode(d.ino)
        };
        let root_mb = self.dir_block(d, 0)?.ok_or_else(|| hole(0))?;
        let root = self.parse_dx(d, &root_mb, DxKind::Root)?;
        let version = self.dx_hash_of(d, &root)?;
        let hash = dirhash(name, version, &self.sb.hash_seed())?.major;
        let levels = usize::from(root.root_info().indirect_levels);
        // The path: (node, entry index) per level, and the dx blocks on it.
        let mut path: Vec<(DxBlock, usize)> = Vec::with_capacity(levels + 1);
        let mut dx_blocks: Vec<u64> = vec![0];
        let child_of = |node: &DxBlock, i: usize| -> Result<u64> {
            let e = node.entries();
            let lblk = u64::from(e.get(i).map_or(0, |x| x.block) & DX_BLOCK_MASK);
            if lblk >= nblocks {
                return Err(Error::corrupt(
                    Structure::HtreeNode,
                    Corruption::HtreeBlockBeyondEnd { lblk },
                )
                .with_inode(d.ino));
            }
            Ok(lblk)
        };
        let mut node = root;
        let mut leaf;
        let mut level = 0;
        loop {
            let i = node.lookup(hash);
            leaf = child_of(&node, i)?;
            path.push((node, i));
            if level == levels {
                break;
            }
            if dx_blocks.contains(&leaf) {
                return Err(Error::corrupt(
                    Structure::HtreeNode,
                    Corruption::HtreeCycle { lblk: leaf },
                )
                .with_inode(d.ino));
            }
            dx_blocks.push(leaf);
            let mb = self.dir_block(d, leaf)?.ok_or_else(|| hole(leaf))?;
            node = self.parse_dx(d, &mb, DxKind::Node)?;
            level += 1;
        }
        let mut visited = 0u64;
        loop {
            if dx_blocks.contains(&leaf) {
                return Err(Error::corrupt(
                    Structure::HtreeNode,
                    Corruption::HtreeCycle { lblk: leaf },
                )
                .with_inode(d.ino));
            }
            visited += 1;
            if visited > nblocks {
                return Err(Error::corrupt(
                    Structure::HtreeNode,
                    Corruption::HtreeCycle { lblk: leaf },
                )
                .with_inode(d.ino));
            }
            let mb = self.dir_block(d, leaf)?.ok_or_else(|| hole(leaf))?;
            let block = self.parse_leaf(d, &mb)?;
            if block.find(name).ctx_inode(d.ino)?.is_some() {
                let mut v = Vec::new();
                self.push_entries(d, &block, &mut v)?;
                return Ok(v.into_iter().find(|e| e.name == name));
            }
            // ext4_htree_next_block: continue only while the next index entry carries the
            // same hash (a collision run split across leaves).
            let mut up = path.len();
            loop {
                let Some(top) = up.checked_sub(1) else {
                    return Ok(None);
                };
                let (n, i) = &mut path[top];
                if *i + 1 < n.entries().len() {
                    *i += 1;
                    break;
                }
                up = top;
            }
            let top = up - 1;
            let (n, i) = &path[top];
            let bhash = n.entries()[*i].hash;
            if (bhash & !1) != hash {
                return Ok(None);
            }
            // Descend to the leftmost leaf under the new entry.
            let mut lblk = child_of(n, *i)?;
            for slot in path.iter_mut().skip(top + 1) {
                if dx_blocks.contains(&lblk) {
                    return Err(Error::corrupt(
                        Structure::HtreeNode,
                        Corruption::HtreeCycle { lblk },
                    )
                    .with_inode(d.ino));
                }
                dx_blocks.push(lblk);
                let mb = self.dir_block(d, lblk)?.ok_or_else(|| hole(lblk))?;
                let nn = self.parse_dx(d, &mb, DxKind::Node)?;
                lblk = child_of(&nn, 0)?;
                *slot = (nn, 0);
            }
            leaf = lblk;
        }
    }
}
