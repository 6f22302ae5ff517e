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
/// a committed upper dir holds whole files.
const FIXED: [(&str, &str); 3] = [("redirect_dir", "on"), ("metacopy", "off"), ("xino", "off")];

/// Options fixed for every genoci overlay with an upper dir (a read-only
/// mount has no index; the kernel would log that it ignores the option).
///
/// `index=on` keeps hard links across copy-up, as a store of whole trees
/// does: copying up one name of a lower file with several puts the copy in
/// the work dir's `index/` (named by the lower file's handle), and every
/// other name of it then resolves to that copy, so writing one name writes
/// them all. The kernel checks at mount that the upper root's
/// `trusted.overlay.origin` names the top lower dir (the first mount sets
/// it; genoci mounts an upper again only on the same lowers), and refuses
/// a lower dir that is still the upper dir of a live mount (EBUSY). An
/// upper dir is a lower dir of later mounts like any other: the index
/// lives in the work dir, which a checkin drops. `nfs_export` (which would
/// index every copy-up, directories too) stays off.
const FIXED_WRITABLE: [(&str, &str); 2] = [("index", "on"), ("nfs_export", "off")];

/// Where a `volatile` overlay marks its work dir (`WORKDIR/work/incompat/
/// volatile/`, holding a file `dirty`): the kernel refuses to mount the
/// layers again while it is there, since after a crash the upper dir may
/// have lost writes.
pub const VOLATILE_MARK: &str = "work/incompat/volatile";

/// How long a mount refused as busy is tried again.
const BUSY_TRIES: u32 = 50;
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

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
    ///
    /// An upper dir is in use as long as its overlay lives, and the kernel
    /// refuses it as a lower dir of an indexed mount meanwhile (EBUSY). A
    /// checked-in tree's overlay outlives its lazy unmount while anything
    /// holds it: for a moment when another thread forked while a file in it
    /// was open (the child holds it until it execs) or another genoci's
    /// sandbox copied the mount table, for ever when a shell sits in it.
    /// So a busy overlay is tried again for a second.
    pub fn detached(&self, attrs: u64) -> io::Result<OwnedFd> {
        let mark = self.volatile_mark();
        let marked_before = mark.as_ref().is_some_and(|m| m.exists());
        let mut tries = 0;
        loop {
            match self.create(attrs) {
                Err(e) if e.kind() == io::ErrorKind::ResourceBusy && tries < BUSY_TRIES => {
                    tries += 1;
                    // The kernel marks the work dir of a `volatile` mount
                    // before it checks the lower dirs, and refuses an upper
                    // dir so marked (it may have lost writes): a mark this
                    // failed mount made, with nothing written, goes.
                    if let Some(mark) = mark.as_ref().filter(|_| !marked_before) {
                        remove_if_there(mark)?;
                    }
                    std::thread::sleep(BUSY_WAIT);
                }
                Err(e) if e.kind() == io::ErrorKind::ResourceBusy => {
                    let why = "one of its dirs is the upper dir of another overlay still mounted: \
                               is a process still inside a tree that was checked in?";
                    return Err(io::Error::new(e.kind(), format!("{e} ({why})")));
                }
                other => return other,
            }
        }
    }

    /// Where a `volatile` mount of this overlay marks its work dir.
    fn volatile_mark(&self) -> Option<PathBuf> {
        let (_, work) = self.upper.filter(|_| self.volatile)?;
        Some(work.join(VOLATILE_MARK))
    }

    fn create(&self, attrs: u64) -> io::Result<OwnedFd> {
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
        let writable = self.upper.map_or(&[][..], |_| &FIXED_WRITABLE[..]);
        for (key, value) in FIXED.iter().chain(writable) {
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
/// alive until it leaves, but it is gone from the mount table at once; and
/// an unmount that waits for the mount to be unused costs an RCU grace
/// period, milliseconds per tree).
pub fn unmount(target: &Path) -> io::Result<()> {
    nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH)?;
    Ok(())
}

fn remove_if_there(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
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
