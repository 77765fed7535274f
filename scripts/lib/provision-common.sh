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
