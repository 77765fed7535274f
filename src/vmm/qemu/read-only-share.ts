/**
 * The lower layer of an overlay root is read-only end to end: virtiofsd itself cannot write it.
 *
 * Neither virtiofsd we meet has a usable read-only switch (the C one of QEMU <= 7 has none; the
 * Rust one's --readonly would also close the per-run handoff directory), so virtiofsd runs in a
 * private mount namespace in which the shared directory is a read-only bind mount (the kernel
 * answers EROFS to every write, chmod, link and mknod, whatever the guest sends), and only the
 * run's handoff directory is bound writable over its `.ovm/run`. The host's own view of both
 * directories is untouched; the namespace ends with virtiofsd.
 */

/** Where the handoff directory appears inside the share (the guest init reads /.ovm/run/ID). */
export const HANDOFF_MOUNT = '.ovm/run';

/**
 * Runs by /bin/sh inside the new mount namespace: $1 the shared directory, $2 the handoff
 * directory, then virtiofsd's argv. Every failure says what it was doing on virtiofsd's log.
 */
export const READ_ONLY_SHARE_SCRIPT = `set -eu
root=$1 handoff=$2
shift 2
fail() { echo "openshell-vm: read-only share: $*" >&2; exit 125; }
mount --bind -- "$root" "$root" || fail "cannot bind $root"
mount -o remount,bind,ro,nosuid,nodev -- "$root" || fail "cannot make $root read-only"
target=$root/${HANDOFF_MOUNT}
[ -d "$target" ] && [ ! -L "$target" ] || fail "$target is not a directory"
mount --bind -- "$handoff" "$target" || fail "cannot bind $handoff over $target"
mount -o remount,bind,nosuid,nodev,noexec -- "$target" || fail "cannot restrict $target"
exec "$@"
`;

export interface ReadOnlyShareInputs {
  readonly unshare: string;
  readonly virtiofsd: string;
  readonly virtiofsdArgs: readonly string[];
  readonly flavour: 'c' | 'rust';
  readonly rootDir: string;
  readonly handoffDir: string;
}

/**
 * The command and argv that start virtiofsd on a read-only `rootDir` with `handoffDir` writable
 * at HANDOFF_MOUNT. `unshare` without --fork execs the shell, which execs virtiofsd: the pid the
 * supervisor records stays virtiofsd's. CAP_MKNOD is dropped as well, so the guest cannot create
 * device nodes even in the handoff directory.
 */
export function readOnlyShareCommand(inputs: ReadOnlyShareInputs): { command: string; args: string[] } {
  const noMknod = inputs.flavour === 'rust' ? ['--modcaps=-mknod'] : ['-o', 'modcaps=-mknod'];
  return {
    command: inputs.unshare,
    args: [
      '--mount',
      '--propagation',
      'private',
      '--',
      '/bin/sh',
      '-c',
      READ_ONLY_SHARE_SCRIPT,
      'ovm-read-only-share',
      inputs.rootDir,
      inputs.handoffDir,
      inputs.virtiofsd,
      ...inputs.virtiofsdArgs,
      ...noMknod,
    ],
  };
}
