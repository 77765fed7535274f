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
