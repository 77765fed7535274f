import fs from 'node:fs/promises';
import path from 'node:path';
import type { HostEnvironment } from '../../config/environment.ts';
import { HostError } from '../../errors.ts';
import { findOnPath, findQemu, findVirtiofsd } from '../../host/toolchain.ts';
import { type PidRecord, SupervisedProcess } from '../../supervisor/process.ts';
import type { BackendFeatures, ProcessEvents, RunningVm, VmExit, VmmBackend, VmSpec } from '../backend.ts';
import { qemuArgs, virtiofsdArgs } from './argv.ts';
import { readOnlyShareCommand } from './read-only-share.ts';

/** File names this backend creates in a run's directories. */
export const QEMU_FILES = {
  virtiofsSocket: 'vfs.sock',
  virtiofsdLog: 'virtiofsd.log',
  virtiofsdPid: 'virtiofsd.pid',
  qemuLog: 'qemu.log',
  qemuPid: 'qemu.pid',
} as const;

/** Which command-line dialect a virtiofsd binary speaks (C virtiofsd of QEMU <= 7, or the Rust one). */
export async function virtiofsdFlavour(binary: string): Promise<'c' | 'rust'> {
  const bytes = await fs.readFile(binary);
  return bytes.includes('shared-dir') ? 'rust' : 'c';
}

/** The QEMU backend's features (for any host: QEMU emulates every guest architecture). */
export function qemuFeatures(): BackendFeatures {
  return {
    accelerators: ['kvm', 'hvf', 'tcg'],
    guestArches: ['x86_64', 'aarch64'],
    networks: ['gvproxy', 'user', 'none'],
    guestKernel: 'openshell',
    overlayRoot: 'read-only-lower',
    vmmLog: QEMU_FILES.qemuLog,
  };
}

export class QemuBackend implements VmmBackend {
  readonly name = 'qemu';
  readonly features: BackendFeatures = qemuFeatures();
  readonly #env: HostEnvironment;
  readonly #events: ProcessEvents;

  constructor(env: HostEnvironment, events: ProcessEvents = {}) {
    this.#env = env;
    this.#events = events;
  }

  /** Resolves the binaries now, so a missing tool is reported before anything starts. */
  async preflight(spec: Pick<VmSpec, 'arch'>): Promise<{ qemu: string; virtiofsd: string }> {
    // virtio-fs with a vhost-user backend (virtiofsd) exists in QEMU on Linux hosts only.
    if (process.platform !== 'linux') {
      throw new HostError(
        'the QEMU backend needs virtio-fs (vhost-user), which QEMU supports only on Linux hosts',
        {
          hint: 'on macOS use the libkrun backend',
        },
      );
    }
    const [qemu, virtiofsd] = await Promise.all([findQemu(this.#env, spec.arch), findVirtiofsd(this.#env)]);
    return { qemu, virtiofsd };
  }

  /**
   * virtiofsd's command: on the shared directory itself for a writable root (the gateway's), or
   * read-only for an overlay's lower layer.
   */
  async virtiofsdCommand(
    virtiofsd: string,
    spec: Pick<VmSpec, 'rootDir' | 'rootMode'>,
    sock: string,
  ): Promise<{ command: string; args: string[] }> {
    const flavour = await virtiofsdFlavour(virtiofsd);
    const args = virtiofsdArgs(sock, spec.rootDir, flavour);
    if (spec.rootMode === 'rw') return { command: virtiofsd, args };
    const unshare = await findOnPath('unshare', this.#env.searchPath);
    if (!unshare) {
      throw new HostError('unshare not found on PATH (it keeps the shared root read-only for virtiofsd)', {
        hint: 'apt-get install util-linux',
      });
    }
    return readOnlyShareCommand({
      unshare,
      virtiofsd,
      virtiofsdArgs: args,
      flavour,
      rootDir: spec.rootDir,
    });
  }

  async start(spec: VmSpec, options: { signal?: AbortSignal | undefined } = {}): Promise<RunningVm> {
    const { qemu, virtiofsd } = await this.preflight(spec);
    const sock = path.join(spec.socketDir, QEMU_FILES.virtiofsSocket);
    const fsdCommand = await this.virtiofsdCommand(virtiofsd, spec, sock);
    const started: SupervisedProcess[] = [];
    const notify = (proc: SupervisedProcess) =>
      this.#events.onProcess?.({ action: 'started', record: proc.record() });
    try {
      const fsd = await SupervisedProcess.start(
        {
          name: 'virtiofsd',
          command: fsdCommand.command,
          args: fsdCommand.args,
          logFile: path.join(spec.runDir, QEMU_FILES.virtiofsdLog),
          pidFile: path.join(spec.runDir, QEMU_FILES.virtiofsdPid),
          ready: { kind: 'socket', path: sock },
          readyTimeoutMs: 10_000,
          graceMs: 2_000,
        },
        options,
      );
      started.push(fsd);
      notify(fsd);
      const vmm = await SupervisedProcess.start(
        {
          name: 'qemu',
          command: qemu,
          args: qemuArgs(spec, { virtiofsSocket: sock }, this.#env.guestHandoff),
          logFile: path.join(spec.runDir, QEMU_FILES.qemuLog),
          pidFile: path.join(spec.runDir, QEMU_FILES.qemuPid),
          graceMs: 3_000,
        },
        options,
      );
      started.unshift(vmm);
      notify(vmm);
      return new QemuVm(vmm, fsd, sock, this.#events);
    } catch (err) {
      // Stop in order: VMM first, then its vhost-user backend.
      for (const proc of started) await proc.stop();
      await fs.rm(sock, { force: true });
      throw err;
    }
  }
}

class QemuVm implements RunningVm {
  readonly processes: readonly PidRecord[];
  readonly exited: Promise<VmExit>;
  #vmm: SupervisedProcess;
  #exitedFlag = false;

  constructor(vmm: SupervisedProcess, fsd: SupervisedProcess, socket: string, events: ProcessEvents) {
    this.#vmm = vmm;
    this.processes = [vmm.record(), fsd.record()];
    this.exited = vmm.exited.then(async (vmmExit) => {
      // virtiofsd ends by itself when QEMU goes away; make sure of it.
      const fsdExit = await fsd.stop(1_000);
      await fs.rm(socket, { force: true });
      events.onProcess?.({ action: 'stopped', record: vmm.record(), exit: vmmExit });
      events.onProcess?.({ action: 'stopped', record: fsd.record(), exit: fsdExit });
      this.#exitedFlag = true;
      return { vmm: vmmExit };
    });
  }

  get hasExited(): boolean {
    return this.#exitedFlag;
  }

  async stop(graceMs?: number): Promise<VmExit> {
    await this.#vmm.stop(graceMs);
    return this.exited;
  }

  vmmLogTail(lines = 12): Promise<string> {
    return this.#vmm.logTail(lines);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}
