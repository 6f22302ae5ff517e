//! Harness for the store tests: a btrfs loopback store set up through
//! `genoci setup` and always released, an overlay store whose mounts are
//! always released, and checks that a layout is valid and
//! that nothing is left mounted or attached.

use std::collections::BTreeMap;
use std::fs;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

use crate::util::{mounts_under, run_ok, Env};

/// The `SOURCE_DATE_EPOCH` of the reproducible builds.
pub const EPOCH: &str = "1700000000";

/// Skip (with a notice) where the machine cannot make a loopback btrfs.
macro_rules! require_btrfs {
    () => {
        $crate::util::require_root!();
        if !$crate::util::have("mkfs.btrfs") || !std::path::Path::new("/dev/loop-control").exists()
        {
            $crate::util::skip("needs mkfs.btrfs and loop devices");
            return;
        }
    };
}
pub(crate) use require_btrfs;

/// A test dir whose config says `driver: btrfs`, with the store set up by
/// `genoci setup`. Dropping it runs `genoci unsetup --force` and, should
/// that fail, unmounts and detaches by hand: a failing test leaves no mount
/// and no loop device behind.
pub struct Btrfs {
    env: Env,
}

impl Btrfs {
    pub fn new() -> Btrfs {
        let env = Env::new();
        env.write(
            "atom_config.yaml",
            "driver: btrfs\nlayoutdir: ./oci\nstoredir: ./.genoci\n\
             lofile: ./btrfs.img\nlosize: 256M\nbtrfsmount: ./btrfs\n",
        );
        // Made before setup runs, so that a failed setup is cleaned up too.
        let store = Btrfs { env };
        store.ok(&["setup"]);
        store
    }

    pub fn lofile(&self) -> PathBuf {
        self.path().join("btrfs.img")
    }

    pub fn mountpoint(&self) -> PathBuf {
        self.path().join("btrfs")
    }

    /// Release the store and check that nothing of it is left.
    pub fn finish(self) {
        let dir = self.path().to_path_buf();
        drop(self);
        assert_released(&dir);
    }

    fn release_by_hand(&self) {
        for mount in mounts_under(self.path()).iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(mount).status();
        }
        for device in loops_backing(&self.lofile()) {
            let _ = Command::new("losetup").arg("-d").arg(&device).status();
        }
    }
}

impl Deref for Btrfs {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

impl Drop for Btrfs {
    fn drop(&mut self) {
        let unsetup = self.env.cmd(&["unsetup", "--force"]).output();
        let clean = unsetup.is_ok_and(|o| o.status.success())
            && mounts_under(self.path()).is_empty()
            && loops_backing(&self.lofile()).is_empty();
        if !clean {
            eprintln!("unsetup left the store behind: releasing it by hand");
            self.release_by_hand();
        }
    }
}

/// A test dir whose config is `config` (by default `driver: overlay`).
/// Dropping it (its `Env`) unmounts whatever is still mounted below it (the
/// work trees of a killed build, `unpack` views): a failing test leaves no
/// mount behind.
pub struct Overlay {
    env: Env,
}

impl Overlay {
    pub fn new() -> Overlay {
        Overlay::with_config("driver: overlay\nlayoutdir: ./oci\nstoredir: ./.genoci\n")
    }

    pub fn with_config(config: &str) -> Overlay {
        let env = Env::new();
        env.write("atom_config.yaml", config);
        Overlay { env }
    }

    /// Where the overlay driver keeps `snapshots/` and `work/`.
    pub fn root(&self) -> PathBuf {
        self.path().join(".genoci/overlay")
    }
}

impl Deref for Overlay {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

/// The snapshot drivers. A driver-level test is written once, over a
/// [`Store`], and [`driver_tests!`] (or [`DRIVERS`]) runs it on each: a new
/// driver is a line here, in `DRIVERS` and in `driver_tests!`, and its arm
/// in [`Store`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Plain,
    Overlay,
    Btrfs,
}

/// Every driver, for tests that run one body on each in turn.
pub const DRIVERS: [Driver; 3] = [Driver::Plain, Driver::Overlay, Driver::Btrfs];

/// A test dir on one driver's store.
pub enum Store {
    Plain(Env),
    Overlay(Overlay),
    Btrfs(Btrfs),
}

impl Store {
    /// A test dir on `driver`'s store; `None` (after the one skip notice,
    /// a failure in strict mode) where this machine cannot have one.
    pub fn new(driver: Driver) -> Option<Store> {
        if !crate::util::nix_is_root() {
            crate::util::skip("needs root (namespaces, mounts, owners)");
            return None;
        }
        Some(match driver {
            Driver::Plain => Store::Plain(Env::new()),
            Driver::Overlay => Store::Overlay(Overlay::new()),
            Driver::Btrfs => {
                if !crate::util::have("mkfs.btrfs") || !Path::new("/dev/loop-control").exists() {
                    crate::util::skip("needs mkfs.btrfs and loop devices");
                    return None;
                }
                Store::Btrfs(Btrfs::new())
            }
        })
    }

    pub fn driver(&self) -> Driver {
        match self {
            Store::Plain(_) => Driver::Plain,
            Store::Overlay(_) => Driver::Overlay,
            Store::Btrfs(_) => Driver::Btrfs,
        }
    }

    /// Where the driver keeps `snapshots/` and `work/`.
    pub fn root(&self) -> PathBuf {
        match self {
            Store::Plain(env) => env.path().join(".genoci"),
            Store::Overlay(o) => o.root(),
            Store::Btrfs(b) => b.mountpoint(),
        }
    }

    /// The config of another project dir whose layout is its own but
    /// whose store is this one.
    pub fn sharing_config(&self) -> String {
        let first = self.path();
        match self.driver() {
            Driver::Plain | Driver::Overlay => format!(
                "driver: {}\nlayoutdir: ./oci\nstoredir: {}\n",
                if self.driver() == Driver::Plain { "plain" } else { "overlay" },
                first.join(".genoci").display()
            ),
            Driver::Btrfs => format!(
                "driver: btrfs\nlayoutdir: ./oci\nstoredir: ./.genoci\nlofile: {}\nbtrfsmount: {}\n",
                first.join("btrfs.img").display(),
                first.join("btrfs").display()
            ),
        }
    }

    /// Nothing of the store is left in use: no work tree mounted (overlay),
    /// no subvolume but the snapshots the tags reach and the empty one
    /// (btrfs; each test using it tags every prefix of its images).
    pub fn assert_nothing_leaked(&self) {
        match self {
            Store::Plain(_) => {}
            Store::Overlay(o) => {
                assert_eq!(mounts_under(&o.root().join("work")), Vec::<String>::new());
            }
            Store::Btrfs(b) => {
                let mut reached: std::collections::BTreeSet<String> = unpack_snapshots(b)
                    .values()
                    .map(|p| {
                        p.strip_prefix(b.mountpoint())
                            .unwrap()
                            .display()
                            .to_string()
                    })
                    .collect();
                reached.insert("snapshots/empty".to_string());
                let subvolumes = subvolumes(&b.mountpoint()).into_iter().collect();
                assert_eq!(reached, subvolumes, "leaked subvolumes");
            }
        }
    }

    /// Release the store and check that nothing of it is left.
    pub fn finish(self) {
        if let Store::Btrfs(b) = self {
            b.finish();
        }
    }
}

impl Deref for Store {
    type Target = Env;
    fn deref(&self) -> &Env {
        match self {
            Store::Plain(env) => env,
            Store::Overlay(o) => o,
            Store::Btrfs(b) => b,
        }
    }
}

/// Run `test` on a new store of `driver`, unless the machine cannot have one.
pub fn run_on(driver: Driver, test: fn(&Store)) {
    eprintln!("--- driver: {driver:?}");
    if let Some(store) = Store::new(driver) {
        test(&store);
        store.finish();
    }
}

/// For each `fn NAME(&Store)` given, the tests `NAME::plain`,
/// `NAME::overlay` and `NAME::btrfs`: one body, every driver.
macro_rules! driver_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use crate::stores::{run_on, Driver};
            #[test]
            fn plain() {
                run_on(Driver::Plain, super::$name)
            }
            #[test]
            fn overlay() {
                run_on(Driver::Overlay, super::$name)
            }
            #[test]
            fn btrfs() {
                run_on(Driver::Btrfs, super::$name)
            }
        }
    )*};
}
pub(crate) use driver_tests;

/// Loop devices whose backing file is `lofile` (deleted or not).
pub fn loops_backing(lofile: &Path) -> Vec<String> {
    let out = Command::new("losetup")
        .arg("-a")
        .output()
        .expect("losetup -a");
    let needle = format!("({}", lofile.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| l.split(':').next().map(str::to_string))
        .collect()
}

/// Nothing below `dir` is mounted and no loop device is backed by a file there.
pub fn assert_released(dir: &Path) {
    let mounts = mounts_under(dir);
    assert!(mounts.is_empty(), "still mounted: {mounts:?}");
    let loops = run_ok(Command::new("losetup").arg("-a"));
    assert!(
        !loops.contains(&dir.display().to_string()),
        "loop devices left: {loops}"
    );
}

/// Run genoci with extra environment variables.
pub fn genoci_env(env: &Env, vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = env.cmd(args);
    cmd.envs(vars.iter().copied());
    let out = cmd.output().expect("run genoci");
    eprintln!(
        "$ {} genoci {}\n{}{}-> {}",
        vars.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status
    );
    let epoch = vars
        .iter()
        .find(|(k, _)| *k == "SOURCE_DATE_EPOCH")
        .and_then(|(_, v)| v.parse().ok());
    env.after_command(args, epoch);
    out
}

/// A reproducible build (`SOURCE_DATE_EPOCH` set) that must succeed; returns stderr.
pub fn build_reproducibly(env: &Env, args: &[&str]) -> String {
    let out = genoci_env(env, &[("SOURCE_DATE_EPOCH", EPOCH)], args);
    assert!(out.status.success(), "genoci {args:?} failed");
    strip_ansi(&String::from_utf8_lossy(&out.stderr))
}

/// Log lines without their colours, so fields read as `name=value`.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn read_json(path: &Path) -> serde_json::Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Tag -> manifest digest, read from `index.json`.
pub fn tag_digests(layout: &Path) -> BTreeMap<String, String> {
    let index = read_json(&layout.join("index.json"));
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            (
                m["annotations"]["org.opencontainers.image.ref.name"]
                    .as_str()
                    .expect("ref name")
                    .to_string(),
                m["digest"].as_str().expect("digest").to_string(),
            )
        })
        .collect()
}

/// The layer digests of a tagged image, bottom first.
pub fn layer_digests(layout: &Path, tag: &str) -> Vec<String> {
    let digest = &tag_digests(layout)[tag];
    let manifest = read_json(&blob_path(layout, digest));
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    layout.join("blobs/sha256").join(hex)
}

/// The blob is there, with its size and digest.
fn assert_blob(layout: &Path, descriptor: &serde_json::Value) {
    let digest = descriptor["digest"].as_str().expect("digest");
    let path = blob_path(layout, digest);
    let bytes = fs::read(&path).unwrap_or_else(|e| panic!("blob {digest}: {e}"));
    assert_eq!(
        Some(bytes.len() as u64),
        descriptor["size"].as_u64(),
        "size of {digest}"
    );
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
        digest,
        "content of {}",
        path.display()
    );
}

/// umoci reads the layout, and every tag's manifest, config and layers are
/// present with the digests and sizes their descriptors give.
pub fn assert_layout_valid(env: &Env) {
    let layout = env.layout();
    run_ok(Command::new("umoci").arg("ls").arg("--layout").arg(&layout));
    let index = read_json(&layout.join("index.json"));
    for desc in index["manifests"].as_array().expect("manifests") {
        assert_blob(&layout, desc);
        let manifest = read_json(&blob_path(&layout, desc["digest"].as_str().unwrap()));
        assert_blob(&layout, &manifest["config"]);
        for layer in manifest["layers"].as_array().expect("layers") {
            assert_blob(&layout, layer);
        }
    }
}

/// The snapshot each tag's tree is in, from `genoci unpack` (`TAG: PATH`).
pub fn unpack_snapshots(env: &Env) -> BTreeMap<String, PathBuf> {
    env.ok(&["unpack"])
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(tag, path)| (tag.to_string(), PathBuf::from(path)))
        .collect()
}

/// The entries of a store's `work/` directory (work trees and their records).
pub fn work_entries(store_root: &Path) -> Vec<String> {
    let dir = store_root.join("work");
    let mut names: Vec<String> = match fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Where a store keeps work tree `name`: `work/wt-` and 32 hex digits of
/// the name's sha256, whatever the name holds.
pub fn tree_dir(store_root: &Path, name: &str) -> PathBuf {
    let hash = Sha256::digest(name.as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    store_root.join("work").join(format!("wt-{}", &hex[..32]))
}

/// The names of a store's work trees, read from their records.
pub fn work_tree_names(store_root: &Path) -> Vec<String> {
    let mut names: Vec<String> = work_entries(store_root)
        .iter()
        .filter(|e| e.starts_with("wt-") && e.ends_with(".json"))
        .filter_map(|e| {
            let record = fs::read(store_root.join("work").join(e)).ok()?;
            let record: serde_json::Value = serde_json::from_slice(&record).ok()?;
            Some(record["name"].as_str()?.to_string())
        })
        .collect();
    names.sort();
    names
}

/// The subvolumes of a mounted btrfs, by path relative to its root.
pub fn subvolumes(mountpoint: &Path) -> Vec<String> {
    let out = run_ok(
        Command::new("btrfs")
            .args(["subvolume", "list"])
            .arg(mountpoint),
    );
    let mut paths: Vec<String> = out
        .lines()
        .filter_map(|l| l.split(" path ").nth(1))
        .map(str::to_string)
        .collect();
    paths.sort();
    paths
}
