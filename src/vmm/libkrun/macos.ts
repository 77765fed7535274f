import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type { HostEnvironment } from '../../config/environment.ts';
import { HostError } from '../../errors.ts';
import { pathExists } from '../../host/fs.ts';

const execFileAsync = promisify(execFile);

/** Shipped with the package: the one entitlement Hypervisor.framework requires. */
export const ENTITLEMENTS_PLIST = new URL('./entitlements.plist', import.meta.url).pathname;
export const HYPERVISOR_ENTITLEMENT = 'com.apple.security.hypervisor';

/** codesign's argv for an ad-hoc signature carrying the entitlements (pure). */
export function codesignArgs(binary: string, plist = ENTITLEMENTS_PLIST): string[] {
  return ['--force', '--sign', '-', '--entitlements', plist, binary];
}

/** Where the signed copy of this Node.js lives (one per Node version and binary). */
export function signedNodePath(env: HostEnvironment, nodeBinary: string, version: string): string {
  const id = createHash('sha256').update(`${nodeBinary}\0${version}`).digest('hex').slice(0, 12);
  return path.join(env.cacheDir, 'libkrun-runner', `node-${version}-${id}`);
}

export async function hasHypervisorEntitlement(binary: string): Promise<boolean> {
  try {
    const { stdout, stderr } = await execFileAsync('codesign', [
      '-d',
      '--entitlements',
      '-',
      '--xml',
      binary,
    ]);
    return `${stdout}${stderr}`.includes(HYPERVISOR_ENTITLEMENT);
  } catch {
    return false;
  }
}

/**
 * The Node.js binary the libkrun runner runs with. On macOS the process that calls into
 * Hypervisor.framework must carry com.apple.security.hypervisor (else libkrun fails with -EINVAL),
 * so the runner uses a copy of this Node.js in the cache, ad-hoc signed with the shipped
 * entitlements; the user's own Node.js is never modified. Elsewhere: this Node.js as is.
 */
export async function runnerNode(
  env: HostEnvironment,
  platform: NodeJS.Platform = process.platform,
): Promise<string> {
  if (platform !== 'darwin') return process.execPath;
  const dest = signedNodePath(env, process.execPath, process.version);
  if ((await pathExists(dest)) && (await hasHypervisorEntitlement(dest))) return dest;
  await fs.mkdir(path.dirname(dest), { recursive: true });
  const tmp = `${dest}.tmp-${process.pid}`;
  await fs.copyFile(process.execPath, tmp);
  try {
    await execFileAsync('codesign', codesignArgs(tmp));
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw new HostError(`cannot sign the libkrun runner (${tmp}) with the hypervisor entitlement`, {
      hint: 'codesign comes with the Xcode command line tools: xcode-select --install',
      cause: err,
    });
  }
  await fs.rename(tmp, dest);
  if (!(await hasHypervisorEntitlement(dest))) {
    throw new HostError(`${dest} was signed but does not carry ${HYPERVISOR_ENTITLEMENT}`, {
      hint: `run: codesign -d --entitlements - ${dest}`,
    });
  }
  return dest;
}
