#!/usr/bin/env bash
# usage: fetch-libkrunfw-deb.sh [--refresh] [--check] CACHE
#
# Fetches Debian's binary libkrunfw package (libkrunfw5: libkrunfw built by Debian, the guest
# kernel as a shared library) with `apt-get download` into CACHE/host/libkrunfw, never installing
# it on the host. It is looked for in this system's own Debian release and then in the later ones
# (bookworm and trixie have none; forky has 5.5.0+ds-1), through a private apt state whose sources
# are this system's own Debian sources with the suite renamed (ovm_private_apt_state), unpacked with
# dpkg-deb. The result is built in CACHE/host/libkrunfw.tmp.PID and renamed into place whole:
#
#   CACHE/host/libkrunfw/root/...            the unpacked package
#   CACHE/host/libkrunfw/manifest.json       package, version, release, debSha256, library,
#                                            librarySha256 (read by test/e2e/libkrunfw.test.ts)
#
# Idempotent: with a manifest whose library still has its sha256 it does nothing (no network).
# --check only says whether it is there (exit 1 when not).
# Only libkrunfw: Debian has no libkrun package, so this is not a runtime that boots VMs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=provision-common.sh
. "$here/provision-common.sh"

refresh=0
check=0
while [ $# -gt 1 ]; do
  case $1 in
    --refresh) refresh=1; shift ;;
    --check) check=1; shift ;;
    *) die "usage: fetch-libkrunfw-deb.sh [--refresh] [--check] CACHE" ;;
  esac
done
[ $# -eq 1 ] || die "usage: fetch-libkrunfw-deb.sh [--refresh] [--check] CACHE"
cache=$1
pkg=libkrunfw5
out="$cache/host/libkrunfw"
manifest="$out/manifest.json"

cached_ok() {
  [ -f "$manifest" ] || return 1
  local lib sum
  lib=$(sed -n 's/.*"library": *"\([^"]*\)".*/\1/p' "$manifest")
  sum=$(sed -n 's/.*"librarySha256": *"\([^"]*\)".*/\1/p' "$manifest")
  [ -n "$lib" ] && [ -f "$lib" ] && [ "$(sha256 "$lib")" = "$sum" ]
}
if [ $refresh = 0 ] && cached_ok; then
  say "libkrunfw cached ($manifest)"
  exit 0
fi
if [ $check = 1 ]; then
  say "libkrunfw: Debian's $pkg is not in the cache (expected $manifest)"
  exit 1
fi

command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 ||
  die "apt-get and dpkg-deb are needed to fetch Debian's $pkg" "run this on Debian or Ubuntu"
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$codename" ] || die "/etc/os-release names no VERSION_CODENAME" "run this on Debian (bookworm or later)"
# This release, then the later ones: bookworm and trixie have no libkrunfw5, forky (testing) has
# 5.5.0. The first that has the package wins.
LATER=(bullseye bookworm trixie forky)
suites=()
for i in "${!LATER[@]}"; do
  [ "${LATER[$i]}" = "$codename" ] && suites=("${LATER[@]:$i}")
done
[ ${#suites[@]} -gt 0 ] || suites=("$codename")

deb_arch=$(dpkg --print-architecture)
st="$cache/apt/libkrunfw"
trap 'rm -rf "$st" "$out.tmp.$$"' EXIT

LABEL=libkrunfw ovm_download_deb "$st" "$codename" "$pkg" "$deb_arch" "${suites[@]}"
deb=$OVM_DEB
release=$OVM_DEB_RELEASE
[ -n "$deb" ] || die "no Debian release among ${suites[*]} has $pkg" \
  "build libkrunfw instead: openshell-vm kernel build --target libkrunfw"

ver=$(dpkg-deb -f "$deb" Version)
tmp="$out.tmp.$$"
rm -rf "$tmp" && mkdir -p "$tmp/root" && dpkg-deb -x "$deb" "$tmp/root"
# The library is the versioned regular file (libkrunfw.so.5.x.y); its soname link points at it.
lib=$(cd "$tmp/root" && find . -type f -name 'libkrunfw.so.5*' | sed 's|^\./||' | sort | head -n1)
[ -n "$lib" ] || die "the $pkg package has no libkrunfw.so.5* file" "report this: the package layout changed"
printf '{\n  "package": %s,\n  "version": %s,\n  "release": %s,\n  "debSha256": %s,\n  "library": %s,\n  "librarySha256": %s\n}\n' \
  "$(json_str "$pkg")" "$(json_str "$ver")" "$(json_str "$release")" "$(json_str "$(sha256 "$deb")")" \
  "$(json_str "$out/root/$lib")" "$(json_str "$(sha256 "$tmp/root/$lib")")" >"$tmp/manifest.json"
rm -rf "$out" && mv "$tmp" "$out"
say "libkrunfw: $pkg $ver ($release) in $out (recorded in $manifest)"
