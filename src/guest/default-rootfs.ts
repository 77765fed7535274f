import { busyboxApplets } from './busybox.ts';
import { AGENT_GUEST_PATH, GUEST_INIT_PATH } from './paths.ts';
import type { TreeEntry } from './tree.ts';

export { GUEST_INIT_PATH } from './paths.ts';

/**
 * The embedded default rootfs as data: busybox with every applet linked in /bin, the guest init
 * and agent, and the few files a shell expects. Pure, so the same description both writes the
 * tree and checks it before each boot. Nothing in it is writable by others or setuid: /tmp is a
 * tmpfs in the guest (ovm-init mounts it), so on disk it is an ordinary 0755 directory.
 */
export function defaultRootfsEntries(
  busybox: Uint8Array,
  initScript: string,
  agent: Uint8Array,
): TreeEntry[] {
  const dirs = [
    '.',
    'bin',
    'sbin',
    'usr',
    'usr/bin',
    'dev',
    'proc',
    'sys',
    'tmp',
    'run',
    'root',
    'etc',
    'mnt',
  ];
  const entries: TreeEntry[] = dirs.map((d) => ({ type: 'dir', path: d, mode: 0o755 }));
  entries.push({ type: 'file', path: 'bin/busybox', mode: 0o755, data: busybox });
  for (const applet of busyboxApplets(busybox)) {
    if (applet === 'busybox' || applet.includes('/')) continue;
    entries.push({ type: 'symlink', path: `bin/${applet}`, target: 'busybox' });
  }
  const text = (p: string, content: string, mode = 0o644): TreeEntry => ({
    type: 'file',
    path: p,
    mode,
    data: Buffer.from(content, 'utf8'),
  });
  entries.push(
    { type: 'symlink', path: 'usr/bin/env', target: '../../bin/busybox' },
    text(GUEST_INIT_PATH.slice(1), initScript, 0o755),
    { type: 'file', path: AGENT_GUEST_PATH, mode: 0o755, data: agent },
    text('etc/passwd', 'root:x:0:0:root:/root:/bin/sh\n'),
    text('etc/group', 'root:x:0:\n'),
    text('etc/hostname', 'openshell-vm\n'),
  );
  return entries;
}
