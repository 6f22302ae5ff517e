//! The harness: each test gets a temp dir with its own config, layout and
//! store, and runs the built binary there with a clean environment.

// Shared helpers: each test file uses a part of them.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Env {
    pub dir: tempfile::TempDir,
    /// A plain store of its own into which every image built is
    /// materialised from its layers, to compare with the build's store.
    pub verify: tempfile::TempDir,
    /// Snapshots already compared: they never change once committed.
    pub verified: std::cell::RefCell<std::collections::HashSet<PathBuf>>,
}

/// Skip (with a notice) unless root: the sandbox and the store need it.
macro_rules! require_root {
    () => {
        if !$crate::util::nix_is_root() {
            $crate::util::skip("needs root (namespaces, mounts, owners)");
            return;
        }
    };
}
pub(crate) use require_root;

/// The one way a test skips: the reason printed, or, with
/// `GENOCI_TEST_STRICT=1` (as `scripts/test.sh` runs), a failure, so that CI
/// never reports green for a test that did not run.
pub fn skip(reason: &str) {
    if std::env::var("GENOCI_TEST_STRICT").is_ok_and(|v| v == "1") {
        panic!("GENOCI_TEST_STRICT=1 and this test cannot run: {reason}");
    }
    eprintln!("skipped: {reason}");
}

pub fn nix_is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Skip (with a notice) when a tool the test compares against is missing.
macro_rules! require_tool {
    ($tool:expr) => {
        if !$crate::util::have($tool) {
            $crate::util::skip(&format!("{} is not installed", $tool));
            return;
        }
    };
}
pub(crate) use require_tool;

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("genoci-test-")
            .tempdir()
            .expect("temp dir");
        let verify = tempfile::Builder::new()
            .prefix("genoci-verify-")
            .tempdir()
            .expect("temp dir");
        let env = Env {
            dir,
            verify,
            verified: Default::default(),
        };
        env.write(
            "atom_config.yaml",
            "driver: plain\nlayoutdir: ./oci\nstoredir: ./.genoci\n",
        );
        env
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn layout(&self) -> PathBuf {
        self.path().join("oci")
    }

    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        p
    }

    /// A command for the genoci binary, run in the test dir.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_genoci"));
        c.args(args)
            .current_dir(self.path())
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", self.path());
        c
    }

    pub fn genoci(&self, args: &[&str]) -> Output {
        let out = self.cmd(args).output().expect("run genoci");
        eprintln!(
            "$ genoci {}\n{}{}-> {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            out.status
        );
        self.after_command(args, None);
        out
    }

    /// After a command that made images (a build, a checkin): every tag's
    /// tree rebuilt from its layers alone equals the store's snapshot.
    pub fn after_command(&self, args: &[&str], epoch: Option<i64>) {
        let builds = args
            .iter()
            .any(|a| ["build", "checkin"].contains(a) || a.ends_with(".yaml"));
        if builds {
            crate::fidelity::assert_layers_rebuild_the_store(self, args, epoch);
        }
    }

    /// Run genoci and insist on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.genoci(args);
        assert!(out.status.success(), "genoci {args:?} failed");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Put the busybox rootfs fixture in the test dir as `name`.
    pub fn busybox(&self, name: &str) -> PathBuf {
        let src = fixture("busybox");
        let dst = self.path().join(name);
        fs::copy(src, &dst).unwrap();
        dst
    }

    pub fn tags(&self) -> Vec<String> {
        let out = self.ok(&["ls"]);
        out.lines().map(str::to_string).collect()
    }

    /// `umoci unpack` a tag into `dir/bundle-TAG` and return its rootfs.
    pub fn unpack(&self, tag: &str) -> PathBuf {
        let bundle = self.path().join(format!("bundle-{tag}"));
        run_ok(
            Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:{tag}", self.layout().display()))
                .arg(&bundle),
        );
        bundle.join("rootfs")
    }
}

/// Path of a cached fixture tarball (made by scripts/fixtures.sh).
pub fn fixture(which: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fixtures.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(which)
        .output()
        .expect("fixtures.sh");
    assert!(
        out.status.success(),
        "fixtures.sh {which}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

pub fn run_ok(c: &mut Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whatever is still mounted below a test's directories when it ends (the
/// work trees of a killed build, `unpack` views of the overlay store, the
/// default driver) is unmounted before they are removed, even when the test
/// failed.
impl Drop for Env {
    fn drop(&mut self) {
        for dir in [self.dir.path(), self.verify.path()] {
            unmount_all(&mounts_under(dir));
        }
    }
}

/// Lazily unmount `mounts`, the deepest (last mounted) first.
pub fn unmount_all(mounts: &[String]) {
    for mount in mounts.iter().rev() {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(mount)
            .status();
    }
}

/// The mounts below `dir` in this mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = dir.to_string_lossy().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Where a file `name` a run step writes at `/` shows from the host while
/// the step runs, in the work tree dir `tree` (see `stores::tree_dir`): the
/// tree itself (plain, btrfs), the overlay driver's mount at `root`, or,
/// while the overlay tree is lent to the step's own overlay (the user
/// namespace), its upper dir.
pub fn step_file_places(tree: &Path, name: &str) -> [PathBuf; 3] {
    [
        tree.join(name),
        tree.join("root").join(name),
        tree.join("upper").join(name),
    ]
}

/// Wait until the run step of `child` in the work tree dir `tree` wrote
/// `/name` (see [`step_file_places`]), at most `limit`; fail if the build
/// ends first.
pub fn wait_for_marker(
    child: &mut std::process::Child,
    tree: &Path,
    name: &str,
    limit: std::time::Duration,
) {
    let places = step_file_places(tree, name);
    let deadline = std::time::Instant::now() + limit;
    while !places.iter().any(|p| p.exists()) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the build ended before its run step: {status}");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run step never started in {}", tree.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Wait for `child`, at most `limit`; kill it and fail past that.
pub fn wait_within(child: std::process::Child, limit: std::time::Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    rx.recv_timeout(limit).unwrap_or_else(|_| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        panic!("genoci (pid {pid}) did not finish within {limit:?}")
    })
}

/// Every path below `root`, relative, parents before children.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    fn go(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        let mut names: Vec<_> = fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            let child = rel.join(name);
            out.push(child.clone());
            if fs::symlink_metadata(root.join(&child)).unwrap().is_dir() {
                go(root, &child, out);
            }
        }
    }
    let mut out = Vec::new();
    go(root, Path::new(""), &mut out);
    out
}
