//! Block devices for ext4kit.
//!
//! This crate owns the seam between the page cache and storage: the [`Bio`] (a request with an
//! operation, a start address in device blocks, memory segments and an end function), the
//! [`BlockDevice`] trait that accepts bios without blocking on the IO, the backends
//! ([`FileDevice`], [`UringDevice`], [`MemDevice`], [`NbdDevice`] for a network block device
//! export) and the devices tests use to control
//! completion ([`DeferredDevice`]), inject faults ([`FaultDevice`]) and model power loss
//! ([`CrashDevice`]).
//!
//! # The bio lifecycle
//! Before submission a [`Bio`] owns its segments and its end function. [`BlockDevice::submit`]
//! takes the bio by value; the device performs the IO and then calls [`Bio::complete`], which
//! consumes the bio and hands it, with the status, to the end function. A bio therefore cannot be
//! completed twice or lost. Completion runs on a device thread (or, for [`MemDevice`], inside
//! `submit` on the caller's thread — the synchronous-completion case the writeback engine must
//! survive).
//!
//! Synchronous helpers ([`BlockDeviceExt`]) are built on the same path: they submit a bio and
//! wait for its end function.
//!
//! # What this crate does not know
//! Nothing about pages, files or ext4. Segment memory is either owned by the bio or shared
//! through an `Arc` the caller provides (the page cache passes a read guard of a page's data).

#![deny(unsafe_code)]

mod crash;
mod deferred;
mod fault;
mod file;
mod mem;
pub mod nbd;
mod sys;
#[cfg(target_os = "linux")]
pub use sys::loop_backing_file;
mod uring;

use std::fmt;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

pub use crash::CrashDevice;
pub use deferred::{DeferredDevice, PendingBio};
pub use fault::{FaultDevice, FaultRule, RequestRecord};
pub use file::FileDevice;
pub use mem::MemDevice;
pub use nbd::{
    NBD_DEFAULT_PORT, NbdAddress, NbdDevice, NbdError, NbdErrorKind, NbdHandshake, NbdInfo,
    NbdOptions, NbdTarget, NbdUriError, is_nbd_uri, parse_nbd_uri,
};
pub use uring::{
    OpenError, UringDevice, UringUnavailable, open_file_device, open_file_device_from,
};

/// What a bio asks the device to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BioOp {
    /// Fill the segments from the device.
    Read,
    /// Write the segments to the device.
    Write,
    /// Make every write that completed before this flush was submitted durable.
    Flush,
}

impl fmt::Display for BioOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BioOp::Read => "read",
            BioOp::Write => "write",
            BioOp::Flush => "flush",
        })
    }
}

/// Memory behind one segment of a bio.
pub enum BioBuf {
    /// Memory shared with its owner, read by a write bio (page memory under writeback; the
    /// `Arc` usually holds a read guard so the page cannot change while the device reads it).
    Shared(Arc<dyn AsRef<[u8]> + Send + Sync>),
    /// Memory the bio owns: a read fills it, a write takes its bytes from it.
    Owned(Box<[u8]>),
    /// Memory lent to a read bio for the device to fill in place (page memory: the box
    /// usually holds the page's write guard, released when the bio is dropped).
    Lent(Box<dyn LentBuf>),
}

/// Writable memory a bio can borrow (see [`BioBuf::Lent`]).
pub trait LentBuf: AsRef<[u8]> + AsMut<[u8]> + Send {}

impl<T: AsRef<[u8]> + AsMut<[u8]> + Send> LentBuf for T {}

impl BioBuf {
    fn as_slice(&self) -> &[u8] {
        match self {
            BioBuf::Shared(b) => (**b).as_ref(),
            BioBuf::Owned(b) => b,
            BioBuf::Lent(b) => (**b).as_ref(),
        }
    }
}

impl fmt::Debug for BioBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BioBuf::Shared(b) => write!(f, "Shared({} bytes)", (**b).as_ref().len()),
            BioBuf::Owned(b) => write!(f, "Owned({} bytes)", b.len()),
            BioBuf::Lent(b) => write!(f, "Lent({} bytes)", (**b).as_ref().len()),
        }
    }
}

/// One segment of a bio: `len` bytes at `offset` inside `buf`.
#[derive(Debug)]
pub struct BioVec {
    buf: BioBuf,
    offset: usize,
    len: usize,
}

impl BioVec {
    /// A segment over `len` bytes at `offset` of `buf`.
    ///
    /// # Panics
    /// If the range lies outside the buffer (a programming error, not a data error).
    pub fn new(buf: BioBuf, offset: usize, len: usize) -> BioVec {
        let total = buf.as_slice().len();
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= total),
            "bio segment out of its buffer"
        );
        BioVec { buf, offset, len }
    }

    /// An owned, zero-filled segment of `len` bytes (for reads into a bounce buffer).
    pub fn zeroed(len: usize) -> BioVec {
        BioVec {
            buf: BioBuf::Owned(vec![0u8; len].into_boxed_slice()),
            offset: 0,
            len,
        }
    }

    /// An owned segment holding `data` (for metadata writes).
    pub fn from_vec(data: Vec<u8>) -> BioVec {
        let len = data.len();
        BioVec {
            buf: BioBuf::Owned(data.into_boxed_slice()),
            offset: 0,
            len,
        }
    }

    /// Length of the segment in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the segment is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of the segment inside its buffer.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Grows the segment by `more` bytes (the caller merges the next contiguous block).
    ///
    /// # Panics
    /// If the segment would run past its buffer.
    pub fn extend(&mut self, more: usize) {
        let total = self.buf.as_slice().len();
        let new_len = self.len + more;
        assert!(
            self.offset + new_len <= total,
            "bio segment extended past its buffer"
        );
        self.len = new_len;
    }

    /// The bytes of the segment.
    pub fn bytes(&self) -> &[u8] {
        &self.buf.as_slice()[self.offset..self.offset + self.len]
    }

    /// The bytes of the segment for a read to fill; `None` for shared memory, which is read-only.
    pub fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        match &mut self.buf {
            BioBuf::Shared(_) => None,
            BioBuf::Owned(b) => Some(&mut b[self.offset..self.offset + self.len]),
            BioBuf::Lent(b) => Some(&mut (**b).as_mut()[self.offset..self.offset + self.len]),
        }
    }

    /// The underlying buffer.
    pub fn buf(&self) -> &BioBuf {
        &self.buf
    }

    /// Takes the owned buffer out of the segment (after a read), `None` for shared or lent
    /// memory.
    pub fn into_owned(self) -> Option<Box<[u8]>> {
        match self.buf {
            BioBuf::Owned(b) => Some(b),
            BioBuf::Shared(_) | BioBuf::Lent(_) => None,
        }
    }
}

/// The end function of a bio: runs once, with the bio and its status, on the completing thread.
pub type EndIo = Box<dyn FnOnce(Bio, Result<(), IoError>) + Send>;

/// A block IO request.
pub struct Bio {
    op: BioOp,
    start_block: u64,
    vecs: Vec<BioVec>,
    sync: bool,
    end_io: Option<EndIo>,
}

impl fmt::Debug for Bio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bio")
            .field("op", &self.op)
            .field("start_block", &self.start_block)
            .field("segments", &self.vecs.len())
            .field("bytes", &self.len_bytes())
            .finish_non_exhaustive()
    }
}

impl Bio {
    /// A new bio for `op` starting at device block `start_block`, with no segments and no end
    /// function.
    pub fn new(op: BioOp, start_block: u64) -> Bio {
        Bio {
            op,
            start_block,
            vecs: Vec::new(),
            sync: false,
            end_io: None,
        }
    }

    /// A flush bio.
    pub fn flush() -> Bio {
        Bio::new(BioOp::Flush, 0)
    }

    /// Adds a segment at the end of the bio.
    pub fn push(&mut self, vec: BioVec) {
        self.vecs.push(vec);
    }

    /// Sets the end function (replacing any earlier one).
    pub fn set_end_io(&mut self, end_io: EndIo) {
        self.end_io = Some(end_io);
    }

    /// Builder form of [`Bio::set_end_io`].
    pub fn with_end_io(
        mut self,
        end_io: impl FnOnce(Bio, Result<(), IoError>) + Send + 'static,
    ) -> Bio {
        self.end_io = Some(Box::new(end_io));
        self
    }

    /// Marks the bio as part of a data-integrity writeback (REQ_SYNC); devices may prioritise it.
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }

    /// Whether the bio is marked sync.
    pub fn is_sync(&self) -> bool {
        self.sync
    }

    /// The operation.
    pub fn op(&self) -> BioOp {
        self.op
    }

    /// First device block.
    pub fn start_block(&self) -> u64 {
        self.start_block
    }

    /// The segments, in device order.
    pub fn vecs(&self) -> &[BioVec] {
        &self.vecs
    }

    /// The segments, mutable (a read fills them).
    pub fn vecs_mut(&mut self) -> &mut [BioVec] {
        &mut self.vecs
    }

    /// Takes the segments out of the bio.
    pub fn take_vecs(&mut self) -> Vec<BioVec> {
        std::mem::take(&mut self.vecs)
    }

    /// The last segment, to grow it when the next block is contiguous in memory too.
    pub fn last_vec_mut(&mut self) -> Option<&mut BioVec> {
        self.vecs.last_mut()
    }

    /// Total bytes covered by the segments.
    pub fn len_bytes(&self) -> usize {
        self.vecs.iter().map(BioVec::len).sum()
    }

    /// Takes the end function out, leaving none (used by devices that forward a bio).
    pub fn take_end_io(&mut self) -> Option<EndIo> {
        self.end_io.take()
    }

    /// Completes the bio: consumes it and runs its end function with `status`.
    pub fn complete(mut self, status: Result<(), IoError>) {
        if let Some(end_io) = self.end_io.take() {
            end_io(self, status);
        }
    }

    /// Checks that the bio fits a device of `geo` (whole blocks, inside the device).
    pub fn check_bounds(&self, geo: Geometry) -> Result<(), IoError> {
        if self.op == BioOp::Flush {
            return Ok(());
        }
        let bs = geo.block_size as usize;
        let len = self.len_bytes();
        if len % bs != 0 {
            return Err(IoError::Misaligned {
                block: self.start_block,
                bytes: len,
                block_size: geo.block_size,
            });
        }
        let nr = (len / bs) as u64;
        match self.start_block.checked_add(nr) {
            Some(end) if end <= geo.nr_blocks => Ok(()),
            _ => Err(IoError::OutOfRange {
                block: self.start_block,
                count: nr,
                nr_blocks: geo.nr_blocks,
            }),
        }
    }
}

/// Size of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per device block (the unit of [`Bio::start_block`]).
    pub block_size: u32,
    /// Number of device blocks.
    pub nr_blocks: u64,
}

impl Geometry {
    /// Size of the device in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.nr_blocks * u64::from(self.block_size)
    }
}

/// Why a bio failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// The operating system reported an error.
    #[error("{op} at device block {block} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Os {
        /// The failed operation.
        op: BioOp,
        /// First device block of the bio.
        block: u64,
        /// errno value.
        errno: i32,
    },
    /// A test device failed the request on purpose.
    #[error("{op} at device block {block} failed (injected fault)")]
    Injected {
        /// The failed operation.
        op: BioOp,
        /// First device block of the bio.
        block: u64,
    },
    /// The bio reaches past the end of the device.
    #[error(
        "IO of {count} blocks at device block {block} is outside the device ({nr_blocks} blocks)"
    )]
    OutOfRange {
        /// First device block of the bio.
        block: u64,
        /// Number of blocks.
        count: u64,
        /// Size of the device in blocks.
        nr_blocks: u64,
    },
    /// The bio is not a whole number of device blocks.
    #[error(
        "IO of {bytes} bytes at device block {block} is not a multiple of the block size {block_size}"
    )]
    Misaligned {
        /// First device block of the bio.
        block: u64,
        /// Bytes in the bio.
        bytes: usize,
        /// Device block size.
        block_size: u32,
    },
    /// The device is read-only.
    #[error("device is read-only")]
    ReadOnly,
    /// The device was shut down before the bio completed.
    #[error("device shut down")]
    Shutdown,
}

impl IoError {
    /// The errno this error maps to.
    pub fn errno(&self) -> i32 {
        match self {
            IoError::Os { errno, .. } => *errno,
            IoError::Injected { .. } | IoError::Shutdown => libc::EIO,
            IoError::OutOfRange { .. } | IoError::Misaligned { .. } => libc::EINVAL,
            IoError::ReadOnly => libc::EROFS,
        }
    }
}

impl From<IoError> for std::io::Error {
    fn from(e: IoError) -> std::io::Error {
        std::io::Error::from_raw_os_error(e.errno())
    }
}

/// A device that accepts bios and completes them later (or immediately).
pub trait BlockDevice: Send + Sync + fmt::Debug {
    /// Size and block size.
    fn geometry(&self) -> Geometry;

    /// Starts `bio`. Never blocks on the IO itself; every outcome, errors included, is delivered
    /// through the bio's end function.
    fn submit(&self, bio: Bio);

    /// A short name for messages ("file", "io_uring", "memory", "nbd", ...).
    fn kind(&self) -> &'static str;

    /// Whether the device refuses writes (they fail with [`IoError::ReadOnly`]): a read-only
    /// NBD export, say. A caller opening a filesystem read-write should fall back to read-only
    /// and say so.
    fn is_read_only(&self) -> bool {
        false
    }

    /// Copies `len` bytes of `src` at `src_off` to the device at byte `dst_off`, and waits.
    /// A bulk path outside the bio pipeline (building images: file bodies go straight from the
    /// source file to their allocated blocks). File-backed devices copy inside the kernel
    /// (`copy_file_range`); the default reads the bytes and writes them through bios,
    /// reading and rewriting the partial blocks at either end. A source that ends before
    /// `len` bytes is an error (EIO); the device then holds part of the copy.
    fn copy_from_file(
        &self,
        src: &std::fs::File,
        src_off: u64,
        dst_off: u64,
        len: u64,
    ) -> Result<(), IoError> {
        copy_through_bios(self, src, src_off, dst_off, len)
    }
}

impl<T: BlockDevice + ?Sized> BlockDevice for Arc<T> {
    fn geometry(&self) -> Geometry {
        (**self).geometry()
    }
    fn submit(&self, bio: Bio) {
        (**self).submit(bio)
    }
    fn kind(&self) -> &'static str {
        (**self).kind()
    }
    fn is_read_only(&self) -> bool {
        (**self).is_read_only()
    }
    fn copy_from_file(
        &self,
        src: &std::fs::File,
        src_off: u64,
        dst_off: u64,
        len: u64,
    ) -> Result<(), IoError> {
        (**self).copy_from_file(src, src_off, dst_off, len)
    }
}

/// [`BlockDevice::copy_from_file`] through bios, in chunks of up to 1 MiB.
pub fn copy_through_bios<D: BlockDevice + ?Sized>(
    dev: &D,
    src: &std::fs::File,
    src_off: u64,
    dst_off: u64,
    len: u64,
) -> Result<(), IoError> {
    let bs = u64::from(dev.geometry().block_size);
    let mut done = 0u64;
    while done < len {
        let at = dst_off + done;
        let first = at / bs;
        let head = at % bs;
        let n = (len - done).min((1 << 20) - head);
        let blocks = (head + n).div_ceil(bs);
        let mut buf = vec![0u8; (blocks * bs) as usize];
        // Partial blocks at either end keep the bytes around the copy.
        if head != 0 || (head + n) % bs != 0 {
            dev.read_blocks(first, &mut buf)?;
        }
        let dst = &mut buf[head as usize..(head + n) as usize];
        let mut got = 0;
        while got < dst.len() {
            match rustix::io::pread(src, &mut dst[got..], src_off + done + got as u64) {
                Ok(0) => {
                    return Err(IoError::Os {
                        op: BioOp::Read,
                        block: first,
                        errno: libc::EIO,
                    });
                }
                Ok(k) => got += k,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(IoError::Os {
                        op: BioOp::Read,
                        block: first,
                        errno: e.raw_os_error(),
                    });
                }
            }
        }
        dev.write_blocks(first, &buf)?;
        done += n;
    }
    Ok(())
}

/// A one-shot completion: the end function stores the result, the waiter takes it.
#[derive(Default)]
pub struct Completion {
    slot: Mutex<Option<(Bio, Result<(), IoError>)>>,
    cond: Condvar,
}

impl Completion {
    /// A new, pending completion.
    pub fn new() -> Arc<Completion> {
        Arc::new(Completion::default())
    }

    /// Sets `bio`'s end function to fill this completion.
    pub fn attach(self: &Arc<Self>, bio: &mut Bio) {
        let me = Arc::clone(self);
        bio.set_end_io(Box::new(move |bio, status| {
            *me.slot.lock() = Some((bio, status));
            me.cond.notify_all();
        }));
    }

    /// Waits for the bio and returns it with its status.
    pub fn wait(&self) -> (Bio, Result<(), IoError>) {
        let mut slot = self.slot.lock();
        loop {
            if let Some(done) = slot.take() {
                return done;
            }
            self.cond.wait(&mut slot);
        }
    }
}

/// Synchronous helpers, built on [`BlockDevice::submit`].
pub trait BlockDeviceExt: BlockDevice {
    /// Submits `bio` and waits for it; returns the bio (with its segments) and the status.
    fn submit_and_wait(&self, mut bio: Bio) -> (Bio, Result<(), IoError>) {
        let done = Completion::new();
        done.attach(&mut bio);
        self.submit(bio);
        done.wait()
    }

    /// Reads `buf.len()` bytes starting at device block `start_block`.
    fn read_blocks(&self, start_block: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let mut bio = Bio::new(BioOp::Read, start_block);
        bio.push(BioVec::zeroed(buf.len()));
        let (bio, status) = self.submit_and_wait(bio);
        status?;
        buf.copy_from_slice(bio.vecs()[0].bytes());
        Ok(())
    }

    /// Writes `data` starting at device block `start_block`.
    fn write_blocks(&self, start_block: u64, data: &[u8]) -> Result<(), IoError> {
        let mut bio = Bio::new(BioOp::Write, start_block);
        bio.push(BioVec::from_vec(data.to_vec()));
        self.submit_and_wait(bio).1
    }

    /// Makes completed writes durable.
    fn flush(&self) -> Result<(), IoError> {
        self.submit_and_wait(Bio::flush()).1
    }
}

impl<T: BlockDevice + ?Sized> BlockDeviceExt for T {}

/// Performs `bio` against a flat byte image (used by the memory-backed devices). The caller has
/// checked the bounds.
pub(crate) fn write_to_image(image: &mut [u8], block_size: u32, bio: &Bio) {
    let mut pos = bio.start_block() as usize * block_size as usize;
    for v in bio.vecs() {
        image[pos..pos + v.len()].copy_from_slice(v.bytes());
        pos += v.len();
    }
}

/// Fills a read bio from a flat byte image. The caller has checked the bounds.
pub(crate) fn read_from_image(image: &[u8], block_size: u32, bio: &mut Bio) {
    let mut pos = bio.start_block() as usize * block_size as usize;
    for v in bio.vecs_mut() {
        let len = v.len();
        if let Some(dst) = v.bytes_mut() {
            dst.copy_from_slice(&image[pos..pos + len]);
        }
        pos += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bio_segments_report_their_bytes() {
        let shared: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(vec![7u8; 4096]);
        let mut v = BioVec::new(BioBuf::Shared(shared), 1024, 1024);
        assert_eq!(v.bytes().len(), 1024);
        assert!(
            v.bytes_mut().is_none(),
            "shared memory must not be handed out for writing"
        );
        v.extend(1024);
        assert_eq!(v.len(), 2048);
    }

    #[test]
    #[should_panic(expected = "extended past")]
    fn extending_past_the_buffer_panics() {
        let mut v = BioVec::zeroed(1024);
        v.extend(1);
    }

    #[test]
    fn bounds_are_checked_in_device_blocks() {
        let geo = Geometry {
            block_size: 512,
            nr_blocks: 8,
        };
        let mut bio = Bio::new(BioOp::Write, 6);
        bio.push(BioVec::zeroed(1024));
        assert!(bio.check_bounds(geo).is_ok());
        let mut bio = Bio::new(BioOp::Write, 7);
        bio.push(BioVec::zeroed(1024));
        assert!(matches!(
            bio.check_bounds(geo),
            Err(IoError::OutOfRange {
                block: 7,
                count: 2,
                nr_blocks: 8
            })
        ));
        let mut bio = Bio::new(BioOp::Write, 0);
        bio.push(BioVec::zeroed(100));
        assert!(matches!(
            bio.check_bounds(geo),
            Err(IoError::Misaligned { .. })
        ));
    }
}
