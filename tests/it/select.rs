//! `--target` builds only what is asked and what it needs; independent
//! targets build at the same time, at most `-j` at once, and their output
//! says which target each line is from.

use std::fs;

use crate::cache::outcomes;
use crate::util::{require_root, stderr, Env};

/// a <- b <- d, and c on its own.
const CHAIN: &str = "a:
  base: empty
  copy: ./f /a
b:
  base: a
  copy: ./f /b
c:
  base: empty
  copy: ./f /c
d:
  base: b
  copy: ./f /d
";

fn names(tags: &[String]) -> Vec<String> {
    let mut plain: Vec<String> = tags.iter().filter(|t| !t.contains('_')).cloned().collect();
    plain.sort();
    plain
}

#[test]
fn target_builds_it_and_its_bases_only() {
    require_root!();
    let env = Env::new();
    env.write("f", "f\n");
    env.write("spec.yaml", CHAIN);
    let out = outcomes(&env.ok(&["build", "spec.yaml", "--target", "b"]));
    assert_eq!(out.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(names(&env.tags()), ["a", "b"]);

    // Repeatable; what is already built comes from the cache.
    let out = outcomes(&env.ok(&["build", "spec.yaml", "-t", "c", "--target", "d"]));
    assert_eq!(out.get("a"), Some(&false));
    assert_eq!(out.get("b"), Some(&false));
    assert_eq!(out.get("c"), Some(&true));
    assert_eq!(out.get("d"), Some(&true));
    assert_eq!(names(&env.tags()), ["a", "b", "c", "d"]);
}

#[test]
fn unknown_target_builds_nothing() {
    require_root!();
    let env = Env::new();
    env.write("f", "f\n");
    env.write("spec.yaml", CHAIN);
    let out = env.genoci(&["build", "spec.yaml", "--target", "nosuch"]);
    assert_eq!(out.status.code(), Some(2), "bad usage exits 2");
    assert!(stderr(&out).contains("nosuch"), "{}", stderr(&out));
    assert!(!env.layout().exists(), "nothing is built or created");
}

/// Two targets on one base, each sleeping a second in the sandbox; the host
/// hooks log when each started and ended.
fn sleepers(env: &Env) {
    env.busybox("rootfs.tar.gz");
    let stanza = |name: &str| {
        format!(
            "{name}:
  base: os
  pre: echo \"{name} start $(date +%s.%N)\" >> times
  run: |
    echo first line from {name}
    sleep 1
    echo second line from {name} >&2
  post: echo \"{name} end $(date +%s.%N)\" >> times
"
        )
    };
    env.write(
        "spec.yaml",
        &format!(
            "os:\n  base: empty\n  expand: ./rootfs.tar.gz\n{}{}",
            stanza("x"),
            stanza("y")
        ),
    );
    // The base first, so that the timed builds are only the two sleepers.
    env.ok(&["build", "spec.yaml", "--target", "os"]);
}

/// (start, end) of each target, from the hooks' log.
fn intervals(env: &Env) -> Vec<(f64, f64)> {
    let log = fs::read_to_string(env.path().join("times")).unwrap();
    let at = |name: &str, what: &str| -> f64 {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} {what} ")))
            .unwrap_or_else(|| panic!("no {name} {what} in {log}"))
            .parse()
            .unwrap()
    };
    ["x", "y"]
        .iter()
        .map(|n| (at(n, "start"), at(n, "end")))
        .collect()
}

fn overlap(i: &[(f64, f64)]) -> bool {
    i[0].0 < i[1].1 && i[1].0 < i[0].1
}

#[test]
fn independent_targets_build_at_the_same_time() {
    require_root!();
    let env = Env::new();
    sleepers(&env);
    let out = env.genoci(&["build", "spec.yaml", "-j", "2"]);
    assert!(out.status.success());
    let i = intervals(&env);
    assert!(overlap(&i), "x and y ran one after the other: {i:?}");

    // Every line a run step prints names its target.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = stderr(&out);
    for name in ["x", "y"] {
        assert!(
            stdout.contains(&format!("[{name}] first line from {name}\n")),
            "{stdout}"
        );
        assert!(
            stderr.contains(&format!("[{name}] second line from {name}\n")),
            "{stderr}"
        );
    }
    for line in stdout.lines().chain(stderr.lines()) {
        // The step's own lines, not genoci's log of the step.
        for name in ["x", "y"] {
            if line.ends_with(&format!("line from {name}")) {
                assert!(line.starts_with(&format!("[{name}] ")), "{line}");
            }
        }
    }
}

#[test]
fn jobs_bound_how_many_build_at_once() {
    require_root!();
    let env = Env::new();
    sleepers(&env);
    env.ok(&["build", "spec.yaml", "-j", "1"]);
    let i = intervals(&env);
    assert!(!overlap(&i), "-j 1 built x and y at the same time: {i:?}");
}
