import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import { inRoot } from '../archive/root-path.ts';
import { packageVersion } from '../version.ts';

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

/**
 * Installs this package's gateway guest scripts into `root` and returns their build-record inputs
 * (one per script, with its sha256): what every rootfs build records of them.
 */
export async function installRecordedGuestScripts(
  root: string,
): Promise<{ kind: 'guest-script'; source: string; version: string; sha256: string; path: string }[]> {
  const scripts = await readGatewayGuestScripts();
  await installGuestScripts(root, scripts);
  return scripts.map((s) => ({
    kind: 'guest-script' as const,
    source: 'openshell-vm',
    version: packageVersion(),
    sha256: s.sha256,
    path: s.dest,
  }));
}
