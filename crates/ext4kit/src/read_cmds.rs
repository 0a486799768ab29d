//! The reading commands: `info`, `ls`, `cat` and `stat` (and `cp IMG:PATH -`, which is `cat`).
//! They only read the image; an image whose journal needs recovery is read with the journal
//! replayed in memory.

use std::io::Write;

use anyhow::{Result, bail};
use ext4kit_fs::format::journal::JournalSuperblock;
use ext4kit_fs::{ExtentKind, FileType, Fs, Stat};
use serde_json::{Value, json};

use crate::show;
use crate::spec::Spec;

fn hash_name(v: u8) -> String {
    match v {
        0 => "legacy".into(),
        1 => "half_md4".into(),
        2 => "tea".into(),
        3 => "legacy_unsigned".into(),
        4 => "half_md4_unsigned".into(),
        5 => "tea_unsigned".into(),
        6 => "siphash".into(),
        n => format!("unknown ({n})"),
    }
}

/// `ext4kit info`: the superblock (and journal superblock) as dumpe2fs -h names the fields.
pub(crate) fn info(fs: &Fs, as_json: bool) -> Result<()> {
    let sb = fs.superblock();
    let state = {
        let s = sb.state();
        let mut v = vec![if s & 1 != 0 { "clean" } else { "not clean" }];
        if s & 2 != 0 {
            v.push("with errors");
        }
        v.join(" ")
    };
    let label = sb.label();
    let mut fields: Vec<(&str, Value)> = vec![
        (
            "Filesystem volume name",
            json!(if label.is_empty() {
                "<none>".to_string()
            } else {
                label
            }),
        ),
        ("Filesystem UUID", json!(show::uuid(&sb.uuid()))),
        (
            "Filesystem magic number",
            json!(format!("{:#06X}", sb.magic())),
        ),
        ("Filesystem revision #", json!(sb.rev_level())),
        ("Filesystem features", json!(sb.feature_names())),
        ("Filesystem state", json!(state)),
        ("Inode count", json!(sb.inodes_count())),
        ("Block count", json!(sb.blocks_count())),
        ("Reserved block count", json!(sb.reserved_blocks_count())),
        ("Free blocks", json!(sb.free_blocks_count())),
        ("Free inodes", json!(sb.free_inodes_count())),
        ("First block", json!(sb.first_data_block())),
        ("Block size", json!(sb.block_size())),
        ("Group count", json!(sb.group_count())),
        ("Blocks per group", json!(sb.blocks_per_group())),
        ("Inodes per group", json!(sb.inodes_per_group())),
        ("Inode size", json!(sb.inode_size())),
        ("First inode", json!(sb.first_ino())),
        ("Reserved GDT blocks", json!(sb.reserved_gdt_blocks())),
        ("Filesystem created", json!(show::date(sb.mkfs_time()))),
        ("Last mount time", json!(show::date(sb.mount_time()))),
        ("Last write time", json!(show::date(sb.write_time()))),
        ("Mount count", json!(sb.mount_count())),
        (
            "Default directory hash",
            json!(hash_name(sb.def_hash_version())),
        ),
        (
            "Directory Hash Seed",
            json!(show::uuid(&sb.hash_seed_bytes())),
        ),
    ];
    if sb.is_64bit() {
        fields.push(("Group descriptor size", json!(sb.desc_size())));
    }
    if sb.has_metadata_csum() {
        fields.push(("Checksum type", json!("crc32c")));
        fields.push(("Checksum", json!(format!("{:#010x}", sb.checksum()))));
        fields.push(("Checksum seed", json!(format!("{:#010x}", sb.csum_seed()))));
    }
    if sb.journal_inum() != 0 {
        fields.push(("Journal inode", json!(sb.journal_inum())));
        if let Ok(j) = journal_info(fs) {
            fields.push(("Journal features", json!(j.feature_names().join(" "))));
            fields.push(("Total journal blocks", json!(j.maxlen())));
            fields.push(("Journal sequence", json!(format!("{:#010x}", j.sequence()))));
            fields.push(("Journal start", json!(j.start())));
        }
    }
    let recovered = fs.journal_replay();
    fields.push((
        "Journal replayed in memory",
        json!(recovered.map(|r| r.transactions)),
    ));
    if as_json {
        let mut o = serde_json::Map::new();
        for (k, v) in fields {
            o.insert(
                k.to_lowercase().replace(['#'], "number").replace(' ', "_"),
                v,
            );
        }
        println!("{}", serde_json::to_string_pretty(&Value::Object(o))?);
    } else {
        let mut out = std::io::stdout().lock();
        for (k, v) in fields {
            let v = match v {
                Value::String(s) => s,
                Value::Null => "no".into(),
                other => other.to_string(),
            };
            writeln!(out, "{:<26}{v}", format!("{k}: "))?;
        }
    }
    Ok(())
}

/// The journal superblock (after replay), through the journal inode's first block.
fn journal_info(fs: &Fs) -> Result<JournalSuperblock> {
    let ino = fs.superblock().journal_inum();
    let e = fs.map_block(ino, 0, 1)?;
    if e.kind != ExtentKind::Written {
        bail!("journal block 0 is not mapped");
    }
    let block = fs.read_block(e.pblk)?;
    Ok(JournalSuperblock::parse(&block)?)
}

fn entry_json(fs: &Fs, name: &[u8], ino: u32) -> Value {
    let mut o = serde_json::Map::new();
    show::put_bytes(&mut o, "name", name);
    match fs.stat(ino) {
        Ok(st) => {
            o.extend(show::stat_json(&st));
            if st.file_type == FileType::Symlink {
                if let Ok(t) = fs.read_link(ino) {
                    show::put_bytes(&mut o, "target", &t);
                }
            }
        }
        Err(e) => {
            o.insert("ino".into(), json!(ino));
            o.insert("error".into(), json!(e.to_string()));
        }
    }
    Value::Object(o)
}

fn long_line(fs: &Fs, name: &[u8], st: &Stat) -> Vec<u8> {
    let size = match st.rdev {
        Some((ma, mi)) => format!("{ma}, {mi}"),
        None => st.size.to_string(),
    };
    let mut line = format!(
        "{} {:>3} {:>5} {:>5} {:>10} {} ",
        show::mode_string(st.mode),
        st.nlink,
        st.uid,
        st.gid,
        size,
        show::date(st.mtime.seconds)
    )
    .into_bytes();
    line.extend_from_slice(name);
    if st.file_type == FileType::Symlink {
        if let Ok(t) = fs.read_link(st.ino) {
            line.extend_from_slice(b" -> ");
            line.extend_from_slice(&t);
        }
    }
    line.push(b'\n');
    line
}

/// `ext4kit ls`: a directory's entries (or the file itself), sorted by name; `-l` long lines.
pub(crate) fn ls(fs: &Fs, spec: &Spec, long: bool, all: bool, as_json: bool) -> Result<()> {
    let path = spec.path_or_root();
    let (ino, inode) = fs.resolve_inode(path, true)?;
    // A damaged entry (a name no path can hold) is reported after the listing, not instead of it.
    let mut damaged = Vec::new();
    let mut entries: Vec<(Vec<u8>, u32)> = if inode.is_dir() {
        let (list, bad) = fs.read_dir_salvage(ino)?;
        damaged = bad;
        list.into_iter()
            .filter(|e| all || !e.is_dot_or_dotdot())
            .map(|e| (e.name, e.ino))
            .collect()
    } else {
        vec![(path.to_vec(), ino)]
    };
    entries.sort();
    let mut out = std::io::stdout().lock();
    if as_json {
        let v: Vec<Value> = entries.iter().map(|(n, i)| entry_json(fs, n, *i)).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    let mut failed = None;
    for (name, ino) in &entries {
        if long {
            match fs.stat(*ino) {
                Ok(st) => out.write_all(&long_line(fs, name, &st))?,
                Err(e) => {
                    failed.get_or_insert_with(|| format!("{}: {e}", String::from_utf8_lossy(name)));
                }
            }
        } else {
            out.write_all(name)?;
            out.write_all(b"\n")?;
        }
    }
    if let Some(f) = failed {
        bail!(f);
    }
    if let Some(e) = damaged.first() {
        out.flush()?;
        for e in &damaged[1..] {
            eprintln!("ext4kit: {}: {e}", spec.display());
        }
        bail!("{}: {e}", spec.display());
    }
    Ok(())
}

/// `ext4kit cat` (and `cp IMG:PATH -`): a file's contents to standard output.
pub(crate) fn cat(fs: &Fs, spec: &Spec) -> Result<()> {
    let (ino, inode) = fs.resolve_inode(spec.path_or_root(), true)?;
    if inode.is_dir() {
        bail!("is a directory");
    }
    let reader = fs.open_file(ino)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut out = std::io::stdout().lock();
    let mut pos = 0u64;
    loop {
        let n = reader.read_at(pos, &mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        pos += n as u64;
    }
    out.flush()?;
    Ok(())
}

/// `ext4kit stat`: an inode's fields, xattrs, link target and extents, as debugfs stat shows them.
pub(crate) fn stat(fs: &Fs, spec: &Spec, as_json: bool) -> Result<()> {
    let (ino, _) = fs.resolve_inode(spec.path_or_root(), false)?;
    let st = fs.stat(ino)?;
    let xattrs = fs.list_xattrs(ino)?;
    let target = if st.file_type == FileType::Symlink {
        Some(fs.read_link(ino)?)
    } else {
        None
    };
    let runs = match st.file_type {
        FileType::Regular | FileType::Directory | FileType::Symlink => fs.file_runs(ino)?,
        _ => Vec::new(),
    };
    let mapped: Vec<_> = runs.iter().filter(|r| r.kind != ExtentKind::Hole).collect();
    let mut out = std::io::stdout().lock();
    if as_json {
        let mut o = show::stat_json(&st);
        let xs: Vec<Value> = xattrs
            .iter()
            .map(|x| {
                let mut m = serde_json::Map::new();
                show::put_bytes(&mut m, "name", &x.name);
                show::put_bytes(&mut m, "value", &x.value);
                m.insert("value_hex".into(), json!(show::hex(&x.value)));
                if ext4kit_fs::format::acl::is_acl_name(&x.name) {
                    m.insert("acl".into(), json!(show::xattr_value(&x.name, &x.value)));
                }
                Value::Object(m)
            })
            .collect();
        o.insert("xattrs".into(), Value::Array(xs));
        if let Some(t) = &target {
            show::put_bytes(&mut o, "target", t);
        }
        let ext: Vec<Value> = mapped
            .iter()
            .map(|r| {
                json!({
                    "logical": r.lblk, "physical": r.pblk, "len": r.len,
                    "unwritten": r.kind == ExtentKind::Unwritten,
                })
            })
            .collect();
        o.insert("extents".into(), Value::Array(ext));
        writeln!(out, "{}", serde_json::to_string_pretty(&Value::Object(o))?)?;
        return Ok(());
    }
    writeln!(
        out,
        "Inode: {}   Type: {}   Mode: {:04o}   Flags: {:#x}",
        st.ino,
        show::type_name(st.file_type),
        st.mode & 0o7777,
        st.flags.0
    )?;
    writeln!(
        out,
        "Generation: {}   Version: {:#x}",
        st.generation, st.version
    )?;
    writeln!(
        out,
        "User: {:>5}   Group: {:>5}   Project: {:>5}   Size: {}",
        st.uid, st.gid, st.project_id, st.size
    )?;
    writeln!(out, "File ACL: {}", st.file_acl)?;
    writeln!(out, "Links: {}   Blockcount: {}", st.nlink, st.blocks)?;
    if let Some((ma, mi)) = st.rdev {
        writeln!(out, "Device major/minor number: {ma:02}:{mi:02}")?;
    }
    writeln!(out, " ctime: {}", show::timestamp(st.ctime))?;
    writeln!(out, " atime: {}", show::timestamp(st.atime))?;
    writeln!(out, " mtime: {}", show::timestamp(st.mtime))?;
    if let Some(c) = st.crtime {
        writeln!(out, "crtime: {}", show::timestamp(c))?;
    }
    writeln!(out, "Size of extra inode fields: {}", st.extra_isize)?;
    if !xattrs.is_empty() {
        writeln!(out, "Extended attributes:")?;
        for x in &xattrs {
            out.write_all(b"  ")?;
            out.write_all(&x.name)?;
            writeln!(
                out,
                " ({}) = {}",
                x.value.len(),
                show::xattr_value(&x.name, &x.value)
            )?;
        }
    }
    if let Some(t) = &target {
        out.write_all(b"Link target: ")?;
        out.write_all(t)?;
        out.write_all(b"\n")?;
    }
    if !mapped.is_empty() {
        writeln!(out, "EXTENTS:")?;
        let parts: Vec<String> = mapped
            .iter()
            .map(|r| {
                let u = if r.kind == ExtentKind::Unwritten {
                    "[u]"
                } else {
                    ""
                };
                if r.len == 1 {
                    format!("({}{u}):{}", r.lblk, r.pblk)
                } else {
                    format!(
                        "({}-{}{u}):{}-{}",
                        r.lblk,
                        r.lblk + r.len - 1,
                        r.pblk,
                        r.pblk + r.len - 1
                    )
                }
            })
            .collect();
        writeln!(out, "{}", parts.join(", "))?;
    }
    Ok(())
}
