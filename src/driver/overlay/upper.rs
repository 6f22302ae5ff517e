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

/// Every path at which the tree may differ from `base`: each upper entry
/// (a whiteout, a 0/0 character device, stands for a deletion at its path),
/// and below an opaque dir every entry the base had there.
pub fn candidates(upper: &Path, base: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    walk(upper, base, Path::new(""), &mut out)?;
    Ok(out)
}

fn walk(upper: &Path, base: &Path, rel: &Path, out: &mut BTreeSet<PathBuf>) -> Result<()> {
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
        if is_opaque(&path)? {
            base_entries(base, &child, out)?;
        }
        walk(upper, base, &child, out)?;
    }
    Ok(())
}

/// How overlay records a deleted entry in the upper dir.
fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(path: &Path) -> Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL in a path read from a dir");
    for name in OPAQUE {
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
        if n == 1 && value[0] == b'y' {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        if n < 0 && !matches!(err.raw_os_error(), Some(libc::ENODATA | libc::ENOTSUP)) {
            return Err(DriverError::Io {
                op: "read xattr",
                path: path.to_path_buf(),
                source: err,
            });
        }
    }
    Ok(false)
}

/// Every entry below `rel` in the base view (which has none if `rel` is not
/// a directory there).
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
