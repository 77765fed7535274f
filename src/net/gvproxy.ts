import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type { HostEnvironment } from '../config/environment.ts';
import { HostError } from '../errors.ts';
import { pathExists } from '../host/fs.ts';
import { findOnPath } from '../host/toolchain.ts';
import type { ProcessSpec } from '../supervisor/process.ts';

const execFileAsync = promisify(execFile);

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
    hint: 'run scripts/provision-host.sh, or use --net user (QEMU user networking) or --net none',
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

/** Whether this gvproxy has -services (0.8.2+), from its own usage text. */
export async function hasServicesFlag(binary: string): Promise<boolean> {
  const { stdout, stderr } = await execFileAsync(binary, ['-help']).catch(
    (err: { stdout?: string; stderr?: string }) => ({ stdout: err.stdout ?? '', stderr: err.stderr ?? '' }),
  );
  return /^\s+-services\b/m.test(`${stdout}\n${stderr}`);
}

export async function gvproxySpec(binary: string, runDir: string, socketDir: string): Promise<ProcessSpec> {
  return {
    name: 'gvproxy',
    command: binary,
    args: gvproxyArgs(socketDir, await hasServicesFlag(binary)),
    logFile: path.join(runDir, GVPROXY_FILES.log),
    pidFile: path.join(runDir, GVPROXY_FILES.pid),
    ready: { kind: 'socket', path: path.join(socketDir, GVPROXY_FILES.qemuSocket) },
    readyTimeoutMs: 10_000,
    graceMs: 2_000,
  };
}
