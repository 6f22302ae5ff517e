//! The lpack workflow on every driver: unpack, checkout, edit by hand,
//! checkin, abort, status.

use std::fs;
use std::path::PathBuf;

use crate::stores::{driver_tests, require_btrfs, unpack_snapshots, work_entries, Btrfs, Store};
use crate::util::{require_tool, stderr, Env};

fn today() -> String {
    chrono::Local::now().format("%Y-%m-%d").to_string()
}

/// Build a base to work on.
fn build_base(env: &Env) {
    env.busybox("busybox.tar.gz");
    env.write(
        "spec.yaml",
        "bb:\n  base: empty\n  expand: ./busybox.tar.gz\n\
         app:\n  base: bb\n  run: echo app > /app\n",
    );
    env.ok(&["spec.yaml"]);
}

fn checkout(env: &Env, tag: &str) -> PathBuf {
    let out = env.ok(&["checkout", tag]);
    let path = PathBuf::from(out.trim());
    assert!(path.is_dir(), "checkout printed {out:?}");
    path
}

/// The whole workflow.
fn lpack_workflow(store: &Store) {
    require_tool!("umoci");
    let env: &Env = store;
    let store_root = &store.root();
    build_base(env);

    let unpacked = unpack_snapshots(env);
    let tags = env.tags();
    assert_eq!(unpacked.keys().cloned().collect::<Vec<_>>(), tags);
    assert!(unpacked.values().all(|p| p.join("bin/busybox").exists()));

    // checkout, edit, status, checkin NEWTAG
    let tree = checkout(env, "app");
    assert!(tree.starts_with(store_root), "{}", tree.display());
    fs::write(tree.join("edited"), "by hand\n").unwrap();
    fs::remove_file(tree.join("app")).unwrap();
    let status = env.ok(&["status"]);
    assert!(
        status.contains(&format!("checkout:  app at {}", tree.display())),
        "{status}"
    );
    let again = env.genoci(&["checkout", "bb"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("in progress"), "{}", stderr(&again));

    let out = env.ok(&["checkin", "handmade"]);
    assert!(out.contains("handmade"), "{out}");
    assert!(!tree.exists());
    assert!(env.ok(&["status"]).contains("checkout:  none"));
    let rootfs = env.unpack("handmade");
    assert_eq!(
        fs::read_to_string(rootfs.join("edited")).unwrap(),
        "by hand\n"
    );
    assert!(!rootfs.join("app").exists());
    assert!(rootfs.join("bin/busybox").exists());

    // A checkout thrown away leaves nothing.
    let tree = checkout(env, "handmade");
    fs::write(tree.join("junk"), "x").unwrap();
    env.ok(&["abort"]);
    assert!(!tree.exists());
    assert!(
        work_entries(store_root).is_empty(),
        "{:?}",
        work_entries(store_root)
    );
    assert!(env.ok(&["status"]).contains("checkout:  none"));
    assert!(!env.genoci(&["abort"]).status.success());
    assert!(!env.genoci(&["checkin"]).status.success());

    // Default tags: today's date, then v1, v2 (each on the one before).
    let mut from = "handmade".to_string();
    for n in 1..=2 {
        let tree = checkout(env, &from);
        fs::write(tree.join(format!("v{n}")), "x").unwrap();
        env.ok(&["checkin"]);
        let tag = format!("{}_v{n}", today());
        assert!(env.tags().contains(&tag), "{:?}", env.tags());
        from = tag;
    }
    let rootfs = env.unpack(&format!("{}_v2", today()));
    assert!(rootfs.join("v1").exists() && rootfs.join("v2").exists());
    assert!(rootfs.join("edited").exists());
    assert!(work_entries(store_root).is_empty());
}

driver_tests!(lpack_workflow);

#[test]
fn unsetup_refuses_during_a_checkout_unless_forced() {
    require_btrfs!();
    let store = Btrfs::new();
    build_base(&store);
    checkout(&store, "bb");
    let out = store.genoci(&["unsetup"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert!(store.lofile().exists());
    assert!(store.ok(&["status"]).contains("checkout:  bb"));

    store.ok(&["unsetup", "--force"]);
    assert!(!store.lofile().exists());
    store.finish();
}
