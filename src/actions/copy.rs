//! The `copy` action: host files and directories into the tree, as docker's
//! COPY does it: a directory's contents are merged into DEST, a file lands at
//! DEST (or inside it when DEST is a directory or ends with `/`), parents are
//! created, and everything copied is owned by root.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::{copy_tree_linked, resolve_in, CopyOptions, HardLinks};
use crate::spec::CopyItem;

const ROOT_OWNED: CopyOptions = CopyOptions {
    owner: Some((0, 0)),
};

/// The builder names the step (`copy SRC DEST`) and the target.
pub fn copy(tree: &Path, item: &CopyItem) -> io::Result<()> {
    // As docker's COPY: a SRC that is a symlink is followed (what it names is
    // copied, under SRC's own name); symlinks inside a directory stay links.
    let src = fs::canonicalize(&item.src)?;
    let dest = Path::new(&item.dest);
    // Symlinks on the way to DEST are followed inside the tree, never out of it.
    let followed = resolve_in(tree, dest, true)?;
    // One map for the whole item: names of one inode anywhere in SRC stay
    // one inode, though a directory is merged entry by entry.
    let mut links = HardLinks::new();
    if src.is_dir() {
        merge_dir(tree, &src, &followed, &mut links)
    } else {
        let target = if item.dest.ends_with('/') || followed.is_dir() {
            let name = item
                .src
                .file_name()
                .ok_or_else(|| io::Error::other("source has no file name"))?;
            followed.join(name)
        } else {
            resolve_in(tree, dest, false)?
        };
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        replace_with_copy(&src, &target, &mut links)
    }
}

/// Copy the entries of `src` into the directory `dest`, merging with
/// directories already there and replacing anything else. As docker's COPY,
/// a directory merges through a symlink to a directory (an image's
/// `/bin -> usr/bin`), resolved inside `tree`.
fn merge_dir(tree: &Path, src: &Path, dest: &Path, links: &mut HardLinks) -> io::Result<()> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            fs::remove_file(dest)?;
            fs::create_dir_all(dest)?;
        }
        Err(_) => fs::create_dir_all(dest)?,
    }
    let mut entries: Vec<_> = fs::read_dir(src)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let from = entry.path();
        let to = dest.join(entry.file_name());
        match entry.file_type()?.is_dir().then(|| dir_at(tree, &to)) {
            Some(Some(dir)) => merge_dir(tree, &from, &dir, links)?,
            _ => replace_with_copy(&from, &to, links)?,
        }
    }
    Ok(())
}

/// The directory `path` is in the tree, itself or through symlinks resolved
/// inside the tree; `None` when it is not one.
fn dir_at(tree: &Path, path: &Path) -> Option<PathBuf> {
    let meta = fs::symlink_metadata(path).ok()?;
    if meta.is_dir() {
        return Some(path.to_path_buf());
    }
    if !meta.file_type().is_symlink() {
        return None;
    }
    let rel = path.strip_prefix(tree).ok()?;
    let resolved = resolve_in(tree, rel, true).ok()?;
    fs::symlink_metadata(&resolved)
        .is_ok_and(|m| m.is_dir())
        .then_some(resolved)
}

fn replace_with_copy(src: &Path, dest: &Path, links: &mut HardLinks) -> io::Result<()> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(dest)?,
        Ok(_) => fs::remove_file(dest)?,
        Err(_) => {}
    }
    copy_tree_linked(src, dest, ROOT_OWNED, links)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("tree");
        let host = t.path().join("host");
        fs::create_dir_all(tree.join("etc")).unwrap();
        fs::create_dir_all(host.join("dir/sub")).unwrap();
        fs::write(host.join("file"), "f").unwrap();
        fs::write(host.join("dir/sub/x"), "x").unwrap();
        (t, tree, host)
    }

    fn item(src: &Path, dest: &str) -> CopyItem {
        CopyItem {
            src: src.to_path_buf(),
            dest: dest.to_string(),
        }
    }

    #[test]
    fn file_into_dir_and_to_a_name() {
        let (_t, tree, host) = setup();
        copy(&tree, &item(&host.join("file"), "/etc")).unwrap();
        copy(&tree, &item(&host.join("file"), "/opt/new/name")).unwrap();
        copy(&tree, &item(&host.join("file"), "/srv/")).unwrap();
        assert_eq!(fs::read(tree.join("etc/file")).unwrap(), b"f");
        assert_eq!(fs::read(tree.join("opt/new/name")).unwrap(), b"f");
        assert_eq!(fs::read(tree.join("srv/file")).unwrap(), b"f");
    }

    #[test]
    fn directory_contents_are_merged() {
        let (_t, tree, host) = setup();
        fs::create_dir_all(tree.join("app/sub")).unwrap();
        fs::write(tree.join("app/sub/keep"), "k").unwrap();
        copy(&tree, &item(&host.join("dir"), "/app")).unwrap();
        assert_eq!(fs::read(tree.join("app/sub/x")).unwrap(), b"x");
        assert_eq!(fs::read(tree.join("app/sub/keep")).unwrap(), b"k");
    }

    /// A directory is merged entry by entry; its hard links, between
    /// top-level entries and into subdirectories, were once lost that way.
    #[test]
    fn hard_links_anywhere_in_a_copied_directory_stay_links() {
        use std::os::unix::fs::MetadataExt;
        let (_t, tree, host) = setup();
        fs::write(host.join("dir/a"), "linked").unwrap();
        fs::hard_link(host.join("dir/a"), host.join("dir/b")).unwrap();
        fs::hard_link(host.join("dir/a"), host.join("dir/sub/c")).unwrap();
        fs::create_dir_all(tree.join("app")).unwrap();
        copy(&tree, &item(&host.join("dir"), "/app")).unwrap();
        let ino = |p: &str| fs::metadata(tree.join(p)).unwrap().ino();
        assert_eq!(ino("app/a"), ino("app/b"));
        assert_eq!(ino("app/a"), ino("app/sub/c"));
        assert_eq!(fs::metadata(tree.join("app/a")).unwrap().nlink(), 3);
    }

    #[test]
    fn a_symlinked_source_file_is_copied_by_content_under_its_own_name() {
        let (_t, tree, host) = setup();
        symlink(host.join("file"), host.join("alias")).unwrap();
        copy(&tree, &item(&host.join("alias"), "/etc/")).unwrap();
        let copied = tree.join("etc/alias");
        assert!(fs::symlink_metadata(&copied).unwrap().is_file());
        assert_eq!(fs::read(copied).unwrap(), b"f");
    }

    #[test]
    fn a_directory_merges_through_the_images_directory_symlinks() {
        let (t, tree, host) = setup();
        fs::create_dir_all(tree.join("usr/bin")).unwrap();
        fs::write(tree.join("usr/bin/sh"), "sh").unwrap();
        symlink("usr/bin", tree.join("bin")).unwrap();
        // Absolute, and out of the tree if it were followed on the host.
        symlink("/usr/bin", tree.join("sbin")).unwrap();
        fs::write(tree.join("file"), "not a dir").unwrap();
        let rootdir = t.path().join("rootdir");
        for dir in ["bin", "sbin", "file"] {
            fs::create_dir_all(rootdir.join(dir)).unwrap();
            fs::write(rootdir.join(dir).join(format!("from-{dir}")), dir).unwrap();
        }
        copy(&tree, &item(&rootdir, "/")).unwrap();
        assert!(fs::symlink_metadata(tree.join("bin")).unwrap().is_symlink());
        assert!(fs::symlink_metadata(tree.join("sbin"))
            .unwrap()
            .is_symlink());
        let mut names: Vec<_> = fs::read_dir(tree.join("usr/bin"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["from-bin", "from-sbin", "sh"]);
        assert_eq!(fs::read(tree.join("file/from-file")).unwrap(), b"file");
        drop(host);
    }

    #[test]
    fn a_symlink_in_the_tree_cannot_lead_out() {
        let (t, tree, host) = setup();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        symlink(&outside, tree.join("escape")).unwrap();
        copy(&tree, &item(&host.join("file"), "/escape/")).unwrap();
        copy(&tree, &item(&host.join("dir"), "/escape/d")).unwrap();
        assert!(fs::read_dir(&outside).unwrap().next().is_none());
        assert!(tree
            .join(outside.strip_prefix("/").unwrap())
            .join("file")
            .exists());
    }
}
