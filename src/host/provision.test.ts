import assert from 'node:assert/strict';
import fs from 'node:fs';
import test from 'node:test';
import { provisionCommand } from './provision.ts';

test('the provisioning hint names the package script by an absolute path that exists', () => {
  const command = provisionCommand('--refresh');
  const match = /^bash (\/\S+\/scripts\/provision-host\.sh) --refresh$/.exec(command);
  assert.ok(match, command);
  assert.ok(fs.existsSync(match[1] as string), `${match[1]} exists`);
  assert.match(provisionCommand(), /provision-host\.sh$/);
});
