import fs from 'node:fs/promises';
import path from 'node:path';
import type { HostEnvironment } from '../../config/environment.ts';
import { HostError, VmError } from '../../errors.ts';
import { terminalSafeLines } from '../../host/terminal-text.ts';
import { findOnPath, findQemu, findVirtiofsd } from '../../host/toolchain.ts';
import { type PidRecord, SupervisedProcess } from '../../supervisor/process.ts';
import type {
  BackendFeatures,
  ProcessEvents,
  RunningVm,
  SavedState,
  VmExit,
  VmmBackend,
  VmSpec,
} from '../backend.ts';
import { qemuArgs, ROOT_DRIVE_ID, virtiofsdArgs } from './argv.ts';
import { Qmp, shellQuote, waitMigration } from './qmp.ts';
import { readOnlyShareCommand } from './read-only-share.ts';

/** File names this backend creates in a run's directories. */
export const QEMU_FILES = {
  virtiofsSocket: 'vfs.sock',
  virtiofsdLog: 'virtiofsd.log',
  virtiofsdPid: 'virtiofsd.pid',
  qemuLog: 'qemu.log',
  qemuPid: 'qemu.pid',
  qmpSocket: 'qmp.sock',
  /** Where the guest's writes go once a saved state froze the root image (saveState). */
  rootOverlay: 'root-overlay.qcow2',
} as const;

/** How long QEMU gets to load a saved state, and to write one. */
const RESTORE_TIMEOUT_MS = 120_000;
const SAVE_TIMEOUT_MS = 300_000;

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
    snapshots: true,
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

  /** The QEMU binary a saved state needs again: its path, size and modification time. */
  async identity(spec: Pick<VmSpec, 'arch'>): Promise<string> {
    const { qemu } = await this.preflight(spec);
    const st = await fs.stat(qemu);
    return `${qemu}:${st.size}:${Math.round(st.mtimeMs)}`;
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
    const disk = spec.rootMode === 'disk';
    const sock = path.join(spec.socketDir, QEMU_FILES.virtiofsSocket);
    const qmpSocket = path.join(spec.socketDir, QEMU_FILES.qmpSocket);
    const started: SupervisedProcess[] = [];
    const notify = (proc: SupervisedProcess) =>
      this.#events.onProcess?.({ action: 'started', record: proc.record() });
    let qmp: Qmp | undefined;
    try {
      let fsd: SupervisedProcess | undefined;
      if (!disk) {
        const fsdCommand = await this.virtiofsdCommand(virtiofsd, spec, sock);
        fsd = await SupervisedProcess.start(
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
      }
      const vmm = await SupervisedProcess.start(
        {
          name: 'qemu',
          command: qemu,
          args: qemuArgs(
            spec,
            { virtiofsSocket: sock, qmpSocket: disk ? qmpSocket : undefined },
            this.#env.guestHandoff,
          ),
          logFile: path.join(spec.runDir, QEMU_FILES.qemuLog),
          pidFile: path.join(spec.runDir, QEMU_FILES.qemuPid),
          // A discarded root's temporary overlay (snapshot=on) goes to the run directory.
          env: disk ? { ...process.env, TMPDIR: spec.runDir } : undefined,
          graceMs: 3_000,
        },
        options,
      );
      started.unshift(vmm);
      notify(vmm);
      if (disk) {
        qmp = await raceExit(Qmp.connect(qmpSocket), vmm, 'before its control socket answered');
        if (spec.restoreState) {
          // The state was saved paused: continue it once QEMU has loaded all of it.
          await raceExit(waitMigration(qmp, RESTORE_TIMEOUT_MS), vmm, 'while loading the saved state');
          await qmp.execute('cont');
        }
      }
      return new QemuVm(vmm, fsd, sock, this.#events, qmp, spec);
    } catch (err) {
      qmp?.close();
      // Stop in order: VMM first, then its vhost-user backend.
      for (const proc of started) await proc.stop();
      await fs.rm(sock, { force: true });
      throw err;
    }
  }
}

/** `promise`, or a VmError with the QEMU log's last lines when QEMU exits first. */
async function raceExit<T>(promise: Promise<T>, vmm: SupervisedProcess, when: string): Promise<T> {
  promise.catch(() => undefined);
  const exited = vmm.exited.then(async (exit) => {
    const tail = terminalSafeLines((await vmm.logTail(8)).trim(), { maxChars: 400 });
    const how = exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.exitCode}`;
    throw new VmError(`QEMU ${how} ${when}${tail ? `:\n    ${tail.replaceAll('\n', '\n    ')}` : ''}`);
  });
  exited.catch(() => undefined);
  return Promise.race([promise, exited]);
}

class QemuVm implements RunningVm {
  readonly processes: readonly PidRecord[];
  readonly exited: Promise<VmExit>;
  #vmm: SupervisedProcess;
  #exitedFlag = false;
  readonly #qmp: Qmp | undefined;
  readonly #spec: VmSpec;
  #saved = false;

  constructor(
    vmm: SupervisedProcess,
    fsd: SupervisedProcess | undefined,
    socket: string,
    events: ProcessEvents,
    qmp: Qmp | undefined,
    spec: VmSpec,
  ) {
    this.#vmm = vmm;
    this.#qmp = qmp;
    this.#spec = spec;
    this.processes = [vmm.record(), ...(fsd ? [fsd.record()] : [])];
    this.exited = vmm.exited.then(async (vmmExit) => {
      qmp?.close();
      // virtiofsd ends by itself when QEMU goes away; make sure of it.
      const fsdExit = await fsd?.stop(1_000);
      await fs.rm(socket, { force: true });
      events.onProcess?.({ action: 'stopped', record: vmm.record(), exit: vmmExit });
      if (fsd) events.onProcess?.({ action: 'stopped', record: fsd.record(), exit: fsdExit });
      this.#exitedFlag = true;
      return { vmm: vmmExit };
    });
  }

  get hasExited(): boolean {
    return this.#exitedFlag;
  }

  /**
   * Pauses the VM; points its root drive at a new qcow2 overlay in the run directory (QEMU creates
   * it), so the image stays exactly as it was at the pause; writes the paused VM's state (QEMU
   * migration, no bandwidth cap); continues the VM. Whatever fails, the VM is continued.
   */
  async saveState(file: string): Promise<SavedState> {
    const qmp = this.#qmp;
    const disk = this.#spec.rootDisk;
    if (!qmp || !disk) throw new VmError('this VM has no disk root: its state cannot be saved');
    if (disk.discardWrites)
      throw new VmError('a VM whose root writes are discarded is not saved (the image is not its disk)');
    if (this.#saved) throw new VmError('this VM was saved already: its image is frozen at that point');
    const t0 = performance.now();
    await qmp.execute('stop');
    try {
      this.#saved = true;
      await qmp.execute('blockdev-snapshot-sync', {
        device: ROOT_DRIVE_ID,
        'snapshot-file': path.join(this.#spec.runDir, QEMU_FILES.rootOverlay),
        format: 'qcow2',
      });
      await qmp.execute('migrate-set-parameters', { 'max-bandwidth': Number.MAX_SAFE_INTEGER });
      await qmp.execute('migrate', { uri: `exec:cat > ${shellQuote(file)}` });
      await waitMigration(qmp, SAVE_TIMEOUT_MS);
    } finally {
      await qmp.execute('cont').catch(() => undefined);
    }
    const pausedMs = Math.round(performance.now() - t0);
    return { bytes: (await fs.stat(file)).size, pausedMs };
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
