//! [`UringDevice`] on Linux (see the parent module).
#![allow(unsafe_code)] // io_uring entries point at memory the kernel uses after `push` returns.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, unbounded};
use io_uring::{IoUring, Probe, opcode, types};

use super::{OpenError, UringUnavailable};
use crate::{Bio, BioOp, BlockDevice, Geometry, IoError};

/// Ring size; also the most requests in flight at once.
const QUEUE_DEPTH: u32 = 256;
/// Segments per `READV`/`WRITEV` entry (`UIO_MAXIOV`).
const IOV_MAX: usize = 1024;
/// user_data of the eventfd poll.
const WAKE: u64 = u64::MAX;
/// user_data of a write-behind `SYNC_FILE_RANGE` (its completion is ignored).
const WRITE_BEHIND: u64 = u64::MAX - 1;

/// An io_uring-driven file device.
pub struct UringDevice {
    geo: Geometry,
    /// A second handle on the file for [`BlockDevice::copy_from_file`] (`None` if read-only).
    copy_fd: Option<File>,
    tx: Option<Sender<Bio>>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    /// Test hook: a non-zero errno makes the ring thread's `io_uring_enter` fail with it, after
    /// the given number of calls that still work.
    inject: Arc<(AtomicI32, AtomicU32)>,
}

impl fmt::Debug for UringDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UringDevice")
            .field("geo", &self.geo)
            .finish_non_exhaustive()
    }
}

impl UringDevice {
    /// Opens `path` as an io_uring device.
    pub fn open(path: &Path, writable: bool, block_size: u32) -> Result<UringDevice, OpenError> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(OpenError::Io)?;
        UringDevice::from_file(file, writable, block_size)
    }

    /// Probes io_uring and wraps `file`.
    pub fn from_file(
        mut file: File,
        writable: bool,
        block_size: u32,
    ) -> Result<UringDevice, OpenError> {
        if std::env::var_os("EXT4KIT_NO_URING").is_some_and(|v| !v.is_empty() && v != "0") {
            return Err(OpenError::Uring(UringUnavailable::DisabledByEnv));
        }
        let (ring, sync_range) = probe_ring().map_err(OpenError::Uring)?;
        // Write-behind only helps where the kernel caches the device's pages: a regular file.
        let write_behind = writable && sync_range && file.metadata().is_ok_and(|m| m.is_file());
        let len = file.seek(SeekFrom::End(0)).map_err(OpenError::Io)?;
        let geo = Geometry {
            block_size,
            nr_blocks: len / u64::from(block_size),
        };
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map_err(|e| OpenError::Io(e.into()))?;
        let wake = Arc::new(wake);
        let copy_fd = if writable {
            Some(file.try_clone().map_err(OpenError::Io)?)
        } else {
            None
        };
        let (tx, rx) = unbounded::<Bio>();
        let ring_wake = Arc::clone(&wake);
        let inject = Arc::new((AtomicI32::new(0), AtomicU32::new(0)));
        let ring_inject = Arc::clone(&inject);
        let thread = thread::Builder::new()
            .name("uring-io".into())
            .spawn(move || {
                let mut t = RingThread::new(ring, file, rx, ring_wake, geo, writable);
                t.write_behind = write_behind;
                t.inject = ring_inject;
                t.run()
            })
            .map_err(OpenError::Io)?;
        Ok(UringDevice {
            geo,
            copy_fd,
            tx: Some(tx),
            wake,
            thread: Some(thread),
            inject,
        })
    }

    /// Test hook: after `after` more calls of `io_uring_enter` that work, the ring fails as if
    /// the next had answered `errno` (a fatal ring error). Every bio queued or in flight then
    /// completes with that error, exactly once, and every later one too; the device stays
    /// failed.
    #[doc(hidden)]
    pub fn fail_ring_for_test(&self, errno: i32, after: u32) {
        self.inject.1.store(after, Ordering::SeqCst);
        self.inject.0.store(errno, Ordering::SeqCst);
        self.kick();
    }

    fn kick(&self) {
        // A full counter (EAGAIN) already means "wake up"; nothing else can fail here.
        let _ = rustix::io::write(self.wake.as_fd(), &1u64.to_ne_bytes());
    }
}

/// A ring with the operations we need; also whether it can do `SYNC_FILE_RANGE` (write-behind).
fn probe_ring() -> Result<(IoUring, bool), UringUnavailable> {
    let ring = IoUring::new(QUEUE_DEPTH).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSYS) => UringUnavailable::NotSupported,
        Some(libc::EPERM) => UringUnavailable::NotPermitted {
            sysctl: std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .ok()
                .map(|s| s.trim().to_string()),
        },
        _ => UringUnavailable::Setup(e),
    })?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(UringUnavailable::Setup)?;
    for (code, name) in [
        (opcode::Readv::CODE, "READV"),
        (opcode::Writev::CODE, "WRITEV"),
        (opcode::Fsync::CODE, "FSYNC"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
    ] {
        if !probe.is_supported(code) {
            return Err(UringUnavailable::MissingOpcode(name));
        }
    }
    let sync_range = probe.is_supported(opcode::SyncFileRange::CODE);
    Ok((ring, sync_range))
}

impl Drop for UringDevice {
    fn drop(&mut self) {
        self.tx.take();
        self.kick();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl BlockDevice for UringDevice {
    fn geometry(&self) -> Geometry {
        self.geo
    }

    fn copy_from_file(
        &self,
        src: &File,
        src_off: u64,
        dst_off: u64,
        len: u64,
    ) -> Result<(), IoError> {
        let block = dst_off / u64::from(self.geo.block_size);
        let Some(dst) = &self.copy_fd else {
            return Err(IoError::ReadOnly);
        };
        if dst_off + len > self.geo.size_bytes() {
            return Err(IoError::OutOfRange {
                block,
                count: len.div_ceil(u64::from(self.geo.block_size)),
                nr_blocks: self.geo.nr_blocks,
            });
        }
        crate::file::copy_file_to_file(src, src_off, dst, dst_off, len).map_err(|e| IoError::Os {
            op: BioOp::Write,
            block,
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        })
    }

    fn submit(&self, bio: Bio) {
        match &self.tx {
            Some(tx) => match tx.send(bio) {
                Ok(()) => self.kick(),
                Err(e) => e.0.complete(Err(IoError::Shutdown)),
            },
            None => bio.complete(Err(IoError::Shutdown)),
        }
    }

    fn kind(&self) -> &'static str {
        "io_uring"
    }
}

/// A bio the kernel is working on.
struct InFlight {
    bio: Bio,
    /// (address, length) of every segment; the memory belongs to `bio`.
    segs: Vec<(usize, usize)>,
    /// iovecs of the entry in flight (rebuilt for each continuation).
    iov: Vec<libc::iovec>,
    /// Bytes done so far.
    done: usize,
    total: usize,
}

// SAFETY: the raw pointers in `segs`/`iov` point into buffers owned by `bio` (boxed or behind an
// `Arc`), which is `Send`; the ring thread is the only user of an `InFlight`.
unsafe impl Send for InFlight {}

struct RingThread {
    ring: IoUring,
    file: File,
    rx: Receiver<Bio>,
    wake: Arc<OwnedFd>,
    geo: Geometry,
    writable: bool,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    inflight: usize,
    backlog: VecDeque<Bio>,
    poll_armed: bool,
    closed: bool,
    /// Start the host's writeback of each completed write at once (`SYNC_FILE_RANGE_WRITE`),
    /// so the final flush finds little left to do: set for regular files when the kernel
    /// supports the operation.
    write_behind: bool,
    /// See [`UringDevice::fail_ring_for_test`].
    inject: Arc<(AtomicI32, AtomicU32)>,
}

/// How long a failed ring waits for the kernel to finish the entries it had already taken
/// before their bios are completed with the error anyway.
const FAILED_RING_DRAIN: Duration = Duration::from_secs(5);

impl RingThread {
    fn new(
        ring: IoUring,
        file: File,
        rx: Receiver<Bio>,
        wake: Arc<OwnedFd>,
        geo: Geometry,
        writable: bool,
    ) -> Self {
        RingThread {
            ring,
            file,
            rx,
            wake,
            geo,
            writable,
            slots: Vec::new(),
            free: Vec::new(),
            inflight: 0,
            backlog: VecDeque::new(),
            poll_armed: false,
            closed: false,
            write_behind: false,
            inject: Arc::new((AtomicI32::new(0), AtomicU32::new(0))),
        }
    }

    fn run(mut self) {
        loop {
            if !self.poll_armed && !self.closed {
                let e = opcode::PollAdd::new(types::Fd(self.wake.as_raw_fd()), libc::POLLIN as u32)
                    .build()
                    .user_data(WAKE);
                self.push(e);
                self.poll_armed = true;
            }
            loop {
                match self.rx.try_recv() {
                    Ok(bio) => self.backlog.push_back(bio),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.closed = true;
                        break;
                    }
                }
            }
            while self.inflight < QUEUE_DEPTH as usize / 2 {
                match self.backlog.pop_front() {
                    Some(bio) => self.start(bio),
                    None => break,
                }
            }
            if self.closed && self.inflight == 0 && self.backlog.is_empty() {
                return;
            }
            let mut injected = self.inject.0.load(Ordering::SeqCst);
            if injected != 0 {
                let left = self.inject.1.load(Ordering::SeqCst);
                if left > 0 {
                    self.inject.1.store(left - 1, Ordering::SeqCst);
                    injected = 0;
                }
            }
            let entered = if injected != 0 {
                Err(std::io::Error::from_raw_os_error(injected))
            } else {
                self.ring.submit_and_wait(1)
            };
            match entered {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                    ) => {}
                Err(e) => {
                    // The ring itself failed: fail everything we hold and stop.
                    let errno = e.raw_os_error().unwrap_or(libc::EIO);
                    self.fail_all(errno);
                    return;
                }
            }
            self.reap();
        }
    }

    /// The ring failed: completes every bio we hold — in flight, waiting for a slot, or still
    /// in the channel — with `errno`, exactly once, then keeps failing new ones until the device
    /// is dropped (so none is ever dropped uncompleted and no page stays under writeback).
    fn fail_all(&mut self, errno: i32) {
        let err = |bio: &Bio| IoError::Os {
            op: bio.op(),
            block: bio.start_block(),
            errno,
        };
        // Entries still in the submission queue were never seen by the kernel; the ones it took
        // may still be using their buffers, so wait (bounded) for their completions, which we
        // read from the completion queue (shared memory) after polling the ring's fd — no
        // `io_uring_enter`, which is what failed.
        let deadline = Instant::now() + FAILED_RING_DRAIN;
        loop {
            let done: Vec<u64> = self.ring.completion().map(|c| c.user_data()).collect();
            for ud in done {
                let slot = ud as usize;
                if ud == WAKE || ud == WRITE_BEHIND || slot >= self.slots.len() {
                    continue;
                }
                // A result may be a success, but a short transfer cannot be continued and the
                // caller must learn the ring is gone: every bio of a failed ring fails.
                if let Some(f) = self.slots[slot].take() {
                    self.inflight -= 1;
                    let e = err(&f.bio);
                    f.bio.complete(Err(e));
                }
            }
            let unsubmitted = self.ring.submission().len();
            if self.inflight <= unsubmitted {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let timeout = (deadline - now).as_millis().min(100) as i32;
            let mut pfd = libc::pollfd {
                fd: self.ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is one valid pollfd that lives across the call.
            let r = unsafe { libc::poll(&mut pfd, 1, timeout) };
            if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        // What is left: entries the kernel never saw, or (after the wait above) ones it never
        // completed. Their buffers are released with the bios; see docs/architecture.md.
        for f in self.slots.drain(..).flatten() {
            let e = err(&f.bio);
            f.bio.complete(Err(e));
        }
        self.free.clear();
        self.inflight = 0;
        for bio in self.backlog.drain(..) {
            let e = err(&bio);
            bio.complete(Err(e));
        }
        // Until every sender is gone (the device dropped), fail whatever arrives.
        while let Ok(bio) = self.rx.recv() {
            let e = err(&bio);
            bio.complete(Err(e));
        }
    }

    fn push(&mut self, entry: io_uring::squeue::Entry) {
        loop {
            // SAFETY: every entry we push points only at memory owned by an `InFlight` kept in
            // `self.slots` until its completion is reaped (or at the eventfd, which lives as long
            // as the thread).
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                return;
            }
            // Submission queue full: hand what is queued to the kernel and try again.
            let _ = self.ring.submit();
        }
    }

    fn start(&mut self, mut bio: Bio) {
        if let Err(e) = bio.check_bounds(self.geo) {
            bio.complete(Err(e));
            return;
        }
        if bio.op() == BioOp::Write && !self.writable {
            bio.complete(Err(IoError::ReadOnly));
            return;
        }
        if bio.op() == BioOp::Flush && !self.writable {
            bio.complete(Ok(()));
            return;
        }
        let segs: Vec<(usize, usize)> = match bio.op() {
            BioOp::Write => bio
                .vecs()
                .iter()
                .map(|v| (v.bytes().as_ptr() as usize, v.len()))
                .collect(),
            BioOp::Read => bio
                .vecs_mut()
                .iter_mut()
                .filter_map(|v| v.bytes_mut())
                .map(|b| (b.as_mut_ptr() as usize, b.len()))
                .collect(),
            BioOp::Flush => Vec::new(),
        };
        let total = segs.iter().map(|s| s.1).sum();
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.slots[slot] = Some(InFlight {
            bio,
            segs,
            iov: Vec::new(),
            done: 0,
            total,
        });
        self.inflight += 1;
        self.issue(slot);
    }

    /// Pushes the entry for what remains of slot `slot`.
    fn issue(&mut self, slot: usize) {
        let fd = types::Fd(self.file.as_raw_fd());
        let bs = u64::from(self.geo.block_size);
        let Some(f) = self.slots[slot].as_mut() else {
            return;
        };
        let entry = match f.bio.op() {
            BioOp::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            op => {
                // Rebuild the iovecs from the first byte not yet done.
                f.iov.clear();
                let mut skip = f.done;
                for &(addr, len) in &f.segs {
                    if skip >= len {
                        skip -= len;
                        continue;
                    }
                    f.iov.push(libc::iovec {
                        iov_base: (addr + skip) as *mut libc::c_void,
                        iov_len: len - skip,
                    });
                    skip = 0;
                    if f.iov.len() == IOV_MAX {
                        break;
                    }
                }
                let offset = f.bio.start_block() * bs + f.done as u64;
                let (ptr, n) = (f.iov.as_ptr(), f.iov.len() as u32);
                if op == BioOp::Write {
                    opcode::Writev::new(fd, ptr, n).offset(offset).build()
                } else {
                    opcode::Readv::new(fd, ptr, n).offset(offset).build()
                }
            }
        };
        self.push(entry.user_data(slot as u64));
    }

    fn reap(&mut self) {
        let done: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, res) in done {
            if ud == WRITE_BEHIND {
                continue;
            }
            if ud == WAKE {
                self.poll_armed = false;
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(self.wake.as_fd(), &mut buf);
                continue;
            }
            let slot = ud as usize;
            let Some(f) = self.slots[slot].as_mut() else {
                continue;
            };
            let op = f.bio.op();
            let status = if res == -libc::EINTR || res == -libc::EAGAIN {
                self.issue(slot);
                continue;
            } else if res < 0 {
                Err(IoError::Os {
                    op,
                    block: f.bio.start_block(),
                    errno: -res,
                })
            } else if op == BioOp::Flush {
                Ok(())
            } else if res == 0 {
                if op == BioOp::Read {
                    // Past the end of the file: zeros.
                    zero_rest(f);
                    Ok(())
                } else {
                    Err(IoError::Os {
                        op,
                        block: f.bio.start_block(),
                        errno: libc::EIO,
                    })
                }
            } else {
                f.done += res as usize;
                if f.done < f.total {
                    self.issue(slot);
                    continue;
                }
                Ok(())
            };
            let Some(f) = self.slots[slot].take() else {
                continue;
            };
            self.free.push(slot);
            self.inflight -= 1;
            if self.write_behind && op == BioOp::Write && status.is_ok() {
                let off = f.bio.start_block() * u64::from(self.geo.block_size);
                if let Ok(len) = u32::try_from(f.total) {
                    let e = opcode::SyncFileRange::new(types::Fd(self.file.as_raw_fd()), len)
                        .offset(off)
                        .flags(libc::SYNC_FILE_RANGE_WRITE)
                        .build()
                        .user_data(WRITE_BEHIND);
                    self.push(e);
                }
            }
            f.bio.complete(status);
        }
    }
}

fn zero_rest(f: &mut InFlight) {
    let mut skip = f.done;
    for v in f.bio.vecs_mut() {
        let Some(b) = v.bytes_mut() else { continue };
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        b[skip..].fill(0);
        skip = 0;
    }
}
