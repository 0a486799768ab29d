//! Where `mkfs` and `build` write a new image: never over an existing image until the new one
//! is complete. A regular file (or a path that does not exist yet) gets its new image in a
//! temporary file next to it, fsynced and renamed over it only on success; on failure, or on
//! SIGINT/SIGTERM, the temporary file is removed and the old file is left as it was (as
//! `mke2fs` leaves it when it refuses the options). A block device cannot be renamed: it is
//! written in place, after every option was checked.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};

/// The path of the temporary file being written, for the signal handler (a C string kept
/// alive here; the handler only reads its pointer).
static PENDING: Mutex<Option<CString>> = Mutex::new(None);
static PENDING_PTR: std::sync::atomic::AtomicPtr<libc::c_char> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_signal(sig: libc::c_int) {
    let p = PENDING_PTR.load(std::sync::atomic::Ordering::Acquire);
    // SAFETY: `p` is null or points to the NUL-terminated path owned by `PENDING`, which is
    // only replaced after the pointer is cleared; unlink, signal and raise are
    // async-signal-safe.
    unsafe {
        if !p.is_null() {
            libc::unlink(p);
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// A new image being written.
pub struct NewImage {
    /// The path given.
    target: PathBuf,
    /// Where the filesystem is written (the temporary file, or the device itself).
    pub path: PathBuf,
    /// `Some` while a temporary file exists that must be removed unless committed.
    temp: Option<PathBuf>,
    /// The final path to rename the temporary over (symlinks resolved).
    dest: PathBuf,
}

impl NewImage {
    /// Prepares to write a new image at `target`. Nothing existing is changed.
    pub fn prepare(target: &Path) -> Result<NewImage> {
        let shown = target.display().to_string();
        // A symlink is written through, as mke2fs writes through it.
        let dest = match fs::symlink_metadata(target) {
            Ok(m) if m.file_type().is_symlink() => fs::canonicalize(target)
                .with_context(|| format!("{shown}: cannot resolve the symlink"))?,
            _ => target.to_path_buf(),
        };
        let existing = match fs::metadata(&dest) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(anyhow::anyhow!("{shown}: {}", io_why(&e))),
        };
        if let Some(m) = &existing {
            use std::os::unix::fs::FileTypeExt;
            if m.file_type().is_block_device() {
                return Ok(NewImage {
                    target: target.to_path_buf(),
                    path: dest.clone(),
                    temp: None,
                    dest,
                });
            }
            if !m.is_file() {
                anyhow::bail!("{shown}: not a regular file or block device");
            }
        }
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dest
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        let mut n = 0u32;
        let (temp, file) = loop {
            let mut tn = b".".to_vec();
            tn.extend_from_slice(&name);
            tn.extend_from_slice(format!(".ext4kit-new-{}-{n}", std::process::id()).as_bytes());
            let p = dir.join(std::ffi::OsStr::from_bytes(&tn));
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o666)
                .open(&p)
            {
                Ok(f) => break (p, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => {
                    return Err(anyhow::anyhow!(
                        "{shown}: cannot create a temporary file in {}: {}",
                        dir.display(),
                        io_why(&e)
                    ));
                }
            }
        };
        let img = NewImage {
            target: target.to_path_buf(),
            path: temp.clone(),
            temp: Some(temp),
            dest,
        };
        img.arm();
        // The new file keeps the old one's mode and owner (as an in-place write would).
        if let Some(m) = &existing {
            let _ = file.set_permissions(fs::Permissions::from_mode(m.mode() & 0o7777));
            let _ = rustix::fs::fchown(
                &file,
                Some(rustix::fs::Uid::from_raw(m.uid())),
                Some(rustix::fs::Gid::from_raw(m.gid())),
            );
        }
        Ok(img)
    }

    fn arm(&self) {
        let Some(t) = &self.temp else { return };
        let Ok(c) = CString::new(t.as_os_str().as_bytes()) else {
            return;
        };
        let mut g = PENDING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        PENDING_PTR.store(c.as_ptr().cast_mut(), std::sync::atomic::Ordering::Release);
        *g = Some(c);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: installs a handler that only calls async-signal-safe functions.
            unsafe {
                libc::signal(
                    sig,
                    on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
                );
            }
        }
    }

    fn disarm() {
        let mut g = PENDING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        PENDING_PTR.store(std::ptr::null_mut(), std::sync::atomic::Ordering::Release);
        *g = None;
    }

    /// The new image is complete: make it durable and put it in place.
    pub fn commit(mut self) -> Result<()> {
        let Some(temp) = self.temp.clone() else {
            return Ok(());
        };
        let shown = self.target.display().to_string();
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&temp)
            .with_context(|| shown.clone())?;
        f.sync_all()
            .map_err(|e| anyhow::anyhow!("{shown}: fsync failed: {}", io_why(&e)))?;
        drop(f);
        fs::rename(&temp, &self.dest).map_err(|e| {
            anyhow::anyhow!("{shown}: cannot put the new image in place: {}", io_why(&e))
        })?;
        self.temp = None;
        Self::disarm();
        if let Some(dir) = self.dest.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for NewImage {
    fn drop(&mut self) {
        if let Some(t) = self.temp.take() {
            let _ = fs::remove_file(t);
            Self::disarm();
        }
    }
}

/// An IO error's reason without the "(os error N)" suffix.
fn io_why(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
