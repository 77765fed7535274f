import { isIP } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { type Accelerator, parseAccelerator } from '../accel/probe.ts';
import { UsageError } from '../errors.ts';
import { mergeEnv, type WorkloadRequest } from '../exec/request.ts';
import { defaultGuestArch, type GuestArch, parseGuestArch } from '../host/arch.ts';
import { parseInstanceName } from '../instance/runs.ts';
import { type KernelChoice, parseKernelChoice } from '../kernel/selection.ts';
import { checkDuplicates, type PortForward, parsePortSpec } from '../net/ports.ts';
import { type BackendName, parseBackend } from '../vmm/select.ts';
import { parseCount, parseMemoryMib, type Range } from './units.ts';

export const NETWORKS = ['gvproxy', 'user', 'tsi', 'none'] as const;
export type NetworkMode = (typeof NETWORKS)[number];

/**
 * Options as a front end gave them, before validation: the CLI's words (strings), or the library's
 * values (numbers, a memory size with a unit, [key, value] pairs, port objects). One validator for
 * both; its errors name each option as `names` spells it (the CLI's flags by default).
 */
export interface RawExecOptions {
  readonly exec?: string | undefined;
  readonly args?: readonly string[] | undefined;
  /** `KEY=VALUE` words (CLI) or [key, value] pairs (library). */
  readonly env?: readonly (string | readonly [string, string])[] | undefined;
  readonly workdir?: string | undefined;
  readonly vcpus?: string | number | undefined;
  /** MiB, or a size with a binary unit (`4GiB`, `4096M`). */
  readonly mem?: string | number | undefined;
  readonly arch?: string | undefined;
  readonly accel?: string | undefined;
  /** Seconds (CLI). */
  readonly bootTimeout?: string | undefined;
  /** Milliseconds (library); wins over bootTimeout. */
  readonly bootTimeoutMs?: number | undefined;
  readonly name?: string | undefined;
  /** `-p` specs (CLI), or forwards (library; no host port: a free loopback port is chosen at start). */
  readonly ports?: readonly (string | PortForwardInput)[] | undefined;
  readonly net?: string | undefined;
  readonly backend?: string | undefined;
  readonly rootfs?: string | undefined;
  /** The guest kernel (QEMU): `auto`, `debian`, `built` or a path (src/kernel/selection.ts). */
  readonly kernel?: string | undefined;
}

/** A port forward as the library takes it. */
export interface PortForwardInput {
  readonly guestPort: number;
  /** Default: a free loopback port, chosen when the VM starts (see assignHostPorts). */
  readonly hostPort?: number | undefined;
  /** Default 127.0.0.1. */
  readonly hostAddress?: string | undefined;
}

/** What each option is called where it was given: its flag (CLI) or its property (library). */
export type OptionNames = Readonly<Record<OptionKey, string>>;
export type OptionKey =
  | 'exec'
  | 'args'
  | 'env'
  | 'workdir'
  | 'vcpus'
  | 'mem'
  | 'bootTimeout'
  | 'ports'
  | 'net'
  | 'rootfs'
  | 'kernel'
  | 'apiPort'
  | 'readyTimeout'
  | 'tlsSans'
  | 'useContext'
  | 'mergeKubeconfig'
  | 'snapshot';

export const CLI_NAMES: OptionNames = {
  exec: '--exec',
  args: '--args',
  env: '--env',
  workdir: '--workdir',
  vcpus: '--vcpus',
  mem: '--mem',
  bootTimeout: '--boot-timeout',
  ports: '-p',
  net: '--net',
  rootfs: '--rootfs',
  kernel: '--kernel',
  apiPort: '--api-port',
  readyTimeout: '--ready-timeout',
  tlsSans: '--tls-san',
  useContext: '--use-context',
  mergeKubeconfig: '--merge-kubeconfig',
  snapshot: '--snapshot',
};

/** A forward whose host port is chosen when the VM starts (library: no hostPort given). */
export const ANY_HOST_PORT = 0;

/** A VM's options (the library's startVm; a run's without its command). */
export interface VmOptions {
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
  /** The guest kernel (QEMU); undefined: OPENSHELL_VM_KERNEL, else auto (the built one if present). */
  readonly kernel: KernelChoice | undefined;
}

export interface ExecOptions extends VmOptions {
  readonly request: WorkloadRequest;
}

export interface HostCapacity {
  readonly cpus: number;
  readonly memMib: number;
}

/** The host's CPUs and memory, which the options are fitted to. */
export function hostCapacity(): HostCapacity {
  return { cpus: os.availableParallelism(), memMib: Math.floor(os.totalmem() / (1024 * 1024)) };
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
 * Validates raw exec options into a frozen, fully defaulted ExecOptions: the command
 * (resolveRequest) and its VM (resolveVmOptions). Errors name the option (as `names` spells it),
 * the bad value and what was expected; values the host cannot honour are clamped with a warning.
 */
export function resolveExecOptions(
  raw: RawExecOptions,
  host: HostCapacity,
  names: OptionNames = CLI_NAMES,
): { readonly options: ExecOptions; readonly warnings: readonly string[] } {
  const request = resolveRequest(raw, names);
  const { options, warnings } = resolveVmOptions(raw, host, names);
  return { options: Object.freeze({ ...options, request }), warnings };
}

/** The VM part of the exec options: machine, boot deadline, instance, network, forwards, backend, rootfs. */
export function resolveVmOptions(
  raw: Omit<RawExecOptions, 'exec' | 'args' | 'env' | 'workdir'>,
  host: HostCapacity,
  names: OptionNames = CLI_NAMES,
): { readonly options: VmOptions; readonly warnings: readonly string[] } {
  const warnings: string[] = [];
  const { vcpus, memMib } = resolveMachine(raw, host, EXEC_DEFAULTS, warnings, names);

  const bootTimeoutMs =
    raw.bootTimeoutMs !== undefined
      ? parseCount(names.bootTimeout, raw.bootTimeoutMs, { min: 1000, max: 86_400_000 }, 'milliseconds')
      : raw.bootTimeout !== undefined
        ? integer(names.bootTimeout, raw.bootTimeout, { min: 1, max: 86_400 }, 'seconds') * 1000
        : EXEC_DEFAULTS.bootTimeoutS * 1000;

  const instance = parseInstanceName(raw.name);

  const network = (raw.net ?? 'gvproxy') as NetworkMode;
  if (!(NETWORKS as readonly string[]).includes(network)) {
    throw new UsageError(`${names.net}: unknown network '${raw.net}'`, {
      hint: `use one of: ${NETWORKS.join(', ')}`,
    });
  }
  const forwards = parseForwards(raw.ports ?? [], names.ports);
  if (forwards.length && network === 'none') {
    throw new UsageError(`${names.ports} needs a network, but ${names.net} none has none`, {
      hint: `use ${names.net} gvproxy (default) or ${names.net} user`,
    });
  }

  const options: VmOptions = {
    vcpus,
    memMib,
    arch: raw.arch === undefined ? defaultGuestArch() : parseGuestArch(raw.arch),
    accel: raw.accel === undefined ? undefined : parseAccelerator(raw.accel),
    bootTimeoutMs,
    instance,
    network,
    forwards,
    backend: raw.backend === undefined ? undefined : parseBackend(raw.backend),
    rootfs: parseRootfsOption(raw.rootfs, names.rootfs),
    kernel: raw.kernel === undefined ? undefined : parseKernelChoice(raw.kernel, names.kernel),
  };
  return { options: Object.freeze(options), warnings };
}

/**
 * The command part: the program (absolute, or a name the guest agent looks up in PATH), its
 * arguments, the environment (on top of the defaults) and the working directory. Also what the
 * library's vm.exec() takes for each command in a running VM.
 */
export function resolveRequest(
  raw: Pick<RawExecOptions, 'exec' | 'args' | 'env' | 'workdir'>,
  names: OptionNames = CLI_NAMES,
): WorkloadRequest {
  if (raw.exec === undefined || raw.exec === '') {
    throw new UsageError('no command given', {
      hint:
        names === CLI_NAMES
          ? 'use --exec PATH or: openshell-vm run -- PATH [ARG...]'
          : `give ${names.exec}: the program and its arguments, e.g. ['/bin/sh', '-c', 'echo hi']`,
    });
  }
  noNul(names.exec, raw.exec);
  for (const arg of raw.args ?? []) noNul(names.args, arg);
  const env = parseEnv(raw.env ?? [], names.env);
  const workdir = raw.workdir ?? EXEC_DEFAULTS.workdir;
  if (!workdir.startsWith('/')) {
    throw new UsageError(`${names.workdir}: '${workdir}' is not an absolute path`, {
      hint: 'give a guest path starting with /',
    });
  }
  noNul(names.workdir, workdir);
  return { exec: raw.exec, args: [...(raw.args ?? [])], env: mergeEnv(env), workdir };
}

/** `KEY=VALUE` words or [key, value] pairs: KEY letters, digits and _, not starting with a digit. */
export function parseEnv(
  items: readonly (string | readonly [string, string])[],
  option: string,
): [string, string][] {
  return items.map((item): [string, string] => {
    const [key, value] =
      typeof item === 'string'
        ? item.includes('=')
          ? [item.slice(0, item.indexOf('=')), item.slice(item.indexOf('=') + 1)]
          : [item, undefined]
        : item;
    if (value === undefined || typeof value !== 'string' || !ENV_NAME.test(key)) {
      throw new UsageError(
        `${option}: malformed ${typeof item === 'string' ? `'${item}'` : `variable '${key}'`}`,
        {
          hint:
            typeof item === 'string'
              ? 'expected KEY=VALUE, where KEY is letters, digits and _ and does not start with a digit'
              : 'a name is letters, digits and _ and does not start with a digit; its value a string',
        },
      );
    }
    noNul(option, key);
    noNul(option, value);
    return [key, value];
  });
}

/**
 * Port forwards: `-p` specs (src/net/ports.ts) or the library's objects, checked by the same
 * rules (ports 1-65535, an IP address), no host port forwarded twice. A library forward without a
 * host port gets ANY_HOST_PORT: a free loopback port is chosen when the VM starts.
 */
export function parseForwards(items: readonly (string | PortForwardInput)[], option: string): PortForward[] {
  const forwards = items.map((item): PortForward => {
    if (typeof item === 'string') return parsePortSpec(item);
    const hint = `give { guestPort, hostPort?, hostAddress? } with ports from 1 to 65535 (no hostPort: a free one)`;
    if (item === null || typeof item !== 'object') {
      throw new UsageError(`${option}: ${JSON.stringify(item)} is not a port forward`, { hint });
    }
    const port = (key: 'guestPort' | 'hostPort', value: unknown): number => {
      if (!Number.isInteger(value) || (value as number) < 1 || (value as number) > 65535) {
        throw new UsageError(`${option}: ${key} ${JSON.stringify(value)} is not a port from 1 to 65535`, {
          hint,
        });
      }
      return value as number;
    };
    const hostAddress = item.hostAddress ?? '127.0.0.1';
    if (!isIP(hostAddress)) {
      throw new UsageError(`${option}: hostAddress '${hostAddress}' is not an IP address`, { hint });
    }
    return {
      hostAddress,
      hostPort: item.hostPort === undefined ? ANY_HOST_PORT : port('hostPort', item.hostPort),
      guestPort: port('guestPort', item.guestPort),
    };
  });
  checkDuplicates(forwards.filter((f) => f.hostPort !== ANY_HOST_PORT));
  return forwards;
}

/**
 * --rootfs DIR as an absolute host path (an empty value would be the working directory). Where it
 * may be is checked on the host before boot (ensureRootLocation in src/instance/root-location.ts).
 */
export function parseRootfsOption(value: string | undefined, option = CLI_NAMES.rootfs): string | undefined {
  if (value === undefined) return undefined;
  if (value === '') {
    throw new UsageError(`${option}: empty path`, {
      hint: `give the directory prepare-rootfs built, or drop ${option}`,
    });
  }
  noNul(option, value);
  return path.resolve(value);
}

/** vCPUs and memory: validated, defaulted, and clamped to what the host has (with a warning). */
export function resolveMachine(
  raw: { readonly vcpus?: string | number | undefined; readonly mem?: string | number | undefined },
  host: HostCapacity,
  defaults: { readonly vcpus: number; readonly memMib: number },
  warnings: string[],
  names: Pick<OptionNames, 'vcpus' | 'mem'> = CLI_NAMES,
): { vcpus: number; memMib: number } {
  // A default the host cannot honour is fitted silently; a value the user gave, with a warning.
  let vcpus =
    raw.vcpus === undefined ? defaults.vcpus : parseCount(names.vcpus, raw.vcpus, LIMITS.vcpus, 'vCPUs');
  if (vcpus > host.cpus) {
    if (raw.vcpus !== undefined)
      warnings.push(`${names.vcpus} ${vcpus} is more than this host's ${host.cpus} CPUs: using ${host.cpus}`);
    vcpus = host.cpus;
  }
  let memMib = raw.mem === undefined ? defaults.memMib : parseMemoryMib(names.mem, raw.mem, LIMITS.memMib);
  const memCap = Math.max(LIMITS.memMib.min, Math.floor((host.memMib * 3) / 4));
  if (memMib > memCap) {
    if (raw.mem !== undefined)
      warnings.push(
        `${names.mem} ${memMib} MiB is more than 3/4 of this host's ${host.memMib} MiB: using ${memCap} MiB`,
      );
    memMib = memCap;
  }
  return { vcpus, memMib };
}

/** A whole number from the command line (decimal digits only) in `range`. */
export function integer(option: string, value: string, range: Range, unit: string): number {
  return parseCount(option, value, range, unit);
}

function noNul(option: string, value: string): void {
  if (value.includes('\0'))
    throw new UsageError(`${option}: a value contains a NUL byte`, { hint: 'remove it' });
}
