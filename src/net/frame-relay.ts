import fs from 'node:fs/promises';
import net from 'node:net';
import { HostError } from '../errors.ts';
import { createFrameGuard, type DropReason, type FrameGuard, type Verdict } from './frame-filter.ts';
import { GVPROXY_NET } from './gvproxy.ts';
import { FrameStream, FramingError } from './qemu-stream.ts';

/** How the relay ended. */
export interface RelayEnd {
  /** Which side ended it first; 'closed' when close() did. */
  readonly by: 'vm' | 'gvproxy' | 'closed';
  readonly error?: Error | undefined;
}

export interface RelayStats {
  readonly framesFromGuest: number;
  readonly framesDropped: number;
  readonly droppedBy: Readonly<Partial<Record<DropReason, number>>>;
  readonly flowsLearned: number;
}

export interface RelayOptions {
  /** Where the VMM connects (QEMU's -netdev stream client, libkrun's unixstream). */
  readonly listenPath: string;
  /** gvproxy's -listen-qemu socket. */
  readonly gvproxyPath: string;
  /** Called for each frame the guest sent that was dropped. */
  readonly onDrop?: ((verdict: Verdict & { pass: false }) => void) | undefined;
  readonly guard?: FrameGuard | undefined;
}

/**
 * The frame filter between the VMM and gvproxy, in the supervisor: it connects to gvproxy's qemu
 * socket first (gvproxy accepts one client, so it is ours), then listens for the VMM's one
 * connection and stops listening once that arrived. Frames pass both ways in QEMU's stream
 * framing; the guest's go through the guard (frame-filter.ts), gvproxy's only teach it the flows
 * gvproxy opens. A slow side pauses the other (backpressure); either side closing closes the
 * other. Guest root cannot change any of this: it runs on the host.
 */
export class GvproxyRelay implements AsyncDisposable {
  readonly listenPath: string;
  /** Settles once both connections are gone (never rejects). */
  readonly ended: Promise<RelayEnd>;
  readonly #server: net.Server;
  readonly #upstream: net.Socket;
  readonly #guard: FrameGuard;
  readonly #onDrop: RelayOptions['onDrop'];
  #vm: net.Socket | undefined;
  #end: RelayEnd | undefined;
  #resolveEnded!: (end: RelayEnd) => void;
  #framesFromGuest = 0;
  #framesDropped = 0;
  readonly #droppedBy: Partial<Record<DropReason, number>> = {};

  private constructor(options: RelayOptions, upstream: net.Socket, server: net.Server) {
    this.listenPath = options.listenPath;
    this.#upstream = upstream;
    this.#server = server;
    this.#guard =
      options.guard ?? createFrameGuard({ gateway: GVPROXY_NET.gateway, subnet: GVPROXY_NET.subnet });
    this.#onDrop = options.onDrop;
    this.ended = new Promise((resolve) => (this.#resolveEnded = resolve));
  }

  static async start(options: RelayOptions): Promise<GvproxyRelay> {
    const upstream = await connect(options.gvproxyPath);
    upstream.pause();
    const server = net.createServer({ pauseOnConnect: true });
    const relay = new GvproxyRelay(options, upstream, server);
    relay.#wireUpstream();
    server.on('connection', (socket) => relay.#accept(socket));
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(options.listenPath, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch (err) {
      upstream.destroy();
      throw new HostError(`cannot listen on ${options.listenPath} for the VM's network`, {
        hint: 'a file is in the way in the run directory',
        cause: err,
      });
    }
    await fs.chmod(options.listenPath, 0o600);
    return relay;
  }

  stats(): RelayStats {
    return {
      framesFromGuest: this.#framesFromGuest,
      framesDropped: this.#framesDropped,
      droppedBy: { ...this.#droppedBy },
      flowsLearned: this.#guard.flows.size,
    };
  }

  get isListening(): boolean {
    return this.#server.listening;
  }

  /** Closes both connections and the listener. Idempotent. */
  async close(): Promise<void> {
    this.#finish({ by: 'closed' });
    await this.ended;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #accept(socket: net.Socket): void {
    if (this.#vm || this.#end) {
      socket.destroy();
      return;
    }
    this.#vm = socket;
    // One VMM per run: nothing else may connect later.
    this.#stopListening();
    const guest = new FrameStream();
    socket.on('data', (chunk: Buffer) => {
      let slices: Buffer[];
      try {
        slices = guest.push(chunk, (frame) => this.#admit(frame));
      } catch (err) {
        this.#finish({ by: 'vm', error: err instanceof Error ? err : new Error(String(err)) });
        return;
      }
      let full = false;
      for (const slice of slices) full = !this.#upstream.write(slice) || full;
      if (full) pauseUntilDrain(socket, this.#upstream);
    });
    socket.on('error', (error) => this.#finish({ by: 'vm', error }));
    socket.on('close', () => this.#finish({ by: 'vm' }));
    socket.resume();
    this.#upstream.resume();
  }

  #wireUpstream(): void {
    const fromGateway = new FrameStream();
    const learn = (frame: Buffer) => {
      this.#guard.learnFromGatewayFrame(frame);
      return true;
    };
    this.#upstream.on('data', (chunk: Buffer) => {
      try {
        fromGateway.push(chunk, learn);
      } catch (err) {
        this.#finish({ by: 'gvproxy', error: err instanceof Error ? err : new Error(String(err)) });
        return;
      }
      const vm = this.#vm;
      if (vm && !vm.write(chunk)) pauseUntilDrain(this.#upstream, vm);
    });
    this.#upstream.on('error', (error) => this.#finish({ by: 'gvproxy', error }));
    this.#upstream.on('close', () => this.#finish({ by: 'gvproxy' }));
  }

  #admit(frame: Buffer): boolean {
    this.#framesFromGuest++;
    const verdict = this.#guard.classifyGuestFrame(frame);
    if (verdict.pass) return true;
    this.#framesDropped++;
    this.#droppedBy[verdict.reason] = (this.#droppedBy[verdict.reason] ?? 0) + 1;
    this.#onDrop?.(verdict);
    return false;
  }

  #stopListening(): void {
    if (this.#server.listening) this.#server.close();
    // Node removes its Unix socket file on close; make sure of it even if it did not listen.
    void fs.rm(this.listenPath, { force: true }).catch(() => undefined);
  }

  #finish(end: RelayEnd): void {
    if (this.#end) return;
    this.#end =
      end.error instanceof FramingError
        ? { ...end, error: new Error(`bad framing from the ${end.by}: ${end.error.message}`) }
        : end;
    this.#stopListening();
    this.#vm?.destroy();
    this.#upstream.destroy();
    const sockets = [this.#vm, this.#upstream].filter((s): s is net.Socket => s !== undefined);
    void Promise.all(
      sockets.map((s) => (s.closed ? Promise.resolve() : new Promise((r) => s.once('close', r)))),
    ).then(() => this.#resolveEnded(this.#end as RelayEnd));
  }
}

/**
 * Connects to gvproxy's VM socket. gvproxy's socket file appears when it binds, a moment before it
 * listens: a refused connection (ECONNREFUSED) in that window is tried again, for up to
 * `retryMs`; anything else (no such socket) fails at once.
 */
async function connect(socketPath: string, retryMs = 3_000): Promise<net.Socket> {
  const t0 = performance.now();
  for (;;) {
    try {
      return await connectOnce(socketPath);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ECONNREFUSED' || performance.now() - t0 >= retryMs) {
        throw new HostError(`cannot connect to gvproxy's VM socket ${socketPath}`, {
          hint: "see the run's gvproxy.log",
          cause: err,
        });
      }
      await new Promise((r) => setTimeout(r, 25));
    }
  }
}

function connectOnce(socketPath: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath);
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

function pauseUntilDrain(source: net.Socket, sink: net.Socket): void {
  if (source.isPaused()) return;
  source.pause();
  sink.once('drain', () => source.resume());
}
