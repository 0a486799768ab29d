//! [`FaultDevice`]: fails chosen requests and records every request it sees.
//!
//! Rules pick bios to fail: any bio touching a range of device blocks, or the Nth request (of one
//! operation, or of all). A failed bio completes with [`IoError::Injected`] and never reaches the
//! inner device, like a write the disk rejected. Successful bios go to the inner device and
//! complete on its terms (its thread, its order).

use std::sync::Arc;

use parking_lot::Mutex;

use crate::{Bio, BioOp, BlockDevice, Geometry, IoError};

/// Which requests fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultRule {
    /// Fail every bio of `op` (any operation if `None`) that touches device blocks `start..end`.
    Blocks {
        /// Operation filter.
        op: Option<BioOp>,
        /// First failing device block.
        start: u64,
        /// One past the last failing device block.
        end: u64,
    },
    /// Fail the `n`-th (0-based) request of `op` (of any operation if `None`), counted from the
    /// moment the rule was added.
    Nth {
        /// Operation filter.
        op: Option<BioOp>,
        /// Index of the failing request.
        n: u64,
    },
}

/// One request as the fault device saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// Sequence number over all requests.
    pub seq: u64,
    /// Operation.
    pub op: BioOp,
    /// First device block.
    pub start_block: u64,
    /// Length in device blocks.
    pub nr_blocks: u64,
    /// Number of segments.
    pub nr_segments: usize,
    /// Whether a rule failed it.
    pub failed: bool,
}

#[derive(Debug)]
struct ActiveRule {
    rule: FaultRule,
    seen: u64,
}

#[derive(Debug, Default)]
struct FaultState {
    rules: Vec<ActiveRule>,
    log: Vec<RequestRecord>,
    seq: u64,
    record: bool,
}

/// A device that fails requests chosen by rules.
#[derive(Debug, Clone)]
pub struct FaultDevice {
    inner: Arc<dyn BlockDevice>,
    state: Arc<Mutex<FaultState>>,
}

impl FaultDevice {
    /// Passes bios to `inner` unless a rule fails them. Records requests.
    pub fn new(inner: Arc<dyn BlockDevice>) -> FaultDevice {
        FaultDevice {
            inner,
            state: Arc::new(Mutex::new(FaultState {
                record: true,
                ..FaultState::default()
            })),
        }
    }

    /// Adds a rule.
    pub fn add_rule(&self, rule: FaultRule) {
        self.state.lock().rules.push(ActiveRule { rule, seen: 0 });
    }

    /// Removes all rules.
    pub fn clear_rules(&self) {
        self.state.lock().rules.clear();
    }

    /// The requests seen so far.
    pub fn log(&self) -> Vec<RequestRecord> {
        self.state.lock().log.clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_log(&self) {
        self.state.lock().log.clear();
    }

    /// Turns recording on or off (benchmarks turn it off).
    pub fn set_recording(&self, on: bool) {
        self.state.lock().record = on;
    }

    /// Number of failed requests so far.
    pub fn nr_failed(&self) -> usize {
        self.state.lock().log.iter().filter(|r| r.failed).count()
    }
}

impl BlockDevice for FaultDevice {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }

    fn submit(&self, bio: Bio) {
        let bs = u64::from(self.inner.geometry().block_size);
        let nr_blocks = bio.len_bytes() as u64 / bs;
        let (start, end) = (bio.start_block(), bio.start_block() + nr_blocks);
        let failed = {
            let mut st = self.state.lock();
            let mut failed = false;
            for r in &mut st.rules {
                match r.rule {
                    FaultRule::Blocks {
                        op,
                        start: fs,
                        end: fe,
                    } => {
                        if op.is_none_or(|o| o == bio.op())
                            && bio.op() != BioOp::Flush
                            && start < fe
                            && fs < end
                        {
                            failed = true;
                        }
                    }
                    FaultRule::Nth { op, n } => {
                        if op.is_none_or(|o| o == bio.op()) {
                            if r.seen == n {
                                failed = true;
                            }
                            r.seen += 1;
                        }
                    }
                }
            }
            let seq = st.seq;
            st.seq += 1;
            if st.record {
                st.log.push(RequestRecord {
                    seq,
                    op: bio.op(),
                    start_block: start,
                    nr_blocks,
                    nr_segments: bio.vecs().len(),
                    failed,
                });
            }
            failed
        };
        if failed {
            let op = bio.op();
            bio.complete(Err(IoError::Injected { op, block: start }));
        } else {
            self.inner.submit(bio);
        }
    }

    fn kind(&self) -> &'static str {
        "fault"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlockDeviceExt, MemDevice};

    #[test]
    fn rules_fail_chosen_blocks_and_the_nth_request() {
        let mem = MemDevice::new(512, 32);
        let dev = FaultDevice::new(Arc::new(mem.clone()));
        dev.add_rule(FaultRule::Blocks {
            op: Some(BioOp::Write),
            start: 10,
            end: 12,
        });
        dev.add_rule(FaultRule::Nth {
            op: Some(BioOp::Write),
            n: 2,
        });
        let one = vec![1u8; 1024];
        assert!(dev.write_blocks(0, &one).is_ok()); // write #0
        assert!(dev.write_blocks(11, &one).is_err()); // write #1, touches 11..13
        assert!(dev.write_blocks(4, &one).is_err()); // write #2 = Nth
        assert!(dev.write_blocks(6, &one).is_ok()); // write #3
        let mut buf = vec![0u8; 1024];
        assert!(
            dev.read_blocks(10, &mut buf).is_ok(),
            "the block rule only covers writes"
        );
        let log = dev.log();
        assert_eq!(
            log.iter().map(|r| r.failed).collect::<Vec<_>>(),
            vec![false, true, true, false, false]
        );
        assert_eq!(mem.snapshot()[11 * 512], 0);
        assert_eq!(mem.snapshot()[6 * 512], 1);
    }
}
