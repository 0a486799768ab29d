//! Reading with the library: open an image read-only, print a file, list its directory and
//! `stat` it.
//!
//! ```sh
//! cargo run -p ext4kit-fs --example read_file -- disk.img /etc/hostname
//! cargo run -p ext4kit-fs --example read_file   # on a temporary image it makes first
//! ```
//!
//! `cargo test -p ext4kit-fs --examples` runs it on a temporary image.

use std::error::Error;
use std::path::{Path, PathBuf};

use ext4kit_fs::{Fs, MkfsOptions, NewInode, OpenOptions, Timestamp, mkfs_path};

/// Prints the file at `path` in the image at `img`, the directory holding it and its `stat`;
/// returns the file's contents.
pub fn run(img: &Path, path: &[u8]) -> Result<Vec<u8>, Box<dyn Error>> {
    // Read-only: the image is never written (a journal that needs recovery is replayed in
    // memory), and it is shared-locked against writers while `fs` lives.
    let fs = Fs::open_path(img, &OpenOptions::default())?;
    for n in fs.notices() {
        eprintln!("{}: {n}", img.display());
    }
    let ino = fs.resolve(path, true)?;
    let data = fs.open_file(ino)?.read_to_end(16 << 20)?;
    print!("{}", String::from_utf8_lossy(&data));

    let (dir, _) = ext4kit_fs::split_parent(path);
    println!("{}:", String::from_utf8_lossy(dir));
    for e in fs.read_dir(fs.resolve(dir, true)?)? {
        println!("  {:>8} {}", e.ino, String::from_utf8_lossy(&e.name));
    }
    let st = fs.stat(ino)?;
    println!(
        "{}: {:?}, mode {:o}, {} bytes, uid {}, mtime {}",
        String::from_utf8_lossy(path),
        st.file_type,
        st.mode & 0o7777,
        st.size,
        st.uid,
        st.mtime.seconds
    );
    Ok(data)
}

/// Makes a small image holding `/etc/hostname` (for running without an image of your own).
pub fn make_image(img: &Path) -> Result<(), Box<dyn Error>> {
    mkfs_path(
        img,
        &MkfsOptions {
            size_bytes: 16 << 20,
            ..MkfsOptions::default()
        },
    )?;
    let fs = Fs::open_path(
        img,
        &OpenOptions {
            writable: true,
            ..OpenOptions::default()
        },
    )?;
    let t = Timestamp {
        seconds: 1_700_000_000,
        nanoseconds: 0,
    };
    fs.mkdir_all(b"/etc", &NewInode::with_time(0o755, t))?;
    fs.write_path(
        b"/etc/hostname",
        b"example\n",
        &NewInode::with_time(0o644, t),
    )?;
    fs.close()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args_os().skip(1);
    match (args.next(), args.next()) {
        (Some(img), path) => {
            let path = path.map_or_else(|| b"/etc/hostname".to_vec(), |p| p.into_encoded_bytes());
            run(Path::new(&img), &path)?;
        }
        (None, _) => {
            let img = temp_image("read_file");
            let r = make_image(&img).and_then(|()| run(&img, b"/etc/hostname"));
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
fn reads_a_file_of_an_image() {
    let img = temp_image("read_file-test");
    let _ = std::fs::remove_file(&img);
    let r = make_image(&img).and_then(|()| run(&img, b"/etc/hostname"));
    let _ = std::fs::remove_file(&img);
    assert_eq!(r.expect("the example runs"), b"example\n");
}
