# Shared by scripts/provision-host.sh and scripts/lib/unpack-guest-debs.sh (bash, sourced).

say() { printf 'provision: %s\n' "$*" >&2; }
die() {
  printf 'provision: error: %s\n' "$1" >&2
  [ -n "${2:-}" ] && printf '  hint: %s\n' "$2" >&2
  exit 1
}
json_str() { # JSON string literal of $1
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}
sha256() { sha256sum "$1" | cut -d' ' -f1; }

# The Debian release after $1 (for packages this release lacks), or failure when none is known.
ovm_next_codename() {
  case $1 in
    bullseye) echo bookworm ;;
    bookworm) echo trixie ;;
    trixie) echo forky ;;
    *) return 1 ;;
  esac
}

# A private apt state in directory $1 for release $3 (this system is release $2) and Debian
# architecture $4: this system's own Debian sources with the suite renamed (never a hard-coded
# mirror), empty status, its own lists and archives ($1/archives). Sets the array OVM_APT_OPTS to
# apt's options (not printed: a failure here must end the script, not a subshell). The directory is
# emptied first.
ovm_private_apt_state() {
  local st=$1 codename=$2 rel=$3 arch=$4 f n=0
  rm -rf "$st" && mkdir -p "$st/etc" "$st/lists/partial" "$st/archives/partial" && : >"$st/status"
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && grep -q "$codename" "$f" || continue
    sed -E "/^Suites:/ s/(^|[[:space:]])$codename/\\1$rel/g" "$f" >"$st/etc/$n.sources"
    n=$((n + 1))
  done
  # A .list file in a sourceparts directory is read as one-line format, .sources as deb822.
  if [ -f /etc/apt/sources.list ] && grep -q "^deb .* $codename" /etc/apt/sources.list; then
    grep "^deb " /etc/apt/sources.list | sed -E "s/ $codename([ -])/ $rel\\1/" >"$st/etc/$n.list"
  fi
  [ "$(ls "$st/etc" | wc -l)" -gt 0 ] || die "no Debian apt source for $codename in /etc/apt" \
    "add a Debian (bookworm or later) apt source"
  OVM_APT_OPTS=(-o "APT::Architecture=$arch" -o "APT::Architectures::=$arch" \
    -o "Dir::Etc::sourcelist=/dev/null" -o "Dir::Etc::sourceparts=$st/etc" -o "Dir::State::Lists=$st/lists" \
    -o "Dir::Cache=$st" -o "Dir::Cache::archives=$st/archives" -o "Dir::State::status=$st/status" \
    -o "Debug::NoLocking=1" -o "APT::Sandbox::User=$(id -un)")
}

# Downloads package $3 of Debian architecture $4 from the first of releases $5... that has it,
# through private apt states in directory $1 (this system is release $2): the
# `apt-get download` of a package this release may lack, for the fetch scripts (what: $LABEL).
# Sets OVM_DEB (the .deb's path, in $1/archives) and OVM_DEB_RELEASE, or leaves OVM_DEB empty
# when no release has it. A failed update or download ends the script.
ovm_download_deb() {
  local st=$1 codename=$2 pkg=$3 arch=$4 rel label=${LABEL:-$3}
  shift 4
  OVM_DEB="" OVM_DEB_RELEASE=""
  for rel in "$@"; do
    ovm_private_apt_state "$st" "$codename" "$rel" "$arch"
    say "$label: looking for $pkg in $rel"
    apt-get "${OVM_APT_OPTS[@]}" -qq update || die "apt-get update for $rel failed" "check network access to this system's apt sources"
    if ! apt-cache "${OVM_APT_OPTS[@]}" show "$pkg" >/dev/null 2>&1; then
      say "$label: $rel has no $pkg"
      continue
    fi
    say "$label: downloading $pkg from $rel"
    (cd "$st/archives" && apt-get "${OVM_APT_OPTS[@]}" -qq download "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
    OVM_DEB=$(ls "$st/archives/${pkg}"_*.deb 2>/dev/null | head -n1)
    [ -f "$OVM_DEB" ] || die "apt-get download $pkg from $rel failed" "re-run with network access"
    OVM_DEB_RELEASE=$rel
    return 0
  done
}
