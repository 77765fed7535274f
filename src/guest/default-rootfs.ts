import fs from 'node:fs/promises';
import path from 'node:path';
import { AGENT_GUEST_PATH } from './agent-build.ts';
import { busyboxApplets } from './busybox.ts';

/** Where the guest init lives inside every rootfs openshell-vm builds. */
export const GUEST_INIT_PATH = '/sbin/ovm-init';

/**
 * Writes the embedded default rootfs into `dir` (which must not exist yet): busybox with every
 * applet linked in /bin, the guest init and agent, and the few files a shell expects.
 */
export async function writeDefaultRootfs(
  dir: string,
  busybox: Uint8Array,
  initScript: string,
  agent: Uint8Array,
): Promise<void> {
  const dirs = [
    'bin',
    'sbin',
    'usr/bin',
    'dev',
    'proc',
    'sys',
    'tmp',
    'run',
    'root',
    'etc',
    'mnt',
    '.ovm-host',
    '.ovm/run',
  ];
  for (const d of dirs) await fs.mkdir(path.join(dir, d), { recursive: true });
  await fs.chmod(path.join(dir, 'tmp'), 0o1777);
  await fs.writeFile(path.join(dir, 'bin/busybox'), busybox, { mode: 0o755 });
  for (const applet of busyboxApplets(busybox)) {
    if (applet === 'busybox' || applet.includes('/')) continue;
    await fs.symlink('busybox', path.join(dir, 'bin', applet));
  }
  await fs.symlink('../../bin/busybox', path.join(dir, 'usr/bin/env'));
  await fs.writeFile(path.join(dir, GUEST_INIT_PATH), initScript, { mode: 0o755 });
  await fs.writeFile(path.join(dir, AGENT_GUEST_PATH), agent, { mode: 0o755 });
  await fs.writeFile(path.join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await fs.writeFile(path.join(dir, 'etc/group'), 'root:x:0:\n');
  await fs.writeFile(path.join(dir, 'etc/hostname'), 'openshell-vm\n');
}
