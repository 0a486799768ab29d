//! `ext4kit`: read (and soon write) ext2/ext3/ext4 images without the kernel and without root.
//!
//! Files inside an image are named `IMG:PATH` (as e2tools does): `disk.img:/etc/hostname`.
//! Every command exits 0 on success and non-zero with a one-line error on stderr otherwise;
//! `--json` gives output for scripts. An image whose journal needs recovery is read with the
//! journal replayed in memory (the image is never written); a line on stderr says so.

mod cp;
mod cp_src;
mod meter;
mod mkopts;
mod modify_cmds;
mod show;
mod spec;
mod target;
mod write_cmds;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use ext4kit_fs::format::journal::JournalSuperblock;
use ext4kit_fs::{ExtentKind, FileType, Fs, Stat};
use serde_json::{Value, json};

use crate::spec::{Images, Spec};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_says_a_path_once_and_drops_os_error_numbers() {
        let e = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::ENOENT))
            .context("/x/y")
            .context("img:/x/y");
        assert_eq!(one_line(&e), "img:/x/y: no such file or directory");
        let e = anyhow::anyhow!("/hostname: not a directory").context("a.img:/hostname/");
        assert_eq!(one_line(&e), "a.img:/hostname/: not a directory");
        let e = anyhow::anyhow!("/d/x: not a directory").context("a.img:/d/x/y");
        assert_eq!(one_line(&e), "a.img:/d/x/y: /d/x: not a directory");
        assert_eq!(
            strip_os_error("open: Permission denied (os error 13)"),
            "open: permission denied"
        );
    }
}

#[derive(Parser)]
#[command(
    name = "ext4kit",
    version,
    about = "Read and write ext2/ext3/ext4 images without mounting them and without root",
    long_about = "Read and write ext2/ext3/ext4 images without mounting them and without root.\n\n\
        Files inside an image are written IMG:PATH, e.g. disk.img:/etc/hostname \
        (IMG alone means its root directory); several IMG:PATH arguments may name one image.\n\
        Reading: an image whose journal needs recovery is read as if the journal had been \
        replayed; the replay happens in memory only and the image is never modified.\n\
        Writing (mkfs, build, cp into an image, mkdir, rm, mv, ln): images that are mounted, \
        use features ext4kit cannot write, or whose journal needs recovery are refused with \
        the reason and what to do (--replay-journal replays such a journal onto the image \
        first, as a mount would; a line on stderr says so); every change \
        reaches the image when the command ends, through the journal when the image has one \
        (a crash leaves it as before or after), and the result passes e2fsck.",
    after_help = "Examples:\n  \
        ext4kit info disk.img\n  \
        ext4kit ls -l disk.img:/etc\n  \
        ext4kit cat disk.img:/etc/hostname\n  \
        ext4kit stat --json disk.img:/bin/sh\n  \
        ext4kit cp -r -p disk.img:/ rootfs/            # copy out\n  \
        ext4kit mkfs -b 4096 -L data new.img 1G\n  \
        ext4kit build -b 4096 rootfs/ root.img          # like mke2fs -d\n  \
        ext4kit cp -r -p ./etc new.img:/               # copy in\n  \
        ext4kit mkdir -p new.img:/var/log ; ext4kit mv new.img:/etc new.img:/etc.orig"
)]
struct Cli {
    /// Read the image as it is on disk, without replaying a journal that needs recovery
    /// (reading commands).
    #[arg(long, global = true)]
    no_replay: bool,

    /// Writing commands: replay a journal that needs recovery onto the image before
    /// changing it, as a kernel mount or `e2fsck` would (without this, such images are
    /// refused).
    #[arg(long, global = true)]
    replay_journal: bool,

    /// Reading commands: use the superblock at this block (in filesystem blocks; the block
    /// size is found by trying 1K to 64K), as `e2fsck -b`, e.g. `ext4kit --superblock 32768
    /// ls IMG`. Without it, a damaged primary superblock makes reading commands use group 1's
    /// backup, with a warning.
    #[arg(long = "superblock", value_name = "BLOCK", global = true)]
    superblock: Option<u64>,

    /// When another ext4kit command is using the image (it holds the image's lock: exclusive
    /// while writing, shared while reading), wait for it to finish instead of refusing.
    #[arg(long, global = true)]
    wait: bool,

    /// The same as --superblock, written before the command (`ext4kit -b 32768 ls IMG`; after
    /// the command, `-b` is the block size of mkfs and build).
    #[arg(short = 'b', value_name = "BLOCK", conflicts_with = "superblock")]
    superblock_b: Option<u64>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the filesystem's geometry, features, free counts, UUID and label.
    #[command(after_help = "Field names follow dumpe2fs -h.")]
    Info {
        /// The image.
        image: PathBuf,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List a directory (or show one file) inside an image.
    #[command(
        after_help = "Entries are sorted by name; . and .. are shown with -a.\n\
        Example: ext4kit ls -l disk.img:/etc"
    )]
    Ls {
        /// IMG or IMG:PATH (PATH defaults to /).
        spec: OsString,
        /// Long listing: mode, links, owner, group, size, mtime (UTC), name [-> target].
        #[arg(short = 'l')]
        long: bool,
        /// Include . and ..
        #[arg(short = 'a')]
        all: bool,
        /// Print a JSON array of entries (with their inode data).
        #[arg(long)]
        json: bool,
    },
    /// Write a file's contents to stdout (symlinks are followed).
    Cat {
        /// IMG:PATH of a regular file.
        spec: OsString,
    },
    /// Show an inode: type, mode, owner, size, times (ns), flags, xattrs, extents.
    #[command(
        after_help = "The last path component is not followed if it is a symlink (like stat(1))."
    )]
    Stat {
        /// IMG:PATH.
        spec: OsString,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Create an empty ext4 filesystem in IMG (a sparse file of SIZE bytes).
    #[command(
        after_help = "SIZE takes K/M/G/T suffixes (powers of 1024): 256M, 4G, 16T.\n\
        The features are those mkfs.ext4 1.47 enables by default (resize_inode excepted).\n\
        SOURCE_DATE_EPOCH, when set, is the creation time.\n\
        Example: ext4kit mkfs -b 4096 -L data disk.img 1G"
    )]
    Mkfs {
        /// Block size: 1024, 2048 or 4096 (default: 1024 below 512 MiB, else 4096, as mke2fs).
        #[arg(short = 'b', value_parser = ["1024", "2048", "4096"])]
        block_size: Option<String>,
        /// Volume label (up to 16 bytes).
        #[arg(short = 'L')]
        label: Option<String>,
        /// Filesystem UUID (default: random).
        #[arg(short = 'U')]
        uuid: Option<String>,
        #[command(flatten)]
        mke: mkopts::MkeArgs,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
        /// The image file (replaced only once the new filesystem is complete), or a block device.
        image: PathBuf,
        /// Size, e.g. 256M.
        size: String,
    },
    /// Build an image from a directory tree (like mke2fs -d, keeping nanoseconds).
    #[command(
        after_help = "Without --size the image is sized to fit the tree with room to spare.\n\
        Directories that outgrow one block are indexed from the start; hard links stay linked;\n\
        sparse files stay sparse; mode, owner, ns timestamps, xattrs and device nodes are kept.\n\
        With SOURCE_DATE_EPOCH set, every timestamp is clamped to it; with -U and --hash-seed\n\
        too, two builds of the same tree are byte-identical.\n\
        Example: SOURCE_DATE_EPOCH=1700000000 ext4kit build -U 0123...ef --hash-seed 4567...ab rootfs/ root.img"
    )]
    Build {
        /// Block size: 1024, 2048 or 4096.
        #[arg(short = 'b', value_parser = ["1024", "2048", "4096"])]
        block_size: Option<String>,
        /// Image size (K/M/G/T suffixes); default: fitted to the tree.
        #[arg(long)]
        size: Option<String>,
        /// Filesystem UUID (default: random).
        #[arg(short = 'U')]
        uuid: Option<String>,
        /// Directory hash seed, a UUID (default: random).
        #[arg(long = "hash-seed")]
        hash_seed: Option<String>,
        /// Volume label (up to 16 bytes).
        #[arg(short = 'L')]
        label: Option<String>,
        #[command(flatten)]
        mke: mkopts::MkeArgs,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
        /// The source directory.
        dir: PathBuf,
        /// The image file (replaced only once the build succeeded).
        image: PathBuf,
    },
    /// Create directories inside images.
    #[command(after_help = "Example: ext4kit mkdir -p disk.img:/etc/app/conf.d")]
    Mkdir {
        /// Create missing parents; existing directories are fine.
        #[arg(short = 'p')]
        parents: bool,
        /// IMG:PATH...
        #[arg(required = true)]
        specs: Vec<OsString>,
    },
    /// Remove files, symlinks and (with -r) directories inside images.
    #[command(
        after_help = "Blocks, extent-tree blocks, xattr blocks and inodes are freed; a hard-linked file\n\
        only loses the name given. Symlinks are removed, never followed. Directories need -r,\n\
        which removes everything below them first. The root directory cannot be removed.\n\
        Several IMG:PATH arguments on one image open it once and write it back once; as rm(1), one \
        that fails is reported and the others are still removed (exit status 1).\n\
        Examples:\n  ext4kit rm disk.img:/etc/motd disk.img:/var/log/old.log\n  ext4kit rm -r disk.img:/usr/share/doc\n  ext4kit rm -rf disk.img:/tmp/cache   # fine if it is not there"
    )]
    Rm {
        /// Remove directories and their contents.
        #[arg(short = 'r', short_alias = 'R', long = "recursive")]
        recursive: bool,
        /// Ignore paths that do not exist (the image itself must).
        #[arg(short = 'f', long = "force")]
        force: bool,
        /// IMG:PATH...
        #[arg(required = true)]
        specs: Vec<OsString>,
    },
    /// Move or rename a file or directory inside an image.
    #[command(
        after_help = "As mv(1): when IMG:DST is an existing directory the source moves into it under\n\
        its own name; otherwise it is renamed to DST, replacing an existing file (or an empty\n\
        directory, when the source is a directory). A directory cannot move into itself.\n\
        Source and destination must be in the same image (copy between images with cp).\n\
        Examples:\n  ext4kit mv disk.img:/etc/app.conf disk.img:/etc/app.conf.bak\n  ext4kit mv disk.img:/opt/tool disk.img:/usr/local/"
    )]
    Mv {
        /// IMG:SRC... IMG:DST
        #[arg(required = true, num_args = 2..)]
        args: Vec<OsString>,
    },
    /// Make a hard link (TARGET is IMG:PATH in the same image) or, with -s, a symbolic link.
    #[command(
        after_help = "With -s, TARGET is the text the symlink holds (it need not exist):\n  \
        ext4kit ln -s ../lib/libfoo.so.1 disk.img:/usr/lib/libfoo.so\n\
        Without -s, TARGET is an existing non-directory in the same image:\n  \
        ext4kit ln disk.img:/bin/busybox disk.img:/bin/sh\n\
        When IMG:PATH is an existing directory, the link goes into it under TARGET's last name."
    )]
    Ln {
        /// Make a symbolic link.
        #[arg(short = 's', long = "symbolic")]
        symbolic: bool,
        /// The target: IMG:PATH (hard link) or any text (-s).
        target: OsString,
        /// IMG:PATH of the new link.
        link: OsString,
    },
    /// Copy files or trees out of images, or into one.
    #[command(
        about = "Copy files or trees out of images (IMG:PATH... DEST), into one (SRC... IMG:PATH), or between images"
    )]
    #[command(
        after_help = "Out of an image: IMG:/ copies the root's contents into DEST (like cp -r SRC/. DEST). \
        Symlinks stay symlinks, hard links stay linked, sparse files stay sparse; \
        nothing is ever written outside DEST, whatever names the image holds.\n\
        Into an image: SRC/. copies a directory's contents; an existing regular file of the same \
        name is overwritten in place of its old contents (same inode and links; a crash or kill leaves \
        the old or the new file, so the image needs room for both until the change is committed); \
        each file copied in is committed complete with its metadata, never empty or short; without -p new files belong to you, keep the source's rwx bits and get \
        the current time.\n\
        Copying into an image onto what it holds already works as cp -a does: files are overwritten \
        (through a symlink to one), symlinks and special files replaced, directories merged; a \
        directory never replaces a non-directory nor the other way round.\n\
        Between images: IMG1:PATH... IMG2:PATH (with -p, owners, modes, ns times and every xattr \
        are kept). `-` is standard input (cp - IMG:PATH) or output (cp IMG:PATH -). An X:PATH \
        argument whose X does not exist is an error, never a host path.\n\
        As cp, a source that fails is reported on its own line, the others are copied, and the \
        exit status is 1; DEST/ must be a directory.\n\
        With one source, DEST may be a new name; with several it must be a directory.\n\
        Out of space or inodes in the image, the copy stops: what was copied completely stays \
        (and is committed), the file being copied is removed, nothing else is touched; the error \
        names that file, what it needs and what is free. A file that cannot fit is refused before \
        anything is changed for it; if an overwrite from standard input runs out part-way, its \
        old contents are already gone, so then nothing of the command is written.\n\
        Examples:\n  ext4kit cp -r -p disk.img:/ rootfs/\n  ext4kit cp disk.img:/etc/hostname ./hostname\n  \
        ext4kit cp -r -p ./rootfs/. disk.img:/\n  ext4kit cp app.conf disk.img:/etc/app.conf\n  \
        ext4kit cp -r -p old.img:/etc new.img:/\n  echo ok | ext4kit cp - disk.img:/etc/motd"
    )]
    Cp {
        /// Copy directories recursively (symlinks are never followed then).
        #[arg(short = 'r', short_alias = 'R', long = "recursive")]
        recursive: bool,
        /// Preserve mode (with POSIX ACLs), owner, timestamps (ns) and user.* xattrs.
        #[arg(short = 'p', long = "preserve")]
        preserve: bool,
        /// With -p, copy xattrs of every namespace (trusted.*, security.*), not only user.*.
        #[arg(long)]
        all_xattrs: bool,
        /// IMG:PATH... DEST
        #[arg(required = true, num_args = 2..)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`ext4kit ls ... | head`), as other command-line tools do,
    // instead of panicking in `println!`.
    // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let mut images = Images::default();
    images.no_replay = cli.no_replay;
    images.replay_journal = cli.replay_journal;
    write_cmds::set_wait_for_lock(cli.wait);
    images.superblock = cli.superblock.or(cli.superblock_b);
    let result = run(cli.command, &mut images);
    images.print_warnings();
    match result {
        Ok(code) => code,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("ext4kit: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error's chain on one line, `a: b: c`, without saying a path twice: a context that the
/// next message starts with is dropped (`/d`, `/d: no such file`), and a message that starts
/// with what the line already ends with loses that start (`img:/x`, `/x: no such file`; also
/// `img:/x/`, `/x: not a directory`). OS errors read as strerror does, without "(os error N)".
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let mut msg = strip_os_error(&cause.to_string());
        if let Some(prev) = parts.last() {
            if msg == *prev || msg.starts_with(&format!("{prev}: ")) {
                parts.pop();
            } else if !msg.contains(": ") && names_same(&parts.join(": "), &msg) {
                // A context naming the path the line already names (`img:/x`, then `/x`).
                continue;
            } else if let Some((head, rest)) = msg.split_once(": ") {
                let line = parts.join(": ");
                if !head.is_empty() && (line.ends_with(head) || names_same(&line, head)) {
                    msg = rest.to_string();
                }
            }
        }
        parts.push(msg);
    }
    parts.join(": ")
}

/// Whether `line` ends with path `head` up to trailing `/` and `/.` (`img:/x/.` and `/x`).
fn names_same(line: &str, head: &str) -> bool {
    fn trim(mut p: &str) -> &str {
        loop {
            let t = p
                .strip_suffix("/.")
                .or_else(|| p.strip_suffix('/'))
                .unwrap_or(p);
            if t.len() == p.len() || t.is_empty() {
                return p;
            }
            p = t;
        }
    }
    let (l, h) = (trim(line), trim(head));
    h.starts_with('/') && h.len() > 1 && l.ends_with(h) && l[..l.len() - h.len()].ends_with(':')
}

/// `No such file or directory (os error 2)` -> `no such file or directory`.
fn strip_os_error(msg: &str) -> String {
    let Some(at) = msg.find(" (os error ") else {
        return msg.to_string();
    };
    let rest = &msg[at + " (os error ".len()..];
    let Some(close) = rest.find(')') else {
        return msg.to_string();
    };
    if !rest[..close].bytes().all(|b| b.is_ascii_digit()) {
        return msg.to_string();
    }
    // The OS text (strerror's "No such file or directory") reads lower-case inside a line.
    let head = &msg[..at];
    let start = head.rfind(": ").map_or(0, |i| i + 2);
    let mut out = head[..start].to_string();
    let mut chars = head[start..].chars();
    if let Some(c) = chars.next() {
        out.extend(c.to_lowercase());
        out.push_str(chars.as_str());
    }
    out.push_str(&rest[close + 1..]);
    out
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cmd: Command, images: &mut Images) -> Result<ExitCode> {
    match cmd {
        Command::Info { image, json } => {
            let fs = images.get(&image)?;
            info(&fs, json)?;
        }
        Command::Ls {
            spec,
            long,
            all,
            json,
        } => {
            let spec = Spec::parse(&spec);
            let fs = images.get(&spec.image)?;
            ls(&fs, &spec, long, all, json).with_context(|| spec.display())?;
        }
        Command::Cat { spec } => {
            let spec = Spec::parse(&spec);
            let fs = images.get(&spec.image)?;
            cat(&fs, &spec).with_context(|| spec.display())?;
        }
        Command::Stat { spec, json } => {
            let spec = Spec::parse(&spec);
            let fs = images.get(&spec.image)?;
            stat(&fs, &spec, json).with_context(|| spec.display())?;
        }
        Command::Mkfs {
            block_size,
            label,
            uuid,
            mke,
            json,
            image,
            size,
        } => {
            let bs = block_size.map(|b| b.parse()).transpose()?;
            let mke = mke
                .check()
                .map_err(|e| anyhow::anyhow!("{}: {e}", image.display()))?;
            write_cmds::cmd_mkfs(&image, &size, bs, label, uuid.as_deref(), &mke, json)?;
        }
        Command::Build {
            block_size,
            size,
            uuid,
            hash_seed,
            label,
            mke,
            json,
            dir,
            image,
        } => {
            let mke = mke
                .check()
                .map_err(|e| anyhow::anyhow!("{}: {e}", image.display()))?;
            let opts = ext4kit_fs::build::BuildOptions {
                block_size: block_size.map(|b| b.parse()).transpose()?,
                size: size.as_deref().map(write_cmds::parse_size).transpose()?,
                uuid: uuid.as_deref().map(write_cmds::parse_uuid).transpose()?,
                hash_seed: hash_seed
                    .as_deref()
                    .map(write_cmds::parse_uuid)
                    .transpose()?
                    .or(mke.hash_seed),
                label,
                source_date_epoch: None,
                inode_count: mke.inode_count,
                inode_ratio: mke.inode_ratio,
                inode_size: mke.inode_size,
                reserved_percent: mke.reserved_percent,
            };
            write_cmds::cmd_build(&dir, &image, opts, json)?;
        }
        Command::Rm {
            recursive,
            force,
            specs,
        } => {
            let specs: Vec<Spec> = specs.iter().map(|a| Spec::parse(a)).collect();
            let mut w = write_cmds::WritableImages::new(images.replay_journal);
            if modify_cmds::cmd_rm(&mut w, &specs, recursive, force)? > 0 {
                // Each failed operand was reported on its own line (as rm(1) does).
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Mv { args } => {
            let mut w = write_cmds::WritableImages::new(images.replay_journal);
            if modify_cmds::cmd_mv(&mut w, &args)? > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Ln {
            symbolic,
            target,
            link,
        } => {
            let link = Spec::parse(&link);
            let mut w = write_cmds::WritableImages::new(images.replay_journal);
            modify_cmds::cmd_ln(&mut w, &target, &link, symbolic)?;
        }
        Command::Mkdir { parents, specs } => {
            let specs: Vec<Spec> = specs.iter().map(|a| Spec::parse(a)).collect();
            let mut w = write_cmds::WritableImages::new(images.replay_journal);
            if write_cmds::cmd_mkdir(&mut w, &specs, parents)? > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Cp {
            recursive,
            preserve,
            all_xattrs,
            args,
        } => {
            let classes = args
                .iter()
                .map(|a| spec::classify(a))
                .collect::<Result<Vec<_>>>()?;
            let Some((dest, sources)) = classes.split_last() else {
                bail!("cp needs a source and a destination");
            };
            if let spec::Arg::Image(dest) = dest {
                let sources: Vec<write_cmds::CpSource> = sources
                    .iter()
                    .map(|a| match a {
                        spec::Arg::Dash => write_cmds::CpSource::Stdin,
                        spec::Arg::Host(p) => write_cmds::CpSource::Host(p.clone()),
                        spec::Arg::Image(s) => write_cmds::CpSource::Image(s.clone()),
                    })
                    .collect();
                if sources
                    .iter()
                    .filter(|s| matches!(s, write_cmds::CpSource::Stdin))
                    .count()
                    > 0
                    && sources.len() > 1
                {
                    bail!("-: standard input can only be copied alone");
                }
                let mut w = write_cmds::WritableImages::new(images.replay_journal);
                let errors = write_cmds::cmd_cp_in(
                    &mut w,
                    images,
                    &sources,
                    dest,
                    write_cmds::CpInOptions {
                        recursive,
                        preserve,
                    },
                )?;
                if errors > 0 {
                    return Ok(ExitCode::FAILURE);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let mut specs: Vec<Spec> = Vec::new();
            for a in sources {
                match a {
                    spec::Arg::Image(s) => specs.push(s.clone()),
                    spec::Arg::Dash => {
                        bail!("-: standard input can only be copied into an image (cp - IMG:PATH)")
                    }
                    spec::Arg::Host(p) => bail!(
                        "{}: not IMG:PATH: cp copies out of images (IMG:PATH... DEST, IMG:/ for a whole image) or into one (SRC... IMG:PATH)",
                        p.display()
                    ),
                }
            }
            if *dest == spec::Arg::Dash {
                // `cp IMG:PATH -`: the file to standard output (as e2cp does).
                let [one] = specs.as_slice() else {
                    bail!("-: only one file can be copied to standard output");
                };
                let fs = images.get(&one.image)?;
                cat(&fs, one).with_context(|| one.display())?;
                return Ok(ExitCode::SUCCESS);
            }
            let spec::Arg::Host(dest) = dest else {
                bail!("cp: no destination")
            };
            if specs.iter().any(|s| write_cmds::same_file(&s.image, dest)) {
                // `cp IMG:/f IMG` would overwrite the image with the file it is reading.
                bail!(
                    "{}: is the image being copied from (to copy into it, name {}:PATH)",
                    dest.display(),
                    dest.display()
                );
            }
            let opts = cp::CpOptions {
                recursive,
                preserve,
                all_xattrs,
            };
            let errors = cp::run(images, &specs, dest, opts)?;
            if errors > 0 {
                // Each error was reported on its own line.
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

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

fn info(fs: &Fs, as_json: bool) -> Result<()> {
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
            json!(show::uuid(&hash_seed_bytes(sb.hash_seed()))),
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

fn hash_seed_bytes(seed: [u32; 4]) -> [u8; 16] {
    let mut b = [0u8; 16];
    for (i, w) in seed.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    b
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

fn ls(fs: &Fs, spec: &Spec, long: bool, all: bool, as_json: bool) -> Result<()> {
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

fn cat(fs: &Fs, spec: &Spec) -> Result<()> {
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

fn stat(fs: &Fs, spec: &Spec, as_json: bool) -> Result<()> {
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
