#!/usr/bin/env bash
# usage: fetch-linux-source.sh [--refresh] [--check] CACHE
#
# Fetches Debian's kernel source package (linux-source-6.12: a .deb carrying the source tarball)
# with `apt-get download` into CACHE/host/linux-source, never installing it on the host. It is
# looked for in this system's own Debian release and then in the next one (bookworm has only 6.1;
# trixie has 6.12), through a private apt state whose sources are this system's own Debian sources
# with the suite renamed (never a hard-coded mirror). apt checks the .deb against the release's
# signed package lists; the tarball's sha256 is recorded, and `openshell-vm kernel build` checks
# it before every build. The result is built in CACHE/host/linux-source.tmp.PID and renamed into
# place whole:
#
#   CACHE/host/linux-source/linux-source-6.12.tar.xz   the source tarball
#   CACHE/host/linux-source/manifest.json              package, version, release, debSha256,
#                                                      tarball, tarballSha256 (src/kernel/source.ts)
#
# Idempotent: with a manifest whose tarball still has its sha256 it does nothing (no network, the
# check reads the 150 MB tarball: about half a second). --check only says whether it is there
# (exit 1 when not).
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
    *) break ;;
  esac
done
[ $# -eq 1 ] || die "usage: fetch-linux-source.sh [--refresh] [--check] CACHE"
cache=$1
pkg=${OVM_LINUX_SOURCE_PACKAGE:-linux-source-6.12}
out="$cache/host/linux-source"
manifest="$out/manifest.json"

cached_ok() {
  [ -f "$manifest" ] || return 1
  local tarball sum p
  p=$(sed -n 's/.*"package": *"\([^"]*\)".*/\1/p' "$manifest")
  tarball=$(sed -n 's/.*"tarball": *"\([^"]*\)".*/\1/p' "$manifest")
  sum=$(sed -n 's/.*"tarballSha256": *"\([^"]*\)".*/\1/p' "$manifest")
  [ "$p" = "$pkg" ] && [ -n "$tarball" ] && [ -f "$tarball" ] && [ "$(sha256 "$tarball")" = "$sum" ]
}
if [ $refresh = 0 ] && cached_ok; then
  say "kernel source cached ($manifest)"
  exit 0
fi
if [ $check = 1 ]; then
  say "kernel source $pkg missing (expected $manifest)"
  exit 1
fi

command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 ||
  die "apt-get and dpkg-deb are needed to fetch Debian's $pkg" "run this on Debian or Ubuntu"
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$codename" ] || die "/etc/os-release names no VERSION_CODENAME" "run this on Debian (bookworm or later)"
suites=("$codename")
if n=$(ovm_next_codename "$codename"); then suites+=("$n"); fi

st="$cache/apt/linux-source"
tmp="$out.tmp.$$"
trap 'rm -rf "$st" "$tmp"' EXIT

LABEL="kernel source" ovm_download_deb "$st" "$codename" "$pkg" "$(dpkg --print-architecture)" "${suites[@]}"
deb=$OVM_DEB
release=$OVM_DEB_RELEASE
[ -n "$deb" ] || die "no Debian release among ${suites[*]} has $pkg" \
  "pass a kernel source tarball to openshell-vm kernel build --source PATH"

ver=$(dpkg-deb -f "$deb" Version)
rm -rf "$tmp" && mkdir -p "$tmp/root"
dpkg-deb -x "$deb" "$tmp/root"
# The tarball is usr/src/linux-source-X.Y.tar.xz (or .tar.bz2 in older packages).
src=$(cd "$tmp/root" && find usr/src -maxdepth 1 -type f -name 'linux-source-*.tar.*' | sort | head -n1)
[ -n "$src" ] || die "the $pkg package has no usr/src/linux-source-*.tar.* tarball" "report this: the package layout changed"
name=$(basename "$src")
mv "$tmp/root/$src" "$tmp/$name"
rm -rf "$tmp/root"
printf '{\n  "package": %s,\n  "version": %s,\n  "release": %s,\n  "debSha256": %s,\n  "fetchedAt": %s,\n  "tarball": %s,\n  "tarballSha256": %s\n}\n' \
  "$(json_str "$pkg")" "$(json_str "$ver")" "$(json_str "$release")" "$(json_str "$(sha256 "$deb")")" \
  "$(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)")" "$(json_str "$out/$name")" "$(json_str "$(sha256 "$tmp/$name")")" >"$tmp/manifest.json"
rm -rf "$out" && mv "$tmp" "$out"
say "kernel source: $pkg $ver ($release) in $out (recorded in $manifest)"
