//! [`CrashDevice`]: live contents vs. durable contents.
//!
//! Writes land in the live image at once and are remembered as "not yet durable". A flush makes
//! every write that completed before it durable. [`CrashDevice::crash`] returns what a power cut
//! would leave: the durable image plus, optionally, a random subset of the unflushed writes
//! (chosen per device block, applied in completion order), because a disk may have written any
//! of them.
//!
//! [`CrashDevice::cut_power_after`] freezes that picture after a chosen number of further write
//! and flush requests: later requests still reach the live image (the workload runs on), but
//! neither the durable image nor the set of unflushed writes a crash draws from, so a test can
//! crash "after the Nth bio" of a workload that runs to its end.

use std::sync::Arc;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Bio, BioOp, BlockDevice, Geometry, read_from_image, write_to_image};

#[derive(Debug)]
struct CrashState {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Unflushed writes in completion order: (byte offset, data).
    unflushed: Vec<(usize, Vec<u8>)>,
    flushes: u64,
    /// Write and flush requests seen.
    requests: u64,
    /// Requests after this count no longer change what a crash leaves.
    frozen_after: Option<u64>,
}

/// A device that can simulate a power cut.
#[derive(Debug, Clone)]
pub struct CrashDevice {
    geo: Geometry,
    state: Arc<Mutex<CrashState>>,
}

impl CrashDevice {
    /// A zero-filled device.
    pub fn new(block_size: u32, nr_blocks: u64) -> CrashDevice {
        let len =
            usize::try_from(nr_blocks * u64::from(block_size)).expect("crash device too large");
        CrashDevice::from_image(block_size, vec![0u8; len])
    }

    /// A device whose live and durable contents both start as `image`.
    pub fn from_image(block_size: u32, image: Vec<u8>) -> CrashDevice {
        assert_eq!(
            image.len() % block_size as usize,
            0,
            "image is not a whole number of blocks"
        );
        let geo = Geometry {
            block_size,
            nr_blocks: (image.len() / block_size as usize) as u64,
        };
        CrashDevice {
            geo,
            state: Arc::new(Mutex::new(CrashState {
                durable: image.clone(),
                live: image,
                unflushed: Vec::new(),
                flushes: 0,
                requests: 0,
                frozen_after: None,
            })),
        }
    }

    /// What a reader sees now.
    pub fn live(&self) -> Vec<u8> {
        self.state.lock().live.clone()
    }

    /// What is certainly on the medium.
    pub fn durable(&self) -> Vec<u8> {
        self.state.lock().durable.clone()
    }

    /// Number of writes not yet made durable by a flush.
    pub fn nr_unflushed(&self) -> usize {
        self.state.lock().unflushed.len()
    }

    /// Number of flushes seen.
    pub fn nr_flushes(&self) -> u64 {
        self.state.lock().flushes
    }

    /// Number of write and flush requests seen.
    pub fn nr_requests(&self) -> u64 {
        self.state.lock().requests
    }

    /// Cuts the power after `n` more write or flush requests: from then on requests still
    /// change the live image, but [`CrashDevice::durable`] and [`CrashDevice::crash`] stay as
    /// they were after the `n`th (the writes in flight at the cut stay candidates of `crash`).
    pub fn cut_power_after(&self, n: u64) {
        let mut st = self.state.lock();
        st.frozen_after = Some(st.requests + n);
    }

    /// The image after a power cut now: durable contents plus each unflushed device block with
    /// probability `keep` (0.0 keeps none, 1.0 keeps all), decided by `seed`.
    pub fn crash(&self, seed: u64, keep: f64) -> Vec<u8> {
        let st = self.state.lock();
        let mut img = st.durable.clone();
        let mut rng = StdRng::seed_from_u64(seed);
        let bs = self.geo.block_size as usize;
        for (off, data) in &st.unflushed {
            for (i, chunk) in data.chunks(bs).enumerate() {
                if keep >= 1.0 || (keep > 0.0 && rng.random_bool(keep)) {
                    let at = off + i * bs;
                    img[at..at + chunk.len()].copy_from_slice(chunk);
                }
            }
        }
        img
    }
}

impl BlockDevice for CrashDevice {
    fn geometry(&self) -> Geometry {
        self.geo
    }

    fn submit(&self, mut bio: Bio) {
        let status = bio.check_bounds(self.geo).map(|()| {
            let mut st = self.state.lock();
            if bio.op() != BioOp::Read {
                st.requests += 1;
            }
            let frozen = st.frozen_after.is_some_and(|n| st.requests > n);
            match bio.op() {
                BioOp::Write if frozen => write_to_image(&mut st.live, self.geo.block_size, &bio),
                BioOp::Flush if frozen => {}
                BioOp::Write => {
                    write_to_image(&mut st.live, self.geo.block_size, &bio);
                    let off = bio.start_block() as usize * self.geo.block_size as usize;
                    let data: Vec<u8> = bio
                        .vecs()
                        .iter()
                        .flat_map(|v| v.bytes().iter().copied())
                        .collect();
                    st.unflushed.push((off, data));
                }
                BioOp::Read => read_from_image(&st.live, self.geo.block_size, &mut bio),
                BioOp::Flush => {
                    let pending = std::mem::take(&mut st.unflushed);
                    for (off, data) in pending {
                        st.durable[off..off + data.len()].copy_from_slice(&data);
                    }
                    st.flushes += 1;
                }
            }
        });
        bio.complete(status);
    }

    fn kind(&self) -> &'static str {
        "crash"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BlockDeviceExt;

    #[test]
    fn only_flushed_writes_survive_a_crash_that_keeps_nothing() {
        let dev = CrashDevice::new(512, 8);
        dev.write_blocks(0, &[1u8; 512]).unwrap();
        dev.flush().unwrap();
        dev.write_blocks(1, &[2u8; 1024]).unwrap();
        assert_eq!(dev.live()[512], 2);
        let lost = dev.crash(1, 0.0);
        assert_eq!((lost[0], lost[512], lost[1024]), (1, 0, 0));
        let kept = dev.crash(1, 1.0);
        assert_eq!((kept[0], kept[512], kept[1024]), (1, 2, 2));
        // Some seed keeps exactly one of the two unflushed blocks: a torn multi-block write.
        let torn = (0..64).any(|s| {
            let img = dev.crash(s, 0.5);
            img[512] != img[1024]
        });
        assert!(
            torn,
            "a crash must be able to keep part of an unflushed multi-block write"
        );
    }

    #[test]
    fn power_cut_after_n_requests_freezes_what_a_crash_leaves() {
        let dev = CrashDevice::new(512, 8);
        dev.write_blocks(0, &[1u8; 512]).unwrap();
        dev.cut_power_after(2);
        dev.write_blocks(1, &[2u8; 512]).unwrap();
        dev.flush().unwrap();
        // Past the cut: the live image changes, what survives does not.
        dev.write_blocks(2, &[3u8; 512]).unwrap();
        dev.flush().unwrap();
        assert_eq!(dev.nr_requests(), 5);
        assert_eq!((dev.live()[512], dev.live()[1024]), (2, 3));
        let img = dev.crash(7, 1.0);
        assert_eq!((img[0], img[512], img[1024]), (1, 2, 0));
        assert_eq!(dev.durable()[1024], 0);
    }
}
