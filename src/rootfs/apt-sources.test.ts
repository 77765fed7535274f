import assert from 'node:assert/strict';
import { test } from 'node:test';
import { debianSourcesFor, parseDeb822Sources, parseOneLineSources } from './apt-sources.ts';

const DEB822 = `Types: deb
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://mirror.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Enabled: yes

Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
Enabled: no
`;

test('deb822 and one-line sources parse; deb-src and disabled stanzas are skipped', () => {
  const parsed = parseDeb822Sources(DEB822);
  assert.equal(parsed.length, 2);
  assert.deepEqual(parsed[0]?.suites, ['bookworm', 'bookworm-updates']);
  assert.equal(parsed[0]?.signedBy, '/usr/share/keyrings/debian-archive-keyring.gpg');
  const one = parseOneLineSources(
    'deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main # tail\n# deb http://x y z\ndeb-src http://m y main\n',
  );
  assert.deepEqual(one, [
    { uri: 'http://m.example/debian', suites: ['bookworm'], components: ['main'], signedBy: '/k.gpg' },
  ]);
});

test("the host's Debian sources are re-aimed at the guest release; other repositories are left out", () => {
  const sources = [
    ...parseDeb822Sources(DEB822),
    ...parseOneLineSources('deb http://third.party/apt stable main\n'),
  ];
  assert.deepEqual(debianSourcesFor(sources, 'bookworm', 'trixie'), [
    'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian trixie main',
    'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian trixie-updates main',
    'deb http://mirror.example/debian-security trixie-security main',
  ]);
});
