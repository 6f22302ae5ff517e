//! Every name of a linked lower file into the upper dir, before a checkin.
//!
//! With the overlay index (see [`super::mount`]) the mounted tree keeps the
//! names of a lower file linked when the step copies one of them up: the
//! copy waits in the work dir's `index/`, and the other names resolve to
//! it. But the upper dir holds only the names the step touched, and the
//! index goes with the work dir, so the snapshot would show the untouched
//! names with the old lower file. So the other names are copied up too,
//! through the mount, which links each to the indexed copy (the kernel's
//! "link-up"); the upper dir then holds the whole group as one inode, as a
//! snapshot of plain or btrfs does.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::driver::{diff, DriverError, Result};

/// Copy up, in the tree mounted at `tree`, the names missing from `upper`
/// of every file some of whose names are there and which the index holds
/// (a lower file with several names that the step copied up). `work` is
/// the mount's work dir. The tree is walked only when the index is not
/// empty, so a step that touched no linked lower file costs nothing here.
/// Returns how many names were copied up.
pub fn complete(upper: &Path, work: &Path, tree: &Path) -> Result<usize> {
    let index = work.join("index");
    let indexed = match fs::read_dir(&index) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(DriverError::io("read directory", index)(e)),
    };
    if !indexed {
        return Ok(0);
    }
    let started = std::time::Instant::now();
    let mut copied = 0;
    for names in diff::link_groups(tree)? {
        let (present, missing): (Vec<_>, Vec<_>) =
            names.iter().partition(|rel| in_upper(&upper.join(rel)));
        if present.is_empty() {
            continue;
        }
        for rel in missing {
            crate::signals::check().map_err(|_| DriverError::Interrupted)?;
            copy_up(&tree.join(rel))?;
            copied += 1;
        }
    }
    tracing::debug!(
        tree = %tree.display(),
        names = copied,
        ms = started.elapsed().as_millis(),
        "linked names copied up"
    );
    Ok(copied)
}

/// Whether the upper dir has an entry (not a whiteout) at `path`.
fn in_upper(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| !(m.file_type().is_char_device() && m.rdev() == 0))
}

/// Make overlay copy up the entry at `path` and change nothing: set its
/// times to what they are. (Opening it for writing would do too, but not
/// for a device node or a fifo; a chown, even to the same owner, drops the
/// setuid bit and file capabilities.)
fn copy_up(path: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(path).map_err(DriverError::io("stat", path))?;
    let times = [
        libc::timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec(),
        },
        libc::timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec(),
        },
    ];
    let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL in a path read from a dir");
    // SAFETY: utimensat reads the NUL-terminated path and two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(DriverError::io(
            "copy up (set the times of)",
            path.to_path_buf(),
        )(e));
    }
    Ok(())
}
