//! The canonical change set between a base tree and a work tree.
//!
//! Every driver finds *candidate* paths its own way (the plain driver by
//! walking, btrfs from a send stream) and hands them here, so that both give
//! the same list for the same two trees and hence byte-identical layers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use super::{DriverError, Result};
use crate::change::Change;

/// The changes that turn `base` into `tree`, looking only at `candidates`.
///
/// `candidates` must name every path (relative, no leading `/`) at which the
/// two trees may differ; paths that are the same in both are ignored, and the
/// descendants of a directory that is new in `tree` need not be listed. An
/// entry reached through a symlink in either tree counts as absent there.
///
/// Hard links: a candidate that is a multiply-linked non-directory in either
/// tree must come with every other name of its inode in that tree. A name
/// whose set of fellow names changed is a change (the store keeps the link,
/// so the layer must too), and every name of a written inode is written, so
/// a new link to an unchanged file carries both names, as docker's copy-up.
pub fn compare(base: &Path, tree: &Path, candidates: &BTreeSet<PathBuf>) -> Result<Vec<Change>> {
    let mut base_view = TreeView::new(base);
    let mut tree_view = TreeView::new(tree);
    let base_links = LinkGroups::of(&mut base_view, candidates)?;
    let tree_links = LinkGroups::of(&mut tree_view, candidates)?;
    let mut writes = BTreeSet::new();
    let mut deletes = BTreeSet::new();

    for rel in candidates {
        crate::signals::check().map_err(|_| DriverError::Interrupted)?;
        let old = base_view.lstat(rel)?;
        let new = tree_view.lstat(rel)?;
        match (old, new) {
            (None, None) => {}
            (Some(_), None) => {
                // Only the topmost deleted entry needs a whiteout; anything
                // whose parent vanished or became a file goes with it.
                let parent = rel.parent().unwrap_or(Path::new(""));
                if tree_view.is_dir(parent)? && base_view.is_dir(parent)? {
                    deletes.insert(rel.clone());
                }
            }
            (None, Some(meta)) => add_with_descendants(tree, rel, &meta, &mut writes)?,
            (Some(old), Some(new)) => {
                let relinked = base_links.names(rel, &old) != tree_links.names(rel, &new);
                if relinked || differs(&base.join(rel), &old, &tree.join(rel), &new)? {
                    if new.is_dir() && !old.is_dir() {
                        add_with_descendants(tree, rel, &new, &mut writes)?;
                    } else {
                        writes.insert(rel.clone());
                    }
                }
            }
        }
    }

    let linked: Vec<PathBuf> = writes
        .iter()
        .flat_map(|rel| tree_links.others(rel))
        .collect();
    writes.extend(linked);

    let opaque = opaque_dirs(base, &deletes)?;
    let mut changes: Vec<Change> = writes.into_iter().map(Change::Write).collect();
    for dir in &opaque {
        changes.push(Change::Opaque(dir.clone()));
    }
    for path in deletes {
        let parent = path.parent().unwrap_or(Path::new(""));
        if !opaque.contains(parent) {
            changes.push(Change::Delete(path));
        }
    }
    changes.sort();
    Ok(changes)
}

/// The names of each multiply-linked non-directory among the candidates.
struct LinkGroups {
    by_inode: HashMap<u64, BTreeSet<PathBuf>>,
    inode: HashMap<PathBuf, u64>,
}

impl LinkGroups {
    fn of(view: &mut TreeView<'_>, candidates: &BTreeSet<PathBuf>) -> Result<LinkGroups> {
        let mut groups = LinkGroups {
            by_inode: HashMap::new(),
            inode: HashMap::new(),
        };
        for rel in candidates {
            if let Some(m) = view.lstat(rel)? {
                if !m.is_dir() && m.nlink() > 1 {
                    groups.inode.insert(rel.clone(), m.ino());
                    groups
                        .by_inode
                        .entry(m.ino())
                        .or_default()
                        .insert(rel.clone());
                }
            }
        }
        Ok(groups)
    }

    /// Every name of the entry at `rel` (itself alone when not linked).
    fn names(&self, rel: &Path, meta: &Metadata) -> BTreeSet<PathBuf> {
        match self.inode.get(rel) {
            Some(ino) if !meta.is_dir() => self.by_inode[ino].clone(),
            _ => BTreeSet::from([rel.to_path_buf()]),
        }
    }

    /// The other names of the inode at `rel`.
    fn others(&self, rel: &Path) -> Vec<PathBuf> {
        self.inode.get(rel).map_or_else(Vec::new, |ino| {
            self.by_inode[ino]
                .iter()
                .filter(|p| p.as_path() != rel)
                .cloned()
                .collect()
        })
    }
}

/// Add every name, in each tree, of a multiply-linked non-directory among
/// the candidates, until no new one turns up, as [`compare`] needs them.
/// A driver's own candidates miss such names when the link did not change
/// the name itself: a link to a file below a moved directory keeps its old
/// ctime (plain), a name below a renamed directory is not in an overlay
/// upper dir. Both trees are walked only when a candidate is such a file,
/// so a change that touches no linked file costs no walk.
pub fn add_link_names(base: &Path, tree: &Path, candidates: &mut BTreeSet<PathBuf>) -> Result<()> {
    if !any_linked(base, tree, candidates)? {
        return Ok(());
    }
    let links = [LinkNames::of(base)?, LinkNames::of(tree)?];
    let mut todo: Vec<PathBuf> = candidates
        .iter()
        .filter(|p| links.iter().any(|l| l.inode.contains_key(*p)))
        .cloned()
        .collect();
    while let Some(rel) = todo.pop() {
        for l in &links {
            for name in l.others(&rel) {
                if candidates.insert(name.clone()) {
                    todo.push(name);
                }
            }
        }
    }
    Ok(())
}

/// Whether a candidate is a multiply-linked non-directory in either tree.
fn any_linked(base: &Path, tree: &Path, candidates: &BTreeSet<PathBuf>) -> Result<bool> {
    for root in [base, tree] {
        let mut view = TreeView::new(root);
        for rel in candidates {
            if view
                .lstat(rel)?
                .is_some_and(|m| !m.is_dir() && m.nlink() > 1)
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The names of each multiply-linked non-directory of a whole tree.
struct LinkNames {
    inode: HashMap<PathBuf, u64>,
    names: HashMap<u64, Vec<PathBuf>>,
}

impl LinkNames {
    fn of(root: &Path) -> Result<LinkNames> {
        let mut l = LinkNames {
            inode: HashMap::new(),
            names: HashMap::new(),
        };
        let mut stack = vec![PathBuf::new()];
        while let Some(dir) = stack.pop() {
            crate::signals::check().map_err(|_| DriverError::Interrupted)?;
            for name in list(&root.join(&dir))? {
                let rel = dir.join(name);
                let full = root.join(&rel);
                let m = fs::symlink_metadata(&full).map_err(DriverError::io("stat", &full))?;
                if m.is_dir() {
                    stack.push(rel);
                } else if m.nlink() > 1 {
                    l.inode.insert(rel.clone(), m.ino());
                    l.names.entry(m.ino()).or_default().push(rel);
                }
            }
        }
        Ok(l)
    }

    fn others(&self, rel: &Path) -> Vec<PathBuf> {
        self.inode
            .get(rel)
            .map_or_else(Vec::new, |ino| self.names[ino].clone())
    }
}

/// The names of each multiply-linked non-directory of the tree at `root`
/// (one walk of the whole tree).
pub fn link_groups(root: &Path) -> Result<Vec<Vec<PathBuf>>> {
    Ok(LinkNames::of(root)?.names.into_values().collect())
}

/// The names in directory `dir`, sorted; none when it is absent or not a
/// directory.
pub(super) fn list(dir: &Path) -> Result<BTreeSet<std::ffi::OsString>> {
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
        Err(e) => return Err(DriverError::io("read directory", dir.to_path_buf())(e)),
    }
    Ok(names)
}

fn is_plain_relative(p: &Path) -> bool {
    p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Directories all of whose base entries were deleted: one `.wh..wh..opq`
/// says that more briefly than a whiteout per entry.
fn opaque_dirs(base: &Path, deletes: &BTreeSet<PathBuf>) -> Result<BTreeSet<PathBuf>> {
    let mut per_parent: BTreeMap<&Path, usize> = BTreeMap::new();
    for path in deletes {
        *per_parent
            .entry(path.parent().unwrap_or(Path::new("")))
            .or_default() += 1;
    }
    let mut opaque = BTreeSet::new();
    for (dir, deleted) in per_parent {
        if dir.as_os_str().is_empty() || deleted < 2 {
            continue;
        }
        let full = base.join(dir);
        let entries = fs::read_dir(&full)
            .map_err(DriverError::io("read directory", &full))?
            .count();
        if entries == deleted {
            opaque.insert(dir.to_path_buf());
        }
    }
    Ok(opaque)
}

fn add_with_descendants(
    tree: &Path,
    rel: &Path,
    meta: &Metadata,
    writes: &mut BTreeSet<PathBuf>,
) -> Result<()> {
    writes.insert(rel.to_path_buf());
    if !meta.is_dir() {
        return Ok(());
    }
    let full = tree.join(rel);
    for entry in fs::read_dir(&full).map_err(DriverError::io("read directory", &full))? {
        let entry = entry.map_err(DriverError::io("read directory", &full))?;
        let child = rel.join(entry.file_name());
        let child_meta = entry
            .metadata()
            .map_err(DriverError::io("stat", tree.join(&child)))?;
        add_with_descendants(tree, &child, &child_meta, writes)?;
    }
    Ok(())
}

/// Whether two entries would give different tar entries (or different content).
fn differs(old_path: &Path, old: &Metadata, new_path: &Path, new: &Metadata) -> Result<bool> {
    let (ot, nt) = (old.file_type(), new.file_type());
    let same_kind = ot.is_dir() == nt.is_dir()
        && ot.is_file() == nt.is_file()
        && ot.is_symlink() == nt.is_symlink()
        && ot.is_char_device() == nt.is_char_device()
        && ot.is_block_device() == nt.is_block_device()
        && ot.is_fifo() == nt.is_fifo()
        && ot.is_socket() == nt.is_socket();
    if !same_kind
        || old.mode() != new.mode()
        || old.uid() != new.uid()
        || old.gid() != new.gid()
        || old.mtime() != new.mtime()
        || old.mtime_nsec() != new.mtime_nsec()
    {
        return Ok(true);
    }
    if (ot.is_char_device() || ot.is_block_device()) && old.rdev() != new.rdev() {
        return Ok(true);
    }
    if ot.is_symlink() {
        let a = fs::read_link(old_path).map_err(DriverError::io("read link", old_path))?;
        let b = fs::read_link(new_path).map_err(DriverError::io("read link", new_path))?;
        if a != b {
            return Ok(true);
        }
    }
    if xattrs(old_path)? != xattrs(new_path)? {
        return Ok(true);
    }
    if ot.is_file() {
        return Ok(old.len() != new.len() || !same_content(old_path, new_path)?);
    }
    Ok(false)
}

fn same_content(a: &Path, b: &Path) -> Result<bool> {
    let mut fa = File::open(a).map_err(DriverError::io("open", a))?;
    let mut fb = File::open(b).map_err(DriverError::io("open", b))?;
    let mut ba = vec![0u8; 1 << 16];
    let mut bb = vec![0u8; 1 << 16];
    loop {
        let n = read_full(&mut fa, &mut ba).map_err(DriverError::io("read", a))?;
        let m = read_full(&mut fb, &mut bb).map_err(DriverError::io("read", b))?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The extended attributes of an entry (not following symlinks), sorted.
pub fn xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    crate::xattr::list(path).map_err(DriverError::io("read xattrs", path))
}

/// `lstat` of paths inside one tree, treating anything reached through a
/// symlink or a non-directory as absent, so a candidate like `a/passwd`
/// with `a -> /etc` never looks at the host.
pub(crate) struct TreeView<'a> {
    root: &'a Path,
    dirs: HashMap<PathBuf, bool>,
}

impl<'a> TreeView<'a> {
    pub(crate) fn new(root: &'a Path) -> Self {
        TreeView {
            root,
            dirs: HashMap::new(),
        }
    }

    /// Whether `rel` is a real directory of the tree (the root always is).
    pub(crate) fn is_dir(&mut self, rel: &Path) -> Result<bool> {
        if rel.as_os_str().is_empty() {
            return Ok(true);
        }
        if let Some(&known) = self.dirs.get(rel) {
            return Ok(known);
        }
        let is_dir = self.lstat(rel)?.is_some_and(|m| m.is_dir());
        self.dirs.insert(rel.to_path_buf(), is_dir);
        Ok(is_dir)
    }

    /// The entry at `rel` itself; `None` when absent, when `rel` is not a
    /// plain relative path, or when it is only reached through a symlink.
    pub(crate) fn lstat(&mut self, rel: &Path) -> Result<Option<Metadata>> {
        if rel.as_os_str().is_empty() || !is_plain_relative(rel) {
            return Ok(None);
        }
        if !self.is_dir(rel.parent().unwrap_or(Path::new("")))? {
            return Ok(None);
        }
        let full = self.root.join(rel);
        match fs::symlink_metadata(&full) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DriverError::io("stat", full)(e)),
        }
    }
}

/// What a driver that walks both trees entirely would report: the reference
/// the drivers' own candidate finding is tested against.
#[cfg(test)]
pub(crate) fn full_compare(base: &Path, tree: &Path) -> Vec<Change> {
    use crate::test_support::all_paths;
    let candidates = all_paths(base).union(&all_paths(tree)).cloned().collect();
    compare(base, tree, &candidates).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn diff(base: &Path, tree: &Path) -> Vec<Change> {
        full_compare(base, tree)
    }

    fn pair() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        for root in [&a, &b] {
            fs::create_dir_all(root.join("etc/sub")).unwrap();
            fs::write(root.join("etc/passwd"), "root:x:0:0").unwrap();
            fs::write(root.join("etc/sub/one"), "1").unwrap();
            fs::write(root.join("etc/sub/two"), "2").unwrap();
        }
        // Same mtimes everywhere, as a copy that keeps times would have.
        let now = filetime::FileTime::from_unix_time(1_000_000, 0);
        for root in [&a, &b] {
            for p in ["etc/passwd", "etc/sub/one", "etc/sub/two", "etc/sub", "etc"] {
                filetime::set_symlink_file_times(root.join(p), now, now).unwrap();
            }
        }
        (t, a, b)
    }

    fn w(p: &str) -> Change {
        Change::Write(PathBuf::from(p))
    }

    #[test]
    fn identical_trees_have_no_changes() {
        let (_t, a, b) = pair();
        assert_eq!(diff(&a, &b), vec![]);
    }

    #[test]
    fn a_rewrite_with_same_size_and_mtime_is_a_change() {
        let (_t, a, b) = pair();
        let p = b.join("etc/passwd");
        let m = fs::metadata(&p).unwrap();
        fs::write(&p, "ROOT:x:0:0").unwrap();
        let t = filetime::FileTime::from_last_modification_time(&m);
        filetime::set_file_mtime(&p, t).unwrap();
        assert_eq!(diff(&a, &b), vec![w("etc/passwd")]);
    }

    #[test]
    fn chmod_and_new_dirs_are_changes() {
        let (_t, a, b) = pair();
        fs::set_permissions(b.join("etc/passwd"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::create_dir_all(b.join("etc/sub/new/deep")).unwrap();
        fs::write(b.join("etc/sub/new/deep/f"), "x").unwrap();
        let got = diff(&a, &b);
        assert!(got.contains(&w("etc/passwd")));
        assert!(got.contains(&w("etc/sub/new")));
        assert!(got.contains(&w("etc/sub/new/deep")));
        assert!(got.contains(&w("etc/sub/new/deep/f")));
    }

    #[test]
    fn deleting_every_entry_of_a_dir_makes_it_opaque() {
        let (_t, a, b) = pair();
        fs::remove_file(b.join("etc/sub/one")).unwrap();
        fs::remove_file(b.join("etc/sub/two")).unwrap();
        let got = diff(&a, &b);
        assert!(got.contains(&Change::Opaque(PathBuf::from("etc/sub"))));
        assert!(!got.iter().any(|c| matches!(c, Change::Delete(_))));
    }

    #[test]
    fn deleting_a_dir_whites_out_only_the_dir() {
        let (_t, a, b) = pair();
        fs::remove_dir_all(b.join("etc/sub")).unwrap();
        let got = diff(&a, &b);
        assert!(got.contains(&Change::Delete(PathBuf::from("etc/sub"))));
        assert!(!got.contains(&Change::Delete(PathBuf::from("etc/sub/one"))));
    }

    #[test]
    fn link_names_come_from_both_trees_and_only_for_linked_candidates() {
        let (_t, a, b) = pair();
        // Base: passwd = x; tree: passwd = y = z (x gone), sub/one = sub/two.
        fs::hard_link(a.join("etc/passwd"), a.join("x")).unwrap();
        fs::hard_link(b.join("etc/passwd"), b.join("y")).unwrap();
        fs::hard_link(b.join("y"), b.join("z")).unwrap();
        fs::remove_file(b.join("etc/sub/two")).unwrap();
        fs::hard_link(b.join("etc/sub/one"), b.join("etc/sub/two")).unwrap();
        let set =
            |names: &[&str]| -> BTreeSet<PathBuf> { names.iter().map(PathBuf::from).collect() };

        let mut none_linked = set(&["etc", "absent"]);
        add_link_names(&a, &b, &mut none_linked).unwrap();
        assert_eq!(none_linked, set(&["etc", "absent"]));

        let mut from_base = set(&["x"]);
        add_link_names(&a, &b, &mut from_base).unwrap();
        assert_eq!(from_base, set(&["etc/passwd", "x", "y", "z"]));
    }

    #[test]
    fn a_change_of_hard_links_is_a_change_and_carries_every_name() {
        let (_t, a, b) = pair();
        // etc/sub/one and two hold the same bytes and times in the base.
        fs::write(a.join("etc/sub/two"), "1").unwrap();
        fs::write(b.join("etc/sub/two"), "1").unwrap();
        let t = filetime::FileTime::from_unix_time(1_000_000, 0);
        for root in [&a, &b] {
            filetime::set_file_mtime(root.join("etc/sub/two"), t).unwrap();
        }
        fs::remove_file(b.join("etc/sub/two")).unwrap();
        fs::hard_link(b.join("etc/sub/one"), b.join("etc/sub/two")).unwrap();
        fs::hard_link(b.join("etc/passwd"), b.join("etc/pw2")).unwrap();
        let got = diff(&a, &b);
        for p in ["etc/sub/one", "etc/sub/two", "etc/passwd", "etc/pw2"] {
            assert!(got.contains(&w(p)), "{p} in {got:?}");
        }
    }

    #[test]
    fn a_symlinked_parent_never_reaches_outside() {
        let (t, a, b) = pair();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "s").unwrap();
        symlink(&outside, b.join("link")).unwrap();
        let mut c = BTreeSet::new();
        c.insert(PathBuf::from("link"));
        c.insert(PathBuf::from("link/secret"));
        let got = compare(&a, &b, &c).unwrap();
        assert_eq!(got, vec![w("link")]);
    }
}
