import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { type TestContext, test } from 'node:test';
import { followLog } from './follow-log.ts';

async function logFile(t: TestContext, text: string): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-follow-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'console.log');
  await fs.writeFile(file, text);
  return file;
}

function collect(): { out: PassThrough; text: () => string } {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  return { out, text: () => Buffer.concat(chunks).toString('utf8') };
}

const fast = { intervalMs: 10, checkMs: 10 } as const;

function errnoError(code: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: simulated`), { code });
}

test('logs --follow: the lines written while the instance runs, the rest after it ends, then done', async (t) => {
  const file = await logFile(t, 'one\n');
  const { out, text } = collect();
  let checks = 0;
  await followLog({
    file,
    out,
    signal: new AbortController().signal,
    ...fast,
    isRunning: async () => {
      checks++;
      if (checks === 2) await fs.appendFile(file, 'two\nthree\n');
      return checks < 3;
    },
  });
  assert.equal(text(), 'one\ntwo\nthree\n');
});

test('logs --follow: Ctrl-C ends it normally', async (t) => {
  const controller = new AbortController();
  const { out } = collect();
  setTimeout(() => controller.abort(), 30);
  await followLog({
    file: await logFile(t, ''),
    out,
    signal: controller.signal,
    ...fast,
    isRunning: async () => true,
  });
});

test('logs --follow: a failing state check is reported, not swallowed as exit 0', async (t) => {
  const { out } = collect();
  await assert.rejects(
    followLog({
      file: await logFile(t, 'x\n'),
      out,
      signal: new AbortController().signal,
      ...fast,
      isRunning: async () => {
        throw errnoError('EACCES');
      },
    }),
    (err: unknown) => (err as NodeJS.ErrnoException).code === 'EACCES',
  );
});

test('logs --follow: the reader going away (EPIPE) ends it quietly; any other output error is reported', async (t) => {
  for (const [code, expected] of [
    ['EPIPE', 'ends'],
    ['EIO', 'rejects'],
  ] as const) {
    const out = new Writable({
      write(_chunk, _enc, done) {
        done(errnoError(code));
      },
    });
    const run = followLog({
      file: await logFile(t, 'line\n'),
      out,
      signal: new AbortController().signal,
      ...fast,
      isRunning: async () => true,
    });
    if (expected === 'ends') await run;
    else await assert.rejects(run, (err: unknown) => (err as NodeJS.ErrnoException).code === code);
  }
});
