//! The `mke2fs` options `mkfs` and `build` share: -N, -i, -I, -m, -O, -E, parsed and checked
//! before anything is written.

use anyhow::{Result, bail};

/// `mke2fs`-style geometry options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MkeArgs {
    /// Number of inodes (as mke2fs -N; rounded up to fill inode table blocks).
    #[arg(short = 'N', value_name = "INODES")]
    pub inodes: Option<u32>,
    /// Bytes per inode (as mke2fs -i; default: mke2fs.conf's ratio for the size).
    #[arg(short = 'i', value_name = "BYTES")]
    pub inode_ratio: Option<u64>,
    /// Inode size in bytes: 256 (default), 512, 1024, ... up to the block size (as mke2fs -I).
    #[arg(short = 'I', value_name = "BYTES")]
    pub inode_size: Option<u16>,
    /// Percent of blocks reserved for root, 0 to 50 (as mke2fs -m; default 5).
    #[arg(short = 'm', value_name = "PERCENT")]
    pub reserved: Option<String>,
    /// Features (as mke2fs -O): the mkfs.ext4 defaults ext4kit makes are accepted, as is
    /// ^resize_inode; others are refused.
    #[arg(short = 'O', value_name = "FEATURES")]
    pub features: Vec<String>,
    /// Extended options (as mke2fs -E): hash_seed=UUID, lazy_itable_init=0|1,
    /// assume_storage_prezeroed=0|1, discard, nodiscard (the last four change nothing here).
    #[arg(short = 'E', value_name = "OPTIONS")]
    pub extended: Vec<String>,
}

/// The features ext4kit's mkfs writes (mkfs.ext4 1.47's defaults without resize_inode).
const MADE: &[&str] = &[
    "has_journal",
    "ext_attr",
    "dir_index",
    "filetype",
    "extent",
    "extents",
    "64bit",
    "flex_bg",
    "sparse_super",
    "large_file",
    "huge_file",
    "dir_nlink",
    "extra_isize",
    "metadata_csum",
];

/// The checked values.
#[derive(Debug, Clone, Default)]
pub struct MkeValues {
    pub inode_count: Option<u32>,
    pub inode_ratio: Option<u64>,
    pub inode_size: Option<u16>,
    pub reserved_percent: Option<u8>,
    pub hash_seed: Option<[u8; 16]>,
}

impl MkeArgs {
    /// Checks every option; an error names the option.
    pub fn check(&self) -> Result<MkeValues> {
        let mut v = MkeValues {
            inode_count: self.inodes,
            inode_ratio: self.inode_ratio,
            inode_size: self.inode_size,
            ..MkeValues::default()
        };
        if let Some(r) = self.inode_ratio {
            if !(1024..=65536 * 1024).contains(&r) {
                bail!("-i {r}: bytes per inode must be from 1024 to 67108864");
            }
        }
        if let Some(m) = &self.reserved {
            let p: f64 = m
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("-m {m}: not a percentage"))?;
            if !(0.0..=50.0).contains(&p) || p.fract() != 0.0 {
                bail!("-m {m}: the reserved percentage must be a whole number from 0 to 50");
            }
            v.reserved_percent = Some(p as u8);
        }
        for list in &self.features {
            for f in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                let (off, name) = match f.strip_prefix('^') {
                    Some(n) => (true, n),
                    None => (false, f),
                };
                let ok = if off {
                    name == "resize_inode"
                } else {
                    MADE.contains(&name)
                };
                if !ok {
                    bail!(
                        "-O {f}: not supported: ext4kit makes exactly the features {} (no resize_inode)",
                        MADE.iter()
                            .filter(|n| **n != "extents")
                            .copied()
                            .collect::<Vec<_>>()
                            .join(",")
                    );
                }
            }
        }
        for list in &self.extended {
            for e in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let (k, val) = e.split_once('=').map_or((e, None), |(k, v)| (k, Some(v)));
                match (k, val) {
                    ("hash_seed", Some(u)) => v.hash_seed = Some(crate::write_cmds::parse_uuid(u)?),
                    ("lazy_itable_init" | "assume_storage_prezeroed", Some("0" | "1")) => {}
                    ("discard" | "nodiscard", None) => {}
                    _ => bail!(
                        "-E {e}: not supported (ext4kit takes hash_seed=UUID, lazy_itable_init=0|1, assume_storage_prezeroed=0|1, discard, nodiscard)"
                    ),
                }
            }
        }
        Ok(v)
    }
}
