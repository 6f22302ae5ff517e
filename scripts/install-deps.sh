#!/usr/bin/env bash
# Everything genoci needs on Debian 12 to build, run and test, as root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
packages=(
  # build: bindgen for loopdev-3 and libbtrfsutil, the btrfs library, mkfs.btrfs
  libclang-dev libbtrfsutil-dev btrfs-progs pkg-config
  # build: the seccomp filter of run steps (libseccomp crate)
  libseccomp-dev
  # run: the network of network: host steps in their user namespace
  slirp4netns
  # tests: losetup, findmnt, mount
  mount util-linux
  # tests: xattrs and ACLs set on trees (setfattr, setfacl)
  attr acl
  # fixtures
  busybox-static debootstrap rpm dpkg-dev zstd xz-utils bzip2 ca-certificates
  # interop and comparison tools
  umoci skopeo oci-image-tool podman runc buildah
  # benchmark: peak memory (/usr/bin/time -v)
  time
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "cargo (Rust) is required: https://rustup.rs" >&2; exit 1; }
