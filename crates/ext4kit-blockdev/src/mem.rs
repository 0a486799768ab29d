//! [`MemDevice`]: a device in memory.
//!
//! By default a bio completes inside `submit`, on the caller's thread: the harshest timing for
//! a writeback engine (a completion may arrive before the submitter has taken its next step).
//! [`MemDevice::threaded`] completes on a device thread instead.

use std::sync::Arc;
use std::thread;

use crossbeam_channel::{Sender, unbounded};
use parking_lot::RwLock;

use crate::{Bio, BioOp, BlockDevice, Geometry, IoError, read_from_image, write_to_image};

/// A device whose contents live in memory.
#[derive(Debug, Clone)]
pub struct MemDevice {
    inner: Arc<MemInner>,
    tx: Option<Sender<Bio>>,
}

#[derive(Debug)]
struct MemInner {
    geo: Geometry,
    image: RwLock<Vec<u8>>,
}

impl MemDevice {
    /// A zero-filled device of `nr_blocks` blocks of `block_size` bytes, completing inline.
    pub fn new(block_size: u32, nr_blocks: u64) -> MemDevice {
        let len =
            usize::try_from(nr_blocks * u64::from(block_size)).expect("memory device too large");
        MemDevice::from_image(block_size, vec![0u8; len])
    }

    /// A device over an existing image (its length must be a multiple of `block_size`).
    pub fn from_image(block_size: u32, image: Vec<u8>) -> MemDevice {
        assert_eq!(
            image.len() % block_size as usize,
            0,
            "image is not a whole number of blocks"
        );
        let geo = Geometry {
            block_size,
            nr_blocks: (image.len() / block_size as usize) as u64,
        };
        MemDevice {
            inner: Arc::new(MemInner {
                geo,
                image: RwLock::new(image),
            }),
            tx: None,
        }
    }

    /// The same device, but completing every bio on a device thread.
    pub fn threaded(self) -> MemDevice {
        let (tx, rx) = unbounded::<Bio>();
        let inner = Arc::clone(&self.inner);
        thread::Builder::new()
            .name("memdev-io".into())
            .spawn(move || {
                for bio in rx {
                    inner.run(bio);
                }
            })
            .expect("spawn memdev thread");
        MemDevice {
            inner: self.inner,
            tx: Some(tx),
        }
    }

    /// A copy of the whole contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.inner.image.read().clone()
    }

    /// Runs `f` on the contents without copying them.
    pub fn with_image<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(&self.inner.image.read())
    }

    /// Overwrites bytes at `offset` directly (test setup; bypasses bios).
    pub fn poke(&self, offset: usize, data: &[u8]) {
        self.inner.image.write()[offset..offset + data.len()].copy_from_slice(data);
    }
}

impl MemInner {
    fn run(&self, mut bio: Bio) {
        let status = bio.check_bounds(self.geo).map(|()| match bio.op() {
            BioOp::Write => write_to_image(&mut self.image.write(), self.geo.block_size, &bio),
            BioOp::Read => read_from_image(&self.image.read(), self.geo.block_size, &mut bio),
            BioOp::Flush => {}
        });
        bio.complete(status);
    }
}

impl BlockDevice for MemDevice {
    fn geometry(&self) -> Geometry {
        self.inner.geo
    }

    fn submit(&self, bio: Bio) {
        match &self.tx {
            Some(tx) => {
                if let Err(e) = tx.send(bio) {
                    e.0.complete(Err(IoError::Shutdown));
                }
            }
            None => self.inner.run(bio),
        }
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BlockDeviceExt;

    #[test]
    fn write_then_read_round_trips_inline_and_threaded() {
        for dev in [MemDevice::new(512, 64), MemDevice::new(512, 64).threaded()] {
            let data: Vec<u8> = (0..2048u32).map(|i| (i * 7) as u8).collect();
            dev.write_blocks(3, &data).unwrap();
            let mut back = vec![0u8; 2048];
            dev.read_blocks(3, &mut back).unwrap();
            assert_eq!(back, data);
            assert_eq!(&dev.snapshot()[3 * 512..3 * 512 + 2048], &data[..]);
            let err = dev.write_blocks(63, &data).unwrap_err();
            assert!(matches!(err, IoError::OutOfRange { .. }), "{err}");
        }
    }
}
