//! The btrfs driver: snapshots are read-only subvolumes on a loopback
//! filesystem; `changes` comes from a send stream with no data.
//!
//! Layout of the mounted filesystem:
//! - `snapshots/<ChainId::store_name()>`: committed snapshots (read-only
//!   subvolumes; `empty` is an empty one);
//! - `work/<name>`: work trees (writable snapshots of their base), each with
//!   `work/<name>.json` recording that base.

mod candidates;
pub mod loopback;
pub mod mount;
pub mod send;
pub mod store;
pub mod subvol;
pub mod sys;

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use store::{
    setup_store, setup_subvolume, unsetup_store, unsetup_subvolume, SetupOutcome, UnsetupOutcome,
};
pub use sys::{Kernel, System};

use super::{diff, ChainId, Change, DriverError, Owner, Result, SnapshotDriver, WorkTree};

const SNAPSHOTS: &str = "snapshots";
const WORK: &str = "work";
/// Where the empty snapshot is made before a read-only snapshot of it is
/// taken into place, so a half-made one is never taken for the real thing.
const EMPTY_STAGING: &str = ".empty-staging";

#[derive(Debug, Clone)]
pub struct BtrfsDriver {
    root: PathBuf,
    sys: Arc<dyn System>,
}

#[derive(Serialize, Deserialize)]
struct WorkTreeRecord {
    base: String,
    #[serde(default)]
    owner: Owner,
}

impl BtrfsDriver {
    /// The store mounted at `mountpoint`, whose layout (with the empty
    /// snapshot) is created on first use.
    pub fn open(mountpoint: &Path) -> Result<BtrfsDriver> {
        Self::open_with(mountpoint, Arc::new(Kernel))
    }

    pub fn open_with(mountpoint: &Path, sys: Arc<dyn System>) -> Result<BtrfsDriver> {
        let root = store::checked_mountpoint(mountpoint)?;
        if !sys.is_btrfs_mount(&root)? {
            return Err(DriverError::NotSetUp(mountpoint.to_path_buf()));
        }
        Self::open_root(root, sys)
    }

    /// The store in genoci's subvolume `store` of a btrfs filesystem that
    /// genoci did not make (`lofile: none`).
    pub fn open_subvolume(store: &Path) -> Result<BtrfsDriver> {
        Self::open_subvolume_with(store, Arc::new(Kernel))
    }

    pub fn open_subvolume_with(store: &Path, sys: Arc<dyn System>) -> Result<BtrfsDriver> {
        let root = store::checked_mountpoint(store)?;
        if !sys.is_subvolume(&root)? {
            return Err(DriverError::NotSetUp(store.to_path_buf()));
        }
        Self::open_root(root, sys)
    }

    fn open_root(root: PathBuf, sys: Arc<dyn System>) -> Result<BtrfsDriver> {
        let driver = BtrfsDriver { root, sys };
        driver.init_layout()?;
        Ok(driver)
    }

    /// The mounted filesystem's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn init_layout(&self) -> Result<()> {
        for dir in [SNAPSHOTS, WORK] {
            let path = self.root.join(dir);
            fs::create_dir_all(&path).map_err(DriverError::io("create directory", &path))?;
        }
        let empty = self.snapshot_dir(&ChainId::empty());
        if exists(&empty)? {
            return Ok(());
        }
        let staging = self.root.join(WORK).join(EMPTY_STAGING);
        if exists(&staging)? {
            self.delete_tree(&staging)?;
        }
        self.sys.create_subvolume(&staging)?;
        self.sys.snapshot(&staging, &empty, true)?;
        self.sys.delete_subvolume(&staging)?;
        tracing::debug!(store = %self.root.display(), "created the empty snapshot");
        Ok(())
    }

    fn snapshot_dir(&self, id: &ChainId) -> PathBuf {
        self.root.join(SNAPSHOTS).join(id.store_name())
    }

    fn work_dir(&self, name: &str) -> PathBuf {
        self.root.join(WORK).join(name)
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.root.join(WORK).join(format!("{name}.json"))
    }

    fn write_record(&self, name: &str, base: &ChainId, owner: &Owner) -> Result<()> {
        let path = self.record_path(name);
        let tmp = self.root.join(WORK).join(format!(".{name}.json.tmp"));
        let record = WorkTreeRecord {
            base: base.to_string(),
            owner: owner.clone(),
        };
        let bytes = serde_json::to_vec(&record).expect("a record always serializes");
        fs::write(&tmp, bytes).map_err(DriverError::io("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(DriverError::io("rename", &tmp))
    }

    /// Delete a subvolume, read-only or not, and whatever is nested in it.
    fn delete_tree(&self, path: &Path) -> Result<()> {
        if self.sys.read_only(path)? {
            self.sys.set_read_only(path, false)?;
        }
        self.sys.delete_subvolume(path)
    }
}

/// The work tree `name` of the store at `root`, from its record.
fn read_record(root: &Path, name: &str) -> Result<WorkTree> {
    let path = root.join(WORK).join(format!("{name}.json"));
    let bytes = fs::read(&path).map_err(DriverError::io("read", &path))?;
    let bad = |why: String| DriverError::Btrfs(format!("{}: {why}", path.display()));
    let record: WorkTreeRecord = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let store_name = record.base.strip_prefix("sha256:").unwrap_or(&record.base);
    let base = ChainId::from_store_name(store_name)
        .ok_or_else(|| bad(format!("{} is not a chain id", record.base)))?;
    Ok(WorkTree {
        name: name.to_string(),
        base,
        path: root.join(WORK).join(name),
        owner: record.owner,
    })
}

/// Every work tree of the store at `root`, from the records in `work/`.
/// Other processes may share the store: the listing is a moment's view.
fn work_trees_in(root: &Path) -> Result<Vec<WorkTree>> {
    let dir = root.join(WORK);
    let mut names = BTreeSet::new();
    for entry in fs::read_dir(&dir).map_err(DriverError::io("read directory", &dir))? {
        let entry = entry.map_err(DriverError::io("read directory", &dir))?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        if !name.starts_with('.') {
            names.insert(name.to_string());
        }
    }
    let mut trees = Vec::new();
    for name in &names {
        match read_record(root, name) {
            Ok(tree) => trees.push(tree),
            // Discarded by another process sharing the store since the listing.
            Err(DriverError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(trees)
}

fn exists(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(DriverError::io("stat", path)(e)),
    }
}

fn remove_file_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(DriverError::io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Work tree names become file names next to each other in `work/`.
fn check_name(name: &str, store: &Path) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(DriverError::UnsafePath(
            store.join(WORK).join(name),
            "not a valid work tree name".into(),
        ))
    }
}

impl SnapshotDriver for BtrfsDriver {
    fn name(&self) -> &'static str {
        "btrfs"
    }

    fn exists(&self, id: &ChainId) -> Result<bool> {
        exists(&self.snapshot_dir(id))
    }

    fn snapshot_path(&self, id: &ChainId) -> Result<PathBuf> {
        let path = self.snapshot_dir(id);
        if exists(&path)? {
            Ok(path)
        } else {
            Err(DriverError::NoSnapshot(id.clone()))
        }
    }

    fn checkout_as(&self, base: &ChainId, name: &str, owner: &Owner) -> Result<WorkTree> {
        check_name(name, &self.root)?;
        let source = self.snapshot_path(base)?;
        let path = self.work_dir(name);
        if exists(&path)? || exists(&self.record_path(name))? {
            return Err(DriverError::Busy(name.to_string()));
        }
        // The record goes first: a tree is never left without one saying
        // what it was checked out from.
        self.write_record(name, base, owner)?;
        if let Err(e) = self.sys.snapshot(&source, &path, false) {
            remove_file_if_present(&self.record_path(name))?;
            return Err(e);
        }
        tracing::debug!(name, base = %base, "checked out");
        Ok(WorkTree {
            name: name.to_string(),
            base: base.clone(),
            path,
            owner: owner.clone(),
        })
    }

    fn changes(&self, tree: &WorkTree) -> Result<Vec<Change>> {
        let base = self.snapshot_path(&tree.base)?;
        let parent_id = self.sys.subvolume_id(&base)?;
        // Send needs both ends read-only.
        let was_read_only = self.sys.read_only(&tree.path)?;
        if !was_read_only {
            self.sys.set_read_only(&tree.path, true)?;
        }
        let stream = match self.sys.send(&tree.path, parent_id) {
            Ok(stream) => stream,
            Err(e) => {
                // Leave a checkout that could not be diffed as editable as it was.
                if !was_read_only {
                    if let Err(undo) = self.sys.set_read_only(&tree.path, false) {
                        tracing::warn!(tree = %tree.name, error = %undo, "tree stays read-only");
                    }
                }
                return Err(e);
            }
        };
        let commands = send::parse(&stream)?;
        let touched = send::touched_paths(&commands);
        let touched_count = touched.len();
        let candidates = candidates::expand(self.sys.as_ref(), &base, &tree.path, touched)?;
        let changes = diff::compare(&base, &tree.path, &candidates)?;
        tracing::debug!(
            tree = %tree.name,
            commands = commands.len(),
            touched = touched_count,
            candidates = candidates.len(),
            changes = changes.len(),
            "changes from send stream"
        );
        Ok(changes)
    }

    fn checkin(&self, tree: WorkTree, id: &ChainId) -> Result<()> {
        let dest = self.snapshot_dir(id);
        if exists(&dest)? {
            tracing::debug!(tree = %tree.name, snapshot = %id, "snapshot exists, discarding tree");
            return self.discard(tree);
        }
        // btrfs refuses to move a read-only subvolume to another directory,
        // and a writable one under snapshots/ would be a snapshot that can
        // still change: a read-only snapshot of the tree appears atomically.
        if let Err(e) = self.sys.snapshot(&tree.path, &dest, true) {
            // Another build committed the same ChainID since the check.
            return if e.lost_commit_race(&dest) {
                self.discard(tree)
            } else {
                Err(e)
            };
        }
        self.discard(tree.clone())?;
        tracing::debug!(tree = %tree.name, snapshot = %id, "checked in");
        Ok(())
    }

    fn discard(&self, tree: WorkTree) -> Result<()> {
        if exists(&tree.path)? {
            self.delete_tree(&tree.path)?;
        }
        remove_file_if_present(&self.record_path(&tree.name))?;
        tracing::debug!(tree = %tree.name, "discarded");
        Ok(())
    }

    fn snapshots(&self) -> Result<Vec<ChainId>> {
        super::list_snapshots(&self.root.join(SNAPSHOTS))
    }

    fn remove(&self, id: &ChainId) -> Result<()> {
        if id.is_empty() {
            return Ok(());
        }
        let path = self.snapshot_path(id)?;
        self.delete_tree(&path)?;
        tracing::debug!(snapshot = %id, "removed");
        Ok(())
    }

    fn work_trees(&self) -> Result<Vec<WorkTree>> {
        work_trees_in(&self.root)
    }
}

#[cfg(test)]
mod tests;
