import os from 'node:os';
import path from 'node:path';
import { UsageError } from '../errors.ts';

/**
 * Everything openshell-vm reads from the process environment, read in this one place.
 * Other modules receive a HostEnvironment and never touch process.env.
 */
export interface HostEnvironment {
  /** Downloaded host inputs (kernel, busybox, Node.js) and built guest artifacts. */
  readonly cacheDir: string;
  /** Instances (their root filesystems, logs and run state). */
  readonly dataDir: string;
  /** A short directory for sockets when the instance directory's paths are too long. */
  readonly runtimeDir: string;
  /** PATH used to look up host tools (qemu-system-*, virtiofsd). */
  readonly searchPath: string;
  /** Explicit paths that override tool discovery (OPENSHELL_VM_QEMU_<ARCH>, _VIRTIOFSD, _GVPROXY). */
  readonly toolOverrides: Readonly<Record<string, string>>;
  /** OPENSHELL_VM_RUNTIME_DIR: the libkrun runtime bundle to use instead of discovering one. */
  readonly runtimeBundleDir: string | undefined;
  /** Docker's client config (registry credentials): $DOCKER_CONFIG/config.json or ~/.docker/config.json. */
  readonly dockerConfigPath: string;
  /** OPENSHELL_VM_INSECURE_REGISTRIES: registries (host[:port], comma-separated) spoken to over plain HTTP. */
  readonly insecureRegistries: readonly string[];
  /** OPENSHELL_VM_K3S_BASE_URL: where k3s releases are downloaded from (a mirror of GitHub's release pages). */
  readonly k3sBaseUrl: string;
  /** The OpenShell CLI's configuration ($XDG_CONFIG_HOME/openshell): gateways, mTLS bundles, the active gateway. */
  readonly openshellConfigDir: string;
  /** Where gateway kubeconfigs go (~/.kube/NAME.yaml), and the kubeconfig --merge-kubeconfig adds to (~/.kube/config). */
  readonly kubeDir: string;
  /** OPENSHELL_VM_CLOCK_CHECK_MS: how often a running instance checks its guest's clock (default 10 s). */
  readonly clockCheckMs: number;
  /**
   * OPENSHELL_VM_GUEST_HANDOFF: how QEMU hands the guest init its mode. 'cmdline' (default):
   * ovm.* words on the kernel command line. 'krun': as libkrun does, KEY=VALUE environment words
   * (the kernel gives them to init as its environment) and the initramfs standing in for
   * libkrun's init (its mounts, then the init exec'd as PID 1): the libkrun guest path, tested on
   * a host without libkrun.
   */
  readonly guestHandoff: GuestHandoff;
  /**
   * OPENSHELL_VM_KRUN_LOG_LEVEL: libkrun's log level, 0 (off) to 5 (trace), into libkrun.log in
   * the run's directory (`openshell-vm logs NAME --source vmm`); default 1 (errors).
   */
  readonly krunLogLevel: number;
}

export const GUEST_HANDOFFS = ['cmdline', 'krun'] as const;
export type GuestHandoff = (typeof GUEST_HANDOFFS)[number];

export function readEnvironment(env: NodeJS.ProcessEnv = process.env): HostEnvironment {
  const home = env.HOME || os.homedir();
  const xdgCache = env.XDG_CACHE_HOME || path.join(home, '.cache');
  const xdgData = env.XDG_DATA_HOME || path.join(home, '.local', 'share');
  const uid = typeof process.getuid === 'function' ? process.getuid() : 0;
  const runtimeBase = env.XDG_RUNTIME_DIR || path.join(env.TMPDIR || os.tmpdir(), `ovm-${uid}`);
  const toolOverrides: Record<string, string> = {};
  for (const [key, name] of [
    ['OPENSHELL_VM_QEMU_X86_64', 'qemu-x86_64'],
    ['OPENSHELL_VM_QEMU_AARCH64', 'qemu-aarch64'],
    ['OPENSHELL_VM_VIRTIOFSD', 'virtiofsd'],
    ['OPENSHELL_VM_GVPROXY', 'gvproxy'],
  ] as const) {
    const value = env[key];
    if (value) toolOverrides[name] = value;
  }
  return {
    cacheDir: env.OPENSHELL_VM_CACHE_DIR || path.join(xdgCache, 'openshell-vm'),
    dataDir: env.OPENSHELL_VM_DATA_DIR || path.join(xdgData, 'openshell-vm'),
    runtimeDir: env.XDG_RUNTIME_DIR ? path.join(runtimeBase, 'ovm') : runtimeBase,
    searchPath: env.PATH ?? '',
    clockCheckMs: positiveNumber(env.OPENSHELL_VM_CLOCK_CHECK_MS) ?? 10_000,
    toolOverrides,
    runtimeBundleDir: env.OPENSHELL_VM_RUNTIME_DIR || undefined,
    dockerConfigPath: path.join(env.DOCKER_CONFIG || path.join(home, '.docker'), 'config.json'),
    insecureRegistries: (env.OPENSHELL_VM_INSECURE_REGISTRIES ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean),
    k3sBaseUrl: env.OPENSHELL_VM_K3S_BASE_URL || 'https://github.com/k3s-io/k3s/releases/download',
    openshellConfigDir: path.join(env.XDG_CONFIG_HOME || path.join(home, '.config'), 'openshell'),
    kubeDir: path.join(home, '.kube'),
    guestHandoff: guestHandoff(env.OPENSHELL_VM_GUEST_HANDOFF),
    krunLogLevel: krunLogLevel(env.OPENSHELL_VM_KRUN_LOG_LEVEL),
  };
}

function krunLogLevel(value: string | undefined): number {
  if (!value) return 1;
  if (/^[0-5]$/.test(value)) return Number(value);
  throw new UsageError(`OPENSHELL_VM_KRUN_LOG_LEVEL: '${value}' is not a log level`, {
    hint: 'use 0 (off), 1 (error), 2 (warn), 3 (info), 4 (debug) or 5 (trace), or unset it',
  });
}

function guestHandoff(value: string | undefined): GuestHandoff {
  if (!value) return 'cmdline';
  if ((GUEST_HANDOFFS as readonly string[]).includes(value)) return value as GuestHandoff;
  throw new UsageError(`OPENSHELL_VM_GUEST_HANDOFF: unknown value '${value}'`, {
    hint: `use one of: ${GUEST_HANDOFFS.join(', ')}, or unset it`,
  });
}

function positiveNumber(value: string | undefined): number | undefined {
  const n = Number(value);
  return value && Number.isFinite(n) && n >= 100 ? n : undefined;
}
