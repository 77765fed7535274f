import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { UsageError } from '../errors.ts';
import {
  aptMissingPackage,
  aptOptionAssignment,
  chooseDebianBuilder,
  defaultBuilderImage,
  hostHasMmdebstrap,
  inVmBuildCommand,
  missingNetworkTools,
  missingPackageError,
  missingToolsError,
  parseBuilderImage,
  parseDebianBuilder,
  resolveExtraPackages,
  shellWord,
} from './debian-builder.ts';

test('builder choice: host where mmdebstrap is, vm elsewhere (always on macOS), forced either way', () => {
  const choose = (requested: 'host' | 'vm' | 'auto', platform: NodeJS.Platform, has: boolean) =>
    chooseDebianBuilder({ requested, platform, hostHasMmdebstrap: has });
  assert.equal(choose('auto', 'linux', true), 'host');
  assert.equal(choose('auto', 'linux', false), 'vm');
  assert.equal(choose('auto', 'darwin', false), 'vm');
  assert.equal(choose('auto', 'darwin', true), 'vm');
  assert.equal(choose('vm', 'linux', true), 'vm');
  assert.equal(choose('host', 'linux', true), 'host');
  assert.throws(
    () => choose('host', 'linux', false),
    (e: unknown) => {
      assert.ok(e instanceof UsageError);
      assert.match(e.message, /mmdebstrap on this host, and it is not installed/);
      assert.match(e.hint ?? '', /--debian-builder vm/);
      return true;
    },
  );
  assert.throws(() => choose('host', 'darwin', true), /does not run on darwin/);
});

test('--debian-builder and --builder-image: checked, with the option and the bad value named', () => {
  assert.equal(parseDebianBuilder(undefined), 'auto');
  assert.equal(parseDebianBuilder('vm'), 'vm');
  assert.equal(parseDebianBuilder('host'), 'host');
  assert.throws(() => parseDebianBuilder('docker'), /--debian-builder: 'docker' is not host, vm or auto/);
  assert.deepEqual(parseBuilderImage('oci:debian:trixie'), { kind: 'oci', ref: 'debian:trixie' });
  assert.deepEqual(parseBuilderImage('archive:/x/d.tar'), { kind: 'archive', path: '/x/d.tar' });
  assert.throws(() => parseBuilderImage('archive:'), /--builder-image: 'archive:' is neither/);
  assert.throws(() => parseBuilderImage('/x/d.tar'), /neither oci:REF nor archive:PATH/);
  assert.throws(() => parseBuilderImage('oci:UPPER CASE'), UsageError);
  assert.deepEqual(defaultBuilderImage('bookworm'), {
    kind: 'oci',
    ref: 'docker.io/library/debian:bookworm',
  });
});

test('shellWord keeps every word one word, whatever it holds (checked by a real sh)', () => {
  const words = [
    'plain',
    "it's",
    'a b',
    '$(touch /tmp/x)',
    '`id`',
    'x"y',
    '',
    'path-exclude=/usr/share/man/*',
  ];
  const out = execFileSync('/bin/sh', ['-c', `printf '%s\\n' ${words.map(shellWord).join(' ')}`], {
    encoding: 'utf8',
  });
  assert.deepEqual(out.split('\n').slice(0, -1), words);
});

test('the in-VM command: apt-get only when mmdebstrap is missing, mmdebstrap writing the tar to stdout', () => {
  const [sh, flag, script] = inVmBuildCommand({
    release: 'bookworm',
    debArch: 'amd64',
    packages: ['iproute2', 'nftables'],
    sources: ['deb http://mirror.example/debian bookworm main'],
    aptOptions: ['Acquire::Check-Valid-Until "false"'],
    shape: ['--skip=output/dev', '--dpkgopt=path-exclude=/usr/share/man/*'],
  });
  assert.equal(sh, '/bin/sh');
  assert.equal(flag, '-c');
  assert.ok(script);
  assert.match(script, /^set -eu$/m);
  assert.match(script, /^if ! command -v mmdebstrap/m);
  // apt-get's output goes to stderr: stdout carries the tar alone.
  for (const line of script.split('\n').filter((l) => l.includes('apt-get'))) assert.match(line, />&2$/);
  assert.match(script, /apt-get -o Acquire::Check-Valid-Until=false update/);
  const last = script.split('\n').at(-1) ?? '';
  assert.equal(
    last,
    "exec mmdebstrap --variant=minbase --architectures=amd64 --include=iproute2,nftables --format=tar --skip=output/dev '--dpkgopt=path-exclude=/usr/share/man/*' '--aptopt=Acquire::Check-Valid-Until \"false\"' bookworm - 'deb http://mirror.example/debian bookworm main'",
  );
});

test('the in-VM script runs: it skips apt-get when mmdebstrap is there, and hands mmdebstrap its words', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-builder-'));
  try {
    // Stand-ins on PATH: apt-get fails (it must not run), mmdebstrap prints its argv one per line.
    await fs.writeFile(path.join(dir, 'apt-get'), '#!/bin/sh\necho apt-get ran >&2; exit 9\n', {
      mode: 0o755,
    });
    await fs.writeFile(path.join(dir, 'mmdebstrap'), '#!/bin/sh\nprintf "%s\\n" "$@"\n', { mode: 0o755 });
    const command = inVmBuildCommand({
      release: 'trixie',
      debArch: 'arm64',
      packages: ['zstd'],
      sources: ['deb http://m.example/d trixie main contrib'],
      aptOptions: [],
      shape: [],
    });
    const out = execFileSync(command[0] ?? '', command.slice(1), {
      encoding: 'utf8',
      env: { PATH: `${dir}:/usr/bin:/bin` },
    });
    assert.deepEqual(out.split('\n').slice(-4, -1), [
      'trixie',
      '-',
      'deb http://m.example/d trixie main contrib',
    ]);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

test('aptOptionAssignment: apt-config dump lines as apt-get -o takes them', () => {
  assert.equal(
    aptOptionAssignment('Acquire::http::Proxy "http://p:3128"'),
    'Acquire::http::Proxy=http://p:3128',
  );
  assert.throws(() => aptOptionAssignment('nonsense'), UsageError);
});

test("missing network tools: found in any PATH directory, through the root's own /sbin link, else named", async () => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-tools-'));
  try {
    assert.deepEqual(
      (await missingNetworkTools(root)).map((t) => t.command),
      ['ip', 'nft', 'iptables'],
    );
    await fs.mkdir(path.join(root, 'usr/sbin'), { recursive: true });
    // A merged-/usr base: /sbin -> usr/sbin, as an absolute link (resolved inside the root).
    await fs.symlink('/usr/sbin', path.join(root, 'sbin'));
    await fs.writeFile(path.join(root, 'usr/sbin/ip'), '');
    await fs.symlink('xtables-nft-multi', path.join(root, 'usr/sbin/iptables'));
    assert.deepEqual(
      (await missingNetworkTools(root)).map((t) => t.package),
      ['nftables'],
    );
    const err = missingToolsError('oci:debian:bookworm-slim', await missingNetworkTools(root));
    assert.ok(err instanceof UsageError);
    assert.equal(
      err.message,
      "--base oci:debian:bookworm-slim lacks what the gateway's network needs: nft (nftables)",
    );
    assert.match(err.hint ?? '', /--base debian/);
  } finally {
    await fs.rm(root, { recursive: true, force: true });
  }
});

test('hostHasMmdebstrap looks on PATH', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-path-'));
  try {
    assert.equal(await hostHasMmdebstrap(dir), false);
    await fs.writeFile(path.join(dir, 'mmdebstrap'), '', { mode: 0o755 });
    assert.equal(await hostHasMmdebstrap(`/nonexistent${path.delimiter}${dir}`), true);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

test('extra packages: Debian names pass, deduplicated and sorted; none is an empty list', () => {
  const debian = { kind: 'debian' };
  assert.deepEqual(resolveExtraPackages({ base: debian }), []);
  assert.deepEqual(
    resolveExtraPackages({
      base: debian,
      packages: ['python3-grpcio', 'g++', 'libc6.1', 'hello', 'python3-grpcio', '0ad', 'xz-utils'],
    }),
    ['0ad', 'g++', 'hello', 'libc6.1', 'python3-grpcio', 'xz-utils'],
  );
});

test('extra packages: a name outside Debian rule is a UsageError naming it and the rule', () => {
  const bad = [
    'a', // one character
    'Python3', // uppercase
    '-foo', // starts with -
    '.foo',
    'foo_bar',
    'foo,bar', // would split mmdebstrap's --include
    'foo bar',
    'foo=1.0', // versions are not taken
    'foo/bookworm',
    'iptables-', // apt-get install reads a trailing - as remove
    './x.deb',
    '',
    'fo\x1bo',
  ];
  for (const name of bad) {
    assert.throws(
      () => resolveExtraPackages({ base: { kind: 'debian' }, packages: ['hello', name] }),
      (e: unknown) => {
        assert.ok(e instanceof UsageError, name);
        assert.ok(e.message.includes(`--package ${JSON.stringify(name)}`), e.message);
        assert.match(e.message, /lowercase letters, digits, \+ - and \., at least two characters/);
        return true;
      },
    );
  }
  for (const packages of ['hello', [1], { 0: 'hello' }]) {
    assert.throws(() => resolveExtraPackages({ base: { kind: 'debian' }, packages }), UsageError);
  }
});

test('extra packages with an oci: or archive: base are refused with the fix; none is fine', () => {
  for (const kind of ['oci', 'archive']) {
    assert.deepEqual(resolveExtraPackages({ base: { kind }, packages: [] }), []);
    assert.throws(
      () => resolveExtraPackages({ base: { kind }, packages: ['hello', 'hello'] }),
      (e: unknown) => {
        assert.ok(e instanceof UsageError);
        assert.match(e.message, new RegExp(`^--package hello: a --base ${kind}: image`));
        assert.match(e.hint ?? '', /--base debian/);
        return true;
      },
    );
  }
});

test("apt's missing package is found in mmdebstrap's tail, only among the build's own names", () => {
  const tail = [
    'I: running apt-get update...',
    'Reading package lists...',
    'E: Unable to locate package no-such-pkg',
    'E: apt-get --yes install failed',
  ];
  assert.deepEqual(aptMissingPackage(tail, ['hello', 'no-such-pkg']), {
    name: 'no-such-pkg',
    line: 'E: Unable to locate package no-such-pkg',
  });
  assert.equal(aptMissingPackage(tail, ['hello']), undefined);
  assert.equal(aptMissingPackage(['E: Failed to fetch http://x/y 404'], ['hello']), undefined);
  assert.deepEqual(
    aptMissingPackage(["E: Package 'hello' has no installation candidate"], ['hello'])?.name,
    'hello',
  );
  const err = missingPackageError(
    { name: 'no-such-pkg', line: 'E: Unable to locate package no-such-pkg' },
    'bookworm',
    tail,
  );
  assert.ok(err instanceof UsageError);
  assert.match(err.message, /^the Debian bookworm sources have no package 'no-such-pkg' \(apt: E: Unable/);
  assert.match(err.message, /apt-get --yes install failed/);
  assert.match(err.hint ?? '', /previous rootfs was left as it was/);
});

test("hostile builder output: apt's lines in the missing-package error are printed as safe text, each cut", () => {
  const tail = ['E: Unable to locate package hello \x1b]0;owned\x07', `W: ${'\x1b[2J'.repeat(400)}`];
  const missing = aptMissingPackage(tail, ['hello']);
  assert.ok(missing);
  const e = missingPackageError(missing, 'bookworm', tail);
  assert.ok(
    ![...e.message].some((c) => c === '\x1b' || c === '\x07'),
    `raw escapes in: ${JSON.stringify(e.message)}`,
  );
  assert.match(e.message, /no package 'hello'/);
  assert.ok(e.message.length < 2000, `not cut: ${e.message.length} characters`);
});
