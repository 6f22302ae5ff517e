//! The btrfs driver: snapshots are read-only subvolumes on a loopback
//! filesystem; `changes` comes from a send stream with no data.
//!
//! Layout of the mounted filesystem:
//! - `snapshots/<ChainId::store_name()>`: committed snapshots (read-only
//!   subvolumes; `empty` is an empty one);
//! - `work/wt-<hash>`: work trees (writable snapshots of their base), each
//!   with its record `work/wt-<hash>.json` (see [`super::worktree`]).

mod candidates;
pub mod loopback;
pub mod mount;
pub mod send;
pub mod store;
pub mod subvol;
pub mod sys;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use store::{
    setup_store, setup_subvolume, unsetup_store, unsetup_subvolume, SetupOutcome, UnsetupOutcome,
};
pub use sys::{Kernel, System};

use super::worktree::Trees;
use super::{diff, ChainId, DriverError, Owner, Result, SnapshotDriver, WorkTree};
use crate::change::Change;

const SNAPSHOTS: &str = "snapshots";
const WORK: &str = "work";
/// Where the empty snapshot is made before a read-only snapshot of it is
/// taken into place, so a half-made one is never taken for the real thing.
const EMPTY_STAGING: &str = ".empty-staging";

#[derive(Debug, Clone)]
pub struct BtrfsDriver {
    root: PathBuf,
    sys: Arc<dyn System>,
    trees: Trees,
}

/// The work trees of the store mounted at `root`.
fn trees_in(root: &Path) -> Trees {
    Trees::new(root.join(WORK))
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
        let driver = BtrfsDriver {
            trees: trees_in(&root),
            root,
            sys,
        };
        driver.init_layout()?;
        driver.trees.retire_legacy(
            |from, to| fs::rename(from, to).map_err(DriverError::io("rename", from)),
            |tree| match exists(tree)? {
                // A directory that is not a subvolume (a copy made by hand)
                // goes as a directory does.
                true => driver
                    .delete_tree(tree)
                    .or_else(|e| fs::remove_dir_all(tree).map_err(|_| e)),
                false => Ok(()),
            },
        )?;
        Ok(driver)
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

    /// Delete a subvolume, read-only or not, and whatever is nested in it.
    fn delete_tree(&self, path: &Path) -> Result<()> {
        if self.sys.read_only(path)? {
            self.sys.set_read_only(path, false)?;
        }
        self.sys.delete_subvolume(path)
    }
}

fn exists(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(DriverError::io("stat", path)(e)),
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
        let source = self.snapshot_path(base)?;
        self.trees.create(name, base, owner)?;
        let path = self.trees.dir_of(name);
        if let Err(e) = self.sys.snapshot(&source, &path, false) {
            self.trees.remove(name)?;
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
        self.trees.remove(&tree.name)?;
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
        self.trees.list(Path::to_path_buf)
    }
}

#[cfg(test)]
mod tests;
