//! Path resolution and the public directory API.
//!
//! Paths are byte strings relative to the root (a leading `/` is optional); `.` and empty
//! components are skipped, `..` goes to the parent (the root's parent is the root). A symlink
//! met as an intermediate component is followed (absolute targets restart at the root); the
//! last component is followed only when asked. At most [`MAX_SYMLINKS`] symlinks are followed
//! per resolution (`ELOOP` after that, as Linux does).
//!
//! As in the kernel, a path (or a symlink target) ending in `/` names a directory: its last
//! component is followed when it is a symlink and must be a directory (`ENOTDIR` otherwise), and
//! `.` after a non-directory is `ENOTDIR` too (`file/.`).

use std::collections::VecDeque;

use ext4kit_format::inode::{FileType, Inode};

use crate::dir::{DirEntry, DirInode, NAME_MAX};
use crate::error::{Corruption, Error, PathBytes, Result};
use crate::fs::{Fs, ROOT_INO};

/// Most symlinks followed while resolving one path (`MAXSYMLINKS`).
pub const MAX_SYMLINKS: usize = 40;

fn join(base: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = base.to_vec();
    if !p.is_empty() && !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl Fs {
    /// Every entry of directory `ino`, `.` and `..` included, in on-disk order.
    pub fn read_dir(&self, ino: u32) -> Result<Vec<DirEntry>> {
        let inode = self.core.read_inode(ino)?;
        if !inode.is_dir() {
            return Err(Error::NotDir {
                path: PathBytes(format!("<inode {ino}>").into_bytes()),
            });
        }
        self.core.read_dir_entries(&DirInode { ino, inode: &inode })
    }

    /// [`Fs::read_dir`] for salvaging: entries whose names no path can hold (empty, containing
    /// `/` or NUL — a damaged block) are left out and returned as errors beside the others,
    /// instead of failing the whole directory. Any other damage still fails it.
    pub fn read_dir_salvage(&self, ino: u32) -> Result<(Vec<DirEntry>, Vec<Error>)> {
        let inode = self.core.read_inode(ino)?;
        if !inode.is_dir() {
            return Err(Error::NotDir {
                path: PathBytes(format!("<inode {ino}>").into_bytes()),
            });
        }
        let mut bad = Vec::new();
        let entries = self
            .core
            .read_dir_entries_with(&DirInode { ino, inode: &inode }, Some(&mut bad))?;
        Ok((entries, bad))
    }

    /// Looks `name` up in directory `dir` (through the htree index in indexed directories).
    pub fn lookup(&self, dir: u32, name: &[u8]) -> Result<Option<DirEntry>> {
        let inode = self.core.read_inode(dir)?;
        if !inode.is_dir() {
            return Err(Error::NotDir {
                path: PathBytes(format!("<inode {dir}>").into_bytes()),
            });
        }
        self.core.lookup_entry(
            &DirInode {
                ino: dir,
                inode: &inode,
            },
            name,
        )
    }

    /// The htree hash of `name` in indexed directory `dir`, as (major, minor).
    pub fn dx_hash(&self, dir: u32, name: &[u8]) -> Result<(u32, u32)> {
        let inode = self.core.read_inode(dir)?;
        let h = self.core.dx_name_hash(
            &DirInode {
                ino: dir,
                inode: &inode,
            },
            name,
        )?;
        Ok((h.major, h.minor))
    }

    /// Resolves `path` to an inode number. Symlinks in the middle are followed; the last
    /// component is followed only if `follow_last`.
    pub fn resolve(&self, path: &[u8], follow_last: bool) -> Result<u32> {
        Ok(self.resolve_inode(path, follow_last)?.0)
    }

    /// Like [`Fs::resolve`], also returning the inode.
    pub fn resolve_inode(&self, path: &[u8], follow_last: bool) -> Result<(u32, Inode)> {
        self.resolve_inode_at(ROOT_INO, path, follow_last)
    }

    /// Like [`Fs::resolve_inode`], a relative `path` starting at directory `start` (an
    /// absolute one, or an absolute symlink target, restarts at the root), as `openat` does.
    pub fn resolve_inode_at(
        &self,
        start: u32,
        path: &[u8],
        follow_last: bool,
    ) -> Result<(u32, Inode)> {
        let mut queue: VecDeque<Vec<u8>> = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        // `name/` is `name/.`: followed if a symlink, and it must be a directory.
        if path.ends_with(b"/") && !queue.is_empty() {
            queue.push_back(b".".to_vec());
        }
        let mut cur = if path.starts_with(b"/") {
            ROOT_INO
        } else {
            start
        };
        let mut cur_inode = self.core.read_inode(cur)?;
        let mut shown: Vec<u8> = if cur == ROOT_INO {
            b"/".to_vec()
        } else {
            Vec::new()
        };
        let mut followed = 0usize;
        while let Some(comp) = queue.pop_front() {
            if comp == b"." {
                if !cur_inode.is_dir() {
                    return Err(Error::NotDir {
                        path: PathBytes(shown),
                    });
                }
                continue;
            }
            if comp.len() > NAME_MAX {
                // The name itself can be 4 KiB long (from a symlink): show its start only.
                let mut start: Vec<u8> = comp[..32].to_vec();
                start.extend_from_slice(format!("... ({} bytes)", comp.len()).as_bytes());
                return Err(Error::NameTooLong {
                    path: PathBytes(join(&shown, &start)),
                });
            }
            let here = join(&shown, &comp);
            if !cur_inode.is_dir() {
                return Err(Error::NotDir {
                    path: PathBytes(shown),
                });
            }
            let entry = self.core.lookup_entry(
                &DirInode {
                    ino: cur,
                    inode: &cur_inode,
                },
                &comp,
            )?;
            let Some(entry) = entry else {
                return Err(Error::NotFound {
                    path: PathBytes(here),
                });
            };
            let child = self.core.read_inode(entry.ino)?;
            if child.links_count() == 0 && !child.is_dir() {
                return Err(Error::corrupt(
                    ext4kit_format::Structure::DirectoryBlock,
                    Corruption::DeletedInode { ino: entry.ino },
                )
                .with_inode(cur));
            }
            let is_last = queue.is_empty();
            if child.is_symlink() && (!is_last || follow_last) {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(Error::SymlinkLoop {
                        path: PathBytes(path.to_vec()),
                    });
                }
                let target = self.core.symlink_target(entry.ino, &child)?;
                if target.starts_with(b"/") {
                    cur = ROOT_INO;
                    cur_inode = self.core.read_inode(cur)?;
                    shown = b"/".to_vec();
                }
                if target.ends_with(b"/") && target.iter().any(|&b| b != b'/') {
                    queue.push_front(b".".to_vec());
                }
                for c in target.split(|&b| b == b'/').filter(|c| !c.is_empty()).rev() {
                    queue.push_front(c.to_vec());
                }
                continue;
            }
            if comp == b".." {
                // Keep the shown path readable: drop the last component.
                if let Some(pos) = shown[..shown.len().saturating_sub(1)]
                    .iter()
                    .rposition(|&b| b == b'/')
                {
                    shown.truncate(pos + 1);
                }
            } else {
                shown = here;
            }
            cur = entry.ino;
            cur_inode = child;
        }
        Ok((cur, cur_inode))
    }

    /// The file type of inode `ino`.
    pub fn file_type(&self, ino: u32) -> Result<FileType> {
        let inode = self.core.read_inode(ino)?;
        self.core.file_type(ino, &inode)
    }
}
