//! Actions on real distributions: `.deb`/`.rpm` installs (local and over
//! http), `apt-get` in `run`, host hooks that mount into the tree, `network:
//! none`, and `genoci chroot`.
//!
//! Importing the Debian fixture is the slow part, so one test builds one
//! spec with many targets on a single import and checks them all.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::network::interfaces;
use crate::util::{fixture, mounts_under, require_root, require_tool, run_ok, stderr, Env};

/// Lazily unmounts whatever is still mounted under a test dir, so a failed
/// test leaves no mounts and its temp dir is removed without reaching
/// through one. Declare it after the `Env`: it must drop first.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        for point in mounts_under(&self.0).iter().rev() {
            let _ = nix::mount::umount2(point.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A one-thread HTTP/1.0 server on a host address serving fixed paths; any other
/// path is a 404. Stopped and joined on drop.
struct HttpServer {
    ip: Ipv4Addr,
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Serving on an address of the host's that `network: host` steps reach
    /// (not a loopback one: a step's loopback is its own).
    fn start(files: HashMap<String, Vec<u8>>) -> HttpServer {
        let ip = crate::network::host_address().unwrap_or(Ipv4Addr::LOCALHOST);
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let _ = Self::answer(stream, &files);
                }
            }
        });
        HttpServer {
            ip,
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn answer(mut stream: TcpStream, files: &HashMap<String, Vec<u8>>) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut request = String::new();
        reader.read_line(&mut request)?;
        let mut header = String::new();
        while reader.read_line(&mut header)? > 2 {
            header.clear();
        }
        let path = request.split(' ').nth(1).unwrap_or("");
        let path = path.split('?').next().unwrap_or(path);
        let (status, body) = match files.get(path) {
            Some(body) => ("200 OK", body.as_slice()),
            None => ("404 Not Found", b"not here\n".as_slice()),
        };
        write!(
            stream,
            "HTTP/1.0 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        stream.write_all(body)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.ip, self.port)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect((self.ip, self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A noarch `.deb` holding `/usr/share/NAME/hi.txt`, built with dpkg-deb.
fn tiny_deb(dir: &Path, name: &str) -> PathBuf {
    let root = dir.join(format!("{name}-pkg"));
    fs::create_dir_all(root.join("DEBIAN")).unwrap();
    fs::create_dir_all(root.join(format!("usr/share/{name}"))).unwrap();
    fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: 1.0\nArchitecture: all\n\
             Maintainer: Test <test@example.org>\nDescription: a test package\n"
        ),
    )
    .unwrap();
    fs::write(root.join(format!("usr/share/{name}/hi.txt")), "deb\n").unwrap();
    let deb = dir.join(format!("{name}_1.0_all.deb"));
    run_ok(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "--build"])
            .arg(&root)
            .arg(&deb),
    );
    fs::remove_dir_all(root).unwrap();
    deb
}

/// A noarch `.rpm` with no dependencies holding `/usr/share/NAME/hi.txt`.
fn tiny_rpm(dir: &Path, name: &str) -> PathBuf {
    let top = dir.join("rpmbuild");
    let spec = dir.join(format!("{name}.spec"));
    fs::write(
        &spec,
        format!(
            "Name: {name}\nVersion: 1.0\nRelease: 1\nSummary: a test package\n\
             License: MIT\nBuildArch: noarch\n\
             %description\na test package\n\
             %install\nmkdir -p %{{buildroot}}/usr/share/{name}\n\
             echo rpm > %{{buildroot}}/usr/share/{name}/hi.txt\n\
             %files\n/usr/share/{name}/hi.txt\n"
        ),
    )
    .unwrap();
    run_ok(
        Command::new("rpmbuild")
            .arg("-bb")
            .arg("--define")
            .arg(format!("_topdir {}", top.display()))
            .arg(&spec),
    );
    let name = format!("{name}-1.0-1.noarch.rpm");
    let rpm = dir.join(&name);
    fs::rename(top.join("RPMS/noarch").join(&name), &rpm).unwrap();
    fs::remove_dir_all(top).unwrap();
    fs::remove_file(spec).unwrap();
    rpm
}

/// The paths in the top layer of `tag` (the one its target added), read
/// straight from the layout.
fn top_layer_entries(env: &Env, tag: &str) -> Vec<String> {
    let blob = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").unwrap();
        env.layout().join("blobs/sha256").join(hex)
    };
    let json = |path: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    };
    let index = json(env.layout().join("index.json"));
    let manifest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag}"));
    let manifest = json(blob(manifest["digest"].as_str().unwrap()));
    let layer = manifest["layers"].as_array().unwrap().last().unwrap();
    let mut gz = Vec::new();
    fs::File::open(blob(layer["digest"].as_str().unwrap()))
        .unwrap()
        .read_to_end(&mut gz)
        .unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz.as_slice()));
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path().unwrap().to_string_lossy().into_owned();
            path.trim_start_matches("./").to_string()
        })
        .collect()
}

/// What genoci itself may never leave in a layer: its copied-in packages and
/// scripts, what is under its and the hooks' mounts, the host's resolv.conf.
fn assert_no_genoci_traces(tag: &str, entries: &[String]) {
    for entry in entries {
        let name = entry.rsplit('/').next().unwrap_or(entry);
        // apt keeps the packages it downloaded: its own doing, not genoci's.
        let package = entry.ends_with(".rpm")
            || (entry.ends_with(".deb") && !entry.starts_with("var/cache/apt/archives/"));
        let under_a_mount = ["proc/", "dev/", "mnt/"]
            .iter()
            .any(|dir| entry.starts_with(dir));
        assert!(
            !name.starts_with(".genoci-")
                && !package
                && !under_a_mount
                && entry != "etc/resolv.conf",
            "{tag}: unexpected layer entry {entry}"
        );
    }
}

fn read(path: PathBuf) -> String {
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Unpack `tag` with umoci, run `check` on its rootfs, remove the bundle.
fn check_unpacked(env: &Env, tag: &str, check: impl FnOnce(&Path)) {
    let rootfs = env.unpack(tag);
    check(&rootfs);
    fs::remove_dir_all(rootfs.parent().unwrap()).unwrap();
}

fn work_trees_left(env: &Env) -> Vec<String> {
    match fs::read_dir(env.path().join(".genoci/work")) {
        Ok(dir) => dir
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    }
}

/// Build `spec`, expect it to fail, and check that nothing was tagged,
/// no work tree and no mount is left; returns stderr.
fn build_fails(env: &Env, spec: &str) -> String {
    let before = env.tags();
    let out = env.genoci(&["build", spec]);
    assert!(!out.status.success(), "{spec} should fail");
    assert_eq!(env.tags(), before, "{spec}: nothing may be tagged");
    assert!(
        work_trees_left(env).is_empty(),
        "{:?}",
        work_trees_left(env)
    );
    assert!(mounts_under(env.path()).is_empty(), "{spec}: mounts left");
    stderr(&out)
}

const DEBIAN_SPEC: &str = r##"debian:
  base: empty
  expand: debian.tar.gz
  network: none
  run: echo "# the tree's own" > /etc/resolv.conf
packages:
  base: debian
  install: ./tinydeb_1.0_all.deb tinyrpm-1.0-1.noarch.rpm
fetched:
  base: debian
  install:
    - URL/pool/urldeb_1.0_all.deb?token=1
apt:
  base: debian
  run:
    - apt-get update -qq -o Acquire::Languages=none && apt-get install -y -qq --no-install-recommends hello && rm -rf /var/lib/apt/lists/*
    - hello > /hello.out
    - cat /etc/resolv.conf > /resolv.seen
    - bash -c 'exec 3<>/dev/tcp/HOST/PORT; printf "GET /ping HTTP/1.0\r\n\r\n" >&3; cat <&3 > /ping.out'
    - cat /proc/net/dev > /netdev.seen
hooks:
  base: debian
  pre:
    - echo "$GENOCI_TARGET" > "$GENOCI_ROOTFS/hook.target"; pwd > "$GENOCI_ROOTFS/hook.cwd"
    - mount --bind hook-issue "$GENOCI_ROOTFS/etc/issue"
    - mount --bind /etc/resolv.conf "$GENOCI_ROOTFS/etc/resolv.conf"
    - mount --bind hostdir "$GENOCI_ROOTFS/mnt"
  run: cat /etc/issue > /issue.seen; ls /mnt > /mnt.seen
  post:
    - umount "$GENOCI_ROOTFS/etc/issue"
    - echo "$GENOCI_TARGET" > post.out
offline:
  base: debian
  network: none
  run: |
    cat /proc/net/dev > /netdev.seen
    if bash -c 'exec 3<>/dev/tcp/HOST/PORT' 2>/dev/null; then exit 1; fi
    touch /offline.ok
"##;

#[test]
fn packages_apt_hooks_and_network_on_debian() {
    require_root!();
    require_tool!("umoci");
    require_tool!("dpkg-deb");
    require_tool!("rpmbuild");
    let started = Instant::now();
    let env = Env::new();
    let _mounts = MountGuard(env.path().to_path_buf());
    fs::copy(fixture("debian"), env.path().join("debian.tar.gz")).unwrap();
    tiny_deb(env.path(), "tinydeb");
    tiny_rpm(env.path(), "tinyrpm");
    let packages = env.path().join("served");
    fs::create_dir(&packages).unwrap();
    let url_deb = fs::read(tiny_deb(&packages, "urldeb")).unwrap();
    let server = HttpServer::start(HashMap::from([
        ("/pool/urldeb_1.0_all.deb".to_string(), url_deb),
        ("/ping".to_string(), b"pong\n".to_vec()),
    ]));
    env.write("hook-issue", "issue from the host\n");
    env.write("hostdir/precious", "host file\n");
    let spec = DEBIAN_SPEC
        .replace("URL", &server.url(""))
        .replace("PORT", &server.port.to_string())
        .replace("HOST", &server.ip.to_string());
    env.write("debian.yaml", &spec);

    env.ok(&["build", "debian.yaml"]);
    eprintln!("built in {:.1}s", started.elapsed().as_secs_f64());
    let tags = env.tags();
    for target in ["debian", "packages", "fetched", "apt", "hooks", "offline"] {
        assert!(tags.contains(&target.to_string()), "{target}: {tags:?}");
    }
    assert!(
        work_trees_left(&env).is_empty(),
        "{:?}",
        work_trees_left(&env)
    );
    assert!(mounts_under(env.path()).is_empty());
    let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();

    // install: both managers ran, only what they wrote is in the layer.
    let layer = top_layer_entries(&env, "packages");
    assert_no_genoci_traces("packages", &layer);
    assert!(layer.contains(&"usr/share/tinydeb/hi.txt".to_string()));
    assert!(layer.contains(&"usr/share/tinyrpm/hi.txt".to_string()));
    assert!(!layer.iter().any(|e| e.starts_with("tmp/")), "{layer:?}");
    check_unpacked(&env, "packages", |root| {
        assert_eq!(read(root.join("usr/share/tinydeb/hi.txt")), "deb\n");
        assert_eq!(read(root.join("usr/share/tinyrpm/hi.txt")), "rpm\n");
        assert!(read(root.join("var/lib/dpkg/status")).contains("Package: tinydeb"));
        assert!(root.join("var/lib/dpkg/info/tinydeb.list").exists());
        // Debian's rpm keeps its database in ~/.rpmdb.
        assert!(root.join("root/.rpmdb/rpmdb.sqlite").exists());
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    });

    // install from a URL on the local server.
    let layer = top_layer_entries(&env, "fetched");
    assert_no_genoci_traces("fetched", &layer);
    check_unpacked(&env, "fetched", |root| {
        assert_eq!(read(root.join("usr/share/urldeb/hi.txt")), "deb\n");
        assert!(read(root.join("var/lib/dpkg/status")).contains("Package: urldeb"));
    });

    // apt-get over the host's network (through the step's own network
    // namespace), with the host's resolv.conf seen (a loopback nameserver
    // replaced by slirp4netns's forwarder) but not kept.
    let layer = top_layer_entries(&env, "apt");
    assert_no_genoci_traces("apt", &layer);
    assert!(layer.contains(&"usr/bin/hello".to_string()), "{layer:?}");
    check_unpacked(&env, "apt", |root| {
        assert_eq!(read(root.join("hello.out")), "Hello, world!\n");
        assert!(read(root.join("var/lib/dpkg/status")).contains("Package: hello"));
        let seen = read(root.join("resolv.seen"));
        for line in host_resolv.lines() {
            let server = line.strip_prefix("nameserver ").map(str::trim);
            match server.and_then(|s| s.parse::<Ipv4Addr>().ok()) {
                Some(ip) if ip.is_loopback() => {
                    assert!(!seen.contains(line), "{seen}");
                    assert!(seen.contains("nameserver 10.0.2.3\n"), "{seen}");
                }
                Some(_) => assert!(seen.contains(line), "{line} not in {seen}"),
                None => {}
            }
        }
        assert_eq!(interfaces(&read(root.join("netdev.seen"))), ["lo", "tap0"]);
        assert_eq!(read(root.join("etc/resolv.conf")), "# the tree's own\n");
        assert!(read(root.join("ping.out")).ends_with("\r\n\r\npong\n"));
    });

    // Hooks: env and cwd, mounts seen by the run, gone from the layer, the
    // host's files untouched.
    let layer = top_layer_entries(&env, "hooks");
    assert_no_genoci_traces("hooks", &layer);
    assert!(!layer.contains(&"etc/issue".to_string()), "{layer:?}");
    check_unpacked(&env, "hooks", |root| {
        assert_eq!(read(root.join("hook.target")), "hooks\n");
        assert_eq!(
            read(root.join("hook.cwd")).trim(),
            env.path().canonicalize().unwrap().to_str().unwrap()
        );
        assert_eq!(read(root.join("issue.seen")), "issue from the host\n");
        assert_eq!(read(root.join("mnt.seen")), "precious\n");
        assert_ne!(read(root.join("etc/issue")), "issue from the host\n");
        assert_eq!(fs::read_dir(root.join("mnt")).unwrap().count(), 0);
    });
    assert_eq!(read(env.path().join("post.out")), "hooks\n");
    assert_eq!(read(env.path().join("hostdir/precious")), "host file\n");

    // network: none has only a loopback and cannot reach the host.
    check_unpacked(&env, "offline", |root| {
        assert!(root.join("offline.ok").exists());
        assert_eq!(interfaces(&read(root.join("netdev.seen"))), ["lo"]);
    });

    // chroot on a tag: a throwaway tree, nothing tagged.
    let tags = env.tags();
    let out = env.ok(&[
        "chroot",
        "apt",
        "/bin/sh",
        "-c",
        "hello; cat /etc/debian_version",
    ]);
    assert!(out.starts_with("Hello, world!\n12."), "{out}");
    assert_eq!(env.tags(), tags);
    assert!(
        work_trees_left(&env).is_empty(),
        "{:?}",
        work_trees_left(&env)
    );

    // Failures, on the same base: nothing tagged, nothing left behind.
    fs::write(env.path().join("broken.deb"), "not a package\n").unwrap();
    env.write(
        "bad-deb.yaml",
        "broken:\n  base: debian\n  install: broken.deb\n",
    );
    let err = build_fails(&env, "bad-deb.yaml");
    assert!(
        err.contains("target broken") && err.contains("`dpkg -i` failed: exit status"),
        "{err}"
    );
    assert!(err.contains("dpkg-deb"), "the manager's message: {err}");

    let missing = server.url("/pool/missing_1.0_all.deb");
    env.write(
        "bad-url.yaml",
        &format!("unfetched:\n  base: debian\n  install: {missing}\n"),
    );
    let err = build_fails(&env, "bad-url.yaml");
    assert!(
        err.contains("target unfetched") && err.contains(&missing) && err.contains("404"),
        "{err}"
    );
    drop(server);
    eprintln!("all checked in {:.1}s", started.elapsed().as_secs_f64());
}

#[test]
fn failing_hooks_name_the_stage_and_leave_nothing() {
    require_root!();
    let env = Env::new();
    let _mounts = MountGuard(env.path().to_path_buf());
    env.busybox("busybox.tar.gz");
    env.write(
        "base.yaml",
        "bb:\n  base: empty\n  expand: busybox.tar.gz\n",
    );
    env.ok(&["build", "base.yaml"]);

    env.write(
        "pre.yaml",
        "early:\n  base: bb\n  pre: echo before; exit 4\n  run: touch /never\n",
    );
    let err = build_fails(&env, "pre.yaml");
    assert!(
        err.contains("target early")
            && err.contains("pre hook `echo before; exit 4` failed: exit status 4"),
        "{err}"
    );

    env.write(
        "post.yaml",
        "late:\n  base: bb\n  run: touch /made\n  post:\n    - \"true\"\n    - exit 4\n",
    );
    let err = build_fails(&env, "post.yaml");
    assert!(
        err.contains("target late") && err.contains("post hook `exit 4` failed: exit status 4"),
        "{err}"
    );
}

/// Regression: a hook's bind mount was released only after a successful
/// target, so discarding a failed tree deleted the host files under it
/// (and left the mount and the work tree behind).
#[test]
fn a_hook_mount_in_a_failed_target_does_not_cost_host_files() {
    require_root!();
    let env = Env::new();
    let _mounts = MountGuard(env.path().to_path_buf());
    env.busybox("busybox.tar.gz");
    env.write("hostdir/precious", "host file\n");
    env.write(
        "base.yaml",
        "bb:\n  base: empty\n  expand: busybox.tar.gz\n",
    );
    env.ok(&["build", "base.yaml"]);
    env.write(
        "spec.yaml",
        r#"mounted:
  base: bb
  pre: mkdir -p "$GENOCI_ROOTFS/mnt" && mount --bind hostdir "$GENOCI_ROOTFS/mnt"
  run: exit 3
"#,
    );
    let err = build_fails(&env, "spec.yaml");
    assert!(
        err.contains("run step 1 (`exit 3`) failed: exit status 3"),
        "{err}"
    );
    assert!(!err.contains("cleaning up"), "{err}");
    assert_eq!(read(env.path().join("hostdir/precious")), "host file\n");
}

#[test]
fn chroot_runs_in_a_throwaway_tree_or_the_checkout() {
    require_root!();
    let env = Env::new();
    let _mounts = MountGuard(env.path().to_path_buf());
    env.busybox("busybox.tar.gz");
    env.write(
        "spec.yaml",
        "bb:\n  base: empty\n  expand: busybox.tar.gz\n  env: [GREETING=hi]\n",
    );
    env.ok(&["build", "spec.yaml"]);
    let tags = env.tags();

    // On a tag: the image's env, changes thrown away, nothing tagged.
    let out = env.ok(&[
        "chroot",
        "bb",
        "/bin/sh",
        "-c",
        "echo $GREETING; touch /scribble",
    ]);
    assert_eq!(out, "hi\n");
    assert_eq!(env.tags(), tags);
    assert!(
        work_trees_left(&env).is_empty(),
        "{:?}",
        work_trees_left(&env)
    );
    // ls's own status and message, nothing added by genoci.
    let out = env.genoci(&["chroot", "bb", "/bin/ls", "/scribble"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/scribble"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("genoci"), "{}", stderr(&out));
    assert!(
        work_trees_left(&env).is_empty(),
        "{:?}",
        work_trees_left(&env)
    );

    // Without a tag (a command by absolute path), no checkout is an error.
    let out = env.genoci(&["chroot", "/bin/true"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no checkout in progress"),
        "{}",
        stderr(&out)
    );

    // On the checkout: changes stay in it until abort; nothing tagged.
    let tree = PathBuf::from(env.ok(&["checkout", "bb"]).trim());
    env.ok(&["chroot", "/bin/sh", "-c", "echo inside > /note"]);
    assert_eq!(read(tree.join("note")), "inside\n");
    env.ok(&["abort"]);
    assert!(!tree.exists());
    assert_eq!(env.tags(), tags);
    assert!(mounts_under(env.path()).is_empty());
}
