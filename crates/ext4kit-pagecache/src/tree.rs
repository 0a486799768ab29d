//! The page index of a file and its tags (the kernel's xarray with DIRTY / TOWRITE marks).
//!
//! [`PageTree`] stores pages in chunks of 64 consecutive indices found through a hash map, so a
//! lookup costs one hash probe and an array index whatever the file size. [`TagSet`] is a sparse
//! bitmap (4096 indices per chunk, chunks in an ordered map) that answers "next tagged index at
//! or after N" in order, which is what writeback walks. Neither type locks: the mapping's tree
//! mutex guards both.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::page::Page;

const CHUNK_SHIFT: u32 = 6;
const CHUNK: usize = 1 << CHUNK_SHIFT;

/// A multiplicative hash for `u64` keys (chunk numbers are dense small integers).
#[derive(Default, Clone, Copy)]
pub(crate) struct IndexHasher(u64);

impl Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ self.0)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }
}

type Chunk = [Option<Arc<Page>>; CHUNK];

/// Pages of one file by index.
#[derive(Default)]
pub(crate) struct PageTree {
    chunks: HashMap<u64, Box<Chunk>, BuildHasherDefault<IndexHasher>>,
    len: usize,
}

impl PageTree {
    pub(crate) fn get(&self, index: u64) -> Option<&Arc<Page>> {
        self.chunks
            .get(&(index >> CHUNK_SHIFT))
            .and_then(|c| c[(index as usize) & (CHUNK - 1)].as_ref())
    }

    pub(crate) fn get_or_insert_with(
        &mut self,
        index: u64,
        f: impl FnOnce() -> Page,
    ) -> &Arc<Page> {
        let chunk = self
            .chunks
            .entry(index >> CHUNK_SHIFT)
            .or_insert_with(|| Box::new(std::array::from_fn(|_| None)));
        let slot = &mut chunk[(index as usize) & (CHUNK - 1)];
        if slot.is_none() {
            *slot = Some(Arc::new(f()));
            self.len += 1;
        }
        match slot {
            Some(p) => p,
            None => unreachable!("slot filled above"),
        }
    }

    pub(crate) fn remove(&mut self, index: u64) -> Option<Arc<Page>> {
        let key = index >> CHUNK_SHIFT;
        let chunk = self.chunks.get_mut(&key)?;
        let p = chunk[(index as usize) & (CHUNK - 1)].take();
        if p.is_some() {
            self.len -= 1;
            if chunk.iter().all(Option::is_none) {
                self.chunks.remove(&key);
            }
        }
        p
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every page with index `>= first`, in index order.
    pub(crate) fn collect_from(&self, first: u64) -> Vec<Arc<Page>> {
        self.collect(first, usize::MAX)
    }

    /// The first `max` pages (or a few more: whole chunks) with index `>= first`, in index order.
    pub(crate) fn collect(&self, first: u64, max: usize) -> Vec<Arc<Page>> {
        let mut keys: Vec<u64> = self
            .chunks
            .keys()
            .copied()
            .filter(|k| ((k + 1) << CHUNK_SHIFT) > first)
            .collect();
        keys.sort_unstable();
        let mut out = Vec::new();
        for k in keys {
            if out.len() >= max {
                break;
            }
            if let Some(c) = self.chunks.get(&k) {
                out.extend(c.iter().flatten().filter(|p| p.index() >= first).cloned());
            }
        }
        out
    }
}

const TAG_CHUNK_SHIFT: u32 = 12;
const TAG_WORDS: usize = 1 << (TAG_CHUNK_SHIFT - 6);

/// A set of page indices, ordered (a sparse bitmap).
#[derive(Default, Debug)]
pub(crate) struct TagSet {
    chunks: BTreeMap<u64, Box<[u64; TAG_WORDS]>>,
    len: usize,
}

impl TagSet {
    fn split(index: u64) -> (u64, usize, u64) {
        let key = index >> TAG_CHUNK_SHIFT;
        let bit = (index & ((1 << TAG_CHUNK_SHIFT) - 1)) as usize;
        (key, bit / 64, 1u64 << (bit % 64))
    }

    pub(crate) fn insert(&mut self, index: u64) -> bool {
        let (key, word, mask) = TagSet::split(index);
        let c = self
            .chunks
            .entry(key)
            .or_insert_with(|| Box::new([0u64; TAG_WORDS]));
        if c[word] & mask != 0 {
            return false;
        }
        c[word] |= mask;
        self.len += 1;
        true
    }

    pub(crate) fn remove(&mut self, index: u64) -> bool {
        let (key, word, mask) = TagSet::split(index);
        let Some(c) = self.chunks.get_mut(&key) else {
            return false;
        };
        if c[word] & mask == 0 {
            return false;
        }
        c[word] &= !mask;
        self.len -= 1;
        if c.iter().all(|w| *w == 0) {
            self.chunks.remove(&key);
        }
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The smallest index in `start..=end`.
    pub(crate) fn next_in(&self, start: u64, end: u64) -> Option<u64> {
        if start > end {
            return None;
        }
        let (skey, sword, _) = TagSet::split(start);
        for (&key, c) in self.chunks.range(skey..) {
            let base = key << TAG_CHUNK_SHIFT;
            if base > end {
                return None;
            }
            let first_word = if key == skey { sword } else { 0 };
            for (w, &bits) in c.iter().enumerate().skip(first_word) {
                let mut bits = bits;
                if key == skey && w == sword {
                    bits &= !0u64 << (start % 64);
                }
                if bits != 0 {
                    let idx = base + (w as u64) * 64 + u64::from(bits.trailing_zeros());
                    return (idx <= end).then_some(idx);
                }
            }
        }
        None
    }

    /// Adds every index of `other` in `start..=end` (tagging DIRTY pages TOWRITE).
    pub(crate) fn copy_range_from(&mut self, other: &TagSet, start: u64, end: u64) {
        let mut i = start;
        while let Some(idx) = other.next_in(i, end) {
            self.insert(idx);
            if idx == u64::MAX {
                break;
            }
            i = idx + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_iterate_in_order_across_chunks() {
        let mut t = TagSet::default();
        for i in [5u64, 4095, 4096, 70_000, 1 << 40, 3] {
            assert!(t.insert(i));
        }
        assert!(!t.insert(5));
        assert_eq!(t.len(), 6);
        let mut v = Vec::new();
        let mut i = 0;
        while let Some(x) = t.next_in(i, u64::MAX) {
            v.push(x);
            i = x + 1;
        }
        assert_eq!(v, vec![3, 5, 4095, 4096, 70_000, 1 << 40]);
        assert_eq!(t.next_in(6, 4094), None);
        assert_eq!(t.next_in(6, 4095), Some(4095));
        assert!(t.remove(4096));
        assert_eq!(t.next_in(4096, u64::MAX), Some(70_000));
        let mut u = TagSet::default();
        u.copy_range_from(&t, 4, 70_000);
        assert_eq!(u.len(), 3);
    }

    #[test]
    fn page_tree_finds_inserts_and_removes() {
        let mut t = PageTree::default();
        for i in [0u64, 63, 64, 1000, 1 << 30] {
            t.get_or_insert_with(i, || Page::new(i, 4096, 4, true));
        }
        assert_eq!(t.len(), 5);
        assert_eq!(t.get(64).map(|p| p.index()), Some(64));
        assert!(t.get(65).is_none());
        assert_eq!(
            t.collect_from(64)
                .iter()
                .map(|p| p.index())
                .collect::<Vec<_>>(),
            vec![64, 1000, 1 << 30]
        );
        assert!(t.remove(63).is_some());
        assert!(t.remove(63).is_none());
        assert_eq!(t.len(), 4);
    }
}
