import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { testEnvironment } from '../../test/fixtures/env.ts';
import { HostError } from '../errors.ts';
import { hostArch } from '../host/arch.ts';
import {
  elfMachine,
  ensureAgent,
  PREBUILT_MANIFEST_NAME,
  type PrebuiltAgents,
  prebuiltAgentName,
} from './agent-build.ts';

const SOURCE = fileURLToPath(new URL('./agent/ovm-agent.c', import.meta.url));
const sha256 = (data: string | Uint8Array) => createHash('sha256').update(data).digest('hex');

describe('ensureAgent: the package’s prebuilt agent, else the host compiler', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-agent-build-'));
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));
  let n = 0;

  /** An agent directory as the build leaves it (the real source, fake binaries, their manifest). */
  function packageAgentDir(edit: (m: PrebuiltAgents) => unknown = (m) => m): string {
    const dir = path.join(tmp, `pkg-${n++}`);
    fs.mkdirSync(dir);
    fs.copyFileSync(SOURCE, path.join(dir, 'ovm-agent.c'));
    const agents: Record<string, unknown> = {};
    for (const arch of ['x86_64', 'aarch64'] as const) {
      const bytes = `prebuilt agent for ${arch}`;
      fs.writeFileSync(path.join(dir, prebuiltAgentName(arch)), bytes, { mode: 0o755 });
      agents[arch] = { file: prebuiltAgentName(arch), sha256: sha256(bytes), compiler: 'gcc' };
    }
    const manifest = { sourceSha256: sha256(fs.readFileSync(SOURCE)), agents } as PrebuiltAgents;
    fs.writeFileSync(path.join(dir, PREBUILT_MANIFEST_NAME), JSON.stringify(edit(manifest)));
    return dir;
  }
  /** No compiler on the search path: anything that is not the prebuilt agent fails. */
  const noCompiler = () => testEnvironment(path.join(tmp, `cache-${n++}`), { searchPath: '' });

  it('uses the prebuilt binary whose sha256 matches, without a compiler', async () => {
    const dir = packageAgentDir();
    for (const arch of ['x86_64', 'aarch64'] as const) {
      const agent = await ensureAgent(noCompiler(), arch, { agentDir: dir });
      assert.equal(agent.path, path.join(dir, `ovm-agent-${arch}`));
      assert.equal(agent.bytes.toString(), `prebuilt agent for ${arch}`);
      assert.equal(agent.sha256, sha256(`prebuilt agent for ${arch}`));
    }
  });

  it('refuses a prebuilt binary that does not match its sha256, naming the file and the fix', async () => {
    const dir = packageAgentDir();
    fs.appendFileSync(path.join(dir, 'ovm-agent-aarch64'), 'tampered');
    await assert.rejects(ensureAgent(noCompiler(), 'aarch64', { agentDir: dir }), (err: unknown) => {
      assert.ok(err instanceof HostError);
      assert.match(err.message, /ovm-agent-aarch64 has sha256 [0-9a-f]{64}, but .*agents\.json records/);
      assert.match(err.hint ?? '', /reinstall openshell-vm/);
      return true;
    });
  });

  it('refuses a missing listed binary and a manifest that names another file or is not JSON', async () => {
    const missing = packageAgentDir();
    fs.rmSync(path.join(missing, 'ovm-agent-x86_64'));
    const escaping = packageAgentDir((m) => ({
      ...m,
      agents: { ...m.agents, x86_64: { ...m.agents.x86_64, file: '../../../etc/passwd' } },
    }));
    const notJson = packageAgentDir();
    fs.writeFileSync(path.join(notJson, PREBUILT_MANIFEST_NAME), '{"sourceSha256":');
    for (const [dir, message] of [
      [missing, /ovm-agent-x86_64 \(listed in .*\) cannot be read/],
      [escaping, /agents\.json is not a valid agent manifest/],
      [notJson, /agents\.json is not a valid agent manifest/],
    ] as const) {
      await assert.rejects(ensureAgent(noCompiler(), 'x86_64', { agentDir: dir }), (err: unknown) => {
        assert.ok(err instanceof HostError);
        assert.match(err.message, message);
        assert.match(err.hint ?? '', /reinstall/);
        return true;
      });
    }
  });

  it('ignores prebuilt agents built from another source (stale) and compiles the current one', async () => {
    const dir = packageAgentDir((m) => ({ ...m, sourceSha256: sha256('an older ovm-agent.c') }));
    await assert.rejects(
      ensureAgent(noCompiler(), 'x86_64', { agentDir: dir }),
      /no C compiler for x86_64 guests/,
    );
    const arch = hostArch();
    if (!arch) return;
    const cache = path.join(tmp, 'cache-stale');
    const agent = await ensureAgent(testEnvironment(cache, { searchPath: process.env.PATH ?? '' }), arch, {
      agentDir: dir,
    });
    assert.ok(agent.path.startsWith(`${cache}${path.sep}agent${path.sep}`), agent.path);
    assert.equal(elfMachine(agent.bytes), arch === 'x86_64' ? 62 : 183);
  });

  it('compiles on the host when there is no manifest (a checkout)', async () => {
    const dir = path.join(tmp, 'checkout');
    fs.mkdirSync(dir);
    fs.copyFileSync(SOURCE, path.join(dir, 'ovm-agent.c'));
    await assert.rejects(
      ensureAgent(noCompiler(), 'aarch64', { agentDir: dir }),
      /no C compiler for aarch64/,
    );
  });
});

describe('elfMachine', () => {
  it('reads e_machine of a 64-bit little-endian ELF file and nothing else', () => {
    const header = Buffer.alloc(64);
    Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1]).copy(header);
    header.writeUInt16LE(183, 18);
    assert.equal(elfMachine(header), 183);
    assert.equal(elfMachine(header.subarray(0, 19)), undefined);
    header[4] = 1;
    assert.equal(elfMachine(header), undefined);
    assert.equal(elfMachine(Buffer.from('#!/bin/sh\nexit 0\n')), undefined);
  });
});
