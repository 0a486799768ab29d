//! POSIX ACLs (`system.posix_acl_access`, name index 2, and `system.posix_acl_default`,
//! name index 3, both with an empty suffix) in their two byte forms:
//!
//! - the **xattr form** that getxattr(2) returns and setxattr(2) takes (`posix_acl_xattr`):
//!   a 4-byte header with version 2, then 8-byte entries `(le16 tag, le16 perm, le32 id)`,
//!   id `0xFFFF_FFFF` for entries without one;
//! - ext4's **disk form** (`ext4_acl_header`, version 1): the same header, then entries in the
//!   same order, 4 bytes `(tag, perm)` for USER_OBJ / GROUP_OBJ / MASK / OTHER and 8 bytes
//!   `(tag, perm, id)` for USER / GROUP (the kernel's `ext4_acl_to_disk` /
//!   `ext4_acl_from_disk`).
//!
//! [`xattr_to_disk`] validates like the kernel's `posix_acl_from_xattr` + `posix_acl_valid`
//! (the kernel refuses anything else with EINVAL), [`disk_to_xattr`] parses like
//! `ext4_acl_from_disk` (including its entry-count rule) and also reads values that older
//! ext4kit wrote in the xattr form by mistake. An ACL without entries means "no ACL": both
//! directions give `None` for it. No IO, no panics on any input.

use alloc::{string::String, string::ToString, vec::Vec};

use core::fmt;

/// Version of the xattr form (`POSIX_ACL_XATTR_VERSION`).
pub const XATTR_VERSION: u32 = 2;
/// Version of ext4's disk form (`EXT4_ACL_VERSION`).
pub const DISK_VERSION: u32 = 1;
/// The id of entries that have none (`ACL_UNDEFINED_ID`).
pub const UNDEFINED_ID: u32 = u32::MAX;
/// Name index of `system.posix_acl_access`.
pub const INDEX_ACCESS: u8 = 2;
/// Name index of `system.posix_acl_default`.
pub const INDEX_DEFAULT: u8 = 3;
/// Full name of the access ACL.
pub const ACCESS_NAME: &[u8] = b"system.posix_acl_access";
/// Full name of the default ACL.
pub const DEFAULT_NAME: &[u8] = b"system.posix_acl_default";

/// `ACL_USER_OBJ`.
pub const TAG_USER_OBJ: u16 = 0x01;
/// `ACL_USER`.
pub const TAG_USER: u16 = 0x02;
/// `ACL_GROUP_OBJ`.
pub const TAG_GROUP_OBJ: u16 = 0x04;
/// `ACL_GROUP`.
pub const TAG_GROUP: u16 = 0x08;
/// `ACL_MASK`.
pub const TAG_MASK: u16 = 0x10;
/// `ACL_OTHER`.
pub const TAG_OTHER: u16 = 0x20;
/// `ACL_READ | ACL_WRITE | ACL_EXECUTE`.
pub const PERM_ALL: u16 = 7;

const HEADER: usize = 4;
const XATTR_ENTRY: usize = 8;
const SHORT_ENTRY: usize = 4;
const LONG_ENTRY: usize = 8;

/// `true` for the two POSIX ACL names.
pub fn is_acl_name(full_name: &[u8]) -> bool {
    full_name == ACCESS_NAME || full_name == DEFAULT_NAME
}

/// `true` for the name indexes of the two POSIX ACLs.
pub fn is_acl_index(index: u8) -> bool {
    index == INDEX_ACCESS || index == INDEX_DEFAULT
}

/// One ACL entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclEntry {
    /// `e_tag` (`TAG_*`).
    pub tag: u16,
    /// `e_perm` (read 4, write 2, execute 1).
    pub perm: u16,
    /// `e_id`: the uid or gid for USER / GROUP, [`UNDEFINED_ID`] otherwise.
    pub id: u32,
}

fn has_id(tag: u16) -> bool {
    tag == TAG_USER || tag == TAG_GROUP
}

fn known_tag(tag: u16) -> bool {
    matches!(
        tag,
        TAG_USER_OBJ | TAG_USER | TAG_GROUP_OBJ | TAG_GROUP | TAG_MASK | TAG_OTHER
    )
}

/// Why an ACL value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclProblem {
    /// Shorter than the 4-byte header.
    NoHeader,
    /// A version other than the form's.
    Version(u32),
    /// The entries do not fill the value exactly.
    Length,
    /// An entry tag that no ACL has.
    Tag(u16),
    /// Permission bits beyond rwx.
    Perm(u16),
    /// A named user or group with the id -1.
    Id,
    /// Entries out of the order (USER_OBJ, USER..., GROUP_OBJ, GROUP..., MASK, OTHER), a
    /// missing required entry, or named entries without a MASK.
    Order,
}

/// A refused ACL value: what, and at which byte of the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclError {
    /// Byte offset in the value.
    pub offset: usize,
    /// What is wrong there.
    pub problem: AclProblem,
}

impl fmt::Display for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.offset;
        match self.problem {
            AclProblem::NoHeader => write!(f, "POSIX ACL shorter than its 4-byte header"),
            AclProblem::Version(v) => write!(f, "POSIX ACL version {v} at byte {o}"),
            AclProblem::Length => write!(f, "POSIX ACL entries do not fill the value (byte {o})"),
            AclProblem::Tag(t) => write!(f, "POSIX ACL entry tag {t:#x} at byte {o}"),
            AclProblem::Perm(p) => write!(f, "POSIX ACL permissions {p:#o} at byte {o}"),
            AclProblem::Id => write!(f, "POSIX ACL named entry with id -1 at byte {o}"),
            AclProblem::Order => {
                write!(
                    f,
                    "POSIX ACL entries out of order or incomplete at byte {o}"
                )
            }
        }
    }
}

impl core::error::Error for AclError {}

fn err<T>(offset: usize, problem: AclProblem) -> Result<T, AclError> {
    Err(AclError { offset, problem })
}

fn le16(v: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(v.get(o..o + 2)?.try_into().ok()?))
}

fn le32(v: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(v.get(o..o + 4)?.try_into().ok()?))
}

fn version(v: &[u8]) -> Result<u32, AclError> {
    match le32(v, 0) {
        Some(ver) => Ok(ver),
        None => err(0, AclProblem::NoHeader),
    }
}

/// Parses the xattr form (version 2) structurally: header, whole 8-byte entries, known tags.
/// The ids of entries without one are normalised to [`UNDEFINED_ID`].
pub fn parse_xattr(v: &[u8]) -> Result<Vec<AclEntry>, AclError> {
    let ver = version(v)?;
    if ver != XATTR_VERSION {
        return err(0, AclProblem::Version(ver));
    }
    if (v.len() - HEADER) % XATTR_ENTRY != 0 {
        return err(v.len(), AclProblem::Length);
    }
    let mut out = Vec::with_capacity((v.len() - HEADER) / XATTR_ENTRY);
    let mut o = HEADER;
    while o < v.len() {
        let (Some(tag), Some(perm), Some(id)) = (le16(v, o), le16(v, o + 2), le32(v, o + 4)) else {
            return err(o, AclProblem::Length);
        };
        if !known_tag(tag) {
            return err(o, AclProblem::Tag(tag));
        }
        let id = if has_id(tag) { id } else { UNDEFINED_ID };
        out.push(AclEntry { tag, perm, id });
        o += XATTR_ENTRY;
    }
    Ok(out)
}

/// Checks entries like the kernel's `posix_acl_valid`: rwx permissions only, USER_OBJ,
/// named users, GROUP_OBJ, named groups, MASK (required when there are named entries),
/// OTHER, in this order; named entries with a real id. Returns the index of the first bad
/// entry (the entry count if one is missing at the end) and why.
pub fn validate(entries: &[AclEntry]) -> Result<(), (usize, AclProblem)> {
    #[derive(PartialEq)]
    enum S {
        UserObj,
        User,
        Group,
        Other,
        Done,
    }
    let mut state = S::UserObj;
    let mut needs_mask = false;
    for (i, e) in entries.iter().enumerate() {
        if e.perm & !PERM_ALL != 0 {
            return Err((i, AclProblem::Perm(e.perm)));
        }
        let order = Err((i, AclProblem::Order));
        match e.tag {
            TAG_USER_OBJ if state == S::UserObj => state = S::User,
            TAG_USER if state == S::User => {
                if e.id == UNDEFINED_ID {
                    return Err((i, AclProblem::Id));
                }
                needs_mask = true;
            }
            TAG_GROUP_OBJ if state == S::User => state = S::Group,
            TAG_GROUP if state == S::Group => {
                if e.id == UNDEFINED_ID {
                    return Err((i, AclProblem::Id));
                }
                needs_mask = true;
            }
            TAG_MASK if state == S::Group => state = S::Other,
            TAG_OTHER if state == S::Other || (state == S::Group && !needs_mask) => {
                state = S::Done;
            }
            t if !known_tag(t) => return Err((i, AclProblem::Tag(t))),
            _ => return order,
        }
    }
    if state == S::Done {
        Ok(())
    } else {
        Err((entries.len(), AclProblem::Order))
    }
}

/// Lays entries out in ext4's disk form (version 1).
pub fn encode_disk(entries: &[AclEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + entries.len() * LONG_ENTRY);
    out.extend_from_slice(&DISK_VERSION.to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.perm.to_le_bytes());
        if has_id(e.tag) {
            out.extend_from_slice(&e.id.to_le_bytes());
        }
    }
    out
}

/// Lays entries out in the xattr form (version 2).
pub fn encode_xattr(entries: &[AclEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + entries.len() * XATTR_ENTRY);
    out.extend_from_slice(&XATTR_VERSION.to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.perm.to_le_bytes());
        out.extend_from_slice(&(if has_id(e.tag) { e.id } else { UNDEFINED_ID }).to_le_bytes());
    }
    out
}

/// Converts a value in the xattr form (as setxattr(2) takes it) to ext4's disk form, after
/// the checks the kernel makes (EINVAL there). `Ok(None)` for an empty value or one without
/// entries: the kernel removes the ACL then.
pub fn xattr_to_disk(v: &[u8]) -> Result<Option<Vec<u8>>, AclError> {
    if v.is_empty() {
        return Ok(None);
    }
    let entries = parse_xattr(v)?;
    if entries.is_empty() {
        return Ok(None);
    }
    validate(&entries).or_else(|(i, p)| err(HEADER + i * XATTR_ENTRY, p))?;
    Ok(Some(encode_disk(&entries)))
}

/// Number of entries a disk-form value of `len` bytes holds (`ext4_acl_count`): up to four
/// short entries, or exactly four short entries and any number of long ones.
fn disk_count(len: usize) -> Option<usize> {
    let size = len - HEADER;
    if size < 4 * SHORT_ENTRY {
        (size % SHORT_ENTRY == 0).then_some(size / SHORT_ENTRY)
    } else {
        let s = size - 4 * SHORT_ENTRY;
        (s % LONG_ENTRY == 0).then_some(s / LONG_ENTRY + 4)
    }
}

/// Parses ext4's disk form (version 1) like `ext4_acl_from_disk`: the entry count the size
/// implies, entries of the size their tag has, known tags, nothing left over.
pub fn parse_disk(v: &[u8]) -> Result<Vec<AclEntry>, AclError> {
    let ver = version(v)?;
    if ver != DISK_VERSION {
        return err(0, AclProblem::Version(ver));
    }
    let Some(count) = disk_count(v.len()) else {
        return err(v.len(), AclProblem::Length);
    };
    let mut out = Vec::with_capacity(count);
    let mut o = HEADER;
    for _ in 0..count {
        let (Some(tag), Some(perm)) = (le16(v, o), le16(v, o + 2)) else {
            return err(o, AclProblem::Length);
        };
        if !known_tag(tag) {
            return err(o, AclProblem::Tag(tag));
        }
        let id = if has_id(tag) {
            match le32(v, o + SHORT_ENTRY) {
                Some(id) => id,
                None => return err(o, AclProblem::Length),
            }
        } else {
            UNDEFINED_ID
        };
        out.push(AclEntry { tag, perm, id });
        o += if has_id(tag) { LONG_ENTRY } else { SHORT_ENTRY };
    }
    if o != v.len() {
        return err(o, AclProblem::Length);
    }
    Ok(out)
}

/// Converts a stored value to the xattr form getxattr(2) returns. Reads ext4's disk form
/// and, for images written by older ext4kit, the xattr form stored as is (version 2, at
/// least one entry). `Ok(None)` for a disk-form ACL without entries (the kernel reports no
/// ACL then).
pub fn disk_to_xattr(v: &[u8]) -> Result<Option<Vec<u8>>, AclError> {
    let ver = version(v)?;
    if ver == XATTR_VERSION {
        let entries = parse_xattr(v)?;
        if entries.is_empty() {
            return err(HEADER, AclProblem::Length);
        }
        return Ok(Some(encode_xattr(&entries)));
    }
    let entries = parse_disk(v)?;
    if entries.is_empty() {
        return Ok(None);
    }
    Ok(Some(encode_xattr(&entries)))
}

/// The value to store for an ACL given in either form: the xattr form is converted
/// ([`xattr_to_disk`]); a value already in disk form is kept if it parses (values read back
/// from an image). `Ok(None)`: store nothing (no entries).
pub fn to_stored(v: &[u8]) -> Result<Option<Vec<u8>>, AclError> {
    if v.is_empty() {
        return Ok(None);
    }
    if version(v)? == DISK_VERSION {
        return Ok((!parse_disk(v)?.is_empty()).then(|| v.to_vec()));
    }
    xattr_to_disk(v)
}

/// The access ACL after a mode change (the kernel's `posix_acl_chmod_masq`): the owner, the
/// mask (the owning group when there is no mask) and other take the new rwx bits of `mode`;
/// named entries keep theirs.
pub fn chmod(entries: &mut [AclEntry], mode: u16) -> Result<(), AclError> {
    let mut group = None;
    let mut mask = None;
    for (i, e) in entries.iter_mut().enumerate() {
        match e.tag {
            TAG_USER_OBJ => e.perm = (mode >> 6) & PERM_ALL,
            TAG_OTHER => e.perm = mode & PERM_ALL,
            TAG_GROUP_OBJ => group = Some(i),
            TAG_MASK => mask = Some(i),
            _ => {}
        }
    }
    let Some(g) = mask.or(group) else {
        return err(HEADER + entries.len() * XATTR_ENTRY, AclProblem::Order);
    };
    entries[g].perm = (mode >> 3) & PERM_ALL;
    Ok(())
}

/// The entries as text, getfacl's lines joined by commas:
/// `user::rw-,user:1234:rwx,group::r--,mask::rwx,other::r--`.
pub fn to_text(entries: &[AclEntry]) -> String {
    let mut out = String::new();
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let (kind, id) = match e.tag {
            TAG_USER_OBJ => ("user", None),
            TAG_USER => ("user", Some(e.id)),
            TAG_GROUP_OBJ => ("group", None),
            TAG_GROUP => ("group", Some(e.id)),
            TAG_MASK => ("mask", None),
            _ => ("other", None),
        };
        out.push_str(kind);
        out.push(':');
        if let Some(id) = id {
            out.push_str(&id.to_string());
        }
        out.push(':');
        for (bit, c) in [(4, 'r'), (2, 'w'), (1, 'x')] {
            out.push(if e.perm & bit != 0 { c } else { '-' });
        }
    }
    out
}

/// Parses a stored value in either form (the disk form, or the xattr form older ext4kit
/// stored).
pub fn parse_stored(v: &[u8]) -> Result<Vec<AclEntry>, AclError> {
    if version(v)? == XATTR_VERSION {
        parse_xattr(v)
    } else {
        parse_disk(v)
    }
}

/// What a new inode inherits from its directory's default ACL (the kernel's
/// `posix_acl_create_masq`): `entries` (a copy of the default ACL) are masked by the
/// requested permission bits `mode` and the mode by them. Returns the new rwx bits (the other
/// bits of `mode` are kept) and whether the ACL says more than the mode (named entries or a
/// mask: only then is it stored as the access ACL).
pub fn create_masq(entries: &mut [AclEntry], mode: u16) -> Result<(u16, bool), AclError> {
    const RWXU: u16 = 0o700;
    const RWXG: u16 = 0o070;
    const RWXO: u16 = 0o007;
    let mut m = mode & 0o777;
    let mut not_equiv = false;
    let mut group_obj = None;
    let mut mask = None;
    for (i, e) in entries.iter_mut().enumerate() {
        match e.tag {
            TAG_USER_OBJ => {
                e.perm &= (m >> 6) | !RWXO;
                m &= (e.perm << 6) | !RWXU;
            }
            TAG_USER | TAG_GROUP => not_equiv = true,
            TAG_GROUP_OBJ => group_obj = Some(i),
            TAG_OTHER => {
                e.perm &= m | !RWXO;
                m &= e.perm | !RWXO;
            }
            TAG_MASK => {
                mask = Some(i);
                not_equiv = true;
            }
            t => return err(HEADER + i * XATTR_ENTRY, AclProblem::Tag(t)),
        }
    }
    let Some(g) = mask.or(group_obj) else {
        return err(HEADER + entries.len() * XATTR_ENTRY, AclProblem::Order);
    };
    let e = &mut entries[g];
    e.perm &= (m >> 3) | !RWXO;
    m &= (e.perm << 3) | !RWXG;
    Ok(((mode & !0o777) | m, not_equiv))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xe(tag: u16, perm: u16, id: u32) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..2].copy_from_slice(&tag.to_le_bytes());
        b[2..4].copy_from_slice(&perm.to_le_bytes());
        b[4..].copy_from_slice(&id.to_le_bytes());
        b
    }

    fn xattr(entries: &[[u8; 8]]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for e in entries {
            v.extend_from_slice(e);
        }
        v
    }

    fn full() -> Vec<u8> {
        xattr(&[
            xe(TAG_USER_OBJ, 6, UNDEFINED_ID),
            xe(TAG_USER, 7, 1234),
            xe(TAG_GROUP_OBJ, 4, UNDEFINED_ID),
            xe(TAG_GROUP, 5, 4321),
            xe(TAG_MASK, 7, UNDEFINED_ID),
            xe(TAG_OTHER, 4, UNDEFINED_ID),
        ])
    }

    #[test]
    fn round_trip_and_layout() {
        let v = full();
        assert_eq!(v.len(), 52);
        let d = xattr_to_disk(&v).unwrap().unwrap();
        // header 4 + 4 short entries (16) + 2 long entries (16)
        assert_eq!(d.len(), 36);
        assert_eq!(&d[..4], &1u32.to_le_bytes());
        assert_eq!(&d[4..8], &[1, 0, 6, 0]);
        assert_eq!(&d[8..16], &[2, 0, 7, 0, 0xd2, 0x04, 0, 0]);
        assert_eq!(disk_to_xattr(&d).unwrap().unwrap(), v);
        // Old ext4kit images: the xattr form as stored.
        assert_eq!(disk_to_xattr(&v).unwrap().unwrap(), v);
        assert_eq!(to_stored(&d).unwrap().unwrap(), d);
        assert_eq!(to_stored(&v).unwrap().unwrap(), d);
        // Minimal ACL: three short entries.
        let m = xattr(&[xe(1, 7, 0), xe(4, 5, 0), xe(0x20, 0, 0)]);
        let md = xattr_to_disk(&m).unwrap().unwrap();
        assert_eq!(md.len(), 16);
        assert_eq!(parse_disk(&md).unwrap().len(), 3);
        let back = disk_to_xattr(&md).unwrap().unwrap();
        assert_eq!(parse_xattr(&back).unwrap()[0].id, UNDEFINED_ID);
    }

    #[test]
    fn inheritance_masks_both_ways() {
        // default: user::rwx user:1234:rwx group::r-x group:4321:r-x mask::rwx other::r-x
        let mut e = parse_xattr(&xattr(&[
            xe(TAG_USER_OBJ, 7, 0),
            xe(TAG_USER, 7, 1234),
            xe(TAG_GROUP_OBJ, 5, 0),
            xe(TAG_GROUP, 5, 4321),
            xe(TAG_MASK, 7, 0),
            xe(TAG_OTHER, 5, 0),
        ]))
        .unwrap();
        // A file created with 0644 (setgid kept): user rw-, mask r--, other r--.
        let (mode, not_equiv) = create_masq(&mut e, 0o2644).unwrap();
        assert_eq!((mode, not_equiv), (0o2644, true));
        let perms: Vec<u16> = e.iter().map(|x| x.perm).collect();
        assert_eq!(perms, [6, 7, 5, 5, 4, 4]);
        // Without named entries or mask the ACL is the mode: not stored.
        let mut m = parse_xattr(&xattr(&[xe(1, 7, 0), xe(4, 0, 0), xe(0x20, 5, 0)])).unwrap();
        assert_eq!(create_masq(&mut m, 0o777).unwrap(), (0o705, false));
        let mut none = parse_xattr(&xattr(&[xe(1, 7, 0), xe(0x20, 5, 0)])).unwrap();
        assert!(create_masq(&mut none, 0o777).is_err());
    }

    #[test]
    fn chmod_sets_owner_mask_and_other() {
        let mut e = parse_xattr(&full()).unwrap();
        chmod(&mut e, 0o751).unwrap();
        let perms: Vec<u16> = e.iter().map(|x| x.perm).collect();
        assert_eq!(perms, [7, 7, 4, 5, 5, 1]);
        let mut m = parse_xattr(&xattr(&[xe(1, 7, 0), xe(4, 0, 0), xe(0x20, 5, 0)])).unwrap();
        chmod(&mut m, 0o640).unwrap();
        assert_eq!(m.iter().map(|x| x.perm).collect::<Vec<_>>(), [6, 4, 0]);
    }

    #[test]
    fn text() {
        let e = parse_xattr(&full()).unwrap();
        assert_eq!(
            to_text(&e),
            "user::rw-,user:1234:rwx,group::r--,group:4321:r-x,mask::rwx,other::r--"
        );
    }

    #[test]
    fn empty_means_none() {
        assert_eq!(xattr_to_disk(&[]).unwrap(), None);
        assert_eq!(xattr_to_disk(&2u32.to_le_bytes()).unwrap(), None);
        assert_eq!(disk_to_xattr(&1u32.to_le_bytes()).unwrap(), None);
        assert!(disk_to_xattr(&2u32.to_le_bytes()).is_err());
        assert_eq!(to_stored(&1u32.to_le_bytes()).unwrap(), None);
    }

    #[test]
    fn refuses_what_the_kernel_refuses() {
        let v = full();
        assert!(xattr_to_disk(&v[..3]).is_err());
        assert!(xattr_to_disk(&v[..v.len() - 1]).is_err());
        let mut bad = v.clone();
        bad[0] = 3;
        assert_eq!(
            xattr_to_disk(&bad).unwrap_err().problem,
            AclProblem::Version(3)
        );
        // Unknown tag.
        let t = xattr(&[xe(1, 7, 0), xe(0x40, 5, 0), xe(0x20, 0, 0)]);
        assert_eq!(
            xattr_to_disk(&t).unwrap_err(),
            AclError {
                offset: 12,
                problem: AclProblem::Tag(0x40)
            }
        );
        // Permission bits beyond rwx.
        let p = xattr(&[xe(1, 8, 0), xe(4, 5, 0), xe(0x20, 0, 0)]);
        assert_eq!(xattr_to_disk(&p).unwrap_err().problem, AclProblem::Perm(8));
        // Named entries without a mask; missing OTHER; wrong order; duplicate USER_OBJ.
        for entries in [
            vec![xe(1, 7, 0), xe(2, 7, 5), xe(4, 5, 0), xe(0x20, 0, 0)],
            vec![xe(1, 7, 0), xe(4, 5, 0)],
            vec![xe(4, 5, 0), xe(1, 7, 0), xe(0x20, 0, 0)],
            vec![xe(1, 7, 0), xe(1, 7, 0), xe(4, 5, 0), xe(0x20, 0, 0)],
            vec![xe(1, 7, 0), xe(4, 5, 0), xe(0x20, 0, 0), xe(0x20, 0, 0)],
        ] {
            assert_eq!(
                xattr_to_disk(&xattr(&entries)).unwrap_err().problem,
                AclProblem::Order,
                "{entries:?}"
            );
        }
        let id = xattr(&[
            xe(1, 7, 0),
            xe(2, 7, UNDEFINED_ID),
            xe(4, 5, 0),
            xe(0x10, 7, 0),
            xe(0x20, 0, 0),
        ]);
        assert_eq!(xattr_to_disk(&id).unwrap_err().problem, AclProblem::Id);
    }

    #[test]
    fn disk_form_is_parsed_like_the_kernel() {
        let d = xattr_to_disk(&full()).unwrap().unwrap();
        let all = parse_disk(&d).unwrap();
        for n in 0..d.len() {
            // A cut value is refused, or (cut between short entries) reads as a prefix.
            if let Ok(e) = parse_disk(&d[..n]) {
                assert!(n <= 8 && all.starts_with(&e), "{n}: {e:?}");
            }
        }
        // Two long entries only: the size implies four entries, so the kernel refuses it.
        let mut two = 1u32.to_le_bytes().to_vec();
        two.extend_from_slice(&[2, 0, 7, 0, 1, 0, 0, 0, 8, 0, 7, 0, 1, 0, 0, 0]);
        assert_eq!(parse_disk(&two).unwrap_err().problem, AclProblem::Length);
        let mut tag = d.clone();
        tag[4] = 0x40;
        assert_eq!(parse_disk(&tag).unwrap_err().problem, AclProblem::Tag(0x40));
        assert!(to_stored(&tag).is_err());
        // Never panics on arbitrary bytes.
        for seed in 0u32..2000 {
            let len = (seed % 60) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u32 * 7) % 5) as u8)
                .collect();
            let _ = disk_to_xattr(&bytes);
            let _ = xattr_to_disk(&bytes);
            let _ = to_stored(&bytes);
        }
    }
}
