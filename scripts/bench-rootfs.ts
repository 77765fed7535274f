// prepare-rootfs benchmark: a cold build (empty base cache: mmdebstrap runs) and cached rebuilds
// (--force; the Debian base comes from the cache), with the stand-in k3s and the test chart, in a
// private cache and data directory (the host kernel inputs are shared). Prints JSON and a table.
// usage: node scripts/bench-rootfs.ts [--runs N] (cached rebuilds; default 3) [--arch A]
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readEnvironment } from '../src/config/environment.ts';
import { defaultGuestArch, parseGuestArch } from '../src/host/arch.ts';

const argv = process.argv.slice(2);
const flag = (name: string) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const runs = Number(flag('--runs') ?? 3);
const arch = flag('--arch') ? parseGuestArch(flag('--arch') as string) : defaultGuestArch();
const root = path.resolve(import.meta.dirname, '..');
const real = readEnvironment();
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-bench-rootfs-'));
const cacheDir = path.join(work, 'cache');
fs.mkdirSync(cacheDir);
fs.symlinkSync(path.join(real.cacheDir, 'host'), path.join(cacheDir, 'host'));
const k3s = path.join(root, 'test/fixtures/k3s-stand-in.sh');
const k3sSha = createHash('sha256').update(fs.readFileSync(k3s)).digest('hex');

function build(force: boolean): { ms: number; bytes: number } {
  const t0 = performance.now();
  const r = spawnSync(
    path.join(root, 'bin/openshell-vm'),
    [
      'prepare-rootfs',
      '--quiet',
      '--arch',
      arch,
      '--k3s',
      k3s,
      '--k3s-sha256',
      k3sSha,
      '--chart',
      path.join(root, 'test/fixtures/chart/openshell'),
      // The build is measured, not the pulls of the chart's images (and the registry is out of reach here).
      '--no-images',
      ...(force ? ['--force'] : []),
    ],
    {
      env: {
        ...process.env,
        OPENSHELL_VM_CACHE_DIR: cacheDir,
        OPENSHELL_VM_DATA_DIR: path.join(work, 'data'),
      },
      encoding: 'utf8',
    },
  );
  if (r.status !== 0) throw new Error(`prepare-rootfs failed (${r.status}): ${r.stderr}`);
  const ms = Math.round(performance.now() - t0);
  const du = spawnSync('du', ['-sb', path.join(work, 'data/instances/default/rootfs')], { encoding: 'utf8' });
  return { ms, bytes: Number(du.stdout.split('\t')[0]) };
}

try {
  const cold = build(false);
  const cached = Array.from({ length: runs }, () => build(true).ms).sort((a, b) => a - b);
  const result = {
    arch,
    coldMs: cold.ms,
    cachedMs: {
      min: cached[0],
      median: cached[Math.floor(cached.length / 2)],
      max: cached[cached.length - 1],
    },
    runs,
    rootfsMiB: Math.round(cold.bytes / 1048576),
  };
  console.log(JSON.stringify(result, null, 2));
  console.log(`
| prepare-rootfs (${arch}) | ms |
|---|---|
| cold (mmdebstrap runs) | ${result.coldMs} |
| cached base, --force rebuild (min / median / max of ${runs}) | ${result.cachedMs.min} / ${result.cachedMs.median} / ${result.cachedMs.max} |
| rootfs size | ${result.rootfsMiB} MiB |`);
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
