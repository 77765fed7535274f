import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import YAML from 'yaml';
import {
  backupPath,
  buildKubeconfig,
  mergedEntry,
  mergeGatewayKubeconfig,
  mergeKubeconfig,
  readMergeRecord,
  unmergeKubeconfig,
  writeKubeconfig,
  writeMergeRecord,
} from './kubeconfig.ts';
import { generatePki } from './pki.ts';

const b64 = (s: string) => Buffer.from(s).toString('base64');
async function credentials() {
  const pki = await generatePki();
  return { caData: b64(pki.caCert), certData: b64(pki.clientCert), keyData: b64(pki.clientKey) };
}
const creds = await credentials();
const entryFor = (name: string, port: number, c = creds) => buildKubeconfig({ name, port, credentials: c });

const EXISTING = `# my clusters
apiVersion: v1
kind: Config
clusters:
- name: work # the office
  cluster: { server: https://work.example:6443 }
users:
- name: work
  user: { token: abc }
contexts:
- name: work
  context: { cluster: work, user: work }
current-context: work
`;

async function tmp(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-kube-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}
const names = (list: { name: string }[]) => list.map((x) => x.name);
const read = async (file: string) => YAML.parse(await fs.readFile(file, 'utf8'));

test('the kubeconfig file is 0600', async (t) => {
  const dir = await tmp(t);
  const file = await writeKubeconfig(path.join(dir, '.kube'), 'gw', 'x: 1\n');
  assert.equal((await fs.stat(file)).mode & 0o777, 0o600);
});

test('merge adds openshell-NAME, keeps comments, other entries and current-context, and keeps one backup', async (t) => {
  const dir = await tmp(t);
  const target = path.join(dir, 'config');
  await fs.writeFile(target, EXISTING, { mode: 0o640 });
  await fs.chmod(target, 0o640);
  const first = await mergeKubeconfig(target, entryFor('gw', 40000));
  assert.equal(first.backup, backupPath(target));
  assert.equal(await fs.readFile(backupPath(target), 'utf8'), EXISTING);
  assert.deepEqual(first.record, mergedEntry(target, entryFor('gw', 40000)));
  const text = await fs.readFile(target, 'utf8');
  assert.match(text, /^# my clusters\n/);
  assert.match(text, /- name: work # the office/);
  let doc = YAML.parse(text);
  assert.deepEqual(names(doc.contexts), ['work', 'openshell-gw']);
  assert.deepEqual(doc.contexts[1].context, { cluster: 'openshell-gw', user: 'openshell-gw' });
  assert.equal(doc['current-context'], 'work', 'not switched unless asked');
  assert.equal((await fs.stat(target)).mode & 0o777, 0o640, 'mode kept');
  // Again, on another port and asked to switch: one entry of ours, in place, now current.
  const before = await fs.readFile(target, 'utf8');
  await mergeKubeconfig(target, entryFor('gw', 40001), { setCurrent: true, previous: first.record });
  doc = await read(target);
  assert.deepEqual(names(doc.clusters), ['work', 'openshell-gw']);
  assert.equal(doc.clusters[1].cluster.server, 'https://127.0.0.1:40001');
  assert.equal(doc['current-context'], 'openshell-gw');
  assert.equal(await fs.readFile(backupPath(target), 'utf8'), before, 'the one backup, replaced');
  assert.deepEqual((await fs.readdir(dir)).sort(), ['config', 'config.openshell-vm.bak']);
});

test('a user entry named like ours that openshell-vm did not write is refused, the file left alone', async (t) => {
  const dir = await tmp(t);
  const target = path.join(dir, 'config');
  const theirs = EXISTING.replaceAll('work', 'openshell-gw');
  await fs.writeFile(target, theirs);
  await assert.rejects(mergeKubeconfig(target, entryFor('gw', 1)), (err: Error & { hint?: string }) => {
    assert.match(
      err.message,
      /already has cluster, user, context 'openshell-gw' that openshell-vm did not write/,
    );
    assert.match(err.hint ?? '', /kubectl config delete-context openshell-gw/);
    return true;
  });
  assert.equal(await fs.readFile(target, 'utf8'), theirs);
  assert.deepEqual(await fs.readdir(dir), ['config']);
  // Our entries under an earlier record are replaced; ours from another instance's reset are not.
  await fs.writeFile(target, EXISTING);
  const { record } = await mergeKubeconfig(target, entryFor('gw', 1));
  await mergeKubeconfig(target, entryFor('gw', 2), { previous: record });
  await mergeKubeconfig(target, entryFor('gw', 3)); // the record lost: same credentials are ours too
  const fresh = await credentials();
  await assert.rejects(mergeKubeconfig(target, entryFor('gw', 4, fresh)), /did not write/);
  await assert.rejects(
    mergeKubeconfig(target, entryFor('gw', 4, fresh), { previous: { ...record, target: '/elsewhere' } }),
    /did not write/,
  );
  await mergeKubeconfig(target, entryFor('gw', 4, fresh), { previous: record });
  assert.equal((await read(target)).clusters[1].cluster.server, 'https://127.0.0.1:4');
});

test('a symlinked kubeconfig is written through to its target, keeping the link and the mode', async (t) => {
  const dir = await tmp(t);
  await fs.mkdir(path.join(dir, 'dotfiles'));
  const real = path.join(dir, 'dotfiles', 'kubeconfig');
  const link = path.join(dir, 'config');
  await fs.writeFile(real, EXISTING);
  await fs.chmod(real, 0o644);
  await fs.symlink('dotfiles/kubeconfig', link);
  await mergeKubeconfig(link, entryFor('gw', 1));
  assert.ok((await fs.lstat(link)).isSymbolicLink(), 'still a link');
  assert.equal((await fs.stat(real)).mode & 0o777, 0o644);
  assert.deepEqual(names((await read(real)).contexts), ['work', 'openshell-gw']);
  assert.deepEqual(await fs.readdir(path.join(dir, 'dotfiles')), ['kubeconfig'], 'no temporary left');
  await fs.rm(real);
  await assert.rejects(
    mergeKubeconfig(link, entryFor('gw', 1)),
    /is a symlink to a file that does not exist/,
  );
});

test('odd shapes: empty lists in any spelling are empty, anything else is refused naming the file', async (t) => {
  const dir = await tmp(t);
  const target = path.join(dir, 'config');
  for (const odd of ['clusters: {}\nusers: null\ncontexts:\n', '', '# only a comment\n']) {
    await fs.writeFile(target, odd);
    await mergeKubeconfig(target, entryFor('gw', 1));
    const doc = await read(target);
    assert.deepEqual(
      [names(doc.clusters), names(doc.users), names(doc.contexts)],
      [['openshell-gw'], ['openshell-gw'], ['openshell-gw']],
    );
    assert.equal(doc['current-context'], 'openshell-gw');
  }
  for (const bad of [
    'contexts: "x"\n',
    'users: {a: 1}\n',
    'clusters: [unclosed\n',
    'kind: Pod\n',
    '- a list\n',
    '5\n',
  ]) {
    await fs.rm(backupPath(target), { force: true });
    await fs.writeFile(target, bad);
    await assert.rejects(
      mergeKubeconfig(target, entryFor('gw', 1)),
      new RegExp(`${target}(: '\\w+' is not a list| is not valid YAML| is not a kubeconfig)`),
      bad,
    );
    assert.equal(await fs.readFile(target, 'utf8'), bad);
    assert.deepEqual(await fs.readdir(dir), ['config'], 'no backup, no temporary file');
  }
  const laughs = `clusters:\n- name: openshell-gw\n  cluster:\n    a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n${Array.from({ length: 6 }, (_, i) => `    a${i + 1}: &a${i + 1} [${Array(10).fill(`*a${i}`).join(', ')}]`).join('\n')}\n`;
  await fs.writeFile(target, laughs);
  await assert.rejects(mergeKubeconfig(target, entryFor('gw', 1)), /alias/i);
  await fs.writeFile(target, 'users: null\ncontexts: 7\n');
  await assert.rejects(unmergeKubeconfig(mergedEntry(target, entryFor('gw', 1))), /'contexts' is not a list/);
});

test('merge on a full file system (ENOSPC) leaves the kubeconfig as it was and nothing new', async (t) => {
  if (process.getuid?.() !== 0) return t.skip('needs root to mount a small tmpfs');
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-kube-full-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', dir]);
  t.after(async () => {
    execFileSync('umount', [dir]);
    await fs.rmdir(dir);
  });
  const target = path.join(dir, 'config');
  await fs.writeFile(target, EXISTING);
  await fs.writeFile(backupPath(target), 'an older backup\n');
  // Fill what is left, so neither the new file nor the new backup fits.
  await fs.writeFile(path.join(dir, 'filler'), Buffer.alloc(64 * 1024)).catch(() => undefined);
  const before = (await fs.readdir(dir)).sort();
  await assert.rejects(mergeKubeconfig(target, entryFor('gw', 1)), (err: Error & { hint?: string }) => {
    assert.match(err.message, /cannot write .*config: ENOSPC/);
    assert.match(err.hint ?? '', /free space .*left as it was/);
    return true;
  });
  assert.equal(await fs.readFile(target, 'utf8'), EXISTING);
  assert.equal(await fs.readFile(backupPath(target), 'utf8'), 'an older backup\n');
  assert.deepEqual((await fs.readdir(dir)).sort(), before);
});

test('merge records what it merged in the instance directory, and the record decides next time', async (t) => {
  const dir = await tmp(t);
  const target = path.join(dir, 'config');
  const inst = path.join(dir, 'instance');
  await mergeGatewayKubeconfig(inst, target, entryFor('gw', 1));
  assert.deepEqual(await readMergeRecord(inst), mergedEntry(target, entryFor('gw', 1)));
  const fresh = await credentials();
  await mergeGatewayKubeconfig(inst, target, entryFor('gw', 2, fresh), { setCurrent: true });
  assert.deepEqual(await readMergeRecord(inst), mergedEntry(target, entryFor('gw', 2, fresh)));
});

test('a merge recorded under the old name (NAME, before openshell-NAME) is taken out by the next merge', async (t) => {
  const dir = await tmp(t);
  const target = path.join(dir, 'config');
  const inst = path.join(dir, 'instance');
  // What 5ac75d2 left: cluster, user and context named 'gw', and a record naming them.
  await fs.writeFile(target, entryFor('gw', 1));
  const oldFingerprint = createHash('sha256').update(`${creds.caData}\n${creds.certData}`).digest('hex');
  await writeMergeRecord(inst, { target, name: 'gw', fingerprint: oldFingerprint });
  await mergeGatewayKubeconfig(inst, target, entryFor('gw', 2));
  const doc = YAML.parse(await fs.readFile(target, 'utf8'));
  assert.deepEqual(
    [names(doc.clusters), names(doc.users), names(doc.contexts)],
    [['openshell-gw'], ['openshell-gw'], ['openshell-gw']],
  );
  assert.equal((await readMergeRecord(inst))?.name, 'openshell-gw');
});

test('unmerge takes out what the merge added, keeps the rest and the comments, and clears current-context only if it was ours', async (t) => {
  const dir = await tmp(t);
  const target = path.join(dir, 'config');
  await fs.writeFile(target, EXISTING);
  await mergeKubeconfig(target, entryFor('gw', 40000), { setCurrent: true });
  await mergeKubeconfig(target, entryFor('gw', 40002), { setCurrent: true });
  await writeMergeRecord(dir, mergedEntry(target, entryFor('gw', 40000)));
  const record = await readMergeRecord(dir);
  assert.ok(record);
  const before = await fs.readFile(target, 'utf8');
  const out = await unmergeKubeconfig(record);
  assert.deepEqual(out.removed, ['cluster', 'user', 'context']);
  assert.deepEqual(out.kept, []);
  assert.equal(out.backup, backupPath(target));
  assert.equal(await fs.readFile(backupPath(target), 'utf8'), before);
  const text = await fs.readFile(target, 'utf8');
  assert.match(text, /# the office/);
  const doc = YAML.parse(text);
  assert.deepEqual(
    [names(doc.clusters), names(doc.users), names(doc.contexts)],
    [['work'], ['work'], ['work']],
  );
  assert.equal(doc['current-context'], '', 'it named the removed context');
  assert.equal(doc.users[0].user.token, 'abc', 'other entries untouched');
  const again = await unmergeKubeconfig(record);
  assert.deepEqual([again.removed, again.kept, again.backup], [[], [], undefined]);
});

test('unmerge keeps an entry of the same name that is not the merged one, and a missing file is fine', async (t) => {
  const dir = await tmp(t);
  const target = path.join(dir, 'config');
  const theirs = EXISTING.replaceAll('work', 'openshell-work');
  await fs.writeFile(target, theirs);
  const out = await unmergeKubeconfig(mergedEntry(target, entryFor('work', 40000)));
  assert.deepEqual([out.removed, out.kept], [[], ['cluster', 'user', 'context']]);
  assert.equal(await fs.readFile(target, 'utf8'), theirs);
  // Merged, then the user pointed the context at their own user: the user goes; the cluster
  // stays, since the context that stays still names it.
  await fs.writeFile(target, EXISTING);
  await mergeKubeconfig(target, entryFor('gw', 1), { setCurrent: true });
  const doc = await read(target);
  doc.contexts[1].context.user = 'work';
  await fs.writeFile(target, YAML.stringify(doc));
  const partly = await unmergeKubeconfig(mergedEntry(target, entryFor('gw', 2)));
  assert.deepEqual([partly.removed, partly.kept], [['user'], ['cluster', 'context']]);
  const after = await read(target);
  assert.deepEqual(names(after.clusters), ['work', 'openshell-gw']);
  assert.equal(after['current-context'], 'openshell-gw');
  await fs.rm(target);
  assert.deepEqual((await unmergeKubeconfig(mergedEntry(target, entryFor('gw', 1)))).removed, []);
  assert.equal(await readMergeRecord(path.join(dir, 'none')), undefined);
});
