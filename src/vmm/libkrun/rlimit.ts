import koffi from 'koffi';

/**
 * Raises this process's open-file soft limit to its hard limit (capped on macOS, where an
 * unlimited hard limit cannot be used as a soft one), as the VMM process needs many descriptors
 * (virtio-fs, containerd in the guest). Returns the new soft limit, or undefined when the C
 * library refused.
 */
export function raiseNofileLimit(): number | undefined {
  const darwin = process.platform === 'darwin';
  const libc = koffi.load(darwin ? 'libSystem.B.dylib' : 'libc.so.6');
  koffi.struct('ovm_rlimit', { cur: 'uint64_t', max: 'uint64_t' });
  const getrlimit = libc.func('int getrlimit(int resource, _Out_ ovm_rlimit *rlim)');
  const setrlimit = libc.func('int setrlimit(int resource, const ovm_rlimit *rlim)');
  const RLIMIT_NOFILE = darwin ? 8 : 7;
  const current = { cur: 0n, max: 0n };
  if (getrlimit(RLIMIT_NOFILE, current) !== 0) return undefined;
  // macOS: OPEN_MAX (10240) is the most a soft limit may be when the hard one is unlimited.
  const target = darwin && BigInt(current.max) > 10240n ? 10240n : BigInt(current.max);
  if (setrlimit(RLIMIT_NOFILE, { cur: target, max: current.max }) !== 0) return undefined;
  return Number(target);
}
