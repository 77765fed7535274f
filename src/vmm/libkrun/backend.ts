import fs from 'node:fs/promises';
import path from 'node:path';
import type { HostEnvironment } from '../../config/environment.ts';
import { HostError } from '../../errors.ts';
import { AGENT_ENV } from '../../guest/agent-env.ts';
import { AGENT_GUEST_PATH, AGENT_VSOCK_PORT, GUEST_INIT_PATH } from '../../guest/paths.ts';
import { type GuestArch, hostArch } from '../../host/arch.ts';
import { siblingModulePath } from '../../host/module-path.ts';
import { type PidRecord, SupervisedProcess } from '../../supervisor/process.ts';
import type { BackendFeatures, ProcessEvents, RunningVm, VmExit, VmmBackend, VmSpec } from '../backend.ts';
import { initEnvironment, KRUN_INIT_PID1 } from '../guest-handoff.ts';
import { runnerNode } from './macos.ts';
import { KRUN_LOG_LEVEL_DEFAULT, type LibkrunConfig, type LibkrunNet } from './plan.ts';
import { describeRuntime, type RuntimeBundle } from './runtime.ts';

/** Files the libkrun backend writes in a run directory. */
export const LIBKRUN_FILES = {
  input: 'krun-input.json',
  log: 'libkrun.log',
  pid: 'libkrun.pid',
} as const;

const RUNNER = siblingModulePath(import.meta.url, 'runner');

/**
 * The libkrun config for a VM spec (pure). libkrun's init runs one workload and ends the VM when
 * it exits. Exec mode: the workload is the guest agent (--workload), which dials the vsock port
 * libkrun connects to the host's agent socket; every command is an agent session, its environment
 * and working directory in the session's request. Gateway mode: the workload is openshell-vm's
 * guest init, exec'd as PID 1 by libkrun's init (KRUN_INIT_PID1=1), with its mode, network and
 * agent port in its environment (libkrun has no kernel command line for it); the init starts the
 * agent on the same vsock port and then k3s. The guest console (kernel, init, agent) goes to the
 * console log, as under QEMU.
 */
export function libkrunConfig(spec: VmSpec, logLevel: number = KRUN_LOG_LEVEL_DEFAULT): LibkrunConfig {
  if (!spec.agentSocket) {
    throw new HostError('the libkrun backend needs the guest agent socket (VmSpec.agentSocket)', {
      hint: 'this is a bug in openshell-vm: every command reaches the guest through the agent',
    });
  }
  let net: LibkrunNet = { mode: 'none' };
  if (spec.network.mode === 'gvproxy') {
    net = {
      mode: 'gvproxy',
      socketPath: spec.network.socketPath,
      // Both platforms: the frame filter in front of gvproxy speaks the stream framing only.
      mac: spec.network.mac,
    };
  } else if (spec.network.mode === 'tsi') {
    net = { mode: 'tsi', portMap: spec.network.forwards.map((f) => `${f.hostPort}:${f.guestPort}`) };
  } else if (spec.network.mode === 'user') {
    throw new HostError("--net user is QEMU's own network; the libkrun backend has gvproxy and none", {
      hint: 'use --net gvproxy',
    });
  }
  const agentEnv = AGENT_ENV.map(([name, value]) => `${name}=${value}`);
  const exec =
    spec.guestMode === 'gateway'
      ? {
          path: GUEST_INIT_PATH,
          args: [],
          env: [
            KRUN_INIT_PID1,
            ...initEnvironment({
              mode: 'gateway',
              network: spec.network.mode,
              agentVsockPort: AGENT_VSOCK_PORT,
            }),
            ...agentEnv,
          ],
        }
      : {
          path: `/${AGENT_GUEST_PATH}`,
          args: ['--vsock', String(AGENT_VSOCK_PORT), '--workload'],
          env: agentEnv,
        };
  return {
    logLevel,
    vcpus: spec.vcpus,
    memMib: spec.memMib,
    rootDir: spec.rootDir,
    workdir: '/',
    exec,
    net,
    vsockPorts: [{ port: AGENT_VSOCK_PORT, socketPath: spec.agentSocket, listen: false }],
    consoleOutput: spec.consoleLog,
  };
}

/**
 * The libkrun backend's features on a host: its hypervisor (HVF on macOS, KVM elsewhere) and
 * guests of the host's own architecture only.
 */
export function libkrunFeatures(host: {
  readonly platform: NodeJS.Platform;
  readonly arch: GuestArch | undefined;
}): BackendFeatures {
  return {
    accelerators: [host.platform === 'darwin' ? 'hvf' : 'kvm'],
    guestArches: host.arch ? [host.arch] : [],
    networks: ['gvproxy', 'tsi', 'none'],
    guestKernel: 'libkrunfw',
    overlayRoot: 'writable',
    snapshots: false,
    vmmLog: LIBKRUN_FILES.log,
  };
}

/**
 * libkrun in a runner process (src/vmm/libkrun/runner.ts), supervised like every helper: SIGTERM
 * on stop, SIGKILL after the grace period, its output (libkrun's log, the runner's refusals) in
 * libkrun.log. libkrun ends the runner with the workload's status: 0 when the agent ended after
 * the host's SHUTDOWN.
 */
export class LibkrunBackend implements VmmBackend {
  readonly name = 'libkrun';
  readonly features: BackendFeatures;
  readonly runtime: RuntimeBundle;
  readonly #env: HostEnvironment;
  readonly #events: ProcessEvents;

  constructor(env: HostEnvironment, runtime: RuntimeBundle, events: ProcessEvents = {}) {
    this.#env = env;
    this.runtime = runtime;
    this.#events = events;
    this.features = libkrunFeatures({ platform: process.platform, arch: hostArch() });
  }

  describe(): readonly string[] {
    return describeRuntime(this.runtime);
  }

  async start(spec: VmSpec, options: { signal?: AbortSignal | undefined } = {}): Promise<RunningVm> {
    // features.snapshots is false: nobody asks, but a disk root or a saved state is refused, not ignored.
    if (spec.rootMode === 'disk' || spec.restoreState) {
      throw new Error('the libkrun backend boots a shared root only (no disk root, no saved state)');
    }
    const input = path.join(spec.runDir, LIBKRUN_FILES.input);
    await fs.writeFile(
      input,
      JSON.stringify({
        libkrun: this.runtime.libkrun,
        libkrunfw: this.runtime.libkrunfw,
        config: libkrunConfig(spec, this.#env.krunLogLevel),
      }),
    );
    // libkrun finds libkrunfw through the loader path too (the runner also preloads it).
    const loaderVar = process.platform === 'darwin' ? 'DYLD_LIBRARY_PATH' : 'LD_LIBRARY_PATH';
    const runner = await SupervisedProcess.start(
      {
        name: 'libkrun',
        command: await runnerNode(this.#env),
        args: [RUNNER, input],
        logFile: path.join(spec.runDir, LIBKRUN_FILES.log),
        pidFile: path.join(spec.runDir, LIBKRUN_FILES.pid),
        env: {
          ...process.env,
          [loaderVar]: [this.runtime.dir, process.env[loaderVar]].filter(Boolean).join(':'),
        },
        graceMs: 5_000,
      },
      options,
    );
    this.#events.onProcess?.({ action: 'started', record: runner.record() });
    return new KrunVm(runner, this.#events);
  }
}

class KrunVm implements RunningVm {
  readonly processes: readonly PidRecord[];
  readonly exited: Promise<VmExit>;
  #runner: SupervisedProcess;
  #done = false;

  constructor(runner: SupervisedProcess, events: ProcessEvents) {
    this.#runner = runner;
    this.processes = [runner.record()];
    this.exited = runner.exited.then((vmm) => {
      events.onProcess?.({ action: 'stopped', record: runner.record(), exit: vmm });
      this.#done = true;
      return { vmm };
    });
  }

  get hasExited(): boolean {
    return this.#done;
  }

  async stop(graceMs?: number): Promise<VmExit> {
    await this.#runner.stop(graceMs);
    return this.exited;
  }

  vmmLogTail(lines = 12): Promise<string> {
    return this.#runner.logTail(lines);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}
