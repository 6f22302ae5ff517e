#!/usr/bin/env bash
# The whole test suite, as CI runs it: dependencies, fixtures, lints, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# Fixtures are cached in /var/cache/genoci-fixtures; the tests find them there.
scripts/fixtures.sh busybox >/dev/null
scripts/fixtures.sh debian >/dev/null
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps
# Strict: a test that cannot run here (no root, tool or kernel feature) fails
# instead of skipping.
GENOCI_TEST_STRICT=1 cargo test --all-targets -- --test-threads=2
