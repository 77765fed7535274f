#!/bin/sh
# The README's first command (`npm run demo`): provisions the host (idempotent), then boots the
# default microVM on the embedded busybox root and runs one command in it, printing the command's
# output and its exit code. Extra arguments replace the demo command: npm run demo -- /bin/uname -a
set -e
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/provision-host.sh"
if [ $# -eq 0 ]; then
  set -- /bin/sh -c 'echo "hello from a $(uname -m) microVM, kernel $(uname -r)"'
fi
set +e
"$root/bin/openshell-vm" run -- "$@"
code=$?
echo "exit code: $code"
exit $code
