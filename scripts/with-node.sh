#!/bin/sh
# Runs a command with Node.js 24+ and the project's node_modules/.bin first on PATH.
# Used by the npm scripts, which npm may have started under an older system Node.js.
set -e
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib/node.sh"
if ! node=$(ovm_find_node); then
  ovm_node_missing_message >&2
  exit 125
fi
PATH="$(dirname "$node"):$root/node_modules/.bin:$PATH"
export PATH
exec "$@"
