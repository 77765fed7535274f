import { spawnSync } from 'node:child_process';
import { fstatSync } from 'node:fs';
import type { ReadStream, WriteStream } from 'node:tty';

/** The host's streams of a command run in the guest, as the CLI has them. */
export interface HostStreams {
  readonly stdin?: NodeJS.ReadableStream | undefined;
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream;
}

const asTty = (s: unknown): ReadStream | WriteStream | undefined =>
  s && (s as { isTTY?: boolean }).isTTY ? (s as ReadStream | WriteStream) : undefined;

/** True when stdin is a terminal: the command then gets a pseudo-terminal in the guest. */
export function stdinIsTerminal(io: HostStreams): boolean {
  return asTty(io.stdin) !== undefined;
}

/** The terminal's size (stdout's, else stderr's); one that reports none (0x0) is the classic 24x80. */
export function terminalSize(io: HostStreams): { rows: number; cols: number } {
  const out = (asTty(io.stdout) ?? asTty(io.stderr)) as WriteStream | undefined;
  return { rows: out?.rows || 24, cols: out?.columns || 80 };
}

/**
 * While a guest command has a pseudo-terminal: the local terminal in raw mode (keys, Ctrl-C
 * included, go to the guest), its window-size changes passed on by `resize`. Node's raw mode keeps
 * output processing (ONLCR) on, so the guest pty's "\r\n" would reach the terminal as "\r\r\n":
 * like ssh, output processing goes off too on the terminal stdin and stdout share (stty -opost;
 * setRawMode(false) puts back the settings from before). Returns the function that restores it.
 */
export function attachTerminal(io: HostStreams, resize: (rows: number, cols: number) => void): () => void {
  const stdin = asTty(io.stdin) as ReadStream | undefined;
  if (!stdin) return () => undefined;
  stdin.setRawMode(true);
  if (asTty(io.stdout)) outputRaw();
  const onResize = () => {
    const { rows, cols } = terminalSize(io);
    resize(rows, cols);
  };
  const outputs = [io.stdout, io.stderr].filter((s) => asTty(s)) as WriteStream[];
  for (const out of outputs) out.on('resize', onResize);
  return () => {
    for (const out of outputs) out.off('resize', onResize);
    stdin.setRawMode(false);
  };
}

function outputRaw(): void {
  try {
    if (fstatSync(0).rdev !== fstatSync(1).rdev) return;
  } catch {
    return;
  }
  spawnSync('stty', ['-opost'], { stdio: ['inherit', 'ignore', 'ignore'] });
}
