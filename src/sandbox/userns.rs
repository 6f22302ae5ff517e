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
//! An overlay work tree cannot be idmapped (the kernel answers EINVAL for an
//! overlay mount): the step gets an overlay of its own over idmapped layers
//! instead ([`idmapped_overlay`]), while the driver's mount of the tree is
//! lent to it.
//!
//! These calls run in the single-threaded helper (see `helper.rs`).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::waitpid;
use nix::unistd::{self, ForkResult};

use crate::driver::overlay::mount::Overlay;
use crate::driver::Layers;

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
const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
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
    idmapped_clone(source, userns, attrs, true)
}

/// [`idmapped_tree`], of the one mount at `source` only (a bind mount of
/// it) when not `recursive`.
fn idmapped_clone(
    source: &Path,
    userns: BorrowedFd,
    attrs: u64,
    recursive: bool,
) -> io::Result<OwnedFd> {
    let path = std::ffi::CString::new(source.as_os_str().as_encoded_bytes())?;
    let recursive = if recursive {
        libc::AT_RECURSIVE as libc::c_uint
    } else {
        0
    };
    // SAFETY: open_tree(2) with a valid C string; the descriptor it returns
    // is owned right away.
    let tree = unsafe {
        let fd = check(libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | recursive,
        ))
        .map_err(|e| io::Error::new(e.kind(), format!("open_tree {}: {e}", source.display())))?;
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

/// Mount at `root` (an empty directory: the driver's mount of the tree is
/// down, see [`crate::driver::SnapshotDriver::lend`]) an overlay of
/// `layers`, each layer an idmapped mount, with the driver's options and
/// `nodev`. The kernel idmaps no overlay mount, but overlayfs takes
/// idmapped layers (5.19 and later) and reads and writes through them, so
/// the step's ids land on disk as on an idmapped plain tree.
///
/// The layer mounts are attached (overlayfs takes only layers it can
/// reach) in a tmpfs laid over `root` for the moment, then detached with
/// it: the overlay keeps private mounts of its own of them. Runs in the
/// sandbox's mount namespace, so nothing of this reaches the host's.
pub fn idmapped_overlay(layers: &Layers, root: &Path, userns: BorrowedFd) -> io::Result<()> {
    nix::mount::mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=700,size=64k"),
    )
    .map_err(|e| with_context(e, format!("mount a tmpfs on {}", root.display())))?;
    let overlay = overlay_of_clones(layers, root, userns);
    // The tmpfs and the layer mounts in it: the overlay holds its own.
    let detached = nix::mount::umount2(root, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| with_context(e, "detach the layer mounts".into()));
    let overlay = overlay?;
    detached?;
    attach(overlay, root)
}

fn with_context(e: nix::errno::Errno, what: String) -> io::Error {
    io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

/// The overlay of `layers` as a detached mount, its layers idmapped and
/// attached below `place`: each lower one read-only, and the directory
/// holding the upper and work dirs as one (the kernel wants them on one
/// mount).
fn overlay_of_clones(layers: &Layers, place: &Path, userns: BorrowedFd) -> io::Result<OwnedFd> {
    let clone_at = |source: &Path, name: String, attrs: u64| -> io::Result<PathBuf> {
        let at = place.join(name);
        fs::create_dir(&at)?;
        attach(idmapped_clone(source, userns, attrs, false)?, &at)?;
        Ok(at)
    };
    let mut lowers = Vec::with_capacity(layers.lowers.len());
    for (i, lower) in layers.lowers.iter().enumerate() {
        lowers.push(clone_at(
            lower,
            format!("l{i}"),
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV,
        )?);
    }
    let (Some(dir), Some(upper), Some(work)) = (
        layers.upper.parent(),
        layers.upper.file_name(),
        layers.work.file_name(),
    ) else {
        return Err(io::Error::other("upper and work dirs must have a parent"));
    };
    if layers.work.parent() != Some(dir) {
        return Err(io::Error::other("the upper and work dirs must be siblings"));
    }
    let rw = clone_at(dir, "rw".into(), MOUNT_ATTR_NODEV)?;
    let (upper, work) = (rw.join(upper), rw.join(work));
    let overlay = Overlay {
        lowers: &lowers,
        upper: Some((&upper, &work)),
        volatile: layers.volatile,
    };
    let mount = as_namespace_root(|| overlay.detached(MOUNT_ATTR_NODEV))
        .map_err(|e| io::Error::new(e.kind(), format!("mount the overlay: {e}")))?;
    // Where its upper layer is not writable, overlayfs mounts read-only
    // rather than fail (its reason is in the kernel log).
    let statfs = nix::sys::statvfs::fstatvfs(&mount).map_err(io::Error::from)?;
    if statfs
        .flags()
        .contains(nix::sys::statvfs::FsFlags::ST_RDONLY)
    {
        return Err(io::Error::other(
            "the overlay came up read-only: its upper layer is not writable through the idmapped mount",
        ));
    }
    Ok(mount)
}

/// Run `f` with the fs ids of the namespace's root (host id
/// [`HOST_BASE`]) and every capability. overlayfs keeps the credentials of
/// whoever creates it and makes its work dir, whiteouts and copy-ups with
/// them; through an idmapped layer only ids of the namespace can write
/// (host root's 0 is none: EOVERFLOW), and their files land as its 0
/// does, the owner a plain mount by root gives them.
fn as_namespace_root<T>(f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let effective = super::caps::effective()?;
    let base = unistd::Uid::from_raw(HOST_BASE);
    unistd::setfsgid(unistd::Gid::from_raw(HOST_BASE));
    unistd::setfsuid(base);
    // An fsuid other than 0 took the fs capabilities out of the effective
    // set (they stay permitted).
    let result = super::caps::set_effective(effective).and_then(|()| f());
    unistd::setfsuid(unistd::Uid::from_raw(0));
    unistd::setfsgid(unistd::Gid::from_raw(0));
    let restored = super::caps::set_effective(effective);
    let value = result?;
    restored?;
    Ok(value)
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
/// `root`'s filesystem takes an idmapped mount, or, for an overlay tree
/// (`layers`: scratch ones of the store), an overlay of idmapped layers
/// mounts at `root`. Runs in the helper, in a mount namespace of its own.
pub fn probe(root: &Path, layers: Option<&Layers>) -> io::Result<()> {
    let ns = create()?;
    unshare(CloneFlags::CLONE_NEWNS)?;
    match layers {
        // The copy it idmaps is never attached.
        None => idmapped_tree(root, ns.as_fd(), MOUNT_ATTR_NODEV).map(drop),
        Some(layers) => {
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )?;
            idmapped_overlay(layers, root, ns.as_fd())
        }
    }
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
