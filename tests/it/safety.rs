//! Hostile input never writes outside the tree, and a failed, interrupted
//! or concurrent build loses nothing: the layout stays valid, earlier
//! targets stay tagged, no work tree or mount is left behind.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::oci::{self, find, paths, top_entries};
use crate::tarball::{self, Kind, Tarball};
use crate::util::{mounts_under, require_root, require_tool, run_ok, stderr, wait_within, Env};

/// Enough `..` to climb from any work tree to `/`.
const UP: &str = "../../../../../../../../../../../..";

/// A directory beside the layout and the store that nothing may touch:
/// it holds one file, `secret`.
struct Outside(PathBuf);

impl Outside {
    fn new(env: &Env) -> Outside {
        let dir = env.path().join("outside");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("secret"), "secret\n").unwrap();
        Outside(dir)
    }

    fn abs(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }

    fn assert_untouched(&self) {
        let names: Vec<String> = fs::read_dir(&self.0)
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["secret"], "something was written outside the tree");
        let secret = self.0.join("secret");
        assert_eq!(fs::read_to_string(&secret).unwrap(), "secret\n");
        assert_eq!(
            fs::metadata(&secret).unwrap().nlink(),
            1,
            "hard-linked from a tree"
        );
    }
}

/// Entries that each try to reach `outside` another way.
fn hostile_entries(t: &mut Tarball, outside: &str) {
    // Inside the tree this is a file of its own, which the hard links
    // below may link to.
    t.add(&format!("{UP}{outside}/secret"), Kind::File(b"inside\n"))
        .add(&format!("{UP}{outside}/dotdot"), Kind::File(b"x"))
        .add(&format!("{outside}/abs"), Kind::File(b"x"))
        .add("esc-abs", Kind::Symlink(outside))
        .add("esc-abs/through-abs", Kind::File(b"x"))
        .add("esc-abs/sub/deep", Kind::File(b"x"))
        .add("esc-rel", Kind::Symlink(&format!("{UP}{outside}")))
        .add("esc-rel/through-rel", Kind::File(b"x"))
        .add("hl", Kind::Hardlink(&format!("{UP}{outside}/secret")))
        .add("hl", Kind::File(b"overwritten\n"))
        .add("hl2", Kind::Hardlink(&format!("{outside}/secret")))
        .add("hl2", Kind::File(b"overwritten\n"));
}

#[test]
fn a_hostile_tarball_never_writes_outside_the_tree() {
    require_root!();
    let env = Env::new();
    let outside = Outside::new(&env);
    let mut t = Tarball::new();
    hostile_entries(&mut t, &outside.abs());
    fs::write(env.path().join("evil.tar.gz"), tarball::gzip(&t.finish())).unwrap();
    env.write(
        "spec.yaml",
        "evil:\n  base: empty\n  expand: ./evil.tar.gz\n",
    );
    let out = env.genoci(&["build", "spec.yaml"]);
    outside.assert_untouched();
    if out.status.success() {
        // What was kept landed inside the image.
        let p = paths(&top_entries(&env, "evil"));
        let inside = outside.abs().trim_start_matches('/').to_string();
        assert!(p.contains(&format!("{inside}/dotdot")), "{p:?}");
        assert!(p.contains(&format!("{inside}/abs")), "{p:?}");
    }
    assert_clean(&env);
}

/// Put an image made of `layers` (plain tar bytes) in the layout as `tag`.
fn add_image(layout: &Path, tag: &str, layers: &[Vec<u8>]) {
    let put = |bytes: &[u8]| -> String {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        fs::write(oci::blob_path(layout, &digest), bytes).unwrap();
        digest
    };
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        let digest = put(layer);
        diff_ids.push(digest.clone());
        layer_descs.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest,
            "size": layer.len(),
        }));
    }
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layers.iter().map(|_| json!({"created_by": "hand made"})).collect::<Vec<_>>(),
    })
    .to_string();
    let config_digest = put(config.as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": layer_descs,
    })
    .to_string();
    let manifest_digest = put(manifest.as_bytes());
    let mut index = oci::index(layout);
    index["manifests"].as_array_mut().unwrap().push(json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }));
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
}

/// An empty layout in the test dir.
fn init_layout(env: &Env) {
    let layout = env.layout();
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    fs::write(
        layout.join("index.json"),
        r#"{"schemaVersion":2,"manifests":[]}"#,
    )
    .unwrap();
}

#[test]
fn a_hostile_layer_never_writes_or_deletes_outside_the_tree() {
    require_root!();
    let env = Env::new();
    init_layout(&env);
    let outside = Outside::new(&env);
    let o = outside.abs();
    let mut first = Tarball::new();
    hostile_entries(&mut first, &o);
    let mut second = Tarball::new();
    // Whiteouts that would delete through the symlinks or climb out.
    second
        .add("esc-abs/.wh.secret", Kind::File(b""))
        .add("esc-rel/.wh.secret", Kind::File(b""))
        .add(&format!("{UP}{o}/.wh.secret"), Kind::File(b""))
        .add(&format!("{o}/.wh.secret"), Kind::File(b""))
        .add("esc-abs/.wh..wh..opq", Kind::File(b""))
        .add("esc-abs/later", Kind::File(b"x"));
    add_image(&env.layout(), "evil", &[first.finish(), second.finish()]);
    env.write("spec.yaml", "t:\n  base: evil\n  env: {X: \"1\"}\n");
    let out = env.genoci(&["build", "spec.yaml"]);
    outside.assert_untouched();
    // Materialising every tag applies the same layers again.
    env.genoci(&["unpack"]);
    outside.assert_untouched();
    assert!(
        out.status.success() || stderr(&out).contains("evil"),
        "a refusal names the image"
    );
    assert_clean(&env);
}

#[test]
fn a_copy_destination_cannot_climb_out_of_the_image() {
    require_root!();
    let env = Env::new();
    let outside = Outside::new(&env);
    env.write("f", "payload\n");
    let mut t = Tarball::new();
    t.add("out", Kind::Symlink(&outside.abs()))
        .add("rel", Kind::Symlink(&format!("{UP}{}", outside.abs())));
    fs::write(env.path().join("links.tar"), t.finish()).unwrap();
    env.write(
        "spec.yaml",
        r#"up:
  base: empty
  copy: ./f ../../x
links:
  base: empty
  expand: ./links.tar
through:
  base: links
  copy:
    - ./f /out/f
    - ./f /rel/g
"#,
    );
    let out = env.genoci(&["build", "spec.yaml"]);
    outside.assert_untouched();
    assert_eq!(find(&top_entries(&env, "up"), "x").data, b"payload\n");
    if out.status.success() {
        let inside = outside.abs().trim_start_matches('/').to_string();
        let p = paths(&top_entries(&env, "through"));
        assert!(p.contains(&format!("{inside}/f")), "{p:?}");
        assert!(p.contains(&format!("{inside}/g")), "{p:?}");
    }
    assert_clean(&env);
}

// ---- 8. nothing lost ----

/// Regression: a base image whose layers could not be applied failed the
/// build with only the file error, naming neither the target nor its base.
#[test]
fn a_base_that_cannot_be_materialised_is_named_with_the_target() {
    require_root!();
    let env = Env::new();
    init_layout(&env);
    let mut t = Tarball::new();
    t.add("dangling", Kind::Hardlink("no-such-file"));
    add_image(&env.layout(), "broken", &[t.finish()]);
    env.write("spec.yaml", "t:\n  base: broken\n  env: {X: \"1\"}\n");
    let out = env.genoci(&["build", "spec.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.lines()
            .any(|l| l.contains("target t") && l.contains("broken") && l.contains("no-such-file")),
        "{err}"
    );
    assert!(env.tags().iter().all(|t| t == "broken"));
    assert_clean(&env);
}

/// No work tree, no mount and no half-written file left; every blob is
/// what its name says; every tag resolves.
fn assert_clean(env: &Env) {
    let work = env.path().join(".genoci/work");
    if work.exists() {
        let left: Vec<_> = fs::read_dir(&work)
            .unwrap()
            .map(|d| d.unwrap().path())
            .collect();
        assert!(left.is_empty(), "work trees left: {left:?}");
    }
    assert_eq!(mounts_under(env.path()), Vec::<String>::new());
    assert_layout_sound(&env.layout());
}

fn assert_layout_sound(layout: &Path) {
    let mut top: Vec<String> = fs::read_dir(layout)
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["blobs", "index.json", "oci-layout"],
        "stray files in the layout"
    );
    for blob in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let blob = blob.unwrap();
        let name = blob.file_name().to_string_lossy().into_owned();
        let hash = hex::encode(Sha256::digest(fs::read(blob.path()).unwrap()));
        assert_eq!(name, hash, "blob {name} is not what its name says");
    }
    for d in oci::index(layout)["manifests"].as_array().unwrap() {
        let m = oci::read_json(&oci::blob_path(layout, d["digest"].as_str().unwrap()));
        assert!(oci::blob_path(layout, m["config"]["digest"].as_str().unwrap()).exists());
        for l in m["layers"].as_array().unwrap() {
            assert!(oci::blob_path(layout, l["digest"].as_str().unwrap()).exists());
        }
    }
}

const CHAIN_SPEC: &str = r#"first:
  base: empty
  expand: ./bb.tar.gz
middle:
  base: first
  run: |
    touch /half-done
    exit 3
last:
  base: middle
  run: touch /never
side:
  base: first
  run: touch /side
"#;

#[test]
fn a_failed_target_keeps_earlier_and_independent_targets_and_nothing_else() {
    require_root!();
    require_tool!("umoci");
    let env = Env::new();
    env.busybox("bb.tar.gz");
    env.write("spec.yaml", CHAIN_SPEC);
    let out = env.genoci(&["build", "spec.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.lines()
            .any(|l| l.contains("middle") && l.contains("run") && l.contains("exit status 3")),
        "{err}"
    );
    assert!(err.contains("last"), "the dependent target is named: {err}");
    let today = oci::today();
    let mut tags = env.tags();
    tags.sort();
    assert_eq!(
        tags,
        [
            "first".to_string(),
            format!("first-{today}_1"),
            "side".into(),
            format!("side-{today}_1")
        ]
    );
    run_ok(
        Command::new("umoci")
            .args(["ls", "--layout"])
            .arg(env.layout()),
    );
    assert_clean(&env);
}

/// Start a build whose `slow` target runs until killed; return once its
/// run step has begun.
fn start_slow_build(env: &Env, spec: &str) -> Child {
    env.busybox("bb.tar.gz");
    env.write(
        spec,
        r#"fast:
  base: empty
  expand: ./bb.tar.gz
slow:
  base: fast
  run: |
    touch /started
    sleep 4
    touch /finished
"#,
    );
    let mut child = env
        .cmd(&["build", spec])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tree = crate::stores::tree_dir(
        &env.path().join(".genoci"),
        &format!("build-{}-slow", child.id()),
    );
    crate::util::wait_for_marker(&mut child, &tree, "started", Duration::from_secs(30));
    child
}

#[test]
fn ctrl_c_discards_the_running_target_and_keeps_the_layout_valid() {
    require_root!();
    let env = Env::new();
    let child = start_slow_build(&env, "spec.yaml");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let started = Instant::now();
    let out = wait_within(child, Duration::from_secs(20));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the run step was not stopped: {:?}",
        started.elapsed()
    );
    let today = oci::today();
    let mut tags = env.tags();
    tags.sort();
    assert_eq!(tags, ["fast".to_string(), format!("fast-{today}_1")]);
    assert_clean(&env);
}

#[test]
fn a_second_build_on_a_busy_layout_runs_beside_the_first_and_both_finish() {
    // Regression: a second genoci on a layout failed at once with
    // "another genoci is using".
    require_root!();
    let env = Env::new();
    let mut first = start_slow_build(&env, "spec.yaml");
    env.write("other.yaml", "other:\n  base: fast\n  run: touch /other\n");
    let out = env.cmd(&["build", "other.yaml"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        first.try_wait().unwrap().is_none(),
        "the second build waited for the first"
    );

    let out = wait_within(first, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(find(&top_entries(&env, "slow"), "finished").data.is_empty());
    assert!(env.tags().iter().any(|t| t == "other"));
    assert!(env.tags().iter().any(|t| t == "slow"));
    assert_clean(&env);
}
