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
    let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return };
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor stays open for
    // the call because `file` is borrowed.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Elsewhere there is no such call: the flush writes everything.
#[cfg(not(target_os = "linux"))]
pub(crate) fn start_writeback(_file: &File, _offset: u64, _len: u64) {}
