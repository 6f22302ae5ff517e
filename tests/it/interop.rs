//! The layouts genoci writes, read by the tools people use on them: umoci,
//! skopeo, oci-image-tool and podman; and images skopeo puts in a layout
//! used as bases.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::oci::{self, find, single_tag_layout, top_entries};
use crate::util::{mounts_under, require_root, require_tool, run_ok, Env};

const SPEC: &str = r#"base:
  base: empty
  expand: ./bb.tar.gz
app:
  base: base
  copy: ./app.conf /etc/app.conf
  run: |
    rm -rf /usr/sbin
    mkdir -p /srv/app
  entrypoint: ["/bin/echo", "hello from app"]
  env: {APP: "1"}
  workdir: /srv/app
  labels: {org.example.name: app}
  ports: [8080]
  volumes: [/data]
  annotations: {org.example.note: built}
cfg:
  base: app
  cmd: ["and more"]
"#;

/// Every check the tools offer, on one tag of `env`'s layout.
fn check_with_every_tool(env: &Env, tag: &str) {
    let layout = env.layout();
    let image = format!("{}:{tag}", layout.display());
    let ls = run_ok(Command::new("umoci").args(["ls", "--layout"]).arg(&layout));
    assert!(ls.lines().any(|l| l == tag), "{ls}");
    let stat = run_ok(Command::new("umoci").args(["stat", "--image", &image]));
    // A dated tag is an image of the target named before the date.
    let target = tag.split('-').next().unwrap();
    assert!(stat.contains(&format!("genoci build {target}")), "{stat}");
    let rootfs = env.unpack(tag);
    assert!(rootfs.join("bin/busybox").exists());

    let inspect = run_ok(Command::new("skopeo").args(["inspect", &format!("oci:{image}")]));
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(
        inspect["Layers"].as_array().unwrap().len(),
        oci::layers(&layout, tag).len()
    );
    let archive = env.path().join(format!("{tag}.docker.tar"));
    run_ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci:{image}"),
        &format!("docker-archive:{}:{tag}:latest", archive.display()),
    ]));
    assert!(fs::metadata(&archive).unwrap().len() > 0);

    let only = single_tag_layout(&layout, tag, env.path());
    run_ok(
        Command::new("oci-image-tool")
            .args(["validate", "--type", "image", "--ref"])
            .arg(format!("name={tag}"))
            .arg(&only),
    );
}

#[test]
fn every_built_image_passes_umoci_skopeo_and_oci_image_tool() {
    require_root!();
    for tool in ["umoci", "skopeo", "oci-image-tool"] {
        require_tool!(tool);
    }
    let env = Env::new();
    env.busybox("bb.tar.gz");
    env.write("app.conf", "x = 1\n");
    env.write("spec.yaml", SPEC);
    env.ok(&["build", "spec.yaml"]);
    for tag in env.tags() {
        check_with_every_tool(&env, &tag);
    }
    // What umoci makes of the config keys.
    let stat = run_ok(
        Command::new("umoci")
            .args(["stat", "--json", "--image"])
            .arg(format!("{}:cfg", env.layout().display())),
    );
    assert!(stat.contains("genoci build cfg"), "{stat}");
    let rootfs = env.path().join("bundle-app/rootfs");
    assert!(
        !rootfs.join("usr/sbin").exists(),
        "the whiteout hides /usr/sbin"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/app.conf")).unwrap(),
        "x = 1\n"
    );
    let config: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(env.path().join("bundle-cfg/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        config["process"]["args"],
        serde_json::json!(["/bin/echo", "hello from app", "and more"])
    );
    assert_eq!(config["process"]["cwd"], "/srv/app");
}

/// Podman with storage of its own, released on drop. Its directory name is
/// all lowercase: podman makes an image name of an `oci:` path, and names
/// must be lowercase, so layouts are handed to it through a link in here.
pub(crate) struct Podman {
    dir: PathBuf,
}

impl Podman {
    pub(crate) fn new() -> Podman {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "genoci-podman-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir(&dir).unwrap();
        Podman { dir }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"]);
        c
    }

    /// `podman run` an image of `layout`; its stdout.
    pub(crate) fn run(&self, layout: &Path, tag: &str) -> String {
        let link = self.dir.join("layout");
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).unwrap();
        }
        std::os::unix::fs::symlink(layout, &link).unwrap();
        run_ok(self.cmd().args([
            "run",
            "--rm",
            "--runtime",
            "runc",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            &format!("oci:{}:{tag}", link.display()),
        ]))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rm", "--all", "--force"]).output();
        let _ = self.cmd().args(["rmi", "--all", "--force"]).output();
        for m in mounts_under(&self.dir).iter().rev() {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn an_image_with_an_entrypoint_runs_under_podman() {
    require_root!();
    require_tool!("podman");
    require_tool!("runc");
    let env = Env::new();
    env.busybox("bb.tar.gz");
    env.write(
        "spec.yaml",
        r#"cirros:
  base: empty
  expand: ./bb.tar.gz
modified:
  base: cirros
  run: |
    echo "Hello, world" > /hw
  entrypoint: /bin/echo "hello world"
app:
  base: modified
  env: {GREETING: "hi there"}
  workdir: /tmp
  entrypoint: ["/bin/sh", "-c", "echo \"$GREETING from $(pwd)\"; cat /hw"]
"#,
    );
    env.ok(&["build", "spec.yaml"]);
    let podman = Podman::new();
    assert_eq!(podman.run(&env.layout(), "modified"), "hello world\n");
    assert_eq!(
        podman.run(&env.layout(), "app"),
        "hi there from /tmp\nHello, world\n"
    );
    drop(podman);
}

/// `skopeo copy` between transports.
fn skopeo_copy(from: &str, to: &str, extra: &[&str]) {
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--quiet"])
            .args(extra)
            .args([from, to]),
    );
}

#[test]
fn images_skopeo_puts_in_a_layout_are_usable_as_bases() {
    require_root!();
    require_tool!("skopeo");
    require_tool!("umoci");
    let origin = Env::new();
    origin.busybox("bb.tar.gz");
    origin.write(
        "spec.yaml",
        "base:\n  base: empty\n  expand: ./bb.tar.gz\nmid:\n  base: base\n  run: rm /bin/vi && echo mid > /mid\n",
    );
    origin.ok(&["build", "spec.yaml"]);
    let src = format!("oci:{}:mid", origin.layout().display());
    let archive: PathBuf = origin.path().join("mid.docker.tar");
    skopeo_copy(
        &src,
        &format!("docker-archive:{}:mid:latest", archive.display()),
        &[],
    );

    // A fresh layout and store: each base is rebuilt from its layers.
    let env = Env::new();
    let layout = env.layout().display().to_string();
    skopeo_copy(&src, &format!("oci:{layout}:as-is"), &[]);
    skopeo_copy(
        &src,
        &format!("oci:{layout}:zstd"),
        &["--dest-compress", "--dest-compress-format", "zstd"],
    );
    skopeo_copy(
        &format!("docker-archive:{}", archive.display()),
        &format!("oci:{layout}:from-docker"),
        &[],
    );
    let mut spec = String::new();
    for base in ["as-is", "zstd", "from-docker"] {
        spec.push_str(&format!(
            "on-{base}:\n  base: {base}\n  run: test -f /mid && test ! -e /bin/vi && echo {base} > /top\n"
        ));
    }
    env.write("spec.yaml", &spec);
    env.ok(&["build", "spec.yaml"]);
    for base in ["as-is", "zstd", "from-docker"] {
        let tag = format!("on-{base}");
        assert_eq!(oci::layers(&env.layout(), &tag).len(), 3, "{tag}");
        assert_eq!(
            find(&top_entries(&env, &tag), "top").data,
            format!("{base}\n").as_bytes()
        );
        run_ok(
            Command::new("umoci")
                .args(["stat", "--image"])
                .arg(format!("{layout}:{tag}")),
        );
    }
    let rootfs = env.unpack("on-from-docker");
    assert_eq!(
        fs::read_to_string(rootfs.join("top")).unwrap(),
        "from-docker\n"
    );
    assert!(!rootfs.join("bin/vi").exists());
}
