//! Configuration: `--config FILE`, else `./atom_config.yaml`, else
//! `~/.config/atom/config.yaml`; command-line flags win over the file.

use std::path::{Path, PathBuf};

use crate::io_error::IoError;
use crate::layout::Compression;

/// The subvolume genoci makes for its store in `btrfsmount` with
/// `lofile: none`; `unsetup` deletes it and nothing else.
pub const BTRFS_STORE: &str = "genoci-store";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriverKind {
    /// No `driver` given: `overlay` where the kernel and the store's
    /// filesystem allow it, else `plain` (decided when the store is opened).
    #[default]
    Auto,
    Plain,
    Overlay,
    Btrfs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub driver: DriverKind,
    pub layoutdir: PathBuf,
    /// The btrfs loopback file; `None` (`lofile: none`): no loopback, the
    /// store is a subvolume on the btrfs filesystem `btrfsmount` is part of.
    pub lofile: Option<PathBuf>,
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
            driver: DriverKind::Auto,
            layoutdir: PathBuf::from("./oci"),
            lofile: Some(PathBuf::from("./btrfs.img")),
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
    #[error(transparent)]
    Io(#[from] IoError),
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
        let cwd =
            std::env::current_dir().map_err(IoError::at("find the current directory", "."))?;
        let home = directories::BaseDirs::new().map(|d| d.home_dir().to_path_buf());
        Config::load_in(explicit, overrides, &cwd, home.as_deref())
    }

    /// [`Config::load`] with the current and home directories given, so
    /// that lookups can be tested without touching the process's own.
    fn load_in(
        explicit: Option<&Path>,
        overrides: &Overrides,
        cwd: &Path,
        home: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let source = match explicit {
            Some(path) => Some(absolute(cwd, path)),
            None => [
                Some(cwd.join("atom_config.yaml")),
                home.map(|h| h.join(".config/atom/config.yaml")),
            ]
            .into_iter()
            .flatten()
            // Present but unreadable is an error below, not a reason to
            // fall back silently to the next place.
            .find(|p| p.exists()),
        };

        let mut config = Config::default();
        if let Some(path) = &source {
            let text = std::fs::read_to_string(path).map_err(IoError::at("read", path))?;
            config.apply_file(path, &text)?;
        }

        let o = overrides.clone();
        config.driver = o.driver.unwrap_or(config.driver);
        config.layoutdir = o.layoutdir.unwrap_or(config.layoutdir);
        config.storedir = o.storedir.unwrap_or(config.storedir);
        config.compression = o.compression.unwrap_or(config.compression);

        for path in [
            &mut config.layoutdir,
            &mut config.btrfsmount,
            &mut config.storedir,
        ]
        .into_iter()
        .chain(config.lofile.as_mut())
        {
            *path = absolute(cwd, path);
        }
        config.source = source;
        if config.driver == DriverKind::Btrfs && config.lofile.is_none() {
            config.check_existing_btrfs()?;
        }
        tracing::debug!(
            source = ?config.source,
            driver = ?config.driver,
            layoutdir = %config.layoutdir.display(),
            "configuration loaded"
        );
        Ok(config)
    }

    fn apply_file(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let doc: yaml_serde::Value =
            yaml_serde::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let map = match doc {
            yaml_serde::Value::Null => return Ok(()),
            yaml_serde::Value::Mapping(map) => map,
            _ => {
                return Err(ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: "the config must be a mapping of keys to values".into(),
                })
            }
        };
        for (key, value) in &map {
            let key = match key {
                yaml_serde::Value::String(k) => k.as_str(),
                other => {
                    return Err(ConfigError::Parse {
                        path: path.to_path_buf(),
                        message: format!("key {other:?} is not a string"),
                    })
                }
            };
            self.apply_key(key, value)
                .map_err(|message| ConfigError::Key {
                    path: path.to_path_buf(),
                    key: key.to_owned(),
                    message,
                })?;
        }
        // Checked once every key is read, whatever their order.
        if self.lofile.is_none() && map.contains_key("losize") {
            return Err(ConfigError::Key {
                path: path.to_path_buf(),
                key: "losize".into(),
                message: "it sizes the loopback file, and `lofile: none` has none: \
                          remove one of the two keys"
                    .into(),
            });
        }
        Ok(())
    }

    /// The directory of the btrfs store: `btrfsmount` itself on the
    /// loopback filesystem, else genoci's subvolume [`BTRFS_STORE`] in it.
    pub fn btrfs_store(&self) -> PathBuf {
        match self.lofile {
            Some(_) => self.btrfsmount.clone(),
            None => self.btrfsmount.join(BTRFS_STORE),
        }
    }

    /// With `lofile: none`, `btrfsmount` must be a directory of a mounted
    /// btrfs filesystem: said here, as a config error, rather than later
    /// as a failed subvolume call.
    fn check_existing_btrfs(&self) -> Result<(), ConfigError> {
        let dir = &self.btrfsmount;
        let wrong = |message: String| ConfigError::Key {
            path: self.source.clone().unwrap_or_default(),
            key: "btrfsmount".into(),
            message,
        };
        let meta = std::fs::metadata(dir).map_err(|e| {
            wrong(format!(
                "{}: {e}; with `lofile: none` it must be a directory of a mounted btrfs filesystem",
                dir.display()
            ))
        })?;
        if !meta.is_dir() {
            return Err(wrong(format!("{} is not a directory", dir.display())));
        }
        let fs_type = crate::mountinfo::fs_type(dir)
            .map_err(|e| wrong(format!("finding the filesystem of {}: {e}", dir.display())))?;
        if fs_type.as_deref() != Some("btrfs") {
            return Err(wrong(format!(
                "{} is on {}, not btrfs: `lofile: none` stores subvolumes on an existing btrfs \
                 filesystem (give a directory of one, or a loopback `lofile`)",
                dir.display(),
                fs_type.as_deref().unwrap_or("an unknown filesystem")
            )));
        }
        Ok(())
    }

    fn apply_key(&mut self, key: &str, value: &yaml_serde::Value) -> Result<(), String> {
        // Compact JSON shows any YAML value on one line.
        let shown = || serde_json::to_string(value).unwrap_or_else(|_| format!("{value:?}"));
        let text = || match value {
            yaml_serde::Value::String(s) if !s.is_empty() => Ok(s.as_str()),
            _ => Err(format!("expected a non-empty string, got {}", shown())),
        };
        match key {
            "driver" => {
                self.driver = match text()? {
                    "plain" => DriverKind::Plain,
                    "overlay" => DriverKind::Overlay,
                    "btrfs" => DriverKind::Btrfs,
                    other => {
                        return Err(format!("expected plain, overlay or btrfs, got {other:?}"))
                    }
                }
            }
            "compression" => {
                let text = text()?;
                self.compression = clap::ValueEnum::from_str(text, false)
                    .map_err(|_| format!("expected gzip or zstd, got {text:?}"))?;
            }
            "losize" => {
                self.losize = match value {
                    yaml_serde::Value::Number(n) => parse_size(&n.to_string())?,
                    yaml_serde::Value::String(s) => parse_size(s)?,
                    _ => return Err(format!("expected a size like 20G, got {}", shown())),
                }
            }
            "layoutdir" => self.layoutdir = PathBuf::from(text()?),
            "lofile" => {
                self.lofile = match text()? {
                    "none" => None,
                    file => Some(PathBuf::from(file)),
                }
            }
            "btrfsmount" => self.btrfsmount = PathBuf::from(text()?),
            "storedir" => self.storedir = PathBuf::from(text()?),
            _ => {
                return Err(
                    "unknown key; known keys: driver, layoutdir, lofile, losize, \
                     btrfsmount, storedir, compression"
                        .into(),
                )
            }
        }
        Ok(())
    }
}

/// `path` against `cwd`, with `.` components dropped (`./oci` → `CWD/oci`).
fn absolute(cwd: &Path, path: &Path) -> PathBuf {
    cwd.join(path)
        .components()
        .filter(|c| *c != std::path::Component::CurDir)
        .collect()
}

/// A size in bytes: plain, or with a binary unit `K`, `M`, `G`, `T`.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let invalid =
        || format!("invalid size {text:?}: expected a number with an optional K, M, G or T");
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(invalid()),
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(invalid)?;
    if bytes == 0 {
        return Err("the size must not be zero".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    /// A current directory and a home directory, each a temp dir.
    struct Dirs {
        cwd: tempfile::TempDir,
        home: tempfile::TempDir,
    }

    impl Dirs {
        fn new() -> Self {
            Dirs {
                cwd: tempfile::tempdir().unwrap(),
                home: tempfile::tempdir().unwrap(),
            }
        }

        fn write(&self, path: PathBuf, text: &str) -> PathBuf {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            path
        }

        fn cwd_file(&self, text: &str) -> PathBuf {
            self.write(self.cwd.path().join("atom_config.yaml"), text)
        }

        fn home_file(&self, text: &str) -> PathBuf {
            self.write(self.home.path().join(".config/atom/config.yaml"), text)
        }

        fn load(
            &self,
            explicit: Option<&Path>,
            overrides: &Overrides,
        ) -> Result<Config, ConfigError> {
            Config::load_in(explicit, overrides, self.cwd.path(), Some(self.home.path()))
        }
    }

    #[test]
    fn defaults_are_absolute_against_the_cwd() {
        let dirs = Dirs::new();
        let config = dirs.load(None, &Overrides::default()).unwrap();
        let cwd = dirs.cwd.path();
        assert_eq!(
            config,
            Config {
                layoutdir: cwd.join("oci"),
                lofile: Some(cwd.join("btrfs.img")),
                btrfsmount: cwd.join("btrfs"),
                storedir: cwd.join(".genoci"),
                ..Config::default()
            }
        );
        assert_eq!(config.losize, 20 << 30);
    }

    #[test]
    fn every_key_is_read() {
        let dirs = Dirs::new();
        let file = dirs.cwd_file(
            "driver: btrfs\nlayoutdir: /srv/oci\nlofile: img/b.img\nlosize: 512M\n\
             btrfsmount: ./mnt\nstoredir: ../store\ncompression: zstd\n",
        );
        let config = dirs.load(None, &Overrides::default()).unwrap();
        let cwd = dirs.cwd.path();
        assert_eq!(
            config,
            Config {
                driver: DriverKind::Btrfs,
                layoutdir: "/srv/oci".into(),
                lofile: Some(cwd.join("img/b.img")),
                losize: 512 << 20,
                btrfsmount: cwd.join("mnt"),
                storedir: cwd.join("../store"),
                compression: Compression::Zstd,
                source: Some(file),
            }
        );
    }

    #[rstest]
    #[case::bytes("losize: 4096", 4096)]
    #[case::bytes_as_text("losize: '4096'", 4096)]
    #[case::kilo("losize: 100K", 100 << 10)]
    #[case::mega("losize: 512M", 512 << 20)]
    #[case::giga("losize: 20G", 20 << 30)]
    #[case::tera("losize: 1T", 1 << 40)]
    #[case::lower_case("losize: 2g", 2 << 30)]
    fn losize_units(#[case] yaml: &str, #[case] bytes: u64) {
        let dirs = Dirs::new();
        dirs.cwd_file(yaml);
        assert_eq!(
            dirs.load(None, &Overrides::default()).unwrap().losize,
            bytes
        );
    }

    #[rstest]
    #[case::bad_driver("driver: zfs", "driver", "expected plain, overlay or btrfs")]
    #[case::driver_not_text("driver: 1", "driver", "expected a non-empty string")]
    #[case::bad_compression("compression: xz", "compression", "expected gzip or zstd")]
    #[case::unknown_key("layoutdir: x\nlayout: y", "layout", "unknown key")]
    #[case::empty_path("storedir: ''", "storedir", "expected a non-empty string")]
    #[case::size_unit("losize: 20GB", "losize", "invalid size")]
    #[case::size_overflow("losize: 99999999999T", "losize", "invalid size")]
    #[case::size_zero("losize: 0", "losize", "must not be zero")]
    #[case::size_negative("losize: -1", "losize", "invalid size")]
    #[case::size_list("losize: [1]", "losize", "expected a size like 20G, got [1]")]
    #[case::size_without_lofile("lofile: none\nlosize: 1G", "losize", "remove one")]
    #[case::size_before_no_lofile("losize: 1G\nlofile: none", "losize", "`lofile: none`")]
    #[case::existing_not_btrfs(
        "driver: btrfs\nlofile: none\nbtrfsmount: /proc",
        "btrfsmount",
        "/proc is on proc, not btrfs"
    )]
    #[case::existing_missing(
        "driver: btrfs\nlofile: none\nbtrfsmount: /nonexistent/genoci",
        "btrfsmount",
        "a directory of a mounted btrfs filesystem"
    )]
    #[case::existing_a_file(
        "driver: btrfs\nlofile: none\nbtrfsmount: /proc/self/status",
        "btrfsmount",
        "is not a directory"
    )]
    fn bad_keys_name_file_and_key(#[case] yaml: &str, #[case] key: &str, #[case] message: &str) {
        let dirs = Dirs::new();
        let file = dirs.cwd_file(yaml);
        let e = dirs.load(None, &Overrides::default()).unwrap_err();
        let text = e.to_string();
        match e {
            ConfigError::Key { path, key: k, .. } => {
                assert_eq!((path, k.as_str()), (file.clone(), key))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            text.starts_with(&format!("{}: key {key}: ", file.display())),
            "{text}"
        );
        assert!(text.contains(message), "{text}");
    }

    #[rstest]
    #[case::syntax("driver: [plain")]
    #[case::not_a_mapping("- driver")]
    fn unparsable_files_name_the_file(#[case] yaml: &str) {
        let dirs = Dirs::new();
        let file = dirs.cwd_file(yaml);
        match dirs.load(None, &Overrides::default()).unwrap_err() {
            ConfigError::Parse { path, .. } => assert_eq!(path, file),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lofile_none_puts_the_store_in_a_subvolume_of_btrfsmount() {
        let dirs = Dirs::new();
        dirs.cwd_file("lofile: none\nbtrfsmount: ./fs/builds\n");
        let config = dirs.load(None, &Overrides::default()).unwrap();
        assert_eq!(config.lofile, None);
        let mnt = dirs.cwd.path().join("fs/builds");
        assert_eq!(config.btrfs_store(), mnt.join(BTRFS_STORE));
        // The loopback store is the mount itself.
        assert_eq!(Config::default().btrfs_store(), PathBuf::from("./btrfs"));
    }

    #[test]
    fn the_filesystem_check_waits_for_the_btrfs_driver() {
        let dirs = Dirs::new();
        // A plain build with a btrfs-on-ext4 config left in place loads...
        dirs.cwd_file("driver: plain\nlofile: none\nbtrfsmount: /proc\n");
        dirs.load(None, &Overrides::default()).unwrap();
        // ...and `--driver btrfs` on it is refused.
        let btrfs = Overrides {
            driver: Some(DriverKind::Btrfs),
            ..Overrides::default()
        };
        let e = dirs.load(None, &btrfs).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Key { key, .. } if key == "btrfsmount"),
            "{e:?}"
        );
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let dirs = Dirs::new();
        let file = dirs.cwd_file("# nothing yet\n");
        let config = dirs.load(None, &Overrides::default()).unwrap();
        assert_eq!(config.source, Some(file));
        assert_eq!(config.driver, DriverKind::Auto);
    }

    #[test]
    fn each_driver_is_named_by_its_key() {
        let dirs = Dirs::new();
        for (text, kind) in [
            ("plain", DriverKind::Plain),
            ("overlay", DriverKind::Overlay),
            ("btrfs", DriverKind::Btrfs),
        ] {
            dirs.cwd_file(&format!("driver: {text}"));
            let config = dirs.load(None, &Overrides::default()).unwrap();
            assert_eq!(config.driver, kind);
        }
    }

    #[test]
    fn an_explicit_missing_file_is_an_error() {
        let dirs = Dirs::new();
        dirs.cwd_file("driver: btrfs");
        let e = dirs
            .load(Some(Path::new("nope.yaml")), &Overrides::default())
            .unwrap_err();
        let missing = dirs.cwd.path().join("nope.yaml");
        assert!(
            matches!(&e, ConfigError::Io(IoError { path, .. }) if *path == missing),
            "{e:?}"
        );
        let chain = crate::error_chain(&e);
        assert!(
            chain.starts_with(&format!("read {}: ", missing.display())),
            "{chain}"
        );
    }

    #[test]
    fn lookup_order_is_explicit_then_cwd_then_home() {
        let dirs = Dirs::new();
        let home = dirs.home_file("layoutdir: /from/home");
        assert_eq!(
            dirs.load(None, &Overrides::default()).unwrap().source,
            Some(home)
        );

        let cwd = dirs.cwd_file("layoutdir: /from/cwd");
        let config = dirs.load(None, &Overrides::default()).unwrap();
        assert_eq!(
            (config.source, config.layoutdir),
            (Some(cwd), "/from/cwd".into())
        );

        let explicit = dirs.write(dirs.cwd.path().join("other.yaml"), "layoutdir: /explicit");
        let config = dirs.load(Some(&explicit), &Overrides::default()).unwrap();
        assert_eq!(
            (config.source, config.layoutdir),
            (Some(explicit), "/explicit".into())
        );
    }

    #[test]
    fn overrides_win_over_the_file() {
        let dirs = Dirs::new();
        dirs.cwd_file("driver: btrfs\nlayoutdir: /file/oci\nstoredir: /file/store\ncompression: zstd\nlosize: 1G\n");
        let overrides = Overrides {
            driver: Some(DriverKind::Plain),
            layoutdir: Some("rel/oci".into()),
            storedir: Some("/flag/store".into()),
            compression: Some(Compression::Gzip),
        };
        let config = dirs.load(None, &overrides).unwrap();
        assert_eq!(config.driver, DriverKind::Plain);
        assert_eq!(config.layoutdir, dirs.cwd.path().join("rel/oci"));
        assert_eq!(config.storedir, PathBuf::from("/flag/store"));
        assert_eq!(config.compression, Compression::Gzip);
        // Keys with no flag keep the file's value.
        assert_eq!(config.losize, 1 << 30);
    }

    #[test]
    fn load_uses_the_process_cwd() {
        let dirs = Dirs::new();
        let file = dirs.write(
            dirs.cwd.path().join("c.yaml"),
            "driver: btrfs\nlofile: /x/b.img",
        );
        let config = Config::load(Some(&file), &Overrides::default()).unwrap();
        assert_eq!(config.driver, DriverKind::Btrfs);
        assert_eq!(config.lofile, Some(PathBuf::from("/x/b.img")));
        assert_eq!(
            config.layoutdir,
            std::env::current_dir().unwrap().join("oci")
        );
    }
}
