#!/usr/bin/env bash
# usage: unpack-guest-debs.sh DEB_ARCH KERNEL_PACKAGE KERNEL_DEB BUSYBOX_DEB OUT
#
# Unpacks a Debian kernel package and busybox-static into OUT (replacing it whole: built in
# OUT.tmp.PID, then renamed), generates modules.dep with `depmod -b`, and writes OUT/manifest.json
# (versions, paths, sha256), which src/host/toolchain.ts reads. Called by provision-host.sh.
#
# Where the files are is read from each package's own file list, not assumed: Debian 12 ships
# lib/modules/RELEASE and bin/busybox, Debian 13 (merged /usr) usr/lib/modules/RELEASE and
# usr/bin/busybox. The manifest records the paths the package used.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=provision-common.sh
. "$here/provision-common.sh"

[ $# -eq 5 ] || die "usage: unpack-guest-debs.sh DEB_ARCH KERNEL_PACKAGE KERNEL_DEB BUSYBOX_DEB OUT"
d=$1 kpkg=$2 kdeb=$3 bdeb=$4 out=$5

# The paths a .deb installs, without the leading "./" (directories end with "/").
deb_paths() {
  dpkg-deb --fsys-tarfile "$1" | tar -t | sed 's|^\./||' ||
    die "cannot list the files of $1" "the download is damaged: re-run scripts/provision-host.sh --refresh"
}

kpaths=$(deb_paths "$kdeb")
mapfile -t moddirs < <(sed -n -E 's#^((usr/)?lib/modules/[^/]+)/.*#\1#p' <<<"$kpaths" | sort -u)
[ ${#moddirs[@]} -eq 1 ] || die "$kpkg has ${#moddirs[@]} module directories (${moddirs[*]:-none}); expected one lib/modules/RELEASE or usr/lib/modules/RELEASE" \
  "report this: the kernel package layout changed"
moddir=${moddirs[0]}
release=${moddir##*/}
[[ $release =~ ^[A-Za-z0-9][A-Za-z0-9._+~-]*$ ]] || die "$kpkg names its kernel release '$release', which is not a kernel release"
vmlinuz_rel="boot/vmlinuz-$release"
grep -qxF "$vmlinuz_rel" <<<"$kpaths" || die "$kpkg has no /$vmlinuz_rel" "report this: the kernel package layout changed"
bpaths=$(deb_paths "$bdeb")
mapfile -t busyboxes < <(grep -xE '(usr/)?bin/busybox' <<<"$bpaths")
[ ${#busyboxes[@]} -eq 1 ] || die "busybox-static:$d has ${#busyboxes[@]} busybox binaries (${busyboxes[*]:-none}); expected /bin/busybox or /usr/bin/busybox" \
  "report this: the busybox-static package layout changed"
busybox_rel=${busyboxes[0]}

kver=$(dpkg-deb -f "$kdeb" Version)
bver=$(dpkg-deb -f "$bdeb" Version)
tmp="$out.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp" && mkdir -p "$tmp/kernel" "$tmp/busybox"
say "[$d] unpacking $kpkg $kver"
dpkg-deb -x "$kdeb" "$tmp/kernel"
dpkg-deb -x "$bdeb" "$tmp/busybox"
[ -f "$tmp/kernel/$vmlinuz_rel" ] || die "$kpkg did not unpack /$vmlinuz_rel"
[ -f "$tmp/busybox/$busybox_rel" ] || die "busybox-static:$d did not unpack /$busybox_rel"

# depmod -b BASE looks in BASE/lib/modules (kmod as Debian 12 builds it) or BASE/usr/lib/modules:
# a merged-/usr package gets the link that a merged-/usr system has, so both find its modules.
if [ "${moddir#usr/}" != "$moddir" ] && [ ! -e "$tmp/kernel/lib" ]; then ln -s usr/lib "$tmp/kernel/lib"; fi
# depmod lives in /usr/sbin, which is not on an ordinary user's PATH.
depmod=$(PATH="$PATH:/usr/sbin:/sbin" command -v depmod) || die "depmod not found" "apt-get install kmod"
"$depmod" -b "$tmp/kernel" "$release" || die "depmod -b failed for $release" "apt-get install kmod"
[ -f "$tmp/kernel/$moddir/modules.dep" ] || die "depmod -b $tmp/kernel $release wrote no $moddir/modules.dep" \
  "this depmod looks for modules elsewhere; report this with the output of depmod --version"

{
  echo "{"
  echo "  \"debArch\": $(json_str "$d"),"
  echo "  \"fetchedAt\": $(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)"),"
  echo "  \"kernel\": {"
  echo "    \"package\": $(json_str "$kpkg"),"
  echo "    \"version\": $(json_str "$kver"),"
  echo "    \"release\": $(json_str "$release"),"
  echo "    \"debSha256\": $(json_str "$(sha256 "$kdeb")"),"
  echo "    \"vmlinuz\": $(json_str "$out/kernel/$vmlinuz_rel"),"
  echo "    \"vmlinuzSha256\": $(json_str "$(sha256 "$tmp/kernel/$vmlinuz_rel")"),"
  echo "    \"modulesDir\": $(json_str "$out/kernel/$moddir"),"
  echo "    \"modulesDepSha256\": $(json_str "$(sha256 "$tmp/kernel/$moddir/modules.dep")")"
  echo "  },"
  echo "  \"busybox\": {"
  echo "    \"package\": \"busybox-static\","
  echo "    \"version\": $(json_str "$bver"),"
  echo "    \"debSha256\": $(json_str "$(sha256 "$bdeb")"),"
  echo "    \"binary\": $(json_str "$out/busybox/$busybox_rel"),"
  echo "    \"binarySha256\": $(json_str "$(sha256 "$tmp/busybox/$busybox_rel")")"
  echo "  }"
  echo "}"
} >"$tmp/manifest.json"
rm -rf "$out" && mv "$tmp" "$out"
trap - EXIT
say "[$d] kernel $release ($kver), busybox $bver recorded in $out/manifest.json"
