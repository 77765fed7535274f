import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import { inRoot } from '../archive/root-path.ts';

/** The guest scripts a gateway rootfs carries, from this package, each at a fixed path. */
export const GATEWAY_GUEST_SCRIPTS = [
  { source: 'ovm-init.sh', dest: 'sbin/ovm-init' },
  { source: 'gateway-init.sh', dest: 'sbin/ovm-gateway-init' },
  { source: 'check-vm-capabilities.sh', dest: 'usr/local/bin/ovm-check-capabilities' },
] as const;

export interface GuestScript {
  readonly dest: string;
  readonly text: string;
  readonly sha256: string;
}

export async function readGatewayGuestScripts(): Promise<GuestScript[]> {
  return Promise.all(
    GATEWAY_GUEST_SCRIPTS.map(async ({ source, dest }) => {
      const text = await fs.readFile(new URL(`../guest/scripts/${source}`, import.meta.url), 'utf8');
      return { dest, text, sha256: createHash('sha256').update(text).digest('hex') };
    }),
  );
}

/** Installs the scripts as they are in the package (mode 0755); nothing edits them in place. */
export async function installGuestScripts(root: string, scripts: readonly GuestScript[]): Promise<void> {
  for (const s of scripts) {
    const file = await inRoot(root, s.dest);
    await fs.rm(file, { recursive: true, force: true });
    await fs.writeFile(file, s.text, { mode: 0o755 });
    await fs.chmod(file, 0o755);
  }
}
