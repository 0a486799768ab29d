//! System calls rustix does not wrap.
#![allow(unsafe_code)] // FFI calls, each with its SAFETY note.

use std::fs::File;
#[cfg(target_os = "linux")]
use std::os::fd::AsRawFd;

/// Asks the kernel to start writing `offset..offset+len` of `file` to its disk now
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), without waiting. A hint: failure is ignored,
/// since a later flush writes whatever is left.
#[cfg(target_os = "linux")]
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor stays open for
    // the call because `file` is borrowed.
    let _ =
        unsafe { libc::sync_file_range(file.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Elsewhere there is no such call: the flush writes everything.
#[cfg(not(target_os = "linux"))]
pub(crate) fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// The file behind an attached loop device (`LOOP_GET_STATUS64`): its `(st_dev, st_ino)`, with
/// `st_dev` in the encoding `stat` returns. Fails (ENXIO) when the device is not attached.
#[cfg(target_os = "linux")]
pub fn loop_backing_file(loop_dev: &File) -> std::io::Result<(u64, u64)> {
    const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
    // struct loop_info64: 232 bytes, lo_device then lo_inode first, 8-byte aligned.
    let mut info = [0u64; 29];
    // SAFETY: LOOP_GET_STATUS64 writes one struct loop_info64 (232 bytes) into the buffer,
    // which is 232 bytes of u64s (so aligned) and outlives the call; the descriptor is borrowed.
    let r = unsafe {
        libc::ioctl(
            loop_dev.as_raw_fd(),
            LOOP_GET_STATUS64 as _,
            info.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // lo_device is the kernel's huge_encode_dev: minor's low byte, major, then minor's rest.
    let enc = info[0];
    let major = ((enc >> 8) & 0xfff) as u32;
    let minor = ((enc & 0xff) | ((enc >> 12) & !0xff)) as u32;
    Ok((libc::makedev(major, minor), info[1]))
}
