//! The commands that change what an image already holds: `rm [-r] [-f]`, `mv`, `ln [-s]`.
//!
//! They share the rules of the other writing commands ([`crate::write_cmds`]): every image
//! named by the arguments is opened for writing once (however its name is spelled), a mounted
//! image is refused, and everything is synced at the end. Paths are resolved inside the image;
//! the last component of a path to remove, move or link is never followed when it is a
//! symlink (as rm(1), mv(1) and ln(1) do).

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use ext4kit_fs::NewInode;
use ext4kit_fs::{FileType, Fs, ROOT_INO};

use crate::spec::Spec;
use crate::write_cmds::{WritableImages, euid_egid, now, parent_and_name};

fn image_path(s: &Spec) -> Result<&[u8]> {
    match &s.path {
        Some(p) if !p.is_empty() => Ok(p),
        _ => bail!(
            "{}: expected IMG:PATH (a path inside the image)",
            s.image.display()
        ),
    }
}

/// Whether `path` names the root directory (`/`, `//`, `/.`, ...).
fn is_root(path: &[u8]) -> bool {
    path.split(|b| *b == b'/')
        .all(|c| c.is_empty() || c == b".")
}

/// `ext4kit rm [-r] [-f] IMG:PATH...`; `force`: a path that does not exist (it or a directory
/// on the way) is skipped, as `rm -f` does. As rm(1), an operand that fails is reported on its
/// own line and the others are still removed; returns the number of errors.
pub fn cmd_rm(
    images: &mut WritableImages,
    specs: &[Spec],
    recursive: bool,
    force: bool,
) -> Result<usize> {
    let mut errors = 0;
    for s in specs {
        if let Err(e) = rm_one(images, s, recursive, force) {
            errors += 1;
            eprintln!("ext4kit: {}", crate::one_line(&e));
        }
    }
    images.finish(errors < specs.len())?;
    Ok(errors)
}

fn rm_one(images: &mut WritableImages, s: &Spec, recursive: bool, force: bool) -> Result<()> {
    let path = image_path(s)?;
    if is_root(path) {
        bail!("{}: refusing to remove the root directory", s.display());
    }
    let fs = images.get(&s.image)?;
    // `name/` names a directory (a symlink to one is followed), as lstat("name/") does.
    let through = if ext4kit_fs::names_dir(path) {
        match fs.resolve_inode(path, true) {
            Err(ext4kit_fs::Error::NotFound { .. } | ext4kit_fs::Error::NotDir { .. }) if force => {
                return Ok(());
            }
            Err(e) => return Err(anyhow::Error::from(e).context(s.display())),
            Ok((ino, _)) => {
                if !recursive {
                    bail!(
                        "{}: is a directory (use -r to remove it and its contents)",
                        s.display()
                    );
                }
                Some(ino)
            }
        }
    } else {
        None
    };
    let (dir, name) = match parent_and_name(&fs, path) {
        Err(e) if force && is_not_found(&e) => return Ok(()),
        r => r.with_context(|| s.display())?,
    };
    let Some(e) = fs.lookup(dir, &name).with_context(|| s.display())? else {
        if force {
            return Ok(());
        }
        bail!("{}: no such file or directory", s.display());
    };
    if let Some(target) = through.filter(|&t| t != e.ino) {
        // `link/` of a symlink to a directory: rm -r empties the directory, then cannot
        // remove the symlink through `link/`. What it removed is committed.
        images.mark_changed();
        fs.remove_contents(target).with_context(|| s.display())?;
        bail!("{}: not a directory", s.display());
    }
    if fs.inode(e.ino).with_context(|| s.display())?.is_dir() {
        if !recursive {
            bail!(
                "{}: is a directory (use -r to remove it and its contents)",
                s.display()
            );
        }
        // A tree that fails part-way keeps what was removed (as rm -r does).
        images.mark_changed();
        fs.remove_contents(e.ino).with_context(|| s.display())?;
        fs.rmdir(dir, &name).with_context(|| s.display())?;
    } else {
        fs.unlink(dir, &name).with_context(|| s.display())?;
    }
    Ok(())
}

/// Whether `e` is an error `rm -f` ignores: "no such file or directory", or "not a directory"
/// on the way (coreutils treats ENOTDIR as a missing file too).
fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<ext4kit_fs::Error>(),
            Some(ext4kit_fs::Error::NotFound { .. } | ext4kit_fs::Error::NotDir { .. })
        )
    })
}

/// Where a name lands: into `dest` when it is an existing directory (keeping `src_name`), else
/// at `dest` itself.
fn destination(
    fs: &Fs,
    dest: &Spec,
    src_name: &[u8],
    src_is_dir: bool,
    missing: &str,
) -> Result<(u32, Vec<u8>)> {
    let path = image_path(dest)?;
    match fs.resolve_inode(path, true) {
        Ok((ino, inode)) if inode.is_dir() => return Ok((ino, src_name.to_vec())),
        // `new/` can only become a directory.
        Err(ext4kit_fs::Error::NotFound { .. }) if ext4kit_fs::names_dir(path) && !src_is_dir => {
            bail!("{}: {missing}", dest.display())
        }
        Err(e @ ext4kit_fs::Error::NotDir { .. }) if ext4kit_fs::names_dir(path) => {
            return Err(anyhow::Error::from(e).context(dest.display()));
        }
        _ => {}
    }
    parent_and_name(fs, path).with_context(|| dest.display())
}

/// Parent and name of an existing `path` to move or link; `name/` must be a directory itself
/// (not a symlink to one: rename("link/") and link("link/") are ENOTDIR).
fn source_entry(fs: &Fs, s: &Spec, path: &[u8]) -> Result<(u32, Vec<u8>, ext4kit_fs::DirEntry)> {
    if ext4kit_fs::names_dir(path) {
        fs.resolve_inode(path, true).with_context(|| s.display())?;
    }
    let (dir, name) = parent_and_name(fs, path).with_context(|| s.display())?;
    let e = fs
        .lookup(dir, &name)
        .with_context(|| s.display())?
        .ok_or_else(|| anyhow!("{}: no such file or directory", s.display()))?;
    if ext4kit_fs::names_dir(path) && !fs.inode(e.ino)?.is_dir() {
        bail!("{}: not a directory", s.display());
    }
    Ok((dir, name, e))
}

/// `ext4kit mv IMG:SRC... IMG:DST`.
pub fn cmd_mv(images: &mut WritableImages, args: &[OsString]) -> Result<usize> {
    let specs: Vec<Spec> = args.iter().map(|a| Spec::parse(a)).collect();
    let Some((dest, sources)) = specs.split_last() else {
        bail!("mv needs IMG:SRC and IMG:DST")
    };
    let dest_image =
        std::fs::canonicalize(&dest.image).with_context(|| dest.image.display().to_string())?;
    for s in sources {
        let same = std::fs::canonicalize(&s.image)
            .map(|c| c == dest_image)
            .unwrap_or(false);
        if !same {
            bail!(
                "{} -> {}: mv works inside one image (copy between images with cp)",
                s.display(),
                dest.display()
            );
        }
    }
    let fs = images.get(&dest.image)?;
    if sources.len() > 1 {
        let d = fs
            .resolve(image_path(dest)?, true)
            .with_context(|| dest.display())?;
        if !fs.inode(d)?.is_dir() {
            bail!(
                "{}: not a directory (several sources need one)",
                dest.display()
            );
        }
    }
    let mut errors = 0;
    for s in sources {
        let r = (|| -> Result<()> {
            let path = image_path(s)?;
            if is_root(path) {
                bail!("{}: the root directory cannot be moved", s.display());
            }
            let (src_dir, src_name, e) = source_entry(&fs, s, path)?;
            let is_dir = fs.inode(e.ino)?.is_dir();
            let (dst_dir, dst_name) = destination(&fs, dest, &src_name, is_dir, "not a directory")?;
            if fs
                .lookup(dst_dir, &dst_name)?
                .is_some_and(|d| d.ino == e.ino)
            {
                // As mv(1) (rename(2) would do nothing and succeed).
                bail!("{} and {} are the same file", s.display(), dest.display());
            }
            fs.rename(src_dir, &src_name, dst_dir, &dst_name)
                .with_context(|| format!("{} -> {}", s.display(), dest.display()))
        })();
        if let Err(e) = r {
            // As mv(1): reported, and the other sources are still moved.
            errors += 1;
            eprintln!("ext4kit: {}", crate::one_line(&e));
        }
    }
    images.finish(errors < sources.len())?;
    Ok(errors)
}

/// `ext4kit ln [-s] TARGET IMG:PATH`.
pub fn cmd_ln(
    images: &mut WritableImages,
    target: &OsString,
    link: &Spec,
    symbolic: bool,
) -> Result<()> {
    let fs = images.get(&link.image)?;
    let (uid, gid) = euid_egid();
    if symbolic {
        use std::os::unix::ffi::OsStrExt;
        let t = target.as_bytes();
        let last = t.rsplit(|b| *b == b'/').next().unwrap_or(t).to_vec();
        let (dir, name) = destination(&fs, link, &last, false, "no such file or directory")?;
        let attrs = NewInode {
            uid,
            gid,
            ..NewInode::with_time(0o777, now())
        };
        fs.symlink(dir, &name, t, &attrs)
            .with_context(|| link.display())?;
        return images.sync_all();
    }
    let tspec = Spec::parse(target);
    let Some(tpath) = tspec.path.clone().filter(|p| !p.is_empty()) else {
        bail!(
            "{}: a hard link target must be IMG:PATH in the same image (use -s for a symbolic link)",
            Path::new(target).display()
        );
    };
    let same = match (
        std::fs::canonicalize(&tspec.image),
        std::fs::canonicalize(&link.image),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same {
        bail!(
            "{} -> {}: hard links stay inside one image",
            tspec.display(),
            link.display()
        );
    }
    let (_, tname, e) = source_entry(&fs, &tspec, &tpath)?;
    if e.file_type == Some(FileType::Directory) || fs.inode(e.ino)?.is_dir() {
        bail!(
            "{}: hard links to directories are not allowed",
            tspec.display()
        );
    }
    let (dir, name) = destination(&fs, link, &tname, false, "no such file or directory")?;
    if dir == ROOT_INO && name.is_empty() {
        bail!("{}: not a name that can be created", link.display());
    }
    fs.link(e.ino, dir, &name).with_context(|| link.display())?;
    images.sync_all()
}
