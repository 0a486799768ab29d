//! [`UringDevice`]: an image file driven by io_uring, probed at run time (Linux; elsewhere
//! [`open_file_device`] always answers with [`FileDevice`]).
//!
//! One ring thread owns the ring. `submit` queues the bio and wakes the thread through an
//! eventfd the ring polls; the thread turns bios into `READV`/`WRITEV`/`FSYNC(DATASYNC)` entries,
//! continues short transfers, and runs each end function when its last byte is done.
//!
//! io_uring is not always there: kernels without it or seccomp filters (containers) answer
//! `ENOSYS`, the sysctl `kernel.io_uring_disabled` answers `EPERM`, other systems have none.
//! [`open_file_device`] tries io_uring and falls back to [`FileDevice`], returning the reason so
//! the caller can say why.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::{BlockDevice, FileDevice};

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::UringDevice;
#[cfg(not(target_os = "linux"))]
mod other;
#[cfg(not(target_os = "linux"))]
pub use other::UringDevice;

/// Why io_uring cannot be used here.
#[derive(Debug)]
pub enum UringUnavailable {
    /// `io_uring_setup` answered ENOSYS: the kernel lacks io_uring, or a seccomp filter (common
    /// in containers) blocks it.
    NotSupported,
    /// `io_uring_setup` answered EPERM: the sysctl `kernel.io_uring_disabled` (value given, if
    /// readable) forbids it for this process.
    NotPermitted {
        /// Contents of /proc/sys/kernel/io_uring_disabled.
        sysctl: Option<String>,
    },
    /// The kernel's io_uring lacks an operation we need.
    MissingOpcode(&'static str),
    /// Turned off by the environment variable `EXT4KIT_NO_URING`.
    DisabledByEnv,
    /// Not Linux: io_uring does not exist here.
    NotLinux,
    /// Any other setup failure.
    Setup(io::Error),
}

impl fmt::Display for UringUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UringUnavailable::NotSupported => {
                f.write_str("io_uring unavailable (ENOSYS: kernel without io_uring, or blocked by a seccomp filter)")
            }
            UringUnavailable::NotPermitted { sysctl } => write!(
                f,
                "io_uring not permitted (EPERM: sysctl kernel.io_uring_disabled = {})",
                sysctl.as_deref().unwrap_or("unreadable")
            ),
            UringUnavailable::MissingOpcode(op) => write!(f, "io_uring lacks the {op} operation on this kernel"),
            UringUnavailable::DisabledByEnv => f.write_str("io_uring turned off by EXT4KIT_NO_URING"),
            UringUnavailable::NotLinux => f.write_str("io_uring exists only on Linux"),
            UringUnavailable::Setup(e) => write!(f, "io_uring setup failed: {e}"),
        }
    }
}

impl std::error::Error for UringUnavailable {}

/// Opens `path` with io_uring if it works here, else with [`FileDevice`]; the second value says
/// why io_uring was not used.
pub fn open_file_device(
    path: &Path,
    writable: bool,
    block_size: u32,
) -> io::Result<(Arc<dyn BlockDevice>, Option<UringUnavailable>)> {
    match UringDevice::open(path, writable, block_size) {
        Ok(dev) => Ok((Arc::new(dev), None)),
        Err(OpenError::Io(e)) => Err(e),
        Err(OpenError::Uring(why)) => Ok((
            Arc::new(FileDevice::open(path, writable, block_size)?),
            Some(why),
        )),
    }
}

/// [`open_file_device`] on a file already open (read-write if `writable`): the caller chose
/// how to open and lock it.
pub fn open_file_device_from(
    file: std::fs::File,
    writable: bool,
    block_size: u32,
) -> io::Result<(Arc<dyn BlockDevice>, Option<UringUnavailable>)> {
    let spare = file.try_clone()?;
    match UringDevice::from_file(file, writable, block_size) {
        Ok(dev) => Ok((Arc::new(dev), None)),
        Err(OpenError::Io(e)) => Err(e),
        Err(OpenError::Uring(why)) => Ok((
            Arc::new(FileDevice::from_file(
                spare,
                writable,
                block_size,
                FileDevice::DEFAULT_THREADS,
            )?),
            Some(why),
        )),
    }
}

/// Failure to open a [`UringDevice`].
#[derive(Debug)]
pub enum OpenError {
    /// The file could not be opened.
    Io(io::Error),
    /// io_uring is not usable.
    Uring(UringUnavailable),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Io(e) => e.fmt(f),
            OpenError::Uring(u) => u.fmt(f),
        }
    }
}

impl std::error::Error for OpenError {}
