//! `network: host` in the user namespace: a confined step (and `install`,
//! and `genoci chroot`) has a network namespace of its own, made in its
//! user namespace and connected to the host's network by slirp4netns. It
//! reaches what the host reaches (TCP, DNS over UDP), keeps ping and low
//! ports, sees none of the host's interfaces, and slirp4netns never outlives
//! the step. Without slirp4netns, steps keep host ids in the host's network.
//!
//! Nothing here changes the host's network: the servers the tests start
//! listen on an address the host already has, and the resolver a test
//! chooses is bound over `/etc/resolv.conf` in a mount namespace of its own.

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::{require_root, require_tool, stderr, Env};

/// A spec: the busybox base and a child `probe` with `body` (its keys).
fn spec(env: &Env, body: &str) {
    env.busybox("bb.tar.gz");
    env.write(
        "spec.yaml",
        &format!("base:\n  base: empty\n  expand: ./bb.tar.gz\nprobe:\n  base: base\n{body}"),
    );
}

/// `script` as the probe's run step, indented for the spec.
fn run_step(script: &str) -> String {
    let indented: String = script.lines().map(|l| format!("    {l}\n")).collect();
    format!("  run: |\n{indented}")
}

fn output(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(out))
}

fn read(root: &Path, file: &str) -> String {
    fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The words of `text` (an id map's numbers).
fn words(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

/// The interface names in a copy of `/proc/net/dev`.
pub(crate) fn interfaces(netdev: &str) -> Vec<String> {
    netdev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|name| name.trim().to_string())
        .collect()
}

/// An IPv4 address of the host's own, not a loopback one: where the
/// servers of these tests listen, reachable from a step only through
/// slirp4netns.
pub(crate) fn host_address() -> Option<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?
        .split('/')
        .next()?
        .parse()
        .ok()
}

macro_rules! require_host_address {
    () => {
        match host_address() {
            Some(address) => address,
            None => {
                crate::util::skip("the host has no IPv4 address but loopback ones");
                return;
            }
        }
    };
}

#[test]
fn a_host_network_step_has_a_network_of_its_own_in_its_user_namespace() {
    require_root!();
    let env = Env::new();
    spec(
        &env,
        &run_step(
            "cat /proc/self/uid_map > /uid_map\ncat /proc/net/dev > /netdev\nip route > /routes\n",
        ),
    );
    let out = env.genoci(&["-v", "build", "spec.yaml"]);
    assert!(out.status.success(), "{}", output(&out));
    let err = stderr(&out);
    assert!(
        err.contains("user_namespace=true network=\"slirp4netns\""),
        "{err}"
    );
    let root = env.unpack("probe");
    assert_eq!(words(&read(&root, "uid_map")), ["0", "1900000000", "65536"]);
    // Its own interfaces, none of the host's.
    assert_eq!(interfaces(&read(&root, "netdev")), ["lo", "tap0"]);
    let host = interfaces(&fs::read_to_string("/proc/net/dev").unwrap());
    assert!(host.iter().any(|i| i != "lo"), "{host:?}");
    assert_eq!(
        read(&root, "routes").lines().next(),
        Some("default via 10.0.2.2 dev tap0 ")
    );
}

#[test]
fn ping_and_ports_below_1024_work_on_both_networks() {
    require_root!();
    for network in ["host", "none"] {
        let env = Env::new();
        spec(
            &env,
            &format!(
                "  network: {network}\n{}",
                run_step(
                    r#"ping -c 1 -W 5 127.0.0.1
nc -l -p 80 </dev/null >/dev/null 2>/tmp/nc.err &
sleep 0.5
netstat -ltn > /listening
kill $! || { cat /tmp/nc.err; exit 1; }
rm /tmp/nc.err
"#
                )
            ),
        );
        let out = env.genoci(&["build", "spec.yaml"]);
        assert!(out.status.success(), "{network}: {}", output(&out));
        let listening = read(&env.unpack("probe"), "listening");
        assert!(listening.contains(":80 "), "{network}: {listening}");
    }
}

#[test]
fn a_step_reaches_a_tcp_server_on_the_host() {
    require_root!();
    let address = require_host_address!();
    let listener = TcpListener::bind((address, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (stream, peer) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        (&stream).write_all(b"pong from the host\n").unwrap();
        (line, peer)
    });
    let env = Env::new();
    spec(
        &env,
        &run_step(&format!(
            "echo ping from the step | nc -w 10 {address} {port} > /reply\n"
        )),
    );
    let out = env.genoci(&["build", "spec.yaml"]);
    assert!(out.status.success(), "{}", output(&out));
    let (line, peer) = server.join().unwrap();
    assert_eq!(line, "ping from the step\n");
    // slirp4netns connected from the host itself.
    assert_eq!(peer.ip(), address);
    assert_eq!(read(&env.unpack("probe"), "reply"), "pong from the host\n");
}

#[test]
fn the_host_s_loopback_is_not_reachable_from_a_step() {
    require_root!();
    // A service that trusts 127.0.0.1 on the host: it notes each
    // connection and closes it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let server = std::thread::spawn(move || {
        let mut connections = 0;
        while !stopped.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok(_) => connections += 1,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        connections
    });
    let env = Env::new();
    spec(
        &env,
        &run_step(&format!(
            r#"for a in 127.0.0.1 10.0.2.2; do
  if timeout 10 nc -w 3 $a {port} </dev/null 2>/tmp/err; then echo "REACHED $a"; exit 1; fi
  cat /tmp/err >> /refused
done
rm /tmp/err
"#
        )),
    );
    let out = env.genoci(&["build", "spec.yaml"]);
    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        server.join().unwrap(),
        0,
        "a step connected to the host's loopback"
    );
    assert!(out.status.success(), "{}", output(&out));
    let refused = read(&env.unpack("probe"), "refused");
    assert!(
        refused.contains("Connection refused") && refused.contains("Network is unreachable"),
        "{refused}"
    );
}

/// A DNS server answering A queries for one name with one address, no
/// record of other types for it, NXDOMAIN for other names; it serves
/// until [`Dns::asked`].
struct Dns {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Dns {
    fn start(socket: UdpSocket, name: &'static str, address: Ipv4Addr) -> Dns {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut asked = Vec::new();
            let mut buf = [0u8; 512];
            while !stopped.load(Ordering::Relaxed) {
                let (n, peer) = match socket.recv_from(&mut buf) {
                    Ok(got) => got,
                    Err(e)
                        if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut =>
                    {
                        continue
                    }
                    Err(e) => panic!("the test's resolver: {e}"),
                };
                let Some((qname, end)) = question(&buf[..n]) else {
                    continue;
                };
                socket
                    .send_to(&answer(&buf[..end], qname == name, address), peer)
                    .unwrap();
                asked.push(qname);
            }
            asked
        });
        Dns { stop, thread }
    }

    /// Stop; the names asked.
    fn asked(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The reply to `query` (header and question): `address` for an A query
/// of the `known` name.
fn answer(query: &[u8], known: bool, address: Ipv4Addr) -> Vec<u8> {
    let qtype = u16::from_be_bytes([query[query.len() - 4], query[query.len() - 3]]);
    let mut reply = query.to_vec();
    // QR, RD, RA; NXDOMAIN for an unknown name.
    reply[2] = 0x81;
    reply[3] = if known { 0x80 } else { 0x83 };
    let a = known && qtype == 1;
    reply[6..12].copy_from_slice(&[0, u8::from(a), 0, 0, 0, 0]);
    if a {
        // The name (a pointer to the question's), A, IN, TTL 60.
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        reply.extend_from_slice(&address.octets());
    }
    reply
}

/// The name of a query's question and where the question ends.
fn question(msg: &[u8]) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let len = *msg.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(msg.get(at..at + len)?).into_owned());
        at += len;
    }
    (msg.len() >= at + 4).then(|| (labels.join("."), at + 4))
}

/// Build `spec.yaml` with genoci seeing `resolv_conf` as the host's
/// `/etc/resolv.conf` (bound over it in a mount namespace of its own).
fn build_with_resolv_conf(env: &Env, resolv_conf: &str) -> Output {
    let file = env.write("host-resolv.conf", resolv_conf);
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
        .arg(&file)
        .arg(env!("CARGO_BIN_EXE_genoci"))
        .args(["build", "spec.yaml"])
        .current_dir(env.path())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", env.path())
        .output()
        .unwrap()
}

const NAME: &str = "build-host.genoci.test";
/// TEST-NET-2: what the name resolves to.
const ANSWER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

const RESOLVE: &str =
    "cp /etc/resolv.conf /resolv.seen\nnslookup build-host.genoci.test > /dns.out || true\n";

#[test]
fn a_loopback_nameserver_of_the_host_answers_through_slirp4netns() {
    require_root!();
    require_tool!("unshare");
    // As systemd-resolved's 127.0.0.53: a resolver only the host reaches.
    let loopback = Ipv4Addr::new(127, 0, 0, 77);
    let socket = UdpSocket::bind((loopback, 53))
        .unwrap_or_else(|e| panic!("bind {loopback}:53 for the test's resolver: {e}"));
    let server = Dns::start(socket, NAME, ANSWER);
    let env = Env::new();
    spec(&env, &run_step(RESOLVE));
    let out = build_with_resolv_conf(&env, &format!("nameserver {loopback}\noptions ndots:1\n"));
    assert!(out.status.success(), "{}", output(&out));
    let root = env.unpack("probe");
    // The forwarder stands in for the loopback nameserver.
    assert_eq!(
        read(&root, "resolv.seen"),
        "nameserver 10.0.2.3\noptions ndots:1\n"
    );
    let dns = read(&root, "dns.out");
    assert!(dns.contains(&format!("Address: {ANSWER}")), "{dns}");
    assert!(server.asked().contains(&NAME.to_string()));
}

#[test]
fn a_nameserver_on_the_host_s_network_is_asked_directly() {
    require_root!();
    require_tool!("unshare");
    let address = require_host_address!();
    let socket = UdpSocket::bind((address, 53))
        .unwrap_or_else(|e| panic!("bind {address}:53 for the test's resolver: {e}"));
    let server = Dns::start(socket, NAME, ANSWER);
    let env = Env::new();
    spec(&env, &run_step(RESOLVE));
    let resolv_conf = format!("search genoci.test\nnameserver {address}\n");
    let out = build_with_resolv_conf(&env, &resolv_conf);
    assert!(out.status.success(), "{}", output(&out));
    let root = env.unpack("probe");
    assert_eq!(read(&root, "resolv.seen"), resolv_conf);
    let dns = read(&root, "dns.out");
    assert!(dns.contains(&format!("Address: {ANSWER}")), "{dns}");
    assert!(server.asked().contains(&NAME.to_string()));
}

/// The slirp4netns processes started for builds in `env` (found by the
/// `HOME` genoci passes on to them), zombies left out.
fn slirps_of(env: &Env) -> Vec<u32> {
    let home = format!("HOME={}", env.path().display()).into_bytes();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let dir = entry.path();
        let is_slirp =
            fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim() == "slirp4netns");
        let alive = fs::read_to_string(dir.join("stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        });
        let ours =
            fs::read(dir.join("environ")).is_ok_and(|e| e.split(|&b| b == 0).any(|v| v == home));
        if is_slirp && alive && ours {
            found.push(pid);
        }
    }
    found
}

/// Whether slirp4netns `pid` serves a step: its parent (the helper) has
/// another child, the step's PID 1.
fn serves_a_step(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(parent) = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().nth(1))
    else {
        return false;
    };
    fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .is_ok_and(|c| c.split_whitespace().count() >= 2)
}

/// A build killed (SIGKILL) when the test ends, should it fail first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait until `probe` holds, at most `limit`.
fn wait_until(limit: Duration, what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !probe() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn slirp4netns_is_confined_and_ends_with_the_step_and_with_genoci() {
    require_root!();
    // A step that ends well and one that fails.
    let env = Env::new();
    spec(&env, &run_step("grep -q tap0 /proc/net/dev\n"));
    let spec_text = fs::read_to_string(env.path().join("spec.yaml")).unwrap();
    env.write(
        "spec.yaml",
        &format!(
            "{spec_text}failing:\n  base: base\n  run: grep -q tap0 /proc/net/dev && exit 3\n"
        ),
    );
    let out = env.genoci(&["build", "spec.yaml"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("target failing: run step 1"),
        "{}",
        output(&out)
    );
    assert!(env.tags().contains(&"probe".to_string()));
    assert_eq!(slirps_of(&env), Vec::<u32>::new(), "left after the build");

    // genoci killed (SIGKILL) in the middle of a step.
    let env = Env::new();
    spec(&env, &run_step("sleep 120\n"));
    let mut build = KillOnDrop(env.cmd(&["build", "spec.yaml"]).spawn().unwrap());
    // genoci's probe runs a slirp4netns of its own first: the step's is
    // the one whose parent, the helper, has started the step's PID 1 too,
    // which it does once slirp4netns is ready.
    let mut serving = None;
    wait_until(
        Duration::from_secs(60),
        "slirp4netns serves the step",
        || {
            assert!(build.0.try_wait().unwrap().is_none(), "the build ended");
            serving = slirps_of(&env).into_iter().find(|&pid| serves_a_step(pid));
            serving.is_some()
        },
    );
    let pid = serving.unwrap();
    // It runs in a sandbox of its own: NET_BIND_SERVICE only, a seccomp
    // filter, a mount namespace of its own.
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for line in [
        "CapEff:\t0000000000000400",
        "CapBnd:\t0000000000000400",
        "Seccomp:\t2",
    ] {
        assert!(status.contains(line), "{line} not in {status}");
    }
    let mnt = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    assert_ne!(mnt(&pid.to_string()), mnt("self"));
    build.0.kill().unwrap();
    build.0.wait().unwrap();
    wait_until(
        Duration::from_secs(10),
        "slirp4netns ends with genoci",
        || slirps_of(&env).is_empty(),
    );
}

#[test]
fn without_slirp4netns_host_network_steps_keep_host_ids_and_say_why() {
    require_root!();
    let env = Env::new();
    spec(
        &env,
        &run_step("cat /proc/self/uid_map > /uid_map\ncat /proc/net/dev > /netdev\nping -c 1 -W 5 127.0.0.1\n"),
    );
    // A PATH where no slirp4netns is found.
    let out = env
        .cmd(&["-v", "build", "spec.yaml"])
        .env("PATH", env.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no network of their own for run steps with network: host")
            && err.contains("slirp4netns is not installed"),
        "{err}"
    );
    assert!(
        err.contains("user_namespace=false network=\"host\""),
        "{err}"
    );
    let root = env.unpack("probe");
    assert_eq!(words(&read(&root, "uid_map")), ["0", "0", "4294967295"]);
    // The host's network namespace: its interfaces.
    let seen: HashSet<String> = interfaces(&read(&root, "netdev")).into_iter().collect();
    let host: HashSet<String> = interfaces(&fs::read_to_string("/proc/net/dev").unwrap())
        .into_iter()
        .collect();
    assert_eq!(seen, host);
}

#[test]
fn install_and_chroot_run_in_the_user_namespace_with_their_own_network() {
    require_root!();
    require_tool!("dpkg-deb");
    let env = Env::new();
    // A package whose postinst notes where dpkg ran it.
    let pkg = env.path().join("pkg");
    fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    fs::write(
        pkg.join("DEBIAN/control"),
        "Package: where\nVersion: 1.0\nArchitecture: all\n\
         Maintainer: Test <test@example.org>\nDescription: test package\n",
    )
    .unwrap();
    let postinst = pkg.join("DEBIAN/postinst");
    fs::write(
        &postinst,
        "#!/bin/sh\ncat /proc/self/uid_map > /var/lib/where.uid_map\ncat /proc/net/dev > /var/lib/where.netdev\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&postinst, fs::Permissions::from_mode(0o755)).unwrap();
    crate::util::run_ok(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "--build"])
            .arg(&pkg)
            .arg(env.path().join("where.deb")),
    );
    env.busybox("bb.tar.gz");
    env.write(
        "spec.yaml",
        "base:\n  base: empty\n  expand: ./bb.tar.gz\n  run: mkdir -p /var/lib/dpkg/info && touch /var/lib/dpkg/status\nprobe:\n  base: base\n  install: ./where.deb\n",
    );
    env.ok(&["build", "spec.yaml"]);
    let root = env.unpack("probe");
    assert_eq!(
        words(&read(&root, "var/lib/where.uid_map")),
        ["0", "1900000000", "65536"],
        "install"
    );
    assert_eq!(
        interfaces(&read(&root, "var/lib/where.netdev")),
        ["lo", "tap0"],
        "install"
    );

    let out = env.ok(&[
        "chroot",
        "probe",
        "/bin/sh",
        "-c",
        "cat /proc/self/uid_map /proc/net/dev",
    ]);
    let mut words = out.split_whitespace();
    let map: Vec<&str> = words.by_ref().take(3).collect();
    assert_eq!(map, ["0", "1900000000", "65536"], "chroot: {out}");
    let netdev = out.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(interfaces(&netdev), ["lo", "tap0"], "chroot: {out}");
}
