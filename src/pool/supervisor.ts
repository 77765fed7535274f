import fs from 'node:fs/promises';
import { prepareVm } from '../api/prepare.ts';
import { Vm } from '../api/vm.ts';
import type { HostEnvironment } from '../config/environment.ts';
import { instanceDir } from '../instance/runs.ts';
import { CLI_NAMES, type RawExecOptions } from '../options/exec-options.ts';
import { startExecVm } from '../presets/run.ts';
import { memberName } from './layout.ts';
import {
  claimedMembers,
  ensureMemberDirs,
  forgetMember,
  isClaimantAlive,
  publishReady,
  readyMembers,
} from './members.ts';
import type { PoolRecord } from './record.ts';

/** How often the supervisor looks at its members (claims, ends). */
const SCAN_MS = 150;
/** How long a member that failed to boot waits before the next try (doubling, up to 60 s). */
const RETRY_FIRST_MS = 2_000;
/** The trivial command each member runs once booted, so its agent's first session is behind it. */
export const WARM_COMMAND: readonly string[] = ['/bin/true'];

export interface PoolSupervisorOptions {
  readonly env: HostEnvironment;
  readonly dir: string;
  readonly record: PoolRecord;
  /** Aborted to stop the pool: every member is stopped, then run() returns. */
  readonly signal: AbortSignal;
  readonly log: (line: string) => void;
  /** Called once, when `size` members are first ready at the same time. */
  readonly onFull?: (() => void) | undefined;
}

type MemberState = 'booting' | 'ready' | 'claimed' | 'ending';

interface Member {
  readonly name: string;
  state: MemberState;
  vm?: Vm | undefined;
}

/**
 * The pool supervisor: keeps `size` members booted, warmed and published as ready; a member that a
 * run claimed is replaced at once (booted one at a time: on two cores parallel TCG boots only slow
 * each other), and is stopped and removed (its instance directory too) when its VM ends: the run
 * asks for that stop when its command is done, and the supervisor stops it itself when the claimant
 * died. A member is never published twice: a VM that ran a command is never reused.
 */
export async function runPoolSupervisor(o: PoolSupervisorOptions): Promise<void> {
  const { env, dir, record, signal, log } = o;
  await ensureMemberDirs(dir);
  const members = new Map<string, Member>();
  let next = 0;
  let retryMs = 0;
  let full = false;
  let booting: Promise<void> | undefined;

  const boot = async (name: string) => {
    const member: Member = { name, state: 'booting' };
    members.set(name, member);
    const started = performance.now();
    try {
      const raw: RawExecOptions = { ...record.options, name };
      const sink = {
        progress: (m: string) => log(`${name}: ${m}`),
        warn: (m: string) => log(`${name}: warning: ${m}`),
        event: () => undefined,
      };
      const prepared = await prepareVm(raw, CLI_NAMES, sink);
      const { handle } = await startExecVm(
        prepared.env,
        { ...prepared.options, accel: prepared.accel, keepLogs: false, detached: true },
        { backend: prepared.backend, signal, onEvent: () => undefined },
      );
      member.vm = new Vm(handle, prepared.options.forwards, undefined);
      const warm = await member.vm.exec(WARM_COMMAND);
      if (warm.exitCode !== 0) throw new Error(`the warm-up command exited ${warm.exitCode}`);
      await publishReady(dir, name);
      member.state = 'ready';
      retryMs = 0;
      log(`${name}: ready in ${((performance.now() - started) / 1000).toFixed(2)} s`);
    } catch (err) {
      if (signal.aborted) return;
      retryMs = retryMs ? Math.min(retryMs * 2, 60_000) : RETRY_FIRST_MS;
      log(
        `${name}: boot failed (${err instanceof Error ? err.message : String(err)}); next try in ${retryMs / 1000} s`,
      );
      await end(member);
      await new Promise((r) => setTimeout(r, retryMs));
    }
  };

  const end = async (member: Member) => {
    member.state = 'ending';
    try {
      await member.vm?.stop({ timeoutMs: 3_000 });
    } catch (err) {
      log(`${member.name}: stop: ${err instanceof Error ? err.message : String(err)}`);
    }
    await forgetMember(dir, member.name);
    await fs.rm(instanceDir(env, member.name), { recursive: true, force: true });
    members.delete(member.name);
  };

  const scan = async () => {
    const ready = new Set(await readyMembers(dir));
    const claimed = new Set(await claimedMembers(dir));
    for (const member of members.values()) {
      if (member.state === 'ready' && !ready.has(member.name)) {
        member.state = 'claimed';
        log(`${member.name}: taken${claimed.has(member.name) ? '' : ' (its entry is gone)'}`);
      }
      if (member.state === 'claimed') {
        const vmEnded = !member.vm || member.vm.hasExited || member.vm.status().phase === 'stopping';
        if (vmEnded || !(await isClaimantAlive(dir, member.name))) void end(member);
      } else if (member.state === 'ready' && member.vm?.hasExited) {
        log(`${member.name}: ended by itself before it was taken`);
        await fs.rm(`${dir}/ready/${member.name}`, { force: true });
        void end(member);
      }
    }
    const live = [...members.values()].filter((m) => m.state === 'booting' || m.state === 'ready');
    if (!full && live.length === record.size && live.every((m) => m.state === 'ready')) {
      full = true;
      o.onFull?.();
    }
    if (!booting && live.length < record.size && !signal.aborted) {
      const name = memberName(record.id, next++);
      booting = boot(name).finally(() => {
        booting = undefined;
      });
    }
  };

  while (!signal.aborted) {
    await scan();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, SCAN_MS);
      signal.addEventListener(
        'abort',
        () => {
          clearTimeout(timer);
          resolve();
        },
        { once: true },
      );
    });
  }
  log('stopping the pool');
  await booting;
  await Promise.all([...members.values()].map((m) => end(m)));
}
