import type { Readable, Writable } from 'node:stream';
import { controlRequest, ExecSession } from '../agent/client.ts';
import { FRAME } from '../agent/protocol.ts';
import { readEnvironment } from '../config/environment.ts';
import { HostError } from '../errors.ts';
import { agentRequest } from '../exec/request.ts';
import { attachTerminal, stdinIsTerminal, terminalSize } from '../exec/terminal.ts';
import { instanceDir } from '../instance/runs.ts';
import { readState } from '../instance/state.ts';
import { exposeAll, ForwarderClient } from '../net/forwarder.ts';
import { GVPROXY_FILES } from '../net/gvproxy.ts';
import { checkHostPortsFree } from '../net/ports.ts';
import { CLI_NAMES, hostCapacity, type RawExecOptions, resolveExecOptions } from '../options/exec-options.ts';
import { poolDir, poolIdOf, poolKeyOf } from './layout.ts';
import { claimMember } from './members.ts';
import { readPool } from './record.ts';

export interface PoolRunIo {
  readonly stdin: Readable;
  readonly stdout: Writable;
  readonly stderr: Writable;
}

export interface PoolRunSink {
  progress(message: string): void;
  warn(message: string): void;
}

/** How long a pooled run's member gets to power off once its command is done. */
const MEMBER_STOP_MS = 3_000;
/** How long the -p forwards may take to be set up through gvproxy's API (as a cold run's). */
const FORWARD_DEADLINE_MS = 10_000;

/**
 * `run` from a warm pool: when a pool with the same VM-shaping options (the same validator's
 * result: arch, vCPUs, memory, network, backend, accelerator, rootfs, kernel) runs and has a ready
 * member, takes it atomically (members.ts), sets up the run's own -p forwards through that VM's
 * gvproxy, runs the command through its supervisor and guest agent (its --env, --workdir, stdin,
 * a pseudo-terminal when stdin is one; the exit code as a cold run gives it), and asks for the VM
 * to be stopped; the pool removes it and boots a replacement. Returns undefined, having started
 * nothing, when there is no such pool or no ready member: then `run` boots cold, as without pools.
 * A pool whose supervisor died is recovered here (and said so) before the cold boot.
 */
export async function runFromPool(
  raw: RawExecOptions,
  io: PoolRunIo,
  sink: PoolRunSink,
): Promise<number | undefined> {
  const { options, warnings } = resolveExecOptions(raw, hostCapacity(), CLI_NAMES);
  const env = readEnvironment();
  const id = poolIdOf(poolKeyOf(options));
  const dir = poolDir(env, id);
  const pool = await readPool(dir);
  if (pool.kind !== 'ok') return undefined;
  if (!pool.alive) {
    const { recoverPool } = await import('./manage.ts');
    const said = await recoverPool(env, id);
    sink.warn(
      `the warm pool ${id} had lost its supervisor: recovered${said ? ` (${said})` : ''}; booting cold`,
    );
    return undefined;
  }
  // Forwards go through gvproxy's API, which only the gvproxy network has after boot.
  if (options.forwards.length && options.network !== 'gvproxy') return undefined;
  await checkHostPortsFree(options.forwards);
  const member = await claimMember(dir);
  if (!member) {
    sink.progress(`warm pool ${id} has no ready microVM: booting cold`);
    return undefined;
  }
  const state = await readState(instanceDir(env, member));
  if (!state) {
    throw new HostError(`the warm pool's microVM '${member}' has no state file`, {
      hint: `see: openshell-vm pool status; run --no-pool boots cold`,
    });
  }
  try {
    if (options.forwards.length) {
      const api = state.sockets.find((s) => s.endsWith(`/${GVPROXY_FILES.apiSocket}`));
      if (!api) {
        throw new HostError(`the warm pool's microVM '${member}' lists no gvproxy API socket`, {
          hint: 'run --no-pool boots cold',
        });
      }
      await exposeAll(new ForwarderClient(api), options.forwards, { deadlineMs: FORWARD_DEADLINE_MS });
    }
    // Said here, once the run is the pool's (a cold boot says them itself).
    for (const warning of warnings) sink.warn(warning);
    sink.progress(`command started in the guest (warm pool ${id}: ${member})`);
    const tty = stdinIsTerminal(io);
    let session: ExecSession;
    try {
      session = await ExecSession.start(
        state.control,
        member,
        agentRequest(options.request, { tty, ...terminalSize(io) }),
        io,
      );
    } catch (err) {
      // Its supervisor is not answering (the member ended before the pool noticed): nothing of
      // the command ran, so a cold boot is still the run asked for.
      if (!(err instanceof HostError)) throw err;
      sink.warn(`the warm pool's microVM '${member}' did not answer (${err.message}): booting cold`);
      return undefined;
    }
    const restore = tty ? attachTerminal(io, (rows, cols) => session.resize(rows, cols)) : () => undefined;
    const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'];
    const forward = (sig: NodeJS.Signals) => session.signal(sig.slice(3));
    for (const s of signals) process.on(s, forward);
    try {
      const code = await session.done;
      sink.progress(`command exited: exit code ${code}`);
      return code;
    } finally {
      for (const s of signals) process.off(s, forward);
      restore();
    }
  } finally {
    // Never reused: the VM is stopped whatever happened (the pool also stops it if we die here).
    await controlRequest(state.control, member, FRAME.stop, String(MEMBER_STOP_MS), 2_000).catch(
      (err: unknown) =>
        sink.warn(
          `could not ask ${member} to stop (${err instanceof Error ? err.message : String(err)}); the pool stops it`,
        ),
    );
  }
}
