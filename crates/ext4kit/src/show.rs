//! Formatting for humans and for scripts: permission strings, UTC timestamps with
//! nanoseconds, UUIDs, byte strings in JSON, and the JSON form of a [`Stat`].

use ext4kit_fs::{FileType, Stat, Timestamp};
use serde_json::{Value, json};

/// `ls -l` style type letter and permission string (`drwxr-sr-t`).
pub fn mode_string(mode: u16) -> String {
    let t = match FileType::from_mode(mode) {
        Some(FileType::Directory) => 'd',
        Some(FileType::Symlink) => 'l',
        Some(FileType::CharDevice) => 'c',
        Some(FileType::BlockDevice) => 'b',
        Some(FileType::Fifo) => 'p',
        Some(FileType::Socket) => 's',
        Some(FileType::Regular) => '-',
        None => '?',
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    let bit = |m: u16, c: char| if mode & m != 0 { c } else { '-' };
    let special = |x: bool, exec: bool, lower: char, upper: char| match (x, exec) {
        (true, true) => lower,
        (true, false) => upper,
        (false, true) => 'x',
        (false, false) => '-',
    };
    s.push(bit(0o400, 'r'));
    s.push(bit(0o200, 'w'));
    s.push(special(mode & 0o4000 != 0, mode & 0o100 != 0, 's', 'S'));
    s.push(bit(0o040, 'r'));
    s.push(bit(0o020, 'w'));
    s.push(special(mode & 0o2000 != 0, mode & 0o010 != 0, 's', 'S'));
    s.push(bit(0o004, 'r'));
    s.push(bit(0o002, 'w'));
    s.push(special(mode & 0o1000 != 0, mode & 0o001 != 0, 't', 'T'));
    s
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2024-05-05 05:05:05` (UTC).
pub fn date(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `2024-05-05 05:05:05.500000000 UTC`.
pub fn timestamp(t: Timestamp) -> String {
    format!("{}.{:09} UTC", date(t.seconds), t.nanoseconds)
}

/// A timestamp as JSON: seconds, nanoseconds and the readable form.
pub fn timestamp_json(t: Timestamp) -> Value {
    json!({ "sec": t.seconds, "nsec": t.nanoseconds, "utc": timestamp(t) })
}

/// A UUID in the usual 8-4-4-4-12 form.
pub fn uuid(b: &[u8; 16]) -> String {
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// Lower-case hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An xattr value for humans: quoted when it is printable text, else hex (the first 64 bytes).
pub fn value(v: &[u8]) -> String {
    let text = v.strip_suffix(b"\0").unwrap_or(v);
    match std::str::from_utf8(text) {
        Ok(t) if t.chars().all(|c| !c.is_control() || c == '\t') => format!("{t:?}"),
        _ if v.len() > 64 => format!("hex:{}...", hex(&v[..64])),
        _ => format!("hex:{}", hex(v)),
    }
}

/// An xattr value for people: POSIX ACLs as getfacl's entries (`user::rwx,user:1234:r-x,...`),
/// other values as [`value`] shows them.
pub fn xattr_value(name: &[u8], v: &[u8]) -> String {
    use ext4kit_fs::format::acl;
    match acl::is_acl_name(name).then(|| acl::parse_xattr(v)) {
        Some(Ok(entries)) => acl::to_text(&entries),
        _ => value(v),
    }
}

/// Puts a byte string into a JSON object as `key` (lossy UTF-8), plus `key_hex` when the bytes
/// are not valid UTF-8, so scripts can recover every name exactly.
pub fn put_bytes(obj: &mut serde_json::Map<String, Value>, key: &str, b: &[u8]) {
    obj.insert(
        key.into(),
        Value::String(String::from_utf8_lossy(b).into_owned()),
    );
    if std::str::from_utf8(b).is_err() {
        obj.insert(format!("{key}_hex"), Value::String(hex(b)));
    }
}

/// The name of a file type, as `ls --json` and `stat` print it.
pub fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::Regular => "regular",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::CharDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
    }
}

/// The JSON object of a [`Stat`].
pub fn stat_json(st: &Stat) -> serde_json::Map<String, Value> {
    let mut o = serde_json::Map::new();
    o.insert("ino".into(), json!(st.ino));
    o.insert("type".into(), json!(type_name(st.file_type)));
    o.insert("mode".into(), json!(format!("{:04o}", st.mode & 0o7777)));
    o.insert("mode_string".into(), json!(mode_string(st.mode)));
    o.insert("links".into(), json!(st.nlink));
    o.insert("uid".into(), json!(st.uid));
    o.insert("gid".into(), json!(st.gid));
    o.insert("size".into(), json!(st.size));
    o.insert("blocks_512".into(), json!(st.blocks));
    o.insert("flags".into(), json!(format!("{:#x}", st.flags.0)));
    o.insert("generation".into(), json!(st.generation));
    o.insert("version".into(), json!(st.version));
    o.insert("project".into(), json!(st.project_id));
    o.insert("file_acl".into(), json!(st.file_acl));
    o.insert("atime".into(), timestamp_json(st.atime));
    o.insert("mtime".into(), timestamp_json(st.mtime));
    o.insert("ctime".into(), timestamp_json(st.ctime));
    o.insert(
        "crtime".into(),
        st.crtime.map_or(Value::Null, timestamp_json),
    );
    o.insert("extra_isize".into(), json!(st.extra_isize));
    if let Some((ma, mi)) = st.rdev {
        o.insert("rdev".into(), json!({ "major": ma, "minor": mi }));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(mode_string(0o104755), "-rwsr-xr-x");
        assert_eq!(mode_string(0o041777), "drwxrwxrwt");
        assert_eq!(mode_string(0o120777), "lrwxrwxrwx");
        assert_eq!(mode_string(0o102644), "-rw-r-Sr--");
        assert_eq!(date(0), "1970-01-01 00:00:00");
        assert_eq!(date(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(date(-1), "1969-12-31 23:59:59");
        assert_eq!(date(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(
            uuid(&[
                0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8
            ]),
            "12345678-9abc-def0-0102-030405060708"
        );
    }
}
