//! Tree operations shared by the plain driver and the actions: exact copies
//! and path resolution that never leaves a root.

use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use filetime::FileTime;

/// The umask image builders work under (docker's and buildah's): whatever
/// the caller's umask, directories and files that actions, `run` steps and
/// hooks create get the modes any other builder would give them, so the
/// same spec gives the same image (and the same digests) for everyone.
pub const IMAGE_UMASK: u32 = 0o022;

/// Set the process umask (inherited by every step) to [`IMAGE_UMASK`].
pub fn use_image_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(IMAGE_UMASK));
}

/// How [`copy_tree`] treats what it copies.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyOptions {
    /// Give every entry this owner instead of keeping the source's
    /// (a `copy` from the host makes root-owned files, as docker's COPY does).
    pub owner: Option<(u32, u32)>,
}

/// Copy `src` (a file, symlink, device or directory tree) to `dst`, keeping
/// type, mode, owner, mtime (to the nanosecond), xattrs and hard links within
/// the copy. `dst` must not exist. Directories get their metadata after their
/// contents, so their mtimes survive.
pub fn copy_tree(src: &Path, dst: &Path, opts: CopyOptions) -> io::Result<()> {
    copy_tree_linked(src, dst, opts, &mut HardLinks::new())
}

/// The first copy of each multiply-linked source inode, by (device, inode).
pub type HardLinks = HashMap<(u64, u64), PathBuf>;

/// [`copy_tree`] as one of several copies that together make one copy of a
/// source (a directory merged entry by entry into an existing one): a name
/// linked to one copied earlier with the same `links` becomes a link to it.
pub fn copy_tree_linked(
    src: &Path,
    dst: &Path,
    opts: CopyOptions,
    links: &mut HardLinks,
) -> io::Result<()> {
    copy_entry(src, dst, opts, links)
}

fn copy_entry(src: &Path, dst: &Path, opts: CopyOptions, links: &mut HardLinks) -> io::Result<()> {
    crate::signals::check().map_err(|e| io::Error::new(io::ErrorKind::Interrupted, e))?;
    let meta = fs::symlink_metadata(src).map_err(|e| annotate(e, "stat", src))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        fs::create_dir(dst).map_err(|e| annotate(e, "create directory", dst))?;
        let mut names: Vec<_> = fs::read_dir(src)
            .map_err(|e| annotate(e, "read directory", src))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| annotate(e, "read directory", src))?;
        names.sort();
        for name in names {
            copy_entry(&src.join(&name), &dst.join(&name), opts, links)?;
        }
    } else {
        if meta.nlink() > 1 {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                return fs::hard_link(first, dst).map_err(|e| annotate(e, "link", dst));
            }
            links.insert((meta.dev(), meta.ino()), dst.to_path_buf());
        }
        if ft.is_file() {
            fs::copy(src, dst).map_err(|e| annotate(e, "copy to", dst))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(src).map_err(|e| annotate(e, "read link", src))?;
            std::os::unix::fs::symlink(target, dst)
                .map_err(|e| annotate(e, "create symlink", dst))?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket() {
            mknod(dst, meta.mode(), meta.rdev())?;
        }
    }
    apply_metadata(src, dst, &meta, opts)
}

fn mknod(path: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    use nix::sys::stat::{Mode, SFlag};
    let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
    nix::sys::stat::mknod(path, kind, Mode::from_bits_truncate(mode & 0o7777), rdev)
        .map_err(|e| annotate(e.into(), "create node", path))
}

/// Owner, then mode (chown clears setuid bits), then xattrs (chown drops
/// `security.capability`), then times (everything before touches them).
fn apply_metadata(src: &Path, dst: &Path, meta: &Metadata, opts: CopyOptions) -> io::Result<()> {
    let (uid, gid) = opts.owner.unwrap_or((meta.uid(), meta.gid()));
    std::os::unix::fs::lchown(dst, Some(uid), Some(gid)).map_err(|e| annotate(e, "chown", dst))?;
    if !meta.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| annotate(e, "chmod", dst))?;
    }
    for (name, value) in crate::xattr::list(src).map_err(|e| annotate(e, "read xattrs", src))? {
        crate::xattr::set(dst, &name, &value).map_err(|e| annotate(e, "set xattr on", dst))?;
    }
    filetime::set_symlink_file_times(
        dst,
        FileTime::from_last_access_time(meta),
        FileTime::from_last_modification_time(meta),
    )
    .map_err(|e| annotate(e, "set times on", dst))
}

/// The shared I/O error shape inside an `io::Error`, for callers that
/// handle `io::Result`s: it prints as `op path`, with the cause as its source.
fn annotate(e: io::Error, op: &'static str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), crate::io_error::IoError::at(op, path)(e))
}

/// Resolve `path` as if `root` were `/`: `..` stops at the root and symlinks
/// met on the way (absolute or relative) are followed inside the root, so the
/// result is always below `root`. The last component is not followed when
/// `follow_last` is false (to create or replace it).
pub fn resolve_in(root: &Path, path: &Path, follow_last: bool) -> io::Result<PathBuf> {
    Ok(root.join(resolve_rel(root, path, follow_last)?))
}

/// [`resolve_in`], relative to `root`.
pub fn resolve_rel(root: &Path, path: &Path, follow_last: bool) -> io::Result<PathBuf> {
    let mut parts: Vec<PathBuf> = Vec::new();
    let mut queue: Vec<PathBuf> = path
        .components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut hops = 0;
    while let Some(part) = queue.pop() {
        let c = part.components().next();
        match c {
            None
            | Some(Component::RootDir)
            | Some(Component::CurDir)
            | Some(Component::Prefix(_)) => continue,
            Some(Component::ParentDir) => {
                parts.pop();
            }
            Some(Component::Normal(name)) => {
                let candidate: PathBuf = parts.iter().collect::<PathBuf>().join(name);
                let full = root.join(&candidate);
                let is_last = queue.is_empty();
                match fs::symlink_metadata(&full) {
                    Ok(m) if m.file_type().is_symlink() && (follow_last || !is_last) => {
                        hops += 1;
                        if hops > 40 {
                            return Err(io::Error::other(format!(
                                "too many levels of symbolic links resolving {}",
                                path.display()
                            )));
                        }
                        let target = fs::read_link(&full)?;
                        if target.is_absolute() {
                            parts.clear();
                        }
                        queue.extend(
                            target
                                .components()
                                .rev()
                                .map(|c| PathBuf::from(c.as_os_str())),
                        );
                    }
                    _ => parts.push(PathBuf::from(name)),
                }
            }
        }
    }
    Ok(parts.iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolve_never_leaves_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../..", root.join("etc/up")).unwrap();
        let r = |p: &str| resolve_in(&root, Path::new(p), true).unwrap();
        assert_eq!(r("/abs/passwd"), root.join("etc/passwd"));
        assert_eq!(r("../../x"), root.join("x"));
        assert_eq!(r("etc/up/y"), root.join("y"));
        assert_eq!(
            resolve_in(&root, Path::new("/abs"), false).unwrap(),
            root.join("abs")
        );
    }

    #[test]
    fn symlink_loops_are_an_error() {
        let t = tempfile::tempdir().unwrap();
        symlink("b", t.path().join("a")).unwrap();
        symlink("a", t.path().join("b")).unwrap();
        assert!(resolve_in(t.path(), Path::new("a/x"), true).is_err());
    }

    #[test]
    fn copies_keep_metadata_and_hard_links() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("d")).unwrap();
        fs::write(src.join("d/f"), "data").unwrap();
        fs::hard_link(src.join("d/f"), src.join("g")).unwrap();
        symlink("d/f", src.join("l")).unwrap();
        fs::set_permissions(src.join("d/f"), fs::Permissions::from_mode(0o4750)).unwrap();
        let old = FileTime::from_unix_time(1_000_000, 123);
        filetime::set_file_mtime(src.join("d"), old).unwrap();
        let dst = t.path().join("dst");
        copy_tree(&src, &dst, CopyOptions::default()).unwrap();
        let f = fs::metadata(dst.join("d/f")).unwrap();
        assert_eq!(f.mode() & 0o7777, 0o4750);
        assert_eq!(f.ino(), fs::metadata(dst.join("g")).unwrap().ino());
        assert_eq!(fs::read_link(dst.join("l")).unwrap(), Path::new("d/f"));
        let d = fs::metadata(dst.join("d")).unwrap();
        assert_eq!((d.mtime(), d.mtime_nsec()), (1_000_000, 123));
    }
}
