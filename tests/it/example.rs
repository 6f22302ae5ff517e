//! The seed example: cirros from a tarball, modified on top of it.

use std::fs;
use std::process::Command;

use crate::util::{require_root, require_tool, run_ok, Env};

const SPEC: &str = r#"cirros:
  base: empty
  expand: ./cirros.tar.gz
modified:
  base: cirros
  run: |
    echo "Hello, world" > /hw
  entrypoint: /bin/echo "hello world"
"#;

#[test]
fn the_example_builds_tags_and_runs() {
    require_root!();
    require_tool!("umoci");
    let env = Env::new();
    env.busybox("cirros.tar.gz");
    env.write("cirros.yaml", SPEC);
    env.ok(&["cirros.yaml"]);
    let tags = env.tags();
    assert_eq!(tags.len(), 4, "{tags:?}");
    assert!(tags.contains(&"cirros".to_string()) && tags.contains(&"modified".to_string()));
    assert!(tags
        .iter()
        .any(|t| t.starts_with("modified-") && t.ends_with("_1")));

    // Unchanged inputs: cached, no new dated tags.
    let again = env.ok(&["cirros.yaml"]);
    assert!(again.contains("cached"), "{again}");
    assert_eq!(env.tags().len(), 4);

    // A forced rebuild adds the _2 tags.
    env.ok(&["build", "--no-cache", "cirros.yaml"]);
    let tags = env.tags();
    assert_eq!(tags.len(), 6, "{tags:?}");
    assert!(tags
        .iter()
        .any(|t| t.starts_with("modified-") && t.ends_with("_2")));

    let rootfs = env.unpack("modified");
    assert_eq!(
        fs::read_to_string(rootfs.join("hw")).unwrap(),
        "Hello, world\n"
    );
    assert!(rootfs.join("bin/busybox").exists());

    let stat = run_ok(
        Command::new("umoci")
            .args(["stat", "--image"])
            .arg(format!("{}:modified", env.layout().display())),
    );
    assert!(stat.contains("genoci build modified"), "{stat}");
}
