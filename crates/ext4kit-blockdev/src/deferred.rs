//! [`DeferredDevice`]: completions held until the test releases them.
//!
//! Every submitted bio is parked. The test looks at [`DeferredDevice::pending`] and releases bios
//! one by one, in any order, each with success (the IO is then performed on the inner device) or
//! with an error (nothing is written). Completion runs on the releasing thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::{Bio, BioOp, BlockDevice, Geometry, IoError};

/// What a parked bio looks like, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingBio {
    /// Identifier to pass to [`DeferredDevice::complete`].
    pub id: u64,
    /// Operation.
    pub op: BioOp,
    /// First device block.
    pub start_block: u64,
    /// Length in device blocks.
    pub nr_blocks: u64,
    /// Number of segments.
    pub nr_segments: usize,
}

/// A device that holds completions until released.
#[derive(Debug, Clone)]
pub struct DeferredDevice {
    inner: Arc<dyn BlockDevice>,
    state: Arc<(Mutex<DeferredState>, Condvar)>,
}

#[derive(Debug, Default)]
struct DeferredState {
    next_id: u64,
    parked: Vec<(u64, Bio)>,
    /// When set, bios are passed straight through (used to finish a test without releasing).
    passthrough: bool,
}

impl DeferredDevice {
    /// Parks every bio before it reaches `inner`.
    pub fn new(inner: Arc<dyn BlockDevice>) -> DeferredDevice {
        DeferredDevice {
            inner,
            state: Arc::new((Mutex::new(DeferredState::default()), Condvar::new())),
        }
    }

    /// The parked bios, oldest first.
    pub fn pending(&self) -> Vec<PendingBio> {
        let bs = u64::from(self.inner.geometry().block_size);
        self.state
            .0
            .lock()
            .parked
            .iter()
            .map(|(id, bio)| PendingBio {
                id: *id,
                op: bio.op(),
                start_block: bio.start_block(),
                nr_blocks: bio.len_bytes() as u64 / bs,
                nr_segments: bio.vecs().len(),
            })
            .collect()
    }

    /// Number of parked bios.
    pub fn nr_pending(&self) -> usize {
        self.state.0.lock().parked.len()
    }

    /// Waits until at least `n` bios are parked, or `timeout` passes; returns the count.
    pub fn wait_pending(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.state;
        let mut st = lock.lock();
        while st.parked.len() < n {
            if cond.wait_until(&mut st, deadline).timed_out() {
                break;
            }
        }
        st.parked.len()
    }

    /// Releases the parked bio `id`: with `Ok(())` the IO is performed on the inner device and the
    /// bio completes with the inner device's status; with `Err(e)` it completes with `e` and
    /// nothing reaches the device. Returns false if no such bio is parked.
    pub fn complete(&self, id: u64, status: Result<(), IoError>) -> bool {
        let bio = {
            let mut st = self.state.0.lock();
            match st.parked.iter().position(|(i, _)| *i == id) {
                Some(pos) => st.parked.remove(pos).1,
                None => return false,
            }
        };
        match status {
            Ok(()) => self.inner.submit(bio),
            Err(e) => bio.complete(Err(e)),
        }
        true
    }

    /// Releases the bio at position `index` of [`DeferredDevice::pending`].
    pub fn complete_nth(&self, index: usize, status: Result<(), IoError>) -> bool {
        let id = self.state.0.lock().parked.get(index).map(|(id, _)| *id);
        id.is_some_and(|id| self.complete(id, status))
    }

    /// Releases every parked bio successfully, oldest first (including bios parked meanwhile).
    pub fn complete_all(&self) {
        loop {
            let next = self.state.0.lock().parked.first().map(|(id, _)| *id);
            match next {
                Some(id) => {
                    self.complete(id, Ok(()));
                }
                None => return,
            }
        }
    }

    /// Stops parking: releases everything parked and passes later bios straight through.
    pub fn set_passthrough(&self, on: bool) {
        self.state.0.lock().passthrough = on;
        if on {
            self.complete_all();
        }
    }
}

impl BlockDevice for DeferredDevice {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }

    fn submit(&self, bio: Bio) {
        let (lock, cond) = &*self.state;
        let mut st = lock.lock();
        if st.passthrough {
            drop(st);
            self.inner.submit(bio);
            return;
        }
        let id = st.next_id;
        st.next_id += 1;
        st.parked.push((id, bio));
        cond.notify_all();
    }

    fn kind(&self) -> &'static str {
        "deferred"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BioVec, Completion, MemDevice};

    #[test]
    fn bios_complete_only_when_released_in_any_order() {
        let mem = MemDevice::new(512, 16);
        let dev = DeferredDevice::new(Arc::new(mem.clone()));
        let mut waits = Vec::new();
        for i in 0..3u8 {
            let mut bio = Bio::new(BioOp::Write, u64::from(i));
            bio.push(BioVec::from_vec(vec![i + 1; 512]));
            let c = Completion::new();
            c.attach(&mut bio);
            dev.submit(bio);
            waits.push(c);
        }
        assert_eq!(dev.nr_pending(), 3);
        assert_eq!(
            mem.snapshot()[0],
            0,
            "nothing may reach the device before release"
        );
        let ids: Vec<u64> = dev.pending().iter().map(|p| p.id).collect();
        assert!(dev.complete(ids[2], Ok(())));
        assert!(dev.complete(
            ids[0],
            Err(IoError::Injected {
                op: BioOp::Write,
                block: 0
            })
        ));
        assert!(dev.complete(ids[1], Ok(())));
        assert!(!dev.complete(ids[1], Ok(())), "a bio completes once");
        let st: Vec<bool> = waits.iter().map(|c| c.wait().1.is_ok()).collect();
        assert_eq!(st, vec![false, true, true]);
        let img = mem.snapshot();
        assert_eq!(
            (img[0], img[512], img[1024]),
            (0, 2, 3),
            "a failed write leaves the device untouched"
        );
    }
}
