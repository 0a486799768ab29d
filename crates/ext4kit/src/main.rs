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
mod read_cmds;
mod report;
mod show;
mod spec;
mod target;
mod write_cmds;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::report::is_broken_pipe;
pub(crate) use crate::report::one_line;
use crate::spec::{Images, Spec};

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

fn run(cmd: Command, images: &mut Images) -> Result<ExitCode> {
    match cmd {
        Command::Info { image, json } => {
            let fs = images.get(&image)?;
            read_cmds::info(&fs, json)?;
        }
        Command::Ls {
            spec,
            long,
            all,
            json,
        } => {
            let spec = Spec::parse(&spec);
            let fs = images.get(&spec.image)?;
            read_cmds::ls(&fs, &spec, long, all, json).with_context(|| spec.display())?;
        }
        Command::Cat { spec } => {
            let spec = Spec::parse(&spec);
            let fs = images.get(&spec.image)?;
            read_cmds::cat(&fs, &spec).with_context(|| spec.display())?;
        }
        Command::Stat { spec, json } => {
            let spec = Spec::parse(&spec);
            let fs = images.get(&spec.image)?;
            read_cmds::stat(&fs, &spec, json).with_context(|| spec.display())?;
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
                read_cmds::cat(&fs, one).with_context(|| one.display())?;
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
