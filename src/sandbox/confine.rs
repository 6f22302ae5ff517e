//! The mounts that keep a confined command away from the host kernel, as a
//! container runtime sets them up (runc's defaults for docker and podman):
//! the parts of `/proc` that reach global kernel state read-only, the ones
//! that leak host information masked, and the tree `nodev`, so a device
//! node a step creates lands in the layer but cannot be opened.
//!
//! These run in the sandbox's PID 1, before pivot_root, with the tree at
//! its host path.

use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};

/// Under `/proc`, read-only for the command (docker's `ReadonlyPaths`):
/// writing there changes the host kernel (sysctls, core_pattern, IRQs).
pub const READ_ONLY: [&str; 5] = ["bus", "fs", "irq", "sys", "sysrq-trigger"];

/// Under `/proc`, hidden (docker's `MaskedPaths`): files read as empty,
/// directories as an empty read-only tmpfs.
pub const MASKED: [&str; 10] = [
    "asound",
    "acpi",
    "interrupts",
    "kcore",
    "keys",
    "latency_stats",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "scsi",
];

/// A failed mount, for the helper's report.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", .path.display())]
pub struct MountError {
    what: &'static str,
    path: std::path::PathBuf,
    source: nix::Error,
}

fn at<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> MountError + 'a {
    move |source| MountError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Remount the bind mount of the tree `nodev`, keeping its other flags: a
/// bind remount sets the flags it is given, and dropping a `nosuid`,
/// `noexec` or `ro` the tree's filesystem had would widen the sandbox.
pub fn tree_nodev(root: &Path) -> Result<(), MountError> {
    let current = statvfs(root).map_err(at("statvfs", root))?.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV;
    for (st, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if current.contains(st) {
            flags |= ms;
        }
    }
    mount(None::<&str>, root, None::<&str>, flags, None::<&str>).map_err(at("remount", root))
}

/// Make [`READ_ONLY`] read-only and mask [`MASKED`] in the fresh `/proc`
/// at `proc`. Entries this kernel lacks are skipped.
pub fn restrict_proc(proc: &Path) -> Result<(), MountError> {
    for name in READ_ONLY {
        let path = proc.join(name);
        if path.symlink_metadata().is_err() {
            continue;
        }
        mount(
            Some(&path),
            &path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(at("bind", &path))?;
        mount(
            None::<&str>,
            &path,
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(at("remount read-only", &path))?;
    }
    for name in MASKED {
        let path = proc.join(name);
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        if meta.is_dir() {
            mount(
                Some("tmpfs"),
                &path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .map_err(at("mask", &path))?;
        } else {
            // The host's /dev/null: still reachable, pivot_root comes later.
            mount(
                Some("/dev/null"),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(at("mask", &path))?;
        }
    }
    Ok(())
}
