//! Snapshot drivers: where image trees live between builds.
//!
//! The model is containerd's snapshotter: a committed snapshot is a read-only
//! tree named by the OCI ChainID of the layers that produce it, so the store
//! and the layout agree with no bookkeeping of their own.

pub mod btrfs;
pub mod diff;
pub mod overlay;
pub mod plain;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
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

/// One entry of a layer, relative to the root of the tree (no leading `/`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// The entry at this path is new or differs from the base; the layer carries
    /// it as it is in the work tree (a directory entry alone, not its children).
    Write(PathBuf),
    /// The base had an entry here and the work tree has none: a `.wh.NAME` whiteout.
    Delete(PathBuf),
    /// Every entry the base had below this directory is gone: a `.wh..wh..opq`
    /// marker. The directory itself and whatever it now holds are listed as
    /// `Write`s of their own.
    Opaque(PathBuf),
}

impl Change {
    pub fn path(&self) -> &Path {
        match self {
            Change::Write(p) | Change::Delete(p) | Change::Opaque(p) => p,
        }
    }
}

/// A writable tree checked out of a snapshot, owned by whoever called
/// [`SnapshotDriver::checkout`] until it is handed back through
/// [`SnapshotDriver::checkin`] or [`SnapshotDriver::discard`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkTree {
    /// The work tree's name in the store (unique among open work trees).
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
    /// next command on the store may discard it. The tree an older genoci
    /// kept a checkout in (`checkout`, with no owner recorded) is kept.
    pub fn is_abandoned(&self) -> bool {
        self.owner.is_abandoned() && self.name != "checkout"
    }
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

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot {0} is not in the store")]
    NoSnapshot(ChainId),
    #[error("a work tree named {0} is already checked out")]
    Busy(String),
    #[error("btrfs store not set up at {0}: run `genoci setup` first")]
    NotSetUp(PathBuf),
    #[error("refusing to use {0} as a store: {1}")]
    UnsafePath(PathBuf, String),
    #[error("btrfs: {0}")]
    Btrfs(String),
    #[error("interrupted")]
    Interrupted,
}

impl DriverError {
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| DriverError::Io { op, path, source }
    }

    /// Whether committing a snapshot at `dest` failed only because another
    /// build committed the same ChainID there meanwhile: a success, since
    /// equal ChainIDs mean equal content.
    fn lost_commit_race(&self, dest: &Path) -> bool {
        let taken = matches!(self, DriverError::Io { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::DirectoryNotEmpty));
        taken && dest.exists()
    }
}

pub type Result<T, E = DriverError> = std::result::Result<T, E>;

/// What a directory store (plain, overlay) keeps beside each work tree, in
/// `work/NAME.json`: the tree's base and owner. Written once the tree is
/// complete, so a tree without it is a half-made one.
#[derive(Serialize, Deserialize)]
struct TreeRecord {
    base: String,
    #[serde(default)]
    owner: Owner,
}

impl TreeRecord {
    fn to_bytes(base: &ChainId, owner: &Owner) -> Vec<u8> {
        serde_json::to_vec(&TreeRecord {
            base: base.store_name(),
            owner: owner.clone(),
        })
        .expect("a tree record serializes")
    }
}

/// Put a work tree's record at `path`, failing with [`DriverError::Busy`]
/// if one is there: the claim of the name between processes that share the
/// store.
fn claim_record(path: &Path, bytes: &[u8], name: &str) -> Result<()> {
    put_record(path, bytes, name, |tmp, path| std::fs::hard_link(tmp, path))
}

/// Write a work tree's record at `path` again, in place of the one there.
fn rewrite_record(path: &Path, bytes: &[u8], name: &str) -> Result<()> {
    put_record(path, bytes, name, |tmp, path| std::fs::rename(tmp, path))
}

/// The record is written beside `path` first and then put in place, so that
/// another process listing the work trees never reads it half written (and
/// takes the tree for one whose owner is unknown). The temp name starts
/// with a dot, which no work tree name does.
fn put_record(
    path: &Path,
    bytes: &[u8],
    name: &str,
    put: impl FnOnce(&Path, &Path) -> std::io::Result<()>,
) -> Result<()> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let me = Process::current();
    let tmp = path.with_file_name(format!(".{name}.json.{}-{}-{n}.tmp", me.pid, me.start));
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(DriverError::io("write", &tmp)(e));
    }
    let put = put(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match put {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(DriverError::Busy(name.to_string()))
        }
        Err(e) => Err(DriverError::io("write", path)(e)),
    }
}

/// The process that writes the temp record `file_name` ([`put_record`]),
/// if it is one: `.NAME.json.PID-START-N.tmp`.
fn temp_record_owner(file_name: &str) -> Option<Process> {
    let rest = file_name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (_, owner) = rest.rsplit_once(".json.")?;
    let mut fields = owner.split('-');
    let pid = fields.next()?.parse().ok()?;
    let start = fields.next()?.parse().ok()?;
    Some(Process { pid, start })
}

/// Work tree names of a directory store become file names beside their
/// `NAME.json` records: keep them to one plain component.
fn check_tree_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.ends_with(".json")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(DriverError::UnsafePath(
            PathBuf::from(name),
            "not a valid work tree name".into(),
        ))
    }
}

/// The work trees of a directory store: every valid name in `work` that is
/// a tree (at `tree_path(name)`) or its record, sorted by name. A tree
/// without a readable record never finished its checkout: its base and
/// owner are unknown, and it is only good for discarding.
fn list_work_trees(work: &Path, tree_path: impl Fn(&str) -> PathBuf) -> Result<Vec<WorkTree>> {
    let mut names = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(work).map_err(DriverError::io("read directory", work))? {
        let entry = entry.map_err(DriverError::io("read directory", work))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if let Some(owner) = temp_record_owner(&name) {
            // Left by a process killed while it put a record in place.
            if !owner.is_alive() {
                let _ = std::fs::remove_file(entry.path());
            }
            continue;
        }
        let name = name.strip_suffix(".json").unwrap_or(&name).to_string();
        // A dot starts the records being claimed, never a tree's name.
        if check_tree_name(&name).is_ok() && !name.starts_with('.') {
            names.insert(name);
        }
    }
    Ok(names
        .into_iter()
        .filter_map(|name| {
            let record = match std::fs::read(work.join(format!("{name}.json"))) {
                // Discarded by another process since the listing.
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound && !tree_path(&name).exists() =>
                {
                    return None
                }
                read => read
                    .ok()
                    .and_then(|b| serde_json::from_slice::<TreeRecord>(&b).ok()),
            };
            let base = record
                .as_ref()
                .and_then(|r| ChainId::from_store_name(&r.base))
                .unwrap_or_else(ChainId::empty);
            Some(WorkTree {
                path: tree_path(&name),
                owner: record.map(|r| r.owner).unwrap_or_default(),
                name,
                base,
            })
        })
        .collect())
}

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
///   is already open fails with [`DriverError::Busy`].
/// - [`changes`](Self::changes) reports, sorted by path, exactly the entries
///   that differ between the base and the tree (content, type, mode, owner,
///   mtime, xattrs, link target, device number), as
///   [`diff::compare`] defines them: every driver gives the same list for the
///   same two trees. After it, the tree may be read-only: the caller reads
///   it to write the layer and then must `checkin` or `discard` it.
/// - [`checkin`](Self::checkin) consumes the tree and freezes it as snapshot
///   `id`; if `id` already exists the tree is discarded instead (same content
///   by construction of ChainIDs).
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
    /// `owner`. The record of its base and owner is in the store as soon as
    /// the tree is, so that no one takes a tree in the making for one left
    /// behind.
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

    /// The open work tree called `name`, if any.
    fn work_tree(&self, name: &str) -> Result<Option<WorkTree>> {
        Ok(self.work_trees()?.into_iter().find(|t| t.name == name))
    }
}

/// Checks any driver against the concurrency rules of [`SnapshotDriver`].
#[cfg(test)]
pub(crate) mod contract {
    use super::*;

    /// `rounds` times, `threads` work trees with equal content are checked
    /// in as one `id` at the same moment: every checkin succeeds, and one
    /// snapshot with that content and no work tree remain.
    pub fn equal_checkins_race(driver: &dyn SnapshotDriver, threads: usize, rounds: u8) {
        for round in 0..rounds {
            let id = ChainId::of(&[format!("sha256:{}", format!("{round:02x}").repeat(32))]);
            let trees: Vec<WorkTree> = (0..threads)
                .map(|t| {
                    let tree = driver
                        .checkout(&ChainId::empty(), &format!("r{round}-{t}"))
                        .unwrap();
                    std::fs::write(tree.path.join("round"), [round]).unwrap();
                    tree
                })
                .collect();
            let start = std::sync::Barrier::new(threads);
            let results: Vec<Result<()>> = std::thread::scope(|s| {
                let start = &start;
                let handles: Vec<_> = trees
                    .into_iter()
                    .map(|tree| {
                        let id = &id;
                        s.spawn(move || {
                            start.wait();
                            driver.checkin(tree, id)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for r in &results {
                assert!(r.is_ok(), "round {round}: {r:?}");
            }
            let root = driver.snapshot_path(&id).unwrap();
            assert_eq!(std::fs::read(root.join("round")).unwrap(), [round]);
            assert!(driver.work_trees().unwrap().is_empty());
        }
    }
}

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
    fn store_names_round_trip() {
        let id = ChainId::of(&[format!("sha256:{}", "ab".repeat(32))]);
        assert_eq!(ChainId::from_store_name(&id.store_name()), Some(id));
        assert_eq!(ChainId::from_store_name("empty"), Some(ChainId::empty()));
        assert_eq!(ChainId::from_store_name("work"), None);
    }
}
