//! Creating and tearing down the loopback store: the image file, its loop
//! device and its mount.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::sys::{Kernel, System};
use super::BtrfsDriver;
use crate::driver::{DriverError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupOutcome {
    /// A new image file was made, formatted and mounted.
    Created,
    /// An existing btrfs image file was mounted.
    Mounted,
    /// A btrfs filesystem was already mounted there: nothing was done.
    AlreadySetUp,
}

/// Where btrfs keeps its superblock magic in an image.
const SUPER_MAGIC_OFFSET: u64 = 0x10040;
const SUPER_MAGIC: &[u8; 8] = b"_BHRfS_M";

/// `mountpoint` made absolute, refusing the root directory.
pub(super) fn checked_mountpoint(mountpoint: &Path) -> Result<PathBuf> {
    let absolute =
        std::path::absolute(mountpoint).map_err(DriverError::io("resolve", mountpoint))?;
    let resolved = fs::canonicalize(&absolute).unwrap_or(absolute);
    if resolved.parent().is_none() {
        return Err(DriverError::UnsafePath(
            mountpoint.to_path_buf(),
            "it is the root directory".into(),
        ));
    }
    Ok(resolved)
}

/// Create (or reuse) `lofile` as a sparse btrfs image of `size` bytes and
/// mount it at `mountpoint`, with the store's layout inside.
pub fn setup_store(lofile: &Path, size: u64, mountpoint: &Path) -> Result<SetupOutcome> {
    setup_store_with(Arc::new(Kernel), lofile, size, mountpoint)
}

pub fn setup_store_with(
    sys: Arc<dyn System>,
    lofile: &Path,
    size: u64,
    mountpoint: &Path,
) -> Result<SetupOutcome> {
    let target = checked_mountpoint(mountpoint)?;
    if sys.is_btrfs_mount(&target)? {
        return Ok(SetupOutcome::AlreadySetUp);
    }
    let outcome = if exists(lofile)? {
        if !has_btrfs_magic(lofile)? {
            return Err(DriverError::UnsafePath(
                lofile.to_path_buf(),
                "it exists and is not a btrfs image".into(),
            ));
        }
        SetupOutcome::Mounted
    } else {
        create_image(sys.as_ref(), lofile, size)?;
        SetupOutcome::Created
    };
    fs::create_dir_all(&target).map_err(DriverError::io("create directory", &target))?;
    let mut entries = fs::read_dir(&target).map_err(DriverError::io("read directory", &target))?;
    if entries.next().is_some() {
        return Err(DriverError::UnsafePath(
            target,
            "the mount point is a directory that is not empty".into(),
        ));
    }
    let attachment = sys.attach_loop(lofile)?;
    sys.mount(&attachment.device, &target)?;
    // The mount holds the device now; with autoclear it goes when the mount does.
    drop(attachment);
    BtrfsDriver::open_with(&target, sys)?;
    tracing::debug!(lofile = %lofile.display(), mountpoint = %target.display(), ?outcome, "store set up");
    Ok(outcome)
}

fn create_image(sys: &dyn System, lofile: &Path, size: u64) -> Result<()> {
    if let Some(parent) = lofile.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(DriverError::io("create directory", parent))?;
    }
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(lofile)
        .map_err(DriverError::io("create", lofile))?;
    let made = file
        .set_len(size)
        .map_err(DriverError::io("size", lofile))
        .and_then(|()| sys.mkfs(lofile));
    if let Err(e) = made {
        // Do not leave a file that a later setup would refuse as "not btrfs".
        let _ = fs::remove_file(lofile);
        return Err(e);
    }
    Ok(())
}

fn has_btrfs_magic(lofile: &Path) -> Result<bool> {
    let mut file = File::open(lofile).map_err(DriverError::io("open", lofile))?;
    let mut magic = [0u8; 8];
    file.seek(SeekFrom::Start(SUPER_MAGIC_OFFSET))
        .map_err(DriverError::io("read", lofile))?;
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == SUPER_MAGIC),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(DriverError::io("read", lofile)(e)),
    }
}

fn exists(path: &Path) -> Result<bool> {
    path.try_exists().map_err(DriverError::io("stat", path))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsetupOutcome {
    /// Something of the store was there and is gone now.
    Removed,
    /// No mount, image file or mount point was there.
    NothingThere,
}

/// Unmount the store, detach its loop devices and remove `lofile` and the
/// (then empty) mount point. Refused while a work tree that someone owns
/// is there (a checkout of any layout sharing the store, or a running
/// build's tree), unless `force`.
pub fn unsetup_store(lofile: &Path, mountpoint: &Path, force: bool) -> Result<UnsetupOutcome> {
    unsetup_store_with(&Kernel, lofile, mountpoint, force)
}

pub fn unsetup_store_with(
    sys: &dyn System,
    lofile: &Path,
    mountpoint: &Path,
    force: bool,
) -> Result<UnsetupOutcome> {
    let target = checked_mountpoint(mountpoint)?;
    let mut outcome = UnsetupOutcome::NothingThere;
    if sys.is_btrfs_mount(&target)? {
        if !force {
            let trees = super::trees_in(&target).list(Path::to_path_buf)?;
            if let Some(owned) = trees.into_iter().find(|t| !t.is_abandoned()) {
                return Err(DriverError::Busy(owned.name));
            }
        }
        sys.unmount(&target)?;
        outcome = UnsetupOutcome::Removed;
    }
    if exists(lofile)? {
        // Devices attached with autoclear went with the mount; one attached
        // some other way (or by a version without autoclear) is detached here.
        for device in sys.loops_backing(lofile)? {
            match sys.detach_loop(&device) {
                Ok(()) => {}
                Err(DriverError::Io(crate::io_error::IoError { source, .. }))
                    if source.raw_os_error() == Some(libc::ENXIO) => {}
                Err(e) => return Err(e),
            }
        }
        fs::remove_file(lofile).map_err(DriverError::io("remove", lofile))?;
        outcome = UnsetupOutcome::Removed;
    }
    match fs::remove_dir(&target) {
        Ok(()) => outcome = UnsetupOutcome::Removed,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
            ) => {}
        Err(e) => return Err(DriverError::io("remove directory", &target)(e)),
    }
    tracing::debug!(lofile = %lofile.display(), mountpoint = %target.display(), ?outcome, "store removed");
    Ok(outcome)
}

/// Make genoci's store subvolume `store` (with the store's layout inside)
/// on the btrfs filesystem its parent directory is on (`lofile: none`).
pub fn setup_subvolume(store: &Path) -> Result<SetupOutcome> {
    setup_subvolume_with(Arc::new(Kernel), store)
}

pub fn setup_subvolume_with(sys: Arc<dyn System>, store: &Path) -> Result<SetupOutcome> {
    let target = checked_mountpoint(store)?;
    if sys.is_subvolume(&target)? {
        BtrfsDriver::open_subvolume_with(&target, sys)?;
        return Ok(SetupOutcome::AlreadySetUp);
    }
    if exists(&target)? {
        return Err(DriverError::UnsafePath(
            target,
            "it exists and is not a subvolume".into(),
        ));
    }
    sys.create_subvolume(&target)?;
    if let Err(e) = BtrfsDriver::open_subvolume_with(&target, sys.clone()) {
        // Leave nothing half made on a filesystem that is not genoci's.
        let _ = sys.delete_subvolume(&target);
        return Err(e);
    }
    tracing::debug!(store = %target.display(), "store subvolume set up");
    Ok(SetupOutcome::Created)
}

/// Delete genoci's store subvolume `store` and the snapshots and work
/// trees in it, and nothing else: the filesystem stays mounted. Refused
/// while a work tree someone owns is there, unless `force`, and for a
/// path that does not hold a genoci store.
pub fn unsetup_subvolume(store: &Path, force: bool) -> Result<UnsetupOutcome> {
    unsetup_subvolume_with(&Kernel, store, force)
}

pub fn unsetup_subvolume_with(
    sys: &dyn System,
    store: &Path,
    force: bool,
) -> Result<UnsetupOutcome> {
    let target = checked_mountpoint(store)?;
    if !exists(&target)? {
        return Ok(UnsetupOutcome::NothingThere);
    }
    if !sys.is_subvolume(&target)? || !holds_a_store(&target)? {
        return Err(DriverError::UnsafePath(
            target,
            "it is not a subvolume holding a genoci store: left alone".into(),
        ));
    }
    if !force && exists(&target.join(super::WORK))? {
        let trees = super::trees_in(&target).list(Path::to_path_buf)?;
        if let Some(owned) = trees.into_iter().find(|t| !t.is_abandoned()) {
            return Err(DriverError::Busy(owned.name));
        }
    }
    sys.delete_subvolume(&target)?;
    tracing::debug!(store = %target.display(), "store subvolume deleted");
    Ok(UnsetupOutcome::Removed)
}

/// A store subvolume holds the store's layout, or nothing yet (a setup
/// killed between making the subvolume and its layout).
fn holds_a_store(dir: &Path) -> Result<bool> {
    if exists(&dir.join(super::SNAPSHOTS))? {
        return Ok(true);
    }
    let mut entries = fs::read_dir(dir).map_err(DriverError::io("read directory", dir))?;
    Ok(entries.next().is_none())
}
