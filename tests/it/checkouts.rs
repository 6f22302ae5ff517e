//! Checkouts and work trees have owners: a checkout's record lives with its
//! tree, gc keeps what an open checkout needs, and directories sharing one
//! store never touch each other's trees.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::stores::{require_btrfs, work_entries, Btrfs};
use crate::util::{require_root, require_tool, stderr, Env};

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

/// Check out `t`, rebuild it so its tag moves and the checked-out image is
/// reached only by an older dated tag, and gc: the checkout still checks in.
fn gc_keeps_an_open_checkout(env: &Env) {
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

/// Bug: the checked-out image's blobs went with gc, and checkin said it
/// was "no longer tagged": only abort was left.
#[test]
fn gc_keeps_an_open_checkout_on_the_plain_driver() {
    require_root!();
    require_tool!("umoci");
    gc_keeps_an_open_checkout(&Env::new());
}

#[test]
fn gc_keeps_an_open_checkout_on_btrfs() {
    require_btrfs!();
    require_tool!("umoci");
    let store = Btrfs::new();
    gc_keeps_an_open_checkout(&store);
    store.finish();
}

/// A second project directory whose config names `first`'s store.
fn sharing(first: &Env, btrfs: bool) -> Env {
    let second = Env::new();
    let config = if btrfs {
        format!(
            "driver: btrfs\nlayoutdir: ./oci\nstoredir: ./.genoci\nlofile: {}\nbtrfsmount: {}\n",
            first.path().join("btrfs.img").display(),
            first.path().join("btrfs").display()
        )
    } else {
        format!(
            "driver: plain\nlayoutdir: ./oci\nstoredir: {}\n",
            first.path().join(".genoci").display()
        )
    };
    second.write("atom_config.yaml", &config);
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
#[test]
fn two_layouts_on_one_plain_store_keep_their_own_checkouts() {
    require_root!();
    require_tool!("umoci");
    let a = Env::new();
    build_two(&a);
    let b = sharing(&a, false);
    checkouts_of_two_layouts_in_one_store(&a, &b, &a.path().join(".genoci"));
}

#[test]
fn two_layouts_on_one_btrfs_store_keep_their_own_checkouts() {
    require_btrfs!();
    require_tool!("umoci");
    let a = Btrfs::new();
    build_two(&a);
    let b = sharing(&a, true);
    let tree = checkout(&a, &["checkout", "t"]);
    let out = b.genoci(&["unsetup"]);
    assert_eq!(out.status.code(), Some(1), "unsetup under A's checkout");
    a.ok(&["abort"]);
    assert!(!tree.exists());
    checkouts_of_two_layouts_in_one_store(&a, &b, &a.mountpoint());
    a.finish();
}

/// Bug: directory B's `genoci status` removed A's running build's work tree
/// as "left by an interrupted run", failing A's build.
#[test]
fn a_running_build_in_a_shared_btrfs_store_keeps_its_tree() {
    require_btrfs!();
    let a = Btrfs::new();
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
    let b = sharing(&a, true);
    let mut child = a.cmd(&["build", "slow.yaml"]).spawn().unwrap();
    let build_tree = || {
        work_entries(&a.mountpoint())
            .into_iter()
            .find(|n| n.starts_with("build-") && n.ends_with("slow"))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while build_tree().is_none() && Instant::now() < deadline {
        assert!(child.try_wait().unwrap().is_none(), "the build ended early");
        std::thread::sleep(Duration::from_millis(10));
    }
    let tree = a
        .mountpoint()
        .join("work")
        .join(build_tree().expect("the build's tree"));
    b.ok(&["status"]);
    // B's gc waits for A's build (they share the btrfs store).
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
    assert!(work_entries(&a.mountpoint()).is_empty());
    a.finish();
}
