//! One writer per image: the lock every [`Fs::open_path`](crate::Fs::open_path) takes, and the
//! "is a kernel using it?" check of writing opens.
//!
//! - **Lock**: `flock(2)` on the image file (or device node): exclusive for a writing open,
//!   shared for a reading one (a reader that reads in place or replays the journal in memory
//!   must not see a writer change the image under it). Without waiting, a lock held elsewhere
//!   is refused with [`Error::Open`] (errno `EWOULDBLOCK`) naming the holders found in
//!   `/proc/locks`; with [`OpenOptions::wait_for_lock`](crate::OpenOptions) the open blocks in
//!   the kernel until the lock is free (no polling). Why `flock` and not an OFD `fcntl` lock:
//!   both belong to the open file description, but `flock` holders show their pid in
//!   `/proc/locks` (OFD locks show -1), `flock(1)` and udev's block-device locking speak the
//!   same lock, and we never need byte ranges.
//! - Within one process, opens of the same file share one lock (a second writing open of an
//!   image this process reads upgrades it): `flock` locks of two descriptions conflict even in
//!   one process, and the CLI opens an image once for reading and once for writing in `cp`.
//! - After a blocking wait the path is checked to still name the locked file (a writer that
//!   replaced the image by renaming a new one over it leaves us the old, unlinked inode);
//!   if not, the open starts again on the new file.
//! - **In use by a kernel** (writing opens only): the file's (st_dev, st_ino) against every
//!   loop device's backing file (`LOOP_GET_STATUS64`'s `lo_device`/`lo_inode`, else a `stat`
//!   of `/sys/block/loopN/loop/backing_file`), so a hard link or another spelling of a
//!   loop-mounted image is refused; block devices are opened with `O_EXCL` (the kernel answers
//!   `EBUSY` while the device is mounted or claimed) and checked against the major:minor of
//!   every mount in `/proc/self/mountinfo`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions as FileOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::error::{Error, Result};

/// A held lock on one image file; released when the last open sharing it goes.
#[derive(Debug)]
pub struct ImageLock {
    /// A duplicate of the device's descriptor: the lock lives on the open file description.
    file: File,
    exclusive: Mutex<bool>,
}

impl Drop for ImageLock {
    fn drop(&mut self) {
        // The description may outlive us in a device a background thread still holds for a
        // moment after the last `Fs` went: unlock it now, so that the next command (or the
        // caller's next open) finds the image free as soon as the `Fs` is gone.
        let _ = rustix::fs::flock(&self.file, rustix::fs::FlockOperation::Unlock);
    }
}

type Key = (u64, u64);

fn registry() -> &'static Mutex<HashMap<Key, Weak<ImageLock>>> {
    static R: OnceLock<Mutex<HashMap<Key, Weak<ImageLock>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

fn open_err(path: &Path, message: String, errno: i32) -> Error {
    Error::Open {
        path: path.display().to_string(),
        message,
        errno,
    }
}

fn os_message(e: &io::Error) -> String {
    // "Device or resource busy", without the "(os error 16)" suffix.
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Opens `path` for an image open: the file (with `O_EXCL` for a writing open of a block
/// device), checked not to be in use by a kernel when `writable`, locked (exclusive when
/// `writable`, else shared; waiting if `wait`). The lock lives as long as the returned handle.
pub fn open_locked(path: &Path, writable: bool, wait: bool) -> Result<(File, Arc<ImageLock>)> {
    for _attempt in 0..8 {
        let file = open_file(path, writable)?;
        let meta = file
            .metadata()
            .map_err(|e| open_err(path, os_message(&e), e.raw_os_error().unwrap_or(libc::EIO)))?;
        if writable {
            check_not_in_use_meta(path, &meta)?;
        }
        let key = (meta.dev(), meta.ino());
        let lock = lock_key(path, &file, key, writable, wait)?;
        // The path may have been replaced (renamed over) while we waited: start again on the
        // file it names now.
        match std::fs::metadata(path) {
            Ok(m) if (m.dev(), m.ino()) == key => return Ok((file, lock)),
            Ok(_) => continue,
            Err(e) => {
                return Err(open_err(
                    path,
                    os_message(&e),
                    e.raw_os_error().unwrap_or(libc::EIO),
                ));
            }
        }
    }
    Err(open_err(
        path,
        "the file kept being replaced while waiting for its lock".into(),
        libc::EAGAIN,
    ))
}

fn open_file(path: &Path, writable: bool) -> Result<File> {
    let is_blockdev = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
    let mut o = FileOptions::new();
    o.read(true).write(writable);
    if writable && is_blockdev {
        o.custom_flags(libc::O_EXCL);
    }
    o.open(path).map_err(|e| {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        if writable && is_blockdev && errno == libc::EBUSY {
            open_err(
                path,
                "the device is in use (mounted, or held open exclusively); unmount it before writing".into(),
                errno,
            )
        } else {
            open_err(path, os_message(&e), errno)
        }
    })
}

fn lock_key(
    path: &Path,
    file: &File,
    key: Key,
    exclusive: bool,
    wait: bool,
) -> Result<Arc<ImageLock>> {
    // The registry stays locked while we take the lock, so two opens in this process never
    // race to lock the same file twice (a blocking wait here holds up only other opens).
    let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    reg.retain(|_, w| w.strong_count() > 0);
    if let Some(held) = reg.get(&key).and_then(Weak::upgrade) {
        let mut ex = held.exclusive.lock().unwrap_or_else(|p| p.into_inner());
        if exclusive && !*ex {
            flock(path, &held.file, key, true, wait)?;
            *ex = true;
        }
        drop(ex);
        return Ok(held);
    }
    let dup = file
        .try_clone()
        .map_err(|e| open_err(path, os_message(&e), e.raw_os_error().unwrap_or(libc::EIO)))?;
    flock(path, &dup, key, exclusive, wait)?;
    let lock = Arc::new(ImageLock {
        file: dup,
        exclusive: Mutex::new(exclusive),
    });
    reg.insert(key, Arc::downgrade(&lock));
    Ok(lock)
}

fn flock(path: &Path, file: &File, key: Key, exclusive: bool, wait: bool) -> Result<()> {
    use rustix::fs::FlockOperation as F;
    let op = match (exclusive, wait) {
        (true, true) => F::LockExclusive,
        (true, false) => F::NonBlockingLockExclusive,
        (false, true) => F::LockShared,
        (false, false) => F::NonBlockingLockShared,
    };
    loop {
        let e = match rustix::fs::flock(file, op) {
            Ok(()) => return Ok(()),
            Err(e) => io::Error::from(e),
        };
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        match errno {
            libc::EINTR => continue,
            libc::EWOULDBLOCK => {
                let holders = lock_holders(key);
                let who = if holders.is_empty() {
                    "another process".to_string()
                } else {
                    let pids: Vec<String> = holders.iter().map(u32::to_string).collect();
                    format!("process {}", pids.join(", "))
                };
                let what = if exclusive { "writing" } else { "reading" };
                return Err(open_err(
                    path,
                    format!(
                        "locked by {who} (another command is using the image); not {what} \
                         it at the same time (--wait waits for the lock)"
                    ),
                    errno,
                ));
            }
            // Filesystems without flock support: no lock to take, as if alone.
            libc::ENOLCK | libc::EOPNOTSUPP => return Ok(()),
            _ => {
                return Err(open_err(
                    path,
                    format!("taking its lock: {}", os_message(&e)),
                    errno,
                ));
            }
        }
    }
}

/// Pids holding a flock/POSIX/OFD lock on the file `key` (from `/proc/locks`; ours excluded).
pub fn lock_holders(key: Key) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    let (maj, min) = (libc::major(key.0), libc::minor(key.0));
    let want = format!("{maj:02x}:{min:02x}:{}", key.1);
    let me = std::process::id();
    let mut out = Vec::new();
    for line in text.lines() {
        // "1: FLOCK  ADVISORY  WRITE 1234 08:02:5678 0 EOF"; waiters are "1: -> FLOCK ...".
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) == Some(&"->") || f.len() < 6 {
            continue;
        }
        if f[5] == want {
            if let Ok(pid) = f[4].parse::<u32>() {
                if pid != me && !out.contains(&pid) {
                    out.push(pid);
                }
            }
        }
    }
    out
}

/// Refuses `path` if a kernel uses it: a loop device backed by this file (however it is
/// reached: hard link, symlink, other spelling), or a mounted block device. A path that does
/// not exist is not in use.
pub fn check_not_in_use(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) => check_not_in_use_meta(path, &meta),
        Err(_) => Ok(()),
    }
}

fn check_not_in_use_meta(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    if meta.file_type().is_block_device() {
        let rdev = meta.rdev();
        let want = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
        if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
            // "36 35 98:0 / /mnt rw ... - ext4 /dev/loop0 rw"
            if let Some(l) = info
                .lines()
                .find(|l| l.split_whitespace().nth(2) == Some(&want))
            {
                let at = l.split_whitespace().nth(4).unwrap_or("?");
                return Err(open_err(
                    path,
                    format!("the device is mounted on {at}; unmount it before writing"),
                    libc::EBUSY,
                ));
            }
        }
        return Ok(());
    }
    let key = (meta.dev(), meta.ino());
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("loop") {
            continue;
        }
        if loop_backing(&name).is_some_and(|k| k == key) {
            return Err(open_err(
                path,
                format!(
                    "the image is attached to /dev/{name} (mounted?); unmount it and detach the \
                     loop device before writing"
                ),
                libc::EBUSY,
            ));
        }
    }
    Ok(())
}

/// (st_dev, st_ino) of the file behind `/dev/NAME`, a loop device; `None` if unattached.
fn loop_backing(name: &str) -> Option<Key> {
    let sys = Path::new("/sys/block").join(name).join("loop/backing_file");
    let backing = std::fs::read_to_string(&sys).ok()?;
    #[cfg(target_os = "linux")]
    if let Ok(k) = File::open(Path::new("/dev").join(name))
        .and_then(|dev| ext4kit_blockdev::loop_backing_file(&dev))
    {
        return Some(k);
    }
    let m = std::fs::metadata(backing.trim_end_matches('\n')).ok()?;
    Some((m.dev(), m.ino()))
}
