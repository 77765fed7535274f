// The import layering rule (.dependency-cruiser.cjs), checked on the real tree and shown to catch
// what it is for: a lower layer importing a higher one, a module outside the layers, a cycle.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { cruise } from 'dependency-cruiser';

const root = path.resolve(import.meta.dirname, '..');
const config = createRequire(import.meta.url)(path.join(root, '.dependency-cruiser.cjs'));

async function violations(baseDir: string): Promise<string[]> {
  const result = await cruise(['src'], {
    ...config.options,
    ruleSet: { forbidden: config.forbidden },
    validate: true,
    baseDir,
  });
  const output = result.output;
  assert.ok(typeof output !== 'string');
  return output.summary.violations.map((v) => `${v.rule.name}: ${v.from} -> ${v.to}`);
}

const fixture = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-layering-'));
after(() => fs.rmSync(fixture, { recursive: true, force: true }));
function write(rel: string, text: string): void {
  fs.mkdirSync(path.dirname(path.join(fixture, rel)), { recursive: true });
  fs.writeFileSync(path.join(fixture, rel), text);
}

test('the tree keeps its layering', async () => {
  assert.deepEqual(await violations(root), []);
});

test('a planted upward import (vmm -> cli), a module outside the layers and a cycle are each refused', async () => {
  write('src/cli/main.ts', "import { x } from '../vmm/backend.ts';\nexport const y = x;\n");
  write('src/vmm/backend.ts', 'export const x = 1;\n');
  write('src/vmm/upward.ts', "import type { y } from '../cli/main.ts';\nexport type Z = typeof y;\n");
  write('src/stray/thing.ts', "import { x } from '../vmm/backend.ts';\nexport const t = x;\n");
  write('src/net/a.ts', "import { b } from './b.ts';\nexport const a = () => b;\n");
  write('src/net/b.ts', "import { a } from './a.ts';\nexport const b = () => a;\n");
  const found = await violations(fixture);
  assert.ok(
    found.includes('layer-vmm-net-guest-agent: src/vmm/upward.ts -> src/cli/main.ts'),
    found.join('\n'),
  );
  assert.ok(found.includes('layer-unknown: src/stray/thing.ts -> src/vmm/backend.ts'), found.join('\n'));
  assert.ok(
    found.some((v) => v.startsWith('no-circular: src/net/a.ts')),
    found.join('\n'),
  );
  // The downward import cli -> vmm is allowed.
  assert.ok(!found.some((v) => v.includes('src/cli/main.ts -> src/vmm/backend.ts')), found.join('\n'));
});
