//! POSIX ACLs, which ext4 keeps as extended attributes (`system.posix_acl_access`,
//! `system.posix_acl_default`) in its own disk form (version 1, `ext4_acl_to_disk`): the
//! conversion of the getxattr(2) form into it (reading converts back: `acl_from_disk`), the
//! inheritance a new inode gets from its
//! directory's default ACL (`posix_acl_create`), and the access ACL following chmod
//! (`posix_acl_chmod`). The forms themselves are [`ext4kit_format::acl`]'s.

use ext4kit_format::Structure;
use ext4kit_format::acl;
use ext4kit_format::xattr::has_ibody_magic;

use crate::alloc::MetaState;
use crate::error::{Corruption, Error, Result};
use crate::fs::Core;
use crate::xattr::write::{XattrPair, read_all, write_all};

/// POSIX ACLs in ext4's disk form: values in the getxattr(2) form are converted (and checked as
/// the kernel checks them), values read back from the image kept; an ACL without entries is
/// dropped (the kernel removes it); a default ACL is refused on a non-directory, as the kernel
/// does. Other attributes pass unchanged.
pub(crate) fn acls_to_disk(attrs: &[XattrPair], is_dir: bool) -> Result<Vec<XattrPair>> {
    let mut out = Vec::with_capacity(attrs.len());
    for (name, value) in attrs {
        if !acl::is_acl_name(name) {
            out.push((name.clone(), value.clone()));
            continue;
        }
        let shown = String::from_utf8_lossy(name);
        if name == acl::DEFAULT_NAME && !is_dir && !value.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{shown}: a default ACL is only for directories"
            )));
        }
        match acl::to_stored(value) {
            Ok(Some(v)) => out.push((name.clone(), v)),
            Ok(None) => {}
            Err(e) => return Err(Error::InvalidArgument(format!("{shown}: {e}"))),
        }
    }
    Ok(out)
}

/// Gives `ino`, just created in directory `dir`, the ACLs the kernel gives a new inode
/// (`ext4_init_acl` / `posix_acl_create`): nothing unless `dir` has a default ACL; else an
/// access ACL made from the default one masked by the new mode, and the mode masked by it
/// (stored only when it says more than the mode); a directory inherits the default ACL as
/// well. Symlinks inherit nothing.
pub(crate) fn inherit_acls(core: &Core, meta: &mut MetaState, dir: u32, ino: u32) -> Result<()> {
    let parent = meta.inode(core, dir)?.clone();
    if parent.file_acl() == 0 && !has_ibody_magic(parent.xattr_area()) {
        return Ok(());
    }
    let Some(default) = core
        .xattrs_of(dir, &parent)?
        .into_iter()
        .find(|x| x.name == acl::DEFAULT_NAME)
    else {
        return Ok(());
    };
    let bad = |e: acl::AclError| {
        Error::corrupt(Structure::XattrInode, Corruption::Acl { offset: e.offset }).with_inode(dir)
    };
    let entries = acl::parse_xattr(&default.value).map_err(bad)?;
    let inode = meta.inode(core, ino)?;
    if inode.is_symlink() {
        return Ok(());
    }
    let is_dir = inode.is_dir();
    let mut access = entries.clone();
    let (perm, store_access) = acl::create_masq(&mut access, inode.mode() & 0o7777).map_err(bad)?;
    let mode = (inode.mode() & !0o7777) | perm;
    inode.set_mode(mode);
    meta.dirty_inode(ino);
    let mut attrs: Vec<XattrPair> = Vec::new();
    if store_access {
        attrs.push((acl::ACCESS_NAME.to_vec(), acl::encode_disk(&access)));
    }
    if is_dir {
        attrs.push((acl::DEFAULT_NAME.to_vec(), acl::encode_disk(&entries)));
    }
    if attrs.is_empty() {
        return Ok(());
    }
    write_all(core, meta, ino, &attrs)
}

/// Keeps the access ACL of `ino` in step with its new permission bits `perm`, as the kernel's
/// chmod does (`posix_acl_chmod`): owner, mask (or owning group) and other take the new bits.
pub(crate) fn chmod_acl(core: &Core, meta: &mut MetaState, ino: u32, perm: u16) -> Result<()> {
    let inode = meta.inode(core, ino)?.clone();
    if inode.file_acl() == 0 && !has_ibody_magic(inode.xattr_area()) {
        return Ok(());
    }
    let Some(access) = core
        .xattrs_of(ino, &inode)?
        .into_iter()
        .find(|x| x.name == acl::ACCESS_NAME)
    else {
        return Ok(());
    };
    let bad = |e: acl::AclError| {
        Error::corrupt(Structure::XattrInode, Corruption::Acl { offset: e.offset }).with_inode(ino)
    };
    let mut entries = acl::parse_xattr(&access.value).map_err(bad)?;
    let before = entries.clone();
    acl::chmod(&mut entries, perm).map_err(bad)?;
    if entries == before {
        return Ok(());
    }
    let mut all = read_all(core, meta, ino)?;
    for (name, value) in &mut all {
        if name == acl::ACCESS_NAME {
            *value = acl::encode_disk(&entries);
        }
    }
    write_all(core, meta, ino, &all)
}
