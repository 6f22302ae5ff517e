//! The spec checker (YAML parse, keys, `$VAR`s, bases, cycles, order):
//! any bytes give a plan or an error whose every problem says something.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
}

fuzz_target!(|data: &[u8]| {
    let file = dir().path().join("spec.yaml");
    std::fs::write(&file, data).expect("write spec");
    // Tags named "base*" exist in the layout, the others do not.
    let existing = |tag: &str| tag.starts_with("base");
    if let Err(e) = genoci::spec::plan::load(&file, &existing) {
        assert!(!e.problems.is_empty(), "an error with no problem");
        for p in &e.problems {
            assert!(
                !p.message.trim().is_empty(),
                "a problem with no message: {p:?}"
            );
        }
    }
});
