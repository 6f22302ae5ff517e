//! What genoci says is what happened: a bad `SOURCE_DATE_EPOCH` is refused,
//! and a partly failed build still lists what it built.

use crate::stores::genoci_env;
use crate::util::{require_root, stderr, Env};

/// Bug: `SOURCE_DATE_EPOCH=yesterday` was silently ignored, giving a build
/// that looked reproducible and was not.
#[test]
fn an_invalid_source_date_epoch_is_bad_usage() {
    let env = Env::new();
    env.write("f", "x");
    env.write("spec.yaml", "app:\n  base: empty\n  copy: ./f /f\n");
    for bad in ["yesterday", "1.5", "17e8"] {
        let out = genoci_env(&env, &[("SOURCE_DATE_EPOCH", bad)], &["build", "spec.yaml"]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            stderr(&out).contains("SOURCE_DATE_EPOCH"),
            "{}",
            stderr(&out)
        );
        assert!(!env.layout().exists(), "nothing is created");
    }
    let out = genoci_env(&env, &[("SOURCE_DATE_EPOCH", "nope")], &["checkin"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Bug: when one target failed, the summary listed nothing, though the
/// others were built and tagged.
#[test]
fn a_partly_failed_build_lists_the_targets_it_built() {
    require_root!();
    let env = Env::new();
    env.write("f", "x");
    env.write(
        "spec.yaml",
        "good:\n  base: empty\n  copy: ./f /f\nbad:\n  base: empty\n  run: exit 3\n",
    );
    let out = env.genoci(&["build", "-j", "1", "spec.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("good: built, tagged good good-"),
        "{stdout}"
    );
    assert!(stderr(&out).contains("target bad"), "{}", stderr(&out));
    // And a cached target is listed as such.
    let out = env.genoci(&["build", "spec.yaml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("good: unchanged (cached)"), "{stdout}");
}
