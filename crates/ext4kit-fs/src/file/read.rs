//! Reading file data: through the page cache for block-mapped files (holes and unwritten
//! extents read as zeros), from the inode for inline-data files; and the list of a file's
//! data runs and holes.

use ext4kit_format::inline_data;
use ext4kit_format::inode::{Inode, InodeFlags};
use ext4kit_format::{IncompatFeatures, Structure};
use ext4kit_pagecache::{Extent, Mapping};

use crate::error::{Corruption, Error, PathBytes, Result, ResultExt, Unsupported};
use crate::fs::{Core, Fs};

#[derive(Debug)]
enum Source {
    Inline(Vec<u8>),
    Paged(Mapping),
}

/// An open regular file, for reading.
#[derive(Debug)]
pub struct FileReader {
    ino: u32,
    size: u64,
    source: Source,
}

impl FileReader {
    /// Starts reading the first `len` bytes into the cache without waiting (for a file about
    /// to be read whole: its IO overlaps whatever the caller does meanwhile).
    pub fn prefetch(&self, len: u64) {
        if let Source::Paged(m) = &self.source {
            m.prefetch(0, len);
        }
    }

    /// The inode number.
    pub fn ino(&self) -> u32 {
        self.ino
    }

    /// The file size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// For inline-data files, how many bytes are stored in the inode (the rest, up to the
    /// size, reads as zeros); `None` for block-mapped files (see [`Fs::file_runs`]).
    pub fn inline_len(&self) -> Option<u64> {
        match &self.source {
            Source::Inline(d) => Some(d.len() as u64),
            Source::Paged(_) => None,
        }
    }

    /// Reads up to `buf.len()` bytes at `offset` (fewer at EOF); returns the count.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        match &self.source {
            Source::Inline(data) => {
                // Bytes past the stored inline data (up to i_size) read as zeros, as the
                // kernel's ext4_read_inline_folio zero-fills them.
                if offset >= self.size {
                    return Ok(0);
                }
                let n = ((self.size - offset).min(buf.len() as u64)) as usize;
                let stored = usize::try_from(offset)
                    .ok()
                    .and_then(|o| data.get(o..))
                    .unwrap_or(&[]);
                let k = stored.len().min(n);
                buf[..k].copy_from_slice(&stored[..k]);
                buf[k..n].fill(0);
                Ok(n)
            }
            Source::Paged(m) => m
                .read(offset, buf)
                .map_err(|e| Error::from_cache(self.ino, e)),
        }
    }

    /// Reads the whole file (refuses files larger than `limit` bytes).
    pub fn read_to_end(&self, limit: u64) -> Result<Vec<u8>> {
        if self.size > limit {
            return Err(Error::InvalidArgument(format!(
                "file of {} bytes is larger than the {limit}-byte limit",
                self.size
            )));
        }
        let mut out = vec![0u8; self.size as usize];
        let mut pos = 0usize;
        while pos < out.len() {
            let n = self.read_at(pos as u64, &mut out[pos..])?;
            if n == 0 {
                break;
            }
            pos += n;
        }
        out.truncate(pos);
        Ok(out)
    }
}

impl Core {
    /// Refuses anything but a regular file whose data we can handle (directories, other
    /// types, encrypted files), for reading and for writing alike.
    pub(crate) fn check_regular(&self, ino: u32, inode: &Inode) -> Result<()> {
        if inode.is_dir() {
            return Err(Error::IsDir {
                path: PathBytes(format!("<inode {ino}>").into_bytes()),
            });
        }
        if !inode.is_regular() {
            return Err(Error::InvalidArgument(format!(
                "inode {ino} is not a regular file"
            )));
        }
        if inode.flags().contains(InodeFlags::ENCRYPT) {
            return Err(Error::unsupported(Unsupported::Encrypted).with_inode(ino));
        }
        Ok(())
    }
}

impl Fs {
    /// Opens regular file `ino` for reading.
    pub fn open_file(&self, ino: u32) -> Result<FileReader> {
        let inode = self.core.read_inode(ino)?;
        self.core.check_regular(ino, &inode)?;
        // A file written since the last sync: its size is its page cache's (the inode's
        // catches up at writeback), so that reading sees what was written.
        let written = self
            .core
            .write
            .as_ref()
            .and_then(|w| w.open_mappings.lock().get(&ino).map(|m| m.size()));
        let size = written.unwrap_or(inode.size());
        let source = if inode.flags().contains(InodeFlags::INLINE_DATA) {
            if !self.core.sb.has_incompat(IncompatFeatures::INLINE_DATA) {
                return Err(
                    Error::corrupt(Structure::InlineData, Corruption::InlineData).with_inode(ino),
                );
            }
            let extra = inline_data::system_data(&inode, self.core.ea_inode)
                .ctx_inode(ino)?
                .unwrap_or_default();
            let mut data = inode.block_area().to_vec();
            data.extend_from_slice(&extra);
            data.truncate(usize::try_from(size).unwrap_or(usize::MAX));
            Source::Inline(data)
        } else {
            Source::Paged(self.pages.mapping(u64::from(ino), size, size))
        };
        Ok(FileReader { ino, size, source })
    }

    /// Maps logical block `lblk` of inode `ino`: the run starting there (at most `len`
    /// blocks); holes reach up to the next mapped block.
    pub fn map_block(&self, ino: u32, lblk: u64, len: u64) -> Result<Extent> {
        let inode = self.core.read_inode(ino)?;
        self.core.map_inode(ino, &inode, lblk, len)
    }

    /// The data runs and holes of inode `ino` covering its size, in order (empty for inline
    /// data and fast symlinks, which have no blocks).
    pub fn file_runs(&self, ino: u32) -> Result<Vec<Extent>> {
        let inode = self.core.read_inode(ino)?;
        if inode.flags().contains(InodeFlags::INLINE_DATA) {
            return Ok(Vec::new());
        }
        if inode.is_symlink()
            && inline_data::symlink_storage(&inode, &self.core.sb)
                == inline_data::SymlinkStorage::Fast
        {
            return Ok(Vec::new());
        }
        let end = inode.size().div_ceil(u64::from(self.core.block_size));
        self.core.runs(ino, &inode, end)
    }
}
