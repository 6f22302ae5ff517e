//! These run for real as root (overlay mounts); elsewhere they print a
//! notice and pass.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;
use crate::driver::contract::{self, chain, populate_base as populate, write};

fn can_run() -> bool {
    let ok = nix::unistd::geteuid().is_root() && mount::supported().is_ok();
    if !ok {
        crate::test_support::skip("overlay tests need root and overlayfs");
    }
    ok
}

/// A store in a temp dir; every mount below it is detached on drop, even
/// when the test panics.
struct TestStore {
    dir: tempfile::TempDir,
}

impl TestStore {
    fn new() -> TestStore {
        TestStore {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn driver(&self) -> OverlayDriver {
        OverlayDriver::open(self.dir.path()).unwrap()
    }

    fn mounts(&self) -> Vec<PathBuf> {
        let root = self.dir.path().canonicalize().unwrap();
        crate::mountinfo::mount_points()
            .unwrap()
            .into_iter()
            .filter(|m| m.starts_with(&root))
            .collect()
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        for m in self.mounts().iter().rev() {
            let _ = mount::unmount(m);
        }
    }
}

#[test]
fn changes_equal_a_full_comparison() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    let got = contract::changes_equal_a_full_comparison(&driver, |t| {
        // A deleted dir made again: overlay marks the new one opaque.
        fs::remove_dir_all(t.join("usr/share/doc/sub")).unwrap();
        write(t, "usr/share/doc/sub/d", "d");
    });
    assert!(got.contains(&Change::Write("usr/share/doc/sub/d".into())));
    assert!(
        got.contains(&Change::Opaque("usr/share/doc/sub".into()))
            || got.contains(&Change::Delete("usr/share/doc/sub/c".into())),
        "the old entry below the remade dir is gone: {got:#?}"
    );
    // The committed layers give the same tree as the work tree had.
    let top = driver.snapshot_path(&chain(2)).unwrap();
    assert!(top.join("usr/bin/tool/inside").is_file());
    assert!(!top.join("var/old").exists());
    assert!(!top.join("usr/share/doc/sub/c").exists());
}

#[test]
fn copied_up_but_equal_entries_are_no_changes() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    let tree = driver.checkout(&ChainId::empty(), "base").unwrap();
    populate(&tree.path);
    driver.checkin(tree, &chain(1)).unwrap();

    let tree = driver.checkout(&chain(1), "same").unwrap();
    let t = &tree.path;
    fs::set_permissions(t.join("etc/perm"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(t.join("same/file"))
        .unwrap();
    let passwd = t.join("etc/passwd");
    let meta = fs::metadata(&passwd).unwrap();
    nix::unistd::chown(&passwd, Some(meta.uid().into()), Some(meta.gid().into())).unwrap();
    let upper = store
        .dir
        .path()
        .join("overlay/work")
        .join(crate::driver::worktree::store_name("same"))
        .join("upper");
    for copied in ["etc/perm", "same/file", "etc/passwd"] {
        assert!(upper.join(copied).exists(), "{copied} was copied up");
    }
    assert_eq!(driver.changes(&tree).unwrap(), vec![]);
    driver.discard(tree).unwrap();
    assert_eq!(store.mounts(), Vec::<PathBuf>::new());
}

#[test]
fn a_chain_deeper_than_a_mount_option_string_holds_mounts() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    let mut base = ChainId::empty();
    let started = std::time::Instant::now();
    for n in 1..=150 {
        let tree = driver.checkout(&base, "layer").unwrap();
        write(&tree.path, &format!("layers/{n}"), &n.to_string());
        if n > 1 {
            fs::remove_file(tree.path.join(format!("layers/{}", n - 1))).unwrap();
        }
        let id = base.push(&chain(n).to_string());
        driver.checkin(tree, &id).unwrap();
        base = id;
    }
    eprintln!("150 layers checked out and in: {:?}", started.elapsed());
    assert_eq!(driver.lowers(&base).unwrap().len(), 151);
    let tree = driver.checkout(&base, "top").unwrap();
    let names: Vec<_> = fs::read_dir(tree.path.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("150")]);
    driver.discard(tree).unwrap();
}

#[test]
fn a_snapshot_another_sits_on_is_removed_only_after_it() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    let one = chain(1);
    let two = one.push(&chain(2).to_string());
    for (base, id) in [(ChainId::empty(), &one), (one.clone(), &two)] {
        let tree = driver.checkout(&base, "t").unwrap();
        write(&tree.path, &id.store_name(), "x");
        driver.checkin(tree, id).unwrap();
    }
    assert_eq!(
        driver.snapshots().unwrap(),
        vec![two.clone(), one.clone(), ChainId::empty()]
    );
    let view = driver.snapshot_path(&two).unwrap();
    driver.remove(&one).unwrap();
    assert!(driver.exists(&one).unwrap(), "kept under {two}");
    driver.remove(&two).unwrap();
    assert!(!view.exists(), "its view is unmounted and gone");
    driver.remove(&one).unwrap();
    assert_eq!(driver.snapshots().unwrap(), vec![ChainId::empty()]);
    assert_eq!(store.mounts(), Vec::<PathBuf>::new());
}

#[test]
fn a_tree_left_mounted_is_discarded_with_its_mounts() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    let tree = driver.checkout(&ChainId::empty(), "left").unwrap();
    write(&tree.path, "f", "x");
    // As if the process had been killed: the tree stays mounted.
    std::mem::forget(tree);
    let again = OverlayDriver::open(store.dir.path()).unwrap();
    let trees = again.work_trees().unwrap();
    assert_eq!(trees.len(), 1);
    assert_eq!(store.mounts().len(), 1);
    again.discard(trees.into_iter().next().unwrap()).unwrap();
    assert_eq!(store.mounts(), Vec::<PathBuf>::new());
    assert!(again.work_trees().unwrap().is_empty());
}

/// A checked-in tree's overlay lives on while a file in it is open (its
/// unmount is lazy), and the kernel refuses its upper dir, now a snapshot,
/// as a lower dir of an indexed mount meanwhile: a checkout on it waits a
/// moment for the file to be closed, and names the likely cause when not.
#[test]
fn a_checkout_waits_for_a_checked_in_tree_still_in_use() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    let tree = driver.checkout(&ChainId::empty(), "held").unwrap();
    write(&tree.path, "f", "x");
    let held = fs::File::open(tree.path.join("f")).unwrap();
    driver.checkin(tree, &chain(1)).unwrap();
    let err = driver.checkout(&chain(1), "busy").unwrap_err();
    let message = crate::error_chain(&err);
    assert!(message.contains("still inside a tree"), "{message}");
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(held);
    });
    let tree = driver.checkout(&chain(1), "after").unwrap();
    release.join().unwrap();
    assert_eq!(fs::read_to_string(tree.path.join("f")).unwrap(), "x");
    driver.discard(tree).unwrap();
    assert_eq!(store.mounts(), Vec::<PathBuf>::new());
}

/// A mount refused because its upper dir is another live mount's leaves
/// that mount's `volatile` mark alone (only a mark the refused mount made
/// itself is taken away before it is tried again).
#[test]
fn a_busy_upper_keeps_the_volatile_mark_of_its_mount() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let dirs = ["lower", "upper", "work", "one", "two"].map(|d| store.dir.path().join(d));
    for d in &dirs {
        fs::create_dir_all(d).unwrap();
    }
    let overlay = mount::Overlay {
        lowers: &[dirs[0].clone()],
        upper: Some((&dirs[1], &dirs[2])),
        volatile: true,
    };
    overlay.mount(&dirs[3]).unwrap();
    let mark = dirs[2].join(mount::VOLATILE_MARK);
    assert!(mark.is_dir(), "the kernel's mark is where genoci looks");
    let err = overlay.mount(&dirs[4]).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ResourceBusy, "{err}");
    assert!(mark.is_dir(), "the live mount's mark stays");
}

#[test]
fn the_probe_mounts_and_leaves_nothing() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    OverlayDriver::probe(store.dir.path()).unwrap();
    assert_eq!(store.mounts(), Vec::<PathBuf>::new());
    let left: Vec<_> = fs::read_dir(store.dir.path().join("overlay"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("probe"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_checkout_whose_mount_is_gone_is_mounted_again() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    let tree = kept_checkout(&driver, &ChainId::empty());
    write(&tree.path, "edited", "by hand");
    // As after a reboot: the mount is gone, the dirs and record stay.
    mount::unmount(&tree.path).unwrap();
    assert!(
        driver.changes(&tree).is_err(),
        "an unmounted tree has no changes to give"
    );
    let again = OverlayDriver::open(store.dir.path()).unwrap();
    let trees = again.work_trees().unwrap();
    assert_eq!(trees.len(), 1);
    assert_eq!(
        fs::read_to_string(trees[0].path.join("edited")).unwrap(),
        "by hand"
    );
    assert_eq!(
        again.changes(&trees[0]).unwrap(),
        vec![Change::Write("edited".into())]
    );
}

/// A kept checkout mounted again (after a reboot) on the same lower dirs
/// finds its overlay index in its work dir: a file written through one
/// name before still shows the change through the others, and the
/// checkin links them all in the snapshot.
#[test]
fn a_checkout_mounted_again_keeps_its_links() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    let tree = driver.checkout(&ChainId::empty(), "base").unwrap();
    write(&tree.path, "a/one", "old");
    fs::create_dir(tree.path.join("b")).unwrap();
    fs::hard_link(tree.path.join("a/one"), tree.path.join("b/two")).unwrap();
    driver.checkin(tree, &chain(1)).unwrap();
    let tree = kept_checkout(&driver, &chain(1));
    fs::write(tree.path.join("a/one"), "new").unwrap();
    mount::unmount(&tree.path).unwrap();
    let again = OverlayDriver::open(store.dir.path()).unwrap();
    let tree = again.work_trees().unwrap().remove(0);
    assert_eq!(fs::read_to_string(tree.path.join("b/two")).unwrap(), "new");
    again.checkin(tree, &chain(2)).unwrap();
    let top = again.snapshot_path(&chain(2)).unwrap();
    let ino = |p: &str| fs::metadata(top.join(p)).unwrap().ino();
    assert_eq!(ino("a/one"), ino("b/two"));
    assert_eq!(fs::read_to_string(top.join("b/two")).unwrap(), "new");
}

#[test]
fn a_checkin_killed_half_way_leaves_no_snapshot() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    let staging = store.dir.path().join("overlay/snapshots/new-build-1-x");
    fs::create_dir_all(staging.join("diff")).unwrap();
    drop(driver);
    let driver = store.driver();
    assert!(!staging.exists());
    assert_eq!(driver.snapshots().unwrap(), vec![ChainId::empty()]);
}

#[test]
fn renamed_base_dirs_equal_a_full_comparison_and_stay_renamed_below_later_layers() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    let tree = driver.checkout(&ChainId::empty(), "base").unwrap();
    let t = &tree.path;
    write(t, "left/f", "left");
    write(t, "right/f", "right");
    write(t, "right/g", "only right");
    write(t, "usr/share/doc/sub/c", "c");
    write(t, "p/q/f", "f");
    driver.checkin(tree, &chain(1)).unwrap();

    let tree = driver.checkout(&chain(1), "top").unwrap();
    let t = &tree.path;
    // Swap two directories: the entries below them did not change themselves.
    fs::rename(t.join("left"), t.join("tmp-swap")).unwrap();
    fs::rename(t.join("right"), t.join("left")).unwrap();
    fs::rename(t.join("tmp-swap"), t.join("right")).unwrap();
    // A directory moved under a directory created after it, then edited.
    fs::create_dir(t.join("newparent")).unwrap();
    fs::rename(t.join("usr/share/doc/sub"), t.join("newparent/sub")).unwrap();
    write(t, "newparent/sub/c", "c changed");
    // Turn p/q inside out.
    fs::rename(t.join("p/q"), t.join("q")).unwrap();
    fs::rename(t.join("p"), t.join("q/p")).unwrap();
    let base = driver.snapshot_path(&chain(1)).unwrap();
    let expected = diff::full_compare(&base, t);
    assert_eq!(driver.changes(&tree).unwrap(), expected);
    assert!(expected.contains(&Change::Write("left/g".into())));
    assert!(expected.contains(&Change::Delete("right/g".into())));
    let two = chain(1).push(&chain(2).to_string());
    driver.checkin(tree, &two).unwrap();

    // A later layer sees the renamed dirs where they went.
    let tree = driver.checkout(&two, "later").unwrap();
    let t = &tree.path;
    let read = |rel: &str| fs::read_to_string(t.join(rel)).unwrap();
    assert_eq!(read("left/f"), "right");
    assert_eq!(read("left/g"), "only right");
    assert_eq!(read("right/f"), "left");
    assert!(!t.join("right/g").exists());
    assert_eq!(read("newparent/sub/c"), "c changed");
    assert!(!t.join("usr/share/doc/sub").exists());
    assert_eq!(read("q/f"), "f");
    assert!(t.join("q/p").is_dir() && !t.join("p").exists());
    fs::rename(t.join("left"), t.join("third")).unwrap();
    let base = driver.snapshot_path(&two).unwrap();
    assert_eq!(driver.changes(&tree).unwrap(), diff::full_compare(&base, t));
    driver.discard(tree).unwrap();
}

/// The mount options of the mount at `path`.
fn mount_options(path: &Path) -> String {
    let table = fs::read_to_string(crate::mountinfo::PATH).unwrap();
    table
        .lines()
        .find(|l| l.split(' ').nth(4) == path.to_str())
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_default()
        .to_string()
}

/// Another process opening the store leaves the staging dir of a checkin
/// under way (its tree's owner lives) and removes one a dead process left.
#[test]
fn opening_the_store_keeps_the_checkins_of_live_processes() {
    use crate::driver::worktree;
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let d = store.driver();
    let live = d.checkout(&ChainId::empty(), "live").unwrap();
    let snapshots = store.dir.path().join("overlay/snapshots");
    let staging = |name: &str| snapshots.join(format!("new-{}", worktree::store_name(name)));
    for name in ["live", "dead"] {
        fs::create_dir(staging(name)).unwrap();
    }
    drop(store.driver());
    assert!(staging("live").is_dir());
    assert!(!staging("dead").exists());
    d.discard(live).unwrap();
}

#[test]
fn a_builds_tree_is_volatile_and_a_kept_checkout_is_not() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    // A build's tree: unmounting it must not sync the store's filesystem.
    let build = driver
        .checkout_as(&ChainId::empty(), "build-1", &Owner::default())
        .unwrap();
    assert!(
        mount_options(&build.path).contains("volatile"),
        "{}",
        mount_options(&build.path)
    );
    write(&build.path, "f", "x");
    driver.checkin(build, &chain(1)).unwrap();
    assert_eq!(
        fs::read_to_string(driver.diff_dir(&chain(1)).join("f")).unwrap(),
        "x"
    );
    // A checkout kept for a layout may be mounted again after a reboot,
    // which the kernel refuses for an upper dir a volatile mount used.
    let tree = kept_checkout(&driver, &chain(1));
    let options = mount_options(&tree.path);
    assert!(
        options.contains("upperdir") && !options.contains("volatile"),
        "{options}"
    );
}

#[test]
fn a_lent_tree_is_down_while_lent_and_mounted_again_after() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    let tree = driver.checkout(&ChainId::empty(), "base").unwrap();
    populate(&tree.path);
    driver.checkin(tree, &chain(1)).unwrap();
    let tree = driver.checkout(&chain(1), "build").unwrap();
    write(&tree.path, "before", "b");
    let layers = driver.layers(&tree).unwrap().unwrap();
    assert!(layers.volatile, "a build's tree is volatile");
    assert_eq!(layers.lowers, driver.lowers(&chain(1)).unwrap());
    let mark = layers.work.join(mount::VOLATILE_MARK);
    assert!(mark.exists(), "the kernel marks a volatile work dir");

    let lent = driver.lend(&tree).unwrap();
    assert!(!mount::is_mounted(&tree.path).unwrap());
    assert_eq!(fs::read_dir(&tree.path).unwrap().count(), 0);
    assert!(!mark.exists(), "cleared after the orderly unmount");
    // What another mount of the layers writes meanwhile is the tree's.
    Overlay {
        lowers: &layers.lowers,
        upper: Some((&layers.upper, &layers.work)),
        volatile: true,
    }
    .mount(&tree.path)
    .unwrap();
    write(&tree.path, "during", "d");
    mount::unmount(&tree.path).unwrap();
    lent.restore().unwrap();
    assert!(mount::is_mounted(&tree.path).unwrap());
    assert!(
        tree.path.join("usr/bin/tool").exists(),
        "the base shows again"
    );
    let changes = driver.changes(&tree).unwrap();
    for name in ["before", "during"] {
        assert!(changes.contains(&Change::Write(name.into())), "{changes:?}");
    }

    // Dropped without a restore (a failed step): mounted again all the same.
    drop(driver.lend(&tree).unwrap());
    assert!(tree.path.join("during").exists());
    driver.discard(tree).unwrap();
    assert!(store.mounts().is_empty(), "{:?}", store.mounts());
}

#[test]
fn a_busy_tree_is_not_lent() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    let tree = driver.checkout(&ChainId::empty(), "busy").unwrap();
    let open = fs::File::create(tree.path.join("open")).unwrap();
    let err = driver.lend(&tree).err().expect("a busy tree is not lent");
    assert!(err.is_busy(), "{}", crate::error_chain(&err));
    assert!(mount::is_mounted(&tree.path).unwrap(), "still mounted");
    drop(open);
    driver.lend(&tree).unwrap().restore().unwrap();
    driver.discard(tree).unwrap();
}

#[test]
fn a_lent_checkout_is_not_mounted_again_by_another_listing() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    let tree = kept_checkout(&driver, &ChainId::empty());
    write(&tree.path, "edited", "by hand");
    let lent = driver.lend(&tree).unwrap();
    // Another genoci lists the trees meanwhile: the tree is lent to a
    // live process, not left unmounted by a reboot.
    let other = OverlayDriver::open(store.dir.path()).unwrap();
    other.work_trees().unwrap();
    assert!(
        !mount::is_mounted(&tree.path).unwrap(),
        "mounted beside the lender"
    );
    lent.restore().unwrap();
    assert!(mount::is_mounted(&tree.path).unwrap());
    assert!(tree.path.join("edited").exists());
    // A lender killed before it restored the tree: the next listing
    // mounts it again.
    let lent = driver.lend(&tree).unwrap();
    let dead = worktree::Process {
        pid: u32::MAX,
        start: 0,
    };
    let mark = driver.trees.dir_of(&tree.name).join(LENT);
    fs::write(&mark, serde_json::to_vec(&dead).unwrap()).unwrap();
    std::mem::forget(lent);
    other.work_trees().unwrap();
    assert!(mount::is_mounted(&tree.path).unwrap());
    assert!(tree.path.join("edited").exists());
    driver.discard(tree).unwrap();
}

/// A checkout kept for a layout (as `genoci checkout` makes) of `base`.
fn kept_checkout(driver: &OverlayDriver, base: &ChainId) -> WorkTree {
    let kept = Owner {
        layout: Some("/project/oci".into()),
        ..Owner::default()
    };
    driver.checkout_as(base, "checkout-x", &kept).unwrap()
}

contract::contract_tests!(
    can_run().then(|| {
        let store = TestStore::new();
        let driver = store.driver();
        (store, driver)
    }),
    20
);
