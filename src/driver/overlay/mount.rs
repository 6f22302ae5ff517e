//! Overlay mounts through the new mount API (`fsopen`/`fsconfig`/`fsmount`/
//! `move_mount`): each lower dir is its own `lowerdir+` parameter, so a chain
//! is not bound by the one-page limit of a `mount(2)` option string (about
//! 40 store paths), and the kernel's own message comes back on failure.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What to mount: `lowers` top first; with no `upper` the mount is read-only.
pub struct Overlay<'a> {
    pub lowers: &'a [PathBuf],
    pub upper: Option<(&'a Path, &'a Path)>,
    /// Mount with `volatile`: no sync of the upper filesystem when the
    /// overlay is unmounted. A plain unmount syncs the whole filesystem
    /// the upper dir is on (every dirty page of it, not only the tree's),
    /// which made checking in a freshly expanded base cost seconds. Not for
    /// an upper dir that is mounted again later: the kernel refuses to
    /// remount one a volatile mount used.
    pub volatile: bool,
}

/// Options fixed for every genoci overlay. A directory of a lower layer can
/// be renamed (the upper dir records where it came from, and every later
/// mount of the layers follows that record); no metadata-only copy-ups, so
/// a committed upper dir holds whole files; no index, so an upper dir can
/// become a lower one of any later mount.
const FIXED: [(&str, &str); 4] = [
    ("redirect_dir", "on"),
    ("metacopy", "off"),
    ("index", "off"),
    ("xino", "off"),
];

impl Overlay<'_> {
    /// Mount at `target`.
    pub fn mount(&self, target: &Path) -> io::Result<()> {
        let mnt = self.detached(0)?;
        let target_c = cstring(target)?;
        // SAFETY: moves the detached mount `mnt` onto the NUL-terminated path.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mnt.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                target_c.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The overlay as a mount attached nowhere yet, with the mount
    /// attributes `attrs` (`MOUNT_ATTR_*`, e.g. `nodev`) besides `rdonly`
    /// for an overlay without an upper dir. The layers need to be
    /// reachable only while this runs: the overlay keeps mounts of its own
    /// of them.
    pub fn detached(&self, attrs: u64) -> io::Result<OwnedFd> {
        // SAFETY: fsopen takes a NUL-terminated name and flags; the fd it
        // returns is owned here.
        let fs = unsafe {
            owned(libc::syscall(
                libc::SYS_fsopen,
                c"overlay".as_ptr(),
                libc::FSOPEN_CLOEXEC,
            ))
        }?;
        let configured = self.configure(&fs);
        let created = configured.and_then(|()| set(&fs, libc::FSCONFIG_CMD_CREATE, None, None));
        if let Err(e) = created {
            return Err(with_log(&fs, e));
        }
        let read_only = if self.upper.is_none() {
            libc::MOUNT_ATTR_RDONLY
        } else {
            0
        };
        // SAFETY: fsmount takes the context fd, flags and mount attributes.
        unsafe {
            owned(libc::syscall(
                libc::SYS_fsmount,
                fs.as_raw_fd(),
                libc::FSMOUNT_CLOEXEC,
                read_only | attrs,
            ))
        }
        .map_err(|e| with_log(&fs, e))
    }

    fn configure(&self, fs: &OwnedFd) -> io::Result<()> {
        for lower in self.lowers {
            set_string(fs, "lowerdir+", lower.as_os_str().as_bytes())?;
        }
        if let Some((upper, work)) = self.upper {
            set_string(fs, "upperdir", upper.as_os_str().as_bytes())?;
            set_string(fs, "workdir", work.as_os_str().as_bytes())?;
        }
        for (key, value) in FIXED {
            set_string(fs, key, value.as_bytes())?;
        }
        if self.volatile && self.upper.is_some() {
            let key = c"volatile".to_owned();
            match set(fs, libc::FSCONFIG_SET_FLAG, Some(&key), None) {
                // A kernel before 5.10 has no `volatile`: it syncs, as before.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                other => other?,
            }
        }
        Ok(())
    }
}

/// Detach the mount at `target` (lazily: a shell still inside it keeps it
/// alive until it leaves, but it is gone from the mount table at once).
pub fn unmount(target: &Path) -> io::Result<()> {
    nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH)?;
    Ok(())
}

/// Whether something is mounted exactly at `path`.
pub fn is_mounted(path: &Path) -> io::Result<bool> {
    Ok(crate::mountinfo::mount_points()?.iter().any(|m| m == path))
}

/// Whether this kernel has overlayfs and the new mount API for it.
pub fn supported() -> Result<(), String> {
    // SAFETY: as in `Overlay::mount`; the fd is closed on drop.
    let fs = unsafe {
        owned(libc::syscall(
            libc::SYS_fsopen,
            c"overlay".as_ptr(),
            libc::FSOPEN_CLOEXEC,
        ))
    };
    fs.map(drop)
        .map_err(|e| format!("the kernel cannot open an overlay filesystem: {e}"))
}

fn set_string(fs: &OwnedFd, key: &str, value: &[u8]) -> io::Result<()> {
    let key = CString::new(key).map_err(invalid)?;
    let value = CString::new(value).map_err(invalid)?;
    set(fs, libc::FSCONFIG_SET_STRING, Some(&key), Some(&value))
}

fn set(
    fs: &OwnedFd,
    cmd: libc::c_uint,
    key: Option<&CString>,
    value: Option<&CString>,
) -> io::Result<()> {
    let ptr = |s: Option<&CString>| s.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: fsconfig reads the NUL-terminated key and value (or null).
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            cmd,
            ptr(key),
            ptr(value),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `e` with the messages the kernel logged on the filesystem context.
fn with_log(fs: &OwnedFd, e: io::Error) -> io::Error {
    let mut file = std::fs::File::from(fs.try_clone().expect("dup of an open fd"));
    let mut log = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n @ 1..) = file.read(&mut buf) {
        log.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
    }
    if log.is_empty() {
        e
    } else {
        io::Error::new(e.kind(), format!("{e} ({})", log.join("; ")))
    }
}

/// # Safety
/// `fd` must be a new file descriptor returned by a syscall, or negative.
unsafe fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from_raw_fd(fd as libc::c_int))
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(invalid)
}

fn invalid(e: std::ffi::NulError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}
