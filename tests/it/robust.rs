//! Interrupted builds leave a valid layout, the next command removes their
//! work trees, and gc removes the snapshots no tag reaches.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::stores::{
    assert_layout_valid, driver_tests, tree_dir, unpack_snapshots, work_entries, Store,
};
use crate::util::{mounts_under, require_tool, Env};

const BASE: &str = "bb:\n  base: empty\n  expand: ./busybox.tar.gz\n";

/// A target whose run step marks that it started and then sleeps. With
/// `network: none` the step runs in a user namespace: on an overlay store,
/// on an overlay of its own, the tree's mount lent to it.
fn slow(network: &str) -> String {
    format!("slow:\n  base: bb\n  network: {network}\n  run: |\n    touch /started\n    sleep 60\n")
}

fn prepare(env: &Env, network: &str) {
    env.busybox("busybox.tar.gz");
    env.write("base.yaml", BASE);
    env.write("slow.yaml", &slow(network));
    env.ok(&["base.yaml"]);
}

/// Start a build of `slow.yaml` and wait until its run step has begun.
fn start_slow_build(env: &Env, store_root: &Path) -> Child {
    let mut child = env.cmd(&["build", "slow.yaml"]).spawn().expect("spawn");
    let tree = tree_dir(store_root, &format!("build-{}-slow", child.id()));
    crate::util::wait_for_marker(&mut child, &tree, "started", Duration::from_secs(30));
    child
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

/// No process of the killed build (genoci, its sandbox, the script) is
/// left: none has its root, cwd or environment in the test dir.
pub fn assert_no_sleepers(env: &Env) {
    let dir = env.path().display().to_string();
    let of_the_test = |pid: &Path| {
        ["root", "cwd"].iter().any(|link| {
            std::fs::read_link(pid.join(link)).is_ok_and(|target| target.starts_with(&dir))
        }) || std::fs::read(pid.join("environ"))
            .is_ok_and(|environ| String::from_utf8_lossy(&environ).contains(&dir))
    };
    for _ in 0..50 {
        let left: Vec<_> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| of_the_test(p))
            .collect();
        if left.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("processes of the killed build are still running");
}

/// After an interrupted build: a valid layout with only the base, a stale
/// work tree that the next command removes, and a build that then works.
fn check_after_interruption(env: &Env, store_root: &Path) {
    assert_layout_valid(env);
    assert!(!env.tags().iter().any(|t| t.starts_with("slow")));
    env.ok(&["status"]);
    assert!(
        work_entries(store_root).is_empty(),
        "stale work trees: {:?}",
        work_entries(store_root)
    );
    env.write("slow.yaml", "slow:\n  base: bb\n  run: touch /done\n");
    env.ok(&["slow.yaml"]);
    assert_layout_valid(env);
    assert!(env.tags().contains(&"slow".to_string()));
}

fn sigkill_during_run(env: &Env, store_root: &Path, network: &str) {
    prepare(env, network);
    let mut child = start_slow_build(env, store_root);
    signal(&child, libc::SIGKILL);
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert_no_sleepers(env);
    // The killed build could not clean up: its work tree is still there.
    assert!(!work_entries(store_root).is_empty());
    if network == "none" {
        // A lent overlay tree stays unmounted: the step's own overlay was
        // in the sandbox's mount namespace, gone with it.
        assert_eq!(mounts_under(&store_root.join("work")), Vec::<String>::new());
    }
    check_after_interruption(env, store_root);
}

fn sigint_during_run(env: &Env, store_root: &Path, network: &str) {
    prepare(env, network);
    let mut child = start_slow_build(env, store_root);
    let sent = Instant::now();
    signal(&child, libc::SIGINT);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(sent.elapsed() < Duration::from_secs(10), "slow to stop");
    assert_no_sleepers(env);
    // An interrupted build cleans up after itself.
    assert!(work_entries(store_root).is_empty());
    check_after_interruption(env, store_root);
}

/// When to kill a build in [`sigkill_at_any_point`].
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// As soon as the work tree of this target appears (mid-checkout).
    WorkTree(&'static str),
    /// After this fraction of an uninterrupted build's time.
    Fraction(f64),
}

/// SIGKILL at a spread of moments of a multi-target build: whatever it was
/// doing (checking out, expanding, diffing, writing a layer, tagging), the
/// layout stays valid and the next command removes what the build left.
fn sigkill_at_any_point(env: &Env, store_root: &Path) {
    env.busybox("busybox.tar.gz");
    env.write("spec.yaml", crate::btrfs::SPEC);
    let build = ["build", "--no-cache", "spec.yaml"];
    let start = Instant::now();
    env.ok(&build);
    let whole = start.elapsed();
    let moments = [
        Moment::WorkTree("bb"),
        Moment::WorkTree("edited"),
        Moment::WorkTree("undone"),
        Moment::WorkTree("configured"),
        Moment::Fraction(0.3),
        Moment::Fraction(0.8),
        Moment::Fraction(0.9),
        Moment::Fraction(0.97),
    ];
    let mut left_behind = 0;
    for moment in moments {
        let mut child = env.cmd(&build).spawn().expect("spawn");
        // A build that ends before the moment comes is reaped by try_wait:
        // its pid may then be anyone's, so it must not be signalled.
        let mut reaped = false;
        match moment {
            Moment::WorkTree(target) => {
                let tree = tree_dir(store_root, &format!("build-{}-{target}", child.id()));
                let deadline = Instant::now() + whole * 4;
                while !tree.exists() && Instant::now() < deadline {
                    if child.try_wait().unwrap().is_some() {
                        reaped = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Moment::Fraction(f) => std::thread::sleep(whole.mul_f64(f)),
        }
        if !reaped {
            signal(&child, libc::SIGKILL);
        }
        // After a successful try_wait this returns the status already reaped.
        child.wait().unwrap();
        assert_layout_valid(env);
        left_behind += usize::from(!work_entries(store_root).is_empty());
        env.ok(&["status"]);
        assert!(
            work_entries(store_root).is_empty(),
            "after a kill at {moment:?}: {:?}",
            work_entries(store_root)
        );
    }
    assert!(
        left_behind >= 2,
        "only {left_behind} kills landed inside a target"
    );
    env.ok(&build);
    assert_layout_valid(env);
    env.ok(&["gc"]);
    assert_layout_valid(env);
}

/// Rebuild a target so its old tree is unreachable once gc drops the older
/// dated tag; gc removes that snapshot and keeps every tagged one.
fn gc_removes_unreachable_snapshots(env: &Env) {
    prepare(env, "host");
    env.write("t.yaml", "t:\n  base: bb\n  run: echo one > /v\n");
    env.ok(&["t.yaml"]);
    let old = unpack_snapshots(env)["t"].clone();
    env.write("t.yaml", "t:\n  base: bb\n  run: echo two > /v\n");
    env.ok(&["t.yaml"]);
    let before = unpack_snapshots(env);
    assert!(old.exists() && before["t"] != old);

    env.ok(&["gc"]);
    assert!(!old.exists(), "gc kept {}", old.display());
    let after = unpack_snapshots(env);
    for (tag, path) in &after {
        assert!(path.exists(), "{tag}: {}", path.display());
    }
    assert_eq!(after["t"], before["t"]);
    assert_layout_valid(env);
    let out = env.ok(&["gc"]);
    assert!(out.contains("removed 0 snapshots"), "{out}");
}

fn sigkill_during_a_run_leaves_a_valid_layout(store: &Store) {
    require_tool!("umoci");
    sigkill_during_run(store, &store.root(), "host");
    store.ok(&["gc"]);
    store.assert_nothing_leaked();
}

fn sigkill_during_a_userns_run_leaves_no_mount(store: &Store) {
    require_tool!("umoci");
    sigkill_during_run(store, &store.root(), "none");
    store.assert_nothing_leaked();
}

fn sigint_during_a_run_exits_130_and_cleans_up(store: &Store) {
    require_tool!("umoci");
    sigint_during_run(store, &store.root(), "host");
    store.assert_nothing_leaked();
}

fn sigint_during_a_userns_run_exits_130_and_cleans_up(store: &Store) {
    require_tool!("umoci");
    sigint_during_run(store, &store.root(), "none");
    store.assert_nothing_leaked();
}

fn sigkill_at_any_point_of_a_build(store: &Store) {
    require_tool!("umoci");
    sigkill_at_any_point(store, &store.root());
    store.assert_nothing_leaked();
}

fn gc_removes_snapshots_no_tag_reaches(store: &Store) {
    require_tool!("umoci");
    gc_removes_unreachable_snapshots(store);
    store.assert_nothing_leaked();
}

driver_tests!(
    sigkill_during_a_run_leaves_a_valid_layout,
    sigkill_during_a_userns_run_leaves_no_mount,
    sigint_during_a_run_exits_130_and_cleans_up,
    sigint_during_a_userns_run_exits_130_and_cleans_up,
    sigkill_at_any_point_of_a_build,
    gc_removes_snapshots_no_tag_reaches,
);
