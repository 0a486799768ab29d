//! The write plan of a new filesystem and its submission to the device.
//!
//! mkfs first decides every byte range it writes: data pieces (metadata
//! blocks, possibly sharing one buffer, such as the descriptor table and its
//! backups) and zero ranges (inode tables, the journal, the end of the
//! device). Data pieces must not overlap each other; zero ranges may overlap
//! anything and are cut around the data. [`WritePlan::submit`] then writes the
//! pieces in address order as bios of at most [`MAX_BIO_BYTES`], keeping a
//! bounded number in flight, and reads-modifies-writes device blocks that a
//! piece covers only partly (a device with 4 KiB blocks under a 1 KiB-block
//! filesystem, or the superblock at byte 1024).

use std::sync::{Arc, Condvar, Mutex};

use ext4kit_blockdev::{Bio, BioBuf, BioOp, BioVec, BlockDevice, BlockDeviceExt, IoError};

use super::MkfsError;

/// Largest bio submitted.
pub(crate) const MAX_BIO_BYTES: usize = 1 << 20;
/// Most bytes in flight at once.
const MAX_IN_FLIGHT_BYTES: usize = 32 << 20;

/// Bytes of a data piece: a window of a shared buffer.
#[derive(Clone)]
struct Shared {
    buf: Arc<Vec<u8>>,
    offset: usize,
}

#[derive(Clone)]
enum Payload {
    Data(Shared),
    Zero,
}

#[derive(Clone)]
struct Piece {
    offset: u64,
    len: u64,
    payload: Payload,
}

/// Byte ranges to write, in any order.
#[derive(Default)]
pub(crate) struct WritePlan {
    data: Vec<Piece>,
    zeros: Vec<(u64, u64)>,
}

impl WritePlan {
    /// Writes `bytes` at byte `offset`.
    pub fn data(&mut self, offset: u64, bytes: Vec<u8>) {
        let len = bytes.len();
        self.shared(offset, Arc::new(bytes), 0, len);
    }

    /// Writes `buf[from..from + len]` at byte `offset`.
    pub fn shared(&mut self, offset: u64, buf: Arc<Vec<u8>>, from: usize, len: usize) {
        if len == 0 {
            return;
        }
        self.data.push(Piece {
            offset,
            len: len as u64,
            payload: Payload::Data(Shared { buf, offset: from }),
        });
    }

    /// Zeroes `len` bytes at `offset` (except where data is written).
    pub fn zero(&mut self, offset: u64, len: u64) {
        if len > 0 {
            self.zeros.push((offset, len));
        }
    }

    /// Bytes of data (not zeroing) planned so far.
    pub fn data_bytes(&self) -> u64 {
        self.data.iter().map(|p| p.len).sum()
    }

    /// The pieces in address order, zero ranges cut around the data.
    fn resolve(mut self) -> Result<Vec<Piece>, MkfsError> {
        self.data.sort_by_key(|p| p.offset);
        for w in self.data.windows(2) {
            if w[0].offset + w[0].len > w[1].offset {
                return Err(MkfsError::Internal(format!(
                    "overlapping writes at bytes {} and {}",
                    w[0].offset, w[1].offset
                )));
            }
        }
        // Merge the zero ranges.
        self.zeros.sort_unstable();
        let mut zeros: Vec<(u64, u64)> = Vec::new(); // (start, end)
        for (s, l) in self.zeros {
            let e = s.saturating_add(l);
            match zeros.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => zeros.push((s, e)),
            }
        }
        // Subtract the data ranges and interleave.
        let mut out = Vec::with_capacity(self.data.len() + zeros.len());
        let mut di = 0;
        for (mut zs, ze) in zeros {
            while zs < ze {
                while di < self.data.len() && self.data[di].offset + self.data[di].len <= zs {
                    out.push(self.data[di].clone());
                    di += 1;
                }
                match self.data.get(di) {
                    Some(d) if d.offset < ze => {
                        if d.offset > zs {
                            out.push(Piece {
                                offset: zs,
                                len: d.offset - zs,
                                payload: Payload::Zero,
                            });
                        }
                        zs = d.offset + d.len;
                        out.push(d.clone());
                        di += 1;
                    }
                    _ => {
                        out.push(Piece {
                            offset: zs,
                            len: ze - zs,
                            payload: Payload::Zero,
                        });
                        zs = ze;
                    }
                }
            }
        }
        out.extend(self.data.drain(di..));
        Ok(out)
    }

    /// Writes everything to `dev` and waits for it; returns the bytes written.
    pub fn submit(self, dev: &dyn BlockDevice) -> Result<u64, MkfsError> {
        let pieces = self.resolve()?;
        let dbs = u64::from(dev.geometry().block_size);
        let mut batch = Batch::new();
        let mut partial: Option<(u64, Vec<u8>)> = None;
        let zero_buf: Arc<Vec<u8>> = Arc::new(vec![0u8; MAX_BIO_BYTES]);
        let mut written = 0u64;
        let result = (|| -> Result<(), MkfsError> {
            for p in &pieces {
                written += p.len;
                let mut pos = p.offset;
                let end = p.offset + p.len;
                let bytes_at = |pos: u64, len: usize| -> Option<&[u8]> {
                    match &p.payload {
                        Payload::Zero => None,
                        Payload::Data(s) => {
                            let from = s.offset + (pos - p.offset) as usize;
                            s.buf.get(from..from + len)
                        }
                    }
                };
                while pos < end {
                    let dblock = pos / dbs;
                    let in_block = pos % dbs;
                    let n = (dbs - in_block).min(end - pos);
                    if in_block != 0 || n < dbs {
                        // Partial device block: read-modify-write.
                        if partial.as_ref().is_some_and(|(b, _)| *b != dblock) {
                            if let Some((b, buf)) = partial.take() {
                                batch.submit(dev, write_bio(b, BioVec::from_vec(buf)))?;
                            }
                        }
                        if partial.is_none() {
                            let mut buf = vec![0u8; dbs as usize];
                            dev.read_blocks(dblock, &mut buf)?;
                            partial = Some((dblock, buf));
                        }
                        if let Some((_, buf)) = partial.as_mut() {
                            let dst = &mut buf[in_block as usize..(in_block + n) as usize];
                            match bytes_at(pos, n as usize) {
                                Some(src) => dst.copy_from_slice(src),
                                None if matches!(p.payload, Payload::Zero) => dst.fill(0),
                                None => {
                                    return Err(MkfsError::Internal(
                                        "write piece outside its buffer".into(),
                                    ));
                                }
                            }
                        }
                        pos += n;
                        continue;
                    }
                    // Whole device blocks.
                    if let Some((b, buf)) = partial.take() {
                        batch.submit(dev, write_bio(b, BioVec::from_vec(buf)))?;
                    }
                    let whole = (end - pos) / dbs * dbs;
                    let max = (MAX_BIO_BYTES as u64 / dbs).max(1) * dbs;
                    let len = whole.min(max) as usize;
                    let vec = match &p.payload {
                        Payload::Zero => {
                            if len > zero_buf.len() {
                                return Err(MkfsError::Internal(
                                    "device block larger than the zero buffer".into(),
                                ));
                            }
                            BioVec::new(BioBuf::Shared(zero_buf.clone()), 0, len)
                        }
                        Payload::Data(s) => {
                            let from = s.offset + (pos - p.offset) as usize;
                            if s.buf.len() < from + len {
                                return Err(MkfsError::Internal(
                                    "write piece outside its buffer".into(),
                                ));
                            }
                            BioVec::new(BioBuf::Shared(s.buf.clone()), from, len)
                        }
                    };
                    let len = vec.len() as u64;
                    batch.submit(dev, write_bio(dblock, vec))?;
                    pos += len;
                }
            }
            if let Some((b, buf)) = partial.take() {
                batch.submit(dev, write_bio(b, BioVec::from_vec(buf)))?;
            }
            Ok(())
        })();
        let waited = batch.wait_all();
        result?;
        waited?;
        Ok(written)
    }
}

fn write_bio(block: u64, vec: BioVec) -> Bio {
    let mut bio = Bio::new(BioOp::Write, block);
    bio.push(vec);
    bio
}

#[derive(Default)]
struct BatchState {
    in_flight_bytes: usize,
    in_flight: usize,
    error: Option<IoError>,
}

/// Bios in flight, bounded by bytes; the first error is kept.
struct Batch {
    state: Arc<(Mutex<BatchState>, Condvar)>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            state: Arc::new((Mutex::new(BatchState::default()), Condvar::new())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BatchState> {
        // A poisoned lock only means an end function panicked; the counters are still usable.
        self.state
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Submits `bio`, first waiting until it fits under the in-flight limit.
    /// Fails early with the first IO error seen so far.
    fn submit(&mut self, dev: &dyn BlockDevice, mut bio: Bio) -> Result<(), MkfsError> {
        let bytes = bio.len_bytes();
        {
            let mut st = self.lock();
            while st.in_flight > 0
                && st.in_flight_bytes + bytes > MAX_IN_FLIGHT_BYTES
                && st.error.is_none()
            {
                st = self
                    .state
                    .1
                    .wait(st)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if let Some(e) = st.error.clone() {
                return Err(MkfsError::Io(e));
            }
            st.in_flight += 1;
            st.in_flight_bytes += bytes;
        }
        let state = Arc::clone(&self.state);
        bio.set_end_io(Box::new(move |_bio, status| {
            let mut st = state
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            st.in_flight -= 1;
            st.in_flight_bytes -= bytes;
            if let Err(e) = status {
                st.error.get_or_insert(e);
            }
            state.1.notify_all();
        }));
        dev.submit(bio);
        Ok(())
    }

    /// Waits for every bio; returns the first error.
    fn wait_all(&mut self) -> Result<(), MkfsError> {
        let mut st = self.lock();
        while st.in_flight > 0 {
            st = self
                .state
                .1
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        match st.error.clone() {
            Some(e) => Err(MkfsError::Io(e)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext4kit_blockdev::MemDevice;

    fn run(dbs: u32, plan: WritePlan, fill: u8) -> Vec<u8> {
        let dev = MemDevice::new(dbs, 64 * 1024 / u64::from(dbs));
        dev.poke(0, &vec![fill; 64 * 1024]);
        plan.submit(&dev).unwrap();
        dev.snapshot()
    }

    #[test]
    fn zeros_cut_around_data_any_device_block() {
        for dbs in [512u32, 1024, 4096] {
            let mut p = WritePlan::default();
            p.zero(1024, 30_000);
            p.data(1024, vec![1; 1024]);
            p.data(5000, vec![2; 100]);
            p.zero(40_000, 10);
            let img = run(dbs, p, 0xAA);
            assert!(img[..1024].iter().all(|&b| b == 0xAA), "dbs {dbs}");
            assert!(img[1024..2048].iter().all(|&b| b == 1));
            assert!(img[2048..5000].iter().all(|&b| b == 0));
            assert!(img[5000..5100].iter().all(|&b| b == 2));
            assert!(img[5100..31_024].iter().all(|&b| b == 0));
            assert!(img[31_024..40_000].iter().all(|&b| b == 0xAA));
            assert!(img[40_000..40_010].iter().all(|&b| b == 0));
            assert!(img[40_010..].iter().all(|&b| b == 0xAA));
        }
    }

    #[test]
    fn overlapping_data_is_refused() {
        let mut p = WritePlan::default();
        p.data(0, vec![1; 10]);
        p.data(5, vec![1; 10]);
        let dev = MemDevice::new(512, 8);
        assert!(matches!(p.submit(&dev), Err(MkfsError::Internal(_))));
    }
}
