import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isTerminalSafe, terminalSafeLine, terminalSafeLines } from './terminal-text.ts';

/** Nothing a terminal acts on is left: no C0 (but '\n' where allowed), DEL, C1 or bidi control. */
function assertInert(text: string, allowNewline = false): void {
  for (const ch of text) {
    const code = ch.codePointAt(0) ?? 0;
    if (allowNewline && ch === '\n') continue;
    assert.ok(code >= 0x20 && code !== 0x7f && (code < 0x80 || code > 0x9f), `U+${code.toString(16)} left`);
    assert.ok(!/[\u202a-\u202e\u2066-\u2069]/u.test(ch), `bidi U+${code.toString(16)} left`);
  }
}

test('ESC, CSI, OSC (title, OSC 52 clipboard), BEL and DEL become visible escapes', () => {
  const cases: [string, string][] = [
    ['\x1b[2J\x1b[H', '\\x1b[2J\\x1b[H'],
    ['\x1b]0;owned\x07', '\\x1b]0;owned\\x07'],
    ['\x1b]52;c;cm0gLXJmIH4=\x1b\\', '\\x1b]52;c;cm0gLXJmIH4=\\x1b\\'],
    ['ok\x7f\x7f\x7fno', 'ok\\x7f\\x7f\\x7fno'],
    ['\x00nul', '\\x00nul'],
  ];
  for (const [input, want] of cases) {
    const got = terminalSafeLine(input);
    assert.equal(got, want);
    assertInert(got);
  }
});

test('C1 controls (U+009B is a one-character CSI, U+009D an OSC) are replaced', () => {
  const got = terminalSafeLine('a\u009b31mred\u009d52;c;eA==\u009cb\u0085');
  assert.equal(got, 'a\\x9b31mred\\x9d52;c;eA==\\x9cb\\x85');
  assertInert(got);
});

test('CR tricks: a carriage return cannot overwrite the start of the line; a tab becomes a space', () => {
  assert.equal(terminalSafeLine('all good\rFAILED  '), 'all good\\x0dFAILED  ');
  assert.equal(terminalSafeLine('a\tb'), 'a b');
  assert.equal(terminalSafeLine('one\ntwo'), 'one\\x0atwo', 'one line stays one line');
});

test('bidi overrides and isolates (what the user reads reordered) are replaced', () => {
  const got = terminalSafeLine('file\u202etxt.exe and \u2066x\u2069');
  assert.equal(got, 'file\\u{202e}txt.exe and \\u{2066}x\\u{2069}');
  assertInert(got);
});

test('printable text, UTF-8 included, is unchanged', () => {
  const text = 'ovm-gateway: k3s ready in 12.3 s — grüße, 日本 ✓ [ok]';
  assert.equal(terminalSafeLine(text), text);
  assert.equal(isTerminalSafe(text), true);
  assert.equal(isTerminalSafe('x\x1by'), false);
  assert.equal(isTerminalSafe('x\u009by'), false);
});

test('lines: each line made safe, "\\r\\n" ends a line, only "\\n" is left between them', () => {
  const got = terminalSafeLines('[ 1.0] boot\r\n\x1b]52;c;eA==\x07\nend\rX');
  assert.equal(got, '[ 1.0] boot\n\\x1b]52;c;eA==\\x07\nend\\x0dX');
  assertInert(got, true);
});

test('maxChars cuts long guest text before it is escaped', () => {
  assert.equal(terminalSafeLine('x'.repeat(50), { maxChars: 10 }), `${'x'.repeat(10)}…`);
  assert.equal(terminalSafeLines('aaaa\nbbbbbb', { maxChars: 4 }), 'aaaa\nbbbb…');
});
