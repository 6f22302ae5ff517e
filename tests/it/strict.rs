//! No silent skips: a test that cannot run skips with a reason on a
//! developer's machine and fails in strict mode, as CI runs the suite.

use std::path::Path;
use std::process::{Command, Output};

use crate::util::require_tool;

const MISSING: &str = "genoci-test-no-such-tool";

/// Run only by the tests below, as a child of this test binary.
#[test]
#[ignore = "run by a_skip_fails_in_strict_mode_and_says_why"]
fn needs_a_missing_tool() {
    require_tool!(MISSING);
    panic!("{MISSING} found: this test is meant to skip");
}

fn run_skipping_test(strict: Option<&str>) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "strict::needs_a_missing_tool",
        "--exact",
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env_remove("GENOCI_TEST_STRICT");
    if let Some(value) = strict {
        cmd.env("GENOCI_TEST_STRICT", value);
    }
    cmd.output().unwrap()
}

#[test]
fn a_skip_fails_in_strict_mode_and_says_why() {
    let out = run_skipping_test(Some("1"));
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "strict mode let a skip pass:\n{text}"
    );
    assert!(
        text.contains(&format!("cannot run: {MISSING} is not installed")),
        "{text}"
    );
    assert!(text.contains("1 failed"), "{text}");
}

#[test]
fn a_skip_passes_with_its_reason_outside_strict_mode() {
    for strict in [None, Some("0")] {
        let out = run_skipping_test(strict);
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains(&format!("skipped: {MISSING} is not installed")),
            "{text}"
        );
    }
}

/// CI runs the suite through scripts/test.sh: its `cargo test` line must
/// be strict.
#[test]
fn the_ci_script_runs_the_tests_strictly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = std::fs::read_to_string(root.join("scripts/test.sh")).unwrap();
    let test_lines: Vec<&str> = script
        .lines()
        .filter(|l| l.trim_start().contains("cargo test"))
        .collect();
    assert!(!test_lines.is_empty(), "no cargo test in scripts/test.sh");
    for line in test_lines {
        assert!(line.contains("GENOCI_TEST_STRICT=1"), "not strict: {line}");
    }
}

/// Every skip goes through one helper per crate (`test_support::skip`,
/// `util::skip`), so strict mode sees them all.
#[test]
fn every_skip_goes_through_the_helper() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let helpers = [
        root.join("src/test_support.rs"),
        root.join("tests/it/util.rs"),
    ];
    let mut stray = Vec::new();
    for dir in ["src", "tests"] {
        for entry in walkdir(&root.join(dir)) {
            if helpers.contains(&entry) || entry.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&entry).unwrap();
            for (n, line) in text.lines().enumerate() {
                let said = line.to_lowercase();
                let printed = said.contains("eprintln!(")
                    && ["skip", "not installed", "not available", "needs root"]
                        .iter()
                        .any(|w| said.contains(w));
                if printed {
                    stray.push(format!("{}:{}: {}", entry.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        stray.is_empty(),
        "skips outside the helper:\n{}",
        stray.join("\n")
    );
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walkdir(&path));
        } else {
            out.push(path);
        }
    }
    out
}
