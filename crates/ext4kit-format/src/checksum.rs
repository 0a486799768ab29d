//! Checksum primitives with the exact conventions ext4 and jbd2 use.
//!
//! * [`crc32c_raw`] — ext4's `ext4_chksum()` / e2fsprogs' `ext2fs_crc32c_le()`:
//!   the CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) *register* update,
//!   **without** the usual initial and final inversion. Seeds are chained: the
//!   filesystem seed is `crc32c_raw(!0, uuid)`, a per-inode seed is
//!   `crc32c_raw(crc32c_raw(fs_seed, le32(ino)), le32(generation))`, and the
//!   stored value is the register after the last chunk. In terms of the
//!   standard CRC-32C (`crc32c::crc32c`), `crc32c_raw(!0, d) == !crc32c(d)`.
//!
//!   With the `std` feature the register is advanced by the `crc32c` crate
//!   (hardware CRC instructions where the CPU has them); without it, by a
//!   portable slice-by-8 table implementation that gives the same values.
//! * [`crc16`] — the CRC-16 (IBM/ANSI, reflected polynomial 0xA001) of the old
//!   `GDT_CSUM` (uninit_bg) group descriptor checksum, again a raw register
//!   started at `!0`.
//! * [`crc32_be`] — the big-endian (MSB-first, polynomial 0x04C11DB7) CRC-32 of
//!   jbd2's checksum v1 (`JBD2_FEATURE_COMPAT_CHECKSUM`), raw register, seed `!0`.

/// Seed used to start every ext4 crc32c chain (`~0`).
pub const CRC32C_INITIAL: u32 = !0;

/// Advances the raw crc32c register `seed` over `data` (ext4's `ext4_chksum`).
#[cfg(feature = "std")]
#[inline]
pub fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    // The crc32c crate inverts on entry and exit; undo both.
    !crc32c::crc32c_append(!seed, data)
}

/// Advances the raw crc32c register `seed` over `data` (ext4's `ext4_chksum`).
#[cfg(not(feature = "std"))]
#[inline]
pub fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    crc32c_raw_portable(seed, data)
}

/// The crc32c tables for slice-by-8: `T[0]` is the classic byte table, `T[k]`
/// advances a byte that is followed by `k` zero bytes.
const fn crc32c_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut n = 1;
    while n < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[n - 1][i];
            t[n][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            i += 1;
        }
        n += 1;
    }
    t
}

static CRC32C_TABLES: [[u32; 256]; 8] = crc32c_tables();

/// The portable (table-driven, slice-by-8) form of [`crc32c_raw`]; same values.
pub fn crc32c_raw_portable(seed: u32, data: &[u8]) -> u32 {
    let t = &CRC32C_TABLES;
    let mut crc = seed;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = t[7][(lo & 0xFF) as usize]
            ^ t[6][((lo >> 8) & 0xFF) as usize]
            ^ t[5][((lo >> 16) & 0xFF) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xFF) as usize]
            ^ t[2][((hi >> 8) & 0xFF) as usize]
            ^ t[1][((hi >> 16) & 0xFF) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = (crc >> 8) ^ t[0][((crc ^ u32::from(b)) & 0xFF) as usize];
    }
    crc
}

/// Advances the crc32c register over a little-endian u32 (inode numbers, generations).
#[inline]
pub fn crc32c_le32(seed: u32, value: u32) -> u32 {
    crc32c_raw(seed, &value.to_le_bytes())
}

/// The per-inode seed: the fs seed advanced over `le32(ino)` and `le32(generation)`.
///
/// Used by inodes, extent blocks, directory blocks and htree nodes.
#[inline]
pub fn inode_csum_seed(fs_csum_seed: u32, ino: u32, generation: u32) -> u32 {
    crc32c_le32(crc32c_le32(fs_csum_seed, ino), generation)
}

const fn crc16_table() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u16;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xA001
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC16_TABLE: [u16; 256] = crc16_table();

/// Advances the raw CRC-16 register (polynomial 0x8005, reflected) over `data`.
pub fn crc16(seed: u16, data: &[u8]) -> u16 {
    data.iter().fold(seed, |crc, &b| {
        (crc >> 8) ^ CRC16_TABLE[usize::from((crc ^ u16::from(b)) as u8)]
    })
}

const fn crc32_be_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u32) << 24;
        let mut k = 0;
        while k < 8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ 0x04C1_1DB7
            } else {
                c << 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC32_BE_TABLE: [u32; 256] = crc32_be_table();

/// Advances the raw MSB-first CRC-32 register (the kernel's `crc32_be`) over `data`.
pub fn crc32_be(seed: u32, data: &[u8]) -> u32 {
    data.iter().fold(seed, |crc, &b| {
        (crc << 8) ^ CRC32_BE_TABLE[usize::from(((crc >> 24) as u8) ^ b)]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_convention() {
        // Standard CRC-32C check value of "123456789" is 0xE3069283.
        #[cfg(feature = "std")]
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c_raw(!0, b"123456789"), !0xE306_9283);
        // Chaining equals one pass.
        let a = crc32c_raw(crc32c_raw(!0, b"12345"), b"6789");
        assert_eq!(a, crc32c_raw(!0, b"123456789"));
        // Zero seed, zero data stays zero (a property of the raw register).
        assert_eq!(crc32c_raw(0, &[0u8; 16]), 0);
    }

    #[test]
    fn crc32c_portable_matches() {
        assert_eq!(crc32c_raw_portable(!0, b"123456789"), !0xE306_9283);
        // Every length and alignment around the 8-byte stride, chained or not.
        let data: Vec<u8> = (0..300u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in 0..9 {
            for end in start..data.len() {
                let d = &data[start..end];
                assert_eq!(
                    crc32c_raw_portable(0x1234_5678, d),
                    crc32c_raw(0x1234_5678, d)
                );
            }
        }
        let (a, b) = data.split_at(77);
        assert_eq!(
            crc32c_raw_portable(crc32c_raw_portable(!0, a), b),
            crc32c_raw(!0, &data)
        );
    }

    #[test]
    fn crc16_check_value() {
        // CRC-16/ARC check value (init 0, no inversion) of "123456789" is 0xBB3D.
        assert_eq!(crc16(0, b"123456789"), 0xBB3D);
        // CRC-16/MODBUS (init 0xFFFF) is 0x4B37.
        assert_eq!(crc16(0xFFFF, b"123456789"), 0x4B37);
    }

    #[test]
    fn crc32_be_check_value() {
        // CRC-32/MPEG-2 (init !0, MSB-first, no final xor) of "123456789" is 0x0376E6E7.
        assert_eq!(crc32_be(!0, b"123456789"), 0x0376_E6E7);
    }
}
