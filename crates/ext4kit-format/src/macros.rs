//! Internal macros generating typed getters and setters over a `raw` byte buffer.
//!
//! Each generated pair documents the kernel field name, so that the kernel
//! sources can be grepped from the docs, while the method names stay descriptive.

/// `field!(get, set, u32le, OFFSET, "s_kernel_name", "Description.")`
macro_rules! field {
    ($get:ident, $set:ident, u8, $off:expr, $kname:literal, $doc:literal) => {
        #[doc = $doc]
        #[doc = ""]
        #[doc = concat!("On disk: `", $kname, "`.")]
        pub fn $get(&self) -> u8 {
            $crate::bytes::read_u8(&self.raw[..], $off)
        }
        #[doc = concat!("Sets `", $kname, "`.")]
        pub fn $set(&mut self, value: u8) {
            $crate::bytes::write_u8(&mut self.raw[..], $off, value)
        }
    };
    ($get:ident, $set:ident, u16le, $off:expr, $kname:literal, $doc:literal) => {
        #[doc = $doc]
        #[doc = ""]
        #[doc = concat!("On disk: `", $kname, "` (le16).")]
        pub fn $get(&self) -> u16 {
            $crate::bytes::read_u16le(&self.raw[..], $off)
        }
        #[doc = concat!("Sets `", $kname, "`.")]
        pub fn $set(&mut self, value: u16) {
            $crate::bytes::write_u16le(&mut self.raw[..], $off, value)
        }
    };
    ($get:ident, $set:ident, u32le, $off:expr, $kname:literal, $doc:literal) => {
        #[doc = $doc]
        #[doc = ""]
        #[doc = concat!("On disk: `", $kname, "` (le32).")]
        pub fn $get(&self) -> u32 {
            $crate::bytes::read_u32le(&self.raw[..], $off)
        }
        #[doc = concat!("Sets `", $kname, "`.")]
        pub fn $set(&mut self, value: u32) {
            $crate::bytes::write_u32le(&mut self.raw[..], $off, value)
        }
    };
    ($get:ident, $set:ident, u64le, $off:expr, $kname:literal, $doc:literal) => {
        #[doc = $doc]
        #[doc = ""]
        #[doc = concat!("On disk: `", $kname, "` (le64).")]
        pub fn $get(&self) -> u64 {
            $crate::bytes::read_u64le(&self.raw[..], $off)
        }
        #[doc = concat!("Sets `", $kname, "`.")]
        pub fn $set(&mut self, value: u64) {
            $crate::bytes::write_u64le(&mut self.raw[..], $off, value)
        }
    };
    ($get:ident, $set:ident, u32be, $off:expr, $kname:literal, $doc:literal) => {
        #[doc = $doc]
        #[doc = ""]
        #[doc = concat!("On disk: `", $kname, "` (be32).")]
        pub fn $get(&self) -> u32 {
            $crate::bytes::read_u32be(&self.raw[..], $off)
        }
        #[doc = concat!("Sets `", $kname, "`.")]
        pub fn $set(&mut self, value: u32) {
            $crate::bytes::write_u32be(&mut self.raw[..], $off, value)
        }
    };
    ($get:ident, $set:ident, u64be, $off:expr, $kname:literal, $doc:literal) => {
        #[doc = $doc]
        #[doc = ""]
        #[doc = concat!("On disk: `", $kname, "` (be64).")]
        pub fn $get(&self) -> u64 {
            $crate::bytes::read_u64be(&self.raw[..], $off)
        }
        #[doc = concat!("Sets `", $kname, "`.")]
        pub fn $set(&mut self, value: u64) {
            $crate::bytes::write_u64be(&mut self.raw[..], $off, value)
        }
    };
    ($get:ident, $set:ident, [u8; $n:literal], $off:expr, $kname:literal, $doc:literal) => {
        #[doc = $doc]
        #[doc = ""]
        #[doc = concat!("On disk: `", $kname, "`.")]
        pub fn $get(&self) -> [u8; $n] {
            $crate::bytes::read_array::<$n>(&self.raw[..], $off)
        }
        #[doc = concat!("Sets `", $kname, "`.")]
        pub fn $set(&mut self, value: [u8; $n]) {
            $crate::bytes::write_bytes(&mut self.raw[..], $off, &value)
        }
    };
}

pub(crate) use field;
