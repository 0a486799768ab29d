//! [`ErrSeq`]: writeback errors reported once per open handle (the kernel's `errseq_t`).
//!
//! A mapping keeps one value: the last errno, a "seen" bit and a counter. A handle samples it
//! when opened and keeps a cursor; `check_and_advance` reports an error if the value moved past
//! the cursor, then moves the cursor. So every handle sees every error exactly once, errors
//! nobody has seen yet are reported even to handles opened after them, and errors already seen
//! are not reported to later openers.

use std::sync::atomic::{AtomicU64, Ordering};

const ERRNO_BITS: u64 = 12;
const ERRNO_MASK: u64 = (1 << ERRNO_BITS) - 1;
const SEEN: u64 = 1 << ERRNO_BITS;
const CTR_INC: u64 = 1 << (ERRNO_BITS + 1);

/// An error sequence.
#[derive(Debug, Default)]
pub struct ErrSeq(AtomicU64);

impl ErrSeq {
    /// Records an error (`errno` > 0).
    pub fn set(&self, errno: i32) {
        let errno = u64::from(errno.unsigned_abs()) & ERRNO_MASK;
        let mut old = self.0.load(Ordering::Acquire);
        loop {
            let mut new = (old & !(ERRNO_MASK | SEEN)) | errno;
            if old & SEEN != 0 {
                new = new.wrapping_add(CTR_INC);
            }
            if new == old {
                return;
            }
            match self
                .0
                .compare_exchange_weak(old, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(cur) => old = cur,
            }
        }
    }

    /// The cursor for a new handle: an error nobody has seen yet is still reported to it.
    pub fn sample(&self) -> u64 {
        let v = self.0.load(Ordering::Acquire);
        if v & SEEN == 0 { 0 } else { v }
    }

    /// Reports the error recorded since `cursor`, if any, and advances `cursor`.
    pub fn check_and_advance(&self, cursor: &mut u64) -> Option<i32> {
        let old = self.0.load(Ordering::Acquire);
        if old == *cursor {
            return None;
        }
        let new = old | SEEN;
        if new != old {
            // If a newer error races in, the swap fails and the cursor stays behind it, so the
            // next check reports the newer error.
            let _ = self
                .0
                .compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire);
        }
        *cursor = new;
        let errno = (new & ERRNO_MASK) as i32;
        if errno == 0 { None } else { Some(errno) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_handle_sees_each_error_once() {
        let e = ErrSeq::default();
        let mut a = e.sample();
        assert_eq!(e.check_and_advance(&mut a), None);
        e.set(5);
        let mut b = e.sample(); // opened after the error, nobody has seen it: b reports it too
        assert_eq!(e.check_and_advance(&mut a), Some(5));
        assert_eq!(e.check_and_advance(&mut a), None);
        assert_eq!(e.check_and_advance(&mut b), Some(5));
        let mut c = e.sample(); // opened after the error was seen: not reported
        assert_eq!(e.check_and_advance(&mut c), None);
        e.set(28);
        e.set(5); // two errors before anyone looks: reported once, the latest errno
        assert_eq!(e.check_and_advance(&mut a), Some(5));
        assert_eq!(e.check_and_advance(&mut b), Some(5));
        assert_eq!(e.check_and_advance(&mut c), Some(5));
        assert_eq!(e.check_and_advance(&mut c), None);
    }
}
