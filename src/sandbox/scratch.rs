//! Entries genoci adds to a directory of a work tree for its own use (mount
//! points, copied-in scripts and packages) and takes away again.
//!
//! The layer diff compares mtimes, so taking an entry away is not enough: the
//! directory's times are put back too, unless the command run meanwhile
//! changed the directory itself, in which case its change is what stays.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use filetime::FileTime;

#[derive(Debug, thiserror::Error)]
#[error("{action} {}", .path.display())]
pub struct ScratchError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn wrap<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ScratchError + 'a {
    move |source| ScratchError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug)]
enum Entry {
    /// An empty directory (a mount point).
    Dir(PathBuf),
    /// A file, or an empty file used as a mount point.
    File(PathBuf),
    /// A directory with content, removed recursively.
    Tree(PathBuf),
    /// An entry of the tree renamed out of the way, renamed back at the end.
    MovedAside { aside: PathBuf, original: PathBuf },
}

/// What genoci added to one directory; [`Scratch::remove`] undoes it.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
    atime: FileTime,
    mtime: FileTime,
    /// The directory's mtime right after genoci's last change to it.
    mtime_ours: FileTime,
    entries: Vec<Entry>,
}

/// A name no other genoci process or call will pick: `.genoci-PURPOSE-PID-N`.
pub fn unique_name(purpose: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        ".genoci-{purpose}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Scratch {
    pub fn new(dir: &Path) -> Result<Self, ScratchError> {
        let meta = fs::symlink_metadata(dir).map_err(wrap("stat", dir))?;
        let mtime = FileTime::from_last_modification_time(&meta);
        Ok(Scratch {
            dir: dir.to_path_buf(),
            atime: FileTime::from_last_access_time(&meta),
            mtime,
            mtime_ours: mtime,
            entries: Vec::new(),
        })
    }

    fn note_mtime(&mut self) -> Result<(), ScratchError> {
        let meta = fs::symlink_metadata(&self.dir).map_err(wrap("stat", &self.dir))?;
        self.mtime_ours = FileTime::from_last_modification_time(&meta);
        Ok(())
    }

    /// An empty directory `name`, removed with `remove_dir` at the end.
    pub fn add_dir(&mut self, name: &str) -> Result<PathBuf, ScratchError> {
        let path = self.dir.join(name);
        fs::create_dir(&path).map_err(wrap("create directory", &path))?;
        self.entries.push(Entry::Dir(path.clone()));
        self.note_mtime()?;
        Ok(path)
    }

    /// A directory `name` whose content is removed with it at the end.
    pub fn add_tree(&mut self, name: &str) -> Result<PathBuf, ScratchError> {
        let path = self.dir.join(name);
        fs::create_dir(&path).map_err(wrap("create directory", &path))?;
        self.entries.push(Entry::Tree(path.clone()));
        self.note_mtime()?;
        Ok(path)
    }

    /// A new file `name` with `mode`, opened for writing. Never follows or
    /// reuses an existing entry (a symlink planted in the tree included).
    pub fn add_file(&mut self, name: &str, mode: u32) -> Result<(PathBuf, File), ScratchError> {
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(wrap("create", &path))?;
        self.entries.push(Entry::File(path.clone()));
        self.note_mtime()?;
        Ok((path, file))
    }

    /// Rename `name` out of the way until the end (to put a mount point in
    /// its place).
    pub fn move_aside(&mut self, name: &str) -> Result<(), ScratchError> {
        let original = self.dir.join(name);
        let aside = self.dir.join(unique_name("aside"));
        fs::rename(&original, &aside).map_err(wrap("rename", &original))?;
        self.entries.push(Entry::MovedAside { aside, original });
        self.note_mtime()
    }

    /// Undo every addition, newest first, then put the directory's times
    /// back. Goes on after a failure and reports the first one.
    pub fn remove(self) -> Result<(), ScratchError> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let mtime_now = match fs::symlink_metadata(&self.dir) {
            Ok(meta) => FileTime::from_last_modification_time(&meta),
            Err(e) => return Err(wrap("stat", &self.dir)(e)),
        };
        let mut first_error = None;
        for entry in self.entries.iter().rev() {
            let result = match entry {
                Entry::Dir(p) => fs::remove_dir(p).map_err(wrap("remove", p)),
                Entry::File(p) => fs::remove_file(p).map_err(wrap("remove", p)),
                Entry::Tree(p) => fs::remove_dir_all(p).map_err(wrap("remove", p)),
                Entry::MovedAside { aside, original } => {
                    fs::rename(aside, original).map_err(wrap("rename back", aside))
                }
            };
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        let (atime, mtime) = if mtime_now == self.mtime_ours {
            (self.atime, self.mtime)
        } else {
            // The command changed the directory: keep its mtime, not ours.
            (self.atime, mtime_now)
        };
        if let Err(e) = filetime::set_symlink_file_times(&self.dir, atime, mtime) {
            first_error.get_or_insert(wrap("restore times of", &self.dir)(e));
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The directory of `tree` where scratch files go: its `/tmp` when that is a
/// real directory (a symlink could lead out of the tree), else its root.
pub fn scratch_dir(tree: &Path) -> PathBuf {
    let tmp = tree.join("tmp");
    match fs::symlink_metadata(&tmp) {
        Ok(meta) if meta.is_dir() => tmp,
        _ => tree.to_path_buf(),
    }
}

/// `path` inside the tree as the sandboxed command sees it.
pub fn path_in_tree(tree: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(tree).unwrap_or(path);
    format!("/{}", rel.display())
}

/// The mtime of `path` in nanoseconds.
#[cfg(test)]
pub fn mtime_ns(path: &Path) -> io::Result<i128> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(path)?;
    Ok(i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_restores_the_directory_times() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let old = FileTime::from_unix_time(1_000_000, 0);
        filetime::set_file_times(dir, old, old).unwrap();
        let mut scratch = Scratch::new(dir).unwrap();
        scratch.add_dir("proc").unwrap();
        let (_, _file) = scratch.add_file("script", 0o755).unwrap();
        scratch.add_tree("pkgs").unwrap();
        fs::write(dir.join("pkgs/a.deb"), "x").unwrap();
        scratch.remove().unwrap();
        assert_eq!(fs::read_dir(dir).unwrap().count(), 0);
        assert_eq!(mtime_ns(dir).unwrap(), 1_000_000 * 1_000_000_000);
    }

    #[test]
    fn a_change_made_meanwhile_keeps_its_mtime() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let old = FileTime::from_unix_time(1_000_000, 0);
        filetime::set_file_times(dir, old, old).unwrap();
        let mut scratch = Scratch::new(dir).unwrap();
        scratch.add_dir("dev").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::write(dir.join("made-by-command"), "").unwrap();
        scratch.remove().unwrap();
        assert!(mtime_ns(dir).unwrap() > 1_000_000 * 1_000_000_000);
        assert!(dir.join("made-by-command").exists());
    }

    #[test]
    fn a_moved_aside_symlink_comes_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::os::unix::fs::symlink("../run/resolv.conf", dir.join("resolv.conf")).unwrap();
        let mut scratch = Scratch::new(dir).unwrap();
        scratch.move_aside("resolv.conf").unwrap();
        scratch.add_file("resolv.conf", 0o644).unwrap();
        scratch.remove().unwrap();
        assert_eq!(
            fs::read_link(dir.join("resolv.conf")).unwrap(),
            Path::new("../run/resolv.conf")
        );
        assert_eq!(fs::read_dir(dir).unwrap().count(), 1);
    }
}
