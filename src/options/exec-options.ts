import path from 'node:path';
import { type Accelerator, parseAccelerator } from '../accel/probe.ts';
import { UsageError } from '../errors.ts';
import { mergeEnv, type WorkloadRequest } from '../exec/request.ts';
import { defaultGuestArch, type GuestArch, parseGuestArch } from '../host/arch.ts';
import { parseInstanceName } from '../instance/runs.ts';
import { checkDuplicates, type PortForward, parsePortSpec } from '../net/ports.ts';
import { type BackendName, parseBackend } from '../vmm/select.ts';

export const NETWORKS = ['gvproxy', 'user', 'tsi', 'none'] as const;
export type NetworkMode = (typeof NETWORKS)[number];

/** Options as the user typed them (strings), before validation. */
export interface RawExecOptions {
  readonly exec?: string | undefined;
  readonly args?: readonly string[] | undefined;
  readonly env?: readonly string[] | undefined;
  readonly workdir?: string | undefined;
  readonly vcpus?: string | undefined;
  readonly mem?: string | undefined;
  readonly arch?: string | undefined;
  readonly accel?: string | undefined;
  readonly bootTimeout?: string | undefined;
  readonly name?: string | undefined;
  readonly ports?: readonly string[] | undefined;
  readonly net?: string | undefined;
  readonly backend?: string | undefined;
  readonly rootfs?: string | undefined;
}

export interface ExecOptions {
  readonly request: WorkloadRequest;
  readonly vcpus: number;
  readonly memMib: number;
  readonly arch: GuestArch;
  /** undefined: choose automatically. */
  readonly accel: Accelerator | undefined;
  readonly bootTimeoutMs: number;
  readonly instance: string;
  readonly network: NetworkMode;
  readonly forwards: readonly PortForward[];
  /** undefined: libkrun where a runtime is found and usable, QEMU otherwise. */
  readonly backend: BackendName | undefined;
  /** A rootfs built by prepare-rootfs to run the command in (under a throwaway overlay); default: the embedded one. */
  readonly rootfs: string | undefined;
}

export interface HostCapacity {
  readonly cpus: number;
  readonly memMib: number;
}

/** Defaults of the seed's exec mode. */
export const EXEC_DEFAULTS = {
  vcpus: 2,
  memMib: 2048,
  workdir: '/',
  bootTimeoutS: 180,
  instance: 'default',
} as const;
export const LIMITS = { vcpus: { min: 1, max: 255 }, memMib: { min: 128, max: 1_048_576 } } as const;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Validates raw exec options into a frozen, fully defaulted ExecOptions. Errors name the option,
 * the bad value and what was expected; values the host cannot honour are clamped with a warning.
 */
export function resolveExecOptions(
  raw: RawExecOptions,
  host: HostCapacity,
): { readonly options: ExecOptions; readonly warnings: readonly string[] } {
  const warnings: string[] = [];
  if (raw.exec === undefined || raw.exec === '') {
    throw new UsageError('no command given', {
      hint: 'use --exec PATH or: openshell-vm run -- PATH [ARG...]',
    });
  }
  noNul('--exec', raw.exec);
  for (const arg of raw.args ?? []) noNul('--args', arg);

  const env = (raw.env ?? []).map((item): [string, string] => {
    const eq = item.indexOf('=');
    const key = eq < 0 ? item : item.slice(0, eq);
    if (eq < 0 || !ENV_NAME.test(key)) {
      throw new UsageError(`--env: malformed '${item}'`, {
        hint: 'expected KEY=VALUE, where KEY is letters, digits and _ and does not start with a digit',
      });
    }
    noNul('--env', item);
    return [key, item.slice(eq + 1)];
  });

  const workdir = raw.workdir ?? EXEC_DEFAULTS.workdir;
  if (!workdir.startsWith('/')) {
    throw new UsageError(`--workdir: '${workdir}' is not an absolute path`, {
      hint: 'give a guest path starting with /',
    });
  }
  noNul('--workdir', workdir);

  const { vcpus, memMib } = resolveMachine(raw, host, EXEC_DEFAULTS, warnings);

  const bootTimeoutS =
    raw.bootTimeout === undefined
      ? EXEC_DEFAULTS.bootTimeoutS
      : integer('--boot-timeout', raw.bootTimeout, { min: 1, max: 86_400 }, 'seconds');

  const instance = parseInstanceName(raw.name);

  const network = (raw.net ?? 'gvproxy') as NetworkMode;
  if (!(NETWORKS as readonly string[]).includes(network)) {
    throw new UsageError(`--net: unknown network '${raw.net}'`, {
      hint: `use one of: ${NETWORKS.join(', ')}`,
    });
  }
  const forwards = (raw.ports ?? []).map(parsePortSpec);
  checkDuplicates(forwards);
  if (forwards.length && network === 'none') {
    throw new UsageError('-p needs a network, but --net none has none', {
      hint: 'use --net gvproxy (default) or --net user',
    });
  }

  const options: ExecOptions = {
    request: { exec: raw.exec, args: [...(raw.args ?? [])], env: mergeEnv(env), workdir },
    vcpus,
    memMib,
    arch: raw.arch === undefined ? defaultGuestArch() : parseGuestArch(raw.arch),
    accel: raw.accel === undefined ? undefined : parseAccelerator(raw.accel),
    bootTimeoutMs: bootTimeoutS * 1000,
    instance,
    network,
    forwards,
    backend: raw.backend === undefined ? undefined : parseBackend(raw.backend),
    rootfs: parseRootfsOption(raw.rootfs),
  };
  return { options: Object.freeze(options), warnings };
}

/**
 * --rootfs DIR as an absolute host path (an empty value would be the working directory). Where it
 * may be is checked on the host before boot (ensureRootLocation in src/instance/root-location.ts).
 */
export function parseRootfsOption(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  if (value === '') {
    throw new UsageError('--rootfs: empty path', {
      hint: 'give the directory prepare-rootfs built, or drop --rootfs',
    });
  }
  noNul('--rootfs', value);
  return path.resolve(value);
}

/** --vcpus and --mem: validated, defaulted, and clamped to what the host has (with a warning). */
export function resolveMachine(
  raw: { readonly vcpus?: string | undefined; readonly mem?: string | undefined },
  host: HostCapacity,
  defaults: { readonly vcpus: number; readonly memMib: number },
  warnings: string[],
): { vcpus: number; memMib: number } {
  // A default the host cannot honour is fitted silently; a value the user gave, with a warning.
  let vcpus = raw.vcpus === undefined ? defaults.vcpus : integer('--vcpus', raw.vcpus, LIMITS.vcpus, 'vCPUs');
  if (vcpus > host.cpus) {
    if (raw.vcpus !== undefined)
      warnings.push(`--vcpus ${vcpus} is more than this host's ${host.cpus} CPUs: using ${host.cpus}`);
    vcpus = host.cpus;
  }
  let memMib = raw.mem === undefined ? defaults.memMib : integer('--mem', raw.mem, LIMITS.memMib, 'MiB');
  const memCap = Math.max(LIMITS.memMib.min, Math.floor((host.memMib * 3) / 4));
  if (memMib > memCap) {
    if (raw.mem !== undefined)
      warnings.push(
        `--mem ${memMib} MiB is more than 3/4 of this host's ${host.memMib} MiB: using ${memCap} MiB`,
      );
    memMib = memCap;
  }
  return { vcpus, memMib };
}

export function integer(
  option: string,
  value: string,
  range: { min: number; max: number },
  unit: string,
): number {
  if (!/^\d+$/.test(value)) {
    throw new UsageError(`${option}: '${value}' is not a whole number`, {
      hint: `give a number of ${unit} from ${range.min} to ${range.max}`,
    });
  }
  const n = Number(value);
  if (n < range.min || n > range.max) {
    throw new UsageError(`${option}: ${value} is out of range`, {
      hint: `give a number of ${unit} from ${range.min} to ${range.max}`,
    });
  }
  return n;
}

function noNul(option: string, value: string): void {
  if (value.includes('\0'))
    throw new UsageError(`${option}: a value contains a NUL byte`, { hint: 'remove it' });
}
