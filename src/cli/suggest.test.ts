import assert from 'node:assert/strict';
import { test } from 'node:test';
import { closest, editDistance } from './suggest.ts';

test('edit distance counts insertions, deletions, substitutions and neighbour swaps as 1 each', () => {
  assert.equal(editDistance('list', 'list'), 0);
  assert.equal(editDistance('lsit', 'list'), 1, 'a swap');
  assert.equal(editDistance('detatch', 'detach'), 1, 'an insertion');
  assert.equal(editDistance('stauts', 'status'), 1);
  assert.equal(editDistance('exce', 'exec'), 1);
  assert.equal(editDistance('', 'abc'), 3);
  assert.equal(editDistance('kitten', 'sitting'), 3);
});

const COMMANDS = [
  'run',
  'start',
  'create',
  'list',
  'ls',
  'status',
  'stop',
  'logs',
  'delete',
  'exec',
  'shell',
];

test('closest: the meant command or option, or nothing when nothing is near', () => {
  assert.equal(closest('lsit', COMMANDS), 'list');
  assert.equal(closest('stauts', COMMANDS), 'status');
  assert.equal(closest('shel', COMMANDS), 'shell');
  assert.equal(closest('--detatch', ['--debug', '--detach', '--delete']), '--detach');
  assert.equal(closest('--vcpu', ['--vcpus', '--mem']), '--vcpus');
  assert.equal(closest('frobnicate', COMMANDS), undefined);
  assert.equal(closest('--frobnicate', ['--exec', '--env']), undefined);
  assert.equal(closest('/bin/echo', COMMANDS), undefined);
  assert.equal(closest('', COMMANDS), undefined);
});

test('closest: short words need a close match; a unique prefix counts', () => {
  // One letter off in a 2-letter word is a guess, not a suggestion ... unless it is that close.
  assert.equal(closest('xy', COMMANDS), undefined);
  assert.equal(closest('--det', ['--detach', '--debug']), '--detach');
  assert.equal(closest('--de', ['--detach', '--debug']), undefined, 'two candidates start so');
  assert.equal(closest('cre', COMMANDS), 'create');
});
