import type { Readable, Writable } from 'node:stream';
import type { Accelerator } from '../accel/probe.ts';
import { UsageError } from '../errors.ts';
import type { GuestArch } from '../host/arch.ts';
import type { NetworkMode, OptionNames, PortForwardInput, RawExecOptions } from '../options/exec-options.ts';
import type { RawGatewayOptions } from '../options/gateway-options.ts';
import type { GatewayEvent } from '../presets/gateway.ts';
import type { ExecEvent } from '../presets/run.ts';
import type { BackendName } from '../vmm/select.ts';

/**
 * The library's options: typed objects, mapped onto the CLI's raw options and validated by the
 * same functions (src/options/), so both front ends accept and refuse the same values. Errors name
 * the option as spelled here (LIBRARY_NAMES): `memory: '4XB' is not a whole number of MiB or a size with a unit`.
 */

/** How the library spells each option in its errors. */
export const LIBRARY_NAMES: OptionNames = {
  exec: 'command',
  args: 'command',
  env: 'env',
  workdir: 'workdir',
  vcpus: 'cpus',
  mem: 'memory',
  bootTimeout: 'bootTimeoutMs',
  ports: 'ports',
  net: 'network',
  rootfs: 'rootfs',
  kernel: 'kernel',
  apiPort: 'apiPort',
  readyTimeout: 'readyTimeoutMs',
  tlsSans: 'tlsSans',
  useContext: 'useContext',
  mergeKubeconfig: 'mergeKubeconfig',
  snapshot: 'snapshot',
};

/** What a start reports as it goes (onEvent): the choice of backend and accelerator, stages, helper processes. */
export type ProgressEvent = {
  readonly type: 'progress';
  readonly message: string;
  readonly elapsedMs: number;
};
export type VmEvent = ExecEvent | ProgressEvent;
export type GatewayStartEvent = GatewayEvent | ProgressEvent | ExecEvent;

export type { PortForwardInput };

/** What every VM takes. */
export interface MachineOptions {
  /** vCPUs (default 2; the gateway's 4), fitted to the host's CPUs with a warning. */
  readonly cpus?: number | undefined;
  /** MiB as a number, or a size with a binary unit: '4GiB', '4096M', '2G' (default 2048; the gateway's 8192). */
  readonly memory?: number | string | undefined;
  /** Guest architecture (default: the host's). */
  readonly arch?: GuestArch | undefined;
  /** Accelerator (default: KVM/HVF where usable, else TCG). */
  readonly accel?: Accelerator | undefined;
  /** VMM backend (default: libkrun where a runtime is found and usable, else QEMU). */
  readonly backend?: BackendName | undefined;
  /** Instance name (default 'default'): one VM per name at a time; give each parallel VM its own. */
  readonly name?: string | undefined;
  /**
   * Host-to-guest TCP forwards: `-p` specs ('8080:80', '127.0.0.1:8080:80') or objects; an object
   * without hostPort gets a free loopback port (vm.mappedPort(guestPort) says which).
   */
  readonly ports?: readonly (string | PortForwardInput)[] | undefined;
  /** Keep the run's logs (console, VMM, helpers) after it ends well (a failed one's are always kept). */
  readonly keepLogs?: boolean | undefined;
  /** Aborting it stops the VM (mid-boot too) and leaves nothing running; the call rejects with its reason. */
  readonly signal?: AbortSignal | undefined;
}

/** startVm's options: a VM on the embedded default root (busybox) or a prepared rootfs. */
export interface VmOptions extends MachineOptions {
  /** 'gvproxy' (default), 'user' (QEMU's), 'tsi' (libkrun's) or 'none'. */
  readonly network?: NetworkMode | undefined;
  /** A rootfs built by prepare-rootfs, under a throwaway overlay (default: the embedded one). */
  readonly rootfs?: string | undefined;
  /** The guest kernel under QEMU: 'auto' (default: the one `openshell-vm kernel build` made, if any), 'debian', 'built', or a path. */
  readonly kernel?: string | undefined;
  /** Deadline for the guest agent to connect (boot + init), in ms (default 180 000). */
  readonly bootTimeoutMs?: number | undefined;
  readonly onEvent?: ((event: VmEvent) => void) | undefined;
}

/** A command's streams and environment (run(), vm.exec()). */
export interface CommandOptions {
  /** On top of HOME=/root, PATH=..., TERM=xterm (a name given here replaces a default). */
  readonly env?: Readonly<Record<string, string>> | undefined;
  /** Absolute guest path (default /). */
  readonly workdir?: string | undefined;
  /** The command's stdin (default: at its end at once). */
  readonly stdin?: string | Uint8Array | Readable | undefined;
  /** Where the command's stdout goes as it runs; the result's stdout is then ''. Default: buffered. */
  readonly stdout?: Writable | undefined;
  /** Where the command's stderr goes as it runs; the result's stderr is then ''. Default: buffered. */
  readonly stderr?: Writable | undefined;
  /**
   * The most bytes kept of each buffered stream (stdout, stderr; default 64 MiB, 67108864): a
   * command that writes more is ended and the call rejects with a VmError naming the stream and
   * this option (run() stops its VM; vm.exec() only the command). Streams given as stdout or stderr
   * are not limited.
   */
  readonly maxBuffer?: number | undefined;
}

export interface ExecOptions extends CommandOptions {
  /** Aborting it ends the command (the agent kills it); the VM keeps running. */
  readonly signal?: AbortSignal | undefined;
}

/** run()'s options: a fresh VM for one command. */
export interface RunOptions extends VmOptions, CommandOptions {
  /** The program (absolute, or a name looked up in the guest's PATH) and its arguments. */
  readonly command: readonly string[];
}

/** startGateway()'s options. */
export interface GatewayOptions extends MachineOptions {
  /** The instance's rootfs built by prepare-rootfs (default: the instance's own). */
  readonly rootfs?: string | undefined;
  /** The guest kernel under QEMU: 'auto' (default), 'debian', 'built', or a path. */
  readonly kernel?: string | undefined;
  /** Host port of the Kubernetes API (default: the one this instance used last, else a free one). */
  readonly apiPort?: number | undefined;
  /** Deadline for the gateway to answer mTLS, in ms (default 600 000). */
  readonly readyTimeoutMs?: number | undefined;
  /** Extra names or addresses for the server certificate. */
  readonly tlsSans?: readonly string[] | undefined;
  /** Add cluster, user and context `openshell-NAME` to ~/.kube/config. */
  readonly mergeKubeconfig?: boolean | undefined;
  /** With mergeKubeconfig: make that context current. */
  readonly useContext?: boolean | undefined;
  /**
   * Boot from a disk image and save the VM's state at the first Ready; later starts with the same
   * inputs restore it in seconds (QEMU only). What changes in the cluster after that first Ready
   * is not kept across a restore. Default false.
   */
  readonly snapshot?: boolean | undefined;
  /** Remove the cluster state and credentials first (the built rootfs layers are kept). */
  readonly reset?: boolean | undefined;
  /** How long stop() gives k3s to wind down before the VM is killed, in ms (default 30 000). */
  readonly stopTimeoutMs?: number | undefined;
  readonly onEvent?: ((event: GatewayStartEvent) => void) | undefined;
}

/** What a command ended with: as the CLI's exit code, with its output when buffered. */
export interface CommandResult {
  /** The command's exit code: 128+N when signal N killed it; 127 not found, 126 not executable, 125 not started. */
  readonly exitCode: number;
  /** The signal's name when the exit code says a signal ended it (128+N, N a Linux signal). */
  readonly signal: NodeJS.Signals | undefined;
  readonly stdout: string;
  readonly stderr: string;
}

/** A command as an argv array: refused (with the fix) when it is not one. */
export function commandWords(command: unknown, option = LIBRARY_NAMES.exec): readonly string[] {
  if (!Array.isArray(command) || command.some((w) => typeof w !== 'string')) {
    throw new UsageError(`${option}: expected an array of strings (the program and its arguments)`, {
      hint: `e.g. ['/bin/sh', '-c', 'echo hi']`,
    });
  }
  return command as string[];
}

/** [key, value] pairs of an env object (refused when it is not one). */
export function envPairs(env: unknown): (readonly [string, string])[] {
  if (env === undefined) return [];
  if (env === null || typeof env !== 'object' || Array.isArray(env)) {
    throw new UsageError(`${LIBRARY_NAMES.env}: expected an object of names and values`, {
      hint: `e.g. { FOO: 'bar' }`,
    });
  }
  return Object.entries(env as Record<string, string>);
}

/** The VM part of the raw options (validated by resolveVmOptions). */
export function rawVmOptions(options: VmOptions): Omit<RawExecOptions, 'exec' | 'args' | 'env' | 'workdir'> {
  return {
    vcpus: options.cpus,
    mem: options.memory,
    arch: options.arch,
    accel: options.accel,
    bootTimeoutMs: options.bootTimeoutMs,
    name: options.name,
    ports: options.ports,
    net: options.network,
    backend: options.backend,
    rootfs: options.rootfs,
    kernel: options.kernel,
  };
}

/** run()'s raw options (validated by resolveExecOptions, as the CLI's). */
export function rawRunOptions(options: RunOptions): RawExecOptions {
  const [exec, ...args] = commandWords(options.command);
  return {
    ...rawVmOptions(options),
    exec,
    args,
    env: envPairs(options.env),
    workdir: options.workdir,
  };
}

/** startGateway()'s raw options (validated by resolveGatewayOptions, as the CLI's). */
export function rawGatewayOptions(options: GatewayOptions): RawGatewayOptions {
  return {
    name: options.name,
    rootfs: options.rootfs,
    kernel: options.kernel,
    ports: options.ports,
    apiPort: options.apiPort,
    vcpus: options.cpus,
    mem: options.memory,
    arch: options.arch,
    accel: options.accel,
    backend: options.backend,
    readyTimeoutMs: options.readyTimeoutMs,
    tlsSans: options.tlsSans,
    mergeKubeconfig: options.mergeKubeconfig,
    useContext: options.useContext,
    snapshot: options.snapshot,
  };
}
