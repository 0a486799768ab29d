//! [`Mke2fs`]: the one way the tests and benches run `mke2fs`.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A `mke2fs` command line, built up and then run on one image.
///
/// It always passes `-q -F -t TYPE -b BS` (`ext4` and 4096 unless set): without `-b`, mke2fs
/// picks 1 KiB blocks for images under 512 MiB, which a test rarely means. Nothing else is
/// passed unless asked for, so each option below is what an old helper did:
///
/// ```no_run
/// # use ext4kit_testkit::Mke2fs;
/// # let (img, tree) = (std::path::Path::new("a.img"), std::path::Path::new("tree"));
/// Mke2fs::new(img)
///     .block_size(1024)
///     .size(64 << 20) // create the file at 64 MiB first
///     .features("^metadata_csum")
///     .no_lazy_init() // -E lazy_itable_init=0,lazy_journal_init=0
///     .tree(tree) // -d tree
///     .run();
/// ```
///
/// The order on the command line: `-q -F -t -b`, `-O` (features), `-I`, `-N`, `-E` (extended
/// options, joined by commas), the [`extra`](Mke2fs::extra) arguments, `-d`, the image, the
/// size operand. mke2fs keeps only the last `-E`, so `-E` belongs in
/// [`extended`](Mke2fs::extended); an `-E` in `extra` as well panics rather than silently
/// dropping one of them.
#[derive(Debug, Clone)]
#[must_use = "a Mke2fs does nothing until run"]
pub struct Mke2fs {
    img: PathBuf,
    fs_type: String,
    block_size: u32,
    size: Option<u64>,
    fs_size: Option<String>,
    features: Vec<String>,
    inode_size: Option<u32>,
    inodes: Option<u64>,
    extended: Vec<String>,
    extra: Vec<OsString>,
    tree: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
}

impl Mke2fs {
    /// mke2fs of `img`: ext4, 4 KiB blocks, the image file as it is (it must exist unless a
    /// [`fs_size`](Mke2fs::fs_size) is given; see [`size`](Mke2fs::size)).
    pub fn new(img: impl AsRef<Path>) -> Mke2fs {
        Mke2fs {
            img: img.as_ref().to_path_buf(),
            fs_type: "ext4".into(),
            block_size: 4096,
            size: None,
            fs_size: None,
            features: Vec::new(),
            inode_size: None,
            inodes: None,
            extended: Vec::new(),
            extra: Vec::new(),
            tree: None,
            env: Vec::new(),
        }
    }

    /// `-t TYPE` (default `ext4`).
    pub fn fs_type(mut self, fs_type: &str) -> Mke2fs {
        self.fs_type = fs_type.into();
        self
    }

    /// `-b BS` (default 4096).
    pub fn block_size(mut self, bs: u32) -> Mke2fs {
        self.block_size = bs;
        self
    }

    /// Creates the image file anew (truncated) at `bytes` before mke2fs runs, so mke2fs uses
    /// the whole file.
    pub fn size(mut self, bytes: u64) -> Mke2fs {
        self.size = Some(bytes);
        self
    }

    /// The size operand after the image (`64M`, `123k`, a block count): mke2fs makes a
    /// filesystem of that size, creating the file if it is missing.
    pub fn fs_size(mut self, size: &str) -> Mke2fs {
        self.fs_size = Some(size.into());
        self
    }

    /// `-O FEATURES`; more calls add to the list.
    pub fn features(mut self, features: &str) -> Mke2fs {
        self.features.push(features.into());
        self
    }

    /// `-I SIZE` (inode size).
    pub fn inode_size(mut self, bytes: u32) -> Mke2fs {
        self.inode_size = Some(bytes);
        self
    }

    /// `-N COUNT` (number of inodes).
    pub fn inodes(mut self, count: u64) -> Mke2fs {
        self.inodes = Some(count);
        self
    }

    /// `-E OPTIONS`; more calls add to the list (mke2fs takes one `-E`: they are joined).
    pub fn extended(mut self, options: &str) -> Mke2fs {
        self.extended.push(options.into());
        self
    }

    /// `-E lazy_itable_init=0,lazy_journal_init=0`: inode tables and journal written out in
    /// full, so the image holds no stale bytes.
    pub fn no_lazy_init(self) -> Mke2fs {
        self.extended("lazy_itable_init=0,lazy_journal_init=0")
    }

    /// `-d TREE`: the tree's contents copied into the new filesystem.
    pub fn tree(mut self, tree: impl AsRef<Path>) -> Mke2fs {
        self.tree = Some(tree.as_ref().to_path_buf());
        self
    }

    /// More arguments, as they are (e.g. `["-J", "size=1"]`, `["-g", "1024"]`).
    pub fn extra<S: AsRef<OsStr>>(mut self, args: &[S]) -> Mke2fs {
        self.extra
            .extend(args.iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// An environment variable for mke2fs (e.g. `E2FSPROGS_FAKE_TIME`).
    pub fn env(mut self, key: &str, value: &str) -> Mke2fs {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The arguments mke2fs gets.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = ["-q", "-F", "-t"].map(OsString::from).to_vec();
        a.push(self.fs_type.clone().into());
        a.push("-b".into());
        a.push(self.block_size.to_string().into());
        if !self.features.is_empty() {
            a.push("-O".into());
            a.push(self.features.join(",").into());
        }
        if let Some(n) = self.inode_size {
            a.push("-I".into());
            a.push(n.to_string().into());
        }
        if let Some(n) = self.inodes {
            a.push("-N".into());
            a.push(n.to_string().into());
        }
        if !self.extended.is_empty() {
            assert!(
                !self.extra.iter().any(|x| x == "-E"),
                "Mke2fs: -E both in extended() and in extra() {:?}: mke2fs would keep only the last",
                self.extra
            );
            a.push("-E".into());
            a.push(self.extended.join(",").into());
        }
        a.extend(self.extra.iter().cloned());
        if let Some(t) = &self.tree {
            a.push("-d".into());
            a.push(t.clone().into());
        }
        a.push(self.img.clone().into());
        if let Some(s) = &self.fs_size {
            a.push(s.into());
        }
        a
    }

    /// The mke2fs [`Command`] (arguments and environment), for a caller that times it or
    /// runs it its own way. It does not create the file: [`size`](Mke2fs::size) is done by
    /// [`run`](Mke2fs::run) and [`try_run`](Mke2fs::try_run) only.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("mke2fs");
        cmd.args(self.args());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs mke2fs: the image path, or Err with the command line and everything mke2fs printed.
    pub fn try_run(self) -> Result<PathBuf, String> {
        if let Some(bytes) = self.size {
            fs::File::create(&self.img)
                .and_then(|f| f.set_len(bytes))
                .map_err(|e| {
                    format!("cannot create {} at {bytes} bytes: {e}", self.img.display())
                })?;
        }
        let args = self.args();
        let out = self
            .command()
            .output()
            .map_err(|e| format!("cannot run mke2fs {args:?}: {e}"))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            Ok(self.img)
        } else {
            Err(format!(
                "mke2fs {args:?} exited {}:\n{text}",
                out.status.code().unwrap_or(-1)
            ))
        }
    }

    /// Runs mke2fs and returns the image path; panics with mke2fs's output if it fails.
    pub fn run(self) -> PathBuf {
        self.try_run().unwrap_or_else(|e| panic!("{e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::Mke2fs;

    fn args(m: &Mke2fs) -> Vec<String> {
        m.args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn default_command_line_names_type_and_block_size() {
        assert_eq!(
            args(&Mke2fs::new("/x.img")),
            ["-q", "-F", "-t", "ext4", "-b", "4096", "/x.img"]
        );
    }

    #[test]
    fn every_option_lands_in_its_place_with_extended_options_joined() {
        let m = Mke2fs::new("/x.img")
            .fs_type("ext2")
            .block_size(1024)
            .features("^metadata_csum")
            .features("^64bit")
            .inode_size(128)
            .inodes(64)
            .no_lazy_init()
            .extended("nodiscard")
            .extra(&["-g", "1024"])
            .tree("/tree")
            .fs_size("16M");
        assert_eq!(
            args(&m),
            [
                "-q",
                "-F",
                "-t",
                "ext2",
                "-b",
                "1024",
                "-O",
                "^metadata_csum,^64bit",
                "-I",
                "128",
                "-N",
                "64",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
                "-g",
                "1024",
                "-d",
                "/tree",
                "/x.img",
                "16M"
            ]
        );
    }

    #[test]
    #[should_panic(expected = "-E both")]
    fn extended_options_in_two_places_panic() {
        let _ = Mke2fs::new("/x.img")
            .no_lazy_init()
            .extra(&["-E", "nodiscard"])
            .args();
    }
}
