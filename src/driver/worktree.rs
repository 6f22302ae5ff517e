//! Work-tree bookkeeping shared by every driver: where a tree and its record
//! live in the store's `work` dir, what the record says (the name, the base,
//! the [`Owner`]: a running process, or a layout's checkout with its note),
//! listing, and which trees were left behind ([`Owner::is_abandoned`]).
//!
//! ```text
//! work/wt-<hash>.json   the record: the tree's name, base and owner
//! work/wt-<hash>        the tree (a directory, a subvolume, an overlay's dirs)
//! ```
//!
//! A tree's name is any text its owner chooses (`build-<pid>-<target>` holds
//! a tag, up to 128 characters of `[A-Za-z0-9._-]`); its store name is a
//! fixed prefix and a hash of it, so it is bounded in length and can never
//! be one of the store's own files (`x.json`, `inodes`, a snapshot name, a
//! staging name). The record holds the name itself, so listing gives it back.
//!
//! The record is written first, atomically and exclusively (a complete
//! temporary file linked into place): a tree is never without one saying
//! whose it is, and two checkouts of one name cannot both win. A driver
//! keeps only what really differs: how a tree is made, how its changes are
//! found, how it is frozen.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ChainId, DriverError, Result, WorkTree};

/// What every store name of a work tree starts with: no store file or
/// snapshot name does.
const PREFIX: &str = "wt-";
/// Hex digits of the name's hash kept: 128 bits, no collision in practice.
const HASH_HEX: usize = 32;

/// What the temporary file of a record being written starts with, followed
/// by its writer's pid and start time.
const TEMP_PREFIX: &str = ".record-";

/// The process writing the temporary record `file`, if it is one.
fn temp_record_owner(file: &str) -> Option<Process> {
    let mut fields = file.strip_prefix(TEMP_PREFIX)?.split('-');
    let pid = fields.next()?.parse().ok()?;
    let start = fields.next()?.parse().ok()?;
    Some(Process { pid, start })
}

/// The store name of work tree `name`: `wt-` and 32 hex digits.
pub fn store_name(name: &str) -> String {
    let hash = Sha256::digest(name.as_bytes());
    format!("{PREFIX}{}", &hex::encode(hash)[..HASH_HEX])
}

/// Whether `file` (an entry of a `work` dir) is the store name of a tree.
fn is_store_name(file: &str) -> bool {
    file.strip_prefix(PREFIX)
        .is_some_and(|h| h.len() == HASH_HEX && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Who a work tree belongs to, kept in its record in the store: several
/// genoci processes, for several layouts, may share one store (two project
/// directories naming the same btrfs filesystem).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The process working in the tree. A tree whose process is gone was
    /// left by a killed run; one whose process lives is never removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// The layout (its absolute path) a checkout kept between commands
    /// belongs to; only commands on that layout touch it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// What the owner keeps with the tree (a checkout's image), so that the
    /// record and the tree cannot part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<serde_json::Value>,
}

/// A process, told apart from a later one with the same pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat`: clock ticks after boot.
    pub start: u64,
}

impl Process {
    /// This process.
    pub fn current() -> Process {
        let pid = std::process::id();
        Process {
            pid,
            start: process_start(pid).unwrap_or(0),
        }
    }

    /// Whether this process still runs (a reused pid is another process).
    pub fn is_alive(&self) -> bool {
        process_start(self.pid) == Some(self.start)
    }
}

/// The start time of `pid`, if it runs (a zombie has stopped for good).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count
    // fields from the last `)`: the state is field 3, the start time 22.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

impl Owner {
    /// The checkout `layout` (its absolute path) keeps between commands,
    /// with the owner's `note` of what it holds.
    pub fn layout_checkout(layout: String, note: serde_json::Value) -> Owner {
        Owner {
            process: None,
            layout: Some(layout),
            note: Some(note),
        }
    }

    /// A tree worked in by this process for as long as it runs.
    pub fn this_process() -> Owner {
        Owner {
            process: Some(Process::current()),
            ..Owner::default()
        }
    }

    /// Whether a tree so owned was left behind by a process that is gone
    /// (or by a genoci that recorded no owner, which made trees for one
    /// command only).
    pub fn is_abandoned(&self) -> bool {
        match &self.process {
            Some(p) => !p.is_alive(),
            None => self.layout.is_none(),
        }
    }
}

/// The name of the checkout a layout (its absolute path) keeps in a store
/// between commands: one per layout, so that layouts sharing a store never
/// meet in one tree.
pub fn checkout_name(layout: &str) -> String {
    let hash = Sha256::digest(layout.as_bytes());
    format!("checkout-{}", &hex::encode(hash)[..16])
}

/// What the store keeps beside each work tree.
#[derive(Serialize, Deserialize)]
struct Record {
    name: String,
    /// The base's ChainID (`sha256:…`, or `empty`).
    base: String,
    #[serde(default)]
    owner: Owner,
}

/// A record as the previous store format wrote it (`work/NAME.json`, the
/// base as `sha256:…` or bare hex, no name).
#[derive(Deserialize)]
struct LegacyRecord {
    base: String,
    #[serde(default)]
    owner: Owner,
}

/// The base of a record: `sha256:…`, bare hex (older stores) or `empty`.
fn parse_base(text: &str) -> Option<ChainId> {
    ChainId::from_store_name(text.strip_prefix("sha256:").unwrap_or(text))
}

/// The work trees of one store: the records and trees in its `work` dir.
#[derive(Debug, Clone)]
pub struct Trees {
    dir: PathBuf,
}

impl Trees {
    /// The trees in `dir` (the store's `work` dir, which must exist).
    pub fn new(dir: PathBuf) -> Trees {
        Trees { dir }
    }

    /// Where tree `name` (or whatever a driver keeps for it) lives.
    pub fn dir_of(&self, name: &str) -> PathBuf {
        self.dir.join(store_name(name))
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.json", store_name(name)))
    }

    /// Record tree `name` as checked out of `base` by `owner`, before the
    /// tree is made. Fails with [`DriverError::Busy`] if the name is taken.
    pub fn create(&self, name: &str, base: &ChainId, owner: &Owner) -> Result<()> {
        if name.is_empty() {
            return Err(DriverError::UnsafePath(
                self.dir.clone(),
                "a work tree needs a name".into(),
            ));
        }
        let record = Record {
            name: name.to_string(),
            base: base.to_string(),
            owner: owner.clone(),
        };
        let bytes = serde_json::to_vec(&record).expect("a record always serializes");
        let path = self.record_path(name);
        // The temp name says whose it is, so that a listing can remove one
        // that a killed process left.
        let me = Process::current();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{TEMP_PREFIX}{}-{}-", me.pid, me.start))
            .tempfile_in(&self.dir)
            .map_err(DriverError::io("create a file in", &self.dir))?;
        fs::write(tmp.path(), bytes).map_err(DriverError::io("write", tmp.path()))?;
        // A link, unlike a rename, fails when the record exists: the first
        // checkout of a name wins and the record is never seen half-written.
        match fs::hard_link(tmp.path(), &path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(DriverError::Busy(name.to_string()))
            }
            Err(e) => Err(DriverError::io("write", &path)(e)),
        }
    }

    /// Forget tree `name`, once the tree itself is gone.
    pub fn remove(&self, name: &str) -> Result<()> {
        remove_file_if_present(&self.record_path(name))
    }

    /// Every work tree, sorted by name; `path` gives a tree's root from its
    /// store dir. Other processes may share the store: the listing is a
    /// moment's view, and a record removed meanwhile is left out.
    pub fn list(&self, path: impl Fn(&Path) -> PathBuf) -> Result<Vec<WorkTree>> {
        let mut trees = Vec::new();
        for file in self.entries()? {
            if let Some(owner) = temp_record_owner(&file) {
                if !owner.is_alive() {
                    remove_file_if_present(&self.dir.join(&file))?;
                }
                continue;
            }
            let Some(stem) = file.strip_suffix(".json").filter(|s| is_store_name(s)) else {
                continue;
            };
            let record_path = self.dir.join(&file);
            let bytes = match fs::read(&record_path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(DriverError::io("read", &record_path)(e)),
            };
            let bad = |why: String| DriverError::Record(record_path.clone(), why);
            let record: Record = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
            let base = parse_base(&record.base)
                .ok_or_else(|| bad(format!("{} is not a chain id", record.base)))?;
            if store_name(&record.name) != stem {
                return Err(bad(format!("it names {:?}, another tree", record.name)));
            }
            trees.push(WorkTree {
                path: path(&self.dir.join(stem)),
                name: record.name,
                base,
                owner: record.owner,
            });
        }
        trees.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(trees)
    }

    /// The names in the `work` dir.
    fn entries(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in
            fs::read_dir(&self.dir).map_err(DriverError::io("read directory", &self.dir))?
        {
            let entry = entry.map_err(DriverError::io("read directory", &self.dir))?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Trees the previous store format kept under their own names
    /// (`work/NAME` and `work/NAME.json`). Run when the store is opened,
    /// under its lock: each is handed to `adopt` (a layout's checkout,
    /// which must outlive the upgrade) or `remove` (left by a process that
    /// is gone) by what its record says; a tree of a process still running
    /// is its own and stays. Neither may fail the command: what cannot be
    /// done is said and left.
    pub fn retire_legacy(
        &self,
        adopt: impl Fn(&Path, &Path) -> Result<()>,
        remove: impl Fn(&Path) -> Result<()>,
    ) -> Result<()> {
        for legacy in self.legacy()? {
            let outcome = match &legacy.record {
                Some(r) if r.owner.layout.is_some() && r.owner.process.is_none() => {
                    self.adopt(&legacy, r, &adopt)
                }
                Some(r) if !r.owner.is_abandoned() => continue,
                // The checkout of a genoci older still, which recorded no
                // owner: its edits are the user's.
                Some(_) if legacy.name == "checkout" => continue,
                _ => {
                    remove(&legacy.tree).and_then(|()| remove_file_if_present(&legacy.record_path))
                }
            };
            if let Err(e) = outcome {
                tracing::warn!(tree = %legacy.tree.display(), error = %e, "left as it is: a work tree of an older genoci");
            }
        }
        Ok(())
    }

    /// Move a legacy tree to its store name: the record first (as for any
    /// new tree), then the tree, then the old record goes.
    fn adopt(
        &self,
        legacy: &Legacy,
        record: &LegacyRecord,
        adopt: &impl Fn(&Path, &Path) -> Result<()>,
    ) -> Result<()> {
        let base = parse_base(&record.base).ok_or_else(|| {
            DriverError::Record(
                legacy.record_path.clone(),
                format!("{} is not a chain id", record.base),
            )
        })?;
        match self.create(&legacy.name, &base, &record.owner) {
            // A move killed half-way: the new record is there already.
            Ok(()) | Err(DriverError::Busy(_)) => {}
            Err(e) => return Err(e),
        }
        let dest = self.dir_of(&legacy.name);
        if legacy.tree.exists() {
            adopt(&legacy.tree, &dest)?;
        }
        tracing::info!(tree = %legacy.name, "moved a checkout to the store's current format");
        remove_file_if_present(&legacy.record_path)
    }

    /// The entries of the previous format: records and trees whose names
    /// are not store names (nor hidden: temporary files, staging).
    fn legacy(&self) -> Result<Vec<Legacy>> {
        let mut names = std::collections::BTreeSet::new();
        for file in self.entries()? {
            let stem = file.strip_suffix(".json").unwrap_or(&file);
            if !stem.starts_with('.') && !is_store_name(stem) && !stem.is_empty() {
                names.insert(stem.to_string());
            }
        }
        Ok(names
            .into_iter()
            .map(|name| {
                let record_path = self.dir.join(format!("{name}.json"));
                let record = fs::read(&record_path)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                Legacy {
                    tree: self.dir.join(&name),
                    record_path,
                    record,
                    name,
                }
            })
            .collect())
    }
}

/// A tree of the previous store format.
struct Legacy {
    name: String,
    tree: PathBuf,
    record_path: PathBuf,
    /// `None` for a tree whose checkout never finished (or an unreadable record).
    record: Option<LegacyRecord>,
}

pub(super) fn remove_file_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(DriverError::io("remove", path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_chain(byte: u8) -> ChainId {
        ChainId::of(&[format!("sha256:{}", format!("{byte:02x}").repeat(32))])
    }

    #[test]
    fn a_process_is_alive_while_it_runs_and_not_after() {
        let me = Process::current();
        assert!(me.start > 0);
        assert!(me.is_alive());
        assert!(
            !Process {
                start: me.start + 1,
                ..me
            }
            .is_alive(),
            "a reused pid"
        );
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = process_start(pid).expect("a running child has a start time");
        assert!(Process { pid, start }.is_alive());
        // Ended but not reaped yet: a zombie is not alive.
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert!(!Process { pid, start }.is_alive());
        child.wait().unwrap();
        assert!(!Process { pid, start }.is_alive());
        assert!(!Owner::this_process().is_abandoned());
        assert!(Owner::default().is_abandoned());
        let checkout = Owner {
            layout: Some("/l".into()),
            ..Owner::default()
        };
        assert!(!checkout.is_abandoned());
    }

    #[test]
    fn each_layout_has_a_checkout_name_of_its_own() {
        let a = checkout_name("/srv/a/oci");
        assert_eq!(a, checkout_name("/srv/a/oci"));
        assert_ne!(a, checkout_name("/srv/b/oci"));
        assert!(a.starts_with("checkout-") && a.len() == "checkout-".len() + 16);
        let owner = Owner::layout_checkout("/srv/a/oci".into(), serde_json::json!({"tag": "t"}));
        assert!(!owner.is_abandoned());
    }

    #[test]
    fn store_names_are_bounded_and_never_a_store_file() {
        let long = "a".repeat(128);
        let names = [
            "x.json",
            "v1.2.3",
            "_x",
            "a..b",
            ".",
            "..",
            "inodes",
            "records",
            "work",
            "snapshots",
            "empty",
            "views",
            "new-x",
            long.as_str(),
        ];
        let mut seen = std::collections::HashSet::new();
        for name in names {
            let s = store_name(name);
            assert_eq!(s.len(), PREFIX.len() + HASH_HEX, "{name}");
            assert!(is_store_name(&s), "{name}");
            assert!(
                ChainId::from_store_name(&s).is_none(),
                "{name}: a snapshot name"
            );
            assert!(!s.ends_with(".json") && !s.starts_with('.'), "{name}");
            assert!(seen.insert(s), "{name}: two names, one store name");
        }
        assert_eq!(store_name("x"), store_name("x"));
    }

    #[test]
    fn list_gives_back_names_bases_and_owners() {
        let dir = tempfile::tempdir().unwrap();
        let trees = Trees::new(dir.path().to_path_buf());
        let long = format!("build-1-{}", "z".repeat(128));
        let names = ["x.json", "build-7-v1.2.3", "a..b", long.as_str()];
        for (n, name) in names.iter().enumerate() {
            trees
                .create(name, &hex_chain(n as u8), &Owner::this_process())
                .unwrap();
            fs::create_dir(trees.dir_of(name)).unwrap();
        }
        trees
            .create("e", &ChainId::empty(), &Owner::default())
            .unwrap();
        let listed = trees.list(|d| d.join("root")).unwrap();
        let mut expected: Vec<&str> = names.to_vec();
        expected.push("e");
        expected.sort();
        assert_eq!(
            listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            expected
        );
        for t in &listed {
            assert_eq!(t.path, trees.dir_of(&t.name).join("root"));
            if t.name == "e" {
                assert!(t.base.is_empty() && t.is_abandoned());
            } else {
                let n = names.iter().position(|x| *x == t.name).unwrap();
                assert_eq!(t.base, hex_chain(n as u8));
                assert!(!t.is_abandoned());
            }
        }
        let on_disk = fs::read_to_string(trees.record_path("a..b")).unwrap();
        assert!(on_disk.contains("\"base\":\"sha256:"), "{on_disk}");
        // Temporary files of records are gone.
        assert!(trees.entries().unwrap().iter().all(|e| !e.starts_with('.')));
    }

    #[test]
    fn a_name_is_checked_out_once() {
        let dir = tempfile::tempdir().unwrap();
        let trees = Trees::new(dir.path().to_path_buf());
        trees
            .create("t", &ChainId::empty(), &Owner::this_process())
            .unwrap();
        let again = trees.create("t", &ChainId::empty(), &Owner::this_process());
        assert!(matches!(again, Err(DriverError::Busy(n)) if n == "t"));
        trees.remove("t").unwrap();
        trees.remove("t").unwrap();
        assert!(trees.list(Path::to_path_buf).unwrap().is_empty());
    }

    #[test]
    fn legacy_trees_are_adopted_removed_or_kept_by_owner() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path();
        let trees = Trees::new(work.to_path_buf());
        let hex = "ab".repeat(32);
        let write = |name: &str, record: &str| {
            fs::create_dir(work.join(name)).unwrap();
            fs::write(work.join(name).join("f"), name).unwrap();
            if !record.is_empty() {
                fs::write(work.join(format!("{name}.json")), record).unwrap();
            }
        };
        let me = serde_json::to_string(&Owner::this_process()).unwrap();
        write(
            "checkout-1",
            &format!(r#"{{"base":"{hex}","owner":{{"layout":"/l","note":{{"tag":"t"}}}}}}"#),
        );
        write(
            "build-1-x",
            &format!(r#"{{"base":"sha256:{hex}","owner":{{"process":{{"pid":1,"start":1}}}}}}"#),
        );
        write("build-2-y", &format!(r#"{{"base":"{hex}","owner":{me}}}"#));
        write("half-made", "");
        write("checkout", r#"{"base":"empty"}"#);
        trees
            .retire_legacy(
                |from, to| fs::rename(from, to).map_err(DriverError::io("rename", from)),
                |tree| fs::remove_dir_all(tree).map_err(DriverError::io("remove", tree)),
            )
            .unwrap();
        let listed = trees.list(Path::to_path_buf).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, "checkout-1");
        assert_eq!(listed[0].base, ChainId::from_store_name(&hex).unwrap());
        assert_eq!(listed[0].owner.layout.as_deref(), Some("/l"));
        assert!(listed[0].owner.note.is_some());
        assert_eq!(
            fs::read_to_string(listed[0].path.join("f")).unwrap(),
            "checkout-1"
        );
        let mut left = trees.entries().unwrap();
        left.retain(|e| !is_store_name(e.trim_end_matches(".json")));
        assert_eq!(
            left,
            ["build-2-y", "build-2-y.json", "checkout", "checkout.json"]
        );
        // Done twice, nothing changes and nothing fails.
        trees
            .retire_legacy(|_, _| panic!("adopted twice"), |_| panic!("removed twice"))
            .unwrap();
    }
}
