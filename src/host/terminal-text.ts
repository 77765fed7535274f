/**
 * Text that came from a guest (its console, its files) made safe to print on the user's terminal
 * or to put in an error or hint: a guest that writes ESC, CSI, OSC or a C1 control could
 * otherwise move the cursor, rewrite what the user sees, set the window title or write the
 * clipboard (OSC 52). Every control character is shown as a visible escape instead.
 */

/**
 * C0 controls (U+0000–U+001F), DEL (U+007F), C1 controls (U+0080–U+009F, 0x9b is a one-byte CSI),
 * and the Unicode bidi embeddings, overrides and isolates, which reorder what the user reads.
 */
const UNSAFE_CLASS =
  '[\\u0000-\\u001f\\u007f-\\u009f\\u061c\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069\\u2028\\u2029]';
const UNSAFE = new RegExp(UNSAFE_CLASS, 'gu');
const HAS_UNSAFE = new RegExp(UNSAFE_CLASS, 'u');

export interface TerminalTextOptions {
  /** Longer text is cut and ends with '…' (counted in UTF-16 units, before escaping). */
  readonly maxChars?: number | undefined;
}

/**
 * One line of guest text as it may be printed: every control character (line breaks, carriage
 * returns and tabs included; a tab becomes a space) is replaced by a visible `\xNN` / `\u{NNNN}`.
 */
export function terminalSafeLine(text: string, options: TerminalTextOptions = {}): string {
  const max = options.maxChars;
  const cut = max !== undefined && text.length > max ? `${text.slice(0, max)}…` : text;
  return cut.replace(UNSAFE, (c) => {
    if (c === '\t') return ' ';
    const code = c.codePointAt(0) ?? 0;
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u{${code.toString(16)}}`;
  });
}

/**
 * Several lines of guest text (a console tail): split at '\n' (a '\r' before it dropped), each line
 * made safe as terminalSafeLine, joined with '\n' again. The only control character left is '\n'.
 */
export function terminalSafeLines(text: string, options: TerminalTextOptions = {}): string {
  return text
    .split('\n')
    .map((line) => terminalSafeLine(line.endsWith('\r') ? line.slice(0, -1) : line, options))
    .join('\n');
}

/** True when `text` has no character terminalSafeLine would replace (for validating guest data). */
export function isTerminalSafe(text: string): boolean {
  return !HAS_UNSAFE.test(text);
}
