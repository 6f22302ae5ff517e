//! Snapshot drivers: where image trees live between builds.
//!
//! The model is containerd's snapshotter: a committed snapshot is a read-only
//! tree named by the OCI ChainID of the layers that produce it, so the store
//! and the layout agree with no bookkeeping of their own.

pub mod btrfs;
pub mod diff;
pub mod overlay;
pub mod plain;
pub mod worktree;

pub use worktree::{Owner, Process};

use std::fmt;
use std::path::{Path, PathBuf};

use crate::change::Change;
use crate::io_error::IoError;
use sha2::{Digest, Sha256};

/// The OCI ChainID of a stack of layers, or the empty stack.
///
/// `ChainId(L0) = DiffID(L0)`, `ChainId(L0..Ln) = sha256(ChainId(L0..Ln-1) + " " + DiffID(Ln))`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChainId(Option<String>);

impl ChainId {
    /// The chain of no layers: an empty tree.
    pub fn empty() -> Self {
        ChainId(None)
    }

    /// The chain of `diff_ids` (each `sha256:<hex>`), bottom layer first.
    pub fn of<S: AsRef<str>>(diff_ids: &[S]) -> Self {
        diff_ids.iter().fold(ChainId::empty(), |chain, diff_id| {
            chain.push(diff_id.as_ref())
        })
    }

    /// The chain of this stack with one more layer on top.
    pub fn push(&self, diff_id: &str) -> Self {
        match &self.0 {
            None => ChainId(Some(diff_id.to_string())),
            Some(parent) => {
                let hash = Sha256::digest(format!("{parent} {diff_id}").as_bytes());
                ChainId(Some(format!("sha256:{}", hex::encode(hash))))
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// A name usable as a directory or subvolume name: the hex digest, or `empty`.
    pub fn store_name(&self) -> String {
        match &self.0 {
            None => "empty".to_string(),
            Some(d) => d.strip_prefix("sha256:").unwrap_or(d).to_string(),
        }
    }

    /// Inverse of [`ChainId::store_name`]; `None` for names that are not snapshots.
    pub fn from_store_name(name: &str) -> Option<Self> {
        if name == "empty" {
            Some(ChainId::empty())
        } else if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            Some(ChainId(Some(format!("sha256:{name}"))))
        } else {
            None
        }
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("empty"),
            Some(d) => f.write_str(d),
        }
    }
}

/// A writable tree checked out of a snapshot, owned by whoever called
/// [`SnapshotDriver::checkout`] until it is handed back through
/// [`SnapshotDriver::checkin`] or [`SnapshotDriver::discard`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkTree {
    /// The name it was checked out as (unique among the store's open work trees).
    pub name: String,
    /// The snapshot it was checked out from.
    pub base: ChainId,
    /// Its root directory.
    pub path: PathBuf,
    /// Who it belongs to, as recorded beside it in the store.
    pub owner: Owner,
}

impl WorkTree {
    /// Whether the tree was left behind by a process that is gone, so the
    /// next command on the store may discard it.
    pub fn is_abandoned(&self) -> bool {
        self.owner.is_abandoned()
    }
}

/// The layers an overlay work tree is made of, for a caller that mounts
/// the tree itself (the sandbox mounts them idmapped for a step in a user
/// namespace, as an overlay mount itself cannot be idmapped).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layers {
    /// The read-only layers, top first.
    pub lowers: Vec<PathBuf>,
    /// The upper and work dirs; the kernel wants them on one mount, and
    /// they are siblings in one directory.
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Whether the driver mounts the tree `volatile` (no sync of the store
    /// when it is unmounted); another mount of these layers does the same.
    pub volatile: bool,
}

/// A work tree whose driver mount is taken down for as long as another
/// mount of its [`Layers`] is in use (see [`SnapshotDriver::lend`]): two
/// overlays on one upper dir are undefined. The tree is mounted again by
/// [`Lent::restore`], or when this is dropped (a failure, a panic).
pub struct Lent<'a> {
    restore: Option<Box<dyn FnOnce() -> Result<()> + Send + 'a>>,
}

impl<'a> Lent<'a> {
    /// A tree taken down, that `restore` mounts again.
    pub fn new(restore: impl FnOnce() -> Result<()> + Send + 'a) -> Lent<'a> {
        Lent {
            restore: Some(Box::new(restore)),
        }
    }

    /// Mount the tree again.
    pub fn restore(mut self) -> Result<()> {
        self.restore.take().map_or(Ok(()), |restore| restore())
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(restore) = self.restore.take() {
            if let Err(e) = restore() {
                tracing::error!(
                    "mounting a lent work tree again: {}",
                    crate::error_chain(&e)
                );
            }
        }
    }
}

/// A work tree with its driver: what a caller needs to ask how the tree
/// may be mounted (see [`SnapshotDriver::layers`]).
#[derive(Clone, Copy)]
pub struct TreeOf<'a> {
    pub driver: &'a dyn SnapshotDriver,
    pub tree: &'a WorkTree,
}

impl std::fmt::Debug for TreeOf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} tree {}", self.driver.name(), self.tree.name)
    }
}

impl<'a> TreeOf<'a> {
    pub fn layers(&self) -> Result<Option<Layers>> {
        self.driver.layers(self.tree)
    }

    pub fn lend(&self) -> Result<Lent<'a>> {
        self.driver.lend(self.tree)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("snapshot {0} is not in the store")]
    NoSnapshot(ChainId),
    #[error("a work tree named {0} is already checked out")]
    Busy(String),
    #[error("btrfs store not set up at {0}: run `genoci setup` first")]
    NotSetUp(PathBuf),
    #[error("refusing to use {0} as a store: {1}")]
    UnsafePath(PathBuf, String),
    #[error("work tree record {0}: {1}")]
    Record(PathBuf, String),
    #[error("btrfs: {0}")]
    Btrfs(String),
    #[error("interrupted")]
    Interrupted,
}

impl DriverError {
    /// [`IoError::at`], as a driver error.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let at = IoError::at(op, path);
        move |source| at(source).into()
    }

    /// Whether the cause is a mount in use (EBUSY): a tree that
    /// [`SnapshotDriver::lend`] leaves as it was.
    pub fn is_busy(&self) -> bool {
        matches!(self, DriverError::Io(IoError { source, .. }) if source.raw_os_error() == Some(libc::EBUSY))
    }

    /// Whether committing a snapshot at `dest` failed only because another
    /// build committed the same ChainID there meanwhile: a success, since
    /// equal ChainIDs mean equal content.
    fn lost_commit_race(&self, dest: &Path) -> bool {
        let taken = matches!(self, DriverError::Io(IoError { source, .. })
            if matches!(source.kind(), std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::DirectoryNotEmpty));
        taken && dest.exists()
    }
}

pub type Result<T, E = DriverError> = std::result::Result<T, E>;

/// The snapshots in a directory whose entries are named by
/// [`ChainId::store_name`]; anything else there is not a snapshot.
fn list_snapshots(dir: &Path) -> Result<Vec<ChainId>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(DriverError::io("read directory", dir))? {
        let entry = entry.map_err(DriverError::io("read directory", dir))?;
        ids.extend(
            entry
                .file_name()
                .to_str()
                .and_then(ChainId::from_store_name),
        );
    }
    ids.sort();
    Ok(ids)
}

/// A store of read-only snapshots named by ChainID, and of the writable work
/// trees checked out of them.
///
/// Lifecycle:
/// - The empty snapshot ([`ChainId::empty`]) always exists.
/// - [`checkout`](Self::checkout) needs a committed base and gives a new
///   writable tree whose content equals the base; checking out a `name` that
///   is already open fails with [`DriverError::Busy`]. The bookkeeping of
///   work trees (names, records, listing) is [`worktree`]'s, the same for
///   every driver.
/// - [`changes`](Self::changes) reports, sorted by path, exactly the entries
///   that differ between the base and the tree (content, type, mode, owner,
///   mtime, xattrs, link target, device number), as
///   [`diff::compare`] defines them: every driver gives the same list for the
///   same two trees. After it, the tree may be read-only: the caller reads
///   it to write the layer and then must `checkin` or `discard` it.
/// - [`checkin`](Self::checkin) consumes the tree and freezes it as snapshot
///   `id`; if `id` already exists the tree is discarded instead (same content
///   by construction of ChainIDs). The snapshot is the tree as the build saw
///   it, hard links included: a file written through one of its names is
///   one inode under all of them (overlay copies up the untouched names).
/// - [`discard`](Self::discard) consumes the tree and deletes it.
/// - Every work tree has an [`Owner`], recorded with it when it is checked
///   out and reported by [`work_trees`](Self::work_trees): a running process
///   (builds, materialising, chroot) or a layout (a checkout kept between
///   commands, with its note). A store may be shared by several processes
///   and layouts: a tree whose owning process is alive is never removed by
///   anyone else, and a layout's checkout is touched only by commands on
///   that layout. A tree whose process is gone
///   ([`WorkTree::is_abandoned`]) is removed with `discard` by the next
///   command that opens the store.
///
/// Concurrency (threads of one build, or several genoci processes):
/// - Every method may be called from several threads at once on distinct
///   work trees; a work tree is used by one caller at a time (its owner).
/// - Committed snapshots are immutable, so reading one needs no lock.
/// - Two work trees may be checked in as the same `id` at the same time (two
///   targets with identical stanzas): `checkin` commits atomically (a rename
///   or a snapshot ioctl, never a copy into place), so exactly one tree
///   becomes the snapshot and the others are discarded; every caller gets
///   `Ok`. A snapshot that appears between the existence check and the
///   commit is such a success, not an error.
/// - [`remove`](Self::remove) of a snapshot another caller is checking out
///   from is not guarded here: gc must hold the store exclusively.
pub trait SnapshotDriver: Send + Sync {
    /// Short name for messages: `plain`, `overlay` or `btrfs`.
    fn name(&self) -> &'static str;

    /// Whether a work tree's root is a mount of the driver's own (which
    /// clearing what a hook left mounted in the tree must keep).
    fn tree_is_mount(&self) -> bool {
        false
    }

    /// Whether snapshot `id` is committed in the store.
    fn exists(&self, id: &ChainId) -> Result<bool>;

    /// Read-only root of a committed snapshot.
    fn snapshot_path(&self, id: &ChainId) -> Result<PathBuf>;

    /// A new writable tree named `name`, equal to snapshot `base`, owned by
    /// `owner`. The name is any non-empty text (the store files the tree
    /// under a name of its own, see [`worktree`]). The record of its base
    /// and owner is in the store before the tree is, so that no one takes a
    /// tree in the making for one left behind.
    fn checkout_as(&self, base: &ChainId, name: &str, owner: &Owner) -> Result<WorkTree>;

    /// [`checkout_as`](Self::checkout_as) for this process, for as long as it runs.
    fn checkout(&self, base: &ChainId, name: &str) -> Result<WorkTree> {
        self.checkout_as(base, name, &Owner::this_process())
    }

    /// What a layer must hold to turn `tree.base` into `tree`.
    fn changes(&self, tree: &WorkTree) -> Result<Vec<Change>>;

    /// Freeze `tree` as snapshot `id`.
    fn checkin(&self, tree: WorkTree, id: &ChainId) -> Result<()>;

    /// Delete `tree`.
    fn discard(&self, tree: WorkTree) -> Result<()>;

    /// Every committed snapshot.
    fn snapshots(&self) -> Result<Vec<ChainId>>;

    /// Delete a committed snapshot (the empty one is never removed).
    fn remove(&self, id: &ChainId) -> Result<()>;

    /// Every open work tree, by name, with its base.
    fn work_trees(&self) -> Result<Vec<WorkTree>>;

    /// How a caller that mounts trees itself may view `tree`: `None`, its
    /// path as it is (a directory, a subvolume); or the overlay [`Layers`]
    /// it is a mount of. Changes nothing.
    fn layers(&self, _tree: &WorkTree) -> Result<Option<Layers>> {
        Ok(None)
    }

    /// Take the driver's own mount of `tree` down so that the caller may
    /// mount its [`layers`](Self::layers) itself; the [`Lent`] guard mounts
    /// it again, also when the caller fails. Meanwhile `tree.path` is an
    /// empty directory. A tree that is no mount has nothing to take down.
    /// Fails with [`DriverError::is_busy`], the tree left mounted, when its
    /// mount is in use; after another failure the tree may be unmounted.
    fn lend(&self, _tree: &WorkTree) -> Result<Lent<'_>> {
        Ok(Lent { restore: None })
    }

    /// The open work tree called `name`, if any.
    fn work_tree(&self, name: &str) -> Result<Option<WorkTree>> {
        Ok(self.work_trees()?.into_iter().find(|t| t.name == name))
    }
}

/// Checks and fixtures every driver's unit tests share.
#[cfg(test)]
pub(crate) mod contract;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_id_follows_the_image_spec() {
        let a = "sha256:aaaa";
        let b = "sha256:bbbb";
        assert_eq!(ChainId::of(&[a]).to_string(), a);
        let expected = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(b"sha256:aaaa sha256:bbbb"))
        );
        assert_eq!(ChainId::of(&[a, b]).to_string(), expected);
        assert!(ChainId::of::<&str>(&[]).is_empty());
    }

    #[test]
    fn store_names_round_trip() {
        let id = ChainId::of(&[format!("sha256:{}", "ab".repeat(32))]);
        assert_eq!(ChainId::from_store_name(&id.store_name()), Some(id));
        assert_eq!(ChainId::from_store_name("empty"), Some(ChainId::empty()));
        assert_eq!(ChainId::from_store_name("work"), None);
    }
}
