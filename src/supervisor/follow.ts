import fs from 'node:fs/promises';

/**
 * Follows a growing text file (a console log) from its current start: calls `onLine` for each
 * complete line as it is written, polling every `intervalMs`. Returns a function that stops
 * following after reading what is left.
 */
export function followFile(
  file: string,
  onLine: (line: string) => void,
  options: { readonly intervalMs?: number } = {},
): () => Promise<void> {
  let offset = 0;
  let partial = '';
  let stopped = false;
  let busy: Promise<void> = Promise.resolve();
  const read = async () => {
    let handle: fs.FileHandle | undefined;
    try {
      handle = await fs.open(file, 'r');
      const buf = Buffer.alloc(65_536);
      for (;;) {
        const { bytesRead } = await handle.read(buf, 0, buf.length, offset);
        if (!bytesRead) break;
        offset += bytesRead;
        const text = partial + buf.subarray(0, bytesRead).toString('utf8');
        const lines = text.split('\n');
        partial = lines.pop() ?? '';
        for (const line of lines) onLine(line.replace(/\r$/, ''));
      }
    } catch {
      // Not there yet: the VMM creates it.
    } finally {
      await handle?.close();
    }
  };
  const timer = setInterval(() => {
    busy = busy.then(read);
  }, options.intervalMs ?? 250);
  timer.unref();
  return async () => {
    if (stopped) return;
    stopped = true;
    clearInterval(timer);
    await busy;
    await read();
  };
}
