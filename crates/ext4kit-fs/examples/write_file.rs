//! Writing with the library: make an image, create a directory and a file in it, write,
//! sync, and read it back.
//!
//! ```sh
//! cargo run -p ext4kit-fs --example write_file            # a temporary image
//! cargo run -p ext4kit-fs --example write_file -- my.img  # keeps my.img (made if missing)
//! ```
//!
//! `cargo test -p ext4kit-fs --examples` runs it on a temporary image.

use std::error::Error;
use std::path::{Path, PathBuf};

use ext4kit_fs::{Fs, MkfsOptions, NewInode, OpenOptions, Timestamp, mkfs_path};

/// Writes `/greetings/hello.txt` into the image at `img` (formatted first if it does not
/// exist) and returns what reading it back gives.
pub fn run(img: &Path) -> Result<Vec<u8>, Box<dyn Error>> {
    if !img.exists() {
        let made = mkfs_path(
            img,
            &MkfsOptions {
                size_bytes: 32 << 20,
                label: Some("example".into()),
                ..MkfsOptions::default()
            },
        )?;
        println!(
            "{}: made an ext4 image, {}-byte blocks",
            img.display(),
            made.block_size
        );
    }

    let fs = Fs::open_path(
        img,
        &OpenOptions {
            writable: true,
            ..OpenOptions::default()
        },
    )?;
    let now = Timestamp {
        seconds: 1_700_000_000,
        nanoseconds: 0,
    };
    // Owner root, mode 0755 / 0644, every time `now`.
    let dir = fs.mkdir_all(b"/greetings", &NewInode::with_time(0o755, now))?;
    let first: &[u8] = b"Hello from ext4kit!\n";
    let ino = fs.write_path(
        b"/greetings/hello.txt",
        first,
        &NewInode::with_time(0o644, now),
    )?;
    // Appending through the inode-level call: write at the end of the file. (The file's size
    // as it is being written is its page cache's, `fs.data_mapping(ino)?.size()`; `stat`
    // reports the inode, which catches up at writeback.)
    fs.write_at(ino, first.len() as u64, b"Written without the kernel.\n")?;
    println!("created directory inode {dir} and file inode {ino}");
    // Nothing is on the image before a sync; close syncs and returns its error.
    fs.close()?;

    // Read back through a fresh, read-only open.
    let fs = Fs::open_path(img, &OpenOptions::default())?;
    let data = fs.read_path(b"/greetings/hello.txt", 1 << 20)?;
    print!("{}", String::from_utf8_lossy(&data));
    Ok(data)
}

fn main() -> Result<(), Box<dyn Error>> {
    match std::env::args_os().nth(1) {
        Some(img) => {
            run(Path::new(&img))?;
        }
        None => {
            let img = temp_image("write_file");
            let r = run(&img);
            let _ = std::fs::remove_file(&img);
            r?;
        }
    }
    Ok(())
}

/// A path for a temporary image (removed by the caller).
fn temp_image(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ext4kit-example-{name}-{}.img", std::process::id()))
}

#[test]
fn writes_and_reads_back() {
    let img = temp_image("write_file-test");
    let _ = std::fs::remove_file(&img);
    let r = run(&img);
    let _ = std::fs::remove_file(&img);
    assert_eq!(
        r.expect("the example runs"),
        b"Hello from ext4kit!\nWritten without the kernel.\n"
    );
}
