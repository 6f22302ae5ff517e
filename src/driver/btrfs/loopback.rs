//! Loop devices over the store's backing file.

use std::fs;
use std::path::{Path, PathBuf};

use loopdev::{LoopControl, LoopDevice};

use crate::driver::{DriverError, Result};

/// A loop device attached to a file, held open by this value.
///
/// Devices are attached with autoclear: the kernel detaches one when its last
/// user goes away, so a mount made while this is alive keeps the device, and
/// a process killed before mounting leaves nothing attached.
#[derive(Debug)]
pub struct LoopAttachment {
    pub device: PathBuf,
    // Only its file descriptor matters: dropping it hands the device over to
    // whatever mounted it.
    _handle: Option<LoopDevice>,
}

impl LoopAttachment {
    /// An attachment with no handle behind it (for fakes of the seam).
    #[cfg(test)]
    pub fn detached(device: PathBuf) -> Self {
        LoopAttachment {
            device,
            _handle: None,
        }
    }
}

/// Attach `file` to the next free loop device, with autoclear.
pub fn attach(file: &Path) -> Result<LoopAttachment> {
    let control = LoopControl::open().map_err(DriverError::io("open", "/dev/loop-control"))?;
    // Another process may take the device between `next_free` and the attach.
    let mut last_err = None;
    for _ in 0..8 {
        let device = control
            .next_free()
            .map_err(DriverError::io("find a free loop device for", file))?;
        match device.with().autoclear(true).attach(file) {
            Ok(()) => {
                let path = device.path().ok_or_else(|| {
                    DriverError::Btrfs(format!("loop device for {} has no path", file.display()))
                })?;
                tracing::debug!(file = %file.display(), device = %path.display(), "attached loop device");
                return Ok(LoopAttachment {
                    device: path,
                    _handle: Some(device),
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last_err = Some(e),
            Err(e) => return Err(DriverError::io("attach a loop device to", file)(e)),
        }
    }
    Err(DriverError::io("attach a loop device to", file)(
        last_err.expect("the loop ran at least once"),
    ))
}

/// Every loop device whose backing file is `file`.
pub fn devices_backing(file: &Path) -> Result<Vec<PathBuf>> {
    let file = fs::canonicalize(file).map_err(DriverError::io("resolve", file))?;
    let sys_block = Path::new("/sys/block");
    let mut found = Vec::new();
    let entries = match fs::read_dir(sys_block) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(DriverError::io("read directory", sys_block)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(DriverError::io("read directory", sys_block))?;
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with("loop")) else {
            continue;
        };
        // Absent when the device is not attached.
        let Ok(backing) = fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        if Path::new(backing.trim_end_matches('\n')) == file {
            found.push(Path::new("/dev").join(name));
        }
    }
    found.sort();
    Ok(found)
}

/// Detach `device` from its backing file.
pub fn detach(device: &Path) -> Result<()> {
    let handle = LoopDevice::open(device).map_err(DriverError::io("open", device))?;
    let detached = handle.detach();
    drop(handle);
    wait_detached(device);
    detached.map_err(DriverError::io("detach loop device", device))?;
    tracing::debug!(device = %device.display(), "detached loop device");
    Ok(())
}

/// The kernel releases a loop device whose last user just went (an unmount
/// of an autoclear device, or a detach while busy) in the background: wait
/// a little for that, so that `unsetup` leaves no device behind when it ends.
fn wait_detached(device: &Path) {
    let Some(name) = device.file_name() else {
        return;
    };
    let backing = Path::new("/sys/block").join(name).join("loop/backing_file");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while backing.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
