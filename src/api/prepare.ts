import net from 'node:net';
import os from 'node:os';
import type { AccelChoice } from '../accel/probe.ts';
import { type HostEnvironment, readEnvironment } from '../config/environment.ts';
import { UsageError } from '../errors.ts';
import { stableApiPort } from '../gateway/api-port.ts';
import { lexists } from '../host/fs.ts';
import { ensureRootLocation } from '../instance/root-location.ts';
import { ensureInstanceDir, instanceDir } from '../instance/runs.ts';
import { checkHostPortsFree, type PortForward } from '../net/ports.ts';
import {
  ANY_HOST_PORT,
  type ExecOptions,
  type HostCapacity,
  type OptionNames,
  type RawExecOptions,
  resolveExecOptions,
  resolveVmOptions,
  type VmOptions,
} from '../options/exec-options.ts';
import {
  type GatewayOptions,
  type RawGatewayOptions,
  resolveGatewayOptions,
} from '../options/gateway-options.ts';
import { KUBE_API_GUEST_PORT } from '../presets/gateway.ts';
import { rootfsDir } from '../rootfs/build.ts';
import { readRootfsRecord } from '../rootfs/record.ts';
import type { VmmBackend } from '../vmm/backend.ts';
import { chooseVmm, type ProgressSink } from './vmm-choice.ts';

/**
 * What every start does before anything runs, the same for the CLI and the library: validate the
 * options (src/options/, one validator for both front ends), read the environment, choose the VMM
 * and accelerator, give library forwards without a host port a free one, and check every host port
 * is free. Whatever can fail without starting a process fails here.
 */

export interface PreparedVm<O> {
  readonly env: HostEnvironment;
  readonly options: O;
  readonly backend: VmmBackend;
  readonly accel: AccelChoice;
}

/** The host's CPUs and memory, which the options are fitted to. */
export function hostCapacity(): HostCapacity {
  return { cpus: os.availableParallelism(), memMib: Math.floor(os.totalmem() / (1024 * 1024)) };
}

/** A run's command and VM (`openshell-vm run`, the library's run()). */
export async function prepareExec(
  raw: RawExecOptions,
  names: OptionNames,
  sink: ProgressSink,
): Promise<PreparedVm<ExecOptions>> {
  const { options, warnings } = resolveExecOptions(raw, hostCapacity(), names);
  return prepareResolved(options, warnings, sink);
}

/** A VM without a command of its own (the library's startVm). */
export async function prepareVm(
  raw: Omit<RawExecOptions, 'exec' | 'args' | 'env' | 'workdir'>,
  names: OptionNames,
  sink: ProgressSink,
): Promise<PreparedVm<VmOptions>> {
  const { options, warnings } = resolveVmOptions(raw, hostCapacity(), names);
  return prepareResolved(options, warnings, sink);
}

async function prepareResolved<O extends VmOptions>(
  resolved: O,
  warnings: readonly string[],
  sink: ProgressSink,
): Promise<PreparedVm<O>> {
  for (const warning of warnings) sink.warn(warning);
  const env = readEnvironment();
  const forwards = await assignHostPorts(resolved.forwards);
  const options = Object.freeze({ ...resolved, forwards });
  const { backend, accel } = await chooseVmm(env, options, sink);
  await checkHostPortsFree(forwards);
  return { env, options, backend, accel };
}

/** A gateway's boot, decided: its rootfs and every forward (the gateway's, the API's, the extra ones). */
export interface PreparedGateway extends PreparedVm<GatewayOptions> {
  readonly rootfs: string;
  readonly api: PortForward;
  readonly forwards: readonly PortForward[];
}

/**
 * A gateway (`openshell-vm` without --exec, the library's startGateway()): the options, then its
 * rootfs (one of the user's choice only where no other local user can reach it; the instance's own
 * inside the instance directory, checked and tightened before anything in it is read), its build
 * record, the API port, the VMM.
 */
export async function prepareGateway(
  raw: RawGatewayOptions,
  names: OptionNames,
  sink: ProgressSink,
): Promise<PreparedGateway> {
  const { options: resolved, warnings } = resolveGatewayOptions(raw, hostCapacity(), names);
  for (const warning of warnings) sink.warn(warning);
  const env = readEnvironment();
  const [gateway, ...extraForwards] = await assignHostPorts([resolved.gateway, ...resolved.extraForwards]);
  const options: GatewayOptions = Object.freeze({
    ...resolved,
    gateway: gateway as PortForward,
    extraForwards,
  });
  const rootfs =
    options.rootfs === undefined
      ? rootfsDir(env, options.instance)
      : await ensureRootLocation(options.rootfs);
  if (options.rootfs !== undefined || (await lexists(instanceDir(env, options.instance))))
    await ensureInstanceDir(env, options.instance, (m) => sink.warn(m));
  await readRootfsRecord(rootfs); // a missing rootfs: "build it: openshell-vm prepare-rootfs --name N"
  const api: PortForward = {
    hostAddress: '127.0.0.1',
    hostPort:
      options.apiPort ??
      (await stableApiPort(instanceDir(env, options.instance), { warn: (m) => sink.warn(m) })),
    guestPort: KUBE_API_GUEST_PORT,
  };
  const forwards = [options.gateway, api, ...options.extraForwards];
  const { backend, accel } = await chooseVmm(
    env,
    { ...options, network: 'gvproxy', forwards, purpose: 'gateway' },
    sink,
  );
  await checkHostPortsFree(forwards);
  return { env, options, rootfs, api, forwards, backend, accel };
}

/**
 * Each forward whose host port is to be chosen (ANY_HOST_PORT: a library forward without one) gets
 * a port free on its host address now (the kernel's choice); the forwarder binds it moments later.
 */
export async function assignHostPorts(forwards: readonly PortForward[]): Promise<PortForward[]> {
  const out: PortForward[] = [];
  for (const f of forwards) {
    out.push(f.hostPort === ANY_HOST_PORT ? { ...f, hostPort: await freePortOn(f.hostAddress) } : f);
  }
  return out;
}

function freePortOn(hostAddress: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        new UsageError(`ports: cannot listen on ${hostAddress} (${err.code ?? err.message})`, {
          hint: 'use 127.0.0.1 or an address this host has',
          cause: err,
        }),
      ),
    );
    server.listen({ host: hostAddress, port: 0, exclusive: true }, () => {
      const address = server.address();
      server.close(() =>
        typeof address === 'object' && address
          ? resolve(address.port)
          : reject(new Error(`no port on ${hostAddress}`)),
      );
    });
  });
}
