//! [`SimpleMapper`]: an in-memory [`BlockMapper`] for tests and benchmarks.
//!
//! Files are maps of logical extents; free space is a set of free physical runs. Allocation is
//! goal-directed (right after the file's previous extent) and contiguous where it can be. Knobs
//! make it hostile on purpose: a cap on blocks per allocation ("may map fewer blocks than
//! asked"), a gap between allocations (physically discontiguous files), and a failure of the
//! N-th allocating call. Hooks run a test's code at the start of `reserve`, `map_blocks` and
//! `convert_unwritten` (to fail the call, check something, or race another thread against it).
//! It keeps the books a test asserts on: reservations (which must balance to zero after sync),
//! every conversion, the on-disk sizes.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::mapper::{BlockMapper, Extent, ExtentKind, MapError, MapFlags, UnwrittenRange};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileExtent {
    pblk: u64,
    len: u64,
    unwritten: bool,
}

/// One conversion request as the mapper saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversionRecord {
    /// Inode.
    pub ino: u64,
    /// Ranges converted.
    pub ranges: Vec<UnwrittenRange>,
}

#[derive(Debug, Default)]
struct State {
    free: BTreeMap<u64, u64>,
    files: HashMap<u64, BTreeMap<u64, FileExtent>>,
    reserved: HashMap<u64, u64>,
    total_reserved: u64,
    disksize: HashMap<u64, u64>,
    conversions: Vec<ConversionRecord>,
    errors: Vec<String>,
    alloc_calls: u64,
    fail_alloc_at: Option<u64>,
    max_alloc: Option<u64>,
    gap: u64,
}

/// Runs at the start of [`SimpleMapper::reserve`] with (mapper, ino, count); an error fails the
/// call with it.
pub type ReserveHook = dyn Fn(&SimpleMapper, u64, u64) -> Result<(), MapError> + Send + Sync;

/// Runs at the start of [`SimpleMapper::map_blocks`] with (mapper, ino, lblk, len, flags); an
/// error fails the call with it.
pub type MapBlocksHook =
    dyn Fn(&SimpleMapper, u64, u64, u64, MapFlags) -> Result<(), MapError> + Send + Sync;

/// Runs at the start of [`SimpleMapper::convert_unwritten`] with (mapper, ino, ranges); an
/// error fails the conversion with it (nothing is converted).
pub type ConvertHook =
    dyn Fn(&SimpleMapper, u64, &[UnwrittenRange]) -> Result<(), MapError> + Send + Sync;

#[derive(Default, Clone)]
struct Hooks {
    reserve: Option<Arc<ReserveHook>>,
    map_blocks: Option<Arc<MapBlocksHook>>,
    convert: Option<Arc<ConvertHook>>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("reserve", &self.reserve.is_some())
            .field("map_blocks", &self.map_blocks.is_some())
            .field("convert", &self.convert.is_some())
            .finish()
    }
}

/// An in-memory block allocator implementing [`BlockMapper`].
#[derive(Debug, Default)]
pub struct SimpleMapper {
    st: Mutex<State>,
    /// Taken only to clone a hook out: a hook runs with no lock of the mapper held, so it may
    /// call the mapper (or the cache) itself.
    hooks: Mutex<Hooks>,
}

impl SimpleMapper {
    /// A mapper owning physical blocks `first..first+count`.
    pub fn new(first: u64, count: u64) -> SimpleMapper {
        let mut free = BTreeMap::new();
        if count > 0 {
            free.insert(first, count);
        }
        SimpleMapper {
            st: Mutex::new(State {
                free,
                ..State::default()
            }),
            hooks: Mutex::new(Hooks::default()),
        }
    }

    /// Runs `hook` at the start of every `reserve` call (replacing any earlier one).
    pub fn on_reserve(
        &self,
        hook: impl Fn(&SimpleMapper, u64, u64) -> Result<(), MapError> + Send + Sync + 'static,
    ) {
        self.hooks.lock().reserve = Some(Arc::new(hook));
    }

    /// Runs `hook` at the start of every `map_blocks` call (replacing any earlier one).
    pub fn on_map_blocks(
        &self,
        hook: impl Fn(&SimpleMapper, u64, u64, u64, MapFlags) -> Result<(), MapError>
        + Send
        + Sync
        + 'static,
    ) {
        self.hooks.lock().map_blocks = Some(Arc::new(hook));
    }

    /// Runs `hook` at the start of every `convert_unwritten` call (replacing any earlier one).
    pub fn on_convert(
        &self,
        hook: impl Fn(&SimpleMapper, u64, &[UnwrittenRange]) -> Result<(), MapError>
        + Send
        + Sync
        + 'static,
    ) {
        self.hooks.lock().convert = Some(Arc::new(hook));
    }

    /// Removes every hook.
    pub fn clear_hooks(&self) {
        *self.hooks.lock() = Hooks::default();
    }

    /// Maps `ino`'s blocks `lblk..lblk+len` to `pblk..` directly (test setup). The physical
    /// blocks must be free.
    pub fn map_fixed(&self, ino: u64, lblk: u64, pblk: u64, len: u64, unwritten: bool) {
        let mut st = self.st.lock();
        let (rs, rl) = st
            .free
            .range(..=pblk)
            .next_back()
            .map(|(s, l)| (*s, *l))
            .filter(|(s, l)| pblk + len <= s + l)
            .expect("map_fixed: physical blocks are not free");
        st.free.remove(&rs);
        if pblk > rs {
            st.free.insert(rs, pblk - rs);
        }
        if rs + rl > pblk + len {
            st.free.insert(pblk + len, rs + rl - pblk - len);
        }
        st.insert_extent(
            ino,
            lblk,
            FileExtent {
                pblk,
                len,
                unwritten,
            },
        );
    }

    /// Caps every allocation at `n` blocks (forces partial mappings).
    pub fn set_max_alloc(&self, n: Option<u64>) {
        self.st.lock().max_alloc = n;
    }

    /// Leaves `gap` free blocks after every allocation (forces physical discontiguity).
    pub fn set_gap(&self, gap: u64) {
        self.st.lock().gap = gap;
    }

    /// The `nth` (0-based, from now) allocating `map_blocks` call fails with
    /// [`MapError::no_space`].
    pub fn fail_alloc_at(&self, nth: Option<u64>) {
        let mut st = self.st.lock();
        let base = st.alloc_calls;
        st.fail_alloc_at = nth.map(|n| base + n);
    }

    /// Blocks reserved and not consumed or released, over all files.
    pub fn total_reserved(&self) -> u64 {
        self.st.lock().total_reserved
    }

    /// Physical block of `ino`'s logical block `lblk` and whether it is unwritten.
    pub fn lookup(&self, ino: u64, lblk: u64) -> Option<(u64, bool)> {
        let st = self.st.lock();
        let f = st.files.get(&ino)?;
        let (&start, e) = f.range(..=lblk).next_back()?;
        (lblk < start + e.len).then(|| (e.pblk + (lblk - start), e.unwritten))
    }

    /// Every extent of `ino` as (lblk, pblk, len, unwritten).
    pub fn extents(&self, ino: u64) -> Vec<(u64, u64, u64, bool)> {
        let st = self.st.lock();
        st.files
            .get(&ino)
            .map(|f| {
                f.iter()
                    .map(|(&l, e)| (l, e.pblk, e.len, e.unwritten))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Conversions requested so far.
    pub fn conversions(&self) -> Vec<ConversionRecord> {
        self.st.lock().conversions.clone()
    }

    /// On-disk size of `ino` as last recorded.
    pub fn disksize(&self, ino: u64) -> u64 {
        self.st.lock().disksize.get(&ino).copied().unwrap_or(0)
    }

    /// Inconsistencies the mapper noticed (double release, conversion of unmapped blocks, ...).
    pub fn errors(&self) -> Vec<String> {
        self.st.lock().errors.clone()
    }

    /// Free blocks.
    pub fn free_blocks(&self) -> u64 {
        self.st.lock().free.values().sum()
    }
}

impl State {
    fn free_run(&mut self, start: u64, len: u64) {
        // Merge with neighbours.
        let mut s = start;
        let mut l = len;
        if let Some((&ps, &pl)) = self.free.range(..start).next_back() {
            if ps + pl == start {
                self.free.remove(&ps);
                s = ps;
                l += pl;
            }
        }
        if let Some(&nl) = self.free.get(&(start + len)) {
            self.free.remove(&(start + len));
            l += nl;
        }
        self.free.insert(s, l);
    }

    fn allocate(&mut self, goal: u64, want: u64) -> Option<(u64, u64)> {
        let want = self.max_alloc.map_or(want, |m| want.min(m)).max(1);
        // The free run containing the goal, else the first one after it, else the first.
        let pick = self
            .free
            .range(..=goal)
            .next_back()
            .filter(|(s, l)| goal < *s + *l)
            .map(|(s, l)| (*s, *l, goal))
            .or_else(|| self.free.range(goal..).next().map(|(s, l)| (*s, *l, *s)))
            .or_else(|| self.free.iter().next().map(|(s, l)| (*s, *l, *s)))?;
        let (rs, rl, at) = pick;
        let avail = rs + rl - at;
        let got = want.min(avail);
        self.free.remove(&rs);
        if at > rs {
            self.free.insert(rs, at - rs);
        }
        let tail_start = at + got;
        let tail_len = rs + rl - tail_start;
        if tail_len > 0 {
            self.free.insert(tail_start, tail_len);
        }
        Some((at, got))
    }

    fn insert_extent(&mut self, ino: u64, lblk: u64, e: FileExtent) {
        let f = self.files.entry(ino).or_default();
        f.insert(lblk, e);
        // Merge with the previous extent when contiguous in both spaces and of the same kind.
        if let Some((&pl, &pe)) = f.range(..lblk).next_back() {
            if pl + pe.len == lblk && pe.pblk + pe.len == e.pblk && pe.unwritten == e.unwritten {
                f.remove(&lblk);
                if let Some(x) = f.get_mut(&pl) {
                    x.len += e.len;
                }
            }
        }
    }

    /// Splits extents of `ino` so that `at` starts an extent (if it lies inside one).
    fn split_at(&mut self, ino: u64, at: u64) {
        let Some(f) = self.files.get_mut(&ino) else {
            return;
        };
        let hit = f.range(..at).next_back().map(|(&s, &e)| (s, e));
        if let Some((s, e)) = hit {
            if at < s + e.len {
                let head = at - s;
                f.insert(s, FileExtent { len: head, ..e });
                f.insert(
                    at,
                    FileExtent {
                        pblk: e.pblk + head,
                        len: e.len - head,
                        unwritten: e.unwritten,
                    },
                );
            }
        }
    }

    fn goal_for(&self, ino: u64, lblk: u64) -> u64 {
        match self
            .files
            .get(&ino)
            .and_then(|f| f.range(..lblk).next_back())
        {
            Some((&s, e)) => e.pblk + (lblk - s) + self.gap,
            None => self.free.keys().next().copied().unwrap_or(0) + (ino % 8) * 4096,
        }
    }
}

impl BlockMapper for SimpleMapper {
    fn reserve(&self, ino: u64, count: u64) -> Result<(), MapError> {
        let hook = self.hooks.lock().reserve.clone();
        if let Some(hook) = hook {
            hook(self, ino, count)?;
        }
        let mut st = self.st.lock();
        let free: u64 = st.free.values().sum();
        if free < st.total_reserved + count {
            return Err(MapError::no_space());
        }
        *st.reserved.entry(ino).or_default() += count;
        st.total_reserved += count;
        Ok(())
    }

    fn release(&self, ino: u64, count: u64) {
        let mut st = self.st.lock();
        let r = st.reserved.entry(ino).or_default();
        if *r < count {
            let msg = format!("inode {ino}: release of {count} blocks with only {r} reserved");
            *r = 0;
            st.errors.push(msg);
            st.total_reserved = st.reserved.values().sum();
            return;
        }
        *r -= count;
        st.total_reserved -= count;
    }

    fn map_blocks(
        &self,
        ino: u64,
        lblk: u64,
        len: u64,
        flags: MapFlags,
    ) -> Result<Extent, MapError> {
        let hook = self.hooks.lock().map_blocks.clone();
        if let Some(hook) = hook {
            hook(self, ino, lblk, len, flags)?;
        }
        let mut st = self.st.lock();
        let found = st.files.get(&ino).map(|f| {
            let prev = f
                .range(..=lblk)
                .next_back()
                .filter(|(s, e)| lblk < *s + e.len)
                .map(|(s, e)| (*s, *e));
            let next = f.range(lblk + 1..).next().map(|(s, _)| *s);
            (prev, next)
        });
        let (prev, next) = found.unwrap_or((None, None));
        if let Some((s, e)) = prev {
            let kind = if e.unwritten {
                ExtentKind::Unwritten
            } else {
                ExtentKind::Written
            };
            return Ok(Extent {
                lblk: s,
                len: e.len,
                pblk: e.pblk,
                kind,
            });
        }
        let hole_len = next.map_or(len, |n| (n - lblk).min(len)).max(1);
        if !flags.contains(MapFlags::CREATE) {
            return Ok(Extent {
                lblk,
                len: hole_len,
                pblk: 0,
                kind: ExtentKind::Hole,
            });
        }
        let call = st.alloc_calls;
        st.alloc_calls += 1;
        if st.fail_alloc_at == Some(call) {
            st.fail_alloc_at = None;
            return Err(MapError::no_space());
        }
        let goal = st.goal_for(ino, lblk);
        let (pblk, got) = st.allocate(goal, hole_len).ok_or_else(MapError::no_space)?;
        if flags.contains(MapFlags::DELALLOC) {
            let r = st.reserved.entry(ino).or_default();
            if *r < got {
                let msg = format!(
                    "inode {ino}: allocation of {got} delayed blocks with only {r} reserved"
                );
                st.errors.push(msg);
            } else {
                *r -= got;
                st.total_reserved -= got;
            }
        }
        let unwritten = flags.contains(MapFlags::UNWRITTEN);
        st.insert_extent(
            ino,
            lblk,
            FileExtent {
                pblk,
                len: got,
                unwritten,
            },
        );
        let kind = if unwritten {
            ExtentKind::Unwritten
        } else {
            ExtentKind::Written
        };
        Ok(Extent {
            lblk,
            len: got,
            pblk,
            kind,
        })
    }

    fn convert_unwritten(&self, ino: u64, ranges: &[UnwrittenRange]) -> Result<(), MapError> {
        let hook = self.hooks.lock().convert.clone();
        if let Some(hook) = hook {
            hook(self, ino, ranges)?;
        }
        let mut st = self.st.lock();
        for r in ranges {
            st.split_at(ino, r.lblk);
            st.split_at(ino, r.lblk + r.len);
            let keys: Vec<u64> = st
                .files
                .get(&ino)
                .map(|f| f.range(r.lblk..r.lblk + r.len).map(|(k, _)| *k).collect())
                .unwrap_or_default();
            let covered: u64 = keys
                .iter()
                .filter_map(|k| st.files.get(&ino).and_then(|f| f.get(k)).map(|e| e.len))
                .sum();
            if covered != r.len {
                let msg =
                    format!("inode {ino}: conversion of {r:?} covers only {covered} mapped blocks");
                st.errors.push(msg);
            }
            if let Some(f) = st.files.get_mut(&ino) {
                for k in keys {
                    if let Some(e) = f.get_mut(&k) {
                        e.unwritten = false;
                    }
                }
            }
        }
        st.conversions.push(ConversionRecord {
            ino,
            ranges: ranges.to_vec(),
        });
        Ok(())
    }

    fn update_disksize(&self, ino: u64, size: u64) -> Result<(), MapError> {
        let mut st = self.st.lock();
        let d = st.disksize.entry(ino).or_default();
        *d = (*d).max(size);
        Ok(())
    }

    fn truncate(&self, ino: u64, first_lblk: u64, new_size: u64) -> Result<(), MapError> {
        let mut st = self.st.lock();
        st.split_at(ino, first_lblk);
        let gone: Vec<(u64, FileExtent)> = st
            .files
            .get_mut(&ino)
            .map(|f| {
                let keys: Vec<u64> = f.range(first_lblk..).map(|(k, _)| *k).collect();
                keys.into_iter()
                    .filter_map(|k| f.remove(&k).map(|e| (k, e)))
                    .collect()
            })
            .unwrap_or_default();
        for (_, e) in gone {
            st.free_run(e.pblk, e.len);
        }
        st.disksize.insert(ino, new_size);
        Ok(())
    }

    fn punch_hole(&self, ino: u64, lblk: u64, len: u64) -> Result<(), MapError> {
        let mut st = self.st.lock();
        st.split_at(ino, lblk);
        st.split_at(ino, lblk + len);
        let gone: Vec<FileExtent> = st
            .files
            .get_mut(&ino)
            .map(|f| {
                let keys: Vec<u64> = f.range(lblk..lblk + len).map(|(k, _)| *k).collect();
                keys.into_iter().filter_map(|k| f.remove(&k)).collect()
            })
            .unwrap_or_default();
        for e in gone {
            st.free_run(e.pblk, e.len);
        }
        Ok(())
    }

    fn fallocate(&self, ino: u64, lblk: u64, len: u64) -> Result<(), MapError> {
        let mut b = lblk;
        while b < lblk + len {
            let e = self.map_blocks(ino, b, lblk + len - b, MapFlags::LOOKUP)?;
            let n = e.lblk + e.len - b;
            if e.kind == ExtentKind::Hole {
                let mut done = 0;
                while done < n {
                    let got = self.map_blocks(
                        ino,
                        b + done,
                        n - done,
                        MapFlags::CREATE | MapFlags::UNWRITTEN,
                    )?;
                    done += got.len;
                }
            }
            b += n.min(lblk + len - b);
        }
        Ok(())
    }
}
