// The npm package as a user gets it: `npm pack` (prepack runs the build) into a temporary
// directory, `npm install` of the tarball into a fresh project outside the checkout (from the npm
// cache), then the CLI through npx, the library from JavaScript and from TypeScript type-checked
// against the shipped .d.ts, and the packaged guest agent used without a C compiler.
import assert from 'node:assert/strict';
import { type SpawnSyncOptions, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { elfMachine, PREBUILT_MANIFEST_NAME, prebuiltAgentsSchema } from '../../src/guest/agent-build.ts';
import { ROOT as ROOT_URL_PATH } from './harness.ts';

const ROOT = path.resolve(ROOT_URL_PATH);
const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
  name: string;
  version: string;
  devDependencies: Record<string, string>;
};
const TSC = path.join(ROOT, 'node_modules', '.bin', 'tsc');

/**
 * The environment of a user's shell: this Node.js first on PATH, nothing of the checkout on it
 * (its node_modules/.bin), and none of the npm_* variables of an `npm test` that started us.
 */
function userEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!/^npm_/i.test(key) && key !== 'INIT_CWD' && key !== 'NODE_OPTIONS') env[key] = value;
  }
  const entries = (process.env.PATH ?? '').split(path.delimiter).filter((p) => p && !isInside(p, ROOT));
  env.PATH = [path.dirname(process.execPath), ...entries].join(path.delimiter);
  return env;
}

function isInside(p: string, dir: string): boolean {
  const rel = path.relative(dir, path.resolve(p));
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

interface Ran {
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function run(argv: readonly string[], options: SpawnSyncOptions & { cwd: string }): Ran {
  const [command, ...args] = argv as [string, ...string[]];
  const r = spawnSync(command, args, { encoding: 'utf8', env: userEnv(), timeout: 300_000, ...options });
  if (r.error) throw r.error;
  return { status: r.status, stdout: String(r.stdout), stderr: String(r.stderr) };
}

function ok(argv: readonly string[], options: SpawnSyncOptions & { cwd: string }): Ran {
  const r = run(argv, options);
  assert.equal(
    r.status,
    0,
    `\`${argv.join(' ')}\` in ${options.cwd}: exit ${r.status}\n${r.stderr}${r.stdout}`,
  );
  return r;
}

function duBytes(dir: string): number {
  return Number(ok(['du', '-sb', dir], { cwd: dir }).stdout.split('\t')[0]);
}

/**
 * TypeScript programs a user writes against the package: each is type-checked with the checkout's
 * tsc against the shipped .d.ts (strict, skipLibCheck off, so the declarations themselves are
 * checked too), then run with Node.js, and must print `expect`.
 */
const TYPESCRIPT_PROGRAMS: readonly { name: string; source: string; expect: string }[] = [
  {
    name: 'errors.ts',
    source: `import { CommandError, HostError, OvmError, UsageError, VmError, version } from 'openshell-vm';
import type { CommandFailure, ErrorKind } from 'openshell-vm';

const failure: CommandFailure = { argv: ['qemu-img', 'info'], exitCode: 1, signal: null, stderrTail: 'no such file' };
const errors: OvmError[] = [
  new UsageError('--cpus: not a number', { hint: 'pass --cpus 2' }),
  new HostError('no QEMU', { hint: 'apt-get install qemu-system-x86', cause: new Error('ENOENT') }),
  new VmError('the guest did not boot'),
  new CommandError('inspecting the disk', failure),
];
const kinds: ErrorKind[] = errors.map((e) => e.kind);
const hint: string | undefined = errors[1]?.hint;
// @ts-expect-error: a hint is a string (the declarations are real types, not any)
new HostError('x', { hint: 3 });
const v: string = version;
console.log(JSON.stringify({ kinds, hint, isError: errors.every((e) => e instanceof Error), v }));
`,
    expect: JSON.stringify({
      kinds: ['usage', 'host', 'vm', 'command'],
      hint: 'apt-get install qemu-system-x86',
      isError: true,
      v: pkg.version,
    }),
  },
  {
    // A microVM from the library, disposed by `await using`; its processes checked by pid.
    name: 'vm.ts',
    source: `import fs from 'node:fs';
import { type CommandResult, startVm, UsageError, type Vm } from 'openshell-vm';

const isAlive = (pid: number): boolean => fs.existsSync(\`/proc/\${pid}\`);
let pids: readonly number[] = [];
let aliveWhileRunning = false;
let three: CommandResult | undefined;
let notForwarded = '';
{
  await using vm: Vm = await startVm({ cpus: 1, memory: '256MiB', network: 'none', name: 'pkg-ts' });
  pids = vm.pids;
  aliveWhileRunning = pids.length > 0 && pids.every(isAlive);
  three = await vm.exec(['/bin/sh', '-c', 'exit 3']);
  try {
    vm.mappedPort(80);
  } catch (err) {
    if (err instanceof UsageError) notForwarded = err.message;
  }
}
// @ts-expect-error: memory is a number of MiB or a string, not a boolean (real types, not any)
void (() => startVm({ memory: true }));
console.log(JSON.stringify({
  exitCode: three?.exitCode,
  aliveWhileRunning,
  aliveAfterDispose: pids.filter(isAlive),
  notForwarded,
}));
`,
    expect: JSON.stringify({
      exitCode: 3,
      aliveWhileRunning: true,
      aliveAfterDispose: [],
      notForwarded: 'mappedPort(80): guest port 80 is not forwarded',
    }),
  },
];

describe('the npm package: pack, install into a fresh project, use', { timeout: 600_000 }, () => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-package-'));
  const packDir = path.join(work, 'pack');
  const project = path.join(work, 'project');
  const installed = path.join(project, 'node_modules', pkg.name);
  let tarball = '';
  let entries: string[] = [];
  const t0 = performance.now();
  const figures: Record<string, number> = {};

  before(() => {
    assert.ok(!isInside(work, ROOT), `the temporary project (${work}) must be outside the checkout`);
    fs.mkdirSync(packDir);
    fs.mkdirSync(project);
    let t = performance.now();
    ok(['npm', 'pack', '--pack-destination', packDir], { cwd: ROOT });
    figures.packMs = Math.round(performance.now() - t);
    const packed = fs.readdirSync(packDir).filter((f) => f.endsWith('.tgz'));
    assert.deepEqual(packed, [`${pkg.name}-${pkg.version}.tgz`]);
    tarball = path.join(packDir, packed[0] as string);
    entries = ok(['tar', '-tzf', tarball], { cwd: work }).stdout.split('\n').filter(Boolean);

    fs.writeFileSync(
      path.join(project, 'package.json'),
      JSON.stringify({ name: 'ovm-package-user', version: '1.0.0', private: true, type: 'module' }),
    );
    t = performance.now();
    ok(
      [
        'npm',
        'install',
        '--prefer-offline',
        '--no-audit',
        '--no-fund',
        tarball,
        `@types/node@${pkg.devDependencies['@types/node']}`,
      ],
      { cwd: project },
    );
    figures.installMs = Math.round(performance.now() - t);
    figures.tarballBytes = fs.statSync(tarball).size;
    figures.installedPackageBytes = duBytes(installed);
    figures.installedNodeModulesBytes = duBytes(path.join(project, 'node_modules'));
  });
  /** A user's environment with private data and runtime directories for the VMs (the artifact cache shared). */
  const vmEnv = (): NodeJS.ProcessEnv => {
    const env = {
      ...userEnv(),
      OPENSHELL_VM_DATA_DIR: path.join(work, 'data'),
      XDG_RUNTIME_DIR: path.join(work, 'rt'),
      XDG_CONFIG_HOME: path.join(work, 'config'),
      XDG_CACHE_HOME: process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'),
    };
    fs.mkdirSync(env.XDG_RUNTIME_DIR, { recursive: true });
    return env;
  };
  after(() => {
    figures.totalMs = Math.round(performance.now() - t0);
    process.stderr.write(`package figures: ${JSON.stringify(figures)}\n`);
    fs.rmSync(work, { recursive: true, force: true });
  });

  it('ships only what a user needs: the build, the launcher, provisioning, LICENSE; no sources or tests', () => {
    const files = entries.map((e) => e.replace(/^package\//, ''));
    assert.ok(
      entries.every((e) => e.startsWith('package/')),
      'every entry is under package/',
    );
    for (const needed of [
      'package.json',
      'LICENSE',
      'README.md',
      'bin/openshell-vm',
      'scripts/provision-host.sh',
      'scripts/lib/node.sh',
      'dist/index.js',
      'dist/index.d.ts',
      'dist/cli/main.js',
      'dist/vmm/libkrun/runner.js',
      'dist/guest/agent/ovm-agent.c',
      'dist/guest/agent/ovm-agent-x86_64',
      'dist/guest/agent/ovm-agent-aarch64',
      `dist/guest/agent/${PREBUILT_MANIFEST_NAME}`,
      'dist/guest/busybox/busybox-x86_64',
      'dist/guest/busybox/busybox-aarch64',
      'dist/guest/busybox/busybox.json',
      'dist/kernel/openshell.kconfig',
      'dist/rootfs/manifests/openshell-helmchart.yaml',
      'dist/vmm/libkrun/entitlements.plist',
    ]) {
      assert.ok(files.includes(needed), `the tarball has ${needed}`);
    }
    const shellScripts = fs.readdirSync(path.join(ROOT, 'src', 'guest', 'scripts'));
    for (const script of shellScripts) assert.ok(files.includes(`dist/guest/scripts/${script}`), script);
    const wrong = files.filter(
      (f) =>
        (f.endsWith('.ts') && !f.endsWith('.d.ts')) ||
        /\.test\.(d\.ts|js)$/.test(f) ||
        /^(src|test|node_modules)\//.test(f) ||
        /(^|\/)(tsconfig[^/]*\.json|biome\.json|\.gitignore)$/.test(f),
    );
    assert.deepEqual(wrong, [], 'no TypeScript sources, tests or project configuration in the tarball');
    const license = fs.readFileSync(path.join(installed, 'LICENSE'), 'utf8');
    assert.match(license, /Apache License\s+Version 2\.0, January 2004/);
    assert.match(license, /END OF TERMS AND CONDITIONS/);
  });

  it('installs as its own copy: nothing in the project leads back into the checkout', () => {
    assert.ok(fs.lstatSync(installed).isDirectory(), `${installed} is a directory, not a link`);
    const into: string[] = [];
    for (const entry of fs.readdirSync(project, { recursive: true, withFileTypes: true })) {
      if (!entry.isSymbolicLink()) continue;
      const link = path.join(entry.parentPath, entry.name);
      const target = path.resolve(entry.parentPath, fs.readlinkSync(link));
      if (isInside(target, ROOT)) into.push(`${link} -> ${target}`);
    }
    assert.deepEqual(into, []);
  });

  it('ships both static agents with a manifest that matches them and the shipped source', () => {
    const agentDir = path.join(installed, 'dist', 'guest', 'agent');
    const manifest = prebuiltAgentsSchema.parse(
      JSON.parse(fs.readFileSync(path.join(agentDir, PREBUILT_MANIFEST_NAME), 'utf8')),
    );
    const sha256 = (file: string) => createHash('sha256').update(fs.readFileSync(file)).digest('hex');
    assert.equal(manifest.sourceSha256, sha256(path.join(ROOT, 'src', 'guest', 'agent', 'ovm-agent.c')));
    assert.equal(manifest.sourceSha256, sha256(path.join(agentDir, 'ovm-agent.c')));
    for (const [arch, machine] of [
      ['x86_64', 62],
      ['aarch64', 183],
    ] as const) {
      const file = path.join(agentDir, manifest.agents[arch].file);
      assert.equal(sha256(file), manifest.agents[arch].sha256, file);
      assert.equal(elfMachine(fs.readFileSync(file)), machine, `${file} is an ${arch} ELF program`);
      figures[`agent_${arch}_bytes`] = fs.statSync(file).size;
    }
  });

  it('runs the CLI through npx: --version, --help, doctor --json', () => {
    const version = ok(['npx', '--no-install', 'openshell-vm', '--version'], { cwd: project });
    assert.equal(version.stdout.trim(), `openshell-vm ${pkg.version}`);
    assert.doesNotMatch(version.stderr, /ERR_|warning/i);

    const help = ok(['npx', '--no-install', 'openshell-vm', '--help'], { cwd: project });
    assert.match(help.stdout, /doctor/);
    assert.match(help.stdout, /\brun\b/);

    const doctor = run(['npx', '--no-install', 'openshell-vm', 'doctor', '--json'], { cwd: project });
    const report = JSON.parse(doctor.stdout) as {
      ok: boolean;
      checks: { name: string; status: string; detail: string; fix?: string }[];
    };
    assert.equal(doctor.status, report.ok ? 0 : 1, doctor.stderr);
    assert.equal(report.checks.find((c) => c.name === 'node')?.status, 'ok');
    const libkrun = report.checks.find((c) => c.name === 'libkrun runtime');
    assert.ok(libkrun, 'doctor checks the libkrun runtime');
    if (libkrun.status !== 'ok') {
      // The runtime is looked for beside the installed package, not beside the checkout.
      assert.ok(libkrun.fix?.includes(path.join(installed, 'openshell-vm.runtime')), libkrun.fix);
    }
    assert.ok(!doctor.stdout.includes(ROOT), `doctor's report mentions the checkout (${ROOT})`);
  });

  it('boots a microVM from the installed package: npx openshell-vm run gives the guest’s exit code', () => {
    const env = vmEnv();
    const t = performance.now();
    const r = run(
      [
        'npx',
        '--no-install',
        'openshell-vm',
        'run',
        '--',
        '/bin/sh',
        '-c',
        'echo "hi from $(uname -m)"; exit 3',
      ],
      { cwd: project, env },
    );
    figures.runMs = Math.round(performance.now() - t);
    assert.equal(r.status, 3, r.stderr);
    assert.equal(r.stdout.trim(), `hi from ${os.arch() === 'arm64' ? 'aarch64' : 'x86_64'}`);
    const left = fs
      .readdirSync('/proc')
      .filter((p) => /^\d+$/.test(p))
      .filter((p) => {
        try {
          return fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(work);
        } catch {
          return false;
        }
      });
    assert.deepEqual(left, [], 'no process of the run is left');
  });

  it('imports from JavaScript (.mjs), printing nothing of its own', () => {
    fs.writeFileSync(
      path.join(project, 'app.mjs'),
      `const ovm = await import('openshell-vm');
const e = new ovm.HostError('no QEMU', { hint: 'apt-get install qemu-system-x86' });
console.log(JSON.stringify({
  version: ovm.version,
  exports: Object.keys(ovm).sort(),
  hint: e.hint,
  kind: e.kind,
  isOvmError: e instanceof ovm.OvmError,
  url: import.meta.resolve('openshell-vm'),
}));
`,
    );
    const r = ok([process.execPath, 'app.mjs'], { cwd: project });
    assert.equal(r.stderr, '');
    const out = JSON.parse(r.stdout) as Record<string, unknown>;
    assert.equal(out.version, pkg.version);
    assert.equal(out.hint, 'apt-get install qemu-system-x86');
    assert.equal(out.kind, 'host');
    assert.equal(out.isOvmError, true);
    for (const name of [
      'CommandError',
      'HostError',
      'OvmError',
      'UsageError',
      'VmError',
      'version',
      'run',
      'startVm',
      'startGateway',
    ]) {
      assert.ok((out.exports as string[]).includes(name), `exports ${name}`);
    }
    assert.equal(out.url, `file://${path.join(installed, 'dist', 'index.js')}`);
  });

  it('type-checks TypeScript programs against the shipped .d.ts, and runs them', () => {
    fs.writeFileSync(
      path.join(project, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'es2024',
          module: 'nodenext',
          moduleResolution: 'nodenext',
          lib: ['es2024'],
          types: ['node'],
          strict: true,
          noEmit: true,
          skipLibCheck: false,
        },
        files: TYPESCRIPT_PROGRAMS.map((p) => p.name),
      }),
    );
    for (const program of TYPESCRIPT_PROGRAMS)
      fs.writeFileSync(path.join(project, program.name), program.source);
    const t = performance.now();
    ok([TSC, '-p', 'tsconfig.json'], { cwd: project });
    figures.typeCheckMs = Math.round(performance.now() - t);
    for (const program of TYPESCRIPT_PROGRAMS) {
      const ranAt = performance.now();
      const r = ok([process.execPath, program.name], { cwd: project, env: vmEnv() });
      figures[`${program.name}Ms`] = Math.round(performance.now() - ranAt);
      assert.equal(r.stdout.trim(), program.expect, program.name);
      assert.equal(r.stderr, '', program.name);
    }
    // The check has teeth: a program that misuses the API is refused.
    fs.writeFileSync(
      path.join(project, 'wrong.ts'),
      "import { VmError } from 'openshell-vm';\nnew VmError(42);\n",
    );
    fs.writeFileSync(
      path.join(project, 'tsconfig.wrong.json'),
      JSON.stringify({ extends: './tsconfig.json', files: ['wrong.ts'] }),
    );
    const refused = run([TSC, '-p', 'tsconfig.wrong.json'], { cwd: project });
    assert.notEqual(refused.status, 0, 'tsc refuses wrong.ts');
    assert.match(refused.stdout, /wrong\.ts\(2,\d+\): error TS2345/);
  });

  it("builds libkrun's default rootfs from the package alone: its busybox and agent, no host provisioning, no kernel (as on a Mac)", () => {
    const cache = path.join(work, 'cache-krun');
    fs.writeFileSync(
      path.join(project, 'root.mjs'),
      `import { pathToFileURL } from 'node:url';
const dist = ${JSON.stringify(path.join(installed, 'dist'))};
const { readEnvironment } = await import(pathToFileURL(dist + '/config/environment.js'));
const { findBusybox } = await import(pathToFileURL(dist + '/guest/busybox-source.js'));
const { ensureRootArtifacts } = await import(pathToFileURL(dist + '/guest/artifacts.js'));
const env = readEnvironment({ HOME: ${JSON.stringify(work)}, OPENSHELL_VM_CACHE_DIR: ${JSON.stringify(cache)}, PATH: '' });
const out = {};
for (const arch of ['x86_64', 'aarch64']) {
  const busybox = await findBusybox(env, arch);
  const a = await ensureRootArtifacts(env, busybox);
  out[arch] = { origin: busybox.origin, kernel: a.kernel, initramfs: a.initramfs, kind: a.kernelKind, rootfs: a.rootfs };
}
console.log(JSON.stringify(out));
`,
    );
    const sha256 = (file: string) => createHash('sha256').update(fs.readFileSync(file)).digest('hex');
    const r = ok([process.execPath, 'root.mjs'], { cwd: project });
    const out = JSON.parse(r.stdout) as Record<
      string,
      { origin: string; kernel: string; initramfs: string; kind: string; rootfs: string }
    >;
    for (const arch of ['x86_64', 'aarch64']) {
      const a = out[arch];
      assert.ok(a, arch);
      assert.deepEqual([a.origin, a.kernel, a.initramfs, a.kind], ['package', '', '', 'libkrunfw'], arch);
      const busybox = path.join(a.rootfs, 'bin', 'busybox');
      assert.equal(
        sha256(busybox),
        sha256(path.join(installed, 'dist', 'guest', 'busybox', `busybox-${arch}`)),
        `${arch}: the rootfs's busybox is the package's`,
      );
      assert.ok(fs.existsSync(path.join(a.rootfs, 'sbin', 'ovm-init')));
    }
    assert.ok(!fs.existsSync(path.join(cache, 'host')), 'nothing of host provisioning was needed');
    // A damaged packaged busybox is refused with the fix, never replaced by another.
    fs.appendFileSync(path.join(installed, 'dist', 'guest', 'busybox', 'busybox-aarch64'), '\0');
    const damaged = run([process.execPath, 'root.mjs'], { cwd: project });
    assert.equal(damaged.status, 1);
    assert.match(damaged.stderr, /busybox-aarch64 has sha256 [0-9a-f]{64}, but busybox\.json records/);
  });

  it('uses the packaged agent on a host without a C compiler (as on a Mac)', () => {
    const cache = path.join(work, 'cache');
    fs.writeFileSync(
      path.join(project, 'agent.mjs'),
      `import { pathToFileURL } from 'node:url';
const dist = ${JSON.stringify(path.join(installed, 'dist'))};
const { readEnvironment } = await import(pathToFileURL(dist + '/config/environment.js'));
const { ensureAgent } = await import(pathToFileURL(dist + '/guest/agent-build.js'));
const env = readEnvironment({ HOME: ${JSON.stringify(work)}, OPENSHELL_VM_CACHE_DIR: ${JSON.stringify(cache)}, PATH: '' });
const out = {};
for (const arch of ['x86_64', 'aarch64']) out[arch] = (await ensureAgent(env, arch)).path;
console.log(JSON.stringify(out));
`,
    );
    const r = ok([process.execPath, 'agent.mjs'], { cwd: project });
    const agentDir = path.join(installed, 'dist', 'guest', 'agent');
    assert.deepEqual(JSON.parse(r.stdout), {
      x86_64: path.join(agentDir, 'ovm-agent-x86_64'),
      aarch64: path.join(agentDir, 'ovm-agent-aarch64'),
    });
    assert.ok(!fs.existsSync(path.join(cache, 'agent')), 'nothing was compiled into the cache');

    // A damaged binary is refused with the fix.
    fs.appendFileSync(path.join(agentDir, 'ovm-agent-aarch64'), '\0');
    const damaged = run([process.execPath, 'agent.mjs'], { cwd: project });
    assert.equal(damaged.status, 1);
    assert.match(damaged.stderr, /ovm-agent-aarch64 has sha256 [0-9a-f]{64}, but .*agents\.json records/);
  });
});
