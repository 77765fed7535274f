import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AWKWARD_ARGS as AWKWARD } from '../../test/fixtures/awkward.ts';
import { encodeOpen } from '../agent/protocol.ts';
import { agentRequest, mergeEnv } from './request.ts';

test('mergeEnv keeps the defaults unless a user variable replaces one', () => {
  const env = new Map(
    mergeEnv([
      ['PATH', '/x'],
      ['FOO', '1'],
    ]),
  );
  assert.equal(env.get('PATH'), '/x');
  assert.equal(env.get('HOME'), '/root');
  assert.equal(env.get('FOO'), '1');
});

test("the agent session carries argv, env and workdir byte for byte, and the terminal's size", () => {
  const req = agentRequest(
    { exec: '/bin/x', args: AWKWARD, env: [['K', "v 'q' \n$X"]], workdir: "/w d/'x'" },
    { tty: true, rows: 40, cols: 100 },
  );
  assert.deepEqual(req.argv, ['/bin/x', ...AWKWARD]);
  assert.deepEqual(req.env, ["K=v 'q' \n$X"]);
  assert.equal(req.workdir, "/w d/'x'");
  assert.deepEqual(encodeOpen(req).toString('utf8').split('\0').slice(0, -1), [
    't',
    '40',
    '100',
    "/w d/'x'",
    String(AWKWARD.length + 1),
    '/bin/x',
    ...AWKWARD,
    '1',
    "K=v 'q' \n$X",
  ]);
});
