//! Several genoci processes on one layout and store at once, on every
//! driver: builds of different specs run side by side and keep all their
//! tags; `ls` and `status` never wait for a build; a gc waits for the
//! builds (and says so), or fails at once with `--no-wait`; a checkout and
//! a checkin run beside a build.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::oci;
use crate::stores::{
    assert_layout_valid, driver_tests, tree_dir, work_entries, Btrfs, Overlay, Store,
};
use crate::util::{stderr, wait_within, Env};

/// What these tests do with a store beyond [`Store`]'s own.
trait Concurrent {
    fn spawn(&self, args: &[&str]) -> Child;
    fn assert_no_work_trees(&self);
}

impl Concurrent for Store {
    /// A genoci run in the background, its output kept.
    fn spawn(&self, args: &[&str]) -> Child {
        spawn_in(self, args)
    }

    /// No work tree (nor its record) is left in the store.
    fn assert_no_work_trees(&self) {
        let left = work_entries(&self.root());
        assert!(left.is_empty(), "work trees left: {left:?}");
    }
}

fn spawn_in(env: &Env, args: &[&str]) -> Child {
    env.cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start genoci")
}

driver_tests!(
    four_builds_started_together_all_succeed_and_keep_every_tag,
    ls_and_status_answer_at_once_while_a_build_runs,
    a_gc_during_a_build_waits_for_it_and_loses_nothing,
    a_gc_with_no_wait_during_a_build_fails_at_once,
    a_checkout_and_checkin_run_beside_a_build,
    builds_on_a_base_missing_from_the_store_all_materialise_it,
    a_build_started_while_a_gc_waits_waits_for_the_gc,
);

const ROUNDS: usize = 3;
const SPECS: usize = 4;

/// `SPECS` specs of four targets each, built `ROUNDS` times with all builds
/// started at once. Every spec's first target expands the same tarball, so
/// the processes also race to commit one ChainID and to write equal blobs;
/// and every round starts with the work tree of a killed build in the
/// store, which all of them find and may remove at once.
fn four_builds_started_together_all_succeed_and_keep_every_tag(store: &Store) {
    store.busybox("bb.tar.gz");
    for i in 0..SPECS {
        store.write(
            &format!("spec{i}.yaml"),
            &format!(
                "root{i}:\n  base: empty\n  expand: ./bb.tar.gz\n\
                 a{i}:\n  base: root{i}\n  run: echo a{i} > /who\n\
                 b{i}:\n  base: root{i}\n  run: echo b{i} > /who\n\
                 c{i}:\n  base: a{i}\n  run: echo c{i} > /more\n"
            ),
        );
    }
    let today = oci::today();
    for round in 1..=ROUNDS {
        let mut killed = start_slow_build(store);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(killed.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        killed.wait().unwrap();
        assert!(!work_entries(&store.root()).is_empty(), "no tree left");
        let builds: Vec<Child> = (0..SPECS)
            .map(|i| store.spawn(&["build", "--no-cache", &format!("spec{i}.yaml")]))
            .collect();
        for (i, build) in builds.into_iter().enumerate() {
            let out = wait_within(build, Duration::from_secs(300));
            assert!(
                out.status.success(),
                "round {round}, spec{i}: {}",
                stderr(&out)
            );
        }
        let tags = store.tags();
        for i in 0..SPECS {
            for target in ["root", "a", "b", "c"].map(|t| format!("{t}{i}")) {
                assert!(
                    tags.contains(&target),
                    "round {round}: no {target} in {tags:?}"
                );
                let dated: Vec<String> = (1..=round)
                    .map(|n| format!("{target}-{today}_{n}"))
                    .collect();
                let found: Vec<&String> = tags
                    .iter()
                    .filter(|t| t.starts_with(&format!("{target}-")))
                    .collect();
                assert_eq!(found, dated.iter().collect::<Vec<_>>(), "round {round}");
            }
        }
        // And `fast` with its dated tag, which the killed builds made (then found cached).
        assert_eq!(tags.len(), SPECS * 4 * (round + 1) + 2, "{tags:?}");
    }
    store.after_command(&["build"], None);
    assert_layout_valid(store);
    store.assert_no_work_trees();
}

fn ls_and_status_answer_at_once_while_a_build_runs(store: &Store) {
    let mut build = start_slow_build(store);
    for args in [&["ls"][..], &["status"], &["--no-wait", "status"]] {
        let started = Instant::now();
        let out = store.cmd(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{args:?} waited {:?}",
            started.elapsed()
        );
        assert!(!stderr(&out).contains("Blocking"), "{}", stderr(&out));
        if args == ["ls"] {
            let listed = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(listed.lines().any(|l| l == "fast"), "{listed}");
        }
    }
    assert!(build.try_wait().unwrap().is_none(), "the build is over");
    finish_slow_build(store, build);
}

fn a_gc_during_a_build_waits_for_it_and_loses_nothing(store: &Store) {
    let build = start_slow_build(store);
    let mut gc = store.spawn(&["gc"]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        gc.try_wait().unwrap().is_none(),
        "gc did not wait for the build"
    );
    finish_slow_build(store, build);
    let out = wait_within(gc, Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains(&format!(
            "Blocking waiting for file lock on the store {}",
            store.path().join(".genoci").display()
        )) && said.contains("gc waits for the other genoci commands"),
        "{said}"
    );
    // Both images and their snapshots are still whole.
    store.after_command(&["build"], None);
    let out = store.genoci(&["chroot", "slow", "cat", "/finished"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A gc waiting for a running build is not starved by builds started
/// after it: they wait for the gc, and say so.
fn a_build_started_while_a_gc_waits_waits_for_the_gc(store: &Store) {
    let build = start_slow_build(store);
    let mut gc = store.spawn(&["gc"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(gc.try_wait().unwrap().is_none(), "gc did not wait");
    store.write(
        "later.yaml",
        "later:\n  base: fast\n  run: echo later > /later\n",
    );
    let later = store.spawn(&["build", "later.yaml"]);
    let gc = wait_within(gc, Duration::from_secs(60));
    assert!(gc.status.success(), "{}", stderr(&gc));
    let later = wait_within(later, Duration::from_secs(120));
    assert!(later.status.success(), "{}", stderr(&later));
    finish_slow_build(store, build);
    assert!(
        stderr(&later).contains(&format!(
            "Blocking waiting for file lock on the store {}: a gc, setup or unsetup has it to itself",
            store.path().join(".genoci").display()
        )),
        "{}",
        stderr(&later)
    );
    assert!(store.tags().contains(&"later".to_string()));
    store.after_command(&["build"], None);
}

fn a_gc_with_no_wait_during_a_build_fails_at_once(store: &Store) {
    let build = start_slow_build(store);
    let started = Instant::now();
    let out = store.cmd(&["--no-wait", "gc"]).output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains(&format!(
            "the store {} is busy: gc waits for the other genoci commands",
            store.path().join(".genoci").display()
        )) && said.contains("--no-wait"),
        "{said}"
    );
    finish_slow_build(store, build);
}

fn a_checkout_and_checkin_run_beside_a_build(store: &Store) {
    let mut build = start_slow_build(store);
    let out = store.cmd(&["checkout", "fast"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let tree = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(tree.join("bin/busybox").exists(), "{}", tree.display());
    std::fs::write(tree.join("edited"), "yes\n").unwrap();
    let out = store.cmd(&["checkin", "edited"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(build.try_wait().unwrap().is_none(), "the build is over");
    finish_slow_build(store, build);
    assert!(store.tags().contains(&"edited".to_string()));
    let out = store.genoci(&["chroot", "edited", "cat", "/edited"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A base tagged in the layout but built on another store: every build
/// started at once materialises it in this store, and all succeed.
fn builds_on_a_base_missing_from_the_store_all_materialise_it(store: &Store) {
    store.busybox("bb.tar.gz");
    store.write(
        "base.yaml",
        "bb:\n  base: empty\n  expand: ./bb.tar.gz\n\
         tools:\n  base: bb\n  run: echo tools > /tools\n",
    );
    store.ok(&[
        "--driver",
        "plain",
        "--store",
        "./elsewhere",
        "build",
        "base.yaml",
    ]);
    for i in 0..SPECS {
        store.write(
            &format!("on{i}.yaml"),
            &format!("on{i}:\n  base: tools\n  run: echo {i} > /on\n"),
        );
    }
    let builds: Vec<Child> = (0..SPECS)
        .map(|i| store.spawn(&["build", &format!("on{i}.yaml")]))
        .collect();
    let mut materialised = 0;
    for (i, build) in builds.into_iter().enumerate() {
        let out = wait_within(build, Duration::from_secs(300));
        assert!(out.status.success(), "on{i}: {}", stderr(&out));
        materialised += usize::from(stderr(&out).contains("materialising layer 2 of 2"));
    }
    assert!(materialised >= 1, "no build materialised the base");
    store.after_command(&["build"], None);
    store.assert_no_work_trees();
    let tags = store.tags();
    for i in 0..SPECS {
        assert!(tags.contains(&format!("on{i}")), "{tags:?}");
    }
}

/// Start building `fast` (busybox) and `slow` on it, whose run step takes a
/// few seconds; return once that step has begun.
fn start_slow_build(store: &Store) -> Child {
    store.busybox("bb.tar.gz");
    store.write(
        "slow.yaml",
        "fast:\n  base: empty\n  expand: ./bb.tar.gz\n\
         slow:\n  base: fast\n  run: |\n    touch /started\n    sleep 4\n    touch /finished\n",
    );
    let mut build = store.spawn(&["build", "slow.yaml"]);
    let tree = tree_dir(&store.root(), &format!("build-{}-slow", build.id()));
    crate::util::wait_for_marker(&mut build, &tree, "started", Duration::from_secs(60));
    build
}

/// The slow build succeeds, with all its tags, and leaves a valid layout.
fn finish_slow_build(store: &Store, build: Child) {
    let out = wait_within(build, Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    let today = oci::today();
    let tags = store.tags();
    for tag in ["fast", "slow"] {
        assert!(tags.contains(&tag.to_string()), "{tags:?}");
        assert!(tags.contains(&format!("{tag}-{today}_1")), "{tags:?}");
    }
    assert_layout_valid(store);
    store.assert_no_work_trees_but_checkouts();
}

impl Store {
    /// Only a checkout kept between commands may stay in `work/`.
    fn assert_no_work_trees_but_checkouts(&self) {
        let left: Vec<String> = work_entries(&self.root())
            .into_iter()
            .filter(|n| !n.starts_with("checkout"))
            .collect();
        assert!(left.is_empty(), "work trees left: {left:?}");
    }
}

/// Overlay: `unpack` in several terminals at once mounts each tag's view
/// once, so that `unsetup` (or gc) can take every view away again.
#[test]
fn unpacks_at_once_mount_each_overlay_view_once() {
    crate::util::require_root!();
    let store = Overlay::new();
    store.busybox("bb.tar.gz");
    store.write(
        "spec.yaml",
        "bb:\n  base: empty\n  expand: ./bb.tar.gz\n\
         top:\n  base: bb\n  run: echo top > /top\n",
    );
    store.ok(&["spec.yaml"]);
    for round in 0..5 {
        let unpacks: Vec<Child> = (0..SPECS).map(|_| spawn_in(&store, &["unpack"])).collect();
        for unpack in unpacks {
            let out = wait_within(unpack, Duration::from_secs(60));
            assert!(out.status.success(), "{}", stderr(&out));
        }
        let views = store.root().join("views");
        let mounts = crate::util::mounts_under(&views);
        let mut distinct = mounts.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(mounts.len(), distinct.len(), "round {round}: {mounts:?}");
        let out = store.genoci(&["unsetup"]);
        assert!(out.status.success(), "round {round}: {}", stderr(&out));
        assert!(crate::util::mounts_under(&views).is_empty());
    }
}

/// btrfs: another project dir whose config names the same btrfs store (with
/// a storedir of its own) runs gc while a build runs here: the gc waits for
/// the build, saying so, and the build's tags and snapshots are all kept.
#[test]
fn a_gc_in_another_dir_sharing_the_btrfs_store_waits_for_its_builds() {
    crate::stores::require_btrfs!();
    let a = Store::Btrfs(Btrfs::new());
    let b = Env::new();
    b.write(
        "atom_config.yaml",
        &format!(
            "driver: btrfs\nlayoutdir: ./oci\nstoredir: ./.genoci\nlofile: {}\nbtrfsmount: {}\n",
            a.path().join("btrfs.img").display(),
            a.root().display()
        ),
    );
    let build = start_slow_build(&a);
    let mut gc = spawn_in(&b, &["gc"]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(gc.try_wait().unwrap().is_none(), "gc did not wait");
    finish_slow_build(&a, build);
    let out = wait_within(gc, Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "Blocking waiting for file lock on the btrfs store {}",
            a.root().display()
        )),
        "{}",
        stderr(&out)
    );
    let out = a.genoci(&["chroot", "slow", "cat", "/finished"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
