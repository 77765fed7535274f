/**
 * openshell-vm as a library (the package's main export), shaped like testcontainers-node:
 * `run()` one command in a fresh microVM, `startVm()` a VM to run commands in, `startGateway()`
 * the k3s gateway. Options are typed objects validated by the CLI's own validators; failures are
 * the exported error classes (each with a `hint` naming the fix and the original as `cause`).
 *
 * Importing it prints nothing and starts nothing: each function loads its module when called.
 */
import type { Gateway } from './api/gateway.ts';
import type { CommandResult, GatewayOptions, RunOptions, VmOptions } from './api/options.ts';
import type { Vm } from './api/vm.ts';
import { packageVersion } from './version.ts';

export type { Gateway, MtlsPaths } from './api/gateway.ts';
export type {
  CommandOptions,
  CommandResult,
  ExecOptions,
  GatewayOptions,
  GatewayStartEvent,
  MachineOptions,
  PortForwardInput,
  ProgressEvent,
  RunOptions,
  VmEvent,
  VmOptions,
} from './api/options.ts';
export type { VmLogs, VmProcess, VmStatus } from './api/running.ts';
export type { StopOptions, Vm } from './api/vm.ts';
export {
  CommandError,
  type CommandFailure,
  type ErrorKind,
  HostError,
  OvmError,
  type OvmErrorOptions,
  UsageError,
  VmError,
} from './errors.ts';
export type { GatewayReady } from './presets/gateway.ts';

/**
 * Runs one command in a fresh microVM, as `openshell-vm run -- COMMAND` does, and returns its exit
 * code (the CLI's: 128+N for signal N, with `signal` named; 127, 126, 125) and its output.
 */
export async function run(options: RunOptions): Promise<CommandResult> {
  return (await import('./api/run.ts')).run(options);
}

/**
 * Starts a microVM with the guest agent, supervised by this process, and returns its handle once
 * the agent answers: `exec`, `mappedPort`, `logs`, `status`, `stop`, `await using`.
 */
export async function startVm(options: VmOptions = {}): Promise<Vm> {
  return (await import('./api/vm.ts')).startVm(options);
}

/**
 * Boots the gateway on the instance's prepared rootfs and returns its handle once it answers mTLS:
 * `endpoint`, `kubeconfigPath`, `mtls`, `exec`, `stop`, `await using`.
 */
export async function startGateway(options: GatewayOptions = {}): Promise<Gateway> {
  return (await import('./api/gateway.ts')).startGateway(options);
}

/** This package's version (package.json's). */
export const version: string = packageVersion();
