import assert from 'node:assert/strict';
import { test } from 'node:test';
import { renderVerifyReport } from './verify.ts';

test("verify: an API that does not answer gets a hint with the instance's own name, not a literal NAME", () => {
  const text = renderVerifyReport(
    {
      kubeconfig: '/k/gw.yaml',
      server: 'https://127.0.0.1:6443',
      reachable: false,
      pass: 0,
      fail: 1,
      results: [{ name: 'api-server', status: 'fail', detail: 'no answer in 1 s' }],
    },
    'gw',
  );
  assert.doesNotMatch(text, /\bNAME\b/);
  assert.match(text, /openshell-vm status gw/);
  assert.match(text, /openshell-vm --name gw --detach/);
  assert.match(text, /FAIL {2}api-server/);
});
