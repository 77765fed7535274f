import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { pathToFileURL } from 'node:url';

const INDEX = pathToFileURL(new URL('./index.ts', import.meta.url).pathname).href;

/**
 * A child that (maybe) imports the library, then reports what keeps it alive, its child processes
 * and the modules loaded from src/ (as a JSON line: its only output of its own).
 */
function probe(importIt: boolean): {
  status: number | null;
  stdout: string;
  stderr: string;
  ms: number;
} {
  const script = `
import fs from 'node:fs';
import { createRequire } from 'node:module';
const m = ${importIt ? `await import(${JSON.stringify(INDEX)})` : '{}'};
const children = fs.readdirSync('/proc').filter((p) => /^\\d+$/.test(p)).filter((p) => {
  try {
    const stat = fs.readFileSync('/proc/' + p + '/stat', 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === process.pid;
  } catch { return false; }
});
process.stdout.write(JSON.stringify({
  exports: Object.keys(m).sort(),
  resources: process.getActiveResourcesInfo().sort(),
  children,
}) + '\\n');
`;
  const t0 = performance.now();
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    encoding: 'utf8',
    timeout: 20_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, ms: performance.now() - t0 };
}

test('importing the library prints nothing, starts nothing, keeps nothing alive', () => {
  const baseline = probe(false);
  const imported = probe(true);
  assert.equal(imported.status, 0, imported.stderr);
  assert.equal(imported.stderr, '', 'nothing on stderr');
  const lines = imported.stdout.split('\n').filter(Boolean);
  assert.equal(lines.length, 1, `only the probe's own line on stdout: ${imported.stdout}`);
  const report = JSON.parse(lines[0] as string) as {
    exports: string[];
    resources: string[];
    children: string[];
  };
  const base = JSON.parse(baseline.stdout) as { resources: string[] };
  assert.deepEqual(report.children, [], 'no child process');
  assert.deepEqual(report.resources, base.resources, 'no handle or timer beyond a bare node');
  for (const name of ['run', 'startVm', 'startGateway', 'version', 'UsageError', 'HostError', 'VmError']) {
    assert.ok(report.exports.includes(name), `exports ${name}`);
  }
  // It exited by itself at once (nothing kept the loop alive), well inside the timeout.
  assert.ok(imported.ms < 15_000, `the import took ${imported.ms} ms`);
});

test('an already aborted signal: every function rejects with its reason before anything starts', async () => {
  const { run, startVm, startGateway } = await import('./index.ts');
  const reason = new Error('aborted before the start');
  const signal = AbortSignal.abort(reason);
  await assert.rejects(run({ command: ['/bin/true'], signal }), (e: unknown) => e === reason);
  await assert.rejects(startVm({ signal }), (e: unknown) => e === reason);
  await assert.rejects(startGateway({ signal }), (e: unknown) => e === reason);
});
