//! The overlay store: builds, the lpack commands and gc on real overlay
//! mounts; a deep chain of layers; nothing left mounted after a kill -9;
//! overlay as the default driver where it can be, plain where not; and
//! switching drivers on one layout.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::btrfs::SPEC;
use crate::stores::{
    assert_layout_valid, build_reproducibly, genoci_env, require_btrfs, strip_ansi, tag_digests,
    tree_dir, unpack_snapshots, work_entries, Btrfs, Overlay,
};
use crate::util::{mounts_under, require_root, require_tool, run_ok, stderr, Env};

const NO_DRIVER: &str = "layoutdir: ./oci\nstoredir: ./.genoci\n";

fn overlay_mounts(dir: &Path) -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_string_lossy().to_string();
    info.lines()
        .filter(|l| l.contains(" - overlay "))
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir))
        .map(str::to_string)
        .collect()
}

#[test]
fn builds_checkout_checkin_chroot_unpack_and_gc_work_on_overlay() {
    require_root!();
    require_tool!("umoci");
    let env = Overlay::new();
    env.busybox("busybox.tar.gz");
    env.write("spec.yaml", SPEC);
    env.ok(&["spec.yaml"]);
    assert_layout_valid(&env);
    // No work tree and no mount is left after the build.
    assert!(work_entries(&env.root()).is_empty());
    assert_eq!(overlay_mounts(env.path()), Vec::<String>::new());

    let tree = std::path::PathBuf::from(env.ok(&["checkout", "undone"]).trim());
    assert!(tree.starts_with(env.root()), "{}", tree.display());
    assert_eq!(overlay_mounts(env.path()), vec![tree.display().to_string()]);
    fs::write(tree.join("by-hand"), "x\n").unwrap();
    let out = env.ok(&["chroot", "/bin/cat", "/by-hand", "/opt/app/two"]);
    assert_eq!(out, "x\n2\n");
    env.ok(&["checkin", "handmade"]);
    assert_eq!(overlay_mounts(env.path()), Vec::<String>::new());
    let rootfs = env.unpack("handmade");
    assert!(rootfs.join("by-hand").exists() && !rootfs.join("etc/passwd").exists());

    let tree = std::path::PathBuf::from(env.ok(&["checkout", "handmade"]).trim());
    fs::write(tree.join("junk"), "x").unwrap();
    env.ok(&["abort"]);
    assert!(work_entries(&env.root()).is_empty());
    assert_eq!(overlay_mounts(env.path()), Vec::<String>::new());

    let out = env.ok(&["chroot", "edited", "cat", "/etc/motd"]);
    assert_eq!(out, "hello\n");
    // A directory of the base renamed in one layer stays renamed above it.
    let out = env.ok(&[
        "chroot",
        "configured",
        "sh",
        "-c",
        "test -d /srv && test ! -e /var && echo renamed",
    ]);
    assert_eq!(out, "renamed\n");
    assert!(work_entries(&env.root()).is_empty());

    // unpack: a read-only tree per tag that stays after the command.
    let views = unpack_snapshots(&env);
    let undone = &views["undone"];
    assert_eq!(
        fs::read_to_string(undone.join("opt/app/two")).unwrap(),
        "2\n"
    );
    assert!(!undone.join("usr/share").exists());
    assert!(fs::write(undone.join("new"), "x").is_err(), "read-only");

    // gc: a rebuilt target's old snapshot goes, with its view.
    env.write("t.yaml", "t:\n  base: bb\n  run: echo one > /v\n");
    env.ok(&["t.yaml"]);
    let old = unpack_snapshots(&env)["t"].clone();
    env.write("t.yaml", "t:\n  base: bb\n  run: echo two > /v\n");
    env.ok(&["t.yaml"]);
    env.ok(&["gc"]);
    assert!(!old.exists(), "gc kept {}", old.display());
    let after = unpack_snapshots(&env);
    assert_eq!(fs::read_to_string(after["t"].join("v")).unwrap(), "two\n");
    assert_eq!(
        fs::read_to_string(after["undone"].join("opt/app/two")).unwrap(),
        "2\n"
    );
    let out = env.ok(&["gc"]);
    assert!(out.contains("removed 0 snapshots"), "{out}");

    // unsetup takes the views away; the snapshots stay.
    assert!(!overlay_mounts(env.path()).is_empty());
    let out = env.ok(&["unsetup"]);
    assert!(out.contains("unmounted"), "{out}");
    assert_eq!(overlay_mounts(env.path()), Vec::<String>::new());
    assert!(env
        .root()
        .join("snapshots")
        .join(after["t"].file_name().unwrap())
        .is_dir());
    let out = env.ok(&["chroot", "undone", "cat", "/opt/app/two"]);
    assert_eq!(out, "2\n");
}

#[test]
fn overlay_changes_cost_the_change_not_the_tree() {
    require_root!();
    let env = Overlay::new();
    env.busybox("busybox.tar.gz");
    env.write(
        "spec.yaml",
        "bb:\n  base: empty\n  expand: ./busybox.tar.gz\n",
    );
    env.ok(&["spec.yaml"]);
    env.write(
        "one.yaml",
        "one:\n  base: bb\n  run: |\n    echo changed > /etc/motd\n    chmod 755 /bin\n",
    );
    let out = genoci_env(&env, &[("GENOCI_LOG", "debug")], &["one.yaml"]);
    assert!(out.status.success());
    let log = strip_ansi(&stderr(&out));
    let line = log
        .lines()
        .find(|l| l.contains("changes from the upper dir"))
        .unwrap_or_else(|| panic!("no upper-dir diff in the log:\n{log}"));
    let field = |name: &str| -> usize {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    // busybox has ~280 entries; the file, its directory, /bin copied up by a
    // chmod to its own mode and what the sandbox touches are all looked at.
    assert!(field("candidates") <= 10, "{line}");
    assert_eq!(field("changes"), 2, "{line}");
}

#[test]
fn a_150_layer_chain_builds_and_works() {
    require_root!();
    let env = Overlay::new();
    env.busybox("busybox.tar.gz");
    let mut spec = String::from("l0:\n  base: empty\n  expand: ./busybox.tar.gz\n");
    for n in 1..=150 {
        env.write(&format!("f{n}"), &format!("{n}\n"));
        spec.push_str(&format!(
            "l{n}:\n  base: l{}\n  copy: \"f{n} /layers/f{n}\"\n",
            n - 1
        ));
    }
    spec.push_str("top:\n  base: l150\n  run: rm /layers/f1 && ls /layers | wc -l > /count\n");
    env.write("spec.yaml", &spec);
    let started = Instant::now();
    env.ok(&["spec.yaml"]);
    eprintln!("152 targets built in {:?}", started.elapsed());
    assert_layout_valid(&env);
    assert_eq!(
        env.ok(&["chroot", "top", "cat", "/count", "/layers/f150"]),
        "149\n150\n"
    );
    // Over the limit of one mount(2) option string (a page).
    let tree = std::path::PathBuf::from(env.ok(&["checkout", "top"]).trim());
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.contains(&*tree.to_string_lossy()))
        .unwrap();
    assert!(line.matches("lowerdir+=").count() >= 152, "{line}");
    assert!(line.len() > 4096, "{}", line.len());
    env.ok(&["abort"]);
    // Materialising from the layout alone, in a fresh store.
    let fresh = env.path().join("fresh-store");
    let out = env.genoci(&[
        "--store",
        &fresh.to_string_lossy(),
        "chroot",
        "top",
        "cat",
        "/count",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "149\n");
}

#[test]
fn a_kill_9_leaves_mounts_the_next_command_removes() {
    require_root!();
    require_tool!("umoci");
    let env = Overlay::new();
    env.busybox("busybox.tar.gz");
    env.write(
        "base.yaml",
        "bb:\n  base: empty\n  expand: ./busybox.tar.gz\n",
    );
    env.write(
        "slow.yaml",
        "slow:\n  base: bb\n  run: |\n    touch /started\n    sleep 60\n",
    );
    env.ok(&["base.yaml"]);
    let mut child = env.cmd(&["build", "slow.yaml"]).spawn().unwrap();
    let tree = tree_dir(&env.root(), &format!("build-{}-slow", child.id()));
    crate::util::wait_for_marker(&mut child, &tree, "started", Duration::from_secs(30));
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    child.wait().unwrap();
    // Let the sandbox (killed with its parent) go.
    // The next command runs at least once: the tree may hold no mount of
    // the driver's (lent to the step's own overlay when it was killed).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = env.genoci(&["status"]);
        if out.status.success() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(overlay_mounts(env.path()), Vec::<String>::new());
    assert!(
        work_entries(&env.root()).is_empty(),
        "{:?}",
        work_entries(&env.root())
    );
    assert_eq!(mounts_under(env.path()), Vec::<String>::new());
    env.write("slow.yaml", "slow:\n  base: bb\n  run: touch /done\n");
    env.ok(&["slow.yaml"]);
    assert_layout_valid(&env);
}

#[test]
fn overlay_is_the_default_and_status_and_v_say_why() {
    require_root!();
    let env = Overlay::with_config(NO_DRIVER);
    let status = env.ok(&["status"]);
    assert!(
        status.contains("driver:    overlay (the default: the kernel and the filesystem of"),
        "{status}"
    );
    env.busybox("busybox.tar.gz");
    env.write(
        "spec.yaml",
        "bb:\n  base: empty\n  expand: ./busybox.tar.gz\n",
    );
    let out = env.genoci(&["-v", "spec.yaml"]);
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("snapshot driver: the default: the kernel and the filesystem"),
        "{}",
        stderr(&out)
    );
    assert!(env.root().join("snapshots").is_dir());
    assert!(!env.path().join(".genoci/snapshots").exists(), "not plain");

    // An explicit driver always wins, in the file or on the command line.
    let status = env.ok(&["--driver", "plain", "status"]);
    assert!(
        status.contains("driver:    plain (set by --driver"),
        "{status}"
    );
    env.write("atom_config.yaml", &format!("driver: plain\n{NO_DRIVER}"));
    let status = env.ok(&["status"]);
    assert!(
        status.contains("driver:    plain (set by --driver or in"),
        "{status}"
    );
    let status = env.ok(&["--driver", "overlay", "status"]);
    assert!(status.contains("driver:    overlay (set by"), "{status}");
}

/// An overlayfs cannot hold an upper dir: a store on one gets plain.
#[test]
fn the_default_is_plain_where_the_store_cannot_hold_overlays() {
    require_root!();
    let env = Overlay::with_config("layoutdir: ./oci\nstoredir: ./on-overlay/store\n");
    let dirs = ["l", "u", "w", "on-overlay"].map(|d| env.path().join(d));
    for d in &dirs {
        fs::create_dir(d).unwrap();
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        dirs[0].display(),
        dirs[1].display(),
        dirs[2].display()
    );
    run_ok(
        Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&dirs[3]),
    );
    let status = env.ok(&["status"]);
    assert!(
        status.contains(
            "driver:    plain (the default, as overlay cannot be used: an overlay mount in"
        ),
        "{status}"
    );
    env.busybox("busybox.tar.gz");
    env.write(
        "spec.yaml",
        "bb:\n  base: empty\n  expand: ./busybox.tar.gz\n",
    );
    env.ok(&["spec.yaml"]);
    assert!(dirs[3].join("store/snapshots").is_dir(), "a plain store");
    let probes = fs::read_dir(dirs[3].join("store/overlay"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("probe")
            })
            .count()
        })
        .unwrap_or(0);
    assert_eq!(probes, 0, "the probe's dirs are left");
    let out = env.genoci(&["--driver", "overlay", "status"]);
    assert!(out.status.success(), "the overlay store opens");
    let out = env.genoci(&["--driver", "overlay", "checkout", "bb"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("mount overlay at"),
        "{}",
        stderr(&out)
    );
}

/// Tags built on each driver are bases for the others, both ways, and the
/// images equal a build on plain alone.
#[test]
fn tags_built_on_one_driver_are_bases_on_the_others() {
    require_btrfs!();
    let plain = Env::new();
    plain.busybox("busybox.tar.gz");
    plain.write("spec.yaml", SPEC);
    build_reproducibly(&plain, &["build", "spec.yaml"]);
    let expected = tag_digests(&plain.layout());

    for order in [
        ["overlay", "btrfs", "plain", "overlay"],
        ["plain", "btrfs", "overlay", "plain"],
        ["btrfs", "overlay", "plain", "btrfs"],
    ] {
        let store = Btrfs::new();
        store.busybox("busybox.tar.gz");
        store.write("spec.yaml", SPEC);
        for (driver, target) in order.iter().zip(["bb", "edited", "undone", "configured"]) {
            build_reproducibly(
                &store,
                &["--driver", driver, "build", "spec.yaml", "--target", target],
            );
        }
        assert_eq!(tag_digests(&store.layout()), expected, "{order:?}");
        let out = store.ok(&[
            "--driver",
            order[1],
            "chroot",
            "configured",
            "cat",
            "/opt/app/two",
        ]);
        assert_eq!(out, "2\n");
        for m in mounts_under(&store.path().join(".genoci")).iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        store.finish();
    }
}
