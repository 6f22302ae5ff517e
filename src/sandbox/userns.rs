//! The user namespace of a confined step with `network: none`: its root is
//! host uid [`HOST_BASE`], not host root, so even a kernel bug that lets a
//! step out of its other namespaces leaves it an unprivileged host id.
//!
//! The ids 0..[`SIZE`] of the namespace are host ids [`HOST_BASE`]..; genoci
//! runs as root and writes the maps itself, so no `/etc/subuid` entry is
//! needed. The range sits above systemd-nspawn's automatic container range
//! (524288..1879048191) and below systemd's foreign range (0x7ffe0000..),
//! where no host user or other container is expected.
//!
//! The tree is mounted idmapped (kernel 5.12 and later, on filesystems that
//! support it): through that mount, host id `HOST_BASE + n` reads and writes
//! as id `n` on disk, so what the step writes as uid 0 or 1000 lands as 0 or
//! 1000 and layers stay byte-identical to a step without the namespace.
//!
//! These calls run in the single-threaded helper (see `helper.rs`).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::waitpid;
use nix::unistd::{self, ForkResult};

/// The host id of the namespace's id 0.
pub const HOST_BASE: u32 = 1_900_000_000;
/// How many ids the namespace has (docker's userns-remap size).
pub const SIZE: u32 = 65536;

/// The line written to `uid_map` and `gid_map`.
pub fn id_map() -> String {
    format!("0 {HOST_BASE} {SIZE}\n")
}

// From <linux/mount.h>; libc does not have them yet.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
/// `MOUNT_ATTR_NODEV`, the same bit as `MS_NODEV`.
pub const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A new user namespace with the genoci id map, as a descriptor to enter
/// it (`setns`) and to idmap mounts with. A child process makes it (a
/// process cannot write its own map with ids outside it) and goes away.
pub fn create() -> io::Result<OwnedFd> {
    let (ready_r, ready_w) = unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (done_r, done_w) = unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the helper is single-threaded; the child only makes raw
    // system calls and `_exit`s.
    match unsafe { unistd::fork() }? {
        ForkResult::Child => {
            drop(ready_r);
            drop(done_w);
            let ok = unshare(CloneFlags::CLONE_NEWUSER).is_ok();
            let _ = unistd::write(&ready_w, &[u8::from(ok)]);
            // Wait for the parent to be done with the namespace.
            let _ = unistd::read(&done_r, &mut [0u8]);
            // SAFETY: `_exit` ends the child without running anything else.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            drop(done_r);
            let result = map_and_open(child.as_raw(), ready_r);
            drop(done_w);
            let _ = waitpid(child, None);
            result
        }
    }
}

fn map_and_open(pid: i32, ready: OwnedFd) -> io::Result<OwnedFd> {
    let mut byte = [0u8];
    File::from(ready).read_exact(&mut byte)?;
    if byte[0] != 1 {
        return Err(io::Error::other("unshare(CLONE_NEWUSER) failed"));
    }
    let map = id_map();
    for file in ["uid_map", "gid_map"] {
        let path = format!("/proc/{pid}/{file}");
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(map.as_bytes()))
            .map_err(|e| io::Error::new(e.kind(), format!("write {path}: {e}")))?;
    }
    Ok(File::open(format!("/proc/{pid}/ns/user"))?.into())
}

/// A detached copy of the mounts at `source` (recursive), idmapped with
/// `userns`, with `attrs` (e.g. [`MOUNT_ATTR_NODEV`]) added to each; the
/// filesystem's other flags (`ro`, `nosuid`, `noexec`) are kept.
pub fn idmapped_tree(source: &Path, userns: BorrowedFd, attrs: u64) -> io::Result<OwnedFd> {
    let path = std::ffi::CString::new(source.as_os_str().as_encoded_bytes())?;
    // SAFETY: open_tree(2) with a valid C string; the descriptor it returns
    // is owned right away.
    let tree = unsafe {
        let fd = check(libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint,
        ))
        .map_err(|e| io::Error::new(e.kind(), format!("open_tree: {e}")))?;
        OwnedFd::from_raw_fd(fd as i32)
    };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr(2) reads `attr`, valid for the size given.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map_err(|e| io::Error::new(e.kind(), format!("idmap the mount: {e}")))?;
    Ok(tree)
}

/// Mount the detached `tree` on `target`.
pub fn attach(tree: OwnedFd, target: &Path) -> io::Result<()> {
    let path = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())?;
    // SAFETY: move_mount(2) with a descriptor of ours and a valid C string.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_fd().as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            path.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop)
    .map_err(|e| io::Error::new(e.kind(), format!("move_mount: {e}")))
}

/// Whether a step in `root` can have a user namespace: one can be made and
/// `root`'s filesystem takes an idmapped mount. Runs in the helper, in a
/// mount namespace of its own; the copy it idmaps is never attached.
pub fn probe(root: &Path) -> io::Result<()> {
    let ns = create()?;
    unshare(CloneFlags::CLONE_NEWNS)?;
    idmapped_tree(root, ns.as_fd(), MOUNT_ATTR_NODEV).map(drop)
}

/// Join `userns` as its root: after `setns` the ids are still host root's,
/// which the namespace does not map, so switch to its 0.
pub fn enter(userns: BorrowedFd) -> nix::Result<()> {
    nix::sched::setns(userns, CloneFlags::CLONE_NEWUSER)?;
    unistd::setgroups(&[])?;
    let (uid, gid) = (unistd::Uid::from_raw(0), unistd::Gid::from_raw(0));
    unistd::setresgid(gid, gid, gid)?;
    unistd::setresuid(uid, uid, uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_is_65536_ids_at_the_base() {
        assert_eq!(id_map(), "0 1900000000 65536\n");
    }

    // Above nspawn's range, below systemd's foreign range.
    const _: () = assert!(HOST_BASE > 1_879_048_191);
    const _: () = assert!(HOST_BASE as u64 + SIZE as u64 <= 0x7ffe_0000);
}
