//! The plain driver: snapshots are directory copies under `storedir`.
//!
//! ```text
//! storedir/snapshots/<chain>     committed trees (never written again)
//! storedir/work/wt-<hash>.json  a work tree's record (see [`super::worktree`])
//! storedir/work/wt-<hash>/       the work tree
//! storedir/inodes/wt-<hash>      its directories' inodes; written when the copy is complete
//! ```
//!
//! `changes` must catch every change, even a rewrite that keeps size and
//! mtime, without reading every file. The inodes file is written after the
//! copy, so its ctime is a watermark: any later write, chmod, chown, xattr
//! change, rename or link sets the entry's ctime at or after it (userspace
//! cannot set ctime). Entries at or past the watermark are candidates and get
//! the full comparison; the rest are exactly as copied.
//!
//! A rename sets the ctime of the entry moved, not of what lies below it: a
//! directory moved onto another's path brings children that look untouched.
//! So the inode of every directory of the copy is recorded at checkout
//! (in the inodes file), and everything below a directory whose inode
//! at that path is not the recorded one is a candidate too.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::diff::{self, list};
use super::worktree::{self, Trees};
use super::{ChainId, DriverError, Owner, Result, SnapshotDriver, WorkTree};
use crate::change::Change;
use crate::fsutil::{copy_tree, CopyOptions};

pub struct PlainDriver {
    root: PathBuf,
    trees: Trees,
}

impl PlainDriver {
    /// Open (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<PlainDriver> {
        for sub in ["snapshots", "work", "inodes"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(DriverError::io("create directory", &dir))?;
        }
        let canonical = root
            .canonicalize()
            .map_err(DriverError::io("resolve", root))?;
        if canonical == Path::new("/") {
            return Err(DriverError::UnsafePath(
                canonical,
                "it is the root directory".into(),
            ));
        }
        let driver = PlainDriver {
            trees: Trees::new(canonical.join("work")),
            root: canonical,
        };
        let empty = driver.snapshot_dir(&ChainId::empty());
        match fs::create_dir(&empty) {
            // Made before, or by another genoci opening the new store at once.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            made => made.map_err(DriverError::io("create directory", &empty))?,
        }
        driver.trees.retire_legacy(
            |from, to| {
                // Its inodes file sits under its old name: without it every
                // directory counts as moved, slower but never wrong.
                driver.remove_legacy_inodes(from)?;
                fs::rename(from, to).map_err(DriverError::io("rename", from))
            },
            |tree| {
                driver.remove_legacy_inodes(tree)?;
                Self::remove_tree(tree)
            },
        )?;
        Ok(driver)
    }

    /// The inodes file of a tree of the previous store format.
    fn remove_legacy_inodes(&self, tree: &Path) -> Result<()> {
        match tree.file_name() {
            Some(name) => worktree::remove_file_if_present(&self.root.join("inodes").join(name)),
            None => Ok(()),
        }
    }

    fn snapshot_dir(&self, id: &ChainId) -> PathBuf {
        self.root.join("snapshots").join(id.store_name())
    }

    fn inodes_path(&self, name: &str) -> PathBuf {
        self.root.join("inodes").join(worktree::store_name(name))
    }

    fn remove_inodes(&self, name: &str) -> Result<()> {
        worktree::remove_file_if_present(&self.inodes_path(name))
    }

    fn remove_tree(path: &Path) -> Result<()> {
        match fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DriverError::io("remove", path.to_path_buf())(e)),
        }
    }
}

impl SnapshotDriver for PlainDriver {
    fn name(&self) -> &'static str {
        "plain"
    }

    fn exists(&self, id: &ChainId) -> Result<bool> {
        Ok(self.snapshot_dir(id).is_dir())
    }

    fn snapshot_path(&self, id: &ChainId) -> Result<PathBuf> {
        let dir = self.snapshot_dir(id);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(DriverError::NoSnapshot(id.clone()))
        }
    }

    /// The inodes file is written after the copy: its ctime is the watermark.
    fn checkout_as(&self, base: &ChainId, name: &str, owner: &Owner) -> Result<WorkTree> {
        let src = self.snapshot_path(base)?;
        self.trees.create(name, base, owner)?;
        let path = self.trees.dir_of(name);
        tracing::debug!(name, base = %base, "checking out");
        let made = copy_tree(&src, &path, CopyOptions::default())
            .map_err(|e| {
                if crate::signals::interrupted() {
                    DriverError::Interrupted
                } else {
                    DriverError::io("copy snapshot to", &path)(e)
                }
            })
            .and_then(|()| DirInodes::of_tree(&path))
            .and_then(|dirs| {
                let inodes = self.inodes_path(name);
                fs::write(&inodes, dirs.to_bytes()).map_err(DriverError::io("write", &inodes))
            });
        if let Err(e) = made {
            // A full disk: neither the tree nor a partial record may stay.
            let _ = self.remove_inodes(name);
            let _ = Self::remove_tree(&path);
            let _ = self.trees.remove(name);
            return Err(e);
        }
        Ok(WorkTree {
            name: name.to_string(),
            base: base.clone(),
            path,
            owner: owner.clone(),
        })
    }

    fn changes(&self, tree: &WorkTree) -> Result<Vec<Change>> {
        let base = self.snapshot_path(&tree.base)?;
        let inodes = self.inodes_path(&tree.name);
        // Without the inodes file (a tree checked out by an older genoci)
        // every entry is a candidate: slower, never wrong.
        let (watermark, dirs) = match fs::read(&inodes) {
            Ok(bytes) => {
                let m = fs::symlink_metadata(&inodes).map_err(DriverError::io("stat", &inodes))?;
                ((m.ctime(), m.ctime_nsec()), DirInodes::from_bytes(&bytes))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => ((0, 0), DirInodes::default()),
            Err(e) => return Err(DriverError::io("read", &inodes)(e)),
        };
        let walk = Walk {
            base: &base,
            tree: &tree.path,
            watermark,
            dirs: &dirs,
        };
        let mut candidates = BTreeSet::new();
        walk.collect(Path::new(""), false, &mut candidates)?;
        diff::add_link_names(&base, &tree.path, &mut candidates)?;
        diff::compare(&base, &tree.path, &candidates)
    }

    fn checkin(&self, tree: WorkTree, id: &ChainId) -> Result<()> {
        let dest = self.snapshot_dir(id);
        if dest.exists() {
            return self.discard(tree);
        }
        if let Err(e) = fs::rename(&tree.path, &dest).map_err(DriverError::io("rename", &tree.path))
        {
            // Another build committed the same ChainID since the check.
            return if e.lost_commit_race(&dest) {
                self.discard(tree)
            } else {
                Err(e)
            };
        }
        self.remove_inodes(&tree.name)?;
        self.trees.remove(&tree.name)
    }

    fn discard(&self, tree: WorkTree) -> Result<()> {
        Self::remove_tree(&self.trees.dir_of(&tree.name))?;
        self.remove_inodes(&tree.name)?;
        self.trees.remove(&tree.name)
    }

    fn snapshots(&self) -> Result<Vec<ChainId>> {
        super::list_snapshots(&self.root.join("snapshots"))
    }

    fn remove(&self, id: &ChainId) -> Result<()> {
        if id.is_empty() {
            return Ok(());
        }
        Self::remove_tree(&self.snapshot_dir(id))
    }

    fn work_trees(&self) -> Result<Vec<WorkTree>> {
        self.trees.list(Path::to_path_buf)
    }
}

/// The inode of each directory of a work tree when it was checked out.
#[derive(Default)]
struct DirInodes(HashMap<PathBuf, u64>);

impl DirInodes {
    fn of_tree(root: &Path) -> Result<DirInodes> {
        fn walk(root: &Path, rel: &Path, out: &mut HashMap<PathBuf, u64>) -> Result<()> {
            let full = root.join(rel);
            let meta = fs::symlink_metadata(&full).map_err(DriverError::io("stat", &full))?;
            out.insert(rel.to_path_buf(), meta.ino());
            for name in list(&full)? {
                let child = rel.join(name);
                let is_dir = fs::symlink_metadata(root.join(&child)).is_ok_and(|m| m.is_dir());
                if is_dir {
                    walk(root, &child, out)?;
                }
            }
            Ok(())
        }
        let mut map = HashMap::new();
        walk(root, Path::new(""), &mut map)?;
        Ok(DirInodes(map))
    }

    /// `<inode> <path>\0` per directory: paths hold any byte but NUL.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (path, ino) in &self.0 {
            out.extend_from_slice(format!("{ino} ").as_bytes());
            out.extend_from_slice(path.as_os_str().as_bytes());
            out.push(0);
        }
        out
    }

    fn from_bytes(bytes: &[u8]) -> DirInodes {
        let mut map = HashMap::new();
        for rec in bytes.split(|&b| b == 0).filter(|r| !r.is_empty()) {
            let Some(space) = rec.iter().position(|&b| b == b' ') else {
                continue;
            };
            let ino = std::str::from_utf8(&rec[..space])
                .ok()
                .and_then(|t| t.parse().ok());
            if let Some(ino) = ino {
                let path = PathBuf::from(std::ffi::OsStr::from_bytes(&rec[space + 1..]));
                map.insert(path, ino);
            }
        }
        DirInodes(map)
    }

    /// Whether the directory now at `rel` is the one checked out there.
    fn is_original(&self, rel: &Path, ino: u64) -> bool {
        self.0.get(rel) == Some(&ino)
    }
}

/// Both trees walked together, to find the candidates.
struct Walk<'a> {
    base: &'a Path,
    tree: &'a Path,
    watermark: (i64, i64),
    dirs: &'a DirInodes,
}

impl Walk<'_> {
    /// Every entry of the work tree touched at or after the watermark or
    /// below a moved directory (`moved`), and every base entry missing from
    /// the work tree.
    fn collect(&self, rel: &Path, moved: bool, out: &mut BTreeSet<PathBuf>) -> Result<()> {
        crate::signals::check().map_err(|_| DriverError::Interrupted)?;
        let base_names = list(&self.base.join(rel))?;
        let tree_names = list(&self.tree.join(rel))?;
        for name in base_names.difference(&tree_names) {
            out.insert(rel.join(name));
        }
        for name in &tree_names {
            let child = rel.join(name);
            let path = self.tree.join(&child);
            let meta = fs::symlink_metadata(&path).map_err(DriverError::io("stat", &path))?;
            let child_moved = moved || meta.is_dir() && !self.dirs.is_original(&child, meta.ino());
            if child_moved || (meta.ctime(), meta.ctime_nsec()) >= self.watermark {
                out.insert(child.clone());
            }
            let base_is_dir =
                fs::symlink_metadata(self.base.join(&child)).is_ok_and(|m| m.is_dir());
            if meta.is_dir() {
                // A new directory's entries are all candidates (the files
                // among them may be linked to names elsewhere).
                self.collect(&child, child_moved || !base_is_dir, out)?;
            }
            if base_is_dir != meta.is_dir() {
                out.insert(child);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::driver::contract::contract_tests!(Some(store()), 50);

    fn store() -> (tempfile::TempDir, PlainDriver) {
        let t = tempfile::tempdir().unwrap();
        let d = PlainDriver::open(&t.path().join("store")).unwrap();
        (t, d)
    }

    fn commit(
        d: &PlainDriver,
        base: &ChainId,
        name: &str,
        edit: impl FnOnce(&Path),
    ) -> (ChainId, Vec<Change>) {
        let tree = d.checkout(base, name).unwrap();
        edit(&tree.path);
        let changes = d.changes(&tree).unwrap();
        let id = base.push(&format!(
            "sha256:{}",
            format!("{name:0>64}").replace(|c: char| !c.is_ascii_hexdigit(), "0")
        ));
        d.checkin(tree, &id).unwrap();
        (id, changes)
    }

    #[test]
    fn lifecycle_and_changes() {
        let (_t, d) = store();
        let (one, changes) = commit(&d, &ChainId::empty(), "a", |root| {
            fs::create_dir(root.join("etc")).unwrap();
            fs::write(root.join("etc/conf"), "v1").unwrap();
        });
        assert_eq!(changes.len(), 2);
        assert!(d.exists(&one).unwrap());
        // A rewrite with the same size and mtime is still caught.
        let tree = d.checkout(&one, "b").unwrap();
        let conf = tree.path.join("etc/conf");
        let mtime = filetime::FileTime::from_last_modification_time(&fs::metadata(&conf).unwrap());
        fs::write(&conf, "v2").unwrap();
        filetime::set_file_mtime(&conf, mtime).unwrap();
        assert_eq!(
            d.changes(&tree).unwrap(),
            vec![Change::Write(PathBuf::from("etc/conf"))]
        );
        d.discard(tree).unwrap();
        assert!(d.work_trees().unwrap().is_empty());
    }

    #[test]
    fn changes_equal_a_full_comparison() {
        if !nix::unistd::geteuid().is_root() {
            crate::test_support::skip("needs root (device nodes, owners)");
            return;
        }
        let (_t, d) = store();
        let got = crate::driver::contract::changes_equal_a_full_comparison(
            &d,
            crate::driver::contract::modify_links_and_moves,
        );
        for change in [
            Change::Write("etc/third".into()),
            Change::Write("links/orig".into()),
            Change::Write("left/g".into()),
            Change::Delete("right/g".into()),
            Change::Write("dev/loopish".into()),
        ] {
            assert!(got.contains(&change), "{change:?} missing from {got:#?}");
        }
    }

    #[test]
    fn checking_out_a_name_twice_is_busy() {
        let (_t, d) = store();
        let _tree = d.checkout(&ChainId::empty(), "x").unwrap();
        assert!(matches!(
            d.checkout(&ChainId::empty(), "x"),
            Err(DriverError::Busy(_))
        ));
        assert_eq!(d.work_trees().unwrap().len(), 1);
    }

    #[test]
    fn unchanged_tree_has_no_changes() {
        let (_t, d) = store();
        let (one, _) = commit(&d, &ChainId::empty(), "a", |root| {
            fs::create_dir_all(root.join("usr/bin")).unwrap();
            fs::write(root.join("usr/bin/tool"), "#!").unwrap();
        });
        let tree = d.checkout(&one, "b").unwrap();
        assert_eq!(d.changes(&tree).unwrap(), vec![]);
    }

    #[test]
    fn a_work_tree_keeps_its_owner() {
        let (_t, d) = store();
        let kept = Owner {
            layout: Some("/project/oci".into()),
            note: Some(serde_json::json!({"tag": "app"})),
            ..Owner::default()
        };
        d.checkout_as(&ChainId::empty(), "kept", &kept).unwrap();
        d.checkout(&ChainId::empty(), "mine").unwrap();
        let trees = d.work_trees().unwrap();
        assert_eq!(trees[0].owner, kept);
        assert!(!trees[0].is_abandoned());
        assert_eq!(trees[1].owner, Owner::this_process());
        assert!(!trees[1].is_abandoned());
    }

    /// Another process sharing the store lists the work trees (to remove
    /// those left by dead processes) while a checkout copies: it must never
    /// see a tree in the making as abandoned.
    #[test]
    fn a_tree_in_the_making_is_never_taken_for_an_abandoned_one() {
        let (_t, d) = store();
        let (big, _) = commit(&d, &ChainId::empty(), "a", |root| {
            for n in 0..1000 {
                fs::write(root.join(format!("f{n}")), "x").unwrap();
            }
        });
        let done = std::sync::atomic::AtomicBool::new(false);
        let seen = std::thread::scope(|s| {
            s.spawn(|| {
                for n in 0..3 {
                    let tree = d.checkout(&big, &format!("t{n}")).unwrap();
                    d.discard(tree).unwrap();
                }
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            let mut seen = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                for tree in d.work_trees().unwrap() {
                    assert!(!tree.is_abandoned(), "{tree:?} taken for abandoned");
                    seen += 1;
                }
            }
            seen
        });
        assert!(seen > 0, "no listing caught a checkout under way");
        assert!(matches!(
            d.checkout_as(&big, "x", &Owner::this_process())
                .and_then(|_| d.checkout(&big, "x")),
            Err(DriverError::Busy(_))
        ));
    }

    /// A process killed while it put a record in place leaves its temp
    /// file: the next listing removes it, and never one of a live process.
    #[test]
    fn temp_records_of_dead_processes_are_removed() {
        let (t, d) = store();
        let work = t.path().join("store/work");
        let me = super::super::Process::current();
        let dead = work.join(format!(".record-{}-{}-b", me.pid, me.start + 1));
        let live = work.join(format!(".record-{}-{}-c", me.pid, me.start));
        for file in [&dead, &live] {
            fs::write(file, "{").unwrap();
        }
        assert!(d.work_trees().unwrap().is_empty());
        assert!(!dead.exists());
        assert!(live.exists());
    }

    #[test]
    fn directories_renamed_onto_others_are_seen_at_any_depth() {
        let (_t, d) = store();
        let (one, _) = commit(&d, &ChainId::empty(), "a", |root| {
            for (dir, text) in [("opt/app/lib/deep", "old"), ("opt/new/lib/deep", "new")] {
                fs::create_dir_all(root.join(dir)).unwrap();
                fs::write(root.join(dir).join("f"), text).unwrap();
            }
            fs::create_dir_all(root.join("x/in")).unwrap();
            fs::create_dir_all(root.join("y/in")).unwrap();
            fs::write(root.join("x/in/f"), "x").unwrap();
            fs::write(root.join("y/in/f"), "y").unwrap();
        });
        let tree = d.checkout(&one, "b").unwrap();
        let root = &tree.path;
        fs::remove_dir_all(root.join("opt/app")).unwrap();
        fs::rename(root.join("opt/new"), root.join("opt/app")).unwrap();
        fs::rename(root.join("x"), root.join("swap")).unwrap();
        fs::rename(root.join("y"), root.join("x")).unwrap();
        fs::rename(root.join("swap"), root.join("y")).unwrap();
        let base = d.snapshot_path(&one).unwrap();
        let got = d.changes(&tree).unwrap();
        assert_eq!(got, diff::full_compare(&base, root));
        assert!(got.contains(&Change::Write(PathBuf::from("opt/app/lib/deep/f"))));
        assert!(got.contains(&Change::Write(PathBuf::from("x/in/f"))));
    }

    #[test]
    fn names_cannot_escape_the_store() {
        let (t, d) = store();
        for name in ["../x", "a/b", "..", "/etc"] {
            let tree = d.checkout(&ChainId::empty(), name).unwrap();
            assert_eq!(tree.path.parent(), Some(d.root.join("work").as_path()));
            d.discard(tree).unwrap();
        }
        assert!(d.checkout(&ChainId::empty(), "").is_err());
        assert!(!t.path().join("x").exists() && !t.path().join("store/work/x").exists());
    }
}
