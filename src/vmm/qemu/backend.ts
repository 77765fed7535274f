import fs from 'node:fs/promises';
import path from 'node:path';
import type { HostEnvironment } from '../../config/environment.ts';
import { HostError, RestoreError, VmError } from '../../errors.ts';
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
import { partialStateFile, qemuArgs, ROOT_DRIVE_ID, saveStateUri, virtiofsdArgs } from './argv.ts';
import { cancelMigration, Qmp, waitMigration } from './qmp.ts';
import { readOnlyShareCommand } from './read-only-share.ts';

/** File names this backend creates in a run's directories. */
export const QEMU_FILES = {
  virtiofsSocket: 'vfs.sock',
  virtiofsdLog: 'virtiofsd.log',
  virtiofsdPid: 'virtiofsd.pid',
  qemuLog: 'qemu.log',
  qemuPid: 'qemu.pid',
  qmpSocket: 'qmp.sock',
  /**
   * A disk root's directory in the run directory for QEMU's throwaway files, removed when QEMU
   * exits (a kept run directory keeps its logs, not gigabytes of overlay): QEMU's TMPDIR (where
   * snapshot=on puts its temporary overlay) and rootOverlay.
   */
  scratchDir: 'scratch',
  /** In scratchDir: where the guest's writes go once a saved state froze the root image (saveState). */
  rootOverlay: 'root-overlay.qcow2',
} as const;

/** How long QEMU gets for the steps of saving and restoring a VM's state. */
export interface QemuTimeouts {
  /** To load a saved state (`-incoming`). */
  readonly restoreMs: number;
  /** To write one (the outgoing migration). */
  readonly saveMs: number;
  /** After the migration completed, for its writer to put the whole state file in place. */
  readonly writerMs: number;
  /** For a migration to be over after migrate_cancel. */
  readonly cancelMs: number;
  /** Each QMP command. */
  readonly commandMs: number;
}

const DEFAULT_TIMEOUTS: QemuTimeouts = {
  restoreMs: 120_000,
  saveMs: 300_000,
  writerMs: 60_000,
  cancelMs: 15_000,
  commandMs: 30_000,
};

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
  readonly #timeouts: QemuTimeouts;

  constructor(env: HostEnvironment, events: ProcessEvents = {}, timeouts: Partial<QemuTimeouts> = {}) {
    this.#env = env;
    this.#events = events;
    this.#timeouts = { ...DEFAULT_TIMEOUTS, ...timeouts };
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
    const qemuLog = path.join(spec.runDir, QEMU_FILES.qemuLog);
    const scratch = disk ? path.join(spec.runDir, QEMU_FILES.scratchDir) : undefined;
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
      if (scratch) await fs.mkdir(scratch, { mode: 0o700 });
      const vmm = await SupervisedProcess.start(
        {
          name: 'qemu',
          command: qemu,
          args: qemuArgs(
            spec,
            { virtiofsSocket: sock, qmpSocket: disk ? qmpSocket : undefined },
            this.#env.guestHandoff,
          ),
          logFile: qemuLog,
          pidFile: path.join(spec.runDir, QEMU_FILES.qemuPid),
          // A discarded root's temporary overlay (snapshot=on) goes to the scratch directory.
          env: scratch ? { ...process.env, TMPDIR: scratch } : undefined,
          graceMs: 3_000,
        },
        options,
      );
      started.unshift(vmm);
      notify(vmm);
      if (disk) {
        const restoring = spec.restoreState !== undefined;
        const gone = new AbortController();
        void vmm.exited.then(() => gone.abort(new VmError('QEMU exited')));
        qmp = await raceExit(
          Qmp.connect(qmpSocket, {
            commandTimeoutMs: this.#timeouts.commandMs,
            hint: `see ${qemuLog}`,
            signal: gone.signal,
          }),
          vmm,
          'before its control socket answered',
        ).catch(async (err: unknown) => {
          // QEMU ends at once on a state it cannot load: that can be before its socket answered.
          if (restoring && vmm.hasExited && /migration|incoming/i.test(await vmm.logTail(8))) {
            throw restoreFailure(err);
          }
          throw err;
        });
        if (restoring) {
          // The state was saved paused: continue it once QEMU has loaded all of it.
          try {
            await raceExit(
              waitMigration(qmp, this.#timeouts.restoreMs),
              vmm,
              'while loading the saved state',
            );
            await qmp.execute('cont');
          } catch (err) {
            throw restoreFailure(err);
          }
        }
      }
      return new QemuVm(vmm, fsd, sock, this.#events, qmp, spec, scratch, this.#timeouts);
    } catch (err) {
      qmp?.close();
      // Stop in order: VMM first, then its vhost-user backend.
      for (const proc of started) await proc.stop();
      await fs.rm(sock, { force: true });
      if (scratch) await fs.rm(scratch, { recursive: true, force: true });
      throw err;
    }
  }
}

/** QEMU did not load a saved state (or died loading it): a RestoreError, so the caller drops it. */
function restoreFailure(err: unknown): RestoreError {
  const message = err instanceof Error ? err.message : String(err);
  return new RestoreError(`QEMU could not load the saved state: ${message}`, {
    hint: err instanceof VmError ? err.hint : undefined,
    cause: err,
  });
}

/**
 * The state file's size once its writer has put it in place (saveStateUri renames it when whole),
 * polled up to `timeoutMs`: a writer that never finishes is an error, never a short size.
 */
async function waitStateFile(file: string, timeoutMs: number, hint: string | undefined): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    const st = await fs.stat(file).catch(() => undefined);
    if (st) return st.size;
    if (performance.now() - t0 > timeoutMs) {
      const partial = await fs.stat(partialStateFile(file)).catch(() => undefined);
      throw new VmError(
        `QEMU's state writer did not finish ${file} within ${timeoutMs / 1000} s after the migration completed (${partial ? `${partial.size} bytes written so far` : 'nothing written'})`,
        { hint },
      );
    }
    await new Promise((r) => setTimeout(r, 50));
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
  readonly #scratch: string | undefined;
  readonly #timeouts: QemuTimeouts;
  #saved = false;

  constructor(
    vmm: SupervisedProcess,
    fsd: SupervisedProcess | undefined,
    socket: string,
    events: ProcessEvents,
    qmp: Qmp | undefined,
    spec: VmSpec,
    scratch: string | undefined,
    timeouts: QemuTimeouts,
  ) {
    this.#vmm = vmm;
    this.#qmp = qmp;
    this.#spec = spec;
    this.#scratch = scratch;
    this.#timeouts = timeouts;
    this.processes = [vmm.record(), ...(fsd ? [fsd.record()] : [])];
    this.exited = vmm.exited.then(async (vmmExit) => {
      qmp?.close();
      // virtiofsd ends by itself when QEMU goes away; make sure of it.
      const fsdExit = await fsd?.stop(1_000);
      await fs.rm(socket, { force: true });
      // QEMU's overlays are of no use once it is gone (and may be gigabytes).
      if (scratch) await fs.rm(scratch, { recursive: true, force: true }).catch(() => undefined);
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
   * Pauses the VM; points its root drive at a new qcow2 overlay in the scratch directory (QEMU
   * creates it), so the image stays exactly as it was at the pause; writes the paused VM's state
   * (QEMU migration, no bandwidth cap) to `<file>.partial`, renamed to `file` once whole; continues
   * the VM; waits (bounded) for `file`, whose size is the state's. Whatever fails once the VM was
   * asked to stop, the migration is cancelled and the VM continued: the error says so (or that it
   * could not be, and the VM stays paused).
   */
  async saveState(file: string): Promise<SavedState> {
    const qmp = this.#qmp;
    const disk = this.#spec.rootDisk;
    if (!qmp || !disk || !this.#scratch)
      throw new VmError('this VM has no disk root: its state cannot be saved');
    if (disk.discardWrites)
      throw new VmError('a VM whose root writes are discarded is not saved (the image is not its disk)');
    if (this.#saved) throw new VmError('this VM was saved already: its image is frozen at that point');
    const partial = partialStateFile(file);
    const t0 = performance.now();
    try {
      await qmp.execute('stop');
      this.#saved = true;
      await qmp.execute('blockdev-snapshot-sync', {
        device: ROOT_DRIVE_ID,
        'snapshot-file': path.join(this.#scratch, QEMU_FILES.rootOverlay),
        format: 'qcow2',
      });
      await qmp.execute('migrate-set-parameters', { 'max-bandwidth': Number.MAX_SAFE_INTEGER });
      await qmp.execute('migrate', { uri: saveStateUri(file) });
      await waitMigration(qmp, this.#timeouts.saveMs);
    } catch (err) {
      const notContinued = await this.#resume(qmp);
      await fs.rm(partial, { force: true });
      await fs.rm(file, { force: true });
      const why = err instanceof Error ? err.message : String(err);
      throw new VmError(
        notContinued
          ? `the VM's state was not saved (${why}), and QEMU did not continue the VM (${notContinued}): it stays paused`
          : `the VM's state was not saved (${why}); the VM was continued`,
        { hint: qmp.hint, cause: err },
      );
    }
    try {
      await qmp.execute('cont');
    } catch (err) {
      throw new VmError(
        `the VM's state was written, but QEMU did not continue the VM (${err instanceof Error ? err.message : String(err)}): it stays paused`,
        { hint: qmp.hint, cause: err },
      );
    }
    const pausedMs = Math.round(performance.now() - t0);
    return { bytes: await waitStateFile(file, this.#timeouts.writerMs, qmp.hint), pausedMs };
  }

  /** After a failed save: the migration cancelled, the VM continued; undefined, or why it was not. */
  async #resume(qmp: Qmp): Promise<string | undefined> {
    // A migration that will not stop does not keep the VM paused: it is continued regardless.
    await cancelMigration(qmp, this.#timeouts.cancelMs).catch(() => undefined);
    try {
      await qmp.execute('cont');
      return undefined;
    } catch (err) {
      return err instanceof Error ? err.message : String(err);
    }
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
