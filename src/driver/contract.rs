//! What every driver's unit tests share: the trees they build and change,
//! and the checks of the [`SnapshotDriver`] contract, so that each driver
//! is held to the same cases.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use filetime::FileTime;

use super::*;

/// The contract tests every driver runs, as `#[test]`s of the module it is
/// called in. `$open` gives `Some((guard, driver))`, or `None` where the
/// machine cannot run the driver (after saying so); the driver is dropped
/// before the guard that releases its store. `$rounds`: of the race of
/// equal checkins.
macro_rules! contract_tests {
    ($open:expr, $rounds:expr) => {
        #[test]
        fn renamed_dirs_keep_their_links() {
            let Some((store, driver)) = $open else { return };
            $crate::driver::contract::renamed_dirs_keep_their_links(&driver);
            drop((driver, store));
        }

        #[test]
        fn lower_links_stay_linked() {
            if !nix::unistd::geteuid().is_root() {
                $crate::test_support::skip("needs root (owners)");
                return;
            }
            let Some((store, driver)) = $open else { return };
            $crate::driver::contract::lower_links_stay_linked(&driver);
            drop((driver, store));
        }

        #[test]
        fn equal_checkins_at_once_all_succeed() {
            let Some((store, driver)) = $open else { return };
            $crate::driver::contract::equal_checkins_race(&driver, 16, $rounds);
            drop((driver, store));
        }
    };
}
pub(crate) use contract_tests;

/// A ChainID of its own for each `n`.
pub fn chain(n: u32) -> ChainId {
    ChainId::of(&[format!("sha256:{}", format!("{n:08x}").repeat(8))])
}

/// Write `content` at `rel` under `root`, making its parents.
pub fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

pub fn mknod(path: &Path, kind: nix::sys::stat::SFlag, dev: u64) {
    use nix::sys::stat::Mode;
    nix::sys::stat::mknod(path, kind, Mode::from_bits_truncate(0o644), dev).unwrap();
}

/// A base tree with an entry of every kind: files, directories, symlinks,
/// hard links, devices, a fifo, xattrs.
pub fn populate_base(t: &Path) {
    use nix::sys::stat::{makedev, SFlag};
    write(t, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
    write(t, "etc/hostname", "box\n");
    write(t, "etc/perm", "mode me\n");
    write(t, "etc/xattrs", "x\n");
    write(t, "usr/bin/tool", "#!/bin/sh\necho tool\n");
    write(t, "usr/share/doc/a", "a");
    write(t, "usr/share/doc/b", "b");
    write(t, "usr/share/doc/sub/c", "c");
    write(t, "var/old/one", "1");
    write(t, "var/old/two", "2");
    write(t, "left/f", "left");
    write(t, "right/f", "right");
    write(t, "right/g", "only right");
    write(t, "same/file", "opened, left alone");
    write(t, "links/orig", "shared by hard links");
    fs::hard_link(t.join("links/orig"), t.join("links/other")).unwrap();
    fs::hard_link(t.join("links/orig"), t.join("etc/third")).unwrap();
    symlink("../usr/bin/tool", t.join("etc/tool")).unwrap();
    symlink("/etc/passwd", t.join("abs-link")).unwrap();
    fs::create_dir_all(t.join("dev")).unwrap();
    mknod(&t.join("dev/null"), SFlag::S_IFCHR, makedev(1, 3));
    mknod(&t.join("dev/loopish"), SFlag::S_IFBLK, makedev(7, 200));
    mknod(&t.join("dev/fifo"), SFlag::S_IFIFO, 0);
    crate::xattr::set(&t.join("etc/xattrs"), b"user.one", b"1").unwrap();
    crate::xattr::set(&t.join("usr/bin/tool"), b"security.capability-test", b"").ok();
    crate::xattr::set(&t.join("etc"), b"user.dir", b"on a dir").unwrap();
}

/// The changes every driver sees the same way.
pub fn modify_top(t: &Path) {
    // Same size, same mtime: only the content says it changed.
    let passwd = t.join("etc/passwd");
    let mtime = FileTime::from_last_modification_time(&fs::metadata(&passwd).unwrap());
    fs::write(&passwd, "ROOT:x:0:0:root:/root:/bin/sh\n").unwrap();
    filetime::set_file_mtime(&passwd, mtime).unwrap();
    fs::set_permissions(t.join("etc/perm"), fs::Permissions::from_mode(0o600)).unwrap();
    crate::xattr::set(&t.join("etc/xattrs"), b"user.two", b"2").unwrap();
    fs::remove_dir_all(t.join("var/old")).unwrap();
    fs::remove_file(t.join("usr/share/doc/a")).unwrap();
    fs::remove_file(t.join("usr/share/doc/b")).unwrap();
    fs::rename(t.join("etc/hostname"), t.join("etc/hostname.new")).unwrap();
    write(t, "opt/app/lib/deep/x.so", "so");
    // A file replaced by a directory, a symlink retargeted.
    fs::remove_file(t.join("usr/bin/tool")).unwrap();
    write(t, "usr/bin/tool/inside", "now a dir");
    fs::remove_file(t.join("abs-link")).unwrap();
    symlink("/etc/shadow", t.join("abs-link")).unwrap();
}

/// Changes through hard links and renames of whole directories, which a
/// store of full trees (plain, btrfs) sees through every name.
pub fn modify_links_and_moves(t: &Path) {
    write(t, "opt/app/bin/run", "run");
    symlink("bin/run", t.join("opt/app/start")).unwrap();
    // One name of a thrice-linked file changes the content of all three.
    fs::write(t.join("links/other"), "changed through one name").unwrap();
    // Swap two directories: the entries below them did not change themselves.
    fs::rename(t.join("left"), t.join("tmp-swap")).unwrap();
    fs::rename(t.join("right"), t.join("left")).unwrap();
    fs::rename(t.join("tmp-swap"), t.join("right")).unwrap();
    // A directory moved under a directory created after it.
    fs::create_dir(t.join("newparent")).unwrap();
    fs::rename(t.join("usr/share/doc/sub"), t.join("newparent/sub")).unwrap();
    write(t, "newparent/sub/c", "c changed");
    // A device renumbered.
    fs::remove_file(t.join("dev/loopish")).unwrap();
    mknod(
        &t.join("dev/loopish"),
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::makedev(7, 201),
    );
}

/// `changes` equals the full comparison of [`diff::full_compare`]: for the
/// base made by [`populate_base`] on the empty snapshot (committed as
/// `chain(1)`), then for [`modify_top`] and `more` on it (committed as
/// `chain(2)`). The changes of the top tree are returned for the driver's
/// own checks.
pub fn changes_equal_a_full_comparison(
    driver: &dyn SnapshotDriver,
    more: impl FnOnce(&Path),
) -> Vec<Change> {
    let tree = driver.checkout(&ChainId::empty(), "base").unwrap();
    populate_base(&tree.path);
    let empty = driver.snapshot_path(&ChainId::empty()).unwrap();
    let got = driver.changes(&tree).unwrap();
    assert_eq!(got, diff::full_compare(&empty, &tree.path));
    assert!(got.contains(&Change::Write("dev/null".into())));
    assert!(got.contains(&Change::Write("etc/third".into())));
    driver.checkin(tree, &chain(1)).unwrap();
    assert_eq!(driver.work_trees().unwrap(), vec![]);

    let tree = driver.checkout(&chain(1), "top").unwrap();
    modify_top(&tree.path);
    more(&tree.path);
    let base = driver.snapshot_path(&chain(1)).unwrap();
    let got = driver.changes(&tree).unwrap();
    assert_eq!(got, diff::full_compare(&base, &tree.path));
    for change in [
        Change::Write("etc/passwd".into()),
        Change::Write("etc/perm".into()),
        Change::Write("etc/xattrs".into()),
        Change::Delete("var/old".into()),
        Change::Delete("etc/hostname".into()),
        Change::Write("etc/hostname.new".into()),
        Change::Write("usr/bin/tool/inside".into()),
        Change::Write("opt/app/lib/deep/x.so".into()),
        Change::Write("abs-link".into()),
    ] {
        assert!(got.contains(&change), "{change:?} missing from {got:#?}");
    }
    driver.checkin(tree, &chain(2)).unwrap();
    assert_eq!(driver.work_trees().unwrap(), vec![]);
    let mut snapshots = driver.snapshots().unwrap();
    snapshots.sort();
    let mut expected = vec![ChainId::empty(), chain(1), chain(2)];
    expected.sort();
    assert_eq!(snapshots, expected);

    // An unchanged checkout has no changes at all, and checking in a
    // snapshot that exists throws the tree away.
    let tree = driver.checkout(&chain(2), "same").unwrap();
    assert_eq!(driver.changes(&tree).unwrap(), vec![]);
    driver.checkin(tree, &chain(2)).unwrap();
    assert_eq!(driver.work_trees().unwrap(), vec![]);
    got
}

/// Hard links through renamed directories: a directory holding one name
/// of a linked file is renamed, and a file below another renamed directory
/// gets a new name outside it. `changes` equals the full comparison and
/// writes every name of both files, so the layer links them.
pub fn renamed_dirs_keep_their_links(driver: &dyn SnapshotDriver) {
    let tree = driver.checkout(&ChainId::empty(), "base").unwrap();
    let t = &tree.path;
    write(t, "d/sub/f", "in");
    fs::hard_link(t.join("d/sub/f"), t.join("g")).unwrap();
    write(t, "m/file", "moved, then linked");
    write(t, "quiet/x", "untouched");
    driver.checkin(tree, &chain(1)).unwrap();

    let tree = driver.checkout(&chain(1), "top").unwrap();
    let t = &tree.path;
    fs::rename(t.join("d"), t.join("e")).unwrap();
    fs::rename(t.join("m"), t.join("n")).unwrap();
    fs::hard_link(t.join("n/file"), t.join("to-n")).unwrap();
    let base = driver.snapshot_path(&chain(1)).unwrap();
    let got = driver.changes(&tree).unwrap();
    assert_eq!(got, diff::full_compare(&base, t));
    for name in ["e/sub/f", "g", "n/file", "to-n"] {
        let change = Change::Write(name.into());
        assert!(got.contains(&change), "{change:?} missing from {got:#?}");
    }
    assert!(
        !got.iter().any(|c| c.path().starts_with("quiet")),
        "{got:#?}"
    );
    driver.discard(tree).unwrap();
}

/// `rounds` times, `threads` work trees with equal content are checked
/// in as one `id` at the same moment: every checkin succeeds, and one
/// snapshot with that content and no work tree remain.
pub fn equal_checkins_race(driver: &dyn SnapshotDriver, threads: usize, rounds: u8) {
    for round in 0..rounds {
        let id = ChainId::of(&[format!("sha256:{}", format!("{round:02x}").repeat(32))]);
        let trees: Vec<WorkTree> = (0..threads)
            .map(|t| {
                let tree = driver
                    .checkout(&ChainId::empty(), &format!("r{round}-{t}"))
                    .unwrap();
                std::fs::write(tree.path.join("round"), [round]).unwrap();
                tree
            })
            .collect();
        let start = std::sync::Barrier::new(threads);
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let start = &start;
            let handles: Vec<_> = trees
                .into_iter()
                .map(|tree| {
                    let id = &id;
                    s.spawn(move || {
                        start.wait();
                        driver.checkin(tree, id)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &results {
            assert!(r.is_ok(), "round {round}: {r:?}");
        }
        let root = driver.snapshot_path(&id).unwrap();
        assert_eq!(std::fs::read(root.join("round")).unwrap(), [round]);
        assert!(driver.work_trees().unwrap().is_empty());
    }
}

/// A base whose files have several names each, some in other directories.
fn populate_linked(t: &Path) {
    let link = |from: &str, to: &str| {
        fs::create_dir_all(t.join(to).parent().unwrap()).unwrap();
        fs::hard_link(t.join(from), t.join(to)).unwrap();
    };
    write(t, "w/one", "written through one name");
    link("w/one", "w/two");
    write(t, "c/m1", "mode changed");
    link("c/m1", "c/m2");
    write(t, "x/first", "written twice");
    link("x/first", "x/second");
    write(t, "r/in/f", "below a renamed dir");
    link("r/in/f", "top-f");
    write(t, "s/a/deep/f", "across dirs");
    link("s/a/deep/f", "s/b/g");
    link("s/a/deep/f", "h");
    write(t, "m/p1", "one name moved");
    link("m/p1", "m/p2");
    write(t, "tr/1", "truncated");
    link("tr/1", "tr/2");
    write(t, "l/old", "linked again");
    link("l/old", "l/kept");
    same_times(t, true);
}

/// Every directory below `t` (and every file, with `files`) gets one fixed
/// mtime, so that two stores' trees compare equal, and whether a step's
/// change of a directory falls in a new clock tick does not matter.
fn same_times(t: &Path, files: bool) {
    for entry in fs::read_dir(t).unwrap() {
        let path = entry.unwrap().path();
        let is_dir = fs::symlink_metadata(&path).unwrap().is_dir();
        if is_dir {
            same_times(&path, files);
        }
        if is_dir || files {
            filetime::set_file_mtime(&path, FileTime::from_unix_time(900_000_000, 0)).unwrap();
        }
    }
}

/// A step that reaches each file of [`populate_linked`] through one name.
fn change_linked(t: &Path) {
    use std::io::Write;
    fs::write(t.join("w/one"), "new content").unwrap();
    fs::set_permissions(t.join("c/m1"), fs::Permissions::from_mode(0o600)).unwrap();
    nix::unistd::chown(&t.join("c/m1"), Some(1000.into()), Some(1000.into())).unwrap();
    // Two names of one file written one after the other: the last wins.
    fs::write(t.join("x/first"), "first write").unwrap();
    fs::write(t.join("x/second"), "second write").unwrap();
    fs::rename(t.join("r"), t.join("r2")).unwrap();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(t.join("r2/in/f"))
        .unwrap();
    f.write_all(b", then appended").unwrap();
    fs::write(t.join("s/b/g"), "changed in s/b").unwrap();
    fs::rename(t.join("m/p1"), t.join("m/p3")).unwrap();
    fs::File::options()
        .write(true)
        .open(t.join("tr/2"))
        .unwrap()
        .set_len(0)
        .unwrap();
    fs::hard_link(t.join("l/old"), t.join("l/new")).unwrap();
    // The same times on every store, so that the trees compare equal.
    for name in ["w/one", "x/first", "r2/in/f", "s/b/g", "tr/1"] {
        filetime::set_file_mtime(t.join(name), FileTime::from_unix_time(1_000_000_000, 0)).unwrap();
    }
    same_times(t, false);
}

/// The groups of names that must stay one inode, with the content of each.
const LINKED: [(&[&str], &str); 8] = [
    (&["w/one", "w/two"], "new content"),
    (&["c/m1", "c/m2"], "mode changed"),
    (&["x/first", "x/second"], "second write"),
    (&["r2/in/f", "top-f"], "below a renamed dir, then appended"),
    (&["s/a/deep/f", "s/b/g", "h"], "changed in s/b"),
    (&["m/p3", "m/p2"], "one name moved"),
    (&["tr/1", "tr/2"], ""),
    (&["l/old", "l/kept", "l/new"], "linked again"),
];

/// Files with several names in the base, each reached through one name by
/// a step (written, chmod and chown, written through two names in turn,
/// below a renamed dir, across dirs, moved, truncated, linked anew): the
/// step sees every name change, the snapshot holds each file as one inode
/// under all its names with the new content and owner, and the changes
/// (so the layer) are the plain driver's for the same step.
pub fn lower_links_stay_linked(driver: &dyn SnapshotDriver) {
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = plain::PlainDriver::open(plain_dir.path()).unwrap();
    let (mut changes, mut tops) = (Vec::new(), Vec::new());
    for d in [driver, &plain as &dyn SnapshotDriver] {
        let tree = d.checkout(&ChainId::empty(), "base").unwrap();
        populate_linked(&tree.path);
        d.checkin(tree, &chain(1)).unwrap();
        let tree = d.checkout(&chain(1), "step").unwrap();
        change_linked(&tree.path);
        assert_linked(&tree.path, &format!("{} work tree", d.name()));
        let base = d.snapshot_path(&chain(1)).unwrap();
        let got = d.changes(&tree).unwrap();
        assert_eq!(got, diff::full_compare(&base, &tree.path), "{}", d.name());
        changes.push(got);
        d.checkin(tree, &chain(2)).unwrap();
        let top = d.snapshot_path(&chain(2)).unwrap();
        assert_linked(&top, &format!("{} snapshot", d.name()));
        tops.push(top);
    }
    assert_eq!(changes[0], changes[1], "{} and plain", driver.name());
    // Nothing else differs either: the names a checkin copied up kept
    // their times, and so did their directories.
    assert_eq!(
        diff::full_compare(&tops[1], &tops[0]),
        vec![],
        "{}",
        driver.name()
    );
}

fn assert_linked(root: &Path, what: &str) {
    use std::os::unix::fs::MetadataExt;
    for (names, content) in LINKED {
        let meta: Vec<_> = names
            .iter()
            .map(|n| fs::symlink_metadata(root.join(n)).unwrap())
            .collect();
        for (name, m) in names.iter().zip(&meta) {
            let ctx = format!("{what}: {name} of {names:?}");
            assert_eq!(m.ino(), meta[0].ino(), "{ctx}: one inode");
            assert_eq!(m.nlink(), names.len() as u64, "{ctx}: link count");
            assert_eq!(
                fs::read_to_string(root.join(name)).unwrap(),
                content,
                "{ctx}"
            );
        }
    }
    let m1 = fs::metadata(root.join("c/m2")).unwrap();
    assert_eq!(
        (m1.mode() & 0o7777, m1.uid()),
        (0o600, 1000),
        "{what}: c/m2"
    );
}
