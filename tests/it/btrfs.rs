//! The btrfs store: setup and unsetup, builds that give the plain (and
//! overlay) driver's bytes, changes found in O(change), and switching drivers on one layout.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use crate::stores::{
    assert_released, build_reproducibly, layer_digests, loops_backing, require_btrfs, strip_ansi,
    subvolumes, tag_digests, Btrfs, Overlay,
};
use crate::util::{require_tool, run_ok, stderr, Env};

/// A base from a tarball, a target whose `run` edits, deletes, renames
/// (a file and a directory of the base), re-owns and adds, one that undoes part of it, and one with config only.
pub const SPEC: &str = r#"bb:
  base: empty
  expand: ./busybox.tar.gz
edited:
  base: bb
  run: |
    echo hello > /etc/motd
    echo more >> /etc/group
    rm /etc/passwd
    mkdir -p /opt/app/data
    echo 1 > /opt/app/data/one
    ln -s ../opt/app /usr/app
    ln /opt/app/data/one /opt/app/data/hard
    mv /etc/hostname /etc/hostname.old || true
    mv /var /srv
    chmod 600 /etc/group
    chown 1:2 /opt/app/data/one
    rm -rf /usr/share
undone:
  base: edited
  run: |
    rm -rf /opt/app
    mkdir /opt/app
    echo 2 > /opt/app/two
    echo hello > /etc/motd
configured:
  base: undone
  entrypoint: /bin/sh -c
  env:
    GREETING: hi
"#;

fn write_spec(env: &Env) {
    env.busybox("busybox.tar.gz");
    env.write("spec.yaml", SPEC);
}

#[test]
fn setup_makes_a_sparse_mounted_store_and_unsetup_removes_it() {
    require_btrfs!();
    let store = Btrfs::new();
    let lofile = store.lofile();
    let meta = fs::metadata(&lofile).unwrap();
    assert_eq!(meta.len(), 256 << 20);
    assert!(meta.blocks() * 512 < meta.len() / 2, "not sparse");
    let mountpoint = store.mountpoint().display().to_string();
    let mounts = run_ok(Command::new("findmnt").args(["-n", "-o", "FSTYPE", &mountpoint]));
    assert_eq!(mounts.trim(), "btrfs");
    assert_eq!(loops_backing(&lofile).len(), 1);

    let again = store.ok(&["setup"]);
    assert!(again.contains("already set up"), "{again}");
    assert_eq!(
        loops_backing(&lofile).len(),
        1,
        "setup twice attached twice"
    );

    let status = store.ok(&["status"]);
    assert!(status.contains("driver:    btrfs"), "{status}");

    store.ok(&["unsetup"]);
    assert!(!lofile.exists());
    assert!(!store.mountpoint().exists());
    assert_released(store.path());
    let again = store.ok(&["unsetup"]);
    assert!(again.contains("nothing to do"), "{again}");

    // And it can be set up again from nothing.
    let out = store.ok(&["setup"]);
    assert!(out.contains("created"), "{out}");
    store.finish();
}

#[test]
fn a_btrfs_build_before_setup_says_to_run_setup() {
    require_btrfs!();
    let env = Env::new();
    env.write(
        "atom_config.yaml",
        "driver: btrfs\nlofile: ./btrfs.img\nbtrfsmount: ./btrfs\n",
    );
    write_spec(&env);
    // `-q spec.yaml` also pins the regression where a spec after global
    // flags was taken for an unknown command.
    for args in [
        &["build", "spec.yaml"][..],
        &["-q", "spec.yaml"],
        &["checkout", "bb"],
        &["unpack"],
    ] {
        let out = env.genoci(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains("genoci setup"), "{}", stderr(&out));
    }
    assert!(!env.path().join("btrfs.img").exists());
    assert_released(env.path());
}

#[test]
fn setup_and_unsetup_have_nothing_to_do_with_the_plain_driver() {
    let env = Env::new();
    for cmd in ["setup", "unsetup"] {
        let out = env.ok(&[cmd]);
        assert!(out.contains("nothing to do"), "{cmd}: {out}");
    }
    assert!(!env.path().join("btrfs.img").exists());
}

#[test]
fn every_driver_builds_byte_identical_images() {
    require_btrfs!();
    let plain = Env::new();
    write_spec(&plain);
    build_reproducibly(&plain, &["build", "spec.yaml"]);

    let store = Btrfs::new();
    let overlay = Overlay::new();
    for env in [&*store, &*overlay] {
        write_spec(env);
        build_reproducibly(env, &["build", "spec.yaml"]);
    }

    let p = tag_digests(&plain.layout());
    assert_eq!(p.len(), 8, "{p:?}");
    for (driver, env) in [("btrfs", &*store), ("overlay", &*overlay)] {
        assert_eq!(
            p,
            tag_digests(&env.layout()),
            "manifests differ between plain and {driver}"
        );
        for tag in ["bb", "edited", "undone", "configured"] {
            assert_eq!(
                layer_digests(&plain.layout(), tag),
                layer_digests(&env.layout(), tag),
                "layers of {tag} on {driver}"
            );
        }
    }
    // The layer holds what the run did.
    let rootfs = store.unpack("undone");
    assert!(!rootfs.join("etc/passwd").exists());
    assert!(!rootfs.join("opt/app/data").exists());
    assert_eq!(
        fs::read_to_string(rootfs.join("opt/app/two")).unwrap(),
        "2\n"
    );
    assert!(!rootfs.join("usr/share").exists());
    store.finish();
}

#[test]
fn btrfs_changes_cost_the_change_not_the_tree() {
    require_btrfs!();
    let store = Btrfs::new();
    write_spec(&store);
    store.ok(&["build", "spec.yaml", "--target", "bb"]);
    store.write(
        "one.yaml",
        "one:\n  base: bb\n  run: echo changed > /etc/motd\n",
    );
    let out = crate::stores::genoci_env(&store, &[("GENOCI_LOG", "debug")], &["one.yaml"]);
    assert!(out.status.success());
    let log = strip_ansi(&stderr(&out));
    let line = log
        .lines()
        .find(|l| l.contains("changes from send stream"))
        .unwrap_or_else(|| panic!("no send-stream diff in the log:\n{log}"));
    let field = |name: &str| -> usize {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    // busybox has ~280 entries; the file, its directory and what the
    // sandbox's run touches (its mount points) are all that is looked at.
    assert!(field("candidates") <= 10, "{line}");
    assert_eq!(field("changes"), 2, "{line}");
    store.finish();
}

#[test]
fn tags_built_by_one_driver_are_bases_for_the_other() {
    require_btrfs!();
    let store = Btrfs::new();
    write_spec(&store);
    store.ok(&[
        "--driver",
        "plain",
        "build",
        "spec.yaml",
        "--target",
        "edited",
    ]);
    assert_eq!(subvolumes(&store.mountpoint()), ["snapshots/empty"]);

    // A fresh btrfs store: bb and edited are materialised from their layers.
    store.write(
        "on-plain.yaml",
        "onplain:\n  base: edited\n  run: echo b > /b\n",
    );
    let out = crate::stores::genoci_env(&store, &[], &["build", "on-plain.yaml"]);
    assert!(out.status.success());
    let log = strip_ansi(&stderr(&out));
    assert!(log.contains("materialising layer 1 of 2"), "{log}");
    assert!(log.contains("materialising layer 2 of 2"), "{log}");

    // The plain store has bb and edited: only the btrfs-built layer is applied.
    store.write(
        "on-btrfs.yaml",
        "onbtrfs:\n  base: onplain\n  run: echo p > /p\n",
    );
    let out = crate::stores::genoci_env(
        &store,
        &[],
        &["--driver", "plain", "build", "on-btrfs.yaml"],
    );
    assert!(out.status.success());
    let log = strip_ansi(&stderr(&out));
    assert!(log.contains("materialising layer 3 of 3"), "{log}");
    assert!(!log.contains("materialising layer 1 of"), "{log}");

    // And back on btrfs, only the plain-built layer is new to the store.
    store.write(
        "again.yaml",
        "again:\n  base: onbtrfs\n  run: echo a > /a\n",
    );
    let out = crate::stores::genoci_env(&store, &[], &["build", "again.yaml"]);
    assert!(out.status.success());
    let log = strip_ansi(&stderr(&out));
    assert!(log.contains("materialising layer 4 of 4"), "{log}");
    assert!(!log.contains("materialising layer 3 of"), "{log}");

    let rootfs = store.unpack("again");
    for (file, text) in [
        ("b", "b\n"),
        ("p", "p\n"),
        ("a", "a\n"),
        ("etc/motd", "hello\n"),
    ] {
        assert_eq!(
            fs::read_to_string(rootfs.join(file)).unwrap(),
            text,
            "{file}"
        );
    }
    store.finish();
}

#[test]
fn images_copied_in_by_skopeo_are_bases_for_every_driver() {
    require_btrfs!();
    require_tool!("skopeo");
    let store = Btrfs::new();
    write_spec(&store);
    build_reproducibly(&store, &["--driver", "plain", "build", "spec.yaml"]);
    let dir = store.path();
    run_ok(Command::new("skopeo").current_dir(dir).args([
        "copy",
        "oci:oci:undone",
        "oci:imported:imported",
    ]));

    // A layout with only the copied image, and stores that never saw it.
    store.write(
        "imp.yaml",
        "imp:\n  base: imported\n  run: echo imp > /imp\n",
    );
    let on_btrfs = build_reproducibly(&store, &["--layout", "imported", "build", "imp.yaml"]);
    assert!(
        on_btrfs.contains("materialising layer 3 of 3"),
        "{on_btrfs}"
    );
    let btrfs_digest = tag_digests(&dir.join("imported"))["imp"].clone();

    let on_plain = build_reproducibly(
        &store,
        &[
            "--driver",
            "plain",
            "--store",
            "fresh-store",
            "--layout",
            "imported",
            "build",
            "--no-cache",
            "imp.yaml",
        ],
    );
    assert!(
        on_plain.contains("materialising layer 1 of 3"),
        "{on_plain}"
    );
    let plain_digest = tag_digests(&dir.join("imported"))["imp"].clone();
    assert_eq!(btrfs_digest, plain_digest);

    let on_overlay = build_reproducibly(
        &store,
        &[
            "--driver",
            "overlay",
            "--store",
            "fresh-overlay-store",
            "--layout",
            "imported",
            "build",
            "--no-cache",
            "imp.yaml",
        ],
    );
    assert!(
        on_overlay.contains("materialising layer 1 of 3"),
        "{on_overlay}"
    );
    let overlay_digest = tag_digests(&dir.join("imported"))["imp"].clone();
    assert_eq!(btrfs_digest, overlay_digest);

    let bundle = dir.join("bundle-imp");
    run_ok(
        Command::new("umoci")
            .current_dir(dir)
            .args(["unpack", "--image", "imported:imp"])
            .arg(&bundle),
    );
    let rootfs = bundle.join("rootfs");
    assert_eq!(fs::read_to_string(rootfs.join("imp")).unwrap(), "imp\n");
    assert_eq!(
        fs::read_to_string(rootfs.join("opt/app/two")).unwrap(),
        "2\n"
    );
    store.finish();
}

/// A btrfs filesystem that genoci did not make: a loop file formatted and
/// mounted by the test in its temp dir. Dropping it unmounts it and
/// detaches its loop device, even when the test failed.
struct ForeignBtrfs {
    image: std::path::PathBuf,
    mnt: std::path::PathBuf,
}

impl ForeignBtrfs {
    fn new(env: &Env) -> ForeignBtrfs {
        let fs = ForeignBtrfs {
            image: env.path().join("theirs.img"),
            mnt: env.path().join("fs"),
        };
        fs::File::create(&fs.image)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        run_ok(Command::new("mkfs.btrfs").arg("-q").arg(&fs.image));
        fs::create_dir(&fs.mnt).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "btrfs", "-o", "loop"])
                .arg(&fs.image)
                .arg(&fs.mnt),
        );
        fs
    }

    fn mounted(&self) -> bool {
        let out = Command::new("findmnt")
            .args(["-n", "-o", "FSTYPE"])
            .arg(&self.mnt)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "btrfs"
    }
}

impl Drop for ForeignBtrfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        for device in loops_backing(&self.image) {
            let _ = Command::new("losetup").arg("-d").arg(&device).status();
        }
    }
}

/// Every file below `dir` with its bytes, by relative path.
fn files_under(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let out = run_ok(Command::new("find").arg(dir).args(["-type", "f"]));
    let mut files: Vec<(String, Vec<u8>)> = out
        .lines()
        .map(|p| (p.to_string(), fs::read(p).unwrap()))
        .collect();
    files.sort();
    files
}

#[test]
fn lofile_none_uses_an_existing_btrfs_and_unsetup_leaves_the_rest_of_it() {
    require_btrfs!();
    let env = Env::new();
    let theirs = ForeignBtrfs::new(&env);
    let mnt = &theirs.mnt;
    fs::write(mnt.join("unrelated.txt"), "not genoci's\n").unwrap();
    run_ok(
        Command::new("btrfs")
            .args(["subvolume", "create"])
            .arg(mnt.join("vol")),
    );
    fs::write(mnt.join("vol/data"), vec![42u8; 100_000]).unwrap();
    fs::create_dir(mnt.join("builds")).unwrap();
    fs::write(mnt.join("builds/keep"), "also not genoci's\n").unwrap();
    let before = files_under(mnt);
    let vol_uuid = || {
        run_ok(
            Command::new("btrfs")
                .args(["subvolume", "show"])
                .arg(mnt.join("vol")),
        )
    };
    let vol_before = vol_uuid();

    env.write(
        "atom_config.yaml",
        "driver: btrfs\nlayoutdir: ./oci\nstoredir: ./.genoci\nlofile: none\nbtrfsmount: ./fs/builds\n",
    );
    let out = env.ok(&["setup"]);
    assert!(out.contains("created the subvolume"), "{out}");
    assert!(env.ok(&["setup"]).contains("already set up"));
    let status = env.ok(&["status"]);
    assert!(status.contains("driver:    btrfs"), "{status}");
    assert!(status.contains("no loopback"), "{status}");
    assert_eq!(
        subvolumes(mnt)[..2],
        ["builds/genoci-store", "builds/genoci-store/snapshots/empty"]
    );

    write_spec(&env);
    env.ok(&["build", "spec.yaml"]);
    assert!(
        env.tags().contains(&"undone".to_string()),
        "{:?}",
        env.tags()
    );
    let tree = std::path::PathBuf::from(env.ok(&["checkout", "undone"]).trim());
    assert!(
        tree.starts_with(mnt.join("builds/genoci-store/work")),
        "{}",
        tree.display()
    );
    fs::write(tree.join("by-hand"), "edited by hand\n").unwrap();
    let busy = env.genoci(&["unsetup"]);
    assert_eq!(busy.status.code(), Some(1));
    assert!(stderr(&busy).contains("checkout"), "{}", stderr(&busy));
    env.ok(&["checkin", "by-hand"]);
    assert_eq!(
        fs::read_to_string(env.unpack("by-hand").join("by-hand")).unwrap(),
        "edited by hand\n"
    );
    fs::write(
        env.layout().join("index.json"),
        r#"{"schemaVersion":2,"manifests":[]}"#,
    )
    .unwrap();
    env.ok(&["gc"]);
    assert_eq!(
        subvolumes(mnt),
        [
            "builds/genoci-store",
            "builds/genoci-store/snapshots/empty",
            "vol"
        ]
    );

    env.ok(&["build", "spec.yaml"]);
    let out = env.ok(&["unsetup"]);
    assert!(out.contains("deleted the subvolume"), "{out}");
    assert!(
        theirs.mounted(),
        "unsetup unmounted a filesystem it did not mount"
    );
    assert_eq!(subvolumes(mnt), ["vol"]);
    assert_eq!(files_under(mnt), before);
    assert_eq!(vol_uuid(), vol_before);
    assert!(env.ok(&["unsetup"]).contains("nothing to do"));
    drop(theirs);
    assert_released(env.path());
}

#[test]
fn lofile_none_on_a_filesystem_that_is_not_btrfs_is_a_config_error() {
    require_btrfs!();
    let env = Env::new();
    fs::create_dir(env.path().join("builds")).unwrap();
    env.write(
        "atom_config.yaml",
        "driver: btrfs\nlofile: none\nbtrfsmount: ./builds\n",
    );
    let found = run_ok(
        Command::new("findmnt")
            .args(["-n", "-o", "FSTYPE", "-T"])
            .arg(env.path()),
    );
    for cmd in ["setup", "build", "unsetup", "status"] {
        let out = env.genoci(&[cmd, "spec.yaml"][..if cmd == "build" { 2 } else { 1 }]);
        // A config error is a usage error.
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = stderr(&out);
        assert!(err.contains("key btrfsmount"), "{cmd}: {err}");
        assert!(
            err.contains(&format!("is on {}, not btrfs", found.trim())),
            "{cmd}: {err}"
        );
    }
    assert_eq!(fs::read_dir(env.path().join("builds")).unwrap().count(), 0);
}
