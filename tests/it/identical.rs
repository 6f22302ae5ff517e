//! Targets with identical stanzas built at the same time: one ChainID,
//! committed by whichever finishes first, and a success for all of them.

use std::fs;

use crate::stores::{driver_tests, genoci_env, layer_digests, work_entries, Store, EPOCH};
use crate::util::Env;

const TARGETS: usize = 16;
const RUNS: usize = 20;

/// `RUNS` builds of `TARGETS` identical targets with `-j TARGETS`. Each run
/// copies in a file of its own, so each makes one new ChainID that all its
/// targets race to commit.
fn identical_targets_built_at_once_all_succeed(store: &Store) {
    let env: &Env = store;
    let store_root = &store.root();
    fs::create_dir_all(env.path().join("files/etc")).unwrap();
    for n in 0..20 {
        env.write(&format!("files/etc/f{n}"), &format!("{n}\n"));
    }
    let spec: String = (0..TARGETS)
        .map(|t| format!("t{t}:\n  base: empty\n  copy: files /files\n"))
        .collect();
    env.write("spec.yaml", &spec);
    let jobs = TARGETS.to_string();
    let mut failures = Vec::new();
    for run in 0..RUNS {
        env.write("files/run", &format!("{run}\n"));
        let out = genoci_env(
            env,
            &[("SOURCE_DATE_EPOCH", EPOCH)],
            &["build", "-j", &jobs, "spec.yaml"],
        );
        if !out.status.success() {
            failures.push(format!(
                "run {run}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        }
        let layers: Vec<Vec<String>> = (0..TARGETS)
            .map(|t| layer_digests(&env.layout(), &format!("t{t}")))
            .collect();
        assert!(
            layers.iter().all(|l| l.len() == 1 && *l == layers[0]),
            "run {run}: {layers:?}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {RUNS} runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        work_entries(store_root).is_empty(),
        "{:?}",
        work_entries(store_root)
    );
    let snapshots = fs::read_dir(store_root.join("snapshots")).unwrap().count();
    assert_eq!(
        snapshots,
        RUNS + 1,
        "one snapshot per run, and the empty one"
    );
}

driver_tests!(identical_targets_built_at_once_all_succeed);
