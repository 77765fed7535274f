import net from 'node:net';
import type { AccelChoice } from '../accel/probe.ts';
import { type HostEnvironment, readEnvironment } from '../config/environment.ts';
import { UsageError } from '../errors.ts';
import { checkHostPortsFree, type PortForward } from '../net/ports.ts';
import {
  ANY_HOST_PORT,
  type ExecOptions,
  hostCapacity,
  type OptionNames,
  type RawExecOptions,
  resolveExecOptions,
  resolveVmOptions,
  type VmOptions,
} from '../options/exec-options.ts';
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
