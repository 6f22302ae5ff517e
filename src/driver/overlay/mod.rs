//! The overlay driver: each snapshot holds only its own layer's changes, and
//! a tree is a kernel overlay mount of the chain of them.
//!
//! ```text
//! storedir/overlay/snapshots/<chain>/diff     the layer's entries, whiteouts and opaque dirs
//! storedir/overlay/snapshots/<chain>/parent   the store name of the chain below
//! storedir/overlay/work/wt-<hash>.json            a work tree's record (see [`super::worktree`])
//! storedir/overlay/work/wt-<hash>/{upper,work}   its overlay upper and work dirs
//! storedir/overlay/work/wt-<hash>/root           the mounted tree
//! storedir/overlay/work/wt-<hash>/base           the base, mounted while `changes` runs
//! storedir/overlay/views/<chain>              read-only trees handed out by `snapshot_path`
//! ```
//!
//! Checking out mounts `diff` dirs of the chain as lower dirs and a fresh
//! upper; checking in unmounts and renames the upper into place as the new
//! snapshot's `diff`. `changes` reads the upper dir (the entries the build
//! touched), adds the other names of any linked file among them (which may
//! lie outside it, below a renamed directory), and hands them to the shared
//! comparison against a read-only mount of the base, so copied-up but equal
//! entries drop out and the list equals the other drivers'.
//!
//! A file with several names in the base stays one file when one name is
//! written, moved or linked: the mount keeps an index of such copy-ups
//! (see `mount.rs`), so during the step every name shows the change, and a
//! checkin first copies up the names the step did not touch (see
//! `links.rs`), so the snapshot holds them as one inode, as plain and btrfs
//! do. A renamed base directory is an upper dir with a redirect to its old
//! path; mounts of later layers follow it.

mod links;
pub mod mount;
mod upper;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::worktree::{self, Process, Trees};
use super::{diff, ChainId, DriverError, Layers, Lent, Owner, Result, SnapshotDriver, WorkTree};
use crate::change::Change;
use mount::Overlay;

/// The name prefix under which a checkin assembles a snapshot.
const STAGING: &str = "new-";

/// Far more layers than any image has: a `parent` loop cannot hang a command.
const MAX_CHAIN: usize = 4096;

pub struct OverlayDriver {
    root: PathBuf,
    trees: Trees,
}

impl OverlayDriver {
    /// Open (creating if needed) the store in `storedir`'s `overlay` dir.
    pub fn open(storedir: &Path) -> Result<OverlayDriver> {
        let root = storedir.join("overlay");
        for sub in ["snapshots", "work", "views"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(DriverError::io("create directory", &dir))?;
        }
        let root = root
            .canonicalize()
            .map_err(DriverError::io("resolve", &root))?;
        let driver = OverlayDriver {
            trees: Trees::new(root.join("work")),
            root,
        };
        let empty = driver.diff_dir(&ChainId::empty());
        if !empty.exists() {
            fs::create_dir_all(&empty).map_err(DriverError::io("create directory", &empty))?;
        }
        driver.remove_unfinished_checkins()?;
        // Trees of the previous store format: a kept checkout moves (its
        // mounts go; listing mounts it again), the rest is removed.
        driver.trees.retire_legacy(
            |from, to| {
                unmount_tree_dir(from)?;
                fs::rename(from, to).map_err(DriverError::io("rename", from))
            },
            |dir| unmount_tree_dir(dir).and_then(|()| remove_tree(dir)),
        )?;
        Ok(driver)
    }

    /// A snapshot assembled by a checkin that was killed before its final
    /// rename is not one. Other processes may be checking in meanwhile:
    /// the staging dir of a tree whose owner lives (its record stays until
    /// the checkin is done) is theirs.
    fn remove_unfinished_checkins(&self) -> Result<()> {
        let live: std::collections::BTreeSet<String> = self
            .trees
            .list(|dir| dir.join("root"))?
            .into_iter()
            .filter(|t| !t.owner.is_abandoned())
            .map(|t| worktree::store_name(&t.name))
            .collect();
        let dir = self.root.join("snapshots");
        for entry in fs::read_dir(&dir).map_err(DriverError::io("read directory", &dir))? {
            let entry = entry.map_err(DriverError::io("read directory", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name
                .strip_prefix(STAGING)
                .is_some_and(|tree| !live.contains(tree))
            {
                remove_tree(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Mount a work tree whose mount is gone (a checkout kept across a
    /// reboot), so that it shows its base and the changes in its upper dir
    /// again. A root that is not empty is left alone: mounting over it
    /// would hide what was written there.
    fn remount(&self, tree: &WorkTree) -> Result<()> {
        let dir = self.trees.dir_of(&tree.name);
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        let empty = fs::read_dir(&tree.path).is_ok_and(|mut d| d.next().is_none());
        if !empty || !upper.is_dir() || !work.is_dir() || lent_to_a_live_process(&dir) {
            return Ok(());
        }
        tracing::info!(tree = %tree.name, "mounting the work tree again");
        let lowers = self.lowers(&tree.base)?;
        let overlay = Overlay {
            lowers: &lowers,
            upper: Some((&upper, &work)),
            volatile: false,
        };
        overlay
            .mount(&tree.path)
            .map_err(DriverError::io("mount overlay at", &tree.path))
    }

    /// Whether an overlay mount with an upper dir in `storedir` works: the
    /// kernel has overlayfs and the store's filesystem can hold an upper
    /// dir (xattrs, whiteouts). Mounts and unmounts a scratch overlay there.
    pub fn probe(storedir: &Path) -> std::result::Result<(), String> {
        mount::supported()?;
        // One per process: several genoci may open the store at once.
        let probe = storedir
            .join("overlay")
            .join(format!("probe-{}", std::process::id()));
        let _ = remove_tree(&probe);
        let result = probe_in(&probe);
        let _ = remove_tree(&probe);
        result.map_err(|e| format!("an overlay mount in {} fails: {e}", storedir.display()))
    }

    /// Unmount and remove the read-only trees `snapshot_path` left mounted
    /// in the store of `storedir`; how many there were.
    pub fn release_views(storedir: &Path) -> Result<usize> {
        let dir = storedir.join("overlay").join("views");
        let dir = dir
            .canonicalize()
            .map_err(DriverError::io("resolve", &dir))?;
        let mut released = 0;
        for entry in fs::read_dir(&dir).map_err(DriverError::io("read directory", &dir))? {
            let view = entry
                .map_err(DriverError::io("read directory", &dir))?
                .path();
            if mount::is_mounted(&view).map_err(DriverError::io("read", crate::mountinfo::PATH))? {
                mount::unmount(&view).map_err(DriverError::io("unmount", &view))?;
                released += 1;
            }
            // Only an empty directory: nothing below a view is ever removed.
            fs::remove_dir(&view).map_err(DriverError::io("remove directory", &view))?;
        }
        Ok(released)
    }

    fn snapshot_dir(&self, id: &ChainId) -> PathBuf {
        self.root.join("snapshots").join(id.store_name())
    }

    fn diff_dir(&self, id: &ChainId) -> PathBuf {
        self.snapshot_dir(id).join("diff")
    }

    fn parent(&self, id: &ChainId) -> Result<Option<ChainId>> {
        if id.is_empty() {
            return Ok(None);
        }
        let path = self.snapshot_dir(id).join("parent");
        let text = fs::read_to_string(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => DriverError::NoSnapshot(id.clone()),
            _ => DriverError::io("read", path.clone())(e),
        })?;
        ChainId::from_store_name(text.trim())
            .map(Some)
            .ok_or_else(|| {
                let bad = io::Error::new(io::ErrorKind::InvalidData, "not a snapshot name");
                DriverError::io("parse", path)(bad)
            })
    }

    /// The `diff` dirs that make up snapshot `id`, top first.
    fn lowers(&self, id: &ChainId) -> Result<Vec<PathBuf>> {
        let mut lowers = Vec::new();
        let mut next = Some(id.clone());
        while let Some(id) = next {
            if !self.snapshot_dir(&id).join("diff").is_dir() || lowers.len() > MAX_CHAIN {
                return Err(DriverError::NoSnapshot(id));
            }
            lowers.push(self.diff_dir(&id));
            next = self.parent(&id)?;
        }
        Ok(lowers)
    }

    /// Mount snapshot `id` read-only at `target` (the empty one needs no mount).
    fn mount_view(&self, id: &ChainId, target: &Path) -> Result<PathBuf> {
        if id.is_empty() {
            return Ok(self.diff_dir(id));
        }
        let lowers = self.lowers(id)?;
        if !mount::is_mounted(target).map_err(DriverError::io("read", crate::mountinfo::PATH))? {
            fs::create_dir_all(target).map_err(DriverError::io("create directory", target))?;
            let overlay = Overlay {
                lowers: &lowers,
                upper: None,
                volatile: false,
            };
            overlay
                .mount(target)
                .map_err(DriverError::io("mount overlay at", target))?;
        }
        Ok(target.to_path_buf())
    }

    /// Unmount and delete a work tree's dirs and its record.
    fn remove_work(&self, name: &str) -> Result<()> {
        let dir = self.trees.dir_of(name);
        unmount_tree_dir(&dir)?;
        remove_tree(&dir)?;
        self.trees.remove(name)
    }

    /// Every snapshot with the one it sits on.
    fn parents(&self) -> Result<Vec<(ChainId, Option<ChainId>)>> {
        super::list_snapshots(&self.root.join("snapshots"))?
            .into_iter()
            .map(|id| Ok((id.clone(), self.parent(&id)?)))
            .collect()
    }
}

impl SnapshotDriver for OverlayDriver {
    fn name(&self) -> &'static str {
        "overlay"
    }

    fn tree_is_mount(&self) -> bool {
        true
    }

    fn exists(&self, id: &ChainId) -> Result<bool> {
        Ok(self.diff_dir(id).is_dir() && (id.is_empty() || self.lowers(id).is_ok()))
    }

    /// A read-only overlay mount under `views/`, kept until the snapshot is
    /// removed, so the path stays good after the command (`unpack`).
    ///
    /// Several genoci may ask for the same view at once (`unpack` in two
    /// terminals): the check and the mount are made under a lock on
    /// `views/`, or the view would be mounted twice, one over the other.
    fn snapshot_path(&self, id: &ChainId) -> Result<PathBuf> {
        use crate::lock::{acquire, LockError, Mode, Subject, Wait};
        let views = self.root.join("views");
        let subject = Subject {
            what: format!("the overlay views in {}", views.display()),
            why: "another genoci is mounting one".to_string(),
        };
        let wait = Wait::Quietly(std::time::Duration::from_secs(1));
        let _lock = acquire(&views, Mode::Exclusive, wait, &subject).map_err(|e| match e {
            LockError::Io { path, source } => DriverError::io("lock", path)(source),
            _ => DriverError::Interrupted,
        })?;
        self.mount_view(id, &views.join(id.store_name()))
    }

    fn checkout_as(&self, base: &ChainId, name: &str, owner: &Owner) -> Result<WorkTree> {
        let lowers = self.lowers(base)?;
        self.trees.create(name, base, owner)?;
        let dir = self.trees.dir_of(name);
        tracing::debug!(name, base = %base, layers = lowers.len(), "mounting an overlay work tree");
        let (upper, work, root) = (dir.join("upper"), dir.join("work"), dir.join("root"));
        let mounted = [&upper, &work, &root]
            .iter()
            .try_for_each(|d| {
                fs::create_dir_all(d).map_err(DriverError::io("create directory", *d))
            })
            .and_then(|()| {
                // A checkout kept for a layout may be mounted again (after a
                // reboot); a build's tree is mounted once.
                let overlay = Overlay {
                    lowers: &lowers,
                    upper: Some((&upper, &work)),
                    volatile: owner.layout.is_none(),
                };
                overlay
                    .mount(&root)
                    .map_err(DriverError::io("mount overlay at", &root))
            });
        if let Err(e) = mounted {
            let _ = self.remove_work(name);
            return Err(e);
        }
        Ok(WorkTree {
            name: name.to_string(),
            base: base.clone(),
            path: root,
            owner: owner.clone(),
        })
    }

    fn changes(&self, tree: &WorkTree) -> Result<Vec<Change>> {
        let dir = self.trees.dir_of(&tree.name);
        // Unmounted, the root is an empty directory and the upper dir alone
        // says nothing of what was written there since.
        if !mount::is_mounted(&tree.path)
            .map_err(DriverError::io("read", crate::mountinfo::PATH))?
        {
            return Err(DriverError::io("read the work tree", tree.path.clone())(
                io::Error::other("its overlay is not mounted"),
            ));
        }
        let base_mount = dir.join("base");
        let base = self.mount_view(&tree.base, &base_mount)?;
        let result =
            upper::candidates(&dir.join("upper"), &base, &tree.path).and_then(|mut candidates| {
                // The other names of a linked file may lie outside the upper
                // dir (below a renamed directory, or never touched).
                diff::add_link_names(&base, &tree.path, &mut candidates)?;
                let changes = diff::compare(&base, &tree.path, &candidates)?;
                tracing::debug!(
                    tree = %tree.name,
                    candidates = candidates.len(),
                    changes = changes.len(),
                    "changes from the upper dir"
                );
                Ok(changes)
            });
        unmount_if_mounted(&base_mount)?;
        result
    }

    fn checkin(&self, tree: WorkTree, id: &ChainId) -> Result<()> {
        let dir = self.trees.dir_of(&tree.name);
        let dest = self.snapshot_dir(id);
        if !dest.exists()
            && mount::is_mounted(&tree.path)
                .map_err(DriverError::io("read", crate::mountinfo::PATH))?
        {
            links::complete(&dir.join("upper"), &dir.join("work"), &tree.path)?;
        }
        unmount_tree_dir(&dir)?;
        if dest.exists() {
            return self.remove_work(&tree.name);
        }
        // Assembled beside the snapshots under a name that is not one, then
        // renamed: a snapshot is either whole or absent.
        let staging = self
            .root
            .join("snapshots")
            .join(format!("{STAGING}{}", worktree::store_name(&tree.name)));
        remove_tree(&staging)?;
        fs::create_dir(&staging).map_err(DriverError::io("create directory", &staging))?;
        let parent = staging.join("parent");
        fs::write(&parent, tree.base.store_name()).map_err(DriverError::io("write", &parent))?;
        let upper = dir.join("upper");
        fs::rename(&upper, staging.join("diff")).map_err(DriverError::io("rename", &upper))?;
        if let Err(e) = fs::rename(&staging, &dest).map_err(DriverError::io("rename", &staging)) {
            // Another build committed the same ChainID since the check.
            if !e.lost_commit_race(&dest) {
                return Err(e);
            }
            remove_tree(&staging)?;
        }
        self.remove_work(&tree.name)
    }

    fn discard(&self, tree: WorkTree) -> Result<()> {
        self.remove_work(&tree.name)
    }

    /// Upper snapshots before the ones they sit on, so that removing them
    /// in this order never takes a layer from under a kept one.
    fn snapshots(&self) -> Result<Vec<ChainId>> {
        let parents = self.parents()?;
        let depth = |id: &ChainId| {
            let mut n = 0;
            let mut next = Some(id.clone());
            while let Some(p) = next.and_then(|i| parents.iter().find(|(c, _)| *c == i)) {
                n += 1;
                next = p.1.clone();
                if n > MAX_CHAIN {
                    break;
                }
            }
            n
        };
        let mut ids: Vec<(usize, ChainId)> = parents
            .iter()
            .map(|(id, _)| (depth(id), id.clone()))
            .collect();
        ids.sort_by(|a, b| b.cmp(a));
        Ok(ids.into_iter().map(|(_, id)| id).collect())
    }

    /// A snapshot another one sits on stays: its layer is part of that tree.
    fn remove(&self, id: &ChainId) -> Result<()> {
        if id.is_empty() {
            return Ok(());
        }
        if let Some((child, _)) = self
            .parents()?
            .into_iter()
            .find(|(_, p)| p.as_ref() == Some(id))
        {
            tracing::debug!(snapshot = %id, child = %child, "kept: another snapshot sits on it");
            return Ok(());
        }
        let view = self.root.join("views").join(id.store_name());
        unmount_if_mounted(&view)?;
        remove_tree(&view)?;
        remove_tree(&self.snapshot_dir(id))
    }

    /// The base's `diff` dirs and the tree's upper and work dirs, mounted
    /// `volatile` as the tree is (a build's, not a kept checkout).
    fn layers(&self, tree: &WorkTree) -> Result<Option<Layers>> {
        let dir = self.trees.dir_of(&tree.name);
        Ok(Some(Layers {
            lowers: self.lowers(&tree.base)?,
            upper: dir.join("upper"),
            work: dir.join("work"),
            volatile: tree.owner.layout.is_none(),
        }))
    }

    /// Unmounted for good (not lazily: a process still inside the tree
    /// would keep this overlay alive beside the caller's), and mounted
    /// again with the same layers and options.
    fn lend(&self, tree: &WorkTree) -> Result<Lent<'_>> {
        let Some(layers) = self.layers(tree)? else {
            unreachable!("an overlay tree always has layers")
        };
        if !mount::is_mounted(&tree.path)
            .map_err(DriverError::io("read", crate::mountinfo::PATH))?
        {
            return Err(DriverError::io("lend the work tree", tree.path.clone())(
                io::Error::other("its overlay is not mounted"),
            ));
        }
        let mark = self.trees.dir_of(&tree.name).join(LENT);
        let current = serde_json::to_vec(&Process::current()).expect("a process serializes");
        fs::write(&mark, current).map_err(DriverError::io("write", &mark))?;
        if let Err(e) = nix::mount::umount2(&tree.path, nix::mount::MntFlags::empty()) {
            let _ = fs::remove_file(&mark);
            return Err(DriverError::io("unmount", tree.path.clone())(e.into()));
        }
        let cleared = clear_volatile(&layers.work);
        let path = tree.path.clone();
        let restore = move || {
            clear_volatile(&layers.work)?;
            Overlay {
                lowers: &layers.lowers,
                upper: Some((&layers.upper, &layers.work)),
                volatile: layers.volatile,
            }
            .mount(&path)
            .map_err(DriverError::io("mount overlay at", &path))?;
            fs::remove_file(&mark).map_err(DriverError::io("remove", &mark))
        };
        match cleared {
            Ok(()) => Ok(Lent::new(restore)),
            Err(e) => {
                let _ = restore();
                Err(e)
            }
        }
    }

    fn work_trees(&self) -> Result<Vec<WorkTree>> {
        let trees = self.trees.list(|dir| dir.join("root"))?;
        let mounts = crate::mountinfo::mount_points()
            .map_err(DriverError::io("read", crate::mountinfo::PATH))?;
        // Only a checkout kept for a layout outlives its process: a tree a
        // running process owns may be between its record and its mount.
        for tree in &trees {
            let kept = tree.owner.process.is_none() && tree.owner.layout.is_some();
            if kept && !mounts.contains(&tree.path) {
                self.remount(tree)?;
            }
        }
        Ok(trees)
    }
}

fn probe_in(probe: &Path) -> io::Result<()> {
    let dirs = ["lower", "upper", "work", "root"].map(|d| probe.join(d));
    for d in &dirs {
        fs::create_dir_all(d)?;
    }
    let (a, b) = (dirs[0].join("a"), dirs[0].join("b"));
    fs::write(&a, "lower")?;
    fs::hard_link(&a, &b)?;
    let overlay = Overlay {
        lowers: &[dirs[0].clone()],
        upper: Some((&dirs[1], &dirs[2])),
        volatile: false,
    };
    overlay.mount(&dirs[3])?;
    let through_b =
        fs::write(dirs[3].join("a"), "upper").and_then(|()| fs::read(dirs[3].join("b")));
    mount::unmount(&dirs[3])?;
    // Without the index (a filesystem that gives no file handles, where the
    // kernel quietly turns it off) layers would differ from plain's.
    if through_b? != b"upper" {
        return Err(io::Error::other(
            "writing one name of a linked lower file leaves the other (no overlay index: \
             does the filesystem give file handles?)",
        ));
    }
    Ok(())
}

/// The file in a work tree's dir naming the process its mount is lent to
/// (see `lend`): while that process lives, another genoci must not take
/// the unmounted tree for a kept checkout after a reboot and mount it
/// again beside the lender's own mount of its layers.
const LENT: &str = "lent";

/// Whether the tree in `dir` is lent to a process that still runs.
fn lent_to_a_live_process(dir: &Path) -> bool {
    fs::read(dir.join(LENT))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Process>(&bytes).ok())
        .is_some_and(|p| p.is_alive())
}

/// Remove the volatile mark after the overlay that left it was unmounted
/// in order: then every write reached the upper dir's page cache, where
/// the next mount reads it, so the upper dir is intact (the kernel's
/// overlayfs documentation allows this). A genoci killed with the overlay
/// mounted never comes here: its tree is discarded, mark and all.
fn clear_volatile(work: &Path) -> Result<()> {
    let mark = work.join(mount::VOLATILE_MARK);
    match fs::remove_dir_all(&mark) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(DriverError::io("remove", mark)(e)),
        _ => Ok(()),
    }
}

/// Unmount what a work tree's dir may have mounted: the tree and its base.
fn unmount_tree_dir(dir: &Path) -> Result<()> {
    for sub in ["root", "base"] {
        unmount_if_mounted(&dir.join(sub))?;
    }
    Ok(())
}

fn unmount_if_mounted(path: &Path) -> Result<()> {
    if mount::is_mounted(path).map_err(DriverError::io("read", crate::mountinfo::PATH))? {
        mount::unmount(path).map_err(DriverError::io("unmount", path))?;
    }
    Ok(())
}

fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(DriverError::io("remove", path.to_path_buf())(e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
