//! Systems without io_uring: [`UringDevice`] cannot be made, so [`super::open_file_device`]
//! always falls back to [`crate::FileDevice`].

use std::fs::File;
use std::path::Path;

use super::{OpenError, UringUnavailable};
use crate::{Bio, BlockDevice, Geometry};

/// An io_uring-driven file device; on this system there is none.
#[derive(Debug)]
pub struct UringDevice {
    never: std::convert::Infallible,
}

impl UringDevice {
    /// Always [`UringUnavailable::NotLinux`].
    pub fn open(_path: &Path, _writable: bool, _block_size: u32) -> Result<UringDevice, OpenError> {
        Err(OpenError::Uring(UringUnavailable::NotLinux))
    }

    /// Always [`UringUnavailable::NotLinux`].
    pub fn from_file(
        _file: File,
        _writable: bool,
        _block_size: u32,
    ) -> Result<UringDevice, OpenError> {
        Err(OpenError::Uring(UringUnavailable::NotLinux))
    }
}

impl BlockDevice for UringDevice {
    fn geometry(&self) -> Geometry {
        match self.never {}
    }

    fn submit(&self, _bio: Bio) {
        match self.never {}
    }

    fn kind(&self) -> &'static str {
        match self.never {}
    }
}
