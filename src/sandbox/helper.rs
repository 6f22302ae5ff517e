//! The re-executed helper process. genoci itself runs threads (output
//! forwarding, compression), and a fork of a threaded process may only call
//! async-signal-safe functions until it execs; setting up namespaces and
//! mounts needs far more than that. So genoci execs itself fresh and this
//! single-threaded process does the work:
//!
//! ```text
//! genoci ── helper (new namespaces) ── PID 1 (mounts, pivot_root, reaper) ── command
//! ```
//!
//! Failures before the command starts are written as one JSON line to
//! [`REPORT_FD`], which genoci reads once the helper is gone. The command's
//! wait status goes from PID 1 to the helper through a pipe, and the helper
//! ends the same way (same exit code, or same signal), so genoci sees the
//! command's own status.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{self, ForkResult, Pid};
use serde::{Deserialize, Serialize};
use std::os::unix::net::UnixStream;

use super::{caps, confine, mknod, seccomp, slirp, user, userns};
use crate::driver::Layers;

/// The helper's descriptor for failure reports (set up by genoci).
pub const REPORT_FD: i32 = 3;

/// Exit code of the helper when the sandbox could not be set up.
const SETUP_FAILED: i32 = 125;
/// Exit code when the command could not be executed.
const EXEC_FAILED: i32 = 127;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything the helper needs, passed as its one argument.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub root: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub isolate_network: bool,
    /// Confine the command as a container runtime does (see `confine`);
    /// false only for a target marked `privileged`.
    pub confined: bool,
    /// Run as this image `User` (see `user`); `None`: root, as genoci's own
    /// steps (installs) run.
    pub user: Option<String>,
    /// Host files bound (writable) over files of the tree's `/etc`.
    pub etc_binds: Vec<EtcBind>,
    /// The host terminal to bind as `/dev/console` (see `console_for`).
    pub console: Option<PathBuf>,
    /// genoci's PID: if it is gone before the death signal is armed, stop.
    pub parent: i32,
    /// Run the command in a user namespace of its own on an idmapped tree
    /// (see `userns`); only for a confined command.
    pub userns: bool,
    /// Only find out whether `userns` can work for `root`: exit 0 if so,
    /// else report why (see [`userns::probe`]).
    pub probe: bool,
    /// With `userns`: `root` is an overlay work tree whose mount the driver
    /// took down; the sandbox mounts these layers there itself (see
    /// [`userns::idmapped_overlay`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Layers>,
    /// With `userns` and the host's network: a network namespace of its
    /// own in the user namespace, connected to the host's network by
    /// slirp4netns (see `slirp`).
    #[serde(default)]
    pub slirp: bool,
    /// Only find out whether `slirp` can work: exit 0 if so, else report
    /// why (see [`slirp::probe`]).
    #[serde(default)]
    pub probe_network: bool,
}

impl Request {
    pub fn encode(&self) -> String {
        hex::encode(serde_json::to_vec(self).expect("a request always serializes"))
    }

    pub fn decode(arg: &str) -> Result<Self, String> {
        let bytes = hex::decode(arg).map_err(|e| format!("bad sandbox request: {e}"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("bad sandbox request: {e}"))
    }
}

/// A host file that the command sees as `/etc/NAME` (the mount point is
/// made by genoci).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcBind {
    pub host: PathBuf,
    pub name: String,
}

/// The sandbox's hostname (and the name `/etc/hosts` gives it).
pub const HOSTNAME: &str = "genoci";

/// Why the command did not start.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Failure {
    /// Namespaces, mounts or pivot_root failed.
    Setup(String),
    /// argv[0] does not exist in the tree.
    NotFound(String),
    /// execve failed otherwise.
    Exec(String),
}

fn report(failure: &Failure) {
    let mut line = serde_json::to_vec(failure).expect("a failure always serializes");
    line.push(b'\n');
    // SAFETY: REPORT_FD is ours for the life of the process; ManuallyDrop
    // keeps it open for other reports.
    let mut file = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(REPORT_FD) });
    let _ = file.write_all(&line);
}

fn setup_failed(what: &str, cause: impl std::fmt::Display) -> ! {
    report(&Failure::Setup(format!("{what}: {cause}")));
    std::process::exit(SETUP_FAILED)
}

trait OrFail<T> {
    fn or_fail(self, what: impl FnOnce() -> String) -> T;
}

impl<T, E: std::fmt::Display> OrFail<T> for Result<T, E> {
    fn or_fail(self, what: impl FnOnce() -> String) -> T {
        match self {
            Ok(v) => v,
            Err(e) => setup_failed(&what(), e),
        }
    }
}

/// The number of threads of this process.
fn threads() -> Option<usize> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

/// The helper process: never returns.
pub fn main(request: &Request) -> ! {
    // SAFETY: fcntl on our own descriptor.
    unsafe { libc::fcntl(REPORT_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    // Every fork below relies on this: the child of a single-threaded
    // process may do anything, that of a threaded one only
    // async-signal-safe work.
    match threads() {
        Some(1) => {}
        n => setup_failed(
            "the helper must be single-threaded",
            format!("{n:?} threads"),
        ),
    }
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).or_fail(|| "set death signal".into());
    if unistd::getppid().as_raw() != request.parent {
        std::process::exit(SETUP_FAILED);
    }
    // Ctrl-C reaches the whole process group: the command decides what it
    // means; the helper must stay to pass on its status.
    for sig in [Signal::SIGINT, Signal::SIGQUIT] {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe { signal::signal(sig, SigHandler::SigIgn) }.or_fail(|| format!("ignore {sig}"));
    }

    if request.probe {
        userns::probe(&request.root, request.layers.as_ref()).or_fail(|| "user namespace".into());
        std::process::exit(0);
    }
    if request.probe_network {
        slirp::probe().or_fail(|| "network namespace".into());
        std::process::exit(0);
    }
    let userns = request
        .userns
        .then(|| userns::create().or_fail(|| "create the user namespace".into()));
    // Before the PID namespace below: its first child would be slirp4netns.
    let mut slirp = join_host_network(request, userns.as_ref());
    // With a user namespace, the network and IPC namespaces are made once
    // inside it (see `enter_userns`), so that they belong to it.
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS;
    if userns.is_none() {
        flags |= CloneFlags::CLONE_NEWIPC;
        if request.isolate_network {
            flags |= CloneFlags::CLONE_NEWNET;
        }
    }
    unshare(flags).or_fail(|| "unshare namespaces".into());
    // Nothing mounted from here on may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .or_fail(|| "make / private".into());
    if request.isolate_network && userns.is_none() {
        loopback_up().or_fail(|| "bring up lo".into());
    }
    // The supervisor of device `mknod`s: the command sends its seccomp
    // listener over `listener_w`; the host's /proc is opened now, as
    // pivot_root will move this process's root too.
    let supervisor = userns.as_ref().map(|_| {
        let (r, w) = UnixStream::pair().or_fail(|| "create socket pair".into());
        let proc = File::open("/proc").or_fail(|| "open /proc".into());
        (r, w, OwnedFd::from(proc))
    });

    let (status_r, status_w) =
        unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).or_fail(|| "create pipe".into());
    // SAFETY: the helper is single-threaded.
    match unsafe { unistd::fork() }.or_fail(|| "fork".into()) {
        ForkResult::Child => {
            drop(status_r);
            let listener_w = supervisor.map(|(r, w, _)| {
                drop(r);
                w
            });
            init(request, status_w, userns, listener_w)
        }
        ForkResult::Parent { child } => {
            drop(status_w);
            drop(userns);
            if let Some((listener_r, listener_w, proc)) = supervisor {
                drop(listener_w);
                supervise(listener_r, status_r.as_fd(), proc.as_fd());
            }
            let init_status = wait_for(child);
            if let Some(slirp) = &mut slirp {
                slirp.stop();
            }
            let mut buf = [0u8; 4];
            let mut status_r = File::from(status_r);
            match status_r.read_exact(&mut buf) {
                Ok(()) => end_like(i32::from_le_bytes(buf)),
                // PID 1 died before the command ended (setup failure, killed).
                Err(_) => end_like(init_status),
            }
        }
    }
}

/// For a step with the host's network in a user namespace: from here on,
/// this process and every process it starts are in a network namespace of
/// the user namespace's own, connected to the host's by slirp4netns, which
/// runs until [`slirp::Slirp::stop`] or this process's end.
fn join_host_network(request: &Request, userns: Option<&OwnedFd>) -> Option<slirp::Slirp> {
    if !request.slirp {
        return None;
    }
    let Some(userns) = userns else {
        setup_failed("slirp4netns", "the step has no user namespace")
    };
    Some(slirp::join(userns.as_fd()).or_fail(|| "connect the step's network to the host's".into()))
}

/// Answer the command's device `mknod`s until PID 1 is done (its status
/// pipe becomes readable or closes). The listener comes over `channel` once
/// the command has loaded its filter; it never comes if setup failed.
fn supervise(channel: UnixStream, done: BorrowedFd, proc: BorrowedFd) {
    let mut channel = Some(channel);
    let mut listener: Option<OwnedFd> = None;
    loop {
        let mut fds = vec![PollFd::new(done, PollFlags::POLLIN)];
        if let Some(c) = &channel {
            fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
        }
        if let Some(l) = &listener {
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => setup_failed("wait for the command", e),
        }
        let ready: Vec<PollFlags> = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        if !ready[0].is_empty() {
            return;
        }
        let mut next = 1;
        if let Some(c) = &channel {
            if !ready[next].is_empty() {
                // One descriptor, or the end: the command exec'd or died.
                listener = receive_fd(c);
                channel = None;
            }
            next += 1;
        }
        if let Some(l) = &listener {
            let r = ready.get(next).copied().unwrap_or(PollFlags::empty());
            if r.contains(PollFlags::POLLIN) {
                let _ = mknod::answer_one(l.as_fd(), proc);
            } else if !r.is_empty() {
                // Every process under the filter is gone.
                listener = None;
            }
        }
    }
}

/// The descriptor sent over `channel` with SCM_RIGHTS, if any.
fn receive_fd(channel: &UnixStream) -> Option<OwnedFd> {
    let mut byte = 0u8;
    let mut iov = libc::iovec {
        iov_base: (&mut byte as *mut u8).cast(),
        iov_len: 1,
    };
    // Room for one control message holding one descriptor (u64-aligned).
    let mut space = [0u64; 4];
    // SAFETY: msghdr is plain data; zeroed is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&space);
    // SAFETY: `msg` points at `iov` and `space`, both alive and of the sizes
    // given; the kernel writes within them.
    let n = unsafe { libc::recvmsg(channel.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n <= 0 {
        return None;
    }
    // SAFETY: the CMSG_ macros walk the control buffer the kernel filled,
    // within `msg_controllen`; a descriptor it installed is ours to own.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return None;
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
        Some(OwnedFd::from_raw_fd(fd))
    }
}

/// Send `fd` to the supervisor.
fn send_fd(channel: &UnixStream, fd: BorrowedFd) -> std::io::Result<()> {
    let mut byte = b'l';
    let mut iov = libc::iovec {
        iov_base: (&mut byte as *mut u8).cast(),
        iov_len: 1,
    };
    let mut space = [0u64; 4];
    // SAFETY: msghdr is plain data; zeroed is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen =
        unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    // SAFETY: `space` is large enough for one header and one descriptor
    // (CMSG_SPACE of an int is 24 bytes, `space` 32), so the header and data
    // pointers stay inside it.
    let ret = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd.as_raw_fd());
        libc::sendmsg(channel.as_raw_fd(), &msg, 0)
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A wait status as one number: the exit code, or minus the signal.
fn encode_status(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(-(sig as i32)),
        _ => None,
    }
}

fn wait_for(pid: Pid) -> i32 {
    loop {
        match waitpid(pid, None) {
            Ok(status) => {
                if let Some(code) = encode_status(status) {
                    return code;
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => setup_failed("wait for the sandbox", e),
        }
    }
}

/// Exit with `code`, or die of the signal `-code`.
fn end_like(code: i32) -> ! {
    if code >= 0 {
        std::process::exit(code);
    }
    if let Ok(sig) = Signal::try_from(-code) {
        // No core file: the command's crash is not the helper's.
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain syscalls with valid arguments.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            let _ = signal::signal(sig, SigHandler::SigDfl);
        }
        let _ = signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&SigSet::all()), None);
        let _ = signal::raise(sig);
    }
    std::process::exit(128 - code)
}

/// PID 1 of the new PID namespace: builds the root, starts the command and
/// reaps every orphan until the command ends. When it exits the kernel kills
/// whatever the command left running, and the mount namespace goes with it.
fn init(
    request: &Request,
    status_w: OwnedFd,
    userns: Option<OwnedFd>,
    mut listener_w: Option<UnixStream>,
) -> ! {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).or_fail(|| "set death signal".into());
    enter_root(request, userns.as_ref().map(|ns| ns.as_fd()));
    if let Some(ns) = userns {
        enter_userns(ns, request.isolate_network);
    }
    // SAFETY: PID 1 is single-threaded.
    match unsafe { unistd::fork() }.or_fail(|| "fork the command".into()) {
        ForkResult::Child => {
            drop(status_w);
            exec_command(request, listener_w)
        }
        ForkResult::Parent { child } => loop {
            // The supervisor must see the end once the command is gone.
            drop(listener_w.take());
            match waitpid(Pid::from_raw(-1), None) {
                Ok(status) if status.pid() == Some(child) => {
                    if let Some(code) = encode_status(status) {
                        let mut file = File::from(status_w);
                        let _ = file.write_all(&code.to_le_bytes());
                        std::process::exit(if code >= 0 { code } else { 128 - code });
                    }
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => setup_failed("wait for the command", e),
            }
        },
    }
}

fn mount_at(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) {
    mount(source, target, fstype, flags, data)
        .or_fail(|| format!("mount {} on {}", fstype.unwrap_or("bind"), target.display()));
}

/// Mount what the command needs inside the tree and make it the root.
fn enter_root(request: &Request, userns: Option<BorrowedFd>) {
    let root = &request.root;
    if let Some(ns) = userns {
        idmapped_root(request, ns);
    } else {
        mount_at(
            Some(root),
            root,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        );
    }
    if request.confined && userns.is_none() {
        confine::tree_nodev(root).or_fail(|| "confine the tree".into());
    }
    mount_at(
        Some(Path::new("proc")),
        &root.join("proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    );
    if request.confined {
        confine::restrict_proc(&root.join("proc")).or_fail(|| "restrict /proc".into());
    }
    populate_dev(&root.join("dev"), request.confined, userns.is_some());
    if let Some(terminal) = &request.console {
        bind_console(terminal, &root.join("dev/console"));
    }
    for bind in &request.etc_binds {
        let target = root.join("etc").join(&bind.name);
        mount_at(Some(&bind.host), &target, None, MsFlags::MS_BIND, None);
    }
    unistd::sethostname(HOSTNAME).or_fail(|| "set hostname".into());

    // pivot_root(".", ".") stacks the old root on the new one; detaching it
    // leaves the tree alone, with no directory needed to park the old root.
    unistd::chdir(root).or_fail(|| format!("enter {}", root.display()));
    unistd::pivot_root(".", ".").or_fail(|| "pivot_root".into());
    umount2(".", MntFlags::MNT_DETACH).or_fail(|| "detach the host root".into());
    unistd::chdir("/").or_fail(|| "enter /".into());
    if unistd::chdir(request.workdir.as_str()).is_err() {
        unistd::chdir("/").or_fail(|| "enter /".into());
    }
}

/// The tree as the step's user namespace needs it: idmapped and nodev in
/// one step. The etc binds come from inside the tree, so through this
/// mount, idmapped too. An overlay work tree is mounted anew over idmapped
/// layers, as no overlay mount can be idmapped.
fn idmapped_root(request: &Request, ns: BorrowedFd) {
    let root = &request.root;
    match &request.layers {
        Some(layers) => userns::idmapped_overlay(layers, root, ns),
        None => userns::idmapped_tree(root, ns, userns::MOUNT_ATTR_NODEV)
            .and_then(|tree| userns::attach(tree, root)),
    }
    .or_fail(|| format!("idmapped mount of {}", root.display()));
}

/// A tmpfs with the host's harmless devices, a private devpts and the usual
/// links: what a container runtime gives, and nothing of the host's disks.
/// Confined, the tmpfs is `nodev`: a node made there cannot be opened (the
/// bound devices are mounts of their own and still open).
fn populate_dev(dev: &Path, confined: bool, in_userns: bool) {
    let nodev = if confined {
        MsFlags::MS_NODEV
    } else {
        MsFlags::empty()
    };
    // In a user namespace, its root owns /dev as host root owns it otherwise.
    let owner = if in_userns {
        format!(",uid={0},gid={0}", userns::HOST_BASE)
    } else {
        String::new()
    };
    mount_at(
        Some(Path::new("tmpfs")),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME | nodev,
        Some(&format!("mode=755,size=65536k{owner}")),
    );
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let target = dev.join(name);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(&target)
            .or_fail(|| format!("create {}", target.display()));
        mount_at(Some(&host), &target, None, MsFlags::MS_BIND, None);
    }

    let pts = dev.join("pts");
    fs::create_dir(&pts).or_fail(|| format!("create {}", pts.display()));
    let devpts = mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    );
    let ptmx = dev.join("ptmx");
    if devpts.is_ok() {
        symlink("pts/ptmx", &ptmx).or_fail(|| format!("create {}", ptmx.display()));
    } else {
        File::create(&ptmx).or_fail(|| format!("create {}", ptmx.display()));
        mount_at(
            Some(Path::new("/dev/ptmx")),
            &ptmx,
            None,
            MsFlags::MS_BIND,
            None,
        );
    }

    let shm = dev.join("shm");
    fs::create_dir(&shm).or_fail(|| format!("create {}", shm.display()));
    mount_at(
        Some(Path::new("shm")),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(&format!("mode=1777,size=65536k{owner}")),
    );

    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(name)).or_fail(|| format!("create /dev/{name}"));
    }
}

/// The host terminal the command has as stdin, at `/dev/console`, where
/// `ttyname(3)` finds it by its device number.
fn bind_console(terminal: &Path, console: &Path) {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o620)
        .open(console)
        .or_fail(|| format!("create {}", console.display()));
    mount_at(Some(terminal), console, None, MsFlags::MS_BIND, None);
}

/// Join the user namespace as its root (PID 1 does, before it starts the
/// command), and make the IPC and (for `network: none`) network
/// namespaces inside it, so that they belong to it: its root's NET_RAW and
/// NET_BIND_SERVICE then count there.
fn enter_userns(ns: OwnedFd, isolate_network: bool) {
    userns::enter(ns.as_fd()).or_fail(|| "enter the user namespace".into());
    drop(ns);
    // Changing ids cleared the death signal.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).or_fail(|| "set death signal".into());
    let mut flags = CloneFlags::CLONE_NEWIPC;
    if isolate_network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).or_fail(|| "unshare namespaces in the user namespace".into());
    if isolate_network {
        loopback_up().or_fail(|| "bring up lo".into());
    }
}

/// `ip link set lo up`, without needing `ip`.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a plain socket(2); the descriptor is owned right away.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `sock` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: ifreq is plain data; the name fits with its NUL.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, which is valid.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Switch to the image user `spec`, resolved in the tree's passwd and group
/// files (the tree is `/` by now), and give `HOME` a value if the image did
/// not; returns the uid.
fn become_user(spec: &str, env: &mut Vec<(String, String)>) -> u32 {
    let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
    let user = user::resolve(spec, &read("/etc/passwd"), &read("/etc/group"))
        .unwrap_or_else(|e| setup_failed(&format!("run as user {spec:?}"), e));
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push(("HOME".into(), user.home.clone()));
    }
    if user.uid != 0 {
        // The output pipes are root's: `echo > /dev/stdout` reopens them.
        for fd in 0..=2 {
            // SAFETY: fstat and fchown on descriptors of ours, with a
            // zeroed stat buffer the kernel fills.
            unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                if libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO {
                    libc::fchown(fd, user.uid, user.gid);
                }
            }
        }
    }
    let groups: Vec<unistd::Gid> = user
        .groups
        .iter()
        .map(|&g| unistd::Gid::from_raw(g))
        .collect();
    unistd::setgroups(&groups).or_fail(|| format!("set the groups of user {spec:?}"));
    let gid = unistd::Gid::from_raw(user.gid);
    unistd::setresgid(gid, gid, gid).or_fail(|| format!("set the group of user {spec:?}"));
    let uid = unistd::Uid::from_raw(user.uid);
    unistd::setresuid(uid, uid, uid).or_fail(|| format!("become user {spec:?}"));
    user.uid
}

/// The command's process: default signal handling, exactly the requested
/// environment, argv[0] looked up in the tree's PATH.
fn exec_command(request: &Request, listener_w: Option<UnixStream>) -> ! {
    // Rust ignores SIGPIPE and the helper ignores SIGINT/SIGQUIT; ignored
    // signals survive exec, and the command must not inherit that.
    for sig in [
        Signal::SIGPIPE,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
        Signal::SIGHUP,
    ] {
        // SAFETY: SIG_DFL installs no handler code.
        let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
    }
    let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let mut env = request.env.clone();
    if request.confined {
        caps::drop_bounding().or_fail(|| "drop capabilities".into());
        // Loading the filter without no_new_privs needs CAP_SYS_ADMIN.
        let listener =
            seccomp::apply(listener_w.is_some()).or_fail(|| "load the seccomp filter".into());
        if let (Some(channel), Some(listener)) = (listener_w, listener) {
            send_fd(&channel, listener.as_fd()).or_fail(|| "pass on the seccomp listener".into());
        }
    }
    let uid = match &request.user {
        Some(spec) => become_user(spec, &mut env),
        None => 0,
    };
    // A non-root uid lost every capability but the bounding set with setuid.
    if request.confined && uid == 0 {
        caps::limit_root().or_fail(|| "limit capabilities".into());
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let cstring =
        |s: String| CString::new(s).unwrap_or_else(|e| setup_failed("argument with NUL", e));
    let argv: Vec<CString> = request.argv.iter().cloned().map(cstring).collect();
    let envp: Vec<CString> = env
        .into_iter()
        .map(|(k, v)| cstring(format!("{k}={v}")))
        .collect();
    let Some(program) = request.argv.first() else {
        setup_failed("run", "empty command")
    };

    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        path_var
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(program))
            .collect()
    };
    let mut last_error = nix::errno::Errno::ENOENT;
    for candidate in candidates {
        let Ok(path) = CString::new(candidate.into_os_string().into_encoded_bytes()) else {
            continue;
        };
        let Err(e) = unistd::execve(&path, &argv, &envp);
        // Keep looking only past entries that are not there at all.
        if !matches!(e, nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) {
            last_error = e;
        }
    }
    let failure = if last_error == nix::errno::Errno::ENOENT {
        Failure::NotFound(program.clone())
    } else {
        Failure::Exec(format!("execute {program}: {}", last_error.desc()))
    };
    report(&failure);
    std::process::exit(EXEC_FAILED)
}
