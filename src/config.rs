//! Configuration: `--config FILE`, else `./atom_config.yaml`, else
//! `~/.config/atom/config.yaml`; command-line flags win over the file.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriverKind {
    #[default]
    Plain,
    Btrfs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub driver: DriverKind,
    pub layoutdir: PathBuf,
    pub lofile: PathBuf,
    /// Bytes.
    pub losize: u64,
    pub btrfsmount: PathBuf,
    pub storedir: PathBuf,
    pub compression: Compression,
    /// The file the values came from, if any.
    pub source: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            driver: DriverKind::Plain,
            layoutdir: PathBuf::from("./oci"),
            lofile: PathBuf::from("./btrfs.img"),
            losize: 20 << 30,
            btrfsmount: PathBuf::from("./btrfs"),
            storedir: PathBuf::from("./.genoci"),
            compression: Compression::Gzip,
            source: None,
        }
    }
}

/// Values given on the command line; each one set wins over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub driver: Option<DriverKind>,
    pub layoutdir: Option<PathBuf>,
    pub storedir: Option<PathBuf>,
    pub compression: Option<Compression>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: key {key}: {message}")]
    Key {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// Find and read the config file (`explicit` first), apply `overrides`,
    /// and make relative paths absolute against the current directory.
    pub fn load(explicit: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let _ = (explicit, overrides);
        todo!()
    }
}
