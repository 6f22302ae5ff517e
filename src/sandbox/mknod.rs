//! Device nodes for a step in a user namespace. The kernel refuses `mknod`
//! of a character or block device there, yet debootstrap-style steps make
//! them and they must land in the layer. The seccomp filter hands those
//! calls to the helper (seccomp user notification, as LXC does), which
//! stays in the host's user namespace and makes the node on the step's
//! behalf: resolved inside the step's root (or beneath its working
//! directory), with the step's fs ids, umask and capabilities. The tree is
//! `nodev`, so the node still cannot be opened.
//!
//! The path is read from the step's memory, which the step may change at
//! any time; that is harmless, since whatever path is read is resolved
//! inside the step's root and never through a symlink out of it.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;

use libseccomp::{ScmpNotifReq, ScmpNotifResp, ScmpNotifRespFlags};
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{self, ForkResult};

use super::caps::cap;

/// The longest path the kernel takes.
const PATH_MAX: usize = 4096;

/// Answer one pending notification on `listener`. `proc` is a descriptor
/// of the host's `/proc`, where the notification's pid is.
pub fn answer_one(listener: BorrowedFd, proc: BorrowedFd) -> io::Result<()> {
    let req = ScmpNotifReq::receive(listener.as_raw_fd()).map_err(io::Error::other)?;
    let errno = match handle(&req, listener, proc) {
        Ok(()) => 0,
        Err(Errno::UnknownErrno) => return Ok(()),
        Err(e) => e as i32,
    };
    let resp = if errno == 0 {
        ScmpNotifResp::new_val(req.id, 0, ScmpNotifRespFlags::empty())
    } else {
        ScmpNotifResp::new_error(req.id, -errno, ScmpNotifRespFlags::empty())
    };
    // The step may have been killed meanwhile: nothing to answer then.
    let _ = resp.respond(listener.as_raw_fd());
    Ok(())
}

/// The call as the step made it.
struct Call {
    /// The directory a relative path starts from; `None`: the working
    /// directory.
    dirfd: Option<i32>,
    path: u64,
    mode: u32,
    dev: u64,
}

fn call_of(req: &ScmpNotifReq) -> Result<Call, Errno> {
    let name = req
        .data
        .syscall
        .get_name_by_arch(req.data.arch)
        .map_err(|_| Errno::ENOSYS)?;
    let a = req.data.args;
    match name.as_str() {
        "mknod" => Ok(Call {
            dirfd: None,
            path: a[0],
            mode: a[1] as u32,
            dev: a[2],
        }),
        "mknodat" if a[0] as i32 == libc::AT_FDCWD => Ok(Call {
            dirfd: None,
            path: a[1],
            mode: a[2] as u32,
            dev: a[3],
        }),
        "mknodat" => Ok(Call {
            dirfd: Some(a[0] as i32),
            path: a[1],
            mode: a[2] as u32,
            dev: a[3],
        }),
        _ => Err(Errno::ENOSYS),
    }
}

/// `Err(UnknownErrno)`: the notification is no longer valid (the step
/// died or was interrupted); there is nothing to answer.
fn handle(req: &ScmpNotifReq, listener: BorrowedFd, proc: BorrowedFd) -> Result<(), Errno> {
    let call = call_of(req)?;
    let pid = openat(
        proc,
        req.pid.to_string().as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let path = read_path(pid.as_fd(), call.path)?;
    let creds = Creds::of(pid.as_fd())?;
    let start = start_dir(pid.as_fd(), &path, call.dirfd);
    // Everything read above belongs to the process that made the call only
    // if the call is still pending now (the pid could have been reused).
    if libseccomp::notify_id_valid(listener.as_raw_fd(), req.id).is_err() {
        return Err(Errno::UnknownErrno);
    }
    let (start, beneath) = start?;
    if creds.effective & (1 << cap::MKNOD) == 0 {
        return Err(Errno::EPERM);
    }
    let (parent, name) = split(&path)?;
    let resolve = ResolveFlag::RESOLVE_NO_MAGICLINKS
        | if beneath {
            ResolveFlag::RESOLVE_BENEATH
        } else {
            ResolveFlag::RESOLVE_IN_ROOT
        };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(resolve);
    let dir = openat2(start.as_fd(), parent.as_str(), how)?;
    make_node(dir.as_fd(), &name, call.mode, call.dev, &creds)
}

/// The NUL-terminated string at `addr` in the step's memory.
fn read_path(pid: BorrowedFd, addr: u64) -> Result<String, Errno> {
    let mem = File::from(openat(
        pid,
        "mem",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?);
    let mut bytes = Vec::new();
    let mut at = addr;
    while bytes.len() < PATH_MAX {
        // Up to the page end: the next page may be unmapped.
        let chunk = (4096 - (at % 4096)) as usize;
        let mut buf = vec![0u8; chunk];
        let n = mem.read_at(&mut buf, at).map_err(|_| Errno::EFAULT)?;
        if n == 0 {
            return Err(Errno::EFAULT);
        }
        if let Some(end) = buf[..n].iter().position(|&b| b == 0) {
            bytes.extend_from_slice(&buf[..end]);
            return String::from_utf8(bytes).map_err(|_| Errno::EINVAL);
        }
        bytes.extend_from_slice(&buf[..n]);
        at += n as u64;
    }
    Err(Errno::ENAMETOOLONG)
}

/// Where resolution starts, and whether it must stay beneath that place
/// (a relative path) rather than treat it as `/` (an absolute one, in the
/// step's root). A relative path that climbs above the working directory
/// is refused (EXDEV): the step's directory is known here only as a
/// descriptor, not as a path inside its root.
fn start_dir(pid: BorrowedFd, path: &str, dirfd: Option<i32>) -> Result<(OwnedFd, bool), Errno> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    if path.starts_with('/') {
        return Ok((openat(pid, "root", flags, Mode::empty())?, false));
    }
    let link = match dirfd {
        None => "cwd".to_string(),
        Some(fd) => format!("fd/{fd}"),
    };
    Ok((openat(pid, link.as_str(), flags, Mode::empty())?, true))
}

/// The parent directory and the name to create. A path ending in `/`, `.`
/// or `..` names an existing directory.
fn split(path: &str) -> Result<(String, String), Errno> {
    if path.is_empty() {
        return Err(Errno::ENOENT);
    }
    let (parent, name) = match path.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((parent, name)) => (parent, name),
        None => (".", path),
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err(Errno::EEXIST);
    }
    Ok((parent.to_string(), name.to_string()))
}

/// The step's fs ids (as host ids), supplementary groups, umask and
/// effective capabilities, from `/proc/PID/status`.
struct Creds {
    fsuid: u32,
    fsgid: u32,
    groups: Vec<u32>,
    umask: u32,
    effective: u64,
}

impl Creds {
    fn of(pid: BorrowedFd) -> Result<Creds, Errno> {
        let mut status = String::new();
        File::from(openat(
            pid,
            "status",
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?)
        .read_to_string(&mut status)
        .map_err(|_| Errno::EIO)?;
        Creds::parse(&status).ok_or(Errno::EIO)
    }

    fn parse(status: &str) -> Option<Creds> {
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .map(str::trim)
        };
        let nth = |key: &str, n: usize| field(key)?.split_whitespace().nth(n)?.parse().ok();
        Some(Creds {
            fsuid: nth("Uid", 3)?,
            fsgid: nth("Gid", 3)?,
            groups: field("Groups")?
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?,
            umask: u32::from_str_radix(field("Umask")?, 8).ok()?,
            effective: u64::from_str_radix(field("CapEff")?, 16).ok()?,
        })
    }
}

/// The capabilities the node is made with: those of the step's that
/// `mknod` can need.
fn node_caps(step: u64) -> u64 {
    let useful = [cap::MKNOD, cap::DAC_OVERRIDE, cap::FOWNER]
        .iter()
        .fold(0u64, |m, &c| m | 1 << c);
    step & useful
}

/// `mknodat(dir, name)` in a child process that has the step's fs ids,
/// groups, umask and capabilities, so the node is owned and permitted as
/// if the step had made it; the helper's own credentials stay as they
/// are.
fn make_node(dir: BorrowedFd, name: &str, mode: u32, dev: u64, creds: &Creds) -> Result<(), Errno> {
    let name = CString::new(name).map_err(|_| Errno::EINVAL)?;
    // SAFETY: the helper is single-threaded; the child makes system calls
    // and `_exit`s.
    match unsafe { unistd::fork() }? {
        ForkResult::Child => {
            let errno = match node_as(dir, &name, mode, dev, creds) {
                Ok(()) => 0,
                Err(e) => e as i32,
            };
            // SAFETY: ends the child without running anything else.
            unsafe { libc::_exit(errno) }
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
                Ok(WaitStatus::Exited(_, code)) => return Err(Errno::from_raw(code)),
                Ok(_) => return Err(Errno::EIO),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        },
    }
}

fn node_as(
    dir: BorrowedFd,
    name: &CString,
    mode: u32,
    dev: u64,
    creds: &Creds,
) -> Result<(), Errno> {
    let groups: Vec<unistd::Gid> = creds
        .groups
        .iter()
        .map(|&g| unistd::Gid::from_raw(g))
        .collect();
    unistd::setgroups(&groups)?;
    unistd::setfsgid(unistd::Gid::from_raw(creds.fsgid));
    unistd::setfsuid(unistd::Uid::from_raw(creds.fsuid));
    // A non-zero fsuid took the fs capabilities out of the effective set;
    // the permitted set still has them, so this only narrows.
    super::caps::set_effective(node_caps(creds.effective))
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EPERM)))?;
    // SAFETY: umask(2) cannot fail.
    unsafe { libc::umask(creds.umask as libc::mode_t) };
    // SAFETY: mknodat(2) with a directory descriptor of ours and a valid C
    // string.
    let ret = unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, dev) };
    Errno::result(ret).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_splits_into_parent_and_name() {
        let s = split;
        assert_eq!(s("/dev/null"), Ok(("/dev".into(), "null".into())));
        assert_eq!(s("/null"), Ok(("/".into(), "null".into())));
        assert_eq!(s("null"), Ok((".".into(), "null".into())));
        assert_eq!(s("a/b"), Ok(("a".into(), "b".into())));
        assert_eq!(s("/dev/"), Err(Errno::EEXIST));
        assert_eq!(s("a/.."), Err(Errno::EEXIST));
        assert_eq!(s(""), Err(Errno::ENOENT));
    }

    #[test]
    fn creds_come_from_the_status_file() {
        let status =
            "Name:\tmknod\nUmask:\t0022\nUid:\t1900000000\t1900000000\t1900000000\t1900001000\n\
                      Gid:\t1900000000\t1900000000\t1900000000\t1900000010\nGroups:\t1900000010 \n\
                      CapEff:\t00000000a80425fb\n";
        let c = Creds::parse(status).unwrap();
        assert_eq!((c.fsuid, c.fsgid), (1_900_001_000, 1_900_000_010));
        assert_eq!(c.groups, [1_900_000_010]);
        assert_eq!(c.umask, 0o022);
        assert_eq!(c.effective, 0xa804_25fb);
        assert_eq!(
            node_caps(c.effective),
            1 << cap::MKNOD | 1 << cap::DAC_OVERRIDE | 1 << cap::FOWNER
        );
    }
}
