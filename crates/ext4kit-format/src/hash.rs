//! Directory name hashes for htree directories (`ext4fs_dirhash`).
//!
//! Three algorithms, each in a signed-char and an unsigned-char variant:
//! the "legacy" hash (`dx_hack_hash`), half-MD4 (a cut-down MD4 compression
//! over 32-byte chunks) and TEA (16 rounds of the Tiny Encryption Algorithm in
//! a Davies–Meyer construction over 16-byte chunks). Implemented from the
//! algorithm descriptions; results agree with `debugfs dx_hash` (tested).
//!
//! The seed is `s_hash_seed`; an all-zero seed means the MD4 initial values.
//! The major hash has its low bit cleared (that bit marks hash collisions
//! continuing into the next leaf), and, like the kernel, the value
//! `0xFFFFFFFE` (the "end of directory" cookie) is replaced by `0xFFFFFFFC`.

use crate::error::{FormatError, IncompatibleKind, Result, Structure};

/// A directory hash algorithm as stored in `s_def_hash_version` /
/// `dx_root_info.hash_version`, with the signedness folded in (values 3..=5
/// are the kernel's in-memory unsigned variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashVersion {
    /// `DX_HASH_LEGACY` (0), signed chars.
    Legacy,
    /// `DX_HASH_HALF_MD4` (1), signed chars.
    HalfMd4,
    /// `DX_HASH_TEA` (2), signed chars.
    Tea,
    /// `DX_HASH_LEGACY_UNSIGNED` (3).
    LegacyUnsigned,
    /// `DX_HASH_HALF_MD4_UNSIGNED` (4).
    HalfMd4Unsigned,
    /// `DX_HASH_TEA_UNSIGNED` (5).
    TeaUnsigned,
    /// `DX_HASH_SIPHASH` (6): casefolded + encrypted directories store the hash
    /// in the dirent; not computable here.
    SipHash,
}

impl HashVersion {
    /// All six computable variants.
    pub const ALL: [HashVersion; 6] = [
        HashVersion::Legacy,
        HashVersion::HalfMd4,
        HashVersion::Tea,
        HashVersion::LegacyUnsigned,
        HashVersion::HalfMd4Unsigned,
        HashVersion::TeaUnsigned,
    ];

    /// The code (0..=6).
    pub fn code(self) -> u8 {
        match self {
            HashVersion::Legacy => 0,
            HashVersion::HalfMd4 => 1,
            HashVersion::Tea => 2,
            HashVersion::LegacyUnsigned => 3,
            HashVersion::HalfMd4Unsigned => 4,
            HashVersion::TeaUnsigned => 5,
            HashVersion::SipHash => 6,
        }
    }

    /// From a code 0..=6.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => HashVersion::Legacy,
            1 => HashVersion::HalfMd4,
            2 => HashVersion::Tea,
            3 => HashVersion::LegacyUnsigned,
            4 => HashVersion::HalfMd4Unsigned,
            5 => HashVersion::TeaUnsigned,
            6 => HashVersion::SipHash,
            _ => return None,
        })
    }

    /// From an on-disk version (0..=2 or 6) and the superblock's unsigned flag,
    /// the way the kernel does it (`hash_version += s_hash_unsigned` for 0..=2).
    pub fn from_disk(stored: u8, unsigned: bool) -> Option<Self> {
        match stored {
            0..=2 => Self::from_code(stored + if unsigned { 3 } else { 0 }),
            6 => Some(HashVersion::SipHash),
            _ => None,
        }
    }

    /// The on-disk code (unsigned variants map back to 0..=2).
    pub fn disk_code(self) -> u8 {
        match self.code() {
            c @ 3..=5 => c - 3,
            c => c,
        }
    }

    /// `true` for the unsigned-char variants.
    pub fn is_unsigned(self) -> bool {
        matches!(
            self,
            HashVersion::LegacyUnsigned | HashVersion::HalfMd4Unsigned | HashVersion::TeaUnsigned
        )
    }
}

/// The result of hashing a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DirHash {
    /// Major hash (low bit clear); what dx entries are keyed on.
    pub major: u32,
    /// Minor hash (0 for the legacy hash).
    pub minor: u32,
}

/// Default seed when `s_hash_seed` is all zero (the MD4 initial state).
pub const DEFAULT_SEED: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// Hashes a directory entry name like the kernel's `ext4fs_dirhash`.
///
/// Fails with [`IncompatibleKind::HashVersion`] for SipHash.
pub fn dirhash(name: &[u8], version: HashVersion, seed: &[u32; 4]) -> Result<DirHash> {
    let mut buf = if seed.iter().any(|&w| w != 0) {
        *seed
    } else {
        DEFAULT_SEED
    };
    let unsigned = version.is_unsigned();
    let (major, minor) = match version {
        HashVersion::Legacy | HashVersion::LegacyUnsigned => (legacy_hash(name, unsigned), 0),
        HashVersion::HalfMd4 | HashVersion::HalfMd4Unsigned => {
            let mut rest = name;
            while !rest.is_empty() {
                let words: [u32; 8] = pack_words(rest, unsigned);
                half_md4_transform(&mut buf, &words);
                rest = rest.get(32..).unwrap_or(&[]);
            }
            (buf[1], buf[2])
        }
        HashVersion::Tea | HashVersion::TeaUnsigned => {
            let mut rest = name;
            while !rest.is_empty() {
                let words: [u32; 4] = pack_words(rest, unsigned);
                tea_transform(&mut buf, &words);
                rest = rest.get(16..).unwrap_or(&[]);
            }
            (buf[0], buf[1])
        }
        HashVersion::SipHash => {
            return Err(FormatError::incompatible(
                Structure::HtreeNode,
                IncompatibleKind::HashVersion(version.code()),
            ));
        }
    };
    let mut major = major & !1;
    if major == 0x7FFF_FFFF << 1 {
        major = 0x7FFF_FFFE << 1;
    }
    Ok(DirHash { major, minor })
}

/// A name byte as the C code sees it: sign-extended (`signed char`) or not.
#[inline]
fn char_value(b: u8, unsigned: bool) -> u32 {
    if unsigned {
        u32::from(b)
    } else {
        i32::from(b as i8) as u32
    }
}

/// The legacy hash: a two-register mixing loop, result shifted left by one.
fn legacy_hash(name: &[u8], unsigned: bool) -> u32 {
    let (mut h0, mut h1) = (0x12a3_fe2du32, 0x37ab_e8f9u32);
    for &b in name {
        let c = char_value(b, unsigned);
        let mut h = h1.wrapping_add(h0 ^ c.wrapping_mul(7_152_373));
        if h & 0x8000_0000 != 0 {
            h = h.wrapping_sub(0x7fff_ffff);
        }
        h1 = h0;
        h0 = h;
    }
    h0 << 1
}

/// Packs up to `4 * N` bytes of `msg` into `N` words, big-end first within a
/// word, padding with the length byte repeated (the kernel's `str2hashbuf`).
/// The padding uses the length of the whole remaining message.
fn pack_words<const N: usize>(msg: &[u8], unsigned: bool) -> [u32; N] {
    let len = msg.len() as u32;
    let pad = len | (len << 8);
    let pad = pad | (pad << 16);
    let mut out = [pad; N];
    let take = msg.len().min(4 * N);
    let mut val = pad;
    let mut word = 0usize;
    for (i, &b) in msg[..take].iter().enumerate() {
        val = char_value(b, unsigned).wrapping_add(val << 8);
        if i % 4 == 3 {
            if let Some(w) = out.get_mut(word) {
                *w = val;
            }
            word += 1;
            val = pad;
        }
    }
    if take % 4 != 0 {
        if let Some(w) = out.get_mut(word) {
            *w = val;
        }
    }
    out
}

const TEA_DELTA: u32 = 0x9E37_79B9;

/// One TEA encryption of (buf[0], buf[1]) keyed by `input`, added back into buf.
fn tea_transform(buf: &mut [u32; 4], input: &[u32; 4]) {
    let (mut b0, mut b1) = (buf[0], buf[1]);
    let [a, b, c, d] = *input;
    let mut sum = 0u32;
    for _ in 0..16 {
        sum = sum.wrapping_add(TEA_DELTA);
        b0 = b0.wrapping_add(
            (b1 << 4).wrapping_add(a) ^ b1.wrapping_add(sum) ^ (b1 >> 5).wrapping_add(b),
        );
        b1 = b1.wrapping_add(
            (b0 << 4).wrapping_add(c) ^ b0.wrapping_add(sum) ^ (b0 >> 5).wrapping_add(d),
        );
    }
    buf[0] = buf[0].wrapping_add(b0);
    buf[1] = buf[1].wrapping_add(b1);
}

/// The three rounds of MD4 (RFC 1320) reduced to 8 input words each.
fn half_md4_transform(buf: &mut [u32; 4], x: &[u32; 8]) {
    const K2: u32 = 0x5A82_7999; // sqrt(2) * 2^30, as in MD4 round 2
    const K3: u32 = 0x6ED9_EBA1; // sqrt(3) * 2^30, as in MD4 round 3
    fn f(x: u32, y: u32, z: u32) -> u32 {
        z ^ (x & (y ^ z))
    }
    fn g(x: u32, y: u32, z: u32) -> u32 {
        (x & y).wrapping_add((x ^ y) & z)
    }
    fn h(x: u32, y: u32, z: u32) -> u32 {
        x ^ y ^ z
    }
    let [mut a, mut b, mut c, mut d] = *buf;
    macro_rules! step {
        ($fun:ident, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a
                .wrapping_add($fun($b, $c, $d))
                .wrapping_add($x)
                .rotate_left($s);
        };
    }
    // Round 1.
    step!(f, a, b, c, d, x[0], 3);
    step!(f, d, a, b, c, x[1], 7);
    step!(f, c, d, a, b, x[2], 11);
    step!(f, b, c, d, a, x[3], 19);
    step!(f, a, b, c, d, x[4], 3);
    step!(f, d, a, b, c, x[5], 7);
    step!(f, c, d, a, b, x[6], 11);
    step!(f, b, c, d, a, x[7], 19);
    // Round 2.
    step!(g, a, b, c, d, x[1].wrapping_add(K2), 3);
    step!(g, d, a, b, c, x[3].wrapping_add(K2), 5);
    step!(g, c, d, a, b, x[5].wrapping_add(K2), 9);
    step!(g, b, c, d, a, x[7].wrapping_add(K2), 13);
    step!(g, a, b, c, d, x[0].wrapping_add(K2), 3);
    step!(g, d, a, b, c, x[2].wrapping_add(K2), 5);
    step!(g, c, d, a, b, x[4].wrapping_add(K2), 9);
    step!(g, b, c, d, a, x[6].wrapping_add(K2), 13);
    // Round 3.
    step!(h, a, b, c, d, x[3].wrapping_add(K3), 3);
    step!(h, d, a, b, c, x[7].wrapping_add(K3), 9);
    step!(h, c, d, a, b, x[2].wrapping_add(K3), 11);
    step!(h, b, c, d, a, x[6].wrapping_add(K3), 15);
    step!(h, a, b, c, d, x[1].wrapping_add(K3), 3);
    step!(h, d, a, b, c, x[5].wrapping_add(K3), 9);
    step!(h, c, d, a, b, x[0].wrapping_add(K3), 11);
    step!(h, b, c, d, a, x[4].wrapping_add(K3), 15);
    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_from_debugfs() {
        // debugfs -R "dx_hash -h half_md4 -s 00000000-0000-0000-0000-000000000000 hello"
        let h = dirhash(b"hello", HashVersion::HalfMd4, &[0; 4]).unwrap();
        assert_eq!((h.major, h.minor), (0x1746_da32, 0x4200_13b5));
        // debugfs -R "dx_hash -h tea -s 01020304-0506-0708-090a-0b0c0d0e0f10 hello"
        let seed = [0x0403_0201, 0x0807_0605, 0x0c0b_0a09, 0x100f_0e0d];
        let h = dirhash(b"hello", HashVersion::Tea, &seed).unwrap();
        assert_eq!((h.major, h.minor), (0x1a56_92b6, 0x2fd9_857d));
        let h = dirhash(b"hello", HashVersion::LegacyUnsigned, &seed).unwrap();
        assert_eq!((h.major, h.minor), (0x3225_2546, 0));
    }

    #[test]
    fn from_disk() {
        assert_eq!(
            HashVersion::from_disk(1, true),
            Some(HashVersion::HalfMd4Unsigned)
        );
        assert_eq!(HashVersion::from_disk(2, false), Some(HashVersion::Tea));
        assert_eq!(HashVersion::from_disk(7, false), None);
        assert_eq!(HashVersion::TeaUnsigned.disk_code(), 2);
    }
}
