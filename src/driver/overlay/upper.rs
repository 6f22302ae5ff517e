//! Reading an overlay upper dir: the paths a build touched, in the terms of
//! the shared comparison ([`super::diff::compare`]).

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::driver::{DriverError, Result};

/// Set on an upper dir that hides everything below it in the lower dirs
/// (as root the kernel uses `trusted.`, unprivileged mounts `user.`).
const OPAQUE: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

/// Set on an upper dir that is a renamed lower one: its entries come from
/// the lower dirs at another path.
const REDIRECT: [&str; 2] = ["trusted.overlay.redirect", "user.overlay.redirect"];

/// Every path at which `tree` may differ from `base`: each upper entry (a
/// whiteout, a 0/0 character device, stands for a deletion at its path);
/// below an opaque dir every entry the base had there; below a renamed
/// dir every entry the base and the tree have there.
pub fn candidates(upper: &Path, base: &Path, tree: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    walk(upper, base, tree, Path::new(""), &mut out)?;
    Ok(out)
}

fn walk(
    upper: &Path,
    base: &Path,
    tree: &Path,
    rel: &Path,
    out: &mut BTreeSet<PathBuf>,
) -> Result<()> {
    crate::signals::check().map_err(|_| DriverError::Interrupted)?;
    let dir = upper.join(rel);
    for entry in fs::read_dir(&dir).map_err(DriverError::io("read directory", &dir))? {
        let entry = entry.map_err(DriverError::io("read directory", &dir))?;
        let child = rel.join(entry.file_name());
        let path = upper.join(&child);
        let meta = fs::symlink_metadata(&path).map_err(DriverError::io("stat", &path))?;
        out.insert(child.clone());
        if is_whiteout(&meta) || !meta.is_dir() {
            continue;
        }
        let renamed = has_xattr(&path, REDIRECT)?;
        if renamed || has_xattr(&path, OPAQUE)? {
            base_entries(base, &child, out)?;
        }
        if renamed {
            base_entries(tree, &child, out)?;
        }
        walk(upper, base, tree, &child, out)?;
    }
    Ok(())
}

/// How overlay records a deleted entry in the upper dir.
fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether `path` has one of `names` (for the opaque mark: set to `y`).
fn has_xattr(path: &Path, names: [&str; 2]) -> Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL in a path read from a dir");
    for name in names {
        let is_opaque_mark = name.ends_with(".opaque");
        let name = CString::new(name).expect("constant");
        let mut value = [0u8; 2];
        // SAFETY: lgetxattr writes at most `value.len()` bytes into `value`.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        let err = std::io::Error::last_os_error();
        if n >= 0 && (!is_opaque_mark || (n == 1 && value[0] == b'y')) {
            return Ok(true);
        }
        // ERANGE: a redirect longer than the buffer is there all the same.
        if n < 0 && err.raw_os_error() == Some(libc::ERANGE) && !is_opaque_mark {
            return Ok(true);
        }
        if n < 0 && !matches!(err.raw_os_error(), Some(libc::ENODATA | libc::ENOTSUP)) {
            return Err(DriverError::io("read xattr", path.to_path_buf())(err));
        }
    }
    Ok(false)
}

/// Every entry below `rel` in the tree at `base` (none if `rel` is not a
/// directory there).
fn base_entries(base: &Path, rel: &Path, out: &mut BTreeSet<PathBuf>) -> Result<()> {
    let dir = base.join(rel);
    let is_dir = fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
    if !is_dir {
        return Ok(());
    }
    for entry in fs::read_dir(&dir).map_err(DriverError::io("read directory", &dir))? {
        let entry = entry.map_err(DriverError::io("read directory", &dir))?;
        let child = rel.join(entry.file_name());
        out.insert(child.clone());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            base_entries(base, &child, out)?;
        }
    }
    Ok(())
}
