//! The build itself: spec checks, the actions and config keys, the `run`
//! sandbox, and the layers and tags a build leaves.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use serde_json::{json, Value};

use crate::oci::{self, find, paths, top_entries};
use crate::tarball::{self, Kind, Tarball};
use crate::util::{require_root, require_tool, stderr, Env};

fn output(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---- 3. the spec is checked whole before anything is built ----

const BAD_SPEC: &str = r#"ok:
  base: empty
  expand: ./bb.tar.gz
a:
  base: ok
  bogus: 1
b:
  base: nothere
  run: "true"
c:
  base: d
  run: "true"
d:
  base: c
  run: "true"
"Bad Name":
  base: empty
  run: "true"
e:
  base: empty
  copy: ./missing /x
f:
  base: ok
g:
  run: "true"
h:
  base: empty
  expand: ./absent.tar.gz
"#;

#[test]
fn every_spec_problem_is_reported_with_its_line_and_nothing_is_built() {
    require_root!();
    let env = Env::new();
    env.busybox("bb.tar.gz");
    env.write("spec.yaml", BAD_SPEC);
    let out = env.genoci(&["build", "spec.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for (line, words) in [
        (6, &["target a", "bogus"][..]),
        (8, &["target b", "nothere"]),
        (11, &["c -> d -> c"]),
        (16, &["Bad Name"]),
        (21, &["target e", "copy", "missing"]),
        (22, &["target f", "nothing to do"]),
        (24, &["target g", "base"]),
        (28, &["target h", "expand", "absent.tar.gz"]),
    ] {
        let hit = err
            .lines()
            .find(|l| l.contains(&format!("spec.yaml:{line}:")))
            .unwrap_or_else(|| panic!("no problem reported at line {line}:\n{err}"));
        for w in words {
            assert!(hit.contains(w), "line {line} should mention {w}: {hit}");
        }
    }
    // The good target `ok` was not built either.
    assert!(
        !env.layout().exists(),
        "a rejected spec must not create a layout"
    );
}

#[test]
fn targets_build_in_dependency_order_whatever_the_spec_order() {
    require_root!();
    let env = Env::new();
    env.busybox("bb.tar.gz");
    env.write(
        "spec.yaml",
        r#"top:
  base: mid
  run: echo top >> /order
mid:
  base: bottom
  run: echo mid >> /order
bottom:
  base: empty
  expand: ./bb.tar.gz
  run: echo bottom >> /order
"#,
    );
    env.ok(&["build", "spec.yaml"]);
    let top = top_entries(&env, "top");
    assert_eq!(find(&top, "order").data, b"bottom\nmid\ntop\n");
    assert_eq!(oci::layers(&env.layout(), "top").len(), 3);
}

// ---- 4. actions and config keys ----

/// A tarball with everything `expand` must keep.
fn rich_tarball() -> Vec<u8> {
    let mut t = Tarball::new();
    t.add("etc/", Kind::Dir)
        .xattr("user.note", b"kept")
        .add_as("etc/secret", Kind::File(b"s3cret"), 0o640, 1234, 5678)
        .add("etc/hard", Kind::Hardlink("etc/secret"))
        .add("etc/link", Kind::Symlink("secret"))
        .add("dev/", Kind::Dir)
        .add_as("dev/null2", Kind::Char(1, 3), 0o666, 0, 0)
        .add_as("dev/loopish", Kind::Block(7, 9), 0o660, 0, 6)
        .add("dev/fifo", Kind::Fifo)
        .add("bin/", Kind::Dir)
        .add_as("bin/tool", Kind::File(b"#!/bin/sh\n"), 0o4755, 0, 0);
    t.finish()
}

#[test]
fn expand_reads_every_compression_and_keeps_owners_modes_xattrs_links_and_devices() {
    require_root!();
    let env = Env::new();
    let tar = rich_tarball();
    fs::write(env.path().join("t.tar"), &tar).unwrap();
    fs::write(env.path().join("t.tar.gz"), tarball::gzip(&tar)).unwrap();
    // Names that lie: the format is found by magic bytes.
    fs::write(env.path().join("t.xz.bin"), tarball::xz(&tar)).unwrap();
    fs::write(env.path().join("t.tar.bz2"), tarball::bzip2(&tar)).unwrap();
    fs::write(env.path().join("t.tar.zst"), tarball::zstd(&tar)).unwrap();
    env.write(
        "spec.yaml",
        r#"plain:
  base: empty
  expand: ./t.tar
gz:
  base: empty
  expand: ./t.tar.gz
xz:
  base: empty
  expand: ./t.xz.bin
bz2:
  base: empty
  expand: ./t.tar.bz2
zst:
  base: empty
  expand: ./t.tar.zst
"#,
    );
    let out = env
        .cmd(&["build", "spec.yaml"])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output(&out));

    // Same content, however it was packed: the same layer.
    let layer = oci::layers(&env.layout(), "plain");
    for tag in ["gz", "xz", "bz2", "zst"] {
        assert_eq!(oci::layers(&env.layout(), tag), layer, "{tag}");
    }

    let e = top_entries(&env, "gz");
    // The two names of one file: the first in the layer holds the data,
    // the other links to it.
    let (file, other) = match find(&e, "etc/hard").kind {
        tar::EntryType::Link => ("etc/secret", "etc/hard"),
        _ => ("etc/hard", "etc/secret"),
    };
    let secret = find(&e, file);
    assert_eq!(
        (secret.uid, secret.gid, secret.mode & 0o7777),
        (1234, 5678, 0o640)
    );
    assert_eq!(secret.data, b"s3cret");
    assert_eq!(
        secret.xattrs.get("user.note").map(Vec::as_slice),
        Some(&b"kept"[..])
    );
    let hard = find(&e, other);
    assert_eq!(hard.kind, tar::EntryType::Link);
    assert_eq!(
        hard.link.as_deref().map(|l| l.trim_start_matches('/')),
        Some(file)
    );
    let link = find(&e, "etc/link");
    assert_eq!(
        (link.kind, link.link.as_deref()),
        (tar::EntryType::Symlink, Some("secret"))
    );
    let null2 = find(&e, "dev/null2");
    assert_eq!(
        (null2.kind, null2.dev, null2.mode & 0o777),
        (tar::EntryType::Char, (1, 3), 0o666)
    );
    let blk = find(&e, "dev/loopish");
    assert_eq!(
        (blk.kind, blk.dev, blk.gid),
        (tar::EntryType::Block, (7, 9), 6)
    );
    assert_eq!(find(&e, "dev/fifo").kind, tar::EntryType::Fifo);
    assert_eq!(find(&e, "bin/tool").mode & 0o7777, 0o4755);
}

#[test]
fn copy_takes_files_and_directories_one_pair_or_a_list() {
    require_root!();
    let env = Env::new();
    env.write("files/one.txt", "one\n");
    env.write("tree/a.txt", "a\n");
    env.write("tree/sub/b.txt", "b\n");
    let exec = env.write("tree/sub/exec.sh", "#!/bin/sh\n");
    fs::set_permissions(&exec, fs::Permissions::from_mode(0o755)).unwrap();
    // Copies belong to root, whoever owns them on the host.
    std::os::unix::fs::chown(env.path().join("tree/a.txt"), Some(1000), Some(1000)).unwrap();
    env.write(
        "spec.yaml",
        r#"c1:
  base: empty
  copy: ./files/one.txt /etc/one.conf
c2:
  base: c1
  copy:
    - ./tree /opt/tree
    - ./files/one.txt /opt/
"#,
    );
    env.ok(&["build", "spec.yaml"]);
    let c1 = top_entries(&env, "c1");
    assert_eq!(find(&c1, "etc/one.conf").data, b"one\n");
    let c2 = top_entries(&env, "c2");
    let a = find(&c2, "opt/tree/a.txt");
    assert_eq!((a.uid, a.gid, a.data.as_slice()), (0, 0, &b"a\n"[..]));
    assert_eq!(find(&c2, "opt/tree/sub/b.txt").data, b"b\n");
    assert_eq!(find(&c2, "opt/tree/sub/exec.sh").mode & 0o777, 0o755);
    assert_eq!(find(&c2, "opt/one.txt").data, b"one\n");
    assert!(
        !paths(&c2).iter().any(|p| p.starts_with("etc")),
        "c2's layer holds only its own copies: {:?}",
        paths(&c2)
    );
}

#[test]
fn run_takes_inline_scripts_and_host_files_which_do_not_stay() {
    require_root!();
    let env = Env::new();
    env.busybox("bb.tar.gz");
    let script = env.write(
        "make-marker.sh",
        "#!/bin/sh\necho \"from script, args: $#\" > /from-script\n",
    );
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    env.write(
        "spec.yaml",
        r#"base:
  base: empty
  expand: ./bb.tar.gz
r:
  base: base
  run:
    - ./make-marker.sh
    - |
      test -f /from-script
      echo inline > /from-inline
"#,
    );
    env.ok(&["build", "spec.yaml"]);
    let e = top_entries(&env, "r");
    assert_eq!(find(&e, "from-script").data, b"from script, args: 0\n");
    assert_eq!(find(&e, "from-inline").data, b"inline\n");
    assert!(
        !paths(&e).iter().any(|p| p.contains("make-marker")),
        "the host script stays out of the layer: {:?}",
        paths(&e)
    );
}

#[test]
fn config_keys_are_set_inherited_and_overridden() {
    require_root!();
    let env = Env::new();
    env.busybox("bb.tar.gz");
    env.write(
        "spec.yaml",
        r#"base:
  base: empty
  expand: ./bb.tar.gz
  # The fixture's / is 0700 (made by mktemp): user 1000 below needs to enter it.
  run: mkdir -p /srv && chmod 755 /
  entrypoint: /bin/sh -c "echo hi"
  cmd: ["--x"]
  env: {A: "1", B: "2"}
  workdir: /srv
  user: "1000:1000"
  labels: {l1: v1}
  volumes: [/data]
  ports: [80, "53/udp"]
  annotations: {org.example.a: x}
child:
  base: base
  env: {B: "3"}
  labels: {l2: v2}
  cmd: ["sh"]
  run: echo "$A $B $(pwd) $(id -u):$(id -g)" > /tmp/seen
newentry:
  base: base
  entrypoint: ["/bin/true"]
"#,
    );
    env.ok(&["build", "spec.yaml"]);
    let layout = env.layout();
    let base = oci::config(&layout, "base")["config"].clone();
    assert_eq!(base["Entrypoint"], json!(["/bin/sh", "-c", "echo hi"]));
    assert_eq!(base["Cmd"], json!(["--x"]));
    let env_of = |c: &Value| -> Vec<String> {
        c["Env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let base_env = env_of(&base);
    assert!(
        base_env.contains(&"A=1".into()) && base_env.contains(&"B=2".into()),
        "{base_env:?}"
    );
    assert_eq!(base["WorkingDir"], "/srv");
    assert_eq!(base["User"], "1000:1000");
    assert_eq!(base["Labels"], json!({"l1": "v1"}));
    assert_eq!(base["Volumes"], json!({"/data": {}}));
    assert_eq!(base["ExposedPorts"], json!({"80/tcp": {}, "53/udp": {}}));
    assert_eq!(
        oci::manifest(&layout, "base")["annotations"]["org.example.a"],
        "x"
    );

    let child = oci::config(&layout, "child")["config"].clone();
    let child_env = env_of(&child);
    assert!(
        child_env.contains(&"A=1".into()) && child_env.contains(&"B=3".into()),
        "{child_env:?}"
    );
    assert!(!child_env.contains(&"B=2".into()), "{child_env:?}");
    assert_eq!(child["Entrypoint"], base["Entrypoint"]);
    assert_eq!(child["Cmd"], json!(["sh"]));
    assert_eq!(child["WorkingDir"], "/srv");
    assert_eq!(child["User"], "1000:1000");
    assert_eq!(child["Labels"], json!({"l1": "v1", "l2": "v2"}));
    assert_eq!(child["Volumes"], base["Volumes"]);
    assert_eq!(child["ExposedPorts"], base["ExposedPorts"]);
    assert_eq!(
        oci::manifest(&layout, "child")["annotations"]["org.example.a"],
        "x"
    );
    // The run step saw the base's environment, working directory and user.
    assert_eq!(
        find(&top_entries(&env, "child"), "tmp/seen").data,
        b"1 2 /srv 1000:1000\n"
    );

    // A new entrypoint drops the inherited command.
    let newentry = oci::config(&layout, "newentry")["config"].clone();
    assert_eq!(newentry["Entrypoint"], json!(["/bin/true"]));
    assert!(newentry["Cmd"].is_null(), "{newentry}");
}

/// Regression: a truncated tarball said its step twice
/// (`expand X: expand X: read X: incomplete deflate stream`). The target is
/// named once, by the builder; the step once; the failed read once.
#[test]
fn a_truncated_tarball_is_reported_with_each_part_once() {
    require_root!();
    let env = Env::new();
    // Bytes that do not repeat, so that half the gzip is half the data.
    let data: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut t = Tarball::new();
    t.add("big", Kind::File(&data));
    let gz = tarball::gzip(&t.finish());
    let cut = env.path().join("cut.tar.gz");
    fs::write(&cut, &gz[..gz.len() / 2]).unwrap();
    env.write(
        "spec.yaml",
        "half:\n  base: empty\n  expand: ./cut.tar.gz\n",
    );
    let out = env.genoci(&["build", "spec.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let cut = cut.display();
    let expected = format!(
        "genoci: error: 1 of 1 targets failed:\n  \
         target half: expand {cut}: read {cut}: incomplete deflate stream"
    );
    assert!(err.contains(&expected), "{err}");
    let line = err.lines().find(|l| l.contains("target half:")).unwrap();
    let parts: Vec<&str> = line.split(": ").collect();
    let once: std::collections::BTreeSet<&str> = parts.iter().copied().collect();
    assert_eq!(once.len(), parts.len(), "a part is said twice: {line}");
}

// ---- 5. run in a sandbox ----

#[test]
fn run_is_isolated_from_the_host_and_leaves_nothing_of_the_sandbox() {
    require_root!();
    let env = Env::new();
    env.busybox("bb.tar.gz");
    let host_dir = env.path().join("host");
    fs::create_dir(&host_dir).unwrap();
    fs::write(host_dir.join("marker"), "host\n").unwrap();
    let host = host_dir.display();
    env.write(
        "spec.yaml",
        &format!(
            r#"base:
  base: empty
  expand: ./bb.tar.gz
s:
  base: base
  run: |
    for n in mnt pid uts ipc; do readlink /proc/self/ns/$n; done > /ns
    # As in a docker container: no CAP_SYS_ADMIN, no sethostname.
    ! hostname sandboxed 2>/dev/null
    test ! -e {host}/marker
    mkdir -p {host} && echo changed > {host}/marker
    ls /proc | grep -c '^[0-9]' > /nprocs
    ls /dev > /devlist
    test -c /dev/null && echo gone > /dev/null
    test -x /bin/busybox
    mount | grep -q ' /proc '
"#
        ),
    );
    let hostname = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    env.ok(&["build", "spec.yaml"]);

    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        hostname
    );
    assert_eq!(
        fs::read_to_string(host_dir.join("marker")).unwrap(),
        "host\n"
    );

    let e = top_entries(&env, "s");
    let ns = String::from_utf8(find(&e, "ns").data.clone()).unwrap();
    for (n, inside) in ["mnt", "pid", "uts", "ipc"].iter().zip(ns.lines()) {
        let outside = fs::read_link(format!("/proc/self/ns/{n}")).unwrap();
        assert_ne!(
            inside,
            outside.to_string_lossy(),
            "{n} namespace is the host's"
        );
    }
    let nprocs: u32 = String::from_utf8_lossy(&find(&e, "nprocs").data)
        .trim()
        .parse()
        .unwrap();
    assert!(
        nprocs < 8,
        "the sandbox sees {nprocs} processes: not a fresh /proc"
    );
    let dev = String::from_utf8(find(&e, "devlist").data.clone()).unwrap();
    let dev: Vec<&str> = dev.lines().collect();
    for want in ["null", "zero", "urandom"] {
        assert!(dev.contains(&want), "no /dev/{want} in {dev:?}");
    }
    assert!(
        dev.len() < 25 && !dev.iter().any(|d| d.starts_with("loop")),
        "{dev:?}"
    );

    // The write to the "host" path landed in the tree; the sandbox's own
    // /proc, /dev and resolv.conf did not.
    let p = paths(&e);
    let in_tree = format!(
        "{}/marker",
        host_dir.to_string_lossy().trim_start_matches('/')
    );
    assert!(p.contains(&in_tree), "{p:?}");
    for path in &p {
        assert!(
            !path.starts_with("proc/") && !path.starts_with("dev/") && !path.starts_with("sys/"),
            "sandbox leftovers in the layer: {p:?}"
        );
        assert_ne!(path, "etc/resolv.conf", "{p:?}");
    }
}

#[test]
fn a_failed_run_reports_target_status_and_output() {
    require_root!();
    let env = Env::new();
    env.busybox("bb.tar.gz");
    env.write(
        "spec.yaml",
        r#"base:
  base: empty
  expand: ./bb.tar.gz
loud:
  base: base
  run: |
    echo to-stdout
    echo to-stderr >&2
    exit 7
strict:
  base: base
  run: |
    false
    touch /after
"#,
    );
    let out = env.genoci(&["build", "-j", "1", "spec.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let all = output(&out);
    let err = stderr(&out);
    // The step's output, marked with its target.
    assert!(
        all.contains("[loud] to-stdout") && all.contains("[loud] to-stderr"),
        "{all}"
    );
    let summary = &err[err.find("genoci: error:").expect("a final error")..];
    let loud = summary
        .lines()
        .find(|l| l.contains("loud"))
        .unwrap_or_else(|| panic!("the error does not name loud:\n{summary}"));
    assert!(
        loud.contains("run step 1") && loud.contains("exit status 7"),
        "{loud}"
    );
    // Regression: the target was named twice ("target loud: run: target loud: run step 1").
    assert_eq!(loud.matches("loud").count(), 1, "{loud}");
    assert!(
        err.lines()
            .any(|l| l.contains("strict") && l.contains("exit status 1")),
        "`sh -e` stops at the first failing command:\n{err}"
    );
    assert_eq!(
        {
            let mut t = env.tags();
            t.retain(|t| !t.starts_with("base"));
            t
        },
        Vec::<String>::new()
    );
}

// ---- 6. layers and tags ----

#[test]
fn a_layer_holds_only_the_changes_with_whiteouts_and_opaque_dirs() {
    require_root!();
    require_tool!("umoci");
    let env = Env::new();
    env.busybox("bb.tar.gz");
    env.write(
        "spec.yaml",
        r#"base:
  base: empty
  expand: ./bb.tar.gz
  run: |
    mkdir -p /w/keepdir /w/gone-dir/sub /w/opq/inner
    echo AAAA > /w/same
    echo x > /w/gone-file
    touch /w/gone-dir/sub/f /w/opq/old /w/opq/inner/old
    echo keep > /w/keep
    mkdir /w/to-file && touch /w/to-file/f
child:
  base: base
  run: |
    rm /w/gone-file
    rm -rf /w/gone-dir
    rm -rf /w/opq && mkdir /w/opq && echo new > /w/opq/new
    cp -p /w/same /w/.ref && echo BBBB > /w/same && touch -r /w/.ref /w/same && rm /w/.ref
    rm -rf /w/to-file && echo now-a-file > /w/to-file
"#,
    );
    env.ok(&["build", "spec.yaml"]);
    let e = top_entries(&env, "child");
    let p = paths(&e);
    for want in [
        "w/.wh.gone-file",
        "w/.wh.gone-dir",
        "w/opq/new",
        "w/same",
        "w/to-file",
    ] {
        assert!(p.contains(&want.to_string()), "no {want} in {p:?}");
    }
    assert_eq!(
        find(&e, "w/same").data,
        b"BBBB\n",
        "a same-size same-mtime rewrite"
    );
    assert_eq!(find(&e, "w/to-file").kind, tar::EntryType::Regular);
    // The recreated directory hides all it held before.
    let hides_old = p.contains(&"w/opq/.wh..wh..opq".to_string())
        || (p.contains(&"w/opq/.wh.old".to_string()) && p.contains(&"w/opq/.wh.inner".to_string()));
    assert!(hides_old, "w/opq does not hide its old content: {p:?}");
    for unchanged in [
        "w/keep",
        "w/keepdir",
        "bin/busybox",
        "w/gone-dir/sub",
        "w/to-file/f",
    ] {
        assert!(
            !p.iter().any(|x| x.starts_with(unchanged)),
            "{unchanged} in {p:?}"
        );
    }
    assert!(!p.iter().any(|x| x.contains(".ref")), "{p:?}");

    let rootfs = env.unpack("child");
    let w = rootfs.join("w");
    let mut names: Vec<String> = fs::read_dir(&w)
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["keep", "keepdir", "opq", "same", "to-file"]);
    let opq: Vec<_> = fs::read_dir(w.join("opq")).unwrap().collect();
    assert_eq!(opq.len(), 1);
    assert_eq!(fs::read_to_string(w.join("same")).unwrap(), "BBBB\n");
    assert_eq!(
        fs::read_to_string(w.join("to-file")).unwrap(),
        "now-a-file\n"
    );
}

#[test]
fn no_layer_for_no_change_history_matches_and_tags_are_named_and_dated() {
    require_root!();
    let env = Env::new();
    env.busybox("bb.tar.gz");
    env.write(
        "spec.yaml",
        r#"base:
  base: empty
  expand: ./bb.tar.gz
noop:
  base: base
  run: "true"
cfg:
  base: noop
  env: {X: "1"}
one:
  base: cfg
  run: touch /one
"#,
    );
    env.ok(&["build", "spec.yaml"]);
    let layout = env.layout();
    let base_layers = oci::layers(&layout, "base");
    assert_eq!(base_layers.len(), 1);
    assert_eq!(
        oci::layers(&layout, "noop"),
        base_layers,
        "run: true adds no layer"
    );
    assert_eq!(
        oci::layers(&layout, "cfg"),
        base_layers,
        "config keys add no layer"
    );
    assert_eq!(oci::layers(&layout, "one").len(), 2);

    for (tag, targets) in [("base", 1), ("noop", 2), ("cfg", 3), ("one", 4)] {
        let cfg = oci::config(&layout, tag);
        let history = cfg["history"].as_array().unwrap();
        assert_eq!(history.len(), targets, "{tag}: {history:?}");
        let with_layer = history
            .iter()
            .filter(|h| h["empty_layer"] != json!(true))
            .count();
        assert_eq!(
            with_layer,
            oci::layers(&layout, tag).len(),
            "{tag}: {history:?}"
        );
        assert_eq!(
            cfg["rootfs"]["diff_ids"].as_array().unwrap().len(),
            with_layer,
            "{tag}"
        );
        let last = history.last().unwrap();
        assert!(last["created_by"]
            .as_str()
            .unwrap()
            .contains(&format!("genoci build {tag}")));
    }
    let noop_history = oci::config(&layout, "noop")["history"].clone();
    assert_eq!(noop_history[1]["empty_layer"], json!(true));

    let today = oci::today();
    let mut want: Vec<String> = ["base", "noop", "cfg", "one"]
        .iter()
        .flat_map(|t| [t.to_string(), format!("{t}-{today}_1")])
        .collect();
    want.sort();
    let mut tags = env.tags();
    tags.sort();
    assert_eq!(tags, want, "no `empty` tag, one dated tag per build");
}

const REPRO_SPEC: &str = r#"base:
  base: empty
  expand: ./bb.tar.gz
app:
  base: base
  copy: ./app.conf /etc/app.conf
  run: |
    mkdir -p /var/lib/app && echo made > /var/lib/app/stamp-is-clamped
    rm -f /bin/vi
  entrypoint: ["/bin/sh"]
cfg:
  base: app
  labels: {k: v}
"#;

#[test]
fn source_date_epoch_gives_the_same_digests_in_two_builds() {
    require_root!();
    let mut digests = Vec::new();
    for _ in 0..2 {
        let env = Env::new();
        env.busybox("bb.tar.gz");
        env.write("app.conf", "setting = 1\n");
        env.write("spec.yaml", REPRO_SPEC);
        let out = env
            .cmd(&["build", "spec.yaml"])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output(&out));
        let layout = env.layout();
        let of_tags: Vec<String> = ["base", "app", "cfg"]
            .iter()
            .map(|t| oci::manifest_digest(&layout, t))
            .collect();

        assert_eq!(
            oci::config(&layout, "app")["created"],
            "2023-11-14T22:13:20Z"
        );
        for layer in oci::layers(&layout, "app") {
            let blob = fs::read(oci::blob_path(&layout, &layer)).unwrap();
            // gzip: no file name flag, no time.
            assert_eq!(&blob[..3], &[0x1f, 0x8b, 8]);
            assert_eq!(blob[3] & 0x08, 0, "gzip header holds a name");
            assert_eq!(&blob[4..8], &[0, 0, 0, 0], "gzip header holds a time");
            for e in oci::entries(&layout, &layer) {
                assert!(
                    e.mtime <= 1_700_000_000,
                    "{} not clamped: {}",
                    e.path,
                    e.mtime
                );
            }
        }
        digests.push(of_tags);
        // Ensure the second build happens at another second.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(digests[0], digests[1]);
}

/// Regression: two targets on one base that the store did not hold yet both
/// rebuilt it from its layers at once, in the same work tree, and failed.
#[test]
fn two_targets_on_a_base_missing_from_the_store_both_build() {
    require_root!();
    let first = Env::new();
    first.busybox("bb.tar.gz");
    first.write("spec.yaml", "base:\n  base: empty\n  expand: ./bb.tar.gz\n");
    first.ok(&["build", "spec.yaml"]);

    // The same layout, a fresh store.
    let env = Env::new();
    crate::util::run_ok(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(first.layout())
            .arg(env.layout()),
    );
    env.write(
        "spec.yaml",
        "one:\n  base: base\n  run: touch /one\ntwo:\n  base: base\n  run: touch /two\nthree:\n  base: base\n  run: touch /three\n",
    );
    env.ok(&["build", "-j", "3", "spec.yaml"]);
    for t in ["one", "two", "three"] {
        assert_eq!(paths(&top_entries(&env, t)), [t]);
    }
}
