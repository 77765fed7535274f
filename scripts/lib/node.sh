# Shared by bin/openshell-vm and the scripts: find a Node.js 24+ to run the TypeScript sources.
# POSIX sh (sourced, not executed) so it works before any Node.js is installed.

OVM_NODE_MAJOR=24

ovm_cache_dir() {
  if [ -n "${OPENSHELL_VM_CACHE_DIR:-}" ]; then
    printf '%s\n' "$OPENSHELL_VM_CACHE_DIR"
  else
    printf '%s\n' "${XDG_CACHE_HOME:-$HOME/.cache}/openshell-vm"
  fi
}

# Prints the major version of the node binary $1, or nothing.
ovm_node_major() {
  v=$("$1" --version 2>/dev/null) || return 0
  v=${v#v}
  printf '%s\n' "${v%%.*}"
}

# Prints the path of a Node.js >= 24: the one scripts/provision-host.sh placed in the cache
# (checked first: it costs no process start), else the one on PATH if new enough. Fails when
# neither exists.
ovm_find_node() {
  cached="$(ovm_cache_dir)/node/bin/node"
  if [ -x "$cached" ]; then
    printf '%s\n' "$cached"
    return 0
  fi
  if command -v node >/dev/null 2>&1; then
    major=$(ovm_node_major node)
    if [ -n "$major" ] && [ "$major" -ge "$OVM_NODE_MAJOR" ]; then
      command -v node
      return 0
    fi
  fi
  return 1
}

ovm_node_missing_message() {
  found=none
  if command -v node >/dev/null 2>&1; then found=$(node --version); fi
  echo "openshell-vm: error: Node.js $OVM_NODE_MAJOR or newer is required (found: $found)"
  echo "  hint: run scripts/provision-host.sh from the openshell-vm checkout, or install Node.js $OVM_NODE_MAJOR+"
}
