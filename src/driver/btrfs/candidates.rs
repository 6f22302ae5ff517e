//! From the paths a send stream touched to every path at which the base and
//! the work tree may differ, still without walking the whole tree.
//!
//! The stream names each changed inode once, by one of its names, sometimes a
//! temporary one (`o257-7-0`) or one that only holds until a parent directory
//! is renamed later in the stream. Three things close the gap:
//! - an inode seen under a temporary name is looked up by number;
//! - a changed inode with several hard links is looked up by number, so
//!   every name of it is compared;
//! - a directory that took the place of another one (a rename onto a path
//!   that was a directory in the base), or is new at its path, is walked on
//!   both sides, since its entries are not named by the stream when they did
//!   not change themselves (and any of them may be linked elsewhere).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use super::sys::System;
use crate::driver::diff::TreeView;
use crate::driver::{DriverError, Result};

pub fn expand(
    sys: &dyn System,
    base: &Path,
    tree: &Path,
    touched: BTreeSet<PathBuf>,
) -> Result<BTreeSet<PathBuf>> {
    let mut out = touched;

    let orphans: BTreeSet<u64> = out
        .iter()
        .flat_map(|p| p.components().filter_map(orphan_inode))
        .collect();
    add_inode_paths(sys, base, tree, &orphans, &mut out)?;

    let mut base_view = TreeView::new(base);
    let mut tree_view = TreeView::new(tree);
    let mut replaced_dirs = Vec::new();
    for rel in &out {
        crate::signals::check().map_err(|_| DriverError::Interrupted)?;
        let old = base_view.lstat(rel)?;
        let new = tree_view.lstat(rel)?;
        // A directory new at its path: its entries may be linked to
        // names elsewhere, and a layer writes them all anyway.
        if new.as_ref().is_some_and(|n| n.is_dir())
            && !old
                .as_ref()
                .is_some_and(|o| o.is_dir() && Some(o.ino()) == new.as_ref().map(|n| n.ino()))
            && !rel
                .ancestors()
                .skip(1)
                .any(|a| replaced_dirs.contains(&a.to_path_buf()))
        {
            replaced_dirs.push(rel.clone());
        }
    }
    for dir in &replaced_dirs {
        walk(base, dir, &mut |p| {
            out.insert(p);
        })?;
        walk(tree, dir, &mut |p| {
            out.insert(p);
        })?;
    }
    add_link_names(sys, base, tree, &mut out)?;
    Ok(out)
}

/// Every name, in both trees, of each multiply-linked file among the
/// candidates, until no new one turns up (a name found in the base may be
/// linked to others in the tree).
fn add_link_names(
    sys: &dyn System,
    base: &Path,
    tree: &Path,
    out: &mut BTreeSet<PathBuf>,
) -> Result<()> {
    let mut seen = BTreeSet::new();
    let mut fresh: Vec<PathBuf> = out.iter().cloned().collect();
    while !fresh.is_empty() {
        let mut base_view = TreeView::new(base);
        let mut tree_view = TreeView::new(tree);
        let mut linked = BTreeSet::new();
        for rel in &fresh {
            crate::signals::check().map_err(|_| DriverError::Interrupted)?;
            for (side, view) in [(0u8, &mut base_view), (1, &mut tree_view)] {
                if let Some(m) = view.lstat(rel)? {
                    if !m.is_dir() && m.nlink() > 1 && seen.insert((side, m.ino())) {
                        linked.insert(m.ino());
                    }
                }
            }
        }
        let mut found = BTreeSet::new();
        add_inode_paths(sys, base, tree, &linked, &mut found)?;
        fresh = found
            .into_iter()
            .filter(|p| out.insert(p.clone()))
            .collect();
    }
    Ok(())
}

/// The inode number in a send stream's temporary name `o<ino>-<gen>-<seq>`.
fn orphan_inode(c: Component<'_>) -> Option<u64> {
    let name = c.as_os_str().to_str()?.strip_prefix('o')?;
    let mut parts = name.split('-');
    let ino = parts.next()?.parse().ok()?;
    let numeric =
        |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    (numeric(parts.next()) && numeric(parts.next()) && parts.next().is_none()).then_some(ino)
}

fn add_inode_paths(
    sys: &dyn System,
    base: &Path,
    tree: &Path,
    inodes: &BTreeSet<u64>,
    out: &mut BTreeSet<PathBuf>,
) -> Result<()> {
    for &ino in inodes {
        for root in [base, tree] {
            match sys.inode_paths(root, ino)? {
                Some(paths) => out.extend(paths),
                None => {
                    tracing::debug!(root = %root.display(), ino, "too many links to list, walking");
                    walk(root, Path::new(""), &mut |p| {
                        if fs::symlink_metadata(root.join(&p)).is_ok_and(|m| m.ino() == ino) {
                            out.insert(p);
                        }
                    })?;
                }
            }
        }
    }
    Ok(())
}

/// Call `f` on every path below `rel` in `root`, never following symlinks.
/// Nothing happens when `rel` is not a directory of `root`.
fn walk(root: &Path, rel: &Path, f: &mut dyn FnMut(PathBuf)) -> Result<()> {
    if !rel.as_os_str().is_empty() && !TreeView::new(root).lstat(rel)?.is_some_and(|m| m.is_dir()) {
        return Ok(());
    }
    let mut stack = vec![rel.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let full = root.join(&dir);
        for entry in fs::read_dir(&full).map_err(DriverError::io("read directory", &full))? {
            let entry = entry.map_err(DriverError::io("read directory", &full))?;
            let child = dir.join(entry.file_name());
            let is_dir = entry
                .file_type()
                .map_err(DriverError::io("stat", root.join(&child)))?
                .is_dir();
            if is_dir {
                stack.push(child.clone());
            }
            f(child);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn temporary_names_give_their_inode() {
        let ino = |s: &str| orphan_inode(Path::new(s).components().next().unwrap());
        assert_eq!(ino("o257-7-0"), Some(257));
        assert_eq!(ino("o257-7"), None);
        assert_eq!(ino("other"), None);
        assert_eq!(ino("o1-2-3-4"), None);
    }

    #[test]
    fn lookups_never_pass_through_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        let root = t.path().join("root");
        fs::create_dir_all(outside.join("d")).unwrap();
        fs::create_dir(&root).unwrap();
        symlink(&outside, root.join("link")).unwrap();
        let mut view = TreeView::new(&root);
        assert!(view.lstat(Path::new("link/d")).unwrap().is_none());
        assert!(view.lstat(Path::new("link")).unwrap().is_some());
        let mut seen = Vec::new();
        walk(&root, Path::new("link"), &mut |p| seen.push(p)).unwrap();
        assert!(seen.is_empty());
    }
}
