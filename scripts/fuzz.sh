#!/usr/bin/env bash
# Coverage-guided fuzzing of genoci's parsers with libFuzzer, on the stable
# toolchain: the coverage instrumentation cargo-fuzz asks for is plain
# `-C` flags (no sanitizer, which would need nightly).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default: 60 s each, every target
#   scripts/fuzz.sh smoke [TARGET...]         each target over its seeds once
#
# Targets (fuzz/fuzz_targets/): spec, tar, send, json. One process, one
# core. The corpus grows in fuzz/corpus/TARGET (not committed), seeded from
# fuzz/seeds/TARGET; a crash is saved in fuzz/artifacts/TARGET/. Each
# target runs as root in a mount namespace of its own whose root and /dev
# are read-only, with a tmpfs for its temp dirs: a reader that wrongly
# followed an absolute path out of its tree cannot change the machine.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(spec tar send json)

triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
# --target keeps the flags off build scripts and proc macros.
# FUZZ_NO_BUILD=1 runs the binaries as they are.
[ -n "${FUZZ_NO_BUILD:-}" ] || cargo build --release --target "$triple" -j "${FUZZ_JOBS:-1}" \
    $(printf -- '--bin %s ' "${targets[@]}")

scratch=$(mktemp -d)
trap 'rmdir "$scratch"' EXIT
for t in "${targets[@]}"; do
    bin="$PWD/target/$triple/release/$t"
    mkdir -p "corpus/$t" "artifacts/$t"
    if [ "$seconds" = smoke ]; then
        args=(-runs=0 "seeds/$t")
    else
        echo "== $t: ${seconds} s" >&2
        args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536
            -print_final_stats=1 -artifact_prefix="artifacts/$t/" "corpus/$t" "seeds/$t")
    fi
    unshare --mount --propagation private -- sh -c '
        set -e
        mount -t tmpfs -o size=1g genoci-fuzz "$1"
        mount --bind "$PWD" "$PWD"
        cd "$PWD"
        mount -o remount,bind,ro /
        mount -o remount,bind,ro /dev
        export TMPDIR="$1"
        shift
        exec "$@"' sh "$scratch" "$bin" "${args[@]}"
done
