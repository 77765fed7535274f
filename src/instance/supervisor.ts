import fs from 'node:fs/promises';
import path from 'node:path';
import { ControlServer } from '../agent/control.ts';
import { type AgentHello, AgentLink, type HelloHow } from '../agent/link.ts';
import type { HostEnvironment } from '../config/environment.ts';
import { randomBytes } from '../host/random-hex.ts';
import { terminalSafeLine } from '../host/terminal-text.ts';
import { processStartTime } from '../supervisor/identity.ts';
import type { RunPaths } from '../vmm/run-paths.ts';
import type { VmSession } from '../vmm/session.ts';
import { instanceDir } from './runs.ts';
import { type InstanceState, LOGS_DIR, type LogSource, removeState, writeState } from './state.ts';

export const SUPERVISOR_SOCKETS = { agent: 'agent.sock', control: 'ctl.sock' } as const;

/** A host clock that moved this much against the monotonic clock means a suspend (or a step). */
const CLOCK_JUMP_MS = 2_000;
/** A guest clock this far from the host's is set again. */
const CLOCK_DRIFT_MS = 2_000;
/** How much host randomness the guest's kernel gets on each hello that prepares it (/dev/urandom). */
const RESEED_BYTES = 64;
/** How long the agent has to answer the reseed. */
const RESEED_TIMEOUT_MS = 5_000;
/** How long reconnectAgent's HELLO_GET waits for its answer (agentReady has its own deadline). */
const RECONNECT_HELLO_MS = 60_000;

/** What the process that runs the VM says about it (the rest of the state it finds itself). */
export type SupervisorInfo = Pick<
  InstanceState,
  'mode' | 'detached' | 'backend' | 'accel' | 'arch' | 'vcpus' | 'memMib' | 'forwards' | 'command'
> & {
  /**
   * The backend's VMM log in the run directory (its features' vmmLog); undefined: looked up by
   * the backend's name in the registry, which loads every backend's modules.
   */
  readonly vmmLog?: string | undefined;
};

export type SupervisorEvent =
  | { readonly type: 'agent'; readonly message: string }
  | { readonly type: 'clock'; readonly message: string }
  /** Something to act on: the guest agent broke the protocol (its frame was dropped). */
  | { readonly type: 'warning'; readonly message: string };

/** How long the safety net gives the VM and its helpers to stop before this process exits anyway. */
const FATAL_STOP_MS = 20_000;
/** The exit code after the safety net stopped the instance (openshell-vm's own failure). */
const FATAL_EXIT_CODE = 125;

/**
 * What the openshell-vm process that runs an instance's VM adds to it: the state file (written at
 * each phase, removed at the end), the guest agent's link and the control socket (exec, clock,
 * stop), the guest clock kept in step with the host's (also after the host slept), and an orderly
 * guest shutdown.
 *
 * On the guest agent's first hello (at boot) and on each answer to reconnectAgent() (a guest
 * restored from a snapshot), the guest's kernel first gets fresh host randomness and reseeds its
 * CRNG (two VMs restored from one snapshot would otherwise go on with the same random state),
 * then its clock is checked and set; agentReady() tells when both are done. A hello the host did
 * not ask for after the first (a restarted agent, or a hostile guest repeating it) prepares
 * nothing: the guest's kernel is the same, and a guest must not make the host do work (and log
 * it) at will. The link reports those and drops the guest after a few (MAX_UNASKED_HELLOS).
 */
export class InstanceSupervisor {
  readonly link: AgentLink;
  readonly control: ControlServer;
  /** Where the guest agent's channel ends on the host (the VMM connects it to the guest). */
  readonly agentSocket: string;
  /** Settles with the timeout (ms) when `openshell-vm stop` asks this instance to stop. */
  readonly stopRequested: Promise<number>;
  readonly #dir: string;
  readonly #run: RunPaths;
  readonly #emit: (event: SupervisorEvent) => void;
  #state: InstanceState;
  #clockTimer: NodeJS.Timeout | undefined;
  #clockCheckMs = 10_000;
  #closed = false;
  #session: VmSession | undefined;
  #removeSafetyNet: () => void = () => undefined;
  /** The guest's preparation after the latest hello (reseed, clock): true when it was reseeded. */
  #round: Promise<boolean> | undefined;
  /** agentReady() calls waiting for the next hello's preparation. */
  #roundWaiters: ((round: Promise<boolean>) => void)[] = [];
  /** Settles when the VM ended or this supervisor closed. */
  readonly #gone: Promise<void>;
  #setGone: () => void = () => undefined;

  private constructor(
    dir: string,
    run: RunPaths,
    link: AgentLink,
    control: ControlServer,
    state: InstanceState,
    stopRequested: Promise<number>,
    emit: (event: SupervisorEvent) => void,
  ) {
    this.#dir = dir;
    this.#run = run;
    this.link = link;
    this.control = control;
    this.#state = state;
    this.stopRequested = stopRequested;
    this.#emit = emit;
    this.agentSocket = path.join(run.socketDir, SUPERVISOR_SOCKETS.agent);
    this.#gone = new Promise((resolve) => {
      this.#setGone = resolve;
    });
  }

  /** Opens the agent's socket and the control socket in the run's socket directory; writes the state. */
  static async open(
    env: HostEnvironment,
    run: RunPaths,
    instance: string,
    info: SupervisorInfo,
    emit: (event: SupervisorEvent) => void = () => undefined,
  ): Promise<InstanceSupervisor> {
    const dir = instanceDir(env, instance);
    const link = await AgentLink.listen(path.join(run.socketDir, SUPERVISOR_SOCKETS.agent), {
      report: (message) => emit({ type: 'warning', message }),
    });
    let requestStop: (ms: number) => void = () => undefined;
    const stopRequested = new Promise<number>((resolve) => {
      requestStop = resolve;
    });
    let control: ControlServer;
    try {
      control = await ControlServer.listen(path.join(run.socketDir, SUPERVISOR_SOCKETS.control), link, {
        onStop: (ms) => requestStop(ms),
      });
    } catch (err) {
      await link.close();
      throw err;
    }
    const state: InstanceState = {
      version: 1,
      instance,
      mode: info.mode,
      phase: 'starting',
      supervisor: { name: 'openshell-vm', pid: process.pid, startTime: await processStartTime(process.pid) },
      detached: info.detached,
      backend: info.backend,
      accel: info.accel,
      arch: info.arch,
      vcpus: info.vcpus,
      memMib: info.memMib,
      startedAt: new Date().toISOString(),
      runDir: run.dir,
      control: control.socketPath,
      processes: [],
      sockets: [path.join(run.socketDir, SUPERVISOR_SOCKETS.agent), control.socketPath],
      forwards: info.forwards,
      logs: logFiles(
        run,
        info.vmmLog ?? (await import('../vmm/registry.ts')).featuresOf(info.backend).vmmLog,
        dir,
      ),
      command: info.command,
    };
    const supervisor = new InstanceSupervisor(dir, run, link, control, state, stopRequested, emit);
    supervisor.#clockCheckMs = env.clockCheckMs;
    supervisor.#removeSafetyNet = supervisor.#installSafetyNet();
    try {
      await writeState(dir, state);
    } catch (err) {
      await supervisor.close();
      throw err;
    }
    link.onHello((hello, how) => supervisor.#onHello(hello, how));
    if (link.hello) supervisor.#onHello(link.hello, 'first');
    return supervisor;
  }

  get state(): InstanceState {
    return this.#state;
  }

  /**
   * Resolves true once the guest agent's latest first or requested hello (or, when none came yet
   * or reconnectAgent() was called since, the next one) was followed by a reseed the agent
   * answered 'ok' and by the clock check; false when the reseed failed, after `timeoutMs`, when
   * the VM ended first, or (at once) when the link to the agent was dropped.
   */
  agentReady(timeoutMs: number): Promise<boolean> {
    if (this.#closed || this.link.dropped) return Promise.resolve(false);
    let waiter: ((round: Promise<boolean>) => void) | undefined;
    const round =
      this.#round ??
      new Promise<boolean>((resolve) => {
        waiter = (r) => resolve(r);
        this.#roundWaiters.push(waiter);
      });
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), timeoutMs);
      timer.unref();
    });
    return Promise.race([round, deadline, this.#gone.then(() => false)]).finally(() => {
      clearTimeout(timer);
      if (waiter) this.#roundWaiters = this.#roundWaiters.filter((w) => w !== waiter);
    });
  }

  /**
   * For a guest restored from a snapshot, whose agent resumes mid-loop and never says hello by
   * itself: asks it to (HELLO_GET, sent once the VMM has connected the agent's socket). Its hello
   * then reseeds the guest and checks its clock like the first; agentReady() waits for that.
   */
  reconnectAgent(): void {
    if (this.#closed) return;
    this.#round = undefined;
    void this.link.requestHello(RECONNECT_HELLO_MS);
  }

  /** Records the VM's processes and sockets once they run. */
  async attach(session: VmSession): Promise<void> {
    this.#session = session;
    void session.vm.exited.then(() => this.#setGone());
    const processes = [...session.vm.processes, ...(session.gvproxy ? [session.gvproxy.record()] : [])].map(
      (p) => ({ name: p.name, pid: p.pid, startTime: p.startTime }),
    );
    const sockets = new Set(this.#state.sockets);
    for (const entry of await fs.readdir(this.#run.socketDir).catch(() => [] as string[])) {
      if (entry.endsWith('.sock')) sockets.add(path.join(this.#run.socketDir, entry));
    }
    await this.#update({ processes, sockets: [...sockets] });
    this.#startClockWatch();
  }

  async ready(endpoints: InstanceState['endpoints']): Promise<void> {
    await this.#update({ phase: 'running', readyAt: new Date().toISOString(), endpoints });
  }

  /**
   * Stops the guest in order: the agent asks PID 1 to stop (k3s, or the command, first), and the
   * VM is given `timeoutMs` to end by itself; then, or at once when `force` aborts, it is killed.
   * Returns how it ended.
   */
  async shutdownGuest(
    session: VmSession,
    timeoutMs: number,
    force?: AbortSignal,
  ): Promise<'already' | 'clean' | 'forced' | 'no-agent'> {
    if (session.vm.hasExited) return 'already';
    if (this.#state.phase !== 'stopping') await this.#update({ phase: 'stopping' }).catch(() => undefined);
    if (!this.link.shutdown()) {
      await session.close();
      return 'no-agent';
    }
    let timer: NodeJS.Timeout | undefined;
    const ended = await Promise.race([
      session.vm.exited.then(() => true),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), timeoutMs);
        force?.addEventListener('abort', () => resolve(false), { once: true });
      }),
    ]);
    clearTimeout(timer);
    await session.close();
    return ended ? 'clean' : 'forced';
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#setGone();
    this.#removeSafetyNet();
    clearInterval(this.#clockTimer);
    await this.control.close().catch(() => undefined);
    await this.link.close();
    await removeState(this.#dir);
  }

  /**
   * The last line of defence while this process runs a VM: an exception or rejection nobody
   * handled (a bug; no guest input may lead here, see AgentLink) would end the process with QEMU,
   * virtiofsd and gvproxy left running. Instead: log the cause, stop the VM and its helpers in
   * order (session.close: the VM, then virtiofsd, then gvproxy), remove the state, and exit 125.
   * Returns the function that takes the handlers off again (close()).
   */
  #installSafetyNet(): () => void {
    let stopping = false;
    const onFatal = (err: unknown, origin: string) => {
      const cause = err instanceof Error ? (err.stack ?? err.message) : String(err);
      process.stderr.write(
        `openshell-vm: internal error in the supervisor of instance '${this.#state.instance}' (${origin}): ${cause}\n`,
      );
      if (stopping) return;
      stopping = true;
      process.stderr.write('openshell-vm: stopping the VM and its helpers\n');
      process.exitCode = FATAL_EXIT_CODE;
      setTimeout(() => process.exit(FATAL_EXIT_CODE), FATAL_STOP_MS).unref();
      void (async () => {
        try {
          await this.#session?.close();
        } catch (stopErr) {
          process.stderr.write(`openshell-vm: stopping the VM failed: ${(stopErr as Error).message}\n`);
        }
        await this.close().catch(() => undefined);
        process.exit(FATAL_EXIT_CODE);
      })();
    };
    const onException = (err: unknown) => onFatal(err, 'uncaught exception');
    const onRejection = (reason: unknown) => onFatal(reason, 'unhandled rejection');
    process.on('uncaughtException', onException);
    process.on('unhandledRejection', onRejection);
    return () => {
      if (stopping) return; // keep them: the stop under way may still meet another failure
      process.off('uncaughtException', onException);
      process.off('unhandledRejection', onRejection);
    };
  }

  /** The first hello and a requested one prepare the guest; an unasked one again (reported by the link) nothing. */
  #onHello(hello: AgentHello, how: HelloHow): void {
    if (this.#closed || how === 'again') return;
    const said = terminalSafeLine(`${hello.version} (${hello.arch})`, { maxChars: 80 });
    this.#emit({ type: 'agent', message: `guest agent ${said} connected` });
    const round = this.#prepareGuest();
    this.#round = round;
    for (const w of this.#roundWaiters.splice(0)) w(round);
  }

  /**
   * After a hello: the guest's random pool reseeded from the host's (a failure is a warning), then
   * its clock checked and set. True when the reseed was answered 'ok'. Never rejects.
   */
  async #prepareGuest(): Promise<boolean> {
    let reseeded = false;
    try {
      const bytes = randomBytes(RESEED_BYTES);
      const answer = await this.link.reseed(bytes, RESEED_TIMEOUT_MS).finally(() => bytes.fill(0));
      reseeded = answer === 'ok';
      if (reseeded && !this.#closed) {
        this.#emit({
          type: 'agent',
          message: `guest random pool reseeded with ${RESEED_BYTES} bytes from the host`,
        });
      }
      // No link any more: the VM stopped meanwhile, nothing to warn about.
      if (!reseeded && !this.#closed && this.link.hello) {
        const why =
          answer === undefined
            ? `no well-formed answer from the guest agent within ${RESEED_TIMEOUT_MS / 1000} s`
            : `the guest agent answered '${terminalSafeLine(answer, { maxChars: 200 })}'`;
        this.#emit({
          type: 'warning',
          message: `the guest's random pool was not reseeded from the host (${why}): a VM restored from the same snapshot may repeat its random numbers`,
        });
      }
    } catch (err) {
      this.#emit({
        type: 'warning',
        message: `the guest's random pool was not reseeded from the host: ${err instanceof Error ? err.message : String(err)}`,
      });
    }
    await this.#checkClock(true).catch(() => undefined);
    return reseeded && !this.#closed;
  }

  async #update(changes: Partial<InstanceState>): Promise<void> {
    this.#state = { ...this.#state, ...changes };
    if (!this.#closed) await writeState(this.#dir, this.#state);
  }

  /**
   * Every few seconds: if the host's clock jumped against the monotonic clock (the host slept, or
   * its clock was stepped), or the guest's clock is off, set the guest's clock from the host's.
   */
  #startClockWatch(): void {
    const everyMs = this.#clockCheckMs;
    let base = Date.now() - performance.now();
    this.#clockTimer = setInterval(() => {
      const offset = Date.now() - performance.now();
      const jumped = Math.abs(offset - base) > CLOCK_JUMP_MS;
      base = offset;
      void this.#checkClock(jumped);
    }, everyMs);
    this.#clockTimer.unref();
  }

  async #checkClock(force: boolean): Promise<void> {
    if (!this.link.hello || this.#closed) return;
    const t = await this.link.guestTime().catch(() => undefined);
    if (!t) return;
    const diff = t.guestMs - t.hostMs;
    if (!force && Math.abs(diff) <= CLOCK_DRIFT_MS) return;
    const after = await this.link.syncClock().catch(() => undefined);
    if (after === undefined) return;
    if (Math.abs(diff) > CLOCK_DRIFT_MS) {
      this.#emit({
        type: 'clock',
        message: `guest clock was ${(diff / 1000).toFixed(1)} s off the host's; set from the host`,
      });
    }
  }
}

function logFiles(run: RunPaths, vmmLog: string, dir: string): InstanceState['logs'] {
  return {
    console: run.consoleLog,
    gvproxy: path.join(run.dir, 'gvproxy.log'),
    virtiofsd: path.join(run.dir, 'virtiofsd.log'),
    vmm: path.join(run.dir, vmmLog),
    supervisor: path.join(dir, LOGS_DIR, 'supervisor.log'),
    output: path.join(dir, LOGS_DIR, 'output.log'),
  } satisfies Partial<Record<LogSource, string>>;
}
