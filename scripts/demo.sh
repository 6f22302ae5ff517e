#!/usr/bin/env bash
# Build genoci and run the example spec (examples/cirros) with the default
# driver: a busybox rootfs stands in for cirros.tar.gz.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release
tarball=$(scripts/fixtures.sh busybox)
cp "$tarball" examples/cirros/cirros.tar.gz
cd examples/cirros
../../target/release/genoci cirros.yaml
umoci ls --layout oci
