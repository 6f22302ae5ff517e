#!/usr/bin/env bash
# genoci against umoci, buildah and plain tar+gzip, side by side in one run,
# on a Debian minbase rootfs (scripts/fixtures.sh debian). As root.
#
#   RUNS=3 scripts/bench.sh        # medians of RUNS runs (default 3)
#
# Prints a markdown table of median wall times and ratios, then peak memory
# (max RSS) of base imports of a ~100 MB and a ~1 GB layer. Everything
# happens in a temp dir under /tmp, removed at the end (btrfs store
# unmounted and detached, overlay mounts released, buildah storage removed),
# even on failure.
set -euo pipefail

RUNS=${RUNS:-3}
repo=$(cd "$(dirname "$0")/.." && pwd)

[ "$(id -u)" = 0 ] || { echo "bench.sh: run as root (sandbox, btrfs, loop devices)" >&2; exit 1; }
(cd "$repo" && cargo build --release --quiet)
genoci=$repo/target/release/genoci
tarball=$("$repo/scripts/fixtures.sh" debian)

# Lower case only: buildah derives an image name from an oci: path.
work=/tmp/genoci-bench-$$
mkdir -m 700 "$work"
log=$work/log
# buildah's own default storage as root: overlay.
buildah_args=(--root "$work/buildah/root" --runroot "$work/buildah/run" --storage-driver overlay)
# Our own dockerd (see BuildKit below), by its PID; it takes its managed
# containerd along.
dockerd_stop() {
  [ -f "$work/docker/mypid" ] || return 0
  local pid i
  pid=$(cat "$work/docker/mypid")
  # Each step may fail (the daemon already gone): none may end the bench.
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$work/docker/mypid"
}
cleanup() {
  set +e
  if [ -f "$work/btrfs/atom_config.yaml" ]; then
    (cd "$work/btrfs" && "$genoci" -q unsetup --force) >/dev/null 2>&1
  fi
  if [ -d "$work/buildah" ]; then
    buildah "${buildah_args[@]}" rm --all >/dev/null 2>&1
    buildah "${buildah_args[@]}" rmi --all --force >/dev/null 2>&1
  fi
  dockerd_stop
  # Whatever is still mounted below the work dir (overlay trees of a run cut short), deepest first.
  findmnt -rn -o TARGET | grep "^$work/" | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "$*" >&2; }
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# ms of wall time of a command (its output goes to the log); fails with it.
ms() {
  local start end
  start=$(date +%s%N)
  if ! "$@" >>"$log" 2>&1; then
    say "failed: $*"
    tail -20 "$log" >&2
    return 1
  fi
  end=$(date +%s%N)
  echo $(((end - start) / 1000000))
}

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}'; }

# median ms of RUNS runs of: [prepare] then timed command. `prep` is a
# function name run untimed before each run ("" for none).
bench() {
  local prep=$1
  shift
  local times=() i t
  for ((i = 0; i < RUNS; i++)); do
    if [ -n "$prep" ]; then "$prep" >>"$log" 2>&1 || return 1; fi
    t=$(ms "$@") || return 1
    times+=("$t")
  done
  median "${times[@]}"
}

secs() { [ -n "${1:-}" ] && awk -v m="$1" 'BEGIN {printf "%.2f s", m / 1000}' || echo "n/a"; }
ratio() { [ -n "${1:-}" ] && [ -n "${2:-}" ] && awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f×", a / (b > 0 ? b : 1)}' || echo "n/a"; }

# --- the specs ---------------------------------------------------------------
# (Steps inside functions are chained with && : bash ignores `set -e` in
# functions called where a failure is tested.)

mkdir -p "$work/in"
cp "$tarball" "$work/in/base.tar.gz"
echo 0 >"$work/in/file"
for i in $(seq 1 10); do mkdir -p "$work/in/t$i" && echo "$i" >"$work/in/t$i/file"; done

cat >"$work/in/spec.yaml" <<'EOF'
base:
  base: empty
  expand: ./base.tar.gz
one:
  base: base
  copy: ./file /etc/genoci-bench
EOF
{
  cat <<'EOF'
base:
  base: empty
  expand: ./base.tar.gz
EOF
  for i in $(seq 1 10); do printf 't%s:\n  base: base\n  copy: ./t%s /opt/t%s\n' "$i" "$i" "$i"; done
} >"$work/in/ten.yaml"
cat >"$work/in/many.yaml" <<'EOF'
base:
  base: empty
  expand: ./base.tar.gz
# 40,000 small files made inside the image, so that no host input of this
# size is hashed on every build: only the base grows.
many:
  base: base
  run: |
    mkdir /opt/many && cd /opt/many
    for d in $(seq 1 40); do
      mkdir $d
      for i in $(seq 1 1000); do echo $d/$i > $d/$i; done
    done
edit:
  base: many
  copy: ./file /etc/genoci-bench
EOF

# One work dir per driver, sharing the inputs.
for driver in plain overlay btrfs; do
  d=$work/$driver
  mkdir -p "$d"
  cp -a "$work/in/." "$d/"
  printf 'driver: %s\nlayoutdir: ./oci\nstoredir: ./.genoci\nlofile: ./btrfs.img\nlosize: 20G\nbtrfsmount: ./btrfs\n' \
    "$driver" >"$d/atom_config.yaml"
done

btrfs_ok=1
(cd "$work/btrfs" && "$genoci" -q setup) >>"$log" 2>&1 || { btrfs_ok=""; say "btrfs store setup failed: btrfs column skipped"; }

# --- genoci ------------------------------------------------------------------

declare -A T

in_dir() { local d=$1; shift; (cd "$d" && "$@"); }
g() { in_dir "$work/$driver" "$genoci" -q "$@"; }
fresh_layout() { rm -rf "$work/$driver/oci" && g gc; }
touch_file() { date +%s%N >"$work/$driver/file"; }

for driver in plain overlay btrfs; do
  if [ "$driver" = btrfs ] && [ -z "$btrfs_ok" ]; then continue; fi
  say "genoci $driver: base import"
  T[import_$driver]=$(bench fresh_layout g build --target base spec.yaml)
  g build spec.yaml >>"$log" 2>&1
  say "genoci $driver: one-file rebuild"
  T[one_$driver]=$(bench touch_file g build spec.yaml)
  say "genoci $driver: no-op rebuild"
  T[noop_$driver]=$(bench "" g build spec.yaml)
  say "genoci $driver: 10 targets"
  T[tenfull_$driver]=$(bench "" g build --no-cache ten.yaml)
  T[tennoop_$driver]=$(bench "" g build ten.yaml)
  say "genoci $driver: one-file rebuild over 40,000 more files"
  g build many.yaml >>"$log" 2>&1
  T[many_$driver]=$(bench touch_file g build many.yaml)
done

# --- baseline: extract + one pass of compression at genoci's level (6) -------

extract_compress() {
  rm -rf "$work/x" && mkdir "$work/x" &&
    tar -C "$work/x" -xzf "$work/in/base.tar.gz" &&
    tar -C "$work/x" --numeric-owner -cf - . | gzip -6 >"$work/x.tar.gz"
}
say "baseline: tar -xzf + tar -c | gzip -6"
T[import_base]=$(bench "" extract_compress)
rm -rf "$work/x" "$work/x.tar.gz"

# --- umoci: unpack + edit one file + repack ---------------------------------

umoci_layout=$work/umoci/oci
umoci_import() {
  rm -rf "$work/umoci" && mkdir -p "$work/umoci" &&
    umoci init --layout "$umoci_layout" &&
    umoci new --image "$umoci_layout:base" &&
    umoci unpack --image "$umoci_layout:base" "$work/umoci/bundle" &&
    tar -C "$work/umoci/bundle/rootfs" -xzf "$work/in/base.tar.gz" &&
    umoci repack --image "$umoci_layout:base" "$work/umoci/bundle" &&
    rm -rf "$work/umoci/bundle"
}
umoci_one() {
  umoci unpack --image "$umoci_layout:base" "$work/umoci/bundle" &&
    date +%s%N >"$work/umoci/bundle/rootfs/etc/genoci-bench" &&
    umoci repack --image "$umoci_layout:new" "$work/umoci/bundle"
}
umoci_clean() { rm -rf "$work/umoci/bundle"; }
if command -v umoci >/dev/null; then
  say "umoci: base import, one-file rebuild"
  T[import_umoci]=$(bench "" umoci_import) || T[import_umoci]=""
  umoci_import >>"$log" 2>&1
  T[one_umoci]=$(bench umoci_clean umoci_one) || T[one_umoci]=""
  umoci_clean
else
  say "umoci not installed: skipped"
fi

# --- buildah (overlay storage, chroot isolation): from + copy one file + commit

b() { buildah "${buildah_args[@]}" "$@"; }
buildah_import() {
  local c
  { b rm --all && b rmi --all --force || true; } &&
    c=$(b from scratch) &&
    b add "$c" "$work/in/base.tar.gz" / &&
    b commit -q "$c" "oci:$work/buildah/oci:base"
}
buildah_one() {
  local c
  c=$(b from --isolation chroot "oci:$work/buildah/oci:base") &&
    date +%s%N >"$work/buildah/file" &&
    b copy "$c" "$work/buildah/file" /etc/genoci-bench &&
    b commit -q "$c" "oci:$work/buildah/oci:new"
}
buildah_clean() { b rm --all; }
if command -v buildah >/dev/null && buildah_import >>"$log" 2>&1; then
  say "buildah: base import, one-file rebuild"
  T[import_buildah]=$(bench "" buildah_import) || T[import_buildah]=""
  # The base is pulled into its storage once, as a dev loop would have it.
  buildah_one >>"$log" 2>&1 && buildah_clean >>"$log" 2>&1
  T[one_buildah]=$(bench buildah_clean buildah_one) || T[one_buildah]=""
  buildah_clean >>"$log" 2>&1
else
  say "buildah not installed or failing here: skipped"
fi

# --- BuildKit (dockerd's own, started here): FROM base + COPY one file -------
# A dockerd of its own: data, exec root, pid file and socket in the work dir,
# no bridge, no iptables rules, overlay2. Debian 12's docker.io (20.10) has
# no OCI exporter in its built-in BuildKit: images go to its image store.

dk() { DOCKER_HOST="unix://$work/docker/sock" DOCKER_BUILDKIT=1 /usr/bin/docker "$@"; }
dockerd_start() {
  if [ ! -x /usr/sbin/dockerd ] || [ ! -x /usr/bin/docker ]; then
    say "installing docker.io (dockerd, BuildKit)"
    # Started here, never as a system service: deny service starts meanwhile.
    local deny=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && deny=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io >>"$log" 2>&1
    local rc=$?
    [ -n "$deny" ] && rm -f /usr/sbin/policy-rc.d
    [ "$rc" = 0 ] || return 1
  fi
  mkdir -p "$work/docker/data" "$work/docker/exec" "$work/docker/ctx" &&
    echo '{}' >"$work/docker/daemon.json" || return 1
  /usr/sbin/dockerd --config-file "$work/docker/daemon.json" \
    --data-root "$work/docker/data" --exec-root "$work/docker/exec" \
    --pidfile "$work/docker/pid" -H "unix://$work/docker/sock" \
    --bridge=none --iptables=false --ip-masq=false --storage-driver overlay2 \
    >>"$work/docker/log" 2>&1 &
  echo $! >"$work/docker/mypid"
  local i
  for i in $(seq 1 60); do
    dk version >/dev/null 2>&1 && return 0
    sleep 1
  done
  return 1
}
buildkit_import() {
  mkdir -p "$work/docker/import" &&
    cp "$work/in/base.tar.gz" "$work/docker/import/" &&
    printf 'FROM scratch\nADD base.tar.gz /\n' >"$work/docker/import/Dockerfile" &&
    dk build -q --no-cache -t import "$work/docker/import"
}
buildkit_one() {
  date +%s%N >"$work/docker/ctx/file" && dk build -q -t new "$work/docker/ctx"
}
if dockerd_start; then
  say "BuildKit: base import, one-file rebuild"
  # The base as genoci built it, loaded into the image store once.
  if skopeo copy -q "oci:$work/overlay/oci:base" "docker-archive:$work/docker/base.tar:base:latest" >>"$log" 2>&1 &&
    dk load -i "$work/docker/base.tar" >>"$log" 2>&1; then
    printf 'FROM base:latest\nCOPY file /etc/genoci-bench\n' >"$work/docker/ctx/Dockerfile"
    T[import_buildkit]=$(bench "" buildkit_import) || T[import_buildkit]=""
    buildkit_one >>"$log" 2>&1
    T[one_buildkit]=$(bench "" buildkit_one) || T[one_buildkit]=""
  else
    say "loading the base into dockerd failed: BuildKit skipped"
  fi
else
  say "dockerd did not start: BuildKit skipped"
  tail -5 "$work/docker/log" >&2 || true
fi
dockerd_stop

# --- peak memory: base imports of ~100 MB and ~1 GB of random data -----------

rss_import() {
  local mb=$1 d=$work/mem$1
  mkdir -p "$d/tree/data"
  local n=$((mb / 10)) i start end
  for ((i = 0; i < n; i++)); do head -c 10M /dev/urandom >"$d/tree/data/f$i"; done
  tar -C "$d/tree" -cf "$d/data.tar" . && rm -rf "$d/tree" || return 1
  printf 'driver: plain\nlayoutdir: ./oci\nstoredir: ./.genoci\n' >"$d/atom_config.yaml"
  printf 'data:\n  base: empty\n  expand: ./data.tar\n' >"$d/spec.yaml"
  start=$(date +%s%N)
  (cd "$d" && /usr/bin/time -f '%M' -o "$d/rss" "$genoci" -q build spec.yaml) >>"$log" 2>&1 || return 1
  end=$(date +%s%N)
  echo "$(cat "$d/rss") $(((end - start) / 1000000))"
  rm -rf "$d"
}
mem=()
if [ -x /usr/bin/time ]; then
  for mb in 100 1000; do
    say "peak memory: base import of ${mb} MB"
    row=$(rss_import "$mb") || { tail -20 "$log" >&2; exit 1; }
    mem+=("$mb $row")
  done
else
  say "/usr/bin/time missing (apt-get install time): peak memory skipped"
fi

# --- the table ---------------------------------------------------------------

P=${T[import_plain]:-} B=${T[import_btrfs]:-}
echo
echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')),"
read -r fstype dev <<<"$(findmnt -no FSTYPE,SOURCE -T /tmp)"
bus=$(basename "$(readlink -f "/sys/block/$(basename "$dev")/device/driver" 2>/dev/null)" 2>/dev/null || true)
echo "$(free -g | awk '/^Mem:/ {print $2}') GB memory, kernel $(uname -r), /tmp on $fstype ($dev${bus:+, $bus}),"
echo "load average before the run: $load_before."
echo
echo "Medians of $RUNS runs, wall time. Debian bookworm minbase rootfs: $(du -h "$tarball" | cut -f1) tarball."
echo
O=${T[import_overlay]:-}
echo "| operation | genoci plain | genoci overlay | genoci btrfs | umoci | buildah (overlay) | BuildKit (dockerd, overlay2) | other | ratios |"
echo "|---|---|---|---|---|---|---|---|---|"
echo "| base import (\`base: empty\` + \`expand\`) | $(secs "$P") | $(secs "$O") | $(secs "$B") | $(secs "${T[import_umoci]:-}") | $(secs "${T[import_buildah]:-}") | $(secs "${T[import_buildkit]:-}") | $(secs "${T[import_base]}") tar -xzf + tar -c \| gzip -6 | plain ÷ extract+compress $(ratio "$P" "${T[import_base]}"); overlay ÷ extract+compress $(ratio "$O" "${T[import_base]}"); btrfs ÷ extract+compress $(ratio "$B" "${T[import_base]}") |"
echo "| one-file rebuild | $(secs "${T[one_plain]}") | $(secs "${T[one_overlay]:-}") | $(secs "${T[one_btrfs]:-}") | $(secs "${T[one_umoci]:-}") | $(secs "${T[one_buildah]:-}") | $(secs "${T[one_buildkit]:-}") | | buildah ÷ overlay $(ratio "${T[one_buildah]:-}" "${T[one_overlay]:-}"); BuildKit ÷ overlay $(ratio "${T[one_buildkit]:-}" "${T[one_overlay]:-}"); buildah ÷ btrfs $(ratio "${T[one_buildah]:-}" "${T[one_btrfs]:-}"); umoci ÷ overlay $(ratio "${T[one_umoci]:-}" "${T[one_overlay]:-}"); umoci ÷ plain $(ratio "${T[one_umoci]:-}" "${T[one_plain]}") |"
echo "| one-file rebuild, 40,000 more files in the base | $(secs "${T[many_plain]}") | $(secs "${T[many_overlay]:-}") | $(secs "${T[many_btrfs]:-}") | | | | | with ÷ without: overlay $(ratio "${T[many_overlay]:-}" "${T[one_overlay]:-}"), btrfs $(ratio "${T[many_btrfs]:-}" "${T[one_btrfs]:-}") |"
echo "| no-op rebuild | $(secs "${T[noop_plain]}") | $(secs "${T[noop_overlay]:-}") | $(secs "${T[noop_btrfs]:-}") | | | | | |"
echo "| 10-target spec, full build (\`--no-cache\`) | $(secs "${T[tenfull_plain]}") | $(secs "${T[tenfull_overlay]:-}") | $(secs "${T[tenfull_btrfs]:-}") | | | | | overlay ÷ btrfs $(ratio "${T[tenfull_overlay]:-}" "${T[tenfull_btrfs]:-}") |"
echo "| 10-target spec, no-op rebuild | $(secs "${T[tennoop_plain]}") | $(secs "${T[tennoop_overlay]:-}") | $(secs "${T[tennoop_btrfs]:-}") | | | | | full ÷ no-op: plain $(ratio "${T[tenfull_plain]}" "${T[tennoop_plain]}"), overlay $(ratio "${T[tenfull_overlay]:-}" "${T[tennoop_overlay]:-}"), btrfs $(ratio "${T[tenfull_btrfs]:-}" "${T[tennoop_btrfs]:-}") |"
if [ ${#mem[@]} -gt 0 ]; then
  echo
  echo "Peak memory (max RSS, /usr/bin/time) of a base import of incompressible data, plain driver, one run:"
  echo
  echo "| layer | max RSS | wall time |"
  echo "|---|---|---|"
  for row in "${mem[@]}"; do
    read -r mb rss t <<<"$row"
    echo "| ${mb} MB | $((rss / 1024)) MB | $(secs "$t") |"
  done
fi
