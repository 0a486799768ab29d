//! The host side of importing a tree into an image — `build` and `cp` into an image share it:
//! what a host file holds beyond its bytes (extended attributes, where its data and holes are,
//! device numbers), read one way, with one error policy: an attribute list or value that
//! cannot be read is an error naming the path (the caller reports it; nothing is dropped
//! silently). A host filesystem without extended attributes has none to copy.

use std::fs;
use std::io;
use std::path::Path;

use crate::error::{Error, Result};
use crate::xattr::write::XattrPair;

/// An error reading host path `path`, with its errno.
pub fn io_err(path: &Path, e: io::Error) -> Error {
    // "Permission denied", without the "(os error 13)" suffix.
    let s = e.to_string();
    let message = match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    };
    Error::Open {
        path: path.display().to_string(),
        message,
        errno: e.raw_os_error().unwrap_or(libc::EIO),
    }
}

/// Every extended attribute of `path` (not following a symlink), sorted by name. `ENOTSUP`
/// (a filesystem without xattrs) gives none; an attribute removed between listing and reading
/// is skipped; every other failure is an error naming the path.
pub fn read_xattrs(path: &Path) -> Result<Vec<XattrPair>> {
    // A small buffer first (most files have no or few attributes), a large one on ERANGE.
    let mut names = vec![0u8; 1024];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut names) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) if names.len() < 1 << 16 => names.resize(1 << 16, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(io_err(path, e.into())),
        }
    };
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut value = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let Ok(cname) = std::ffi::CString::new(name.to_vec()) else {
            continue;
        };
        value.resize(65536, 0);
        match rustix::fs::lgetxattr(path, cname.as_c_str(), &mut value) {
            Ok(vn) => out.push((name.to_vec(), value[..vn].to_vec())),
            Err(rustix::io::Errno::NODATA) => {}
            Err(e) => return Err(io_err(path, e.into())),
        }
    }
    out.sort();
    Ok(out)
}

/// The data regions of the first `len` bytes of `f` as `(start, end)` byte ranges, holes left
/// out (`SEEK_DATA` / `SEEK_HOLE`; a host that cannot tell gives the whole rest as data).
pub fn data_regions(f: &fs::File, len: u64) -> DataRegions<'_> {
    DataRegions { f, pos: 0, len }
}

/// Iterator of [`data_regions`].
#[derive(Debug)]
pub struct DataRegions<'a> {
    f: &'a fs::File,
    pos: u64,
    len: u64,
}

impl Iterator for DataRegions<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        if self.pos >= self.len {
            return None;
        }
        let data = match rustix::fs::seek(self.f, rustix::fs::SeekFrom::Data(self.pos)) {
            Ok(d) => d,
            // No data after pos: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => return None,
            Err(_) => self.pos,
        };
        if data >= self.len {
            return None;
        }
        let hole = rustix::fs::seek(self.f, rustix::fs::SeekFrom::Hole(data))
            .unwrap_or(self.len)
            .min(self.len);
        if hole <= data {
            return None;
        }
        self.pos = hole;
        Some((data, hole))
    }
}

/// The `lstat` fields an import uses — kept small, since `build` holds one per entry of the
/// tree until it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMeta {
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Device of the file (with `ino`, its identity for hard links).
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte units allocated (`st_blocks`).
    pub blocks: u64,
    /// Device number of a device node.
    pub rdev: u64,
    /// Access time (seconds, nanoseconds).
    pub atime: (i64, u32),
    /// Modification time.
    pub mtime: (i64, u32),
    /// Change time.
    pub ctime: (i64, u32),
}

impl HostMeta {
    /// The fields of `md`.
    #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
    pub fn of(md: &fs::Metadata) -> HostMeta {
        use std::os::unix::fs::MetadataExt;
        HostMeta {
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            nlink: u32::try_from(md.nlink()).unwrap_or(u32::MAX),
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            blocks: md.blocks(),
            rdev: md.rdev(),
            atime: (md.atime(), md.atime_nsec().clamp(0, 999_999_999) as u32),
            mtime: (md.mtime(), md.mtime_nsec().clamp(0, 999_999_999) as u32),
            ctime: (md.ctime(), md.ctime_nsec().clamp(0, 999_999_999) as u32),
        }
    }

    /// `lstat` of `path`, an error naming it.
    pub fn lstat(path: &Path) -> Result<HostMeta> {
        Ok(HostMeta::of(
            &fs::symlink_metadata(path).map_err(|e| io_err(path, e))?,
        ))
    }

    /// The file type bits (`S_IFMT`).
    pub fn fmt(&self) -> u32 {
        self.mode & 0o170_000
    }

    /// Bytes of data the file holds (holes left out): what copying it needs.
    pub fn data_bytes(&self) -> u64 {
        self.size.min(self.blocks * 512)
    }
}

/// Major and minor of a host device number (`st_rdev`), decoded as the host encodes them.
#[allow(
    clippy::unnecessary_cast,
    clippy::cast_sign_loss,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap
)]
pub fn device_numbers(rdev: u64) -> (u32, u32) {
    // `Dev` is u64 on Linux and i32 on Apple systems.
    let dev = rdev as rustix::fs::Dev;
    (rustix::fs::major(dev) as u32, rustix::fs::minor(dev) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn regions_skip_holes_and_end_at_len() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let mut f = fs::File::create(&p).unwrap();
        f.write_all(&[1u8; 4096]).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[2u8; 4096]).unwrap();
        f.set_len(3 << 20).unwrap();
        drop(f);
        let f = fs::File::open(&p).unwrap();
        let r: Vec<(u64, u64)> = data_regions(&f, 3 << 20).collect();
        // Filesystems without SEEK_DATA support report everything as data; tmpfs and ext4
        // report the two written pieces.
        let data: u64 = r.iter().map(|(a, b)| b - a).sum();
        assert!(r.iter().all(|(a, b)| a < b && *b <= 3 << 20), "{r:?}");
        assert!(r.windows(2).all(|w| w[0].1 <= w[1].0), "{r:?}");
        assert!(data >= 8192, "{r:?}");
        assert!(r.first().is_some_and(|(a, _)| *a == 0), "{r:?}");
        let short: Vec<(u64, u64)> = data_regions(&f, 100).collect();
        assert_eq!(short, vec![(0, 100)]);
    }

    #[test]
    fn xattrs_of_a_missing_path_are_an_error_naming_it() {
        let e = read_xattrs(Path::new("/nonexistent/ext4kit-host-test")).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/ext4kit-host-test"),
            "{e}"
        );
        assert_eq!(e.errno(), libc::ENOENT);
    }
}
