#!/usr/bin/env bash
# Test and benchmark fixtures, made from Debian packages and cached.
#
#   scripts/fixtures.sh busybox   -> $CACHE/busybox.tar.gz      (a tiny rootfs: busybox-static)
#   scripts/fixtures.sh debian    -> $CACHE/debian-minbase.tar.gz (debootstrap --variant=minbase, with rpm)
#
# Prints the path of the tarball. CACHE is $GENOCI_FIXTURES or /var/cache/genoci-fixtures.
set -euo pipefail

cache=${GENOCI_FIXTURES:-/var/cache/genoci-fixtures}
suite=${GENOCI_DEBIAN_SUITE:-bookworm}
mirror=${GENOCI_DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$cache"

# Pack a tree deterministically: sorted names, numeric root owners, fixed mtime.
pack() {
  local tree=$1 out=$2
  tar --sort=name --numeric-owner --mtime='2020-01-01 00:00:00Z' --xattrs --xattrs-include='*' \
      -C "$tree" -cf - . | gzip -n > "$out.tmp"
  mv "$out.tmp" "$out"
}

busybox() {
  local out=$cache/busybox.tar.gz
  if [ ! -s "$out" ]; then
    local bb=/bin/busybox
    [ -x "$bb" ] || { echo "busybox-static is not installed (apt-get install busybox-static)" >&2; exit 1; }
    local tree
    tree=$(mktemp -d)
    trap 'rm -rf "$tree"' RETURN
    mkdir -p "$tree"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,proc,dev,sys,var}
    chmod 1777 "$tree/tmp"
    cp "$bb" "$tree/bin/busybox"
    for applet in $("$bb" --list-full); do
      [ -e "$tree/$applet" ] || ln -s /bin/busybox "$tree/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\n' > "$tree/etc/passwd"
    printf 'root:x:0:\n' > "$tree/etc/group"
    pack "$tree" "$out"
  fi
  echo "$out"
}

debian() {
  local out=$cache/debian-minbase.tar.gz
  if [ ! -s "$out" ]; then
    command -v debootstrap >/dev/null || { echo "debootstrap is not installed" >&2; exit 1; }
    local tree
    tree=$(mktemp -d)
    trap 'rm -rf "$tree"' RETURN
    debootstrap --variant=minbase --include=rpm "$suite" "$tree" "$mirror" >"$cache/debootstrap.log" 2>&1 \
      || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/*_Packages
    pack "$tree" "$out"
  fi
  echo "$out"
}

case ${1:-} in
  busybox) busybox ;;
  debian) debian ;;
  *) echo "usage: $0 busybox|debian" >&2; exit 2 ;;
esac
