import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError } from '../errors.ts';
import { pathExists, writeFileAtomic } from '../host/fs.ts';
import { provisionCommand } from '../host/provision.ts';
import { findOnPath } from '../host/toolchain.ts';
import type { ProcessSpec } from '../supervisor/process.ts';

/** stdout and stderr of `binary args`, whatever its exit status (gvproxy -help exits 2). */
function outputOf(binary: string, args: readonly string[]): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(binary, [...args], { encoding: 'utf8' }, (_err, stdout, stderr) => resolve({ stdout, stderr }));
  });
}

/** gvproxy's fixed virtual network (gvisor-tap-vsock defaults). */
export const GVPROXY_NET = {
  subnet: '192.168.127.0/24',
  /**
   * gvproxy itself: DHCP, DNS, gateway, and (every version) its forwarder API on port 80, which the
   * frame filter between the VMM and gvproxy keeps from the guest (frame-filter.ts).
   */
  gateway: '192.168.127.1',
  /** The address gvproxy's static DHCP lease gives the MAC below. */
  guest: '192.168.127.2',
  /** Connections to this address reach the host's loopback. */
  host: '192.168.127.254',
  mac: '5a:94:ef:e4:0c:ee',
} as const;

export const GVPROXY_FILES = {
  apiSocket: 'gv-api.sock',
  qemuSocket: 'gv-qemu.sock',
  /** Where the VMM connects: the frame filter (frame-relay.ts), which connects on to qemuSocket. */
  vmSocket: 'gv-vm.sock',
  log: 'gvproxy.log',
  pid: 'gvproxy.pid',
} as const;

const PODMAN_LOCATIONS = [
  '/usr/libexec/podman/gvproxy',
  '/usr/lib/podman/gvproxy',
  '/opt/homebrew/opt/podman/libexec/podman/gvproxy',
  '/usr/local/opt/podman/libexec/podman/gvproxy',
  '/opt/podman/bin/gvproxy',
];

/** gvproxy: OPENSHELL_VM_GVPROXY, PATH, Podman's, then the one provisioning put in the cache. */
export async function findGvproxy(env: HostEnvironment): Promise<string> {
  const override = env.toolOverrides.gvproxy;
  if (override) {
    if (await pathExists(override)) return override;
    throw new HostError(`OPENSHELL_VM_GVPROXY points at ${override}, which does not exist`, {
      hint: 'fix or unset it',
    });
  }
  const onPath = await findOnPath('gvproxy', env.searchPath);
  if (onPath) return onPath;
  for (const candidate of PODMAN_LOCATIONS) if (await pathExists(candidate)) return candidate;
  try {
    const manifest = JSON.parse(
      await fs.readFile(path.join(env.cacheDir, 'host', 'gvproxy', 'manifest.json'), 'utf8'),
    ) as {
      binary?: string;
    };
    if (manifest.binary && (await pathExists(manifest.binary))) return manifest.binary;
  } catch {
    // not provisioned
  }
  throw new HostError('gvproxy not found (the default network, --net gvproxy, needs it)', {
    hint: `run ${provisionCommand()}, or use --net user (QEMU user networking) or --net none`,
  });
}

/**
 * gvproxy's argv. The API listens with -services when this gvproxy has it (the HTTP API without
 * the raw /connect endpoint that -listen adds); older ones (0.8.1 in Debian 13) only have -listen,
 * whose socket then lives in a 0700 directory. Either way gvproxy also serves the forwarder API
 * inside the virtual network (no flag turns that off): the VMM therefore never talks to gvproxy
 * directly, but to the frame filter, over QEMU's stream framing (-listen-qemu), which QEMU and
 * libkrun (unixstream, Linux and macOS) both speak. -ssh-port -1 disables gvproxy's default
 * host:2222 forward, which otherwise clashes between instances.
 */
export function gvproxyArgs(socketDir: string, hasServicesFlag: boolean): string[] {
  return [
    hasServicesFlag ? '-services' : '-listen',
    `unix://${path.join(socketDir, GVPROXY_FILES.apiSocket)}`,
    '-listen-qemu',
    `unix://${path.join(socketDir, GVPROXY_FILES.qemuSocket)}`,
    '-ssh-port',
    '-1',
  ];
}

/** Whether this gvproxy has -services (0.8.2+), from its own usage text (a spawn of `gvproxy -help`). */
export async function probeServicesFlag(binary: string): Promise<boolean> {
  const { stdout, stderr } = await outputOf(binary, ['-help']);
  return /^\s+-services\b/m.test(`${stdout}\n${stderr}`);
}

/** Where hasServicesFlag keeps its answers, under the cache directory. */
export const GVPROXY_PROBE_CACHE = path.join('host', 'gvproxy-flags.json');
/** Answers kept: one per gvproxy binary seen (PATH, Podman's, provisioned), the newest last. */
const PROBE_CACHE_ENTRIES = 8;

interface ProbeEntry {
  readonly binary: string;
  readonly size: number;
  readonly mtimeMs: number;
  readonly ino: number;
  readonly hasServicesFlag: boolean;
}
interface ProbeCache {
  readonly version: 1;
  readonly entries: readonly ProbeEntry[];
}

const PROBE_ENTRY_KEYS = ['binary', 'size', 'mtimeMs', 'ino', 'hasServicesFlag'].sort().join();

/**
 * An entry of the probe cache, checked by hand rather than with valibot: this runs in every
 * instance's resident supervisor, which loads no validator (bench:startup). The file is our own
 * cache; anything unexpected only means probing again.
 */
function isProbeEntry(e: unknown): e is ProbeEntry {
  if (typeof e !== 'object' || e === null || Array.isArray(e)) return false;
  const r = e as Record<string, unknown>;
  const count = (x: unknown) => typeof x === 'number' && Number.isInteger(x) && x >= 0;
  return (
    Object.keys(r).sort().join() === PROBE_ENTRY_KEYS &&
    typeof r.binary === 'string' &&
    r.binary.length <= 4096 &&
    count(r.size) &&
    typeof r.mtimeMs === 'number' &&
    Number.isFinite(r.mtimeMs) &&
    count(r.ino) &&
    typeof r.hasServicesFlag === 'boolean'
  );
}

async function readProbeCache(file: string): Promise<readonly ProbeEntry[]> {
  try {
    const cache: unknown = JSON.parse(await fs.readFile(file, 'utf8'));
    if (typeof cache !== 'object' || cache === null) return [];
    const { version, entries } = cache as Record<string, unknown>;
    if (version !== 1 || !Array.isArray(entries) || entries.length > PROBE_CACHE_ENTRIES) return [];
    return entries.every(isProbeEntry) ? entries : [];
  } catch {
    // Missing, unreadable or not JSON: probed again and rewritten.
    return [];
  }
}

/**
 * Whether this gvproxy has -services. With `cacheDir`, the answer is kept there, keyed by the
 * binary's path, size, mtime and inode, so a start does not spawn `gvproxy -help` each time; a
 * replaced or upgraded binary is probed again. A cache that cannot be read or written is no error
 * (the probe is the fallback).
 */
export async function hasServicesFlag(
  binary: string,
  options: { readonly cacheDir?: string | undefined } = {},
): Promise<boolean> {
  if (!options.cacheDir) return probeServicesFlag(binary);
  const stat = await fs.stat(binary).catch(() => undefined);
  if (!stat) return probeServicesFlag(binary);
  const key = { binary, size: stat.size, mtimeMs: stat.mtimeMs, ino: stat.ino };
  const file = path.join(options.cacheDir, GVPROXY_PROBE_CACHE);
  const entries = await readProbeCache(file);
  const same = (e: ProbeEntry) =>
    e.binary === key.binary && e.size === key.size && e.mtimeMs === key.mtimeMs && e.ino === key.ino;
  const hit = entries.find(same);
  if (hit) return hit.hasServicesFlag;
  const answer = await probeServicesFlag(binary);
  const kept = entries.filter((e) => e.binary !== binary).slice(-(PROBE_CACHE_ENTRIES - 1));
  const cache: ProbeCache = { version: 1, entries: [...kept, { ...key, hasServicesFlag: answer }] };
  try {
    await writeFileAtomic(file, `${JSON.stringify(cache)}\n`, 0o600);
  } catch {
    // A read-only or full cache directory: the next start probes again.
  }
  return answer;
}

export async function gvproxySpec(
  binary: string,
  runDir: string,
  socketDir: string,
  options: { readonly cacheDir?: string | undefined } = {},
): Promise<ProcessSpec> {
  return {
    name: 'gvproxy',
    command: binary,
    args: gvproxyArgs(socketDir, await hasServicesFlag(binary, options)),
    logFile: path.join(runDir, GVPROXY_FILES.log),
    pidFile: path.join(runDir, GVPROXY_FILES.pid),
    ready: { kind: 'socket', path: path.join(socketDir, GVPROXY_FILES.qemuSocket) },
    readyTimeoutMs: 10_000,
    graceMs: 2_000,
  };
}
