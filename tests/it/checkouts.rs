//! Checkouts and work trees have owners: a checkout's record lives with its
//! tree, gc keeps what an open checkout needs, and directories sharing one
//! store never touch each other's trees.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::stores::{
    driver_tests, require_btrfs, tree_dir, work_entries, work_tree_names, Btrfs, Driver, Store,
};
use crate::util::{require_tool, stderr, Env};

/// Two one-file images, `t` and `u`.
fn build_two(env: &Env) {
    env.write("t.txt", "t\n");
    env.write("u.txt", "u\n");
    env.write(
        "spec.yaml",
        "t:\n  base: empty\n  copy: ./t.txt /t\nu:\n  base: empty\n  copy: ./u.txt /u\n",
    );
    env.ok(&["build", "spec.yaml"]);
}

fn checkout(env: &Env, args: &[&str]) -> PathBuf {
    let out = env.ok(args);
    let path = PathBuf::from(out.trim());
    assert!(path.is_dir(), "checkout printed {out:?}");
    path
}

fn names(rootfs: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(rootfs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Bug: with a plain checkout of `t` open, a btrfs checkout of `u` replaced
/// the one record both shared, so the plain checkin committed on top of `u`
/// and the btrfs checkin then had no record at all.
#[test]
fn a_checkout_on_another_driver_never_changes_what_the_first_commits() {
    require_btrfs!();
    require_tool!("umoci");
    let store = Btrfs::new();
    build_two(&store);
    let plain = checkout(&store, &["--driver", "plain", "checkout", "t"]);
    fs::write(plain.join("p"), "by hand\n").unwrap();
    let btrfs = checkout(&store, &["checkout", "u"]);
    fs::write(btrfs.join("b"), "by hand\n").unwrap();
    assert!(store
        .ok(&["--driver", "plain", "status"])
        .contains("checkout:  t at"));
    assert!(store.ok(&["status"]).contains("checkout:  u at"));

    store.ok(&["--driver", "plain", "checkin", "from-plain"]);
    store.ok(&["checkin", "from-btrfs"]);
    assert_eq!(names(&store.unpack("from-plain")), ["p", "t"]);
    assert_eq!(names(&store.unpack("from-btrfs")), ["b", "u"]);
    store.finish();
}

/// Bug: a checkin without a tag picked the next `YYYY-MM-DD_vN` before
/// committing and tagged after, so two checkins at once (two drivers'
/// checkouts of one layout) took the same name and one image was lost.
#[test]
fn two_checkins_at_once_pick_different_dated_tags() {
    require_btrfs!();
    let store = Btrfs::new();
    build_two(&store);
    for round in 0..3 {
        let plain = checkout(&store, &["--driver", "plain", "checkout", "t"]);
        let btrfs = checkout(&store, &["checkout", "u"]);
        for (tree, name) in [(&plain, "p"), (&btrfs, "b")] {
            for i in 0..200 {
                fs::write(tree.join(format!("{name}{i}")), format!("{round} {i}\n")).unwrap();
            }
        }
        let children = [
            store
                .cmd(&["--driver", "plain", "checkin"])
                .spawn()
                .unwrap(),
            store.cmd(&["checkin"]).spawn().unwrap(),
        ];
        for child in children {
            assert!(child.wait_with_output().unwrap().status.success());
        }
        let dated: Vec<String> = store
            .tags()
            .into_iter()
            .filter(|t| t.contains("_v"))
            .collect();
        assert_eq!(dated.len(), 2 * (round + 1), "dated tags: {dated:?}");
    }
    store.finish();
}

/// Check out `t`, rebuild it so its tag moves and the checked-out image is
/// reached only by an older dated tag, and gc: the checkout still checks in.
/// Bug: the checked-out image's blobs went with gc, and checkin said it
/// was "no longer tagged": only abort was left.
fn gc_keeps_an_open_checkout(store: &Store) {
    require_tool!("umoci");
    let env: &Env = store;
    build_two(env);
    let tree = checkout(env, &["checkout", "t"]);
    fs::write(tree.join("edit"), "by hand\n").unwrap();
    env.write("t.txt", "t, rebuilt\n");
    env.ok(&["build", "spec.yaml"]);
    env.ok(&["gc"]);
    assert!(
        env.tags().iter().filter(|t| t.starts_with("t-")).count() == 1,
        "gc pruned the older dated tag: {:?}",
        env.tags()
    );
    env.ok(&["checkin", "edited"]);
    let rootfs = env.unpack("edited");
    assert_eq!(names(&rootfs), ["edit", "t"]);
    assert_eq!(fs::read_to_string(rootfs.join("t")).unwrap(), "t\n");
    // What the checkin made is whole for anyone reading it again.
    env.ok(&["gc"]);
    fs::remove_dir_all(env.path().join("bundle-edited")).unwrap();
    env.unpack("edited");
}

driver_tests!(gc_keeps_an_open_checkout);

/// A second project directory whose config names `first`'s store.
fn sharing(first: &Store) -> Env {
    let second = Env::new();
    second.write("atom_config.yaml", &first.sharing_config());
    build_two(&second);
    second
}

/// Neither directory's `abort`, `status`, `gc` or `checkout` touches the
/// other's checkout, and unsetup refuses while either is open.
fn checkouts_of_two_layouts_in_one_store(a: &Env, b: &Env, store_root: &Path) {
    let tree_a = checkout(a, &["checkout", "t"]);
    fs::write(tree_a.join("from-a"), "a\n").unwrap();
    assert!(b.ok(&["status"]).contains("checkout:  none"));
    let out = b.genoci(&["abort"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no checkout in progress"));
    assert!(
        tree_a.join("from-a").exists(),
        "B's abort discarded A's checkout"
    );
    b.ok(&["gc"]);
    let tree_b = checkout(b, &["checkout", "u"]);
    assert_ne!(tree_a, tree_b);
    fs::write(tree_b.join("from-b"), "b\n").unwrap();
    b.ok(&["checkin", "mine"]);
    assert!(tree_a.join("from-a").exists());
    assert_eq!(work_entries(store_root).len(), 2, "A's tree and its record");
    a.ok(&["checkin", "mine"]);
    assert!(work_entries(store_root).is_empty());
    assert_eq!(names(&a.unpack("mine")), ["from-a", "t"]);
    assert_eq!(names(&b.unpack("mine")), ["from-b", "u"]);
}

/// Bug: directory B's `abort` discarded directory A's checkout.
fn two_layouts_on_one_store_keep_their_own_checkouts(a: &Store) {
    require_tool!("umoci");
    build_two(a);
    let b = sharing(a);
    if a.driver() == Driver::Btrfs {
        let tree = checkout(a, &["checkout", "t"]);
        let out = b.genoci(&["unsetup"]);
        assert_eq!(out.status.code(), Some(1), "unsetup under A's checkout");
        a.ok(&["abort"]);
        assert!(!tree.exists());
    }
    checkouts_of_two_layouts_in_one_store(a, &b, &a.root());
}

driver_tests!(two_layouts_on_one_store_keep_their_own_checkouts);

/// Bug: directory B's `genoci status` removed A's running build's work tree
/// as "left by an interrupted run", failing A's build.
fn a_running_build_in_a_shared_store_keeps_its_tree(a: &Store) {
    a.busybox("busybox.tar.gz");
    a.write(
        "spec.yaml",
        "bb:\n  base: empty\n  expand: ./busybox.tar.gz\n",
    );
    a.ok(&["build", "spec.yaml"]);
    a.write(
        "slow.yaml",
        "slow:\n  base: bb\n  run: sleep 3; echo done > /done\n",
    );
    let b = sharing(a);
    let mut child = a.cmd(&["build", "slow.yaml"]).spawn().unwrap();
    let build_tree = || {
        work_tree_names(&a.root())
            .into_iter()
            .find(|n| n.starts_with("build-") && n.ends_with("slow"))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while build_tree().is_none() && Instant::now() < deadline {
        assert!(child.try_wait().unwrap().is_none(), "the build ended early");
        std::thread::sleep(Duration::from_millis(10));
    }
    let tree = tree_dir(&a.root(), &build_tree().expect("the build's tree"));
    b.ok(&["status"]);
    // B's gc waits for A's build (they share the store).
    let gc = b.cmd(&["gc"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(tree.exists(), "B removed A's running build's tree");
    assert!(child.wait().unwrap().success(), "A's build failed");
    assert!(
        gc.wait_with_output().unwrap().status.success(),
        "B's gc failed"
    );
    assert!(a.tags().contains(&"slow".to_string()));
    // A tree whose process is gone is still cleared by the next command.
    assert!(work_entries(&a.root()).is_empty());
}

driver_tests!(a_running_build_in_a_shared_store_keeps_its_tree);

/// What the previous store format kept: `work/NAME` and `work/NAME.json`,
/// the base as bare hex on the directory stores, no name in the record.
fn to_previous_format(store: &Store, name: &str) {
    let work = store.root().join("work");
    let dir = tree_dir(&store.root(), name);
    let record_path = dir.with_extension("json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&fs::read(&record_path).unwrap()).unwrap();
    let record = record.as_object_mut().unwrap();
    record.remove("name");
    if store.driver() != Driver::Btrfs {
        let base = record["base"].as_str().unwrap().replace("sha256:", "");
        record.insert("base".into(), base.into());
    }
    fs::write(
        work.join(format!("{name}.json")),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
    fs::remove_file(&record_path).unwrap();
    // As after a reboot: the overlay's mount is gone.
    crate::util::unmount_all(&crate::util::mounts_under(&dir));
    fs::rename(&dir, work.join(name)).unwrap();
    let inodes = store.root().join("inodes");
    if inodes.join(dir.file_name().unwrap()).exists() {
        fs::rename(inodes.join(dir.file_name().unwrap()), inodes.join(name)).unwrap();
    }
}

/// A tree an older genoci left by a process that is gone, in the previous format.
fn previous_format_build_tree(store: &Store) {
    let work = store.root().join("work");
    let tree = work.join("build-1-x.json");
    match store.driver() {
        Driver::Btrfs => {
            crate::util::run_ok(
                std::process::Command::new("btrfs")
                    .args(["subvolume", "create"])
                    .arg(tree.with_extension("")),
            );
        }
        _ => fs::create_dir_all(tree.with_extension("").join("upper")).unwrap(),
    }
    fs::write(
        work.join("build-1-x.json.json"),
        r#"{"base":"empty","owner":{"process":{"pid":1,"start":1}}}"#,
    )
    .unwrap();
    fs::create_dir(work.join("half-made")).unwrap();
}

/// A store written by the previous format opens: its open checkout is
/// kept (the edits made before and after the upgrade are checked in), and
/// the trees of dead processes are removed.
fn a_store_of_the_previous_format_opens(store: &Store) {
    crate::util::require_tool!("umoci");
    build_two(store);
    let tree = checkout(store, &["checkout", "t"]);
    fs::write(tree.join("before"), "edited before the upgrade\n").unwrap();
    let name = work_tree_names(&store.root()).pop().unwrap();
    assert!(name.starts_with("checkout-"), "{name}");
    to_previous_format(store, &name);
    previous_format_build_tree(store);

    assert!(store.ok(&["status"]).contains("checkout:  t at"));
    assert_eq!(work_tree_names(&store.root()), std::slice::from_ref(&name));
    assert_eq!(
        work_entries(&store.root()).len(),
        2,
        "{:?}",
        work_entries(&store.root())
    );
    let tree = tree_dir(&store.root(), &name);
    let tree = if store.driver() == Driver::Overlay {
        tree.join("root")
    } else {
        tree
    };
    fs::write(tree.join("after"), "edited after\n").unwrap();
    store.ok(&["checkin", "edited"]);
    assert_eq!(names(&store.unpack("edited")), ["after", "before", "t"]);
    assert!(work_entries(&store.root()).is_empty());
}

driver_tests!(a_store_of_the_previous_format_opens);
