//! What `cp` copies into an image from: a host path, another image's inode (image-to-image
//! copy), or standard input (`-`). [`crate::write_cmds`] copies any of them the same way.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use ext4kit_fs::format::inode::Timestamp;
use ext4kit_fs::{ExtentKind, FileType, Fs};

/// A source entry.
pub enum Src<'s> {
    /// A host path (never followed when it is a symlink).
    Host(PathBuf),
    /// Inode `ino` of image `fs` (index `img` among the source images), shown as `shown`.
    Image {
        /// The image.
        fs: &'s Fs,
        /// Its index among this command's source images (hard links are kept per image).
        img: u64,
        /// The inode.
        ino: u32,
        /// `IMG:PATH`, for messages.
        shown: String,
    },
    /// Standard input: a regular file of whatever it holds.
    Stdin,
}

/// The kind of a source entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symlink.
    Symlink,
    /// A character device (major, minor).
    Char(u32, u32),
    /// A block device (major, minor).
    Block(u32, u32),
    /// A FIFO.
    Fifo,
    /// A socket.
    Socket,
}

/// What a copy needs to know of a source entry.
pub struct Meta {
    /// Its kind.
    pub kind: Kind,
    /// Permission bits (with set-id and sticky bits).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Access time.
    pub atime: Timestamp,
    /// Modification time.
    pub mtime: Timestamp,
    /// Link count.
    pub nlink: u64,
    /// Identity for keeping hard links linked.
    pub key: (u64, u64),
    /// Size in bytes.
    pub size: u64,
    /// Bytes of data it holds (holes left out), when known: what copying it needs.
    pub data_bytes: u64,
}

fn host_time(s: i64, n: i64) -> Timestamp {
    Timestamp {
        seconds: s,
        nanoseconds: n.clamp(0, 999_999_999) as u32,
    }
}

impl Src<'_> {
    /// How to name this source in messages.
    pub fn display(&self) -> String {
        match self {
            Src::Host(p) => p.display().to_string(),
            Src::Image { shown, .. } => shown.clone(),
            Src::Stdin => "-".into(),
        }
    }

    /// The entry's metadata (`lstat`).
    pub fn meta(&self) -> Result<Meta> {
        match self {
            Src::Host(p) => {
                // The one host importer's view of the file (as `build` reads it).
                let md = ext4kit_fs::host::HostMeta::lstat(p)?;
                let dev = || ext4kit_fs::host::device_numbers(md.rdev);
                let kind = match md.fmt() {
                    0o040_000 => Kind::Dir,
                    0o100_000 => Kind::File,
                    0o120_000 => Kind::Symlink,
                    0o020_000 => {
                        let (a, b) = dev();
                        Kind::Char(a, b)
                    }
                    0o060_000 => {
                        let (a, b) = dev();
                        Kind::Block(a, b)
                    }
                    0o010_000 => Kind::Fifo,
                    _ => Kind::Socket,
                };
                Ok(Meta {
                    kind,
                    perm: (md.mode & 0o7777) as u16,
                    uid: md.uid,
                    gid: md.gid,
                    atime: host_time(md.atime.0, i64::from(md.atime.1)),
                    mtime: host_time(md.mtime.0, i64::from(md.mtime.1)),
                    nlink: u64::from(md.nlink),
                    key: (md.dev, md.ino),
                    size: md.size,
                    data_bytes: md.data_bytes(),
                })
            }
            Src::Image {
                fs,
                img,
                ino,
                shown,
            } => {
                let st = fs.stat(*ino).with_context(|| shown.clone())?;
                let (ma, mi) = st.rdev.unwrap_or((0, 0));
                let kind = match st.file_type {
                    FileType::Directory => Kind::Dir,
                    FileType::Regular => Kind::File,
                    FileType::Symlink => Kind::Symlink,
                    FileType::CharDevice => Kind::Char(ma, mi),
                    FileType::BlockDevice => Kind::Block(ma, mi),
                    FileType::Fifo => Kind::Fifo,
                    FileType::Socket => Kind::Socket,
                };
                Ok(Meta {
                    kind,
                    perm: st.mode & 0o7777,
                    uid: st.uid,
                    gid: st.gid,
                    atime: st.atime,
                    mtime: st.mtime,
                    nlink: u64::from(st.nlink),
                    // Image inodes never collide with host (dev, ino) pairs in practice: the
                    // high bit marks them.
                    key: (1 << 63 | *img, u64::from(*ino)),
                    size: st.size,
                    data_bytes: st.size.min(st.blocks * 512),
                })
            }
            Src::Stdin => {
                let (uid, gid) = crate::write_cmds::euid_egid();
                let now = crate::write_cmds::now();
                Ok(Meta {
                    kind: Kind::File,
                    perm: 0o644,
                    uid,
                    gid,
                    atime: now,
                    mtime: now,
                    nlink: 1,
                    key: (u64::MAX, u64::MAX),
                    size: 0,
                    data_bytes: 0,
                })
            }
        }
    }

    /// The entries of a directory (`.` and `..` left out), sorted by name.
    pub fn children(&self) -> Result<Vec<(Vec<u8>, Src<'_>)>> {
        match self {
            Src::Host(p) => {
                let mut kids: Vec<_> = fs::read_dir(p)
                    .with_context(|| p.display().to_string())?
                    .collect::<std::io::Result<Vec<_>>>()
                    .with_context(|| p.display().to_string())?;
                kids.sort_by_key(|k| k.file_name());
                Ok(kids
                    .into_iter()
                    .map(|k| (k.file_name().as_bytes().to_vec(), Src::Host(k.path())))
                    .collect())
            }
            Src::Image {
                fs,
                img,
                ino,
                shown,
            } => {
                let mut kids: Vec<_> = fs
                    .read_dir(*ino)
                    .with_context(|| shown.clone())?
                    .into_iter()
                    .filter(|e| !e.is_dot_or_dotdot())
                    .collect();
                kids.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(kids
                    .into_iter()
                    .map(|e| {
                        let shown = format!(
                            "{}/{}",
                            shown.trim_end_matches('/'),
                            String::from_utf8_lossy(&e.name)
                        );
                        (
                            e.name,
                            Src::Image {
                                fs,
                                img: *img,
                                ino: e.ino,
                                shown,
                            },
                        )
                    })
                    .collect())
            }
            Src::Stdin => Ok(Vec::new()),
        }
    }

    /// A symlink's target.
    pub fn link_target(&self) -> Result<Vec<u8>> {
        match self {
            Src::Host(p) => Ok(fs::read_link(p)
                .with_context(|| p.display().to_string())?
                .as_os_str()
                .as_bytes()
                .to_vec()),
            Src::Image { fs, ino, shown, .. } => fs.read_link(*ino).with_context(|| shown.clone()),
            Src::Stdin => Ok(Vec::new()),
        }
    }

    /// Extended attributes to keep with `-p`: every namespace that can be read (as cp -a
    /// does as root). `system.data` (inline data) is part of the file, not an attribute.
    pub fn xattrs(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        match self {
            // The one host importer's policy (as `build`): an attribute that cannot be read is
            // an error naming the file, not dropped.
            Src::Host(p) => Ok(ext4kit_fs::host::read_xattrs(p)?),
            Src::Image { fs, ino, shown, .. } => {
                let mut v: Vec<(Vec<u8>, Vec<u8>)> = fs
                    .list_xattrs(*ino)
                    .with_context(|| shown.clone())?
                    .into_iter()
                    .filter(|x| x.name != b"system.data")
                    .map(|x| (x.name, x.value))
                    .collect();
                v.sort();
                Ok(v)
            }
            Src::Stdin => Ok(Vec::new()),
        }
    }

    /// The data regions of a regular file as `(start, end)` byte ranges (holes left out), for
    /// image sources.
    pub fn image_ranges(fs: &Fs, ino: u32, size: u64) -> Result<Vec<(u64, u64)>> {
        let reader = fs.open_file(ino)?;
        if let Some(stored) = reader.inline_len() {
            return Ok(vec![(0, stored.min(size))]);
        }
        let runs = fs.file_runs(ino)?;
        if runs.is_empty() {
            return Ok(vec![(0, size)]);
        }
        let bs = u64::from(fs.block_size());
        Ok(runs
            .iter()
            .filter(|r| r.kind == ExtentKind::Written)
            .map(|r| (r.lblk * bs, ((r.lblk + r.len) * bs).min(size)))
            .filter(|(a, b)| a < b)
            .collect())
    }
}
