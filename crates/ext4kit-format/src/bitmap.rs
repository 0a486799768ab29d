//! Bit operations over block and inode bitmaps, in ext4's on-disk order:
//! bit `n` is bit `n % 8` (least significant first) of byte `n / 8`.
//!
//! Functions take the bitmap bytes and bit indices; indices outside the
//! buffer are reported (`None`) or ignored, never panicked on. Searches take a
//! half-open range `[start, end)` of bits, clamped to the buffer.

/// Reads bit `bit`; `None` if outside the buffer.
pub fn test(bitmap: &[u8], bit: usize) -> Option<bool> {
    bitmap.get(bit / 8).map(|b| b & (1 << (bit % 8)) != 0)
}

/// Sets bit `bit`, returning its previous value; `None` (and no change) if outside.
pub fn set(bitmap: &mut [u8], bit: usize) -> Option<bool> {
    let b = bitmap.get_mut(bit / 8)?;
    let mask = 1u8 << (bit % 8);
    let old = *b & mask != 0;
    *b |= mask;
    Some(old)
}

/// Clears bit `bit`, returning its previous value; `None` if outside.
pub fn clear(bitmap: &mut [u8], bit: usize) -> Option<bool> {
    let b = bitmap.get_mut(bit / 8)?;
    let mask = 1u8 << (bit % 8);
    let old = *b & mask != 0;
    *b &= !mask;
    Some(old)
}

fn clamp(bitmap: &[u8], start: usize, end: usize) -> (usize, usize) {
    let limit = bitmap.len().saturating_mul(8);
    let end = end.min(limit);
    (start.min(end), end)
}

fn find(bitmap: &[u8], start: usize, end: usize, want_set: bool) -> Option<usize> {
    let (mut i, end) = clamp(bitmap, start, end);
    let skip = if want_set { 0x00 } else { 0xFF };
    while i < end {
        if i % 8 == 0 && i + 8 <= end && bitmap[i / 8] == skip {
            // Skip whole bytes (and whole u64 words) that cannot match.
            let mut byte = i / 8;
            while byte + 8 <= end / 8 && bitmap[byte..byte + 8].iter().all(|&b| b == skip) {
                byte += 8;
            }
            while byte < end / 8 && bitmap[byte] == skip {
                byte += 1;
            }
            i = byte * 8;
            continue;
        }
        if (bitmap[i / 8] & (1 << (i % 8)) != 0) == want_set {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// First clear bit in `[start, end)`.
pub fn find_first_zero(bitmap: &[u8], start: usize, end: usize) -> Option<usize> {
    find(bitmap, start, end, false)
}

/// First set bit in `[start, end)`.
pub fn find_first_set(bitmap: &[u8], start: usize, end: usize) -> Option<usize> {
    find(bitmap, start, end, true)
}

/// Start of the first run of `len` clear bits inside `[start, end)`.
pub fn find_zero_run(bitmap: &[u8], start: usize, end: usize, len: usize) -> Option<usize> {
    if len == 0 {
        return Some(start);
    }
    let (_, end) = clamp(bitmap, start, end);
    let mut pos = start;
    while let Some(z) = find_first_zero(bitmap, pos, end) {
        if z + len > end {
            return None;
        }
        match find_first_set(bitmap, z, z + len) {
            None => return Some(z),
            Some(s) => pos = s + 1,
        }
    }
    None
}

/// Number of set bits in `[start, end)`.
pub fn count_set(bitmap: &[u8], start: usize, end: usize) -> usize {
    let (start, end) = clamp(bitmap, start, end);
    let mut n = 0usize;
    let mut i = start;
    while i < end && i % 8 != 0 {
        n += usize::from(bitmap[i / 8] & (1 << (i % 8)) != 0);
        i += 1;
    }
    let full_end = end / 8;
    if i / 8 < full_end {
        n += bitmap[i / 8..full_end]
            .iter()
            .map(|b| b.count_ones() as usize)
            .sum::<usize>();
        i = full_end * 8;
    }
    while i < end {
        n += usize::from(bitmap[i / 8] & (1 << (i % 8)) != 0);
        i += 1;
    }
    n
}

/// Number of clear bits in `[start, end)`.
pub fn count_zero(bitmap: &[u8], start: usize, end: usize) -> usize {
    let (start, end) = clamp(bitmap, start, end);
    (end - start) - count_set(bitmap, start, end)
}

/// Sets `len` bits from `start` (clamped to the buffer).
pub fn set_range(bitmap: &mut [u8], start: usize, len: usize) {
    let (s, e) = clamp(bitmap, start, start.saturating_add(len));
    fill_range(bitmap, s, e, true);
}

/// Clears `len` bits from `start` (clamped to the buffer).
pub fn clear_range(bitmap: &mut [u8], start: usize, len: usize) {
    let (s, e) = clamp(bitmap, start, start.saturating_add(len));
    fill_range(bitmap, s, e, false);
}

/// Sets or clears bits `s..e` (already clamped): bit by bit up to a byte boundary, whole bytes
/// in between.
fn fill_range(bitmap: &mut [u8], s: usize, e: usize, value: bool) {
    let mut i = s;
    let one = |bitmap: &mut [u8], i: usize| {
        if value {
            bitmap[i / 8] |= 1 << (i % 8);
        } else {
            bitmap[i / 8] &= !(1 << (i % 8));
        }
    };
    while i < e && i % 8 != 0 {
        one(bitmap, i);
        i += 1;
    }
    let whole_end = i + (e - i) / 8 * 8;
    if whole_end > i {
        bitmap[i / 8..whole_end / 8].fill(if value { 0xFF } else { 0 });
        i = whole_end;
    }
    while i < e {
        one(bitmap, i);
        i += 1;
    }
}

/// Sets every bit from `valid_bits` to the end of the buffer, as the kernel
/// does for the padding of the last group's bitmap (`ext4_mark_bitmap_end`).
pub fn mark_padding(bitmap: &mut [u8], valid_bits: usize) {
    let n = bitmap.len().saturating_mul(8).saturating_sub(valid_bits);
    set_range(bitmap, valid_bits, n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basics() {
        let mut b = vec![0u8; 32];
        assert_eq!(set(&mut b, 9), Some(false));
        assert_eq!(b[1], 0x02);
        assert_eq!(test(&b, 9), Some(true));
        assert_eq!(set(&mut b, 9), Some(true));
        assert_eq!(test(&b, 256), None);
        assert_eq!(set(&mut b, 256), None);
        assert_eq!(find_first_set(&b, 0, 256), Some(9));
        assert_eq!(find_first_zero(&b, 9, 256), Some(10));
        set_range(&mut b, 0, 100);
        assert_eq!(count_set(&b, 0, 256), 100);
        assert_eq!(count_set(&b, 5, 97), 92);
        assert_eq!(find_first_zero(&b, 0, 256), Some(100));
        clear(&mut b, 50);
        clear_range(&mut b, 60, 3);
        assert_eq!(find_zero_run(&b, 0, 256, 2), Some(60));
        assert_eq!(find_zero_run(&b, 0, 256, 4), Some(100));
        assert_eq!(find_zero_run(&b, 0, 102, 4), None);
        mark_padding(&mut b, 200);
        assert_eq!(count_zero(&b, 0, 256), 256 - 96 - 56);
        assert_eq!(find_first_set(&b, 101, 256), Some(200));
    }

    #[test]
    fn matches_naive() {
        let mut state = 0x1234_5678u32;
        let mut b = vec![0u8; 64];
        for x in b.iter_mut() {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            *x = (state >> 16) as u8 & (state >> 8) as u8;
        }
        let naive_zero = |s: usize, e: usize| (s..e).find(|&i| !test(&b, i).unwrap());
        for s in 0..512 {
            for e in [s, s + 1, s + 7, s + 64, 512] {
                let e = e.min(512);
                assert_eq!(find_first_zero(&b, s, e), naive_zero(s, e));
                assert_eq!(
                    count_set(&b, s, e),
                    (s..e).filter(|&i| test(&b, i).unwrap()).count()
                );
            }
        }
    }

    #[test]
    fn ranges_match_bit_by_bit() {
        for start in 0..40 {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 200, 1000] {
                for fill in [0x00u8, 0xFF, 0xA5] {
                    let (mut a, mut want) = (vec![fill; 24], vec![fill; 24]);
                    set_range(&mut a, start, len);
                    for i in start..(start + len).min(192) {
                        set(&mut want, i);
                    }
                    assert_eq!(a, want, "set {start}+{len} over {fill:#x}");
                    let (mut a, mut want) = (vec![fill; 24], vec![fill; 24]);
                    clear_range(&mut a, start, len);
                    for i in start..(start + len).min(192) {
                        clear(&mut want, i);
                    }
                    assert_eq!(a, want, "clear {start}+{len} over {fill:#x}");
                }
            }
        }
    }
}
