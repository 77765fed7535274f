import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { RUN_HANDOFF_FORMAT, type RunHandoff, runHandoffBuild } from './run-handoff.ts';

// What each command loads: the CLI imports a command's module when that command runs, so the
// commands people type most (--version, list, exec into an instance) and the detached supervisor
// never load the Kubernetes client, the x509 stack or the OCI/rootfs code, which cost ~0.3 s and
// ~100 MB at every start when main.ts imported them all. No timings here (they depend on the
// machine): scripts/bench-startup.ts measures them. Node's own modules count too: `node:http`
// imported as an ES module loads Node's bundled undici (~25 ms, ~14 MB), `node:util` loads
// worker_threads; both are seen in process.moduleLoadList, which the hook also writes.

const MAIN = path.join(import.meta.dirname, 'main.ts');
const SUPERVISOR = path.join(import.meta.dirname, 'run-supervisor.ts');

/**
 * A module hook that writes, at exit, every module URL the process loads and then Node's internal
 * module list (entries like "NativeModule http") to $OVM_LOADED_FILE.
 */
const HOOK = `import { registerHooks } from 'node:module';
import { writeFileSync } from 'node:fs';
const urls = new Set();
registerHooks({ load(url, context, next) { urls.add(url); return next(url, context); } });
process.on('exit', () => writeFileSync(process.env.OVM_LOADED_FILE, [...urls, ...process.moduleLoadList].join('\\n')));
`;

function loadedBy(args: readonly string[]): { code: number | null; stderr: string; urls: string[] } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-startup-'));
  try {
    const hook = path.join(dir, 'hook.mjs');
    fs.writeFileSync(hook, HOOK);
    const out = path.join(dir, 'loaded.txt');
    const r = spawnSync(process.execPath, ['--import', hook, MAIN, ...args], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, OVM_LOADED_FILE: out, OPENSHELL_VM_DATA_DIR: path.join(dir, 'data') },
    });
    return { code: r.status, stderr: r.stderr, urls: fs.readFileSync(out, 'utf8').split('\n') };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Packages and trees no command below may load (they belong to verify, a gateway, prepare-rootfs). */
const HEAVY: readonly RegExp[] = [
  /node_modules\/@kubernetes\/client-node\//,
  /node_modules\/@peculiar\//,
  /node_modules\/reflect-metadata\//,
  /node_modules\/tsyringe\//,
  /node_modules\/tar-stream\//,
  /node_modules\/koffi\//,
  /\/src\/oci\//,
  /\/src\/rootfs\/build\.ts$/,
  /\/src\/gateway\/pki\.ts$/,
];

/** Node's own modules that a command which makes no HTTP request (or runs no worker) must not load. */
const HEAVY_BUILTINS: readonly string[] = [
  'NativeModule http',
  'NativeModule https',
  'NativeModule internal/deps/undici/undici',
];

/** The packages (node_modules/NAME/) among `urls`. */
const packagesIn = (urls: readonly string[]) =>
  [...new Set(urls.map((u) => /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(u)?.[1]).filter(Boolean))].sort();

/** `expectCode` undefined: any exit code (doctor's depends on the host). */
function assertLight(args: readonly string[], expectCode: number | undefined, mustLoad: string): string[] {
  const { code, stderr, urls } = loadedBy(args);
  if (expectCode !== undefined)
    assert.equal(code, expectCode, `${args.join(' ')}: exit code (stderr: ${stderr})`);
  // The hook saw the command run: its own module is in the list.
  assert.ok(
    urls.some((u) => u.endsWith(mustLoad)),
    `${args.join(' ')} loaded ${mustLoad} (${urls.length} modules)`,
  );
  for (const heavy of HEAVY) {
    const hit = urls.find((u) => heavy.test(u));
    assert.equal(hit, undefined, `${args.join(' ')} must not load ${hit}`);
  }
  for (const builtin of HEAVY_BUILTINS) {
    assert.ok(!urls.includes(builtin), `${args.join(' ')} must not load Node's ${builtin.split(' ')[1]}`);
  }
  return urls;
}

test('--version loads only the dispatcher: no package, no command module', () => {
  const urls = assertLight(['--version'], 0, '/src/version.ts');
  assert.deepEqual(
    urls.filter((u) => u.includes('/node_modules/')),
    [],
  );
  const ours = urls.filter((u) => u.includes('/src/')).map((u) => u.slice(u.indexOf('/src/') + 1));
  assert.ok(ours.length <= 8, `--version loads ${ours.length} modules: ${ours.join(' ')}`);
});

test('list, status and exec load none of the gateway, x509, Kubernetes or OCI code', () => {
  assertLight(['list'], 0, '/src/cli/instances.ts');
  assertLight(['status', 'nothing-here'], 125, '/src/cli/instances.ts');
  assertLight(['exec', 'nothing-here', '--', '/bin/true'], 125, '/src/cli/exec-into.ts');
});

test('list, status and exec load no package but the record validator (valibot, when a record is read), and exec no worker_threads', () => {
  for (const [args, code, mustLoad] of [
    [['list'], 0, '/src/cli/instances.ts'],
    [['status', 'nothing-here'], 125, '/src/cli/instances.ts'],
    [['exec', 'nothing-here', '--', '/bin/true'], 125, '/src/cli/exec-into.ts'],
  ] as const) {
    const urls = assertLight(args, code, mustLoad);
    assert.deepEqual(
      packagesIn(urls).filter((p) => p !== 'valibot'),
      [],
      `${args.join(' ')}: packages loaded`,
    );
  }
  const exec = assertLight(['exec', 'nothing-here', '--', '/bin/true'], 125, '/src/cli/exec-into.ts');
  assert.ok(!exec.includes('NativeModule worker_threads'), 'exec must not load worker_threads (node:util)');
});

test("run's cold path (a foreground run; a detached run's starting command) has none of the gateway's stacks, nor node:http", () => {
  // --vcpus 0 is refused after every module of the run path is loaded, before anything starts
  // (--no-pool: the cold path; without it, the warm pool's client refuses it first, see below).
  const urls = assertLight(['run', '--no-pool', '--vcpus', '0', '--', '/bin/true'], 2, '/src/presets/run.ts');
  // The forwarder client is on the path (vmm/session.ts) but loads node:http on its first request.
  assert.ok(urls.some((u) => u.endsWith('/src/net/forwarder.ts')));
  assert.deepEqual(packagesIn(urls), ['valibot']);
});

test('a run that may take a warm pool VM loads the pool client, not the VMM backends, the guest build or the rootfs code', () => {
  // The pool client validates the options (the one validator) before it looks for a pool: --vcpus 0
  // is refused there, with every module of the pooled path loaded and none of the cold boot's.
  const urls = assertLight(['run', '--vcpus', '0', '--', '/bin/true'], 2, '/src/pool/take.ts');
  for (const cold of [
    '/src/cli/run.ts',
    '/src/presets/run.ts',
    '/src/vmm/registry.ts',
    '/src/guest/agent-build.ts',
  ]) {
    assert.ok(!urls.some((u) => u.endsWith(cold)), `a pooled run must not load ${cold}`);
  }
  assert.deepEqual(packagesIn(urls), ['valibot']);
});

test('verify loads the Kubernetes client only to check a gateway; doctor loads neither', () => {
  assertLight(['verify', '--help'], 0, '/src/cli/verify.ts');
  assertLight(['doctor', '--json'], undefined, '/src/cli/doctor.ts');
});

/**
 * What a detached run's resident supervisor (src/cli/run-supervisor.ts) loads: it is handed a run
 * whose boot fails at the QEMU lookup (OPENSHELL_VM_QEMU_<ARCH> names no file; no network), after
 * the lock, the run directory, the state file, the agent and control sockets and the backend are
 * set up and before any process starts, so its whole path up to the spawn of the VMM has loaded.
 */
function loadedBySupervisor(): { code: number | null; stderr: string; urls: string[] } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-startup-sv-'));
  try {
    const hook = path.join(dir, 'hook.mjs');
    fs.writeFileSync(hook, HOOK);
    const out = path.join(dir, 'loaded.txt');
    const arch = process.arch === 'arm64' ? 'aarch64' : 'x86_64';
    const handoff = {
      format: RUN_HANDOFF_FORMAT,
      build: runHandoffBuild(),
      backend: 'qemu',
      plan: {
        arch,
        accel: { accel: 'tcg', reason: 'the startup test', forced: true },
        vcpus: 1,
        memMib: 256,
        instance: 'startup',
        bootTimeoutMs: 10_000,
        keepLogs: false,
        network: 'none',
        forwards: [],
        detached: true,
        prepared: {
          artifacts: { kernel: '/nonexistent', initramfs: '/nonexistent', rootfs: '/nonexistent' },
        },
        request: { exec: 'true', args: [], env: [], workdir: '/' },
      },
      events: [],
      reporter: { quiet: true, debug: false, recorded: '' },
      readyText: '',
    } satisfies RunHandoff;
    // The starting command's side of the channel (runDetached), in a tiny parent: spawnSync has no IPC.
    const parent = `import { spawn } from 'node:child_process';
const child = spawn(process.execPath, ['--import', ${JSON.stringify(hook)}, ${JSON.stringify(SUPERVISOR)}, 'startup'], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
child.send({ type: 'handoff', value: ${JSON.stringify(handoff)} });
child.on('exit', (code) => { process.exitCode = code ?? 1; });`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', parent], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env,
        OVM_LOADED_FILE: out,
        OPENSHELL_VM_DATA_DIR: path.join(dir, 'data'),
        XDG_RUNTIME_DIR: path.join(dir, 'run'),
        [`OPENSHELL_VM_QEMU_${arch.toUpperCase()}`]: path.join(dir, 'no-qemu'),
      },
    });
    return { code: r.status, stderr: r.stderr, urls: fs.readFileSync(out, 'utf8').split('\n') };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test("a detached run's supervisor loads what supervising needs: not the CLI, the validators, the VMM choice or the guest build", () => {
  const { code, stderr, urls } = loadedBySupervisor();
  assert.equal(code, 125, `the boot fails at the QEMU lookup (stderr: ${stderr})`);
  assert.match(stderr, /OPENSHELL_VM_QEMU_\w+ points at .*no-qemu/);
  for (const ran of [
    '/src/cli/run-supervisor.ts',
    '/src/instance/start.ts',
    '/src/instance/supervisor.ts',
    '/src/vmm/session.ts',
    '/src/vmm/qemu/backend.ts',
  ]) {
    assert.ok(
      urls.some((u) => u.endsWith(ran)),
      `the supervisor's path ran through ${ran} (${urls.length} modules)`,
    );
  }
  const ours = urls.filter((u) => u.includes('/src/')).map((u) => u.slice(u.indexOf('/src/') + 1));
  for (const forbidden of [
    /^src\/cli\/(main|args|help|suggest|run|run-options|detach|completion|instances|exec-into)\.ts$/,
    /^src\/(options|api|pool|rootfs|gateway|oci|kernel|archive)\//,
    /^src\/vmm\/(registry|libkrun\/)/,
    /^src\/accel\//,
    /^src\/guest\/(agent-build|artifacts|busybox|busybox-source|initramfs|tree|modules|default-rootfs)\.ts$/,
    /^src\/host\/(guest-root|doctor-.*)\.ts$/,
  ]) {
    const hit = ours.find((m) => forbidden.test(m));
    assert.equal(hit, undefined, `the resident supervisor must not load ${hit}`);
  }
  for (const heavy of HEAVY) {
    const hit = urls.find((u) => heavy.test(u));
    assert.equal(hit, undefined, `the resident supervisor must not load ${hit}`);
  }
  for (const builtin of [
    ...HEAVY_BUILTINS,
    'NativeModule zlib',
    'NativeModule worker_threads',
    'NativeModule readline',
    // ~3 MiB resident for a temporary name (src/host/random-hex.ts reads /dev/urandom instead).
    'NativeModule crypto',
  ]) {
    assert.ok(
      !urls.includes(builtin),
      `the resident supervisor must not load Node's ${builtin.split(' ')[1]}`,
    );
  }
  // No package up to the VMM's spawn, not even the record validator (~2 MB resident): the starting
  // command checks the handoff, and the records' schemas load only when one is read (here: on the
  // way out of the failed boot, after the backend).
  const backendAt = urls.findIndex((u) => u.endsWith('/src/vmm/qemu/backend.ts'));
  const early = urls.slice(0, backendAt);
  assert.deepEqual(packagesIn(early), [], early.join(' '));
  assert.equal(
    early.find((u) => /\/src\/(instance\/(schema|state-schema)|cli\/run-handoff-schema)\.ts$/.test(u)),
    undefined,
  );
  assert.deepEqual(
    packagesIn(urls).filter((p) => p !== 'valibot'),
    [],
  );
  // 49 today: a budget with a little room, so that a new static import on its path is a decision.
  assert.ok(ours.length <= 55, `the resident supervisor loads ${ours.length} modules: ${ours.join(' ')}`);
});
