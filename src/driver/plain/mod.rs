//! The plain driver: snapshots are directory copies under `storedir`.
//!
//! ```text
//! storedir/snapshots/<chain>     committed trees (never written again)
//! storedir/work/<name>/          a work tree
//! storedir/work/<name>.json      its base and owner; written when the copy is complete
//! ```
//!
//! `changes` must catch every change, even a rewrite that keeps size and
//! mtime, without reading every file. The marker file is written after the
//! copy, so its ctime is a watermark: any later write, chmod, chown, xattr
//! change, rename or link sets the entry's ctime at or after it (userspace
//! cannot set ctime). Entries at or past the watermark are candidates and get
//! the full comparison; the rest are exactly as copied.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{diff, ChainId, Change, DriverError, Owner, Result, SnapshotDriver, WorkTree};
use crate::fsutil::{copy_tree, CopyOptions};

pub struct PlainDriver {
    root: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Marker {
    base: String,
    #[serde(default)]
    owner: Owner,
}

impl PlainDriver {
    /// Open (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<PlainDriver> {
        for sub in ["snapshots", "work"] {
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
        let driver = PlainDriver { root: canonical };
        let empty = driver.snapshot_dir(&ChainId::empty());
        if !empty.exists() {
            fs::create_dir(&empty).map_err(DriverError::io("create directory", &empty))?;
        }
        Ok(driver)
    }

    fn snapshot_dir(&self, id: &ChainId) -> PathBuf {
        self.root.join("snapshots").join(id.store_name())
    }

    fn work_dir(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.root.join("work").join(name))
    }

    fn marker_path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.root.join("work").join(format!("{name}.json")))
    }

    fn remove_tree(path: &Path) -> Result<()> {
        match fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DriverError::Io {
                op: "remove",
                path: path.to_path_buf(),
                source: e,
            }),
        }
    }
}

/// Work tree names become file names: keep them to one plain component.
fn check_name(name: &str) -> Result<()> {
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

    /// The store lock keeps other processes out while the copy is made, so
    /// the record can wait for the copy: its ctime is the watermark.
    fn checkout_as(&self, base: &ChainId, name: &str, owner: &Owner) -> Result<WorkTree> {
        let path = self.work_dir(name)?;
        let marker = self.marker_path(name)?;
        if path.exists() || marker.exists() {
            return Err(DriverError::Busy(name.to_string()));
        }
        let src = self.snapshot_path(base)?;
        tracing::debug!(name, base = %base, "checking out");
        if let Err(e) = copy_tree(&src, &path, CopyOptions::default()) {
            let _ = Self::remove_tree(&path);
            if crate::signals::interrupted() {
                return Err(DriverError::Interrupted);
            }
            return Err(DriverError::Io {
                op: "copy snapshot to",
                path,
                source: e,
            });
        }
        let body = serde_json::to_vec(&Marker {
            base: base.store_name(),
            owner: owner.clone(),
        })
        .expect("marker serializes");
        if let Err(e) = fs::write(&marker, body) {
            // A full disk: neither the tree nor a partial marker may stay.
            let _ = fs::remove_file(&marker);
            let _ = Self::remove_tree(&path);
            return Err(DriverError::io("write", &marker)(e));
        }
        Ok(WorkTree {
            name: name.to_string(),
            base: base.clone(),
            path,
            owner: owner.clone(),
        })
    }

    fn changes(&self, tree: &WorkTree) -> Result<Vec<Change>> {
        let marker = self.marker_path(&tree.name)?;
        let m = fs::symlink_metadata(&marker).map_err(DriverError::io("stat", &marker))?;
        let watermark = (m.ctime(), m.ctime_nsec());
        let base = self.snapshot_path(&tree.base)?;
        let mut candidates = BTreeSet::new();
        collect_candidates(&base, &tree.path, Path::new(""), watermark, &mut candidates)?;
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
        let marker = self.marker_path(&tree.name)?;
        fs::remove_file(&marker).map_err(DriverError::io("remove", &marker))
    }

    fn discard(&self, tree: WorkTree) -> Result<()> {
        Self::remove_tree(&self.work_dir(&tree.name)?)?;
        let marker = self.marker_path(&tree.name)?;
        match fs::remove_file(&marker) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(DriverError::Io {
                op: "remove",
                path: marker,
                source: e,
            }),
            _ => Ok(()),
        }
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
        let dir = self.root.join("work");
        let mut trees = Vec::new();
        for entry in fs::read_dir(&dir).map_err(DriverError::io("read directory", &dir))? {
            let entry = entry.map_err(DriverError::io("read directory", &dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let name = name.strip_suffix(".json").unwrap_or(&name).to_string();
            if trees.iter().any(|t: &WorkTree| t.name == name) || check_name(&name).is_err() {
                continue;
            }
            // A tree without its marker is a copy that never finished: its
            // base and owner are unknown, and it is only good for discarding.
            let marker = fs::read(self.marker_path(&name)?)
                .ok()
                .and_then(|b| serde_json::from_slice::<Marker>(&b).ok());
            let base = marker
                .as_ref()
                .and_then(|m| ChainId::from_store_name(&m.base))
                .unwrap_or_else(ChainId::empty);
            trees.push(WorkTree {
                path: self.work_dir(&name)?,
                name,
                base,
                owner: marker.map(|m| m.owner).unwrap_or_default(),
            });
        }
        trees.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(trees)
    }
}

/// Walk both trees together: every entry of the work tree touched at or after
/// the watermark, and every base entry missing from the work tree.
fn collect_candidates(
    base: &Path,
    tree: &Path,
    rel: &Path,
    watermark: (i64, i64),
    out: &mut BTreeSet<PathBuf>,
) -> Result<()> {
    crate::signals::check().map_err(|_| DriverError::Interrupted)?;
    let tree_dir = tree.join(rel);
    let base_dir = base.join(rel);
    let base_names = list(&base_dir)?;
    let tree_names = list(&tree_dir)?;
    for name in base_names.difference(&tree_names) {
        out.insert(rel.join(name));
    }
    for name in &tree_names {
        let child = rel.join(name);
        let path = tree.join(&child);
        let meta = fs::symlink_metadata(&path).map_err(DriverError::io("stat", &path))?;
        if (meta.ctime(), meta.ctime_nsec()) >= watermark {
            out.insert(child.clone());
        }
        let base_is_dir = fs::symlink_metadata(base.join(&child)).is_ok_and(|m| m.is_dir());
        if meta.is_dir() && base_is_dir {
            collect_candidates(base, tree, &child, watermark, out)?;
        } else if base_is_dir != meta.is_dir() {
            out.insert(child);
        }
    }
    Ok(())
}

fn list(dir: &Path) -> Result<BTreeSet<std::ffi::OsString>> {
    let mut names = BTreeSet::new();
    match fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                names.insert(
                    e.map_err(DriverError::io("read directory", dir))?
                        .file_name(),
                );
            }
        }
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {}
        Err(e) => {
            return Err(DriverError::Io {
                op: "read directory",
                path: dir.to_path_buf(),
                source: e,
            })
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn equal_checkins_at_once_all_succeed() {
        let (_t, d) = store();
        crate::driver::contract::equal_checkins_race(&d, 16, 50);
    }

    #[test]
    fn names_cannot_escape_the_store() {
        let (_t, d) = store();
        for bad in ["../x", "a/b", "..", ""] {
            assert!(d.checkout(&ChainId::empty(), bad).is_err(), "{bad}");
        }
    }
}
