//! Operations on byte paths: the path-level calls a program writing an image wants — create,
//! `mkdir -p`, remove (one name or a whole tree), rename, read and write a whole file — built
//! on the inode-level ones ([`Fs::create`], [`Fs::unlink`], [`Fs::rename`], ...).
//!
//! Paths are absolute or relative to the root, as for [`Fs::resolve`]. The directory holding
//! the last component is resolved following symlinks; the last component itself is never
//! followed by the calls that create, remove or rename it (as mkdir(2), unlink(2) and
//! rename(2)), and is followed by the ones that read or write a file's contents (as open(2)).
//! A trailing `/` is trimmed from the name ([`names_dir`] tells a caller that wants the
//! kernel's "must be a directory" rule).

use ext4kit_format::inode::FileType;

use crate::error::{Error, PathBytes, Result};
use crate::fs::Fs;
use crate::inode::{NewInode, NewKind};

/// Splits `path` into the directory holding its last component and that component, trailing
/// slashes trimmed: `/a/b/` → (`/a`, `b`), `b` → (`/`, `b`), `/b` → (`/`, `b`). The name may be
/// empty, `.` or `..` ([`Fs::parent_and_name`] refuses those).
pub fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    let mut trimmed = path;
    while trimmed.len() > 1 && trimmed.ends_with(b"/") {
        trimmed = &trimmed[..trimmed.len() - 1];
    }
    match trimmed.iter().rposition(|b| *b == b'/') {
        Some(i) => (&trimmed[..i.max(1)], &trimmed[i + 1..]),
        None => (&b"/"[..], trimmed),
    }
}

/// Whether `path` must name a directory: it ends in `/` (and is not only slashes), as the
/// kernel reads a trailing slash.
pub fn names_dir(path: &[u8]) -> bool {
    path.ends_with(b"/") && path.iter().any(|&b| b != b'/')
}

impl Fs {
    /// The directory holding the last component of `path` (resolved, symlinks followed; it
    /// must be a directory) and that component ([`split_parent`]). A last component that is
    /// empty, `.` or `..` is [`Error::InvalidName`].
    pub fn parent_and_name(&self, path: &[u8]) -> Result<(u32, Vec<u8>)> {
        let (dir, name) = split_parent(path);
        if name.is_empty() || name == b"." || name == b".." {
            return Err(Error::InvalidName {
                path: PathBytes(path.to_vec()),
            });
        }
        let (d, inode) = self.resolve_inode(dir, true)?;
        if !inode.is_dir() {
            return Err(Error::NotDir {
                path: PathBytes(dir.to_vec()),
            });
        }
        Ok((d, name.to_vec()))
    }

    /// Creates `path` ([`Fs::create`] in its parent directory). Returns the new inode number.
    pub fn create_path(&self, path: &[u8], kind: &NewKind, attrs: &NewInode) -> Result<u32> {
        let (dir, name) = self.parent_and_name(path)?;
        self.create(dir, &name, kind, attrs)
    }

    /// Creates directory `path` and every missing directory above it with `attrs`, as
    /// `mkdir -p`: existing directories (and symlinks to directories) are kept; a component
    /// that exists and is not a directory is [`Error::NotDir`], a dangling symlink
    /// [`Error::Exists`]. Returns the directory's inode number.
    pub fn mkdir_all(&self, path: &[u8], attrs: &NewInode) -> Result<u32> {
        let mut cur = crate::fs::ROOT_INO;
        let mut prefix: Vec<u8> = Vec::new();
        for comp in path.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            prefix.push(b'/');
            prefix.extend_from_slice(comp);
            cur = match self.resolve_inode(&prefix, true) {
                Ok((ino, inode)) if inode.is_dir() => ino,
                Ok(_) => {
                    return Err(Error::NotDir {
                        path: PathBytes(prefix),
                    });
                }
                Err(Error::NotFound { .. }) if self.lookup(cur, comp)?.is_none() => {
                    self.create(cur, comp, &NewKind::Directory, attrs)?
                }
                // Only the last component of the prefix can be missing: a dangling symlink.
                Err(Error::NotFound { .. }) => {
                    return Err(Error::Exists {
                        path: PathBytes(prefix),
                    });
                }
                Err(e) => return Err(e),
            };
        }
        Ok(cur)
    }

    /// Removes the name `path` (not followed when a symlink): a directory must be empty
    /// ([`Fs::rmdir`]), anything else is unlinked ([`Fs::unlink`]).
    pub fn remove(&self, path: &[u8]) -> Result<()> {
        let (dir, name) = self.parent_and_name(path)?;
        let e = self.lookup(dir, &name)?.ok_or_else(|| Error::NotFound {
            path: PathBytes(path.to_vec()),
        })?;
        if self.inode(e.ino)?.is_dir() {
            self.rmdir(dir, &name)
        } else {
            self.unlink(dir, &name)
        }
    }

    /// Removes `path` and, when it is a directory, everything below it, as `rm -r` (the last
    /// component is not followed when a symlink). What was removed before a failure stays
    /// removed.
    pub fn remove_all(&self, path: &[u8]) -> Result<()> {
        let (dir, name) = self.parent_and_name(path)?;
        let e = self.lookup(dir, &name)?.ok_or_else(|| Error::NotFound {
            path: PathBytes(path.to_vec()),
        })?;
        if self.inode(e.ino)?.is_dir() {
            self.remove_contents(e.ino)?;
            self.rmdir(dir, &name)
        } else {
            self.unlink(dir, &name)
        }
    }

    /// Removes everything inside directory `dir` (which stays), depth first, with an explicit
    /// stack (deep trees need no recursion).
    pub fn remove_contents(&self, dir: u32) -> Result<()> {
        // (directory, its name in the directory below it on the stack, entries not yet handled)
        type Frame = (u32, Vec<u8>, Vec<(Vec<u8>, u32)>);
        let mut stack: Vec<Frame> = vec![(dir, Vec::new(), self.children(dir)?)];
        while let Some((d, dname, mut kids)) = stack.pop() {
            let Some((name, ino)) = kids.pop() else {
                // Empty now: remove it from its parent (`dir` itself stays).
                if let Some((parent, _, _)) = stack.last() {
                    self.rmdir(*parent, &dname)?;
                }
                continue;
            };
            let is_dir = self.inode(ino)?.is_dir();
            stack.push((d, dname, kids));
            if is_dir {
                let grandkids = self.children(ino)?;
                stack.push((ino, name, grandkids));
            } else {
                self.unlink(d, &name)?;
            }
        }
        Ok(())
    }

    /// The entries of directory `dir` but `.` and `..`: (name, inode).
    fn children(&self, dir: u32) -> Result<Vec<(Vec<u8>, u32)>> {
        Ok(self
            .read_dir(dir)?
            .into_iter()
            .filter(|e| !e.is_dot_or_dotdot())
            .map(|e| (e.name, e.ino))
            .collect())
    }

    /// Renames `from` to `to` ([`Fs::rename`]: an existing `to` is replaced as rename(2)
    /// replaces it). Neither last component is followed.
    pub fn rename_path(&self, from: &[u8], to: &[u8]) -> Result<()> {
        let (src_dir, src_name) = self.parent_and_name(from)?;
        let (dst_dir, dst_name) = self.parent_and_name(to)?;
        self.rename(src_dir, &src_name, dst_dir, &dst_name)
    }

    /// The whole contents of the file at `path` (symlinks followed), refusing files larger
    /// than `limit` bytes.
    pub fn read_path(&self, path: &[u8], limit: u64) -> Result<Vec<u8>> {
        let ino = self.resolve(path, true)?;
        self.open_file(ino)?.read_to_end(limit)
    }

    /// Makes the file at `path` (symlinks followed) hold `data`, as writing it through
    /// `open(O_WRONLY | O_CREAT | O_TRUNC)`: a missing file is created with `attrs`, an
    /// existing regular file is truncated first (its attributes kept). Returns its inode
    /// number. Nothing reaches the image before a sync.
    pub fn write_path(&self, path: &[u8], data: &[u8], attrs: &NewInode) -> Result<u32> {
        let ino = match self.resolve_inode(path, true) {
            Ok((ino, inode)) => {
                if inode.file_type() != Some(FileType::Regular) {
                    return Err(if inode.is_dir() {
                        Error::IsDir {
                            path: PathBytes(path.to_vec()),
                        }
                    } else {
                        Error::InvalidArgument(format!(
                            "{}: not a regular file",
                            String::from_utf8_lossy(path)
                        ))
                    });
                }
                self.set_size(ino, 0)?;
                ino
            }
            Err(Error::NotFound { .. }) => self.create_path(path, &NewKind::Regular, attrs)?,
            Err(e) => return Err(e),
        };
        self.write_at(ino, 0, data)?;
        Ok(ino)
    }
}
