//! Any valid OCI tag (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`) is a target name
//! on every driver, even one equal to a file a store or a layout keeps; and
//! the work tree a killed build leaves, whatever its target's name, never
//! blocks the next command.
//!
//! Bugs: `x.json` failed on plain (its build tree's name ended in `.json`,
//! the record's suffix) and broke listing on btrfs; a name near 128
//! characters was refused to leave room for the dated tag.

use std::fs;
use std::time::Duration;

use crate::stores::{
    assert_layout_valid, driver_tests, tree_dir, unpack_snapshots, work_entries, Store,
};

/// Names that look like what the stores and the layout keep, or stretch
/// the tag rule (the 128-character one is added by [`names`]).
const ODD: &[&str] = &[
    "x.json",
    "v1.2.3",
    "_x",
    "a..b",
    "inodes",
    "records",
    "work",
    "snapshots",
    "views",
    "overlay",
    "index.json",
    "blobs",
    "checkout",
    "new-x",
    "wt-0123456789abcdef0123456789abcdef",
    "0",
];

fn names() -> Vec<String> {
    let mut names: Vec<String> = ODD.iter().map(|n| n.to_string()).collect();
    names.push(format!("l.{}", "o".repeat(126)));
    names
}

/// Every name a target on busybox that writes its own name to `/name`;
/// the 128-character one sits on `x.json`.
fn spec(names: &[String]) -> String {
    let mut spec = "bb:\n  base: empty\n  expand: ./busybox.tar.gz\n".to_string();
    for name in names {
        let base = if name.len() == 128 { "x.json" } else { "bb" };
        spec.push_str(&format!(
            "{name}:\n  base: {base}\n  run: echo {name} > /name\n"
        ));
    }
    spec
}

fn build_checkout_unpack_and_gc_odd_names(store: &Store) {
    let names = names();
    assert_eq!(names.last().unwrap().len(), 128);
    store.busybox("busybox.tar.gz");
    store.write("spec.yaml", &spec(&names));
    store.ok(&["build", "spec.yaml"]);

    let tags = store.tags();
    for name in &names {
        assert!(tags.contains(name), "{name} is not tagged: {tags:?}");
        let dated: Vec<_> = tags
            .iter()
            .filter(|t| {
                t.len() <= 128 && t.contains("-20") && t.starts_with(&name[..name.len().min(100)])
            })
            .collect();
        assert!(!dated.is_empty(), "no dated tag for {name}");
    }
    assert!(tags.iter().all(|t| t.len() <= 128), "{tags:?}");

    let tree = store.ok(&["checkout", "x.json"]);
    let tree = std::path::Path::new(tree.trim());
    assert_eq!(fs::read_to_string(tree.join("name")).unwrap(), "x.json\n");
    fs::write(tree.join("edited"), "yes\n").unwrap();
    assert!(store.ok(&["status"]).contains("x.json"));
    store.ok(&["checkin", "_y.json"]);
    assert!(store.tags().contains(&"_y.json".to_string()));

    // umoci refuses tags that start with `_`: genoci's own unpack reads them.
    let trees = unpack_snapshots(store);
    for name in names.iter().chain([&"_y.json".to_string()]) {
        let expected = if name == "_y.json" {
            "x.json"
        } else {
            name.as_str()
        };
        let root = trees
            .get(name)
            .unwrap_or_else(|| panic!("{name} not unpacked"));
        assert_eq!(
            fs::read_to_string(root.join("name")).unwrap(),
            format!("{expected}\n")
        );
    }
    assert!(fs::read_to_string(trees["_y.json"].join("edited")).is_ok());

    // Rebuilt (but `x.json`, which `_y.json` sits on), the old snapshots
    // are unreachable once gc prunes the older dated tags; the new ones stay.
    store.write(
        "spec.yaml",
        &spec(&names)
            .replace("> /name", "> /name; echo 2 > /v")
            .replace("echo x.json > /name; echo 2 > /v", "echo x.json > /name"),
    );
    store.ok(&["build", "spec.yaml"]);
    let out = store.ok(&["gc"]);
    assert!(!out.contains("removed 0 snapshots"), "{out}");
    let trees = unpack_snapshots(store);
    for name in names.iter().filter(|n| *n != "x.json") {
        assert_eq!(
            fs::read_to_string(trees[name].join("v")).unwrap(),
            "2\n",
            "{name}"
        );
    }
    assert!(
        work_entries(&store.root()).is_empty(),
        "{:?}",
        work_entries(&store.root())
    );
    assert_layout_valid(store);
    store.assert_nothing_leaked();
}

/// A build of an oddly named target killed mid `run`: `ls`, a build and
/// `gc` succeed after it, and its tree is gone.
fn a_killed_build_of_an_odd_name_blocks_nothing(store: &Store) {
    let name = format!("k.json.{}", "_".repeat(121));
    assert_eq!(name.len(), 128);
    store.busybox("busybox.tar.gz");
    store.write(
        "base.yaml",
        "bb:\n  base: empty\n  expand: ./busybox.tar.gz\n",
    );
    store.ok(&["base.yaml"]);
    store.write(
        "slow.yaml",
        &format!("{name}:\n  base: bb\n  run: |\n    touch /started\n    sleep 60\n"),
    );
    let mut child = store.cmd(&["build", "slow.yaml"]).spawn().unwrap();
    let tree = tree_dir(&store.root(), &format!("build-{}-{name}", child.id()));
    crate::util::wait_for_marker(&mut child, &tree, "started", Duration::from_secs(30));
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    child.wait().unwrap();
    crate::robust::assert_no_sleepers(store);
    assert!(
        !work_entries(&store.root()).is_empty(),
        "the killed build's tree is there"
    );

    store.ok(&["ls"]);
    store.write(
        "slow.yaml",
        &format!("{name}:\n  base: bb\n  run: touch /done\n"),
    );
    store.ok(&["build", "slow.yaml"]);
    assert!(store.tags().contains(&name));
    store.ok(&["gc"]);
    assert!(
        work_entries(&store.root()).is_empty(),
        "{:?}",
        work_entries(&store.root())
    );
    assert_layout_valid(store);
    store.assert_nothing_leaked();
}

driver_tests!(
    build_checkout_unpack_and_gc_odd_names,
    a_killed_build_of_an_odd_name_blocks_nothing,
);
