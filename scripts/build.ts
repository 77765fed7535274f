// The package build (`npm run build`, and `npm pack` through prepack): dist/ from src/.
//  1. JavaScript and .d.ts files from src/ (tests excluded) with tsc -p tsconfig.build.json; the
//     sources' `./x.ts` imports become `./x.js`;
//  2. every file of src/ that is not TypeScript (guest scripts, the kconfig fragment, manifests,
//     the agent's source, the entitlements plist) copied beside its module, same relative path;
//  3. the static guest agent for each guest architecture (host gcc, the cross gcc) into
//     dist/guest/agent/, with agents.json (the source's sha256, each binary's sha256) written last;
//  4. Debian's static busybox of each guest architecture (from host provisioning's cache,
//     verified against its manifest) into dist/guest/busybox/, with busybox.json written last: the
//     default rootfs of `run` on libkrun needs nothing of the Linux host's provisioning;
//  5. a check that every `new URL('./…', import.meta.url)` in dist/ names a file that exists there
//     (a module to run as a process must be named with siblingModulePath, not as `./x.ts`).
// dist/ is removed first: nothing from an earlier build (a deleted module, an old agent) survives.
// usage: node scripts/build.ts
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { readEnvironment } from '../src/config/environment.ts';
import { buildPrebuiltAgents } from '../src/guest/agent-build.ts';
import {
  hostBusybox,
  PACKAGED_BUSYBOX_MANIFEST,
  type PackagedBusybox,
  packagedBusyboxName,
} from '../src/guest/busybox-source.ts';

const root = path.resolve(import.meta.dirname, '..');
const src = path.join(root, 'src');
const dist = path.join(root, 'dist');

function fail(message: string, hint: string): never {
  process.stderr.write(`build: error: ${message}\n  hint: ${hint}\n`);
  process.exit(1);
}

function filesUnder(dir: string): string[] {
  return fs
    .readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => path.join(e.parentPath, e.name));
}

const t0 = performance.now();
fs.rmSync(dist, { recursive: true, force: true });

const tsc = path.join(root, 'node_modules', '.bin', 'tsc');
const compiled = spawnSync(tsc, ['-p', path.join(root, 'tsconfig.build.json')], { stdio: 'inherit' });
if (compiled.error || compiled.status !== 0) {
  fail(
    `\`${tsc} -p tsconfig.build.json\` failed (${compiled.error?.message ?? `exit code ${compiled.status ?? compiled.signal}`})`,
    compiled.error ? 'install the dev dependencies: npm ci' : 'fix the type errors above',
  );
}

let assets = 0;
for (const file of filesUnder(src)) {
  if (file.endsWith('.ts')) continue;
  const dest = path.join(dist, path.relative(src, file));
  fs.mkdirSync(path.dirname(dest), { recursive: true });
  fs.copyFileSync(file, dest);
  fs.chmodSync(dest, fs.statSync(file).mode & 0o777);
  assets++;
}

let agents: Awaited<ReturnType<typeof buildPrebuiltAgents>>;
try {
  agents = await buildPrebuiltAgents(readEnvironment(), path.join(dist, 'guest', 'agent'));
} catch (err) {
  const e = err as Error & { hint?: string };
  fail(`building the prebuilt guest agents: ${e.message}`, e.hint ?? 'see the error above');
}

const busyboxDir = path.join(dist, 'guest', 'busybox');
fs.mkdirSync(busyboxDir, { recursive: true });
const busyboxes: Partial<Record<'x86_64' | 'aarch64', PackagedBusybox['busybox']['x86_64']>> = {};
for (const arch of ['x86_64', 'aarch64'] as const) {
  try {
    const found = await hostBusybox(readEnvironment(), arch);
    const file = packagedBusyboxName(arch);
    fs.writeFileSync(path.join(busyboxDir, file), found.bytes, { mode: 0o755 });
    busyboxes[arch] = { file, sha256: found.sha256, package: 'busybox-static', version: found.version };
  } catch (err) {
    const e = err as Error & { hint?: string };
    fail(`the ${arch} busybox for the package: ${e.message}`, e.hint ?? 'run scripts/provision-host.sh');
  }
}
const busyboxManifest = { format: 1, busybox: busyboxes } as PackagedBusybox;
fs.writeFileSync(
  path.join(busyboxDir, PACKAGED_BUSYBOX_MANIFEST),
  `${JSON.stringify(busyboxManifest, null, 2)}\n`,
);

const LITERAL_URL = /new URL\(\s*(['"`])(\.{1,2}\/[^'"`$]*)\1\s*,\s*import\.meta\.url\s*\)/g;
const missing: string[] = [];
const jsFiles = filesUnder(dist).filter((f) => f.endsWith('.js'));
for (const file of jsFiles) {
  for (const match of fs.readFileSync(file, 'utf8').matchAll(LITERAL_URL)) {
    const target = path.resolve(path.dirname(file), match[2] as string);
    if (!fs.existsSync(target)) missing.push(`${path.relative(root, file)}: ${match[0]}`);
  }
}
if (missing.length > 0) {
  fail(
    `dist/ refers to files it does not have:\n    ${missing.join('\n    ')}`,
    "name a module run as a process with siblingModulePath(import.meta.url, 'name') (src/host/module-path.ts); ship any other file under src/",
  );
}

const size = (f: string) => fs.statSync(path.join(dist, 'guest', 'agent', f)).size;
process.stderr.write(
  `build: dist/: ${jsFiles.length} modules, ${assets} assets, agents ${Object.values(agents.agents)
    .map((a) => `${a.file} (${size(a.file)} bytes, ${a.compiler})`)
    .join(', ')} in ${Math.round(performance.now() - t0)} ms\n`,
);
