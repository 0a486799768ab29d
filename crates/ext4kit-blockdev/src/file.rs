//! [`FileDevice`]: an image file (or block device) driven by a small pool of IO threads.
//!
//! `submit` hands the bio to a queue and returns; an IO thread performs it with
//! `preadv`/`pwritev` (short transfers continued, `EINTR` retried) and runs the end function.
//! Flush is `fdatasync`. Dropping the device lets the threads finish what is queued and exit.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Sender, unbounded};

use crate::{Bio, BioOp, BlockDevice, Geometry, IoError};

/// Most segments handed to one `preadv`/`pwritev` call (Linux `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// A file-backed device with a pool of IO threads.
#[derive(Debug)]
pub struct FileDevice {
    inner: Arc<FileInner>,
    tx: Option<Sender<Bio>>,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct FileInner {
    file: File,
    geo: Geometry,
    writable: bool,
    /// Start the host's writeback of each write at once (see `UringDevice`): regular files only.
    write_behind: bool,
}

impl FileDevice {
    /// Default number of IO threads.
    pub const DEFAULT_THREADS: usize = 4;

    /// Opens `path` (read-write if `writable`) as a device of `block_size`-byte blocks.
    pub fn open(path: &Path, writable: bool, block_size: u32) -> io::Result<FileDevice> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        FileDevice::from_file(file, writable, block_size, FileDevice::DEFAULT_THREADS)
    }

    /// Wraps an open file. Its size (for block devices: the device size) sets the geometry;
    /// a trailing partial block is not addressable.
    pub fn from_file(
        mut file: File,
        writable: bool,
        block_size: u32,
        threads: usize,
    ) -> io::Result<FileDevice> {
        let len = file.seek(SeekFrom::End(0))?;
        let geo = Geometry {
            block_size,
            nr_blocks: len / u64::from(block_size),
        };
        let write_behind = writable && file.metadata().is_ok_and(|m| m.is_file());
        let inner = Arc::new(FileInner {
            file,
            geo,
            writable,
            write_behind,
        });
        let (tx, rx) = unbounded::<Bio>();
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let inner = Arc::clone(&inner);
            handles.push(
                thread::Builder::new()
                    .name(format!("filedev-io-{i}"))
                    .spawn(move || {
                        for bio in rx {
                            inner.run(bio);
                        }
                    })?,
            );
        }
        Ok(FileDevice {
            inner,
            tx: Some(tx),
            threads: handles,
        })
    }
}

impl Drop for FileDevice {
    fn drop(&mut self) {
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Copies `len` bytes from `src` at `src_off` into `dst` at `dst_off` inside the kernel
/// (`copy_file_range`, Linux), falling back to `pread`/`pwrite` when the kernel cannot (across
/// filesystems on some kernels, old kernels, other systems). A source that ends early is an
/// error.
pub(crate) fn copy_file_to_file(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: u64,
) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let (mut so, mut d_o, mut left) = (src_off, dst_off, len);
        while left > 0 {
            let want = left.min(1 << 30) as usize;
            match rustix::fs::copy_file_range(src, Some(&mut so), dst, Some(&mut d_o), want) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the source file ended early",
                    ));
                }
                Ok(n) => left -= n as u64,
                Err(rustix::io::Errno::INTR) => {}
                Err(
                    rustix::io::Errno::XDEV
                    | rustix::io::Errno::INVAL
                    | rustix::io::Errno::NOSYS
                    | rustix::io::Errno::OPNOTSUPP,
                ) => {
                    return copy_through_memory(src, so, dst, d_o, left);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    copy_through_memory(src, src_off, dst, dst_off, len)
}

/// [`copy_file_to_file`] by `pread` and `pwrite` through a buffer.
fn copy_through_memory(
    src: &File,
    mut so: u64,
    dst: &File,
    mut d_o: u64,
    mut left: u64,
) -> io::Result<()> {
    let mut buf = vec![0u8; (left.min(1 << 20)) as usize];
    while left > 0 {
        let k = (left as usize).min(buf.len());
        let got = rustix::io::pread(src, &mut buf[..k], so)?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the source file ended early",
            ));
        }
        pwritev_all(dst, &[&buf[..got]], d_o)?;
        so += got as u64;
        d_o += got as u64;
        left -= got as u64;
    }
    Ok(())
}

/// Makes what was written to `file` durable: `fdatasync` where it exists, `F_FULLFSYNC` on
/// Apple systems (their `fsync` leaves data in the drive's cache), else `fsync`.
pub(crate) fn sync_data(file: &File) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    return rustix::fs::fdatasync(file).map_err(Into::into);
    #[cfg(any(target_os = "macos", target_os = "ios"))]
    return rustix::fs::fcntl_fullfsync(file)
        .or_else(|_| rustix::fs::fsync(file))
        .map_err(Into::into);
    #[cfg(not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "macos",
        target_os = "ios"
    )))]
    return rustix::fs::fsync(file).map_err(Into::into);
}

impl FileInner {
    fn copy_from_file(
        &self,
        src: &File,
        src_off: u64,
        dst_off: u64,
        len: u64,
    ) -> Result<(), IoError> {
        let block = dst_off / u64::from(self.geo.block_size);
        if !self.writable {
            return Err(IoError::ReadOnly);
        }
        if dst_off + len > self.geo.size_bytes() {
            return Err(IoError::OutOfRange {
                block,
                count: len.div_ceil(u64::from(self.geo.block_size)),
                nr_blocks: self.geo.nr_blocks,
            });
        }
        copy_file_to_file(src, src_off, &self.file, dst_off, len).map_err(|e| IoError::Os {
            op: BioOp::Write,
            block,
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        })?;
        if self.write_behind {
            // As for bio writes: the disk starts on the copy now, not at the flush.
            crate::sys::start_writeback(&self.file, dst_off, len);
        }
        Ok(())
    }

    fn run(&self, mut bio: Bio) {
        let status = bio
            .check_bounds(self.geo)
            .and_then(|()| self.perform(&mut bio));
        bio.complete(status);
    }

    fn perform(&self, bio: &mut Bio) -> Result<(), IoError> {
        let op = bio.op();
        let block = bio.start_block();
        let os = |e: io::Error| IoError::Os {
            op,
            block,
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        };
        let offset = block * u64::from(self.geo.block_size);
        match op {
            BioOp::Write => {
                if !self.writable {
                    return Err(IoError::ReadOnly);
                }
                let slices: Vec<&[u8]> = bio.vecs().iter().map(|v| v.bytes()).collect();
                pwritev_all(&self.file, &slices, offset).map_err(os)?;
                if self.write_behind {
                    let len = slices.iter().map(|s| s.len() as u64).sum();
                    crate::sys::start_writeback(&self.file, offset, len);
                }
                Ok(())
            }
            BioOp::Read => {
                let mut slices: Vec<&mut [u8]> = bio
                    .vecs_mut()
                    .iter_mut()
                    .filter_map(|v| v.bytes_mut())
                    .collect();
                preadv_all(&self.file, &mut slices, offset).map_err(os)
            }
            BioOp::Flush => {
                if !self.writable {
                    return Ok(());
                }
                sync_data(&self.file).map_err(os)
            }
        }
    }
}

/// Writes every byte of `slices` at `offset`, continuing short writes.
pub(crate) fn pwritev_all(file: &File, slices: &[&[u8]], mut offset: u64) -> io::Result<()> {
    let mut idx = 0;
    let mut skip = 0; // bytes of slices[idx] already written
    while idx < slices.len() {
        let end = (idx + IOV_MAX).min(slices.len());
        let iov: Vec<IoSlice<'_>> = slices[idx..end]
            .iter()
            .enumerate()
            .map(|(i, s)| IoSlice::new(if i == 0 { &s[skip..] } else { s }))
            .collect();
        let n = match rustix::io::pwritev(file, &iov, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "pwritev wrote nothing",
                ));
            }
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        offset += n as u64;
        (idx, skip) = advance(|i| slices[i].len(), slices.len(), idx, skip, n);
    }
    Ok(())
}

/// Position (slice `idx`, byte `skip` in it) `n` bytes after (`idx`, `skip`) in `count` slices
/// of lengths `len(i)`, past every slice it finishes (empty ones included).
fn advance(
    len: impl Fn(usize) -> usize,
    count: usize,
    mut idx: usize,
    mut skip: usize,
    mut n: usize,
) -> (usize, usize) {
    while n > 0 && idx < count {
        let avail = len(idx) - skip;
        if n >= avail {
            n -= avail;
            idx += 1;
            skip = 0;
        } else {
            skip += n;
            n = 0;
        }
    }
    while idx < count && len(idx) == skip {
        idx += 1;
        skip = 0;
    }
    (idx, skip)
}

/// Fills every byte of `slices` from `offset`, continuing short reads; bytes past the end of the
/// file read as zeros.
pub(crate) fn preadv_all(file: &File, slices: &mut [&mut [u8]], mut offset: u64) -> io::Result<()> {
    let mut idx = 0;
    let mut skip = 0;
    while idx < slices.len() {
        let end = (idx + IOV_MAX).min(slices.len());
        let n = {
            let mut iov: Vec<IoSliceMut<'_>> = Vec::with_capacity(end - idx);
            for (i, s) in slices[idx..end].iter_mut().enumerate() {
                iov.push(IoSliceMut::new(if i == 0 {
                    &mut s[skip..]
                } else {
                    &mut s[..]
                }));
            }
            match rustix::io::preadv(file, &mut iov, offset) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            // End of file: the rest reads as zeros.
            slices[idx][skip..].fill(0);
            for s in &mut slices[idx + 1..] {
                s.fill(0);
            }
            return Ok(());
        }
        offset += n as u64;
        (idx, skip) = advance(|i| slices[i].len(), slices.len(), idx, skip, n);
    }
    Ok(())
}

impl BlockDevice for FileDevice {
    fn geometry(&self) -> Geometry {
        self.inner.geo
    }

    fn copy_from_file(
        &self,
        src: &File,
        src_off: u64,
        dst_off: u64,
        len: u64,
    ) -> Result<(), IoError> {
        self.inner.copy_from_file(src, src_off, dst_off, len)
    }

    fn submit(&self, bio: Bio) {
        match &self.tx {
            Some(tx) => {
                if let Err(e) = tx.send(bio) {
                    e.0.complete(Err(IoError::Shutdown));
                }
            }
            None => bio.complete(Err(IoError::Shutdown)),
        }
    }

    fn kind(&self) -> &'static str {
        "file"
    }
}

#[cfg(test)]
mod tests {
    use super::advance;

    #[test]
    fn advance_steps_over_finished_and_empty_slices() {
        let lens = [3usize, 0, 5, 2];
        let len = |i: usize| lens[i];
        assert_eq!(advance(len, 4, 0, 0, 4), (2, 1));
        assert_eq!(advance(len, 4, 0, 0, 7), (2, 4));
        assert_eq!(advance(len, 4, 0, 0, 8), (3, 0));
        assert_eq!(advance(len, 4, 0, 0, 10), (4, 0));
        assert_eq!(advance(len, 4, 2, 4, 1), (3, 0));
        // Nothing transferred: a finished slice and the empty one after it are passed.
        assert_eq!(advance(len, 4, 0, 3, 0), (2, 0));
    }
}
