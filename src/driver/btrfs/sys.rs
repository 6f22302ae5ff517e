//! The seam between the driver's logic and the kernel: every loop, mount,
//! subvolume and send call goes through [`System`], so the logic above it can
//! be exercised with a fake while [`Kernel`] is tested for real as root.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::loopback::{self, LoopAttachment};
use super::{mount, send, subvol};
use crate::driver::{DriverError, Result};

pub trait System: Send + Sync + fmt::Debug {
    /// Format `file` as a btrfs filesystem.
    fn mkfs(&self, file: &Path) -> Result<()>;
    /// Attach `file` to a loop device (autoclear; see [`LoopAttachment`]).
    fn attach_loop(&self, file: &Path) -> Result<LoopAttachment>;
    /// Loop devices currently backed by `file`.
    fn loops_backing(&self, file: &Path) -> Result<Vec<PathBuf>>;
    fn detach_loop(&self, device: &Path) -> Result<()>;
    fn mount(&self, device: &Path, target: &Path) -> Result<()>;
    fn unmount(&self, target: &Path) -> Result<()>;
    /// Whether a btrfs filesystem is mounted exactly at `target`.
    fn is_btrfs_mount(&self, target: &Path) -> Result<bool>;
    fn create_subvolume(&self, path: &Path) -> Result<()>;
    /// Whether `path` is a subvolume (`false` if missing or not on btrfs).
    fn is_subvolume(&self, path: &Path) -> Result<bool>;
    fn snapshot(&self, source: &Path, dest: &Path, read_only: bool) -> Result<()>;
    /// Delete a subvolume with any nested in it.
    fn delete_subvolume(&self, path: &Path) -> Result<()>;
    fn read_only(&self, path: &Path) -> Result<bool>;
    fn set_read_only(&self, path: &Path, read_only: bool) -> Result<()>;
    fn subvolume_id(&self, path: &Path) -> Result<u64>;
    /// The no-data send stream of `tree` against subvolume `parent_id`.
    fn send(&self, tree: &Path, parent_id: u64) -> Result<Vec<u8>>;
    /// Paths of inode `ino` in subvolume `subvol`; `None` if too many.
    fn inode_paths(&self, subvol: &Path, ino: u64) -> Result<Option<Vec<PathBuf>>>;
}

/// The real calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct Kernel;

impl System for Kernel {
    fn mkfs(&self, file: &Path) -> Result<()> {
        let out = Command::new("mkfs.btrfs")
            .arg("-q")
            .arg(file)
            .output()
            .map_err(DriverError::io("run mkfs.btrfs on", file))?;
        if !out.status.success() {
            return Err(DriverError::Btrfs(format!(
                "mkfs.btrfs {} failed ({}): {}",
                file.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    fn attach_loop(&self, file: &Path) -> Result<LoopAttachment> {
        loopback::attach(file)
    }

    fn loops_backing(&self, file: &Path) -> Result<Vec<PathBuf>> {
        loopback::devices_backing(file)
    }

    fn detach_loop(&self, device: &Path) -> Result<()> {
        loopback::detach(device)
    }

    fn mount(&self, device: &Path, target: &Path) -> Result<()> {
        mount::mount(device, target)
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        mount::unmount(target)
    }

    fn is_btrfs_mount(&self, target: &Path) -> Result<bool> {
        mount::is_btrfs_mount(target)
    }

    fn create_subvolume(&self, path: &Path) -> Result<()> {
        subvol::create(path)
    }

    fn is_subvolume(&self, path: &Path) -> Result<bool> {
        subvol::is_subvolume(path)
    }

    fn snapshot(&self, source: &Path, dest: &Path, read_only: bool) -> Result<()> {
        subvol::snapshot(source, dest, read_only)
    }

    fn delete_subvolume(&self, path: &Path) -> Result<()> {
        subvol::delete(path)
    }

    fn read_only(&self, path: &Path) -> Result<bool> {
        subvol::read_only(path)
    }

    fn set_read_only(&self, path: &Path, read_only: bool) -> Result<()> {
        subvol::set_read_only(path, read_only)
    }

    fn subvolume_id(&self, path: &Path) -> Result<u64> {
        subvol::id(path)
    }

    fn send(&self, tree: &Path, parent_id: u64) -> Result<Vec<u8>> {
        send::send(tree, parent_id)
    }

    fn inode_paths(&self, subvol: &Path, ino: u64) -> Result<Option<Vec<PathBuf>>> {
        subvol::inode_paths(subvol, ino)
    }
}
