//! The network of a confined `network: host` step. The step runs in a user
//! namespace (see [`userns`](super::userns)), and the host's network
//! namespace belongs to the host's user namespace: from another one, its
//! NET_RAW (ping) and NET_BIND_SERVICE (ports below 1024) would not count
//! there. So the step gets a network namespace of its own, made inside its
//! user namespace, and `slirp4netns` connects it to the host's network, as
//! rootless podman and buildah do: the step's packets leave through a tap
//! device and slirp4netns, in the host's network namespace, makes ordinary
//! host connections for them (NAT).
//!
//! Inside: `tap0` at 10.0.2.100/24, the default route through 10.0.2.2,
//! slirp4netns's DNS forwarder at [`DNS`] (it asks the host's first
//! nameserver, from the host's side), IPv4 only. 10.0.2.2 does not reach
//! the host's loopback (`--disable-host-loopback`, podman's default): a
//! hostile step must not reach services that trust the host's 127.0.0.1;
//! the host's other addresses are reached as any host reaches them.
//!
//! slirp4netns runs as host root parsing the step's packets, so it runs in
//! its own sandbox (`--enable-sandbox --enable-seccomp`: a mount namespace
//! with only `/etc` and `/run`, every capability dropped but
//! NET_BIND_SERVICE, a seccomp filter). It ends with the step: the helper
//! kills it once the step is over, and should the helper die first (genoci
//! killed), its death signal and the hang-up of its exit descriptor end it.
//!
//! These calls run in the single-threaded helper (see `helper.rs`).

use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::wait::waitpid;
use nix::unistd::{self, ForkResult};

/// The program, looked up in `PATH`.
pub const PROGRAM: &str = "slirp4netns";
/// slirp4netns's DNS forwarder, as the step sees it.
pub const DNS: &str = "10.0.2.3";
/// How long slirp4netns may take to set up the namespace (it takes
/// milliseconds; a machine under heavy load may stall it).
const READY_TIMEOUT_MS: u16 = 30_000;
/// The most of slirp4netns's messages kept for an error.
const LOG_TAIL: usize = 2000;

/// A running slirp4netns serving the calling helper's network namespace.
#[derive(Debug)]
pub struct Slirp {
    child: Child,
    /// slirp4netns exits when the last copy of this closes (`--exit-fd`).
    _exit: OwnedFd,
    /// Its stdout and stderr: read only to say why it failed.
    log: File,
}

/// Make a network namespace owned by `userns`, connect it to the host's
/// network with slirp4netns and move the calling process into it, so that
/// every process it forks from now on starts there.
pub fn join(userns: BorrowedFd) -> io::Result<Slirp> {
    let netns = netns_in(userns).map_err(|e| context("make a network namespace", e))?;
    let slirp = Slirp::start(userns, netns.as_fd())?;
    setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| context("enter the network namespace", e.into()))?;
    Ok(slirp)
}

fn context(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A new network namespace owned by `userns`, as a descriptor. A child
/// joins the user namespace to make it (a namespace belongs to the user
/// namespace of the process that makes it) and goes away.
fn netns_in(userns: BorrowedFd) -> io::Result<OwnedFd> {
    let (ready_r, ready_w) = unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (done_r, done_w) = unistd::pipe2(OFlag::O_CLOEXEC)?;
    // SAFETY: the helper is single-threaded; the child only makes raw
    // system calls and `_exit`s.
    match unsafe { unistd::fork() }? {
        ForkResult::Child => {
            drop(ready_r);
            drop(done_w);
            let errno = match setns(userns, CloneFlags::CLONE_NEWUSER)
                .and_then(|()| unshare(CloneFlags::CLONE_NEWNET))
            {
                Ok(()) => 0,
                Err(e) => e as i32,
            };
            let _ = unistd::write(&ready_w, &errno.to_le_bytes());
            // Wait for the parent to have opened the namespace.
            let _ = unistd::read(&done_r, &mut [0u8]);
            // SAFETY: `_exit` ends the child without running anything else.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            drop(done_r);
            let result = (|| {
                let mut errno = [0u8; 4];
                File::from(ready_r).read_exact(&mut errno)?;
                match i32::from_le_bytes(errno) {
                    0 => Ok(File::open(format!("/proc/{child}/ns/net"))?.into()),
                    errno => Err(io::Error::from_raw_os_error(errno)),
                }
            })();
            drop(done_w);
            let _ = waitpid(child, None);
            result
        }
    }
}

impl Slirp {
    /// Start slirp4netns on `netns` (owned by `userns`) and wait until it
    /// has configured the namespace: `lo` and `tap0` up, the default route.
    fn start(userns: BorrowedFd, netns: BorrowedFd) -> io::Result<Slirp> {
        let (ready_r, ready_w) = unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (exit_r, exit_w) = unistd::pipe2(OFlag::O_CLOEXEC)?;
        let log: File =
            nix::sys::memfd::memfd_create(c"slirp4netns", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?
                .into();
        let mut command = Command::new(PROGRAM);
        command
            .args(arguments(
                ready_w.as_raw_fd(),
                exit_r.as_raw_fd(),
                userns.as_raw_fd(),
                netns.as_raw_fd(),
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?);
        let inherited = [
            ready_w.as_raw_fd(),
            exit_r.as_raw_fd(),
            userns.as_raw_fd(),
            netns.as_raw_fd(),
        ];
        let helper = unistd::getpid().as_raw();
        // SAFETY: the helper is single-threaded, so the child may do
        // anything; it only makes fcntl and prctl calls.
        unsafe {
            command.pre_exec(move || {
                for fd in inherited {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                // Never outlive the helper, even if it is killed.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != helper {
                    return Err(io::Error::other("the helper is gone"));
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => io::Error::new(
                e.kind(),
                format!("{PROGRAM} is not installed (Debian package slirp4netns)"),
            ),
            _ => context(&format!("start {PROGRAM}"), e),
        })?;
        drop(ready_w);
        drop(exit_r);
        let mut slirp = Slirp {
            child,
            _exit: exit_w,
            log,
        };
        match wait_ready(ready_r) {
            Ok(()) => Ok(slirp),
            Err(e) => {
                let status = slirp.stop();
                let log = slirp.log_tail();
                Err(io::Error::new(
                    e.kind(),
                    format!("{PROGRAM} {e} ({status}): {log}"),
                ))
            }
        }
    }

    /// End slirp4netns (the step is over) and reap it; says how it ended.
    pub fn stop(&mut self) -> String {
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => super::describe_status(status),
            Err(e) => format!("wait: {e}"),
        }
    }

    /// The end of what slirp4netns said, on one line.
    fn log_tail(&mut self) -> String {
        let mut bytes = Vec::new();
        let _ = self.log.rewind();
        let _ = (&self.log).take(1 << 20).read_to_end(&mut bytes);
        let text = String::from_utf8_lossy(&bytes).trim().replace('\n', "; ");
        let start = text.len().saturating_sub(LOG_TAIL);
        let start = (start..=text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text[start..].to_string()
    }
}

/// slirp4netns's command line. The descriptors are its own (inherited), so
/// the namespaces are named through its `/proc/self/fd`.
fn arguments(ready: i32, exit: i32, userns: i32, netns: i32) -> Vec<String> {
    vec![
        "--configure".into(),
        // The largest MTU slirp4netns takes, as podman: fewer, larger
        // packets through the tap device.
        "--mtu=65520".into(),
        "--disable-host-loopback".into(),
        "--enable-sandbox".into(),
        "--enable-seccomp".into(),
        format!("--ready-fd={ready}"),
        format!("--exit-fd={exit}"),
        "--netns-type=path".into(),
        format!("--userns-path=/proc/self/fd/{userns}"),
        format!("/proc/self/fd/{netns}"),
        "tap0".into(),
    ]
}

/// Wait for slirp4netns's "1" on its ready descriptor.
fn wait_ready(ready: OwnedFd) -> io::Result<()> {
    let mut fds = [PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, PollTimeout::from(READY_TIMEOUT_MS)) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("was not ready after {} s", READY_TIMEOUT_MS / 1000),
                ))
            }
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut byte = [0u8];
    match File::from(ready).read(&mut byte)? {
        1 if byte[0] == b'1' => Ok(()),
        _ => Err(io::Error::other("ended before it was ready")),
    }
}

/// Whether a step with `network: host` can have its own network: a user
/// namespace, a network namespace in it and slirp4netns serving it. Runs in
/// the helper.
pub fn probe() -> io::Result<()> {
    let userns = super::userns::create().map_err(|e| context("user namespace", e))?;
    let mut slirp = join(userns.as_fd())?;
    slirp.stop();
    Ok(())
}

/// The step's `/etc/resolv.conf`, from the host's. A loopback nameserver
/// (systemd-resolved's 127.0.0.53, a local dnsmasq) is the host's own and
/// unreachable from the step's network namespace: slirp4netns's forwarder,
/// which asks the host's first nameserver from the host's side, stands in
/// for it. Other IPv4 nameservers are reached through slirp4netns as the
/// host reaches them; IPv6 ones are left out (the step has no IPv6). With
/// no nameserver left, the forwarder: what the host's resolver does with
/// none (ask the host's loopback) is what the forwarder does then.
pub fn resolv_conf(host: &str) -> String {
    let mut out = String::new();
    let mut forwarder = false;
    let mut servers = 0;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        let address = match (words.next(), words.next()) {
            (Some("nameserver"), Some(address)) => address,
            _ => {
                out.push_str(line);
                out.push('\n');
                continue;
            }
        };
        let kept = match address.parse::<std::net::IpAddr>() {
            // The forwarder once, however many loopback nameservers.
            Ok(ip) if ip.is_loopback() => {
                (!std::mem::replace(&mut forwarder, true)).then(|| format!("nameserver {DNS}"))
            }
            Ok(std::net::IpAddr::V4(_)) => Some(line.to_string()),
            // IPv6, or not an address at all (the resolver skips those).
            _ => None,
        };
        if let Some(kept) = kept {
            servers += 1;
            out.push_str(&kept);
            out.push('\n');
        }
    }
    if servers == 0 {
        out.push_str(&format!("nameserver {DNS}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_nameserver_becomes_the_forwarder_once() {
        assert_eq!(
            resolv_conf("# systemd\nnameserver 127.0.0.53\nnameserver ::1\noptions edns0 trust-ad\nsearch lan\n"),
            "# systemd\nnameserver 10.0.2.3\noptions edns0 trust-ad\nsearch lan\n"
        );
    }

    #[test]
    fn other_ipv4_nameservers_stay_and_ipv6_ones_go() {
        assert_eq!(
            resolv_conf("nameserver 10.255.255.53\nnameserver 2001:db8::53\nnameserver 127.0.0.1\nnameserver 192.0.2.53\n"),
            "nameserver 10.255.255.53\nnameserver 10.0.2.3\nnameserver 192.0.2.53\n"
        );
    }

    #[test]
    fn no_usable_nameserver_gives_the_forwarder() {
        assert_eq!(resolv_conf(""), "nameserver 10.0.2.3\n");
        assert_eq!(
            resolv_conf("search lan\nnameserver fd00::53\n"),
            "search lan\nnameserver 10.0.2.3\n"
        );
    }

    #[test]
    fn slirp4netns_gets_its_own_descriptors_and_no_host_loopback() {
        let args = arguments(5, 6, 7, 8).join(" ");
        assert_eq!(
            args,
            "--configure --mtu=65520 --disable-host-loopback --enable-sandbox \
             --enable-seccomp --ready-fd=5 --exit-fd=6 --netns-type=path \
             --userns-path=/proc/self/fd/7 /proc/self/fd/8 tap0"
        );
    }
}
