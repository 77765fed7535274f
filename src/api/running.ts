import { UsageError, VmError } from '../errors.ts';
import type { InstanceHandle } from '../instance/start.ts';
import type { InstanceState, LogSource } from '../instance/state.ts';
import type { PortForward } from '../net/ports.ts';
import { resolveRequest } from '../options/exec-options.ts';
import { execInGuest } from '../presets/run.ts';
import { tailFile } from '../supervisor/wait.ts';
import { commandIo } from './command-io.ts';
import { type CommandResult, commandWords, type ExecOptions, envPairs, LIBRARY_NAMES } from './options.ts';

/** A host process of a running VM (the VMM, virtiofsd, gvproxy), with its kernel start time. */
export interface VmProcess {
  readonly name: string;
  readonly pid: number;
  readonly startTime: string | undefined;
}

export interface VmStatus {
  readonly name: string;
  /** 'stopped' once the VM and its helpers have ended. */
  readonly phase: InstanceState['phase'] | 'stopped';
  readonly backend: string;
  readonly accel: string;
  readonly arch: string;
  readonly cpus: number;
  readonly memoryMib: number;
  readonly forwards: readonly PortForward[];
  readonly processes: readonly VmProcess[];
}

export interface VmLogs {
  /** The run's directory (removed when the VM stops, unless keepLogs or it failed). */
  readonly dir: string;
  /** Each log file: console (kernel and init), vmm, gvproxy, virtiofsd. */
  readonly files: Readonly<Partial<Record<LogSource, string>>>;
  /** The console's last lines (guest text: treat it as untrusted). */
  readonly consoleTail: string;
}

const CONSOLE_TAIL_LINES = 40;

/**
 * What the Vm and Gateway handles share: commands in the guest as agent sessions, the forwards,
 * the logs, the status and the processes, all read from the instance as it is.
 */
export class RunningInstance {
  readonly name: string;
  protected readonly handle: InstanceHandle;
  readonly #forwards: readonly PortForward[];

  constructor(handle: InstanceHandle, forwards: readonly PortForward[]) {
    this.handle = handle;
    this.name = handle.instance;
    this.#forwards = forwards;
  }

  /** The VM's host processes (the VMM, virtiofsd, gvproxy); each is gone once stop() has settled. */
  get processes(): readonly VmProcess[] {
    return this.handle.state.processes.map((p) => ({ name: p.name, pid: p.pid, startTime: p.startTime }));
  }

  /** The pids of `processes`. */
  get pids(): readonly number[] {
    return this.processes.map((p) => p.pid);
  }

  /** True once the VM has ended (stopped, or by itself). */
  get hasExited(): boolean {
    return this.handle.vm.hasExited;
  }

  /**
   * Runs a command in the guest (the program, absolute or looked up in PATH, and its arguments)
   * and returns its exit code as `run` would give it, with its output unless streams are given.
   * Any number may run at once. Aborting `options.signal` ends the command; the VM keeps running.
   */
  async exec(command: readonly string[], options: ExecOptions = {}): Promise<CommandResult> {
    const [exec, ...args] = commandWords(command);
    const request = resolveRequest(
      { exec, args, env: envPairs(options.env), workdir: options.workdir },
      LIBRARY_NAMES,
    );
    if (this.hasExited || this.handle.state.phase === 'stopping') {
      throw new VmError(`the microVM '${this.name}' is ${this.hasExited ? 'stopped' : 'stopping'}`, {
        hint: 'commands run only while the VM runs: start another one',
      });
    }
    const { io, signal, result } = commandIo(options);
    return result(await execInGuest(this.handle, request, io, signal));
  }

  /** The host port that forwards `guestPort` (given in the start's `ports`). */
  mappedPort(guestPort: number): number {
    const forward = this.#forwards.find((f) => f.guestPort === guestPort);
    if (!forward) {
      const list = this.#forwards.map((f) => f.guestPort).join(', ');
      throw new UsageError(`mappedPort(${guestPort}): guest port ${guestPort} is not forwarded`, {
        hint: `forward it at the start: ports: [{ guestPort: ${guestPort} }]${list ? ` (forwarded: ${list})` : ' (no port is forwarded)'}`,
      });
    }
    return forward.hostPort;
  }

  /** Where the logs are, and the console's last lines. */
  async logs(): Promise<VmLogs> {
    const files = this.handle.state.logs;
    return {
      dir: this.handle.run.dir,
      files,
      consoleTail: files.console ? await tailFile(files.console, CONSOLE_TAIL_LINES) : '',
    };
  }

  /** What runs, as the instance's state says it. */
  status(): VmStatus {
    const state = this.handle.state;
    return {
      name: this.name,
      phase: this.hasExited ? 'stopped' : state.phase,
      backend: state.backend,
      accel: state.accel,
      arch: state.arch,
      cpus: state.vcpus,
      memoryMib: state.memMib,
      forwards: this.#forwards,
      processes: this.processes,
    };
  }
}
