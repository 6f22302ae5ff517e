//! Actions as docker users expect them: `copy` through the image's directory
//! symlinks, no hang on a silent server or a backgrounding hook, `chroot`
//! exiting as its command did, errors that name the real cause, and the
//! step's view of `/etc/hosts`, `/etc/resolv.conf` and the terminal.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::util::{fixture, mounts_under, require_root, require_tool, stderr, Env};

/// An env with the busybox rootfs built as tag `bb`.
fn busybox_env() -> Env {
    let env = Env::new();
    env.busybox("busybox.tar.gz");
    env.write(
        "base.yaml",
        "bb:\n  base: empty\n  expand: busybox.tar.gz\n",
    );
    env.ok(&["build", "base.yaml"]);
    env
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Temp files genoci left in `dir` (its TMPDIR in these tests).
fn genoci_temp_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("genoci-"))
        .collect()
}

/// Issue: `copy: ./rootdir /` with `rootdir/bin/hello` on a Debian base
/// replaced the image's `/bin -> usr/bin` symlink by a real `bin/`, and the
/// image lost `/bin/sh`.
#[test]
fn copy_merges_through_the_images_bin_symlink() {
    require_root!();
    require_tool!("umoci");
    let env = Env::new();
    fs::copy(fixture("debian"), env.path().join("debian.tar.gz")).unwrap();
    let hello = env.write("rootdir/bin/hello", "#!/bin/sh\necho hello from bin\n");
    fs::set_permissions(&hello, fs::Permissions::from_mode(0o755)).unwrap();
    env.write(
        "copy.yaml",
        "debian:\n  base: empty\n  expand: debian.tar.gz\n\
         hello:\n  base: debian\n  copy: ./rootdir /\n  run: /bin/hello > /hello.out && test -x /bin/sh\n",
    );
    env.ok(&["build", "copy.yaml"]);
    let rootfs = env.unpack("hello");
    assert!(fs::symlink_metadata(rootfs.join("bin"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(rootfs.join("usr/bin/hello").is_file());
    assert!(rootfs.join("usr/bin/sh").exists());
    assert_eq!(
        fs::read_to_string(rootfs.join("hello.out")).unwrap(),
        "hello from bin\n"
    );
}

/// Issue: an `install` URL whose server accepts and never answers hung
/// forever, ignored SIGTERM and left a `/tmp/genoci-download-*` behind.
#[test]
fn a_download_from_a_silent_server_stops_on_sigterm_and_leaves_no_temp_file() {
    require_root!();
    let env = busybox_env();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted, connected) = mpsc::channel();
    // Accepts, then holds the connection without a word until the test ends.
    std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            let _ = accepted.send(());
            std::thread::sleep(Duration::from_secs(120));
            drop(stream);
        }
    });
    env.write(
        "fetch.yaml",
        &format!("fetch:\n  base: bb\n  install: http://127.0.0.1:{port}/pool/x_1.0_all.deb\n"),
    );
    let tmp = env.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let mut child = env
        .cmd(&["build", "fetch.yaml"])
        .env("TMPDIR", &tmp)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    connected
        .recv_timeout(Duration::from_secs(60))
        .expect("genoci connects");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !genoci_temp_files(&tmp).is_empty(),
        "the download is under way"
    );
    let sent = Instant::now();
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let status = wait_with_timeout(&mut child, Duration::from_secs(10));
    let waited = sent.elapsed();
    eprintln!("genoci ended {waited:?} after SIGTERM");
    let status = status.expect("genoci ends on SIGTERM during a download");
    assert_eq!(status.code(), Some(130));
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert!(
        genoci_temp_files(&tmp).is_empty(),
        "{:?}",
        genoci_temp_files(&tmp)
    );
    assert_eq!(
        env.tags().iter().filter(|t| t.starts_with("fetch")).count(),
        0
    );
}

/// Issue: a hook that backgrounds a process still holding its stdout
/// (`sleep 300 &`) held the build until that process ended.
#[test]
fn a_hook_is_done_when_its_shell_exits() {
    require_root!();
    let env = busybox_env();
    env.write(
        "hook.yaml",
        "hooked:\n  base: bb\n  pre: sleep 300 & echo $! > sleeper.pid\n  run: touch /ran\n",
    );
    let start = Instant::now();
    let mut child = env.cmd(&["build", "hook.yaml"]).spawn().unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(60));
    let took = start.elapsed();
    eprintln!("build with a backgrounding hook took {took:?}");
    assert!(status.expect("the build ends").success());
    let pid = fs::read_to_string(env.path().join("sleeper.pid")).unwrap();
    let stat = fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "left running: {stat}"
    );
}

/// Issue: `genoci chroot TAG CMD` always exited 1, `chroot nosuchtag` too,
/// and a signal read "exited with killed by signal 9".
#[test]
fn chroot_exits_as_its_command_did() {
    require_root!();
    let env = busybox_env();
    let code = |args: &[&str]| {
        let out = env.genoci(args);
        (out.status.code(), stderr(&out))
    };
    assert_eq!(code(&["chroot", "bb", "true"]).0, Some(0));
    let (exit, err) = code(&["chroot", "bb", "sh", "-c", "echo why >&2; exit 7"]);
    assert_eq!(exit, Some(7));
    assert_eq!(err, "why\n", "the command speaks for itself");
    let (exit, err) = code(&["chroot", "bb", "sh", "-c", "kill -9 $$"]);
    assert_eq!(exit, Some(128 + 9));
    assert!(err.contains("killed by signal 9 (SIGKILL)"), "{err}");
    assert!(!err.contains("exited with"), "{err}");
    let (exit, err) = code(&["chroot", "bb", "nosuchcommand"]);
    assert_eq!(exit, Some(127));
    assert!(err.contains("nosuchcommand does not exist"), "{err}");
    let (exit, err) = code(&["chroot", "nosuchtag", "true"]);
    assert_eq!(exit, Some(2));
    assert!(err.contains("nosuchtag"), "{err}");
    assert!(mounts_under(env.path()).is_empty());
}

/// Answer every request with `body` as `text/html`, until the test ends.
fn serve_html(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                line.clear();
            }
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// Issue: a missing shebang interpreter was reported as the script not
/// existing, a script with no shebang did not run, an install URL giving a
/// web page failed late and obscurely, and Ctrl-C said
/// "interrupted: interrupted".
#[test]
fn errors_name_the_real_cause() {
    require_root!();
    let env = busybox_env();
    env.write("setup.py", "#!/usr/bin/python3\nprint('hi')\n");
    env.write("py.yaml", "py:\n  base: bb\n  run: ./setup.py\n");
    let out = env.genoci(&["build", "py.yaml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("its interpreter /usr/bin/python3 does not exist in the image"),
        "{err}"
    );

    env.write("plain.sh", "echo no shebang > /plain.out\n");
    env.write("plain.yaml", "plain:\n  base: bb\n  run: ./plain.sh\n");
    env.ok(&["build", "plain.yaml"]);

    let port = serve_html("<html>please log in</html>");
    env.write(
        "page.yaml",
        &format!("page:\n  base: bb\n  install: http://127.0.0.1:{port}/hello_1.0_all.deb\n"),
    );
    let out = env.genoci(&["build", "page.yaml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains(
            "gave text/html starting `<html>please log in</html>`, not a .deb or .rpm package"
        ),
        "{err}"
    );

    env.write("slow.yaml", "slow:\n  base: bb\n  run: sleep 30\n");
    let child = env
        .cmd(&["build", "slow.yaml"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    let message = err.split("genoci: error: ").nth(1).unwrap_or_default();
    assert!(
        message.contains("target slow: not built, interrupted"),
        "{err}"
    );
    assert_eq!(message.matches("interrupted").count(), 1, "{err}");
}

/// Issue: steps had no `/etc/hosts`, could not write the image's own
/// `/etc/resolv.conf`, and `genoci chroot` gave no usable tty.
#[test]
fn a_steps_view_of_hosts_resolv_conf_and_the_terminal() {
    require_root!();
    require_tool!("umoci");
    require_tool!("script");
    let env = busybox_env();
    env.write(
        "etc.yaml",
        "etc:\n  base: bb\n  run:\n    - cat /etc/hosts > /hosts.seen\n    \
         - cat /etc/resolv.conf > /resolv.seen\n    \
         - echo 'nameserver 192.0.2.53' > /etc/resolv.conf\n",
    );
    env.ok(&["build", "etc.yaml"]);
    let rootfs = env.unpack("etc");
    let hosts = fs::read_to_string(rootfs.join("hosts.seen")).unwrap();
    assert!(hosts.contains("127.0.0.1\tlocalhost\n"), "{hosts}");
    assert!(hosts.contains("\tgenoci\n"), "{hosts}");
    assert!(
        !rootfs.join("etc/hosts").exists(),
        "/etc/hosts stays out of the layer"
    );
    assert_eq!(
        fs::read(rootfs.join("resolv.seen")).unwrap(),
        fs::read("/etc/resolv.conf").unwrap()
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/resolv.conf")).unwrap(),
        "nameserver 192.0.2.53\n"
    );

    // A terminal on stdin is one inside chroot too.
    let bin = env!("CARGO_BIN_EXE_genoci");
    let out = Command::new("script")
        .args(["-qec", &format!("{bin} chroot bb tty"), "/dev/null"])
        .current_dir(env.path())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert_eq!(text.trim(), "/dev/console");
}
