//! Names: resolving paths, and the operations on names — create (files, directories, symlinks,
//! device nodes, FIFOs, sockets), hard links, unlink, rmdir, rename — following
//! fs/ext4/namei.c.
//!
//! | file | owns |
//! |---|---|
//! | `path.rs` | path resolution (symlinks, `..`), the public directory API (`Fs::read_dir`, `Fs::lookup`, `Fs::resolve`) |
//! | `create.rs` | `Fs::create`, `Fs::symlink`, `Fs::link`; the builder's bulk calls (`Fs::create_detached`, `Fs::create_dir_with`, `Fs::fill_root`, `Fs::fill_dir`) |
//! | `by_path.rs` | operations on byte paths: `parent_and_name`, `create_path`, `mkdir_all`, `remove`, `remove_all`, `rename_path`, `read_path`, `write_path` |
//! | `remove.rs` | `Fs::unlink`, `Fs::rmdir`, `Fs::rename` |

pub mod by_path;
pub mod create;
pub mod path;
pub mod remove;

use crate::error::{Error, PathBytes, Result};

pub use by_path::{names_dir, split_parent};
pub use path::MAX_SYMLINKS;

pub(crate) fn name_check(name: &[u8]) -> Result<()> {
    if name.is_empty()
        || name.len() > 255
        || name.contains(&b'/')
        || name.contains(&0)
        || name == b"."
        || name == b".."
    {
        if name.len() > 255 {
            return Err(Error::NameTooLong {
                path: PathBytes(name.to_vec()),
            });
        }
        return Err(Error::InvalidArgument(format!(
            "invalid file name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

/// A name that can be removed or be the target of a rename (one component, not `.`/`..`).
pub(crate) fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > 255 {
        return Err(Error::NameTooLong {
            path: PathBytes(name.to_vec()),
        });
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".."
    {
        return Err(Error::InvalidArgument(format!(
            "{:?} is not a name that can be removed or renamed",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}
