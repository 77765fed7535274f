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

/**
 * What `codesign -d --entitlements - FILE` says about FILE, its stdout and stderr together
 * (pure). codesign prints the entitlements in its text form on macOS 12 and later (`[Dict]`,
 * then `[Key] NAME`, `[Value]`, `[Bool] true` per entitlement, a tab deeper each level), and as an
 * XML plist on older ones (after an 8-byte blob header) or with --xml. `signed` is false for "code
 * object is not signed at all". `entitlements` holds each top-level key with its value: a boolean,
 * string or number, or "(array)" / "(dict)" for those kinds. An entitlement is granted only when
 * its value is true: a key set to false grants nothing.
 */
export interface CodesignEntitlements {
  readonly signed: boolean;
  readonly entitlements: Readonly<Record<string, boolean | string | number>>;
}

export function parseCodesignEntitlements(output: string): CodesignEntitlements {
  if (/code object is not signed at all/.test(output)) return { signed: false, entitlements: {} };
  const entitlements: Record<string, boolean | string | number> = {};
  const xml = /<dict>([\s\S]*)<\/dict>\s*<\/plist>/.exec(output);
  if (xml) {
    // Top-level keys only: what a nested <dict> or <array> holds is skipped.
    const tag =
      /<key>([^<]*)<\/key>|<(true|false)\s*\/>|<string>([^<]*)<\/string>|<integer>([^<]*)<\/integer>|<(array|dict)\s*\/>|<(array|dict)>|<\/(?:array|dict)>/g;
    let depth = 0;
    let key: string | undefined;
    const set = (value: boolean | string | number) => {
      if (depth === 0 && key !== undefined) entitlements[key] = value;
      key = undefined;
    };
    for (const [, name, bool, str, int, empty, open] of (xml[1] as string).matchAll(tag)) {
      if (name !== undefined) key = depth === 0 ? decodeXml(name) : key;
      else if (bool !== undefined) set(bool === 'true');
      else if (str !== undefined) set(decodeXml(str));
      else if (int !== undefined) set(Number(int));
      else if (empty !== undefined) set(`(${empty})`);
      else if (open !== undefined) {
        set(`(${open})`);
        depth += 1;
      } else depth -= 1;
    }
    return { signed: true, entitlements };
  }
  // The text form: "[Key] NAME" at the first level of indentation below [Dict], then its value.
  const lines = output.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const key = /^(\s*)\[Key\] (.+?)\s*$/.exec(lines[i] as string);
    if (!key || (key[1] as string).replace(/ {4}/g, '\t').length !== 1) continue;
    const value = lines
      .slice(i + 1, i + 3)
      .map((l) => /^\s*\[(Bool|String|Number|Integer|Array|Dict)\]\s*(.*?)\s*$/.exec(l))
      .find(Boolean);
    if (!value) continue;
    const [, kind, text] = value as RegExpExecArray;
    entitlements[key[2] as string] =
      kind === 'Bool'
        ? text === 'true'
        : kind === 'String'
          ? (text as string)
          : kind === 'Number' || kind === 'Integer'
            ? Number(text)
            : `(${(kind as string).toLowerCase()})`;
  }
  return { signed: true, entitlements };
}

function decodeXml(text: string): string {
  return text
    .replaceAll('&lt;', '<')
    .replaceAll('&gt;', '>')
    .replaceAll('&quot;', '"')
    .replaceAll('&apos;', "'")
    .replaceAll('&amp;', '&');
}

/** Whether codesign's entitlements output grants the hypervisor entitlement (its value true). */
export function grantsHypervisor(output: string): boolean {
  return parseCodesignEntitlements(output).entitlements[HYPERVISOR_ENTITLEMENT] === true;
}

/**
 * What `codesign -d --verbose FILE` (stderr) says of FILE's signature (pure): its CodeDirectory
 * flags, whether it is ad hoc, and whether it has the hardened runtime, under which dyld ignores
 * DYLD_LIBRARY_PATH (the loader path the runner is given) unless an entitlement allows it.
 */
export interface CodesignSignature {
  readonly signed: boolean;
  readonly flags: readonly string[];
  readonly adhoc: boolean;
  readonly hardenedRuntime: boolean;
}

export function parseCodesignSignature(output: string): CodesignSignature {
  if (/code object is not signed at all/.test(output))
    return { signed: false, flags: [], adhoc: false, hardenedRuntime: false };
  const m = /^CodeDirectory .*\bflags=0x([0-9a-f]+)\(([^)]*)\)/m.exec(output);
  const flags = m ? (m[2] as string).split(',').filter(Boolean) : [];
  const bits = m ? Number.parseInt(m[1] as string, 16) : 0;
  return {
    signed: m !== null || /^Signature=/m.test(output),
    flags,
    // CS_ADHOC 0x2, CS_RUNTIME 0x10000 (the names codesign prints beside them).
    adhoc: (bits & 0x2) !== 0 || /^Signature=adhoc$/m.test(output),
    hardenedRuntime: (bits & 0x10000) !== 0,
  };
}

/** codesign's stdout and stderr together, whatever its exit status; undefined when it cannot run. */
async function codesignOutput(args: readonly string[]): Promise<string | undefined> {
  try {
    const { stdout, stderr } = await execFileAsync('codesign', [...args]);
    return `${stdout}${stderr}`;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stdout?: string; stderr?: string };
    if (e.code === 'ENOENT') return undefined;
    return `${e.stdout ?? ''}${e.stderr ?? ''}`;
  }
}

export async function hasHypervisorEntitlement(binary: string): Promise<boolean> {
  const out = await codesignOutput(['-d', '--entitlements', '-', binary]);
  return out !== undefined && grantsHypervisor(out);
}

/** What codesign says of the runner (doctor): undefined outputs when codesign cannot be run. */
export interface RunnerSignatureText {
  readonly entitlements: string | undefined;
  readonly signature: string | undefined;
}

export async function readRunnerSignature(binary: string): Promise<RunnerSignatureText> {
  return {
    entitlements: await codesignOutput(['-d', '--entitlements', '-', binary]),
    signature: await codesignOutput(['-d', '--verbose=2', binary]),
  };
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
