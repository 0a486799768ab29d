//! `IMG[:PATH]` arguments (the e2tools convention) and opening images.
//!
//! The image part is the longest prefix naming an existing file when the whole argument is not
//! one, so image names may contain `:`; the path part is inside the image, `/` if omitted.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ext4kit_fs::format::Structure;
use ext4kit_fs::{Fs, JournalMode, OpenOptions};

/// An `IMG[:PATH]` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The image file.
    pub image: PathBuf,
    /// The path inside the image (`None`: none given).
    pub path: Option<Vec<u8>>,
}

impl Spec {
    /// Splits `arg` into image and path.
    pub fn parse(arg: &OsStr) -> Spec {
        let bytes = arg.as_bytes();
        if Path::new(arg).is_file() || !bytes.contains(&b':') {
            return Spec {
                image: PathBuf::from(arg),
                path: None,
            };
        }
        let colons: Vec<usize> = bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b':')
            .map(|(i, _)| i)
            .collect();
        let at = colons
            .iter()
            .copied()
            .find(|&i| Path::new(OsStr::from_bytes(&bytes[..i])).is_file())
            .unwrap_or(colons[0]);
        Spec {
            image: PathBuf::from(OsStr::from_bytes(&bytes[..at])),
            path: Some(bytes[at + 1..].to_vec()),
        }
    }

    /// The path inside the image, `/` if none was given.
    pub fn path_or_root(&self) -> &[u8] {
        match &self.path {
            Some(p) if !p.is_empty() => p,
            _ => b"/",
        }
    }

    /// How to print this argument.
    pub fn display(&self) -> String {
        format!(
            "{}:{}",
            self.image.display(),
            String::from_utf8_lossy(self.path_or_root())
        )
    }
}

/// A `cp` operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// `-`: standard input or output.
    Dash,
    /// `IMG:PATH` with IMG an existing file.
    Image(Spec),
    /// A path on the host.
    Host(PathBuf),
}

/// Classifies a `cp` operand: `-`; a host path that exists; `IMG:PATH` whose IMG is an
/// existing file; any other argument with a `:` is refused (its image does not exist), so that
/// a mistyped image name never becomes a host file or directory named `IMG:...`; anything else
/// is a new host path.
pub fn classify(arg: &OsStr) -> Result<Arg> {
    if arg.as_bytes() == b"-" {
        return Ok(Arg::Dash);
    }
    if Path::new(arg).symlink_metadata().is_ok() {
        return Ok(Arg::Host(PathBuf::from(arg)));
    }
    let spec = Spec::parse(arg);
    match spec.path {
        None => Ok(Arg::Host(PathBuf::from(arg))),
        Some(_) if spec.image.is_file() => Ok(Arg::Image(spec)),
        Some(_) if spec.image.is_dir() => anyhow::bail!(
            "{}: is a directory, not an image (IMG:PATH names a file inside an image file)",
            spec.image.display()
        ),
        Some(_) => anyhow::bail!(
            "{}: no such file or directory (IMG:PATH names a file inside an existing image)",
            spec.image.display()
        ),
    }
}

/// Opens images once each, printing their notices (journal replay) to stderr.
#[derive(Default)]
pub struct Images {
    open: HashMap<PathBuf, Fs>,
    /// Read the image as it is on disk, without replaying a journal.
    pub no_replay: bool,
    /// Writing: replay a journal that needs recovery onto the image (else refuse).
    pub replay_journal: bool,
    /// Reading: the superblock to use (`-b`, as e2fsck).
    pub superblock: Option<u64>,
    /// Warnings already printed, per image.
    warned: HashMap<PathBuf, usize>,
}

/// Page size of the read-only page cache the reading commands use.
const READ_PAGE_SIZE: usize = 64 << 10;

impl Images {
    /// The filesystem in `image`.
    pub fn get(&mut self, image: &Path) -> Result<Fs> {
        if let Some(fs) = self.open.get(image) {
            return Ok(fs.clone());
        }
        let opts = OpenOptions {
            journal: if self.no_replay {
                JournalMode::Ignore
            } else {
                JournalMode::Replay
            },
            // Reading only: 64 KiB pages (large folios) cut the per-page work of big reads by
            // 16 (`cat` of 1 GiB: 0.48 s -> 0.30 s) and cost nothing measurable on small files.
            page_size: READ_PAGE_SIZE,
            // Reading commands read damaged images as far as they can, saying what is damaged
            // (writing stays refused on them).
            salvage: true,
            superblock: self.superblock,
            wait_for_lock: crate::write_cmds::wait_for_lock(),
            ..OpenOptions::default()
        };
        let fs = Fs::open_path(image, &opts)
            .map_err(|e| {
                if let ext4kit_fs::Error::Open { message, errno, .. } = &e {
                    // Said with the path once, by the context below.
                    return anyhow::anyhow!(
                        "{}",
                        crate::write_cmds::open_error_reason(message, *errno)
                    );
                }
                let journal = matches!(
                    e.structure(),
                    Some(
                        Structure::JournalSuperblock
                            | Structure::JournalDescriptor
                            | Structure::JournalCommit
                            | Structure::JournalRevoke
                            | Structure::JournalDataBlock
                    )
                );
                let hint = if journal && !self.no_replay {
                    " (--no-replay reads the image without its journal)"
                } else {
                    ""
                };
                anyhow::anyhow!("{e}{hint}")
            })
            .with_context(|| image.display().to_string())?;
        for n in fs.notices() {
            eprintln!("ext4kit: {}: {n}", image.display());
        }
        self.open.insert(image.to_path_buf(), fs.clone());
        self.print_warnings();
        Ok(fs)
    }

    /// Prints (to stderr, once each) what was found damaged and read past since the last call.
    pub fn print_warnings(&mut self) {
        for (path, fs) in &self.open {
            let done = self.warned.entry(path.clone()).or_insert(0);
            let all = fs.warnings();
            for w in all.iter().skip(*done) {
                eprintln!("ext4kit: {}: {w}", path.display());
            }
            *done = all.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_image_and_path() {
        let s = Spec::parse(OsStr::new("/nonexistent/disk.img:/etc/passwd"));
        assert_eq!(s.image, PathBuf::from("/nonexistent/disk.img"));
        assert_eq!(s.path.as_deref(), Some(&b"/etc/passwd"[..]));
        let s = Spec::parse(OsStr::new("disk.img"));
        assert_eq!(s.path, None);
        assert_eq!(s.path_or_root(), b"/");
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a:b.img");
        std::fs::write(&img, b"").unwrap();
        let arg = format!("{}:/x:y", img.display());
        let s = Spec::parse(OsStr::new(&arg));
        assert_eq!(s.image, img);
        assert_eq!(s.path.as_deref(), Some(&b"/x:y"[..]));
    }
}
