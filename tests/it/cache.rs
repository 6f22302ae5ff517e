//! The build cache: unchanged inputs are not rebuilt; every kind of change
//! to what a target reads is.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use crate::util::{require_root, run_ok, Env};

/// What `genoci build` said of each target: `true` built, `false` cached.
pub fn outcomes(stdout: &str) -> BTreeMap<String, bool> {
    stdout
        .lines()
        .filter_map(|l| {
            let (name, what) = l.split_once(": ")?;
            if what.starts_with("built") {
                Some((name.to_string(), true))
            } else if what.contains("(cached)") {
                Some((name.to_string(), false))
            } else {
                None
            }
        })
        .collect()
}

fn build(env: &Env, spec: &str) -> BTreeMap<String, bool> {
    outcomes(&env.ok(&["build", spec]))
}

fn built(names: &[&str]) -> BTreeMap<String, bool> {
    names.iter().map(|n| (n.to_string(), true)).collect()
}

fn cached(names: &[&str]) -> BTreeMap<String, bool> {
    names.iter().map(|n| (n.to_string(), false)).collect()
}

/// A target copying a host directory into an empty image; built once.
fn copied_dir() -> Env {
    let env = Env::new();
    env.write("files/a", "a\n");
    env.write("files/sub/b", "b\n");
    env.write("spec.yaml", "app:\n  base: empty\n  copy: ./files /srv\n");
    assert_eq!(build(&env, "spec.yaml"), built(&["app"]));
    env
}

#[test]
fn unchanged_inputs_are_not_rebuilt_and_get_no_new_tag() {
    require_root!();
    let env = copied_dir();
    let tags = env.tags();
    let manifest = fs::read_to_string(env.layout().join("index.json")).unwrap();
    assert_eq!(build(&env, "spec.yaml"), cached(&["app"]));
    assert_eq!(env.tags(), tags);
    assert_eq!(
        fs::read_to_string(env.layout().join("index.json")).unwrap(),
        manifest,
        "a cached build leaves index.json as it was"
    );
}

#[test]
fn no_cache_forces_a_rebuild() {
    require_root!();
    let env = copied_dir();
    let out = outcomes(&env.ok(&["build", "--no-cache", "spec.yaml"]));
    assert_eq!(out, built(&["app"]));
    assert!(
        env.tags().iter().any(|t| t.ends_with("_2")),
        "a new dated tag"
    );
}

#[test]
fn changed_file_content_is_rebuilt() {
    require_root!();
    let env = copied_dir();
    // Same size: the key reads content, not sizes or times.
    env.write("files/sub/b", "c\n");
    assert_eq!(build(&env, "spec.yaml"), built(&["app"]));
    let rootfs = env.unpack("app");
    assert_eq!(fs::read_to_string(rootfs.join("srv/sub/b")).unwrap(), "c\n");
}

#[test]
fn chmod_only_change_is_rebuilt() {
    require_root!();
    let env = copied_dir();
    let a = env.path().join("files/a");
    fs::set_permissions(&a, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(build(&env, "spec.yaml"), built(&["app"]));
}

/// Copies are owned by root: a host owner never reaches the image, so a
/// change of it alone is no reason to rebuild.
#[test]
fn owner_only_change_of_a_copied_file_is_cached() {
    require_root!();
    let env = copied_dir();
    std::os::unix::fs::chown(env.path().join("files/a"), Some(1234), Some(1234)).unwrap();
    assert_eq!(build(&env, "spec.yaml"), cached(&["app"]));
}

#[test]
fn file_added_to_a_copied_directory_is_rebuilt() {
    require_root!();
    let env = copied_dir();
    env.write("files/sub/new", "");
    assert_eq!(build(&env, "spec.yaml"), built(&["app"]));
    assert_eq!(build(&env, "spec.yaml"), cached(&["app"]));
}

#[test]
fn file_removed_from_a_copied_directory_is_rebuilt() {
    require_root!();
    let env = copied_dir();
    fs::remove_file(env.path().join("files/sub/b")).unwrap();
    assert_eq!(build(&env, "spec.yaml"), built(&["app"]));
    assert!(!env.unpack("app").join("srv/sub/b").exists());
}

#[test]
fn edited_stanza_is_rebuilt() {
    require_root!();
    let env = copied_dir();
    env.write(
        "spec.yaml",
        "app:\n  base: empty\n  copy: ./files /srv\n  env:\n    A: \"1\"\n",
    );
    assert_eq!(build(&env, "spec.yaml"), built(&["app"]));
}

#[test]
fn rebuilt_base_rebuilds_what_is_built_on_it() {
    require_root!();
    let env = Env::new();
    env.write("lower/a", "a\n");
    env.write("upper/b", "b\n");
    env.write(
        "spec.yaml",
        "base:\n  base: empty\n  copy: ./lower /\napp:\n  base: base\n  copy: ./upper /\n",
    );
    assert_eq!(build(&env, "spec.yaml"), built(&["base", "app"]));
    assert_eq!(build(&env, "spec.yaml"), cached(&["base", "app"]));
    // Only the base's input changes: app's own stanza and files do not.
    env.write("lower/a", "A\n");
    assert_eq!(build(&env, "spec.yaml"), built(&["base", "app"]));
    // A base that changes only its config is a new base image too.
    env.write(
        "spec.yaml",
        "base:\n  base: empty\n  copy: ./lower /\n  env:\n    A: \"1\"\napp:\n  base: base\n  copy: ./upper /\n",
    );
    assert_eq!(build(&env, "spec.yaml"), built(&["base", "app"]));
}

#[test]
fn changed_tarball_and_run_script_are_rebuilt() {
    require_root!();
    let env = Env::new();
    env.busybox("rootfs.tar.gz");
    env.write("script.sh", "#!/bin/sh\necho one > /from-script\n");
    fs::set_permissions(
        env.path().join("script.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    env.write(
        "spec.yaml",
        "os:\n  base: empty\n  expand: ./rootfs.tar.gz\napp:\n  base: os\n  run: ./script.sh\n",
    );
    assert_eq!(build(&env, "spec.yaml"), built(&["os", "app"]));

    env.write("script.sh", "#!/bin/sh\necho two > /from-script\n");
    let mut expected = cached(&["os"]);
    expected.insert("app".into(), true);
    assert_eq!(build(&env, "spec.yaml"), expected);
    assert_eq!(
        fs::read_to_string(env.unpack("app").join("from-script")).unwrap(),
        "two\n"
    );

    // A different tarball under the same name: one more file in it.
    let tree = env.path().join("tree");
    fs::create_dir(&tree).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xzf")
            .arg(env.path().join("rootfs.tar.gz"))
            .arg("-C")
            .arg(&tree),
    );
    fs::write(tree.join("etc/extra"), "x").unwrap();
    run_ok(
        Command::new("tar")
            .arg("-czf")
            .arg(env.path().join("rootfs.tar.gz"))
            .arg("-C")
            .arg(&tree)
            .arg("."),
    );
    assert_eq!(build(&env, "spec.yaml"), built(&["os", "app"]));
}

#[test]
fn moved_tag_is_rebuilt() {
    require_root!();
    let env = Env::new();
    env.write("a/x", "x\n");
    env.write("b/y", "y\n");
    env.write(
        "spec.yaml",
        "one:\n  base: empty\n  copy: ./a /\ntwo:\n  base: empty\n  copy: ./b /\n",
    );
    assert_eq!(build(&env, "spec.yaml"), built(&["one", "two"]));
    // `one` now names another image (a checkin under its name): the cache
    // must not trust its record.
    let tree = env.ok(&["checkout", "two"]);
    assert!(!tree.trim().is_empty());
    env.ok(&["checkin", "one"]);
    assert_eq!(build(&env, "spec.yaml"), {
        let mut m = cached(&["two"]);
        m.insert("one".into(), true);
        m
    });
    assert!(env.unpack("one").join("x").exists());
}

/// An uncompressed tarball of one 100,000-byte file of `byte`: the same
/// size whatever the byte.
fn tarball_of(env: &Env, name: &str, byte: u8) {
    let tree = env.path().join(format!("tree-{byte}"));
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("data"), vec![byte; 100_000]).unwrap();
    run_ok(
        Command::new("tar")
            .args([
                "--mtime=@0",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "-cf",
            ])
            .arg(env.path().join(name))
            .arg("-C")
            .arg(&tree)
            .arg("data"),
    );
}

#[test]
fn an_unchanged_tarball_is_not_read_again_and_a_rewrite_keeping_size_and_mtime_is_seen() {
    require_root!();
    let env = Env::new();
    tarball_of(&env, "t.tar", b'a');
    tarball_of(&env, "other.tar", b'b');
    // Older than a timestamp tick when hashed: a digest is remembered.
    std::thread::sleep(std::time::Duration::from_millis(200));
    env.write("spec.yaml", "os:\n  base: empty\n  expand: ./t.tar\n");
    assert_eq!(build(&env, "spec.yaml"), built(&["os"]));

    let out = env.genoci(&["-v", "build", "spec.yaml"]);
    assert!(out.status.success());
    assert_eq!(
        outcomes(&String::from_utf8_lossy(&out.stdout)),
        cached(&["os"])
    );
    let log = crate::util::stderr(&out);
    assert!(
        log.contains("input files read for cache keys files=0"),
        "{log}"
    );

    // The same size, the bytes of the other tarball, the old mtime back.
    let tarball = env.path().join("t.tar");
    let before = fs::metadata(&tarball).unwrap();
    fs::write(&tarball, fs::read(env.path().join("other.tar")).unwrap()).unwrap();
    let mtime = format!("@{}.{:09}", before.mtime(), before.mtime_nsec());
    run_ok(
        Command::new("touch")
            .args(["-m", "-d", &mtime])
            .arg(&tarball),
    );
    let after = fs::metadata(&tarball).unwrap();
    assert_eq!(
        (after.len(), after.mtime(), after.mtime_nsec(), after.ino()),
        (
            before.len(),
            before.mtime(),
            before.mtime_nsec(),
            before.ino()
        )
    );
    assert_eq!(build(&env, "spec.yaml"), built(&["os"]));
    assert_eq!(
        fs::read(env.unpack("os").join("data")).unwrap(),
        vec![b'b'; 100_000]
    );
}
