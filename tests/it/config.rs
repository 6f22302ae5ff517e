//! Image configs as Dockerfile users expect them: each case is a target
//! built by genoci, the config fields docker semantics give, the same
//! target written as a Dockerfile and built by buildah (where buildah
//! follows docker), and what `podman run` prints.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};

use crate::interop::Podman;
use crate::oci::{self, paths, top_entries};
use crate::util::{have, mounts_under, require_root, run_ok, stderr, Env};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The base every case but one builds on: busybox, a workdir and a variable.
const BASE: &str = r#"bb:
  base: empty
  expand: ./bb.tar.gz
  workdir: /app
  env: {A: base}
"#;

struct Case {
    target: &'static str,
    /// The target's keys (its base is `bb` unless they say otherwise).
    keys: &'static str,
    /// The same as a Dockerfile; `{base}` is the base image. `None` where
    /// buildah does not do what docker does.
    dockerfile: Option<&'static str>,
    /// JSON pointers into the image config and the values docker gives.
    fields: Vec<(&'static str, Value)>,
    /// What `podman run IMAGE` prints.
    podman: Option<&'static str>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            target: "relative-workdir",
            keys: "workdir: sub\n  cmd: [pwd]\n",
            dockerfile: Some("FROM {base}\nWORKDIR sub\nCMD [\"pwd\"]\n"),
            fields: vec![("/config/WorkingDir", json!("/app/sub"))],
            podman: Some("/app/sub\n"),
        },
        Case {
            target: "workdir-vars-and-dots",
            keys: "env: {D: srv}\n  workdir: ../$D/${A}/./x/..\n",
            dockerfile: Some("FROM {base}\nENV D=srv\nWORKDIR ../$D/${A}/./x/..\n"),
            fields: vec![("/config/WorkingDir", json!("/srv/base"))],
            podman: None,
        },
        Case {
            target: "path-appended",
            keys: "copy: ./hello /opt/bin/hello\n  env: {PATH: \"$PATH:/opt/bin\"}\n  cmd: [hello]\n",
            dockerfile: Some(
                "FROM {base}\nCOPY hello /opt/bin/hello\nENV PATH=$PATH:/opt/bin\nCMD [\"hello\"]\n",
            ),
            fields: vec![(
                "/config/Env",
                json!([format!("PATH={DEFAULT_PATH}:/opt/bin"), "A=base"]),
            )],
            podman: Some("hello from /opt/bin\n"),
        },
        Case {
            target: "env-forms-in-order",
            keys: r#"env:
    A: "${A}2"
    B: "$A|${NOPE:-dflt}|${A:+set}|${NOPE:+x}|\\$A|\\\\"
    C: "${B}!"
  entrypoint: ["/bin/sh", "-c", "echo \"$C\""]
"#,
            dockerfile: Some(
                "FROM {base}\nENV A=${A}2\nENV B=\"$A|${NOPE:-dflt}|${A:+set}|${NOPE:+x}|\\$A|\\\\\"\nENV C=${B}!\nENTRYPOINT [\"/bin/sh\", \"-c\", \"echo \\\"$C\\\"\"]\n",
            ),
            fields: vec![(
                "/config/Env",
                json!([
                    format!("PATH={DEFAULT_PATH}"),
                    "A=base2",
                    "B=base2|dflt|set||$A|\\",
                    "C=base2|dflt|set||$A|\\!"
                ]),
            )],
            podman: Some("base2|dflt|set||$A|\\!\n"),
        },
        Case {
            // buildah 1.28 knows only the forms with a colon; docker's
            // BuildKit lexer has these too.
            target: "colonless-forms",
            keys: "env: {E: \"\", F: \"${E-unset}|${E:-empty}|${NOPE+x}|${E+set}|${NOPE-unset}\"}\n",
            dockerfile: None,
            fields: vec![(
                "/config/Env",
                json!([format!("PATH={DEFAULT_PATH}"), "A=base", "E=", "F=|empty||set|unset"]),
            )],
            podman: None,
        },
        Case {
            target: "labels-expand",
            keys: "env: {V: \"1.2\"}\n  labels: {version: \"$V\", from: \"${A}-${V:-none}\", dollar: \"\\\\$V\"}\n",
            dockerfile: Some(
                "FROM {base}\nENV V=1.2\nLABEL version=$V from=${A}-${V:-none} dollar=\\$V\n",
            ),
            fields: vec![
                ("/config/Labels/version", json!("1.2")),
                ("/config/Labels/from", json!("base-1.2")),
                ("/config/Labels/dollar", json!("$V")),
            ],
            podman: None,
        },
        Case {
            target: "user-expands",
            keys: "env: {U: \"1000\"}\n  user: \"$U:${G:-100}\"\n",
            dockerfile: Some("FROM {base}\nENV U=1000\nUSER $U:${G:-100}\n"),
            fields: vec![("/config/User", json!("1000:100"))],
            podman: None,
        },
        Case {
            // buildah 1.28 keeps "8000-8002/TCP" as one key; docker (and the
            // image spec's `PORT/PROTO` keys) store one lower-case entry per port.
            target: "port-ranges",
            keys: "ports: [8000-8002, 53/UDP, 9/Sctp]\n",
            dockerfile: None,
            fields: vec![(
                "/config/ExposedPorts",
                json!({"53/udp": {}, "8000/tcp": {}, "8001/tcp": {}, "8002/tcp": {}, "9/sctp": {}}),
            )],
            podman: None,
        },
        Case {
            target: "author",
            keys: "author: A. U. Thor <a@example.org>\n",
            dockerfile: Some("FROM {base}\nMAINTAINER A. U. Thor <a@example.org>\n"),
            fields: vec![("/author", json!("A. U. Thor <a@example.org>"))],
            podman: None,
        },
        Case {
            target: "exec-form",
            keys: "entrypoint: /bin/echo \"hello world\" $HOME '$A'\n",
            dockerfile: Some(
                "FROM {base}\nENTRYPOINT [\"/bin/echo\", \"hello world\", \"$HOME\", \"$A\"]\n",
            ),
            fields: vec![(
                "/config/Entrypoint",
                json!(["/bin/echo", "hello world", "$HOME", "$A"]),
            )],
            podman: Some("hello world $HOME $A\n"),
        },
        Case {
            target: "from-nothing",
            keys: "labels: {only: label}\n",
            dockerfile: Some("FROM scratch\nLABEL only=label\n"),
            fields: vec![
                ("/config/Env", json!([format!("PATH={DEFAULT_PATH}")])),
                ("/config/Labels/only", json!("label")),
            ],
            podman: None,
        },
    ]
}

fn spec(cases: &[Case]) -> String {
    let mut spec = BASE.to_string();
    for c in cases {
        let base = if c.target == "from-nothing" {
            "empty"
        } else {
            "bb"
        };
        spec.push_str(&format!("{}:\n  base: {base}\n  {}", c.target, c.keys));
    }
    spec
}

fn sorted(value: &Value) -> Value {
    match value {
        Value::Array(items) => {
            let mut items = items.clone();
            items.sort_by_key(|v| v.to_string());
            Value::Array(items)
        }
        other => other.clone(),
    }
}

fn field<'v>(config: &'v Value, pointer: &str) -> &'v Value {
    config.pointer(pointer).unwrap_or(&Value::Null)
}

#[test]
fn config_fields_follow_docker_semantics() {
    require_root!();
    let env = Env::new();
    env.busybox("bb.tar.gz");
    env.write("hello", "#!/bin/sh\necho hello from /opt/bin\n");
    fs::set_permissions(
        env.path().join("hello"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cases = cases();
    env.write("spec.yaml", &spec(&cases));
    env.ok(&["build", "spec.yaml"]);

    for c in &cases {
        let config = oci::config(&env.layout(), c.target);
        for (pointer, want) in &c.fields {
            assert_eq!(field(&config, pointer), want, "{} {pointer}", c.target);
        }
    }
    // As WORKDIR does, the relative workdir exists in the layer.
    let layer = paths(&top_entries(&env, "relative-workdir"));
    assert!(layer.iter().any(|p| p == "app/sub"), "{layer:?}");

    if have("buildah") {
        let buildah = Buildah::new(&env.layout());
        for c in &cases {
            let Some(dockerfile) = c.dockerfile else {
                continue;
            };
            let theirs = buildah.build(
                env.path(),
                &dockerfile.replace("{base}", &buildah.base("bb")),
            );
            for (pointer, want) in &c.fields {
                // buildah moves a changed variable to the end of `Env`;
                // docker changes it in place (as genoci). Order means nothing.
                assert_eq!(
                    sorted(field(&theirs, pointer)),
                    sorted(want),
                    "buildah, {} {pointer}",
                    c.target
                );
            }
        }
    } else {
        crate::util::skip("buildah is not installed: configs not compared with it");
    }

    if have("podman") && have("runc") {
        let podman = Podman::new();
        for c in &cases {
            if let Some(want) = c.podman {
                assert_eq!(podman.run(&env.layout(), c.target), want, "{}", c.target);
            }
        }
    } else {
        crate::util::skip("podman or runc is not installed: images not run");
    }
}

#[test]
fn history_says_what_the_target_did_and_created_has_sub_seconds() {
    require_root!();
    let env = Env::new();
    env.busybox("bb.tar.gz");
    env.write("x", "x\n");
    env.write(
        "spec.yaml",
        "bb:\n  base: empty\n  expand: ./bb.tar.gz\napp:\n  base: bb\n  copy: ./x /y\n  run: [true, 'echo > /z']\n  env: {A: b}\n  workdir: /w\n",
    );
    env.ok(&["build", "spec.yaml"]);
    let config = oci::config(&env.layout(), "app");
    let history = config["history"].as_array().unwrap();
    assert_eq!(
        history[0]["created_by"],
        "genoci build bb: expand ./bb.tar.gz"
    );
    assert_eq!(
        history[1]["created_by"],
        "genoci build app: copy ./x /y; run 2 steps; config env, workdir"
    );
    let created = config["created"].as_str().unwrap();
    let fraction = created
        .strip_suffix('Z')
        .and_then(|t| t.rsplit_once('.'))
        .map(|(_, f)| f);
    assert!(
        fraction.is_some_and(|f| f.len() == 9 && f.bytes().all(|b| b.is_ascii_digit())),
        "{created}"
    );
    assert_eq!(history[1]["created"], created);
}

#[test]
fn a_required_variable_that_is_missing_fails_the_target_naming_the_key() {
    require_root!();
    let env = Env::new();
    env.write(
        "spec.yaml",
        "ok:\n  base: empty\n  env: {A: \"${PATH:?}\"}\nbad:\n  base: empty\n  env: {A: 1, X: \"${NEED:?set NEED first}\"}\n",
    );
    let out = env.genoci(&["build", "spec.yaml"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("target bad: env X: NEED: set NEED first"),
        "{err}"
    );
    let tags = env.tags();
    assert!(tags.iter().any(|t| t == "ok"), "{tags:?}");
    assert!(!tags.iter().any(|t| t.starts_with("bad")), "{tags:?}");
}

#[test]
fn a_malformed_reference_is_a_spec_problem_with_its_line() {
    let env = Env::new();
    env.write(
        "spec.yaml",
        "a:\n  base: empty\n  labels:\n    l: ok\n  workdir: /${X#pre}\n",
    );
    let out = env.genoci(&["build", "spec.yaml"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("spec.yaml:5: target a, key workdir") && err.contains("unsupported modifier"),
        "{err}"
    );
    assert!(!env.layout().exists(), "nothing is built");
}

/// buildah with storage of its own (vfs, as cheap as it gets), released on
/// drop. Its directory name is all lowercase (buildah, like podman, makes an
/// image name of an `oci:` path); layouts are handed to it through a link.
struct Buildah {
    dir: PathBuf,
}

impl Buildah {
    fn new(layout: &Path) -> Buildah {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "genoci-buildah-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(layout, dir.join("layout")).unwrap();
        Buildah { dir }
    }

    fn link(&self) -> PathBuf {
        self.dir.join("layout")
    }

    /// `FROM` text naming `tag` of the layout.
    fn base(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.link().display())
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .env("TMPDIR", &self.dir);
        c
    }

    /// Build `dockerfile` in `context`; the image's OCI config.
    fn build(&self, context: &Path, dockerfile: &str) -> Value {
        let file = self.dir.join("Dockerfile");
        fs::write(&file, dockerfile).unwrap();
        let id = run_ok(
            self.cmd()
                .args(["bud", "--quiet", "--format", "oci", "-f"])
                .arg(&file)
                .arg(context),
        );
        let id = id.lines().last().unwrap().trim().to_string();
        let inspect = run_ok(self.cmd().args(["inspect", "--type", "image", &id]));
        let inspect: Value = serde_json::from_str(&inspect).unwrap();
        inspect["OCIv1"].clone()
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rmi", "--all", "--force"]).output();
        for m in mounts_under(&self.dir).iter().rev() {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
