//! Feature flag sets of the superblock (`s_feature_compat`, `s_feature_incompat`,
//! `s_feature_ro_compat`), with the names `dumpe2fs` / `mke2fs -O` use.
//!
//! Each set is a transparent `u32` newtype with one constant per known bit,
//! set operations, the list of names (in bit order, exactly as `dumpe2fs`
//! prints them, `FEATURE_I17`-style for unknown bits) and the unknown bits.

use alloc::{format, string::String, string::ToString, vec::Vec};

use core::fmt;

macro_rules! feature_set {
    (
        $(#[$meta:meta])*
        $name:ident, $letter:literal {
            $( $(#[$fmeta:meta])* $konst:ident = $bit:expr, $label:literal; )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
        pub struct $name(pub u32);

        impl $name {
            $( $(#[$fmeta])* pub const $konst: Self = Self($bit); )*

            /// Every bit this crate knows a name for.
            pub const KNOWN: Self = Self(0 $( | $bit )*);

            /// No bits set.
            pub const fn empty() -> Self {
                Self(0)
            }

            /// The raw bits.
            pub const fn bits(self) -> u32 {
                self.0
            }

            /// `true` if every bit of `other` is set.
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }

            /// `true` if any bit of `other` is set.
            pub const fn intersects(self, other: Self) -> bool {
                self.0 & other.0 != 0
            }

            /// Sets the bits of `other`.
            pub fn insert(&mut self, other: Self) {
                self.0 |= other.0;
            }

            /// Clears the bits of `other`.
            pub fn remove(&mut self, other: Self) {
                self.0 &= !other.0;
            }

            /// Bits this crate does not know.
            pub const fn unknown(self) -> Self {
                Self(self.0 & !Self::KNOWN.0)
            }

            /// The name of one bit (`dumpe2fs` spelling), or `FEATURE_<letter><n>`.
            pub fn bit_name(bit: u32) -> String {
                let mask = 1u32.checked_shl(bit).unwrap_or(0);
                $( if mask == $bit { return $label.to_string(); } )*
                format!("FEATURE_{}{}", $letter, bit)
            }

            /// Names of the set bits, in bit order.
            pub fn names(self) -> Vec<String> {
                (0..32).filter(|b| self.0 & (1 << b) != 0).map(Self::bit_name).collect()
            }

            /// Looks up a feature by its `dumpe2fs` / `mke2fs -O` name.
            pub fn from_name(name: &str) -> Option<Self> {
                $( if name == $label { return Some(Self($bit)); } )*
                None
            }
        }

        impl core::ops::BitOr for $name {
            type Output = Self;
            fn bitor(self, rhs: Self) -> Self {
                Self(self.0 | rhs.0)
            }
        }

        impl fmt::Display for $name {
            /// Space-separated names, as `dumpe2fs` prints them.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.names().join(" "))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:#x}: {})", stringify!($name), self.0, self)
            }
        }
    };
}

feature_set! {
    /// `s_feature_compat`: features a kernel that does not know them may still mount read-write.
    CompatFeatures, "C" {
        /// `EXT2_FEATURE_COMPAT_DIR_PREALLOC`
        DIR_PREALLOC = 0x0001, "dir_prealloc";
        /// `EXT2_FEATURE_COMPAT_IMAGIC_INODES`
        IMAGIC_INODES = 0x0002, "imagic_inodes";
        /// `EXT3_FEATURE_COMPAT_HAS_JOURNAL`
        HAS_JOURNAL = 0x0004, "has_journal";
        /// `EXT2_FEATURE_COMPAT_EXT_ATTR`
        EXT_ATTR = 0x0008, "ext_attr";
        /// `EXT2_FEATURE_COMPAT_RESIZE_INODE`
        RESIZE_INODE = 0x0010, "resize_inode";
        /// `EXT2_FEATURE_COMPAT_DIR_INDEX`
        DIR_INDEX = 0x0020, "dir_index";
        /// `EXT2_FEATURE_COMPAT_LAZY_BG`
        LAZY_BG = 0x0040, "lazy_bg";
        /// `EXT2_FEATURE_COMPAT_EXCLUDE_BITMAP`
        EXCLUDE_BITMAP = 0x0100, "snapshot_bitmap";
        /// `EXT4_FEATURE_COMPAT_SPARSE_SUPER2`
        SPARSE_SUPER2 = 0x0200, "sparse_super2";
        /// `EXT4_FEATURE_COMPAT_FAST_COMMIT`
        FAST_COMMIT = 0x0400, "fast_commit";
        /// `EXT4_FEATURE_COMPAT_STABLE_INODES`
        STABLE_INODES = 0x0800, "stable_inodes";
        /// `EXT4_FEATURE_COMPAT_ORPHAN_FILE`
        ORPHAN_FILE = 0x1000, "orphan_file";
    }
}

feature_set! {
    /// `s_feature_incompat`: features a kernel must understand to mount at all.
    IncompatFeatures, "I" {
        /// `EXT2_FEATURE_INCOMPAT_COMPRESSION`
        COMPRESSION = 0x0001, "compression";
        /// `EXT2_FEATURE_INCOMPAT_FILETYPE`: directory entries carry a file type.
        FILETYPE = 0x0002, "filetype";
        /// `EXT3_FEATURE_INCOMPAT_RECOVER`: the journal needs replay.
        RECOVER = 0x0004, "needs_recovery";
        /// `EXT3_FEATURE_INCOMPAT_JOURNAL_DEV`: this is an external journal device.
        JOURNAL_DEV = 0x0008, "journal_dev";
        /// `EXT2_FEATURE_INCOMPAT_META_BG`
        META_BG = 0x0010, "meta_bg";
        /// `EXT3_FEATURE_INCOMPAT_EXTENTS`
        EXTENTS = 0x0040, "extent";
        /// `EXT4_FEATURE_INCOMPAT_64BIT`
        BIT64 = 0x0080, "64bit";
        /// `EXT4_FEATURE_INCOMPAT_MMP`
        MMP = 0x0100, "mmp";
        /// `EXT4_FEATURE_INCOMPAT_FLEX_BG`
        FLEX_BG = 0x0200, "flex_bg";
        /// `EXT4_FEATURE_INCOMPAT_EA_INODE`
        EA_INODE = 0x0400, "ea_inode";
        /// `EXT4_FEATURE_INCOMPAT_DIRDATA`
        DIRDATA = 0x1000, "dirdata";
        /// `EXT4_FEATURE_INCOMPAT_CSUM_SEED`
        CSUM_SEED = 0x2000, "metadata_csum_seed";
        /// `EXT4_FEATURE_INCOMPAT_LARGEDIR`
        LARGEDIR = 0x4000, "large_dir";
        /// `EXT4_FEATURE_INCOMPAT_INLINE_DATA`
        INLINE_DATA = 0x8000, "inline_data";
        /// `EXT4_FEATURE_INCOMPAT_ENCRYPT`
        ENCRYPT = 0x10000, "encrypt";
        /// `EXT4_FEATURE_INCOMPAT_CASEFOLD`
        CASEFOLD = 0x20000, "casefold";
    }
}

feature_set! {
    /// `s_feature_ro_compat`: features a kernel must understand to mount read-write.
    RoCompatFeatures, "R" {
        /// `EXT2_FEATURE_RO_COMPAT_SPARSE_SUPER`
        SPARSE_SUPER = 0x0001, "sparse_super";
        /// `EXT2_FEATURE_RO_COMPAT_LARGE_FILE`
        LARGE_FILE = 0x0002, "large_file";
        /// `EXT4_FEATURE_RO_COMPAT_HUGE_FILE`
        HUGE_FILE = 0x0008, "huge_file";
        /// `EXT4_FEATURE_RO_COMPAT_GDT_CSUM` (crc16 group descriptor checksums)
        GDT_CSUM = 0x0010, "uninit_bg";
        /// `EXT4_FEATURE_RO_COMPAT_DIR_NLINK`
        DIR_NLINK = 0x0020, "dir_nlink";
        /// `EXT4_FEATURE_RO_COMPAT_EXTRA_ISIZE`
        EXTRA_ISIZE = 0x0040, "extra_isize";
        /// `EXT4_FEATURE_RO_COMPAT_QUOTA`
        QUOTA = 0x0100, "quota";
        /// `EXT4_FEATURE_RO_COMPAT_BIGALLOC`
        BIGALLOC = 0x0200, "bigalloc";
        /// `EXT4_FEATURE_RO_COMPAT_METADATA_CSUM`
        METADATA_CSUM = 0x0400, "metadata_csum";
        /// `EXT4_FEATURE_RO_COMPAT_REPLICA`
        REPLICA = 0x0800, "replica";
        /// `EXT4_FEATURE_RO_COMPAT_READONLY`
        READONLY = 0x1000, "read-only";
        /// `EXT4_FEATURE_RO_COMPAT_PROJECT`
        PROJECT = 0x2000, "project";
        /// `EXT4_FEATURE_RO_COMPAT_SHARED_BLOCKS`
        SHARED_BLOCKS = 0x4000, "shared_blocks";
        /// `EXT4_FEATURE_RO_COMPAT_VERITY`
        VERITY = 0x8000, "verity";
        /// `EXT4_FEATURE_RO_COMPAT_ORPHAN_PRESENT`
        ORPHAN_PRESENT = 0x10000, "orphan_present";
    }
}

/// Formats all three sets the way `dumpe2fs` prints `Filesystem features:`
/// (compat, then incompat, then ro_compat, each in bit order).
pub fn dumpe2fs_feature_list(
    compat: CompatFeatures,
    incompat: IncompatFeatures,
    ro_compat: RoCompatFeatures,
) -> String {
    let mut v = compat.names();
    v.extend(incompat.names());
    v.extend(ro_compat.names());
    v.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let i = IncompatFeatures::EXTENTS | IncompatFeatures::BIT64 | IncompatFeatures(1 << 20);
        assert_eq!(i.to_string(), "extent 64bit FEATURE_I20");
        assert_eq!(i.unknown(), IncompatFeatures(1 << 20));
        assert_eq!(
            RoCompatFeatures::from_name("metadata_csum"),
            Some(RoCompatFeatures::METADATA_CSUM)
        );
        assert_eq!(RoCompatFeatures::bit_name(7), "FEATURE_R7");
    }
}
