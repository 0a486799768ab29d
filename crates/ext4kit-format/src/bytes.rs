//! Fixed-endian integer access into byte buffers.
//!
//! ext4 is little-endian on disk, jbd2 is big-endian; nothing here uses the
//! host byte order. The readers never panic: an access outside the buffer is a
//! bug in this crate (every parser checks lengths first), so it trips a
//! `debug_assert!` in tests and yields 0 (reads) or does nothing (writes) in
//! release builds.

macro_rules! rw {
    ($read:ident, $write:ident, $ty:ty, $n:expr, $from:ident, $to:ident) => {
        /// Reads the integer at `off`.
        #[inline]
        pub fn $read(buf: &[u8], off: usize) -> $ty {
            match off.checked_add($n).and_then(|end| buf.get(off..end)) {
                Some(s) => {
                    let mut a = [0u8; $n];
                    a.copy_from_slice(s);
                    <$ty>::$from(a)
                }
                None => {
                    debug_assert!(
                        false,
                        "read of {} bytes at {} in a {}-byte buffer",
                        $n,
                        off,
                        buf.len()
                    );
                    0
                }
            }
        }

        /// Writes the integer at `off`.
        #[inline]
        pub fn $write(buf: &mut [u8], off: usize, value: $ty) {
            let len = buf.len();
            match off.checked_add($n).and_then(|end| buf.get_mut(off..end)) {
                Some(s) => s.copy_from_slice(&value.$to()),
                None => {
                    debug_assert!(
                        false,
                        "write of {} bytes at {} in a {}-byte buffer",
                        $n, off, len
                    );
                }
            }
        }
    };
}

rw!(read_u16le, write_u16le, u16, 2, from_le_bytes, to_le_bytes);
rw!(read_u32le, write_u32le, u32, 4, from_le_bytes, to_le_bytes);
rw!(read_u64le, write_u64le, u64, 8, from_le_bytes, to_le_bytes);
rw!(read_u16be, write_u16be, u16, 2, from_be_bytes, to_be_bytes);
rw!(read_u32be, write_u32be, u32, 4, from_be_bytes, to_be_bytes);
rw!(read_u64be, write_u64be, u64, 8, from_be_bytes, to_be_bytes);

/// Reads one byte at `off` (0 if outside, with a debug assertion).
#[inline]
pub fn read_u8(buf: &[u8], off: usize) -> u8 {
    match buf.get(off) {
        Some(b) => *b,
        None => {
            debug_assert!(
                false,
                "read of 1 byte at {} in a {}-byte buffer",
                off,
                buf.len()
            );
            0
        }
    }
}

/// Writes one byte at `off`.
#[inline]
pub fn write_u8(buf: &mut [u8], off: usize, value: u8) {
    let len = buf.len();
    match buf.get_mut(off) {
        Some(b) => *b = value,
        None => debug_assert!(false, "write of 1 byte at {off} in a {len}-byte buffer"),
    }
}

/// Copies `N` bytes starting at `off` into an array.
#[inline]
pub fn read_array<const N: usize>(buf: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    match off.checked_add(N).and_then(|end| buf.get(off..end)) {
        Some(s) => a.copy_from_slice(s),
        None => debug_assert!(
            false,
            "read of {N} bytes at {off} in a {}-byte buffer",
            buf.len()
        ),
    }
    a
}

/// Copies `src` into `buf` at `off`.
#[inline]
pub fn write_bytes(buf: &mut [u8], off: usize, src: &[u8]) {
    let len = buf.len();
    match off
        .checked_add(src.len())
        .and_then(|end| buf.get_mut(off..end))
    {
        Some(s) => s.copy_from_slice(src),
        None => debug_assert!(
            false,
            "write of {} bytes at {off} in a {len}-byte buffer",
            src.len()
        ),
    }
}

/// Returns `buf[off..off + len]`, or an empty slice if out of range (with a debug assertion).
#[inline]
pub fn slice(buf: &[u8], off: usize, len: usize) -> &[u8] {
    match off.checked_add(len).and_then(|end| buf.get(off..end)) {
        Some(s) => s,
        None => {
            debug_assert!(
                false,
                "slice of {len} bytes at {off} in a {}-byte buffer",
                buf.len()
            );
            &[]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endianness() {
        let mut b = [0u8; 8];
        write_u32le(&mut b, 0, 0x1234_5678);
        assert_eq!(b[..4], [0x78, 0x56, 0x34, 0x12]);
        assert_eq!(read_u32be(&b, 0), 0x7856_3412);
        write_u64be(&mut b, 0, 0x0102_0304_0506_0708);
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(read_u16le(&b, 6), 0x0807);
    }
}
