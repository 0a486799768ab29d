//! The set of used blocks while a new filesystem is laid out, kept as
//! disjoint intervals so that a 16 TiB filesystem (2^32 blocks, a few thousand
//! used runs) costs kilobytes, not a 512 MiB bitmap.
//!
//! The search functions reproduce the results of libext2fs' allocators
//! (`ext2fs_get_free_blocks2`, `ext2fs_new_block2`, `ext2fs_new_range`), so
//! that the tables, directories and journal land where `mke2fs` puts them.
//! Each jumps over whole used intervals instead of testing block by block.

/// Used blocks of a filesystem of `total` blocks whose first block is `first`.
#[derive(Debug, Clone)]
pub(crate) struct BlockSet {
    /// (start, end exclusive), sorted; intervals never overlap nor touch. A sorted vector, not
    /// a tree: mkfs inserts mostly in ascending order and probes a lot, and binary search over
    /// a few thousand pairs beats a B-tree's node walk (mkfs of 1 TiB spent a quarter of its
    /// time in `BTreeMap` range lookups).
    runs: Vec<(u64, u64)>,
    first: u64,
    total: u64,
}

impl BlockSet {
    /// An empty set for blocks `first..total`.
    pub fn new(first: u64, total: u64) -> BlockSet {
        BlockSet {
            runs: Vec::new(),
            first,
            total,
        }
    }

    /// Index of the first run starting at or after `x`.
    fn at_or_after(&self, x: u64) -> usize {
        self.runs.partition_point(|r| r.0 < x)
    }

    /// Marks `start..start + len` used. Returns `false` (and changes nothing)
    /// if any of it is already used or outside the filesystem.
    #[must_use]
    pub fn insert(&mut self, start: u64, len: u64) -> bool {
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        if len == 0
            || start < self.first
            || end > self.total
            || self.first_used_in(start, end).is_some()
        {
            return false;
        }
        let i = self.at_or_after(start);
        let joins_prev = i > 0 && self.runs[i - 1].1 == start;
        let joins_next = i < self.runs.len() && self.runs[i].0 == end;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.runs[i - 1].1 = self.runs[i].1;
                self.runs.remove(i);
            }
            (true, false) => self.runs[i - 1].1 = end,
            (false, true) => self.runs[i].0 = start,
            (false, false) => self.runs.insert(i, (start, end)),
        }
        true
    }

    /// The first used interval (clipped to nothing) that meets `start..end`.
    pub fn first_used_in(&self, start: u64, end: u64) -> Option<(u64, u64)> {
        if start >= end {
            return None;
        }
        let i = self.runs.partition_point(|r| r.0 <= start);
        if i > 0 && self.runs[i - 1].1 > start {
            return Some(self.runs[i - 1]);
        }
        self.runs.get(i).copied().filter(|r| r.0 < end)
    }

    /// Used blocks in `start..end`.
    pub fn count_used(&self, start: u64, end: u64) -> u64 {
        self.used_runs(start, end).iter().map(|(s, e)| e - s).sum()
    }

    /// All used blocks.
    pub fn total_used(&self) -> u64 {
        self.runs.iter().map(|(s, e)| e - s).sum()
    }

    /// Used intervals meeting `start..end`, clipped to it.
    pub fn used_runs(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        if start >= end {
            return v;
        }
        let i = self.at_or_after(start);
        if i > 0 && self.runs[i - 1].1 > start {
            v.push((start, self.runs[i - 1].1.min(end)));
        }
        v.extend(
            self.runs[i..]
                .iter()
                .take_while(|r| r.0 < end)
                .map(|&(s, e)| (s, e.min(end))),
        );
        v
    }

    /// First free block in `from..to`.
    fn first_free_in(&self, from: u64, to: u64) -> Option<u64> {
        let mut b = from;
        while b < to {
            match self.first_used_in(b, b + 1) {
                None => return Some(b),
                Some((_, e)) => b = e,
            }
        }
        None
    }

    /// `ext2fs_get_free_blocks2(start, finish, num)`: the first `b`, scanning
    /// from `start` (0 means the first data block) towards `finish` (0 means a
    /// full circle), such that `b..b + num` is free. When `finish > start` the
    /// scan does not wrap; a candidate may extend past `finish`.
    pub fn get_free_blocks(&self, start: u64, finish: u64, num: u64) -> Option<u64> {
        let num = num.max(1);
        let finish = if finish == 0 { start } else { finish };
        let mut b = if start == 0 { self.first } else { start };
        let mut wrapped = false;
        loop {
            if b.checked_add(num).is_none_or(|end| end > self.total) {
                if finish > start || wrapped {
                    return None;
                }
                b = self.first;
                wrapped = true;
            }
            let end = b + num;
            match self.first_used_in(b, end) {
                None => return Some(b),
                Some((_, used_end)) => {
                    // Every candidate up to `used_end` meets that run; the C
                    // loop stops when it steps onto `finish`.
                    if finish > b && finish <= used_end {
                        return None;
                    }
                    b = used_end;
                }
            }
        }
    }

    /// `ext2fs_new_block2(goal)`: the first free block at or after `goal`,
    /// else the first free block from the start.
    pub fn new_block(&self, goal: u64) -> Option<u64> {
        let goal = if goal == 0 || goal >= self.total {
            self.first
        } else {
            goal
        };
        self.first_free_in(goal, self.total)
            .or_else(|| self.first_free_in(self.first, goal))
    }

    /// `ext2fs_new_range(0, goal, len)`: the first free run at or after `goal`
    /// (wrapping to the start), cut at `len` blocks: `(start, length)`.
    pub fn new_range(&self, goal: u64, len: u64) -> Option<(u64, u64)> {
        if len == 0 {
            return None;
        }
        let start = self.new_block(goal)?;
        let limit = start.saturating_add(len).min(self.total);
        let end = match self.first_used_in(start, limit) {
            Some((s, _)) => s,
            None => limit,
        };
        Some((start, end - start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Block-by-block model of `ext2fs_get_free_blocks2`.
    fn model_get_free(used: &[bool], first: u64, start: u64, finish: u64, num: u64) -> Option<u64> {
        let total = used.len() as u64;
        let mut b = if start == 0 { first } else { start };
        let finish = if finish == 0 { start } else { finish };
        let num = num.max(1);
        let mut steps = 0;
        loop {
            if b + num > total {
                if finish > start {
                    return None;
                }
                b = first;
            }
            if (b..b + num).all(|x| !used[x as usize]) {
                return Some(b);
            }
            b += 1;
            steps += 1;
            if b == finish || steps > 4 * total {
                return None;
            }
        }
    }

    #[test]
    fn matches_block_by_block_model() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..200 {
            let total = 64 + rnd() % 64;
            let first = round % 2;
            let mut set = BlockSet::new(first, total);
            let mut used = vec![false; total as usize];
            used[0] = first == 1;
            for _ in 0..(rnd() % 12) {
                let s = first + rnd() % (total - first);
                let l = 1 + rnd() % 6;
                if s + l <= total && (s..s + l).all(|x| !used[x as usize]) {
                    assert!(set.insert(s, l));
                    (s..s + l).for_each(|x| used[x as usize] = true);
                } else {
                    assert!(!set.insert(s, l));
                }
            }
            for _ in 0..50 {
                let start = rnd() % total;
                let finish = rnd() % (total + 1);
                let num = 1 + rnd() % 5;
                if finish <= start && finish != 0 {
                    continue; // wrapping scans are only used with finish == 0
                }
                assert_eq!(
                    set.get_free_blocks(start, finish, num),
                    model_get_free(&used, first, start, finish, num),
                    "start {start} finish {finish} num {num} used {used:?}"
                );
                let goal = rnd() % total;
                let model_new = (goal.max(first)..total)
                    .chain(first..goal.max(first))
                    .find(|&x| !used[x as usize]);
                assert_eq!(set.new_block(goal), model_new);
                let c = set.count_used(start, finish.max(start));
                let m = (start.max(first)..finish.max(start))
                    .filter(|&x| used[x as usize])
                    .count() as u64;
                assert_eq!(c, m);
            }
        }
    }

    #[test]
    fn runs_merge() {
        let mut s = BlockSet::new(0, 100);
        assert!(s.insert(10, 5));
        assert!(s.insert(15, 5));
        assert!(s.insert(5, 5));
        assert_eq!(s.used_runs(0, 100), [(5, 20)]);
        assert!(!s.insert(19, 2));
        assert_eq!(s.new_range(0, 10), Some((0, 5)));
        assert_eq!(s.new_range(6, 100), Some((20, 80)));
        assert_eq!(s.total_used(), 15);
    }
}
