//! The flusher: background writeback on its own thread (the kernel's per-bdi flusher).
//!
//! Writers that pass the dirty limit queue their file here and go on copying; the flusher runs
//! `writepages` in background mode (`WB_SYNC_NONE`) for each queued file, so page preparation
//! and bio building overlap the writer's copying and the device's IO. A writer far past the
//! limit waits for a pass to finish. The thread holds only weak references: a file dropped
//! while queued is skipped.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::thread;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::Shared;
use crate::mapping::{Mapping, MappingInner};
use crate::writeback::WritebackControl;

#[derive(Default)]
struct State {
    queue: VecDeque<Weak<MappingInner>>,
    queued: Vec<u64>,
    passes: u64,
    running: bool,
    stop: bool,
}

/// Queue and signals of the flusher thread.
#[derive(Default)]
pub(crate) struct Flusher {
    st: Mutex<State>,
    work: Condvar,
    done: Condvar,
}

impl Flusher {
    /// Queues `m` for background writeback (once).
    pub(crate) fn queue(&self, m: &Arc<MappingInner>) {
        let mut st = self.st.lock();
        if !st.running || st.stop || st.queued.contains(&m.ino) {
            return;
        }
        st.queued.push(m.ino);
        st.queue.push_back(Arc::downgrade(m));
        self.work.notify_one();
    }

    /// Waits for the next completed pass; false if the flusher is not running.
    pub(crate) fn wait_pass(&self, _m: &Arc<MappingInner>) -> bool {
        let mut st = self.st.lock();
        if !st.running || st.stop {
            return false;
        }
        let seen = st.passes;
        while st.passes == seen && st.running && !st.stop {
            if self
                .done
                .wait_for(&mut st, Duration::from_millis(50))
                .timed_out()
            {
                break;
            }
        }
        true
    }

    /// Stops the thread after its current pass.
    pub(crate) fn stop(&self) {
        let mut st = self.st.lock();
        st.stop = true;
        st.queue.clear();
        st.queued.clear();
        self.work.notify_all();
        self.done.notify_all();
    }
}

/// Starts the flusher thread of `shared`.
pub(crate) fn start(shared: &Arc<Shared>) -> std::io::Result<()> {
    shared.flusher.st.lock().running = true;
    let weak = Arc::downgrade(shared);
    thread::Builder::new()
        .name("ext4kit-flush".into())
        .spawn(move || run(weak))?;
    Ok(())
}

fn run(shared: Weak<Shared>) {
    loop {
        let next = {
            let Some(sh) = shared.upgrade() else { return };
            let mut st = sh.flusher.st.lock();
            loop {
                if st.stop {
                    st.running = false;
                    return;
                }
                if let Some(m) = st.queue.pop_front() {
                    break m;
                }
                // Wake up now and then to notice that the cache went away.
                sh.flusher
                    .work
                    .wait_for(&mut st, Duration::from_millis(100));
                if Arc::strong_count(&sh) == 1 {
                    st.running = false;
                    return;
                }
            }
        };
        let Some(m) = next.upgrade() else { continue };
        let mapping = Mapping::from_inner(m);
        // Write what is dirty now. Nobody waits for this pass: an error it hits (an allocation
        // failure, a failed submission) is recorded on the file, like a failed bio, and the next
        // fsync reports it (`mapping_set_error` in the kernel's `__writepage`). Pages that could
        // not be mapped stay dirty; the next pass or the fsync tries them again.
        let nr = mapping.nr_dirty() as i64;
        if let Err(e) = mapping.writepages(&mut WritebackControl::background(nr.max(1))) {
            mapping.inner.set_error(e.errno());
        }
        let cache = Arc::clone(&mapping.inner.cache);
        let ino = mapping.ino();
        drop(mapping);
        let mut st = cache.flusher.st.lock();
        st.queued.retain(|i| *i != ino);
        st.passes += 1;
        cache.flusher.done.notify_all();
    }
}
