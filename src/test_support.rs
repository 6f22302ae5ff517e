//! What the unit tests share across modules.

/// The variable `scripts/test.sh` sets so that a test that cannot run fails
/// instead of skipping: CI must never report green for a test that did not run.
pub const STRICT_VAR: &str = "GENOCI_TEST_STRICT";

/// Whether a skip is a failure in this run (`GENOCI_TEST_STRICT=1`).
pub fn strict() -> bool {
    std::env::var(STRICT_VAR).is_ok_and(|v| v == "1")
}

/// The one way a unit test skips for want of root, a tool or a kernel
/// feature: with the reason printed, or, in strict mode, as a failure.
pub fn skip(reason: &str) {
    skip_in(strict(), reason);
}

fn skip_in(strict: bool, reason: &str) {
    if strict {
        panic!("{STRICT_VAR}=1 and this test cannot run: {reason}");
    }
    eprintln!("skipped: {reason}");
}

/// Every path under `root`, relative, sorted.
pub fn all_paths(root: &std::path::Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    use std::path::{Path, PathBuf};
    fn walk(root: &Path, rel: &Path, out: &mut std::collections::BTreeSet<PathBuf>) {
        for e in std::fs::read_dir(root.join(rel)).unwrap() {
            let e = e.unwrap();
            let child = rel.join(e.file_name());
            out.insert(child.clone());
            if e.file_type().unwrap().is_dir() {
                walk(root, &child, out);
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(root, Path::new(""), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "cannot run: needs a unicorn")]
    fn a_skip_in_strict_mode_fails_with_its_reason() {
        skip_in(true, "needs a unicorn");
    }

    #[test]
    fn a_skip_elsewhere_returns() {
        skip_in(false, "needs a unicorn");
    }
}
