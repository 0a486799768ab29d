//! Opens an image from the fuzz input and walks everything: `ls -R`, `stat`, every file's data
//! and runs, `readlink`, xattrs, path lookups (through the htree index), with and without
//! journal replay. Any panic, hang or unbounded allocation is a bug.
#![no_main]

use std::sync::Arc;

use ext4kit_blockdev::MemDevice;
use ext4kit_fs::{FileType, Fs, JournalMode, OpenOptions, ROOT_INO};
use libfuzzer_sys::fuzz_target;

/// Most entries visited per image.
const MAX_ENTRIES: usize = 2000;
/// Most bytes read per file.
const MAX_READ: u64 = 1 << 20;

fn walk(fs: &Fs) {
    let mut queue = vec![(ROOT_INO, b"/".to_vec(), 0usize)];
    let mut seen = std::collections::HashSet::new();
    let mut visited = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while let Some((ino, path, depth)) = queue.pop() {
        visited += 1;
        if visited > MAX_ENTRIES || !seen.insert(ino) {
            continue;
        }
        let Ok(st) = fs.stat(ino) else { continue };
        let _ = fs.list_xattrs(ino);
        let _ = fs.file_runs(ino);
        let _ = fs.resolve(&path, false);
        match st.file_type {
            FileType::Directory => {
                let Ok(entries) = fs.read_dir(ino) else { continue };
                for e in entries {
                    if e.is_dot_or_dotdot() {
                        let _ = fs.lookup(ino, &e.name);
                        continue;
                    }
                    let _ = fs.lookup(ino, &e.name);
                    let _ = fs.dx_hash(ino, &e.name);
                    if depth < 64 {
                        let mut p = path.clone();
                        if !p.ends_with(b"/") {
                            p.push(b'/');
                        }
                        p.extend_from_slice(&e.name);
                        queue.push((e.ino, p, depth + 1));
                    }
                }
                let _ = fs.lookup(ino, b"no-such-name");
            }
            FileType::Regular => {
                let Ok(r) = fs.open_file(ino) else { continue };
                let mut pos = 0u64;
                while pos < r.size().min(MAX_READ) {
                    match r.read_at(pos, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => pos += n as u64,
                    }
                }
                // A read far into the file (sparse tails, huge sizes).
                let _ = r.read_at(r.size().saturating_sub(4096), &mut buf[..4096]);
            }
            FileType::Symlink => {
                let _ = fs.read_link(ino);
                let _ = fs.resolve(&path, true);
            }
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2048 || data.len() > 4 << 20 {
        return;
    }
    let mut image = data.to_vec();
    image.resize(data.len().div_ceil(1024) * 1024, 0);
    for journal in [JournalMode::Replay, JournalMode::Ignore] {
        let dev = Arc::new(MemDevice::from_image(1024, image.clone()));
        let opts = OpenOptions {
            journal,
            metadata_cache_blocks: 256,
            ..OpenOptions::default()
        };
        if let Ok(fs) = Fs::open(dev, &opts) {
            walk(&fs);
            if journal == JournalMode::Replay && fs.journal_replay().is_none() {
                break;
            }
        }
    }
});
