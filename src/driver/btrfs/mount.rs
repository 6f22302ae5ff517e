//! Mounting the store's filesystem and recognising it.

use std::fs;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{statfs, BTRFS_SUPER_MAGIC};
use sys_mount::{Mount, UnmountFlags};

use crate::driver::{DriverError, Result};

/// Mount the btrfs filesystem on `device` at `target`.
pub fn mount(device: &Path, target: &Path) -> Result<()> {
    // A `Mount` does not unmount when dropped: the mount outlives this process
    // until `unsetup`.
    Mount::builder()
        .fstype("btrfs")
        .mount(device, target)
        .map_err(DriverError::io("mount btrfs on", target))?;
    tracing::debug!(device = %device.display(), target = %target.display(), "mounted");
    Ok(())
}

pub fn unmount(target: &Path) -> Result<()> {
    sys_mount::unmount(target, UnmountFlags::empty())
        .map_err(DriverError::io("unmount", target))?;
    tracing::debug!(target = %target.display(), "unmounted");
    Ok(())
}

/// Whether a btrfs filesystem is mounted exactly at `target`.
///
/// The statfs magic alone would also accept any directory of a btrfs root
/// filesystem, hence the mount table.
pub fn is_btrfs_mount(target: &Path) -> Result<bool> {
    let target = match fs::canonicalize(target) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(DriverError::io("resolve", target)(e)),
    };
    let fs = statfs(&target).map_err(|e| DriverError::io("statfs", &target)(e.into()))?;
    if fs.filesystem_type() != BTRFS_SUPER_MAGIC {
        return Ok(false);
    }
    Ok(mount_points()?.contains(&target))
}

/// Every mount point of this mount namespace.
pub fn mount_points() -> Result<Vec<PathBuf>> {
    crate::mountinfo::mount_points().map_err(DriverError::io("read", crate::mountinfo::PATH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_not_a_btrfs_mount() {
        let t = tempfile::tempdir().unwrap();
        assert!(!is_btrfs_mount(t.path()).unwrap());
        assert!(!is_btrfs_mount(&t.path().join("missing")).unwrap());
    }
}
