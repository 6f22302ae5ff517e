//! Subvolumes: create, snapshot, delete, read-only flag, ids, inode paths.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use libbtrfsutil::{CreateSnapshotOptions, DeleteSubvolumeOptions};

use crate::driver::{DriverError, Result};

fn wrap(op: &'static str, path: &Path) -> impl FnOnce(libbtrfsutil::Error) -> DriverError {
    let path = path.to_path_buf();
    move |e| DriverError::io(op, path)(e.os_error())
}

pub fn create(path: &Path) -> Result<()> {
    libbtrfsutil::create_subvolume(path).map_err(wrap("create subvolume", path))
}

/// Whether `path` is a subvolume; `false` when it is missing or not on btrfs.
pub fn is_subvolume(path: &Path) -> Result<bool> {
    if !path.try_exists().map_err(DriverError::io("stat", path))? {
        return Ok(false);
    }
    libbtrfsutil::is_subvolume(path).map_err(wrap("check for a subvolume", path))
}

pub fn snapshot(source: &Path, dest: &Path, read_only: bool) -> Result<()> {
    CreateSnapshotOptions::new()
        .readonly(read_only)
        .create(source, dest)
        .map_err(wrap("snapshot subvolume to", dest))
}

/// Delete a subvolume and any subvolume nested inside it.
pub fn delete(path: &Path) -> Result<()> {
    DeleteSubvolumeOptions::new()
        .recursive(true)
        .delete(path)
        .map_err(wrap("delete subvolume", path))
}

pub fn read_only(path: &Path) -> Result<bool> {
    libbtrfsutil::subvolume_read_only(path).map_err(wrap("read flags of subvolume", path))
}

pub fn set_read_only(path: &Path, read_only: bool) -> Result<()> {
    libbtrfsutil::set_subvolume_read_only(path, read_only)
        .map_err(wrap("set read-only flag of subvolume", path))
}

pub fn id(path: &Path) -> Result<u64> {
    libbtrfsutil::subvolume_id(path).map_err(wrap("find subvolume id of", path))
}

#[repr(C)]
struct InoPathArgs {
    inum: u64,
    size: u64,
    reserved: [u64; 4],
    fspath: u64,
}

nix::ioctl_readwrite!(btrfs_ioc_ino_paths, 0x94, 35, InoPathArgs);

// The kernel fills at most 4 KiB per call.
const INO_PATHS_BUF: usize = 4096;

/// Every path (relative to the subvolume root `subvol`) of inode `ino`;
/// `Ok(None)` when they do not fit in one answer, empty when the inode is
/// not there.
pub fn inode_paths(subvol: &Path, ino: u64) -> Result<Option<Vec<PathBuf>>> {
    let dir = File::open(subvol).map_err(DriverError::io("open", subvol))?;
    // u64 elements keep the container's `val[]` aligned.
    let mut buf = vec![0u64; INO_PATHS_BUF / 8];
    let mut args = InoPathArgs {
        inum: ino,
        size: INO_PATHS_BUF as u64,
        reserved: [0; 4],
        fspath: buf.as_mut_ptr() as u64,
    };
    // SAFETY: `args.fspath` points to `size` writable bytes that outlive the call.
    match unsafe { btrfs_ioc_ino_paths(dir.as_raw_fd(), &mut args) } {
        Ok(_) => {}
        Err(nix::errno::Errno::ENOENT) => return Ok(Some(Vec::new())),
        Err(e) => return Err(DriverError::io("resolve inode paths in", subvol)(e.into())),
    }
    // struct btrfs_data_container { u32 bytes_left, bytes_missing, elem_cnt, elem_missed; u64 val[]; }
    let header = buf[0].to_ne_bytes();
    let header2 = buf[1].to_ne_bytes();
    let elem_cnt = u32::from_ne_bytes(header2[..4].try_into().expect("4 bytes")) as usize;
    let elem_missed = u32::from_ne_bytes(header2[4..].try_into().expect("4 bytes"));
    let bytes_missing = u32::from_ne_bytes(header[4..].try_into().expect("4 bytes"));
    if elem_missed > 0 || bytes_missing > 0 {
        return Ok(None);
    }
    let bytes: Vec<u8> = buf[2..].iter().flat_map(|v| v.to_ne_bytes()).collect();
    let offsets = buf.get(2..2 + elem_cnt).ok_or_else(|| {
        DriverError::Btrfs(format!(
            "inode {ino} in {}: {elem_cnt} paths do not fit the answer",
            subvol.display()
        ))
    })?;
    let mut paths = Vec::with_capacity(elem_cnt);
    for offset in offsets.iter().map(|&o| o as usize) {
        let Some(rest) = bytes.get(offset..) else {
            return Err(DriverError::Btrfs(format!(
                "inode {ino} in {}: path offset {offset} out of range",
                subvol.display()
            )));
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        paths.push(PathBuf::from(OsStr::from_bytes(&rest[..end])));
    }
    Ok(Some(paths))
}
