//! Sandbox tests on a busybox tree, and the fixtures the actions' tests share.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use super::*;

/// Where the test playing the helper finds its request.
pub const REQUEST_VAR: &str = "GENOCI_TEST_SANDBOX_REQUEST";

/// The helper process under `cargo test`. The test harness runs each test
/// in a thread of its own, and the helper forks as a single-threaded
/// process only may: so the test binary plays the helper from a
/// constructor that runs before the harness's `main` (and its threads),
/// when started with the request in [`REQUEST_VAR`] (see
/// `helper_command`). It never returns.
extern "C" fn helper_before_main() {
    if let Ok(request) = std::env::var(REQUEST_VAR) {
        let result = helper_main(&[request]);
        eprintln!("genoci sandbox helper: {result:?}");
        std::process::exit(125);
    }
}

// SAFETY: an `.init_array` entry is called once by the loader before
// `main`, with no other thread running, which is what it relies on.
#[used]
#[link_section = ".init_array"]
static HELPER_BEFORE_MAIN: extern "C" fn() = helper_before_main;

/// A temp dir with `tree/`, a busybox root, beside it; `None` (with a
/// notice) when not root, since namespaces and mounts need it.
pub(crate) fn busybox_tree() -> Option<(tempfile::TempDir, PathBuf)> {
    if !nix::unistd::geteuid().is_root() {
        crate::test_support::skip("sandbox tests need root");
        return None;
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        crate::test_support::skip("/bin/busybox (Debian busybox-static) is not installed");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    for dir in ["bin", "etc", "tmp", "root"] {
        fs::create_dir_all(tree.join(dir)).unwrap();
    }
    fs::copy(busybox, tree.join("bin/busybox")).unwrap();
    let list = std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet)).unwrap();
        }
    }
    Some((tmp, tree))
}

/// Mount points at or below `dir` in this process's mount namespace.
pub(crate) fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m == &dir || m.starts_with(&format!("{dir}/")))
        .collect()
}

fn opts<'a>(tree: &'a Path, script: &str) -> RunOptions<'a> {
    RunOptions {
        root: tree,
        argv: vec!["/bin/sh".into(), "-e".into(), "-c".into(), script.into()],
        env: vec![],
        workdir: "/".into(),
        network: Network::Host,
        output: Output::Prefixed("test".into()),
        privileged: false,
        user: None,
        tree: None,
    }
}

fn run_ok(tree: &Path, script: &str) {
    let status = run(&opts(tree, script)).unwrap();
    assert!(status.success(), "{script}: {status}");
}

#[test]
fn a_script_writes_into_the_tree_and_sees_nothing_else() {
    let Some((tmp, tree)) = busybox_tree() else {
        return;
    };
    let marker = tmp.path().join("host-marker");
    fs::write(&marker, "host").unwrap();
    run_ok(
        &tree,
        &format!(
            "echo hello > /hello; ls / > /ls.txt; \
             if test -e {m}; then echo visible > /leak; fi",
            m = marker.display()
        ),
    );
    assert_eq!(fs::read_to_string(tree.join("hello")).unwrap(), "hello\n");
    assert!(!tree.join("leak").exists(), "host marker reachable");
    let listing = fs::read_to_string(tree.join("ls.txt")).unwrap();
    let mut names: Vec<&str> = listing.lines().collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["bin", "dev", "etc", "hello", "ls.txt", "proc", "root", "tmp"]
    );
    assert!(mounts_under(tmp.path()).is_empty());
}

#[test]
fn proc_is_fresh_and_the_hostname_is_genoci() {
    let Some((tmp, tree)) = busybox_tree() else {
        return;
    };
    run_ok(
        &tree,
        "echo $$ > /pid; hostname > /hostname; ls /proc | grep -c '^[0-9]' > /count",
    );
    // PID 1 is the sandbox's init, the shell is its only child.
    assert_eq!(fs::read_to_string(tree.join("pid")).unwrap(), "2\n");
    assert_eq!(
        fs::read_to_string(tree.join("hostname")).unwrap(),
        "genoci\n"
    );
    let count: u32 = fs::read_to_string(tree.join("count"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(count <= 5, "{count} processes visible");
    assert!(mounts_under(tmp.path()).is_empty());
}

#[test]
fn dev_is_minimal() {
    let Some((_tmp, tree)) = busybox_tree() else {
        return;
    };
    run_ok(
        &tree,
        "echo x > /dev/null; test -c /dev/urandom; test -L /dev/fd; \
         test -d /dev/shm; test -e /dev/ptmx; ls /dev > /devlist",
    );
    let devs = fs::read_to_string(tree.join("devlist")).unwrap();
    assert!(!devs
        .lines()
        .any(|d| d.starts_with("sd") || d.starts_with("loop")));
}

#[test]
fn failures_come_back_as_status() {
    let Some((_tmp, tree)) = busybox_tree() else {
        return;
    };
    let status = run(&opts(&tree, "exit 3")).unwrap();
    assert_eq!(status.code(), Some(3));
    let status = run(&opts(&tree, "kill -9 $$")).unwrap();
    assert_eq!(status.signal(), Some(9));
}

#[test]
fn a_missing_program_is_an_error() {
    let Some((_tmp, tree)) = busybox_tree() else {
        return;
    };
    let mut o = opts(&tree, "");
    o.argv = vec!["/no/such/program".into()];
    let err = run(&o).unwrap_err();
    assert!(
        matches!(&err, SandboxError::NotFound { program, .. } if program == "/no/such/program"),
        "{err}"
    );
}

#[test]
fn env_workdir_and_path_lookup() {
    let Some((_tmp, tree)) = busybox_tree() else {
        return;
    };
    let mut o = opts(&tree, "");
    o.argv = vec![
        "sh".into(),
        "-c".into(),
        "pwd > /tmp/pwd; env | sort > /tmp/env".into(),
    ];
    o.env = vec![("FOO".into(), "bar".into())];
    o.workdir = "/tmp".into();
    assert!(run(&o).unwrap().success());
    assert_eq!(fs::read_to_string(tree.join("tmp/pwd")).unwrap(), "/tmp\n");
    let env = fs::read_to_string(tree.join("tmp/env")).unwrap();
    assert!(env.contains("FOO=bar\n"), "{env}");
    assert!(
        env.contains(&format!("PATH={}\n", helper::DEFAULT_PATH)),
        "{env}"
    );
    assert!(!env.contains("CARGO"), "{env}");
}

#[test]
fn mount_points_leave_no_trace() {
    let Some((tmp, tree)) = busybox_tree() else {
        return;
    };
    let old = filetime::FileTime::from_unix_time(1_000_000, 0);
    filetime::set_file_times(&tree, old, old).unwrap();
    filetime::set_file_times(tree.join("etc"), old, old).unwrap();
    run_ok(&tree, "cat /etc/resolv.conf > /tmp/resolv");
    assert!(!tree.join("proc").exists());
    assert!(!tree.join("dev").exists());
    assert!(!tree.join("etc/resolv.conf").exists());
    assert!(!tree.join("etc/hosts").exists());
    assert_eq!(scratch::mtime_ns(&tree).unwrap(), 1_000_000_000_000_000);
    assert_eq!(
        scratch::mtime_ns(&tree.join("etc")).unwrap(),
        1_000_000_000_000_000
    );
    assert_eq!(
        fs::read(tree.join("tmp/resolv")).unwrap(),
        fs::read("/etc/resolv.conf").unwrap()
    );
    assert!(mounts_under(tmp.path()).is_empty());
}

#[test]
fn a_dangling_resolv_conf_symlink_is_restored() {
    let Some((_tmp, tree)) = busybox_tree() else {
        return;
    };
    let link = tree.join("etc/resolv.conf");
    std::os::unix::fs::symlink("/run/systemd/resolve/stub-resolv.conf", &link).unwrap();
    run_ok(&tree, "cat /etc/resolv.conf > /tmp/resolv");
    assert_eq!(
        fs::read(tree.join("tmp/resolv")).unwrap(),
        fs::read("/etc/resolv.conf").unwrap()
    );
    assert_eq!(
        fs::read_link(&link).unwrap(),
        Path::new("/run/systemd/resolve/stub-resolv.conf")
    );
    assert_eq!(fs::read_dir(tree.join("etc")).unwrap().count(), 1);
}

#[test]
fn what_a_step_writes_to_resolv_conf_is_the_images_own() {
    let Some((_tmp, tree)) = busybox_tree() else {
        return;
    };
    fs::write(tree.join("etc/resolv.conf"), "nameserver 192.0.2.1\n").unwrap();
    run_ok(&tree, "cat /etc/resolv.conf > /seen");
    // The host's file is what the step saw, and never stays.
    assert_eq!(
        fs::read(tree.join("seen")).unwrap(),
        fs::read("/etc/resolv.conf").unwrap()
    );
    assert_eq!(
        fs::read_to_string(tree.join("etc/resolv.conf")).unwrap(),
        "nameserver 192.0.2.1\n"
    );
    run_ok(&tree, "echo 'nameserver 192.0.2.53' > /etc/resolv.conf");
    assert_eq!(
        fs::read_to_string(tree.join("etc/resolv.conf")).unwrap(),
        "nameserver 192.0.2.53\n"
    );
}

#[test]
fn hosts_names_localhost_and_the_hostname_and_stays_out_of_the_tree() {
    let Some((_tmp, tree)) = busybox_tree() else {
        return;
    };
    let old = filetime::FileTime::from_unix_time(1_000_000, 0);
    filetime::set_file_times(tree.join("etc"), old, old).unwrap();
    run_ok(
        &tree,
        "cat /etc/hosts > /tmp/hosts; echo '192.0.2.1 extra' >> /etc/hosts",
    );
    let hosts = fs::read_to_string(tree.join("tmp/hosts")).unwrap();
    assert!(hosts.contains("127.0.0.1\tlocalhost\n"), "{hosts}");
    assert!(hosts.contains("\tgenoci\n"), "{hosts}");
    assert!(!tree.join("etc/hosts").exists());
    assert_eq!(
        scratch::mtime_ns(&tree.join("etc")).unwrap(),
        1_000_000_000_000_000
    );
    // The file bound as /etc/hosts was kept in /tmp for the run only.
    let names: Vec<_> = fs::read_dir(tree.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["hosts"]);
}

#[test]
fn network_none_has_only_loopback() {
    let Some((_tmp, tree)) = busybox_tree() else {
        return;
    };
    let mut o = opts(&tree, "cat /proc/net/dev > /netdev; ip link show lo > /lo");
    o.network = Network::None;
    assert!(run(&o).unwrap().success());
    let netdev = fs::read_to_string(tree.join("netdev")).unwrap();
    let interfaces: Vec<&str> = netdev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(interfaces, ["lo"]);
    assert!(fs::read_to_string(tree.join("lo")).unwrap().contains("UP"));
    assert!(!tree.join("etc/resolv.conf").exists());
}

#[test]
fn a_symlinked_dev_is_refused() {
    let Some((_tmp, tree)) = busybox_tree() else {
        return;
    };
    std::os::unix::fs::symlink("/dev", tree.join("dev")).unwrap();
    let err = run(&opts(&tree, "true")).unwrap_err();
    assert!(matches!(err, SandboxError::Prepare { .. }), "{err}");
    // Nothing added before the refusal stays.
    assert!(!tree.join("proc").exists());
}

#[test]
fn the_host_root_is_refused() {
    let err = run(&opts(Path::new("/"), "true")).unwrap_err();
    assert!(matches!(err, SandboxError::BadRoot { .. }), "{err}");
}

#[test]
fn inherit_mode_runs_on_genoci_s_own_streams() {
    let Some((_tmp, tree)) = busybox_tree() else {
        return;
    };
    let mut o = opts(&tree, "test -e /dev/stdin && touch /done");
    o.output = Output::Inherit;
    assert!(run(&o).unwrap().success());
    assert!(tree.join("done").exists());
}

#[test]
fn confined_runs_keep_docker_s_capabilities_and_privileged_ones_all() {
    let Some((_tmp, tree)) = busybox_tree() else {
        return;
    };
    let bounding = |privileged: bool| {
        let mut o = opts(&tree, "grep ^CapBnd /proc/self/status > /bnd");
        o.privileged = privileged;
        assert!(run(&o).unwrap().success());
        let line = fs::read_to_string(tree.join("bnd")).unwrap();
        u64::from_str_radix(line.trim_start_matches("CapBnd:").trim(), 16).unwrap()
    };
    assert_eq!(bounding(false), caps::default_mask());
    assert_ne!(bounding(true), caps::default_mask());
}

/// Set in the test binary re-run as [`seccomp_probe_entry`].
const SECCOMP_PROBE_VAR: &str = "GENOCI_TEST_SECCOMP_PROBE";

/// Under the filter, make harmless calls whose errno tells the filter's
/// answer from the kernel's (invalid arguments, missing paths), and print
/// `name errno` lines. Ignored, as `helper_entry`: it is only a probe run
/// by `the_seccomp_filter_refuses_what_docker_refuses`.
#[test]
#[ignore = "a probe run by the_seccomp_filter_refuses_what_docker_refuses"]
fn seccomp_probe_entry() {
    if std::env::var(SECCOMP_PROBE_VAR).is_err() {
        return;
    }
    seccomp::apply(false).unwrap();
    let errno = |ret: libc::c_long| {
        if ret < 0 {
            io::Error::last_os_error().raw_os_error().unwrap()
        } else {
            0
        }
    };
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let target = c"/proc/self/genoci-no-such-dir";
    // SAFETY: each call gets valid pointers or NULL where the kernel checks
    // arguments before using them; none has a lasting effect.
    let probes: Vec<(&str, i32)> = unsafe {
        vec![
            ("getpid", errno(libc::syscall(libc::SYS_getpid))),
            (
                "clock_settime",
                errno(libc::syscall(
                    libc::SYS_clock_settime,
                    libc::CLOCK_MONOTONIC,
                    &ts,
                )),
            ),
            (
                "unshare",
                errno(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER)),
            ),
            (
                "mount",
                errno(libc::syscall(
                    libc::SYS_mount,
                    c"none".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    0,
                )),
            ),
            (
                "init_module",
                errno(libc::syscall(libc::SYS_init_module, 0, 0, c"".as_ptr())),
            ),
            ("reboot", errno(libc::syscall(libc::SYS_reboot, 0, 0, 0, 0))),
            ("bpf", errno(libc::syscall(libc::SYS_bpf, 9999, 0, 0))),
            (
                "keyctl",
                errno(libc::syscall(libc::SYS_keyctl, 0, -3i32, 0)),
            ),
            ("clone3", errno(libc::syscall(libc::SYS_clone3, 0, 0))),
            (
                "personality",
                errno(libc::syscall(libc::SYS_personality, 0x0040000)),
            ),
            (
                "personality_query",
                errno(libc::syscall(libc::SYS_personality, 0xffff_ffffu32)),
            ),
            (
                "socket_vsock",
                errno(libc::syscall(libc::SYS_socket, 40, libc::SOCK_STREAM, 0)),
            ),
        ]
    };
    for (name, e) in probes {
        println!("{name} {e}");
    }
    std::process::exit(0);
}

#[test]
fn the_seccomp_filter_refuses_what_docker_refuses() {
    if !nix::unistd::geteuid().is_root() {
        crate::test_support::skip("loading a filter without no_new_privs needs root");
        return;
    }
    let out = std::process::Command::new("/proc/self/exe")
        .args([
            "sandbox::tests::seccomp_probe_entry",
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--quiet",
            "--test-threads=1",
        ])
        .env(SECCOMP_PROBE_VAR, "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let got: Vec<(String, i32)> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(n, e)| Some((n.to_string(), e.parse().ok()?)))
        .collect();
    let want: Vec<(String, i32)> = [
        ("getpid", 0),
        ("clock_settime", libc::EPERM),
        ("unshare", libc::EPERM),
        ("mount", libc::EPERM),
        ("init_module", libc::EPERM),
        ("reboot", libc::EPERM),
        ("bpf", libc::EPERM),
        ("keyctl", libc::EPERM),
        ("clone3", libc::ENOSYS),
        ("personality", libc::EPERM),
        ("personality_query", 0),
        ("socket_vsock", libc::EPERM),
    ]
    .iter()
    .map(|(n, e)| (n.to_string(), *e))
    .collect();
    assert_eq!(got, want, "{text}{}", String::from_utf8_lossy(&out.stderr));
}

/// Threads that keep the allocator and a lock busy until dropped, as
/// genoci's own threads (output forwarding, compression, the parallel
/// builder) may be while a step starts.
struct BusyThreads {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl BusyThreads {
    fn start(n: usize) -> BusyThreads {
        use std::sync::atomic::Ordering;
        use std::sync::{Arc, Mutex};
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(Vec::<String>::new()));
        let threads = (0..n)
            .map(|i| {
                let (stop, shared) = (stop.clone(), shared.clone());
                std::thread::spawn(move || {
                    let mut rounds = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let mut held = shared.lock().unwrap();
                        held.push(format!("{i}-{rounds}").repeat(16));
                        if held.len() > 64 {
                            held.clear();
                        }
                        drop(held);
                        let v: Vec<Box<[u8; 256]>> = (0..32).map(|_| Box::new([0; 256])).collect();
                        rounds += v.len() as u64 / 32;
                    }
                    rounds
                })
            })
            .collect();
        BusyThreads { stop, threads }
    }

    /// Stop them; how many rounds they made in all.
    fn finish(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().unwrap()).sum()
    }
}

#[test]
fn steps_start_and_end_under_a_parent_with_busy_threads() {
    let Some((_tmp, tree)) = busybox_tree() else {
        return;
    };
    const STEPS: usize = 60;
    let busy = BusyThreads::start(4);
    // The steps run in a thread of their own, so that a hang shows as a
    // timeout here rather than a test that never ends.
    let (done, finished) = std::sync::mpsc::channel();
    let runner_tree = tree.clone();
    std::thread::spawn(move || {
        for i in 0..STEPS {
            let mut o = opts(&runner_tree, &format!("echo {i} >> /steps"));
            // Both sandboxes: with a user namespace (and the mknod
            // supervisor) and without.
            if i % 2 == 1 {
                o.network = Network::None;
            }
            let status = run(&o).unwrap();
            assert!(status.success(), "step {i}: {status}");
        }
        done.send(()).unwrap();
    });
    let ended = finished.recv_timeout(Duration::from_secs(300));
    let rounds = busy.finish();
    ended.expect("a step hung or the steps failed");
    let ran: Vec<usize> = fs::read_to_string(tree.join("steps"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(ran, (0..STEPS).collect::<Vec<_>>());
    assert!(rounds > 0, "the threads were not busy");
    eprintln!("{STEPS} steps under 4 busy threads ({rounds} rounds of theirs)");
}

/// Detaches every mount below its path when dropped, even when a test
/// panics.
struct DetachBelow(PathBuf);

impl Drop for DetachBelow {
    fn drop(&mut self) {
        for m in mounts_under(&self.0).iter().rev() {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// An overlay store in `tmp` whose top snapshot is the busybox tree under
/// `layers - 1` layers of one directory each, and a work tree of it.
fn overlay_tree(
    tmp: &Path,
    busybox: &Path,
    layers: u32,
) -> (
    crate::driver::overlay::OverlayDriver,
    crate::driver::WorkTree,
) {
    use crate::driver::{ChainId, SnapshotDriver};
    use crate::fsutil::{copy_tree, CopyOptions};
    let store = tmp.join("store");
    let driver = crate::driver::overlay::OverlayDriver::open(&store).unwrap();
    let mut chain = ChainId::empty();
    for n in 0..layers {
        let tree = driver.checkout(&chain, "layer").unwrap();
        if n == 0 {
            for entry in fs::read_dir(busybox).unwrap() {
                let entry = entry.unwrap();
                let to = tree.path.join(entry.file_name());
                copy_tree(&entry.path(), &to, CopyOptions::default()).unwrap();
            }
        } else {
            fs::create_dir_all(tree.path.join(format!("layers/{n}"))).unwrap();
        }
        chain = chain.push(&format!("sha256:{:064x}", n));
        driver.checkin(tree, &chain).unwrap();
    }
    let tree = driver.checkout(&chain, "step").unwrap();
    (driver, tree)
}

#[test]
fn an_overlay_tree_runs_in_a_user_namespace_on_an_overlay_of_its_own() {
    use crate::driver::{SnapshotDriver, TreeOf};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Some((tmp, busybox)) = busybox_tree() else {
        return;
    };
    let _mounts = DetachBelow(tmp.path().canonicalize().unwrap());
    let (driver, tree) = overlay_tree(tmp.path(), &busybox, 1);
    let mounted = || mounts_under(&tree.path) == [tree.path.display().to_string()];

    let mut o = opts(
        &tree.path,
        "cat /proc/self/uid_map > /map; echo x > /f; chown 1000:1001 /f\n\
         mknod /n c 1 3; rm /bin/true; mv /root /root.old",
    );
    o.network = Network::None;
    o.tree = Some(TreeOf {
        driver: &driver,
        tree: &tree,
    });
    assert!(run(&o).unwrap().success());
    // The driver's mount is back and shows what the step wrote, with the
    // ids it used.
    assert!(mounted(), "{:?}", mounts_under(&tree.path));
    let map = fs::read_to_string(tree.path.join("map")).unwrap();
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", "1900000000", "65536"]
    );
    let f = fs::metadata(tree.path.join("f")).unwrap();
    assert_eq!((f.uid(), f.gid()), (1000, 1001));
    let n = fs::symlink_metadata(tree.path.join("n")).unwrap();
    assert!(n.file_type().is_char_device());
    assert_eq!((n.uid(), n.rdev()), (0, libc::makedev(1, 3)));
    assert!(!tree.path.join("bin/true").exists() && tree.path.join("bin/sh").exists());
    assert!(!tree.path.join("root").exists() && tree.path.join("root.old").is_dir());

    // A failed step: mounted again all the same, its writes kept.
    o.argv = vec!["/bin/sh".into(), "-c".into(), "echo y > /g; exit 3".into()];
    assert_eq!(run(&o).unwrap().code(), Some(3));
    assert!(mounted());
    assert!(tree.path.join("g").exists());
    let changes = driver.changes(&tree).unwrap();
    use crate::change::Change;
    for want in [Change::Write("g".into()), Change::Delete("bin/true".into())] {
        assert!(changes.contains(&want), "{want:?} in {changes:?}");
    }
    driver.discard(tree).unwrap();
}

#[test]
fn a_150_layer_overlay_tree_runs_in_a_user_namespace() {
    use crate::driver::{SnapshotDriver, TreeOf};
    let Some((tmp, busybox)) = busybox_tree() else {
        return;
    };
    let _mounts = DetachBelow(tmp.path().canonicalize().unwrap());
    let (driver, tree) = overlay_tree(tmp.path(), &busybox, 150);
    let mut o = opts(
        &tree.path,
        "ls /layers | wc -l > /count; cat /proc/self/uid_map > /map",
    );
    o.network = Network::None;
    o.tree = Some(TreeOf {
        driver: &driver,
        tree: &tree,
    });
    assert!(run(&o).unwrap().success());
    let count = fs::read_to_string(tree.path.join("count")).unwrap();
    assert_eq!(count.trim(), "149", "every layer shows");
    assert!(fs::read_to_string(tree.path.join("map"))
        .unwrap()
        .contains("1900000000"));
    driver.discard(tree).unwrap();
}

#[test]
fn an_overlay_tree_that_cannot_be_lent_keeps_host_ids() {
    use crate::driver::{SnapshotDriver, TreeOf};
    let Some((tmp, busybox)) = busybox_tree() else {
        return;
    };
    let _mounts = DetachBelow(tmp.path().canonicalize().unwrap());
    let (driver, tree) = overlay_tree(tmp.path(), &busybox, 1);
    // A file held open in the tree: its mount cannot be taken down.
    let open = fs::File::create(tree.path.join("held")).unwrap();
    let mut o = opts(&tree.path, "cat /proc/self/uid_map > /map");
    o.network = Network::None;
    o.tree = Some(TreeOf {
        driver: &driver,
        tree: &tree,
    });
    assert!(run(&o).unwrap().success());
    let map = fs::read_to_string(tree.path.join("map")).unwrap();
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "4294967295"],
        "host ids"
    );
    drop(open);
    driver.discard(tree).unwrap();
}
