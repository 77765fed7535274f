#!/bin/sh
# The whole test suite, as the README gives it (`npm test`) and CI runs it: provisions the host
# (idempotent), checks formatting, lint, types and the import layering, then runs every test with node:test, ending
# with node:test's summary (tests / pass / fail). The end-to-end tests boot real microVMs.
set -e
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/provision-host.sh
. "$root/scripts/lib/node.sh"
node=$(ovm_find_node)
PATH="$(dirname "$node"):$root/node_modules/.bin:$PATH"
export PATH
echo "== biome check" >&2
biome check .
echo "== tsc (type check)" >&2
tsc -p tsconfig.json
echo "== depcruise (the layering rule: no module imports a layer above its own)" >&2
depcruise --config .dependency-cruiser.cjs --output-type err src
echo "== node --test" >&2
exec node --test --test-reporter=spec "$@" 'src/**/*.test.ts' 'test/**/*.test.ts'
