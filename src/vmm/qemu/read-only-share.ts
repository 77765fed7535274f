/**
 * The lower layer of an overlay root is read-only end to end: virtiofsd itself cannot write it.
 *
 * Neither virtiofsd we meet has a read-only switch we can rely on (the C one of QEMU <= 7 has
 * none), so virtiofsd runs in a private mount namespace in which the shared directory is a
 * read-only bind mount: the kernel answers EROFS to every write, chmod, link and mknod, whatever
 * the guest sends. Nothing of it is writable: a command reaches the guest through the guest agent,
 * not through the share. The host's own view of the directory is untouched; the namespace ends
 * with virtiofsd.
 */

/**
 * Runs by /bin/sh inside the new mount namespace: $1 the shared directory, then virtiofsd's argv.
 * Every failure says what it was doing on virtiofsd's log.
 */
export const READ_ONLY_SHARE_SCRIPT = `set -eu
root=$1
shift
fail() { echo "openshell-vm: read-only share: $*" >&2; exit 125; }
mount --bind -- "$root" "$root" || fail "cannot bind $root"
mount -o remount,bind,ro,nosuid,nodev -- "$root" || fail "cannot make $root read-only"
exec "$@"
`;

export interface ReadOnlyShareInputs {
  readonly unshare: string;
  readonly virtiofsd: string;
  readonly virtiofsdArgs: readonly string[];
  readonly flavour: 'c' | 'rust';
  readonly rootDir: string;
}

/**
 * The command and argv that start virtiofsd on a read-only `rootDir`. `unshare` without --fork
 * execs the shell, which execs virtiofsd: the pid the supervisor records stays virtiofsd's.
 * CAP_MKNOD is dropped as well, so the guest cannot create device nodes through virtiofsd.
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
      inputs.virtiofsd,
      ...inputs.virtiofsdArgs,
      ...noMknod,
    ],
  };
}
