//! Logical → physical block mapping: extent trees and ext2/ext3 indirect block maps (the
//! lookups behind the page cache's `BlockMapper`, see [`crate::file::mapper`]), and the list of a file's data runs and holes
//! (`cp` keeps sparse files sparse with it).
//!
//! Lookups return an [`Extent`] of the page cache's vocabulary: a written or unwritten run
//! starting at the asked block, or a hole reaching up to the next mapped block (clamped to the
//! asked length).
//!
//! # Termination on corrupt trees
//! An extent lookup descends at most `eh_depth` (≤ 5) levels and each child must have exactly
//! its parent's depth minus one, so a child pointing back at an ancestor fails the depth check.
//! The full walk ([`Core::extent_runs`]) also refuses to visit a block twice and to visit more
//! nodes than the filesystem has blocks. Indirect maps have a fixed depth (≤ 3).

use ext4kit_format::Structure;
use ext4kit_format::extent::{ExtentNode, NodeLocation};
use ext4kit_format::indirect;
use ext4kit_format::inode::{Inode, InodeFlags};
use ext4kit_pagecache::{Extent, ExtentKind};

use crate::error::{Corruption, Error, Result, ResultExt};
use crate::extent::tree as extent_tree;
use crate::fs::Core;

/// One past the largest logical block an extent tree can map.
pub const EXTENT_LBLK_END: u64 = 1 << 32;

fn hole(lblk: u64, len: u64) -> Extent {
    Extent {
        lblk,
        len: len.max(1),
        pblk: 0,
        kind: ExtentKind::Hole,
    }
}

impl Core {
    /// Maps logical block `lblk` of `inode` (number `ino`): the run starting there, at most
    /// `len` blocks (a hole reaches up to the next mapped block).
    pub fn map_inode(&self, ino: u32, inode: &Inode, lblk: u64, len: u64) -> Result<Extent> {
        let len = len.max(1);
        if inode.flags().contains(InodeFlags::INLINE_DATA) {
            return Err(Error::InvalidArgument(format!(
                "inode {ino} keeps its data inline; it has no blocks to map"
            )));
        }
        if inode.flags().contains(InodeFlags::EXTENTS) {
            self.map_extent(ino, inode, lblk, len)
        } else {
            self.map_indirect(ino, inode, lblk, len)
        }
    }

    fn map_extent(&self, ino: u32, inode: &Inode, lblk: u64, len: u64) -> Result<Extent> {
        if lblk >= EXTENT_LBLK_END {
            return Ok(hole(lblk, len));
        }
        let root = ExtentNode::parse_root(inode.block_area()).ctx_inode(ino)?;
        let path = extent_tree::descend(root, lblk, |b, d| self.read_extent_node(ino, inode, b, d))
            .map_err(|e| e.with_inode(ino))?;
        // The leaf's range ends where the next subtree starts.
        let bound_end = extent_tree::next_key(&path).map_or(EXTENT_LBLK_END, u64::from);
        let Some(leaf) = path.last() else {
            return Ok(hole(lblk, len));
        };
        for e in leaf.node.extents() {
            if e.logical_end() <= lblk {
                continue;
            }
            let start = u64::from(e.logical_block);
            if start > lblk {
                let end = start.min(bound_end);
                return Ok(hole(lblk, (end.saturating_sub(lblk)).min(len)));
            }
            self.check_range(Structure::ExtentTree, e.physical_block, u64::from(e.len))
                .ctx_inode(ino)?;
            let off = lblk - start;
            let n = (e.logical_end() - lblk).min(len);
            return Ok(Extent {
                lblk,
                len: n,
                pblk: e.physical_block + off,
                kind: if e.unwritten {
                    ExtentKind::Unwritten
                } else {
                    ExtentKind::Written
                },
            });
        }
        Ok(hole(lblk, bound_end.saturating_sub(lblk).min(len)))
    }

    /// Reads and checks one extent tree block at `depth`.
    fn read_extent_node(
        &self,
        ino: u32,
        inode: &Inode,
        block: u64,
        depth: u16,
    ) -> Result<ExtentNode> {
        self.read_extent_block(ino, inode.generation(), block, depth)
    }

    /// Reads and checks tree block `block` of inode `ino` (generation `generation`, for the
    /// checksum) expected at `depth`: in range, parsed, depth as expected, checksum verified. The
    /// one reader of extent tree blocks, for lookups, walks and the write side's store.
    pub(crate) fn read_extent_block(
        &self,
        ino: u32,
        generation: u32,
        block: u64,
        depth: u16,
    ) -> Result<ExtentNode> {
        self.check_range(Structure::ExtentTree, block, 1)
            .ctx_inode(ino)?;
        let data = self.cache.get(block).ctx_inode(ino)?;
        let node = ExtentNode::parse(&data.read(), NodeLocation::Block, Some(depth))
            .ctx_inode(ino)
            .ctx_block(block)?;
        if let Some(seed) = self.csum_seed {
            node.verify_checksum(seed, ino, generation)
                .ctx_inode(ino)
                .ctx_block(block)?;
        }
        Ok(node)
    }

    fn map_indirect(&self, ino: u32, inode: &Inode, lblk: u64, len: u64) -> Result<Extent> {
        let bs = self.block_size;
        let max = indirect::max_blocks(bs);
        if lblk >= max {
            return Ok(hole(lblk, len));
        }
        let path = indirect::path_for(lblk, bs).ctx_inode(ino)?;
        let p = indirect::pointers_per_block(bs);
        let depth = path.depth() as u32;
        // Blocks covered by the pointer at the current level, and lblk's position below it.
        let mut span = p.pow(depth);
        let offs = path.offsets();
        let mut pos: u64 = offs.iter().fold(0u64, |acc, &o| acc * p + u64::from(o));
        let mut ptr = u64::from(inode.block_word(path.slot()));
        if depth == 0 {
            // Direct blocks: scan i_block[slot..12].
            let words: Vec<u64> = (0..indirect::DIRECT_BLOCKS as usize)
                .map(|i| u64::from(inode.block_word(i)))
                .collect();
            return self.run_in(ino, &words, path.slot(), lblk, len);
        }
        for level in 0..depth {
            if ptr == 0 {
                return Ok(hole(lblk, (span - pos).min(len)));
            }
            self.check_range(Structure::IndirectMap, ptr, 1)
                .ctx_inode(ino)?;
            let data = self.cache.get(ptr).ctx_inode(ino)?;
            span /= p;
            let index = (pos / span) as usize;
            pos %= span;
            if level + 1 == depth {
                let bytes = data.read();
                let words: Vec<u64> = (0..p as u32)
                    .map(|i| u64::from(indirect::pointer(&bytes, i)))
                    .collect();
                return self.run_in(ino, &words, index, lblk, len).ctx_block(ptr);
            }
            ptr = u64::from(indirect::pointer(&data.read(), index as u32));
        }
        Ok(hole(lblk, len))
    }

    /// The run starting at `words[i]` (block `lblk`): contiguous data blocks or zero pointers.
    fn run_in(&self, ino: u32, words: &[u64], i: usize, lblk: u64, len: u64) -> Result<Extent> {
        let first = words.get(i).copied().unwrap_or(0);
        let mut n = 1u64;
        while n < len {
            let Some(&w) = words.get(i + n as usize) else {
                break;
            };
            let cont = if first == 0 { w == 0 } else { w == first + n };
            if !cont {
                break;
            }
            n += 1;
        }
        if first == 0 {
            return Ok(hole(lblk, n));
        }
        self.check_range(Structure::IndirectMap, first, n)
            .ctx_inode(ino)?;
        Ok(Extent {
            lblk,
            len: n,
            pblk: first,
            kind: ExtentKind::Written,
        })
    }

    /// Every run of `inode` (holes included) from block 0 to `end_lblk`, in order.
    pub fn runs(&self, ino: u32, inode: &Inode, end_lblk: u64) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        if inode.flags().contains(InodeFlags::EXTENTS) {
            let end = end_lblk.min(EXTENT_LBLK_END);
            let mut next = 0u64;
            for e in self.extent_runs(ino, inode)? {
                if e.lblk >= end {
                    break;
                }
                if e.lblk > next {
                    out.push(hole(next, e.lblk - next));
                }
                let len = e.len.min(end - e.lblk);
                out.push(Extent { len, ..e });
                next = e.lblk + len;
            }
            if next < end {
                out.push(hole(next, end - next));
            }
            return Ok(out);
        }
        let mut lblk = 0;
        while lblk < end_lblk {
            let e = self.map_inode(ino, inode, lblk, end_lblk - lblk)?;
            match (out.last_mut(), e.kind) {
                (
                    Some(Extent {
                        kind: ExtentKind::Hole,
                        len,
                        ..
                    }),
                    ExtentKind::Hole,
                ) => *len += e.len,
                _ => out.push(e),
            }
            lblk += e.len;
        }
        Ok(out)
    }

    /// Every leaf extent of an extent-mapped inode, in logical order (depth-first walk that
    /// refuses cycles and overlapping extents).
    pub fn extent_runs(&self, ino: u32, inode: &Inode) -> Result<Vec<Extent>> {
        let root = ExtentNode::parse_root(inode.block_area()).ctx_inode(ino)?;
        let mut out: Vec<Extent> = Vec::new();
        extent_tree::walk_tree(
            root,
            self.sb.blocks_count(),
            |b, d| self.read_extent_node(ino, inode, b, d),
            |node, _, _| {
                if !node.is_leaf() {
                    return Ok(());
                }
                for e in node.extents() {
                    self.check_range(Structure::ExtentTree, e.physical_block, u64::from(e.len))?;
                    let lblk = u64::from(e.logical_block);
                    if out.last().is_some_and(|p| p.lblk + p.len > lblk) {
                        return Err(Error::corrupt(
                            Structure::ExtentTree,
                            Corruption::Format(ext4kit_format::CorruptKind::ExtentOrder {
                                index: 0,
                            }),
                        ));
                    }
                    out.push(Extent {
                        lblk,
                        len: u64::from(e.len),
                        pblk: e.physical_block,
                        kind: if e.unwritten {
                            ExtentKind::Unwritten
                        } else {
                            ExtentKind::Written
                        },
                    });
                }
                Ok(())
            },
        )
        .map_err(|e| e.with_inode(ino))?;
        Ok(out)
    }
}
