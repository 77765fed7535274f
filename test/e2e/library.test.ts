// End-to-end: the library (src/index.ts) boots real microVMs (TCG here), in this process, and
// gives the CLI's exit codes; its handles stop everything they started, by pid.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { mtlsHandshake } from '../../src/gateway/readiness.ts';
import {
  type CommandResult,
  run,
  startGateway,
  startVm as startLibraryVm,
  UsageError,
  type Vm,
  VmError,
  type VmEvent,
  type VmOptions,
} from '../../src/index.ts';
import { readLockHolder } from '../../src/instance/lock.ts';
import { processStartTime } from '../../src/supervisor/identity.ts';
import { mmdebstrapMissing, STAND_IN_BUILD } from '../fixtures/stand-in.ts';
import { type CliRun, sandbox } from './harness.ts';

const box = sandbox();
const saved = { ...process.env };
before(() => {
  // The library reads the environment as the CLI does: the sandbox's data and runtime directories.
  Object.assign(process.env, box.env);
});
/** Every VM a test started, stopped again at the end (a no-op once stopped) so a failed test leaves nothing. */
const startedVms: Vm[] = [];
after(async () => {
  await Promise.allSettled(startedVms.map((vm) => vm.stop()));
  for (const key of Object.keys(process.env)) if (!(key in saved)) delete process.env[key];
  Object.assign(process.env, saved);
  box.cleanup();
});

async function startVm(options: VmOptions): Promise<Vm> {
  const vm = await startLibraryVm(options);
  startedVms.push(vm);
  return vm;
}

const LIGHT = { cpus: 1, memory: '256M' } as const;
const CLI_LIGHT = ['-q', '--vcpus', '1', '--mem', '256'];

/** The helper processes a start reported (as the CLI's --events has them). */
function processRecorder(): {
  readonly onEvent: (e: VmEvent) => void;
  readonly started: { name: string; pid: number; startTime?: string | undefined }[];
} {
  const started: { name: string; pid: number; startTime?: string | undefined }[] = [];
  return {
    started,
    onEvent: (e) => {
      if (e.type === 'process' && e.action === 'started') started.push(e.process);
    },
  };
}

async function assertGone(processes: readonly { name: string; pid: number }[]): Promise<void> {
  assert.ok(processes.length > 0, 'the start reported its processes');
  for (const p of processes) {
    assert.equal(await processStartTime(p.pid), undefined, `${p.name} (pid ${p.pid}) is still running`);
  }
}

/** The sandbox's leftovers check (sockets, run directories, processes) for a library start. */
async function assertClean(
  processes: readonly { name: string; pid: number }[],
  instance = 'default',
): Promise<void> {
  await box.assertClean({ processes: processes.map(({ name, pid }) => ({ name, pid })) } as CliRun, instance);
  const holder = await readLockHolder(path.join(box.dataDir, 'instances', instance));
  assert.equal(holder, undefined, `instance '${instance}' is still locked`);
}

const SAME_AS_CLI: readonly {
  what: string;
  command: readonly string[];
  exitCode: number;
  signal?: string;
}[] = [
  { what: 'success', command: ['/bin/true'], exitCode: 0 },
  { what: 'its own code', command: ['/bin/sh', '-c', 'exit 7'], exitCode: 7 },
  { what: 'not found', command: ['/no/such/program'], exitCode: 127 },
  { what: 'not executable', command: ['/etc/passwd'], exitCode: 126 },
  {
    what: 'killed by SIGTERM',
    command: ['/bin/sh', '-c', 'kill -TERM $$'],
    exitCode: 143,
    signal: 'SIGTERM',
  },
];

for (const c of SAME_AS_CLI) {
  test(`run() gives the CLI's exit code: ${c.what} (${c.exitCode})`, async () => {
    const recorder = processRecorder();
    const result: CommandResult = await run({ ...LIGHT, command: c.command, onEvent: recorder.onEvent });
    await assertClean(recorder.started);
    const cli = await box.run([...CLI_LIGHT, 'run', '--', ...c.command]);
    await box.assertClean(cli);
    assert.equal(cli.code, c.exitCode, cli.stderr);
    assert.equal(result.exitCode, cli.code, result.stderr);
    assert.equal(result.signal, c.signal);
    if (c.exitCode >= 126 && c.exitCode <= 127)
      assert.match(result.stderr, /ovm-agent|not found|permission/i);
  });
}

test('run(): stdin from a string, stdout and stderr buffered apart, env and workdir', async () => {
  const r = await run({
    ...LIGHT,
    command: ['/bin/sh', '-c', 'cat; echo "$GREETING from $(pwd)" >&2'],
    stdin: 'hello\n',
    env: { GREETING: 'hi there' },
    workdir: '/tmp',
  });
  assert.deepEqual(r, { exitCode: 0, signal: undefined, stdout: 'hello\n', stderr: 'hi there from /tmp\n' });
});

test('run(): bad options are refused before anything starts, naming the library option', async () => {
  const recorder = processRecorder();
  await assert.rejects(
    run({ command: ['/bin/true'], memory: '4XB', onEvent: recorder.onEvent }),
    (e: unknown) =>
      e instanceof UsageError &&
      /^memory: '4XB' is not a whole number of MiB or a size with a unit/.test(e.message),
  );
  await assert.rejects(
    run({ command: ['/bin/true'], cpus: 1.5 }),
    (e: unknown) => e instanceof UsageError && /^cpus: 1.5 is not a whole number/.test(e.message),
  );
  assert.deepEqual(recorder.started, []);
});

test('startVm: exec gives each command its exit code; mappedPort reaches a guest server; dispose leaves nothing', async () => {
  const recorder = processRecorder();
  let pids: readonly number[] = [];
  let processes: readonly { name: string; pid: number }[] = [];
  {
    await using vm = await startVm({
      ...LIGHT,
      name: 'lib-vm',
      ports: [{ guestPort: 80 }],
      onEvent: recorder.onEvent,
    });
    pids = vm.pids;
    processes = [...vm.processes];
    assert.deepEqual(
      vm.processes.map((p) => p.name).sort(),
      recorder.started.map((p) => p.name).sort(),
      'the handle lists the processes the start reported',
    );
    for (const pid of pids) assert.ok(await processStartTime(pid), `pid ${pid} runs while the VM does`);
    assert.equal(vm.status().phase, 'running');
    assert.equal(vm.name, 'lib-vm');

    const three = await vm.exec(['/bin/sh', '-c', 'exit 3']);
    assert.equal(three.exitCode, 3);
    // Several at once, each with its own streams and exit code.
    const [a, b] = await Promise.all([
      vm.exec(['/bin/sh', '-c', 'echo a; exit 1']),
      vm.exec(['/bin/sh', '-c', 'echo "$X" >&2'], { env: { X: 'b' } }),
    ]);
    assert.deepEqual([a.exitCode, a.stdout, b.exitCode, b.stderr], [1, 'a\n', 0, 'b\n']);
    // The guest keeps what a command did: a server started by one is there for the host.
    const served = await vm.exec([
      '/bin/sh',
      '-c',
      'mkdir -p /www && echo served > /www/index.html && httpd -p 80 -h /www',
    ]);
    assert.equal(served.exitCode, 0, served.stderr);
    const port = vm.mappedPort(80);
    assert.equal(await httpGet(port), 'served\n');
    assert.throws(
      () => vm.mappedPort(81),
      (e: unknown) => e instanceof UsageError && /guest port 81 is not forwarded/.test(e.message),
    );
    const logs = await vm.logs();
    assert.ok(logs.files.console && fs.existsSync(logs.files.console), 'the console log is there');
  }
  assert.ok(pids.length >= 2, `the VM had its processes (${pids})`);
  await assertGone(processes);
  await assertClean(processes, 'lib-vm');
});

test('startVm: stop() is idempotent; a stopped VM says so', async () => {
  const vm = await startVm({ ...LIGHT, name: 'lib-stop', network: 'none' });
  const processes = [...vm.processes];
  await Promise.all([vm.stop(), vm.stop()]);
  await vm.stop();
  assert.equal(vm.status().phase, 'stopped');
  await assert.rejects(
    vm.exec(['/bin/true']),
    (e: unknown) => e instanceof VmError && /is stopped/.test(e.message),
  );
  await assertGone(processes);
  await assertClean(processes, 'lib-stop');
});

test('startVm: an abort mid-boot stops everything started, leaves no process and no lock', async () => {
  const recorder = processRecorder();
  const controller = new AbortController();
  const reason = new Error('test abort');
  await assert.rejects(
    startVm({
      ...LIGHT,
      name: 'lib-abort',
      signal: controller.signal,
      onEvent: (e) => {
        recorder.onEvent(e);
        // The VMM has started; the guest is still booting.
        if (e.type === 'process' && e.action === 'started' && e.process.name === 'qemu')
          controller.abort(reason);
      },
    }),
    (e: unknown) => e === reason,
  );
  assert.ok(
    recorder.started.some((p) => p.name === 'qemu'),
    'the abort came after the VMM started',
  );
  await assertGone(recorder.started);
  await assertClean(recorder.started, 'lib-abort');
});

test('startVm: aborting the signal after the start stops the VM', async () => {
  const controller = new AbortController();
  const vm = await startVm({ ...LIGHT, name: 'lib-abort-late', network: 'none', signal: controller.signal });
  const processes = [...vm.processes];
  controller.abort();
  // No stop() here: the abort alone must stop it, and release the instance.
  const dir = path.join(box.dataDir, 'instances', 'lib-abort-late');
  const deadline = Date.now() + 20_000;
  while (!(vm.status().phase === 'stopped' && (await readLockHolder(dir)) === undefined)) {
    assert.ok(Date.now() < deadline, 'the VM did not stop within 20 s of the abort');
    await new Promise((r) => setTimeout(r, 100));
  }
  await assertGone(processes);
  await assertClean(processes, 'lib-abort-late');
});

test("startVm: an onEvent that throws on every process start (gvproxy's, the VMM's) breaks nothing: the VM runs, one process warning, dispose leaves nothing", async () => {
  const recorder = processRecorder();
  const warnings: Error[] = [];
  const onWarning = (w: Error) => {
    if (w.name === 'OpenShellVmWarning') warnings.push(w);
  };
  process.on('warning', onWarning);
  let processes: readonly { name: string; pid: number }[] = [];
  try {
    await using vm = await startVm({
      ...LIGHT,
      name: 'lib-onevent',
      onEvent: (e) => {
        recorder.onEvent(e);
        if (e.type === 'process' && e.action === 'started') throw new Error("a bug in the caller's onEvent");
      },
    });
    processes = [...vm.processes];
    assert.ok(
      processes.some((p) => p.name === 'gvproxy'),
      `gvproxy is one of the VM's processes (${processes.map((p) => p.name)})`,
    );
    assert.equal((await vm.exec(['/bin/sh', '-c', 'exit 4'])).exitCode, 4);
  } finally {
    process.off('warning', onWarning);
  }
  assert.equal(warnings.length, 1, 'the first throw is reported, once');
  assert.match(
    warnings[0]?.message ?? '',
    /onEvent threw on a 'process' event \(a bug in the caller's onEvent\)/,
  );
  await assertGone(recorder.started);
  await assertClean(recorder.started, 'lib-onevent');
});

test('run(): a command that writes past maxBuffer is ended; run rejects with a VmError naming the stream and the option; nothing is left', async () => {
  const recorder = processRecorder();
  const t0 = performance.now();
  await assert.rejects(
    run({
      ...LIGHT,
      name: 'lib-flood',
      command: ['/bin/sh', '-c', 'yes'],
      maxBuffer: 2 ** 20,
      onEvent: recorder.onEvent,
    }),
    (e: unknown) =>
      e instanceof VmError && /more than maxBuffer \(1048576 bytes\) to its stdout/.test(e.message),
  );
  assert.ok(performance.now() - t0 < 120_000, 'the run ended at the limit, not at a timeout');
  await assertGone(recorder.started);
  await assertClean(recorder.started, 'lib-flood');
});

// The gateway from the library, on a rootfs with the STAND-IN k3s (test/fixtures/k3s-stand-in.sh:
// not k3s; it serves mTLS on the gateway port with the certificates the host bootstrap injected).
describe('startGateway with a stand-in k3s', { skip: mmdebstrapMissing }, () => {
  before(async () => {
    const build = await box.run(['prepare-rootfs', '--name', 'lib-gw', '-q', ...STAND_IN_BUILD], {
      timeoutMs: 900_000,
    });
    assert.equal(build.code, 0, build.stderr);
  });

  test('Ready: endpoint on the mapped port answers mTLS with the mtls files; exec; dispose leaves nothing', {
    timeout: 600_000,
  }, async () => {
    const events: string[] = [];
    let processes: readonly { name: string; pid: number }[] = [];
    {
      await using gw = await startGateway({
        name: 'lib-gw',
        ports: [{ guestPort: 30051 }],
        readyTimeoutMs: 300_000,
        onEvent: (e) => events.push(e.type),
      });
      processes = [...gw.processes];
      const port = gw.mappedPort(30051);
      assert.equal(gw.endpoint, `https://127.0.0.1:${port}`);
      assert.notEqual(port, 30051, 'a free port was chosen for the gateway');
      for (const file of [gw.mtls.ca, gw.mtls.cert, gw.mtls.key, gw.kubeconfigPath]) {
        assert.ok(fs.existsSync(file), `${file} exists`);
      }
      assert.match(fs.readFileSync(gw.kubeconfigPath, 'utf8'), new RegExp(gw.kubeApi.replaceAll('.', '\\.')));
      const bundle = {
        caCert: fs.readFileSync(gw.mtls.ca, 'utf8'),
        clientCert: fs.readFileSync(gw.mtls.cert, 'utf8'),
        clientKey: fs.readFileSync(gw.mtls.key, 'utf8'),
      };
      assert.equal(await mtlsHandshake(port, bundle), 'ok');
      const five = await gw.exec(['/bin/sh', '-c', 'hostname; exit 5']);
      assert.deepEqual([five.exitCode, five.stdout], [5, 'gateway\n']);
      assert.equal(gw.status().phase, 'running');
    }
    assert.ok(events.includes('guest'), "the guest init's progress came as events");
    await assertGone(processes);
    await assertClean(processes, 'lib-gw');
  });
});

function httpGet(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/' }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          body += d;
        });
        res.on('end', () => resolve(body));
      })
      .on('error', reject);
  });
}
