import fs from 'node:fs/promises';
import net from 'node:net';
import type { Writable } from 'node:stream';

/**
 * The host end of one guest output stream: a Unix socket that QEMU connects to (a virtio-serial
 * port's chardev) and whose bytes go to `target` (the CLI's stdout or stderr). Reading never
 * pauses: a slow consumer buffers here rather than throttling the guest, so that nothing the
 * command wrote is lost when the VM ends.
 */
export class OutputSink {
  readonly socketPath: string;
  readonly bytes = { count: 0 };
  #server: net.Server;
  #connection: net.Socket | undefined;
  #ended: Promise<void>;
  #endedResolve!: () => void;
  #targetBroken = false;

  private constructor(socketPath: string, server: net.Server, target: Writable) {
    this.socketPath = socketPath;
    this.#server = server;
    this.#ended = new Promise((resolve) => {
      this.#endedResolve = resolve;
    });
    target.on('error', () => {
      // The reader went away (EPIPE): keep draining the guest, drop the bytes.
      this.#targetBroken = true;
    });
    server.on('connection', (socket) => {
      if (this.#connection) {
        socket.destroy();
        return;
      }
      this.#connection = socket;
      socket.on('data', (chunk: Buffer) => {
        this.bytes.count += chunk.length;
        if (!this.#targetBroken) target.write(chunk);
      });
      socket.on('close', () => this.#endedResolve());
      socket.on('error', () => this.#endedResolve());
    });
  }

  static async listen(socketPath: string, target: Writable): Promise<OutputSink> {
    await fs.rm(socketPath, { force: true });
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return new OutputSink(socketPath, server, target);
  }

  /** Resolves when the VMM has closed its end (all output received), or after `timeoutMs`. */
  async drained(timeoutMs: number): Promise<boolean> {
    if (!this.#connection) return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), timeoutMs);
    });
    const done = await Promise.race([this.#ended.then(() => true as const), timeout]);
    clearTimeout(timer);
    return done;
  }

  async close(): Promise<void> {
    this.#connection?.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    await fs.rm(this.socketPath, { force: true });
  }
}
