//! These run for real: as root, with loop devices and btrfs. Elsewhere they
//! skip with a notice (a failure in strict mode, see `test_support::skip`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Program;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::loopback::LoopAttachment;
use super::store::{setup_store_with, unsetup_store_with, UnsetupOutcome};
use super::*;
use crate::driver::contract::{self, chain, write};

fn can_run() -> bool {
    let ok = nix::unistd::geteuid().is_root()
        && Path::new("/dev/loop-control").exists()
        && Program::new("mkfs.btrfs").arg("--version").output().is_ok();
    if !ok {
        crate::test_support::skip("btrfs tests need root, loop devices and mkfs.btrfs");
    }
    ok
}

/// A loopback btrfs store in a temp dir, unmounted and detached on drop even
/// when the test panics.
struct TestStore {
    lofile: PathBuf,
    mnt: PathBuf,
    dir: tempfile::TempDir,
}

const TEST_SIZE: u64 = 256 << 20;

impl TestStore {
    fn new() -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        let store = TestStore {
            lofile: dir.path().join("btrfs.img"),
            mnt: dir.path().join("mnt"),
            dir,
        };
        let outcome = setup_store(&store.lofile, TEST_SIZE, &store.mnt).unwrap();
        assert_eq!(outcome, SetupOutcome::Created);
        store
    }

    fn driver(&self) -> BtrfsDriver {
        BtrfsDriver::open(&self.mnt).unwrap()
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Err(e) = unsetup_store(&self.lofile, &self.mnt, true) {
            eprintln!("cleanup of {}: {e}", self.dir.path().display());
            let _ = sys_mount::unmount(&self.mnt, sys_mount::UnmountFlags::DETACH);
            for dev in loopback::devices_backing(&self.lofile).unwrap_or_default() {
                let _ = loopback::detach(&dev);
            }
        }
    }
}

fn full_diff(base: &Path, tree: &Path) -> Vec<Change> {
    diff::full_compare(base, tree)
}

fn mounted(path: &Path) -> bool {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mount::mount_points().unwrap().contains(&path)
}

fn attached(lofile: &Path) -> bool {
    let out = Program::new("losetup").arg("-a").output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&*lofile.to_string_lossy())
}

#[test]
fn setup_twice_is_a_no_op() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let again = setup_store(&store.lofile, TEST_SIZE, &store.mnt).unwrap();
    assert_eq!(again, SetupOutcome::AlreadySetUp);
    let driver = store.driver();
    assert_eq!(driver.snapshots().unwrap(), vec![ChainId::empty()]);
    assert!(driver.exists(&ChainId::empty()).unwrap());
    let empty = driver.snapshot_path(&ChainId::empty()).unwrap();
    assert_eq!(fs::read_dir(&empty).unwrap().count(), 0);
    assert!(subvol::read_only(&empty).unwrap());
}

#[test]
fn changes_equal_a_full_comparison() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    let got = contract::changes_equal_a_full_comparison(&driver, contract::modify_links_and_moves);
    for change in [
        Change::Write("etc/third".into()),
        Change::Write("links/orig".into()),
        Change::Write("left/g".into()),
        Change::Delete("right/g".into()),
        Change::Opaque("usr/share/doc".into()),
        Change::Write("dev/loopish".into()),
    ] {
        assert!(got.contains(&change), "{change:?} missing from {got:#?}");
    }
    assert!(subvol::read_only(&driver.snapshot_path(&chain(2)).unwrap()).unwrap());
}

#[test]
fn the_parser_reads_real_streams() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    let tree = driver.checkout(&ChainId::empty(), "t").unwrap();
    write(&tree.path, "d/f", "x");
    let empty_id = subvol::id(&driver.snapshot_path(&ChainId::empty()).unwrap()).unwrap();
    subvol::set_read_only(&tree.path, true).unwrap();
    let stream = send::send(&tree.path, empty_id).unwrap();
    let commands = send::parse(&stream).unwrap();
    assert_eq!(commands.first().unwrap().kind, send::CommandKind::Snapshot);
    assert_eq!(commands.last().unwrap().kind, send::CommandKind::End);
    // Creation goes through temporary names, then renames into place.
    assert!(commands
        .iter()
        .any(|c| c.kind == send::CommandKind::Rename && c.path_to == Some("d/f".into())));
    let touched = send::touched_paths(&commands);
    assert!(touched.contains(Path::new("d")));
    assert!(touched.contains(Path::new("d/f")));
    // No data: the stream stays small.
    assert!(!commands.iter().any(|c| c.kind == send::CommandKind::Write));
    driver.checkin(tree, &chain(1)).unwrap();

    let tree = driver.checkout(&chain(1), "u").unwrap();
    // A file rename comes as link + unlink; a directory can only be renamed.
    fs::rename(tree.path.join("d/f"), tree.path.join("d/g")).unwrap();
    fs::rename(tree.path.join("d"), tree.path.join("e")).unwrap();
    let parent = subvol::id(&driver.snapshot_path(&chain(1)).unwrap()).unwrap();
    subvol::set_read_only(&tree.path, true).unwrap();
    let commands = send::parse(&send::send(&tree.path, parent).unwrap()).unwrap();
    let has = |kind| commands.iter().any(|c| c.kind == kind);
    assert!(has(send::CommandKind::Rename) && has(send::CommandKind::Unlink));
    let touched: Vec<_> = send::touched_paths(&commands).into_iter().collect();
    let want: Vec<PathBuf> = ["", "d", "e", "e/f", "e/g"]
        .iter()
        .map(PathBuf::from)
        .collect();
    assert_eq!(touched, want);
    driver.discard(tree).unwrap();
}

#[test]
fn trees_are_discarded_even_when_read_only() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    let tree = driver.checkout(&ChainId::empty(), "gone").unwrap();
    write(&tree.path, "f", "x");
    assert!(matches!(
        driver.checkout(&ChainId::empty(), "gone"),
        Err(DriverError::Busy(_))
    ));
    assert_eq!(driver.work_tree("gone").unwrap(), Some(tree.clone()));
    driver.changes(&tree).unwrap();
    assert!(subvol::read_only(&tree.path).unwrap());
    let path = tree.path.clone();
    driver.discard(tree).unwrap();
    assert!(!path.exists());
    assert_eq!(driver.work_trees().unwrap(), vec![]);
    assert!(matches!(
        driver.checkout(&chain(9), "x"),
        Err(DriverError::NoSnapshot(_))
    ));
    // A name is never a path: the tree stays in the store's work dir.
    let tree = driver.checkout(&ChainId::empty(), "../escape").unwrap();
    assert_eq!(tree.path.parent(), Some(store.mnt.join("work").as_path()));
    driver.discard(tree).unwrap();
}

#[test]
fn snapshots_are_removed_but_never_the_empty_one() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    let tree = driver.checkout(&ChainId::empty(), "t").unwrap();
    fs::create_dir(tree.path.join("d")).unwrap();
    driver.checkin(tree, &chain(3)).unwrap();
    driver.remove(&chain(3)).unwrap();
    driver.remove(&ChainId::empty()).unwrap();
    assert_eq!(driver.snapshots().unwrap(), vec![ChainId::empty()]);
}

#[test]
fn unsetup_refuses_a_checkout_unless_forced_and_leaves_nothing() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    let kept = crate::driver::Owner {
        layout: Some("/some/layout".into()),
        ..Default::default()
    };
    driver
        .checkout_as(&ChainId::empty(), "checkout-x", &kept)
        .unwrap();
    // A second device on the same file, attached the way another tool would
    // (without autoclear), must go too.
    let out = Program::new("losetup")
        .args(["-f", "--show"])
        .arg(&store.lofile)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(matches!(
        unsetup_store(&store.lofile, &store.mnt, false),
        Err(DriverError::Busy(_))
    ));
    assert!(mounted(&store.mnt));
    assert_eq!(
        unsetup_store(&store.lofile, &store.mnt, true).unwrap(),
        UnsetupOutcome::Removed
    );
    assert!(!mounted(&store.mnt));
    assert!(!store.lofile.exists());
    assert!(!store.mnt.exists());
    // Autoclear may finish just after the unmount returns.
    let lofile = store.lofile.clone();
    let gone = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        !attached(&lofile)
    });
    assert!(gone, "a loop device still backs {}", lofile.display());
    // And a second unsetup has nothing to do, and says so.
    assert_eq!(
        unsetup_store(&store.lofile, &store.mnt, false).unwrap(),
        UnsetupOutcome::NothingThere
    );
}

#[test]
fn open_refuses_what_is_not_a_store() {
    let t = tempfile::tempdir().unwrap();
    assert!(matches!(
        BtrfsDriver::open(t.path()),
        Err(DriverError::NotSetUp(_))
    ));
    assert!(matches!(
        BtrfsDriver::open(Path::new("/")),
        Err(DriverError::UnsafePath(..))
    ));
    let message = BtrfsDriver::open(t.path()).unwrap_err().to_string();
    assert!(message.contains("genoci setup"), "{message}");
}

#[test]
fn setup_refuses_a_file_that_is_not_btrfs() {
    let t = tempfile::tempdir().unwrap();
    let lofile = t.path().join("precious");
    fs::write(&lofile, vec![7u8; 1 << 17]).unwrap();
    let err = setup_store(&lofile, TEST_SIZE, &t.path().join("mnt")).unwrap_err();
    assert!(matches!(err, DriverError::UnsafePath(..)), "{err}");
    assert_eq!(fs::read(&lofile).unwrap(), vec![7u8; 1 << 17]);
}

/// Records the seam's calls; mounts exist only in its memory.
#[derive(Debug, Default)]
struct Recording {
    calls: Mutex<Vec<String>>,
    mounted: Mutex<bool>,
}

impl Recording {
    fn log(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

impl System for Recording {
    fn mkfs(&self, file: &Path) -> Result<()> {
        self.log(format!("mkfs {}", name(file)));
        Ok(())
    }
    fn attach_loop(&self, file: &Path) -> Result<LoopAttachment> {
        self.log(format!("attach {}", name(file)));
        Ok(LoopAttachment::detached("/dev/loop99".into()))
    }
    fn loops_backing(&self, _: &Path) -> Result<Vec<PathBuf>> {
        Ok(vec!["/dev/loop98".into()])
    }
    fn detach_loop(&self, device: &Path) -> Result<()> {
        self.log(format!("detach {}", name(device)));
        Ok(())
    }
    fn mount(&self, device: &Path, target: &Path) -> Result<()> {
        self.log(format!("mount {} {}", name(device), name(target)));
        *self.mounted.lock().unwrap() = true;
        Ok(())
    }
    fn unmount(&self, target: &Path) -> Result<()> {
        self.log(format!("unmount {}", name(target)));
        *self.mounted.lock().unwrap() = false;
        Ok(())
    }
    fn is_btrfs_mount(&self, _: &Path) -> Result<bool> {
        Ok(*self.mounted.lock().unwrap())
    }
    fn create_subvolume(&self, path: &Path) -> Result<()> {
        self.log(format!("create {}", name(path)));
        fs::create_dir(path).map_err(DriverError::io("create", path))
    }
    fn is_subvolume(&self, path: &Path) -> Result<bool> {
        Ok(path.is_dir())
    }
    fn snapshot(&self, source: &Path, dest: &Path, read_only: bool) -> Result<()> {
        self.log(format!(
            "snapshot {} {} {read_only}",
            name(source),
            name(dest)
        ));
        fs::create_dir(dest).map_err(DriverError::io("create", dest))
    }
    fn delete_subvolume(&self, path: &Path) -> Result<()> {
        self.log(format!("delete {}", name(path)));
        fs::remove_dir(path).map_err(DriverError::io("remove", path))
    }
    fn read_only(&self, _: &Path) -> Result<bool> {
        Ok(false)
    }
    fn set_read_only(&self, _: &Path, _: bool) -> Result<()> {
        unimplemented!("not used by setup")
    }
    fn subvolume_id(&self, _: &Path) -> Result<u64> {
        unimplemented!("not used by setup")
    }
    fn send(&self, _: &Path, _: u64) -> Result<Vec<u8>> {
        unimplemented!("not used by setup")
    }
    fn inode_paths(&self, _: &Path, _: u64) -> Result<Option<Vec<PathBuf>>> {
        unimplemented!("not used by setup")
    }
}

#[test]
fn setup_formats_attaches_mounts_and_lays_out_the_store() {
    let t = tempfile::tempdir().unwrap();
    let sys = Arc::new(Recording::default());
    let (lofile, mnt) = (t.path().join("img"), t.path().join("mnt"));
    let outcome = setup_store_with(sys.clone(), &lofile, 1 << 30, &mnt).unwrap();
    assert_eq!(outcome, SetupOutcome::Created);
    assert_eq!(fs::metadata(&lofile).unwrap().len(), 1 << 30);
    assert_eq!(
        sys.calls(),
        [
            "mkfs img",
            "attach img",
            "mount loop99 mnt",
            "create .empty-staging",
            "snapshot .empty-staging empty true",
            "delete .empty-staging",
        ]
    );
    assert!(mnt.join("snapshots/empty").is_dir());
    assert!(mnt.join("work").is_dir());

    let again = setup_store_with(sys.clone(), &lofile, 1 << 30, &mnt).unwrap();
    assert_eq!(again, SetupOutcome::AlreadySetUp);
    assert_eq!(sys.calls().len(), 6);

    let checkout = Owner {
        layout: Some("/project/oci".into()),
        ..Owner::default()
    };
    trees_in(&mnt)
        .create("checkout-1", &ChainId::empty(), &checkout)
        .unwrap();
    assert!(unsetup_store_with(sys.as_ref(), &lofile, &mnt, false).is_err());
    unsetup_store_with(sys.as_ref(), &lofile, &mnt, true).unwrap();
    assert_eq!(&sys.calls()[6..], ["unmount mnt", "detach loop98"]);
    assert!(!lofile.exists());
}

/// Time of `changes` for a one-file change over bases of different sizes:
/// `cargo test --release changes_cost -- --ignored --nocapture`.
#[test]
#[ignore]
fn changes_cost_does_not_grow_with_the_base() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    for (i, files) in [400usize, 40_000].into_iter().enumerate() {
        let base = chain(10 + i as u32);
        let tree = driver.checkout(&ChainId::empty(), "base").unwrap();
        for n in 0..files {
            write(&tree.path, &format!("d{:03}/f{n}", n / 100), "content\n");
        }
        driver.checkin(tree, &base).unwrap();
        let tree = driver.checkout(&base, "top").unwrap();
        write(&tree.path, "d000/f1", "changed\n");
        // The first call also commits the transaction that wrote the change.
        let mut times = Vec::new();
        let mut changes = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            changes = driver.changes(&tree).unwrap();
            times.push(started.elapsed());
        }
        assert_eq!(changes, vec![Change::Write("d000/f1".into())]);
        let started = Instant::now();
        let walked = full_diff(&driver.snapshot_path(&base).unwrap(), &tree.path);
        let walk_elapsed = started.elapsed();
        assert_eq!(walked, changes);
        println!(
            "one-file change on a base of {files} files: changes {times:?}, full walk {walk_elapsed:?}"
        );
        driver.discard(tree).unwrap();
    }
}

#[test]
fn tangled_renames_still_equal_a_full_comparison() {
    if !can_run() {
        return;
    }
    let store = TestStore::new();
    let driver = store.driver();
    let tree = driver.checkout(&ChainId::empty(), "base").unwrap();
    let t = &tree.path;
    write(t, "x", "x content");
    write(t, "y", "y content");
    write(t, "p/q/f", "f");
    write(t, "p/g", "g");
    write(t, "r/keep", "same name, new inode");
    write(t, "r/gone", "gone");
    write(t, "h/a", "linked");
    fs::hard_link(t.join("h/a"), t.join("h/b")).unwrap();
    write(t, "m/moved", "moved into a later dir");
    driver.checkin(tree, &chain(1)).unwrap();

    let tree = driver.checkout(&chain(1), "top").unwrap();
    let t = &tree.path;
    fs::rename(t.join("x"), t.join("tmp")).unwrap();
    fs::rename(t.join("y"), t.join("x")).unwrap();
    fs::rename(t.join("tmp"), t.join("y")).unwrap();
    // Turn p/q inside out: q on top, p below it.
    fs::rename(t.join("p/q"), t.join("q")).unwrap();
    fs::rename(t.join("p"), t.join("q/p")).unwrap();
    fs::remove_dir_all(t.join("r")).unwrap();
    write(t, "r/keep", "same name, new inode");
    fs::remove_file(t.join("h/a")).unwrap();
    fs::write(t.join("h/b"), "linked, then changed").unwrap();
    fs::create_dir_all(t.join("z/new")).unwrap();
    fs::rename(t.join("m/moved"), t.join("z/new/moved")).unwrap();
    fs::write(t.join("z/new/moved"), "and changed").unwrap();

    let base = driver.snapshot_path(&chain(1)).unwrap();
    let expected = full_diff(&base, t);
    assert_eq!(driver.changes(&tree).unwrap(), expected);
    assert!(expected.contains(&Change::Write("x".into())));
    assert!(expected.contains(&Change::Delete("r/gone".into())));
    driver.discard(tree).unwrap();
}

contract::contract_tests!(
    can_run().then(|| {
        let store = TestStore::new();
        let driver = store.driver();
        (store, driver)
    }),
    20
);
