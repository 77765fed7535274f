import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { testEnvironment } from '../../test/fixtures/env.ts';
import { decodeExit, encodeExit, encodeFrame, FRAME, type Frame, FrameDecoder } from '../agent/protocol.ts';
import { type HostEnvironment, readEnvironment } from '../config/environment.ts';
import { VmError } from '../errors.ts';
import { findGvproxy } from '../net/gvproxy.ts';
import type { BackendFeatures, RunningVm, VmExit, VmmBackend, VmSpec } from '../vmm/backend.ts';
import { instanceDir } from './runs.ts';
import { type InstanceEvent, type InstanceSpec, type PresetHooks, startInstance } from './start.ts';
import { readState } from './state.ts';

/** What the fake guest does: say hello (or not), answer OPEN with `exitCode`, end on SHUTDOWN. */
interface FakeGuest {
  hello: boolean;
  exitCode: number;
  /** The VM ends by itself this many ms after it started. */
  dieAfterMs?: number;
}

/**
 * A VMM double: start() "boots" at once and connects to the agent socket as QEMU does, then
 * plays the agent. Records every step the lifecycle takes, in order.
 */
class FakeBackend implements VmmBackend {
  readonly name = 'qemu'; // the state file knows qemu and libkrun only
  readonly features = {} as BackendFeatures;
  readonly steps: string[];
  readonly guest: FakeGuest;
  specs: VmSpec[] = [];

  constructor(steps: string[], guest: FakeGuest) {
    this.steps = steps;
    this.guest = guest;
  }

  async start(spec: VmSpec): Promise<RunningVm> {
    this.specs.push(spec);
    this.steps.push('vmm:start');
    let end: (exit: VmExit) => void = () => undefined;
    let hasExited = false;
    const exited = new Promise<VmExit>((resolve) => {
      end = (exit) => {
        if (hasExited) return;
        hasExited = true;
        this.steps.push('vmm:exited');
        socket?.destroy();
        resolve(exit);
      };
    });
    let socket: net.Socket | undefined;
    if (spec.agentSocket) {
      socket = net.createConnection(spec.agentSocket);
      socket.on('error', () => undefined);
      const decoder = new FrameDecoder();
      socket.on('connect', () => {
        if (this.guest.hello) socket?.write(encodeFrame(FRAME.hello, 0, 'ovm-agent/1 x86_64'));
      });
      socket.on('data', (chunk: Buffer) => {
        for (const f of decoder.push(chunk) as Frame[]) {
          if (f.type === FRAME.open) {
            this.steps.push('agent:open');
            socket?.write(encodeFrame(FRAME.stdout, f.channel, 'out'));
            socket?.write(encodeFrame(FRAME.exit, f.channel, encodeExit(this.guest.exitCode)));
          } else if (f.type === FRAME.shutdown) {
            this.steps.push('agent:shutdown');
            setTimeout(() => end({ vmm: { exitCode: 0, signal: null, forced: false } }), 5);
          }
        }
      });
    }
    if (this.guest.dieAfterMs !== undefined) {
      setTimeout(() => end({ vmm: { exitCode: 1, signal: null, forced: false } }), this.guest.dieAfterMs);
    }
    const vm: RunningVm = {
      processes: [],
      exited,
      get hasExited() {
        return hasExited;
      },
      stop: async () => {
        this.steps.push('vmm:stop');
        end({ vmm: { exitCode: null, signal: 'SIGTERM', forced: false } });
        return exited;
      },
      vmmLogTail: async () => 'vmm said: bye\x1b[2J',
      [Symbol.asyncDispose]: async () => {
        await vm.stop();
      },
    };
    return vm;
  }
}

const spec = (overrides: Partial<InstanceSpec> = {}): InstanceSpec => ({
  instance: 'unit',
  mode: 'run',
  purpose: 'running a unit test',
  detached: false,
  arch: 'x86_64',
  accel: { accel: 'kvm', reason: 'test', forced: true },
  vcpus: 1,
  memMib: 256,
  network: 'none',
  forwards: [],
  command: ['true'],
  agentTimeoutMs: 2_000,
  keepLogs: false,
  ...overrides,
});

function hooks(steps: string[], extra: Partial<PresetHooks> = {}): PresetHooks {
  return {
    preflight: async () => {
      steps.push('preflight');
    },
    prepare: async () => {
      steps.push('prepare');
    },
    boot: async (run) => {
      steps.push('boot');
      fs.writeFileSync(run.consoleLog, 'line one\nguest says \x1b]52;c;x\x07\n');
      return {
        kernel: '/k',
        initramfs: '/i',
        rootDir: '/r',
        rootMode: 'overlay',
        kernelArgs: [],
      };
    },
    started: () => {
      steps.push('started');
    },
    ready: async () => {
      steps.push('ready');
      return undefined;
    },
    stopping: () => {
      steps.push('stopping');
    },
    cleanup: async () => {
      steps.push('cleanup');
    },
    ...extra,
  };
}

const sink = () => {
  const chunks: Buffer[] = [];
  return {
    stream: new Writable({
      write(c: Buffer, _e, cb) {
        chunks.push(c);
        cb();
      },
    }),
    text: () => Buffer.concat(chunks).toString(),
  };
};

describe('startInstance: one lifecycle against a fake backend', () => {
  let dir: string;
  let env: HostEnvironment;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-start-'));
    env = testEnvironment(dir);
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const runsLeft = () =>
    fs.readdirSync(path.join(instanceDir(env, 'unit'), 'runs')).filter((d) => !d.startsWith('.'));

  it('runs every step in one order; exec through the agent; stop is ordered and idempotent', async () => {
    const steps: string[] = [];
    const backend = new FakeBackend(steps, { hello: true, exitCode: 3 });
    const handle = await startInstance(env, spec(), hooks(steps), { backend });
    assert.deepEqual(steps, ['preflight', 'prepare', 'boot', 'vmm:start', 'started', 'ready']);
    assert.equal(handle.state.phase, 'running');
    assert.equal((await readState(instanceDir(env, 'unit')))?.phase, 'running');
    // The lock is held: a second start is refused at once, before its preflight's work is used.
    await assert.rejects(
      startInstance(env, spec(), hooks([]), { backend: new FakeBackend([], { hello: true, exitCode: 0 }) }),
      /running a unit test/,
    );
    const out = sink();
    assert.equal(
      await handle.exec(
        { argv: ['x'], env: [], workdir: '/', tty: false, rows: 24, cols: 80 },
        { stdout: out.stream, stderr: sink().stream },
      ).done,
      3,
    );
    assert.equal(out.text(), 'out');
    const [first, second] = await Promise.all([handle.stop(), handle.stop()]);
    assert.equal(first, 'clean');
    assert.equal(second, 'clean');
    assert.deepEqual(steps.slice(6), ['agent:open', 'stopping', 'agent:shutdown', 'vmm:exited', 'cleanup']);
    assert.equal(await readState(instanceDir(env, 'unit')), undefined, 'the state file is removed');
    assert.deepEqual(runsLeft(), [], 'the run directory is removed');
    // The lock was released: the instance starts again.
    const again = await startInstance(env, spec(), hooks([]), {
      backend: new FakeBackend([], { hello: true, exitCode: 0 }),
    });
    await again[Symbol.asyncDispose]();
  });

  it('an agent that never connects: a VmError with the console tail made terminal-safe; everything stopped, logs kept', async () => {
    const steps: string[] = [];
    const backend = new FakeBackend(steps, { hello: false, exitCode: 0 });
    const err = await startInstance(env, spec({ agentTimeoutMs: 100 }), hooks(steps), { backend }).then(
      () => assert.fail('started'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof VmError);
    assert.match(err.message, /the guest agent did not connect within 0.1 s/);
    assert.match(err.hint ?? '', /last console lines:\n {4}line one\n {4}guest says \\x1b\]52;c;x\\x07/);
    assert.ok(
      !(err.hint ?? '').includes('\x1b') && !(err.hint ?? '').includes('\x07'),
      'no raw escape in the hint',
    );
    assert.match(err.hint ?? '', /see .*console\.log \(logs in .*\)/);
    assert.deepEqual(steps, [
      'preflight',
      'prepare',
      'boot',
      'vmm:start',
      'started',
      'stopping',
      'vmm:stop',
      'vmm:exited',
      'cleanup',
    ]);
    assert.equal(runsLeft().length, 1, 'the failed run keeps its logs');
    assert.equal(await readState(instanceDir(env, 'unit')), undefined);
  });

  it('a VM that ends before its agent connects says so, with how the VMM ended (its own lines made safe)', async () => {
    const steps: string[] = [];
    const backend = new FakeBackend(steps, { hello: false, exitCode: 0, dieAfterMs: 20 });
    await assert.rejects(startInstance(env, spec(), hooks(steps), { backend }), (e: VmError) => {
      assert.match(
        e.message,
        /the microVM ended before the guest agent connected \(the VMM exited with code 1\):\n {4}vmm said: bye\\x1b\[2J/,
      );
      return true;
    });
    assert.equal(steps.at(-1), 'cleanup');
  });

  it("an abort while the preset waits for readiness: the signal's reason, the VM killed (no orderly shutdown), cleanup run", async () => {
    const steps: string[] = [];
    const backend = new FakeBackend(steps, { hello: true, exitCode: 0 });
    const controller = new AbortController();
    const reason = new Error('interrupted');
    const started = startInstance(
      env,
      spec(),
      hooks(steps, {
        ready: (_h, signal) =>
          new Promise((_resolve, reject) => {
            steps.push('ready');
            setTimeout(() => controller.abort(reason), 10);
            signal?.addEventListener('abort', () => reject(signal.reason), { once: true });
          }),
      }),
      { backend, signal: controller.signal },
    );
    await assert.rejects(started, (e) => e === reason);
    assert.deepEqual(steps.slice(-5), ['ready', 'stopping', 'vmm:stop', 'vmm:exited', 'cleanup']);
    assert.ok(!steps.includes('agent:shutdown'));
  });

  it('a failing step before the VMM: nothing started, the preset cleans up, the lock is free again', async () => {
    const steps: string[] = [];
    const backend = new FakeBackend(steps, { hello: true, exitCode: 0 });
    await assert.rejects(
      startInstance(
        env,
        spec(),
        hooks(steps, {
          prepare: async () => {
            steps.push('prepare');
            throw new VmError('bad rootfs');
          },
        }),
        { backend },
      ),
      /bad rootfs/,
    );
    assert.deepEqual(steps, ['preflight', 'prepare', 'stopping', 'cleanup']);
    const again = await startInstance(env, spec(), hooks([]), {
      backend: new FakeBackend([], { hello: true, exitCode: 0 }),
    });
    await again.stop();
  });

  it('an aborted signal before the lock: nothing is taken', async () => {
    const steps: string[] = [];
    const backend = new FakeBackend(steps, { hello: true, exitCode: 0 });
    const controller = new AbortController();
    controller.abort(new Error('early'));
    await assert.rejects(
      startInstance(env, spec(), hooks(steps), { backend, signal: controller.signal }),
      /early/,
    );
    assert.deepEqual(steps, ['preflight']);
  });

  const isAlive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };

  /** A real gvproxy (the one a run would use) behind the fake VMM, and its pids as the events give them. */
  async function withGvproxy(
    throwOn: 'started' | 'stopped',
  ): Promise<{ env: HostEnvironment; pids: number[]; emit: (e: InstanceEvent) => void; bug: Error }> {
    const gvEnv = testEnvironment(dir, { toolOverrides: { gvproxy: await findGvproxy(readEnvironment()) } });
    const pids: number[] = [];
    const bug = new Error(`a bug in the caller's emit (on 'process ${throwOn}')`);
    const emit = (e: InstanceEvent) => {
      if (e.type !== 'process') return;
      if (e.action === 'started') pids.push(e.process.pid);
      if (e.action === throwOn) throw bug;
    };
    return { env: gvEnv, pids, emit, bug };
  }

  it("an emit that throws on gvproxy's 'process started': the start rejects with it, gvproxy is stopped, nothing is left", async () => {
    const steps: string[] = [];
    const { env: gvEnv, pids, emit, bug } = await withGvproxy('started');
    const backend = new FakeBackend(steps, { hello: true, exitCode: 0 });
    await assert.rejects(
      startInstance(gvEnv, spec({ network: 'gvproxy' }), hooks(steps), { backend, emit }),
      (e) => e === bug,
    );
    assert.equal(pids.length, 1, 'gvproxy was started');
    assert.equal(isAlive(pids[0] as number), false, `gvproxy (pid ${pids[0]}) is stopped`);
    assert.ok(!steps.includes('vmm:start'), 'the VMM was never started');
    assert.equal(steps.at(-1), 'cleanup');
    assert.equal(await readState(instanceDir(gvEnv, 'unit')), undefined, 'the state file is removed');
    const again = await startInstance(gvEnv, spec(), hooks([]), {
      backend: new FakeBackend([], { hello: true, exitCode: 0 }),
    });
    await again.stop();
  });

  for (const orderly of [true, false]) {
    it(`an emit that throws on gvproxy's 'process stopped' (${orderly ? 'an orderly stop' : 'a kill: an abort, the VM ending by itself'}): stop() rejects with it once everything is stopped and removed`, async () => {
      const steps: string[] = [];
      const { env: gvEnv, pids, emit, bug } = await withGvproxy('stopped');
      const backend = new FakeBackend(steps, { hello: true, exitCode: 0 });
      const handle = await startInstance(gvEnv, spec({ network: 'gvproxy' }), hooks(steps), {
        backend,
        emit,
      });
      const control = handle.state.control;
      assert.ok(fs.existsSync(control), 'the control socket is there while it runs');
      await assert.rejects(handle.stop({ orderly }), (e) => e === bug);
      assert.equal(isAlive(pids[0] as number), false, 'gvproxy is stopped');
      assert.ok(!fs.existsSync(control), 'the control socket is removed');
      assert.equal(await readState(instanceDir(gvEnv, 'unit')), undefined, 'the state file is removed');
      assert.equal(steps.at(-1), 'cleanup');
      assert.deepEqual(runsLeft(), [], 'the run directory is removed');
      const again = await startInstance(gvEnv, spec(), hooks([]), {
        backend: new FakeBackend([], { hello: true, exitCode: 0 }),
      });
      await again.stop();
    });
  }

  it('exit codes come from the agent as they are (decodeExit round trip)', () => {
    for (const code of [0, 2, 125, 126, 127, 137, 143]) assert.equal(decodeExit(encodeExit(code)), code);
  });
});
