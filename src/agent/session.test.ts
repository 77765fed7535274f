import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Duplex, PassThrough, Readable, Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { startStdioAgent } from '../../test/fixtures/stdio-agent.ts';
import { VmError } from '../errors.ts';
import { AgentLink } from './link.ts';
import { encodeFrame, FRAME } from './protocol.ts';
import { AgentSession } from './session.ts';

const sink = () => {
  const chunks: Buffer[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk);
      cb();
    },
  });
  return { stream, bytes: () => Buffer.concat(chunks), text: () => Buffer.concat(chunks).toString() };
};

const req = (argv: string[], extra: Partial<{ workdir: string; env: string[] }> = {}) => ({
  argv,
  env: extra.env ?? [],
  workdir: extra.workdir ?? '/',
  tty: false,
  rows: 24,
  cols: 80,
});

/** The real agent (compiled for this host) on --stdio behind a link: what `run` does, without a VM. */
describe("an agent session on the link (run's command channel)", () => {
  let link: AgentLink;
  let stopAgent: () => Promise<void>;

  before(async () => {
    ({ link, stop: stopAgent } = await startStdioAgent('ovm-session-'));
  });

  after(() => stopAgent());

  it('keeps stdout and stderr apart and gives the exit code', async () => {
    const out = sink();
    const err = sink();
    const s = AgentSession.start(link, req(['sh', '-c', 'echo out; echo err >&2; exit 7']), {
      stdout: out.stream,
      stderr: err.stream,
    });
    assert.equal(await s.done, 7);
    assert.equal(out.text(), 'out\n');
    assert.equal(err.text(), 'err\n');
  });

  it('passes stdin through, its end too (3 MiB through cat arrive whole)', async () => {
    const big = randomBytes(3 * 1024 * 1024);
    const out = sink();
    const s = AgentSession.start(link, req(['cat']), {
      stdin: Readable.from([big.subarray(0, 1 << 20), big.subarray(1 << 20)]),
      stdout: out.stream,
      stderr: sink().stream,
    });
    assert.equal(await s.done, 0);
    const hash = (b: Buffer) => createHash('sha256').update(b).digest('hex');
    assert.equal(hash(out.bytes()), hash(big));
  });

  it('without stdin the command reads its end at once', async () => {
    const out = sink();
    const s = AgentSession.start(link, req(['sh', '-c', 'cat; echo done']), {
      stdout: out.stream,
      stderr: sink().stream,
    });
    assert.equal(await s.done, 0);
    assert.equal(out.text(), 'done\n');
  });

  it("the agent says why a command cannot run: 127, 126, 125 (workdir), on the session's stderr", async () => {
    const run = async (argv: string[], workdir = '/') => {
      const err = sink();
      const code = await AgentSession.start(link, req(argv, { workdir }), {
        stdout: sink().stream,
        stderr: err.stream,
      }).done;
      return { code, err: err.text() };
    };
    const missing = await run(['no-such-command-x14']);
    assert.equal(missing.code, 127);
    assert.match(missing.err, /cannot run 'no-such-command-x14'/);
    assert.equal((await run(['/etc/passwd'])).code, 126);
    const badDir = await run(['true'], '/no/such/dir');
    assert.equal(badDir.code, 125);
    assert.match(badDir.err, /cannot change to directory '\/no\/such\/dir'/);
  });

  it('a signal reaches the command: 128+N', async () => {
    const s = AgentSession.start(link, req(['sleep', '30']), {
      stdin: new PassThrough(),
      stdout: sink().stream,
      stderr: sink().stream,
    });
    setTimeout(() => s.signal('TERM'), 100);
    assert.equal(await s.done, 143);
  });

  it('close() ends the session: done rejects, the stdin no longer read', async () => {
    const stdin = new PassThrough();
    const s = AgentSession.start(link, req(['sleep', '30']), {
      stdin,
      stdout: sink().stream,
      stderr: sink().stream,
    });
    s.close();
    await assert.rejects(s.done, VmError);
    assert.equal(stdin.listenerCount('data'), 0);
  });
});

describe('an agent session when the link goes down', () => {
  it('is a VmError, never an exit code made up; a link without an agent refuses to open one', async () => {
    const host = new PassThrough();
    const guest = new PassThrough();
    const link = new AgentLink();
    link.attach(Duplex.from({ readable: guest, writable: host }));
    assert.throws(
      () => AgentSession.start(link, req(['true']), { stdout: sink().stream, stderr: sink().stream }),
      VmError,
    );
    guest.write(encodeFrame(FRAME.hello, 0, 'ovm-agent/1 x86_64'));
    await link.waitHello(1_000);
    const s = AgentSession.start(link, req(['sleep', '30']), {
      stdout: sink().stream,
      stderr: sink().stream,
    });
    // The agent restarts (a second hello): its sessions are gone.
    guest.write(encodeFrame(FRAME.hello, 0, 'ovm-agent/1 x86_64'));
    await assert.rejects(s.done, /session ended without its exit code: the guest agent restarted/);
    await link.close();
  });
});
