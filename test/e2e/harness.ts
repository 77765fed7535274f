import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { processStartTime } from '../../src/supervisor/identity.ts';

export const ROOT = new URL('../../', import.meta.url).pathname;
export const CLI = path.join(ROOT, 'bin', 'openshell-vm');
export const MAIN = path.join(ROOT, 'src', 'cli', 'main.ts');

export interface CliRun {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: Buffer;
  readonly stderr: string;
  readonly events: Record<string, unknown>[];
  /** Helper processes the CLI reported starting (name, pid, start time). */
  readonly processes: { name: string; pid: number; startTime?: string }[];
}

export interface Sandbox {
  readonly dataDir: string;
  readonly runtimeDir: string;
  readonly env: NodeJS.ProcessEnv;
  run(args: readonly string[], options?: RunOptions): Promise<CliRun>;
  /** Fails when a process the CLI started is still alive or a socket is left anywhere it writes. */
  assertClean(result: CliRun, instance?: string): Promise<void>;
  /** The sandbox's HOME (~/.kube) and XDG_CONFIG_HOME (the OpenShell CLI's files). */
  readonly homeDir: string;
  readonly configDir: string;
  cleanup(): void;
}

export interface RunOptions {
  readonly env?: NodeJS.ProcessEnv;
  /** Spawn `node src/cli/main.ts` instead of the sh launcher (for tests that strip PATH). */
  readonly direct?: boolean;
  /** Called with each event as it is written (polling the events file). */
  readonly onEvent?: (
    event: Record<string, unknown>,
    child: { pid: number; kill: (s: NodeJS.Signals) => void },
  ) => void;
  readonly timeoutMs?: number;
}

/** A private data and runtime directory (instances, runs, sockets); the artifact cache is shared. */
export function sandbox(): Sandbox {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'ovm-e2e-'));
  const dataDir = path.join(base, 'data');
  const runtimeDir = path.join(base, 'rt');
  const homeDir = path.join(base, 'home');
  const configDir = path.join(base, 'config');
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    OPENSHELL_VM_DATA_DIR: dataDir,
    XDG_RUNTIME_DIR: runtimeDir,
    // A private HOME and config dir (kubeconfigs, OpenShell CLI files); the shared artifact cache.
    HOME: homeDir,
    XDG_CONFIG_HOME: configDir,
    XDG_CACHE_HOME: process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'),
  };
  fs.mkdirSync(homeDir, { recursive: true });
  fs.mkdirSync(runtimeDir, { recursive: true });
  return {
    dataDir,
    runtimeDir,
    homeDir,
    configDir,
    env,
    run: (args, options = {}) =>
      runCli(
        args,
        { ...options, env: { ...env, ...options.env } },
        path.join(base, `events-${Date.now()}.ndjson`),
      ),
    async assertClean(result, instance = 'default') {
      for (const p of result.processes) {
        assert.equal(await processStartTime(p.pid), undefined, `${p.name} (pid ${p.pid}) is still running`);
      }
      const sockets = findSockets(dataDir).concat(findSockets(runtimeDir));
      assert.deepEqual(sockets, [], 'sockets left behind');
      const runs = path.join(dataDir, 'instances', instance, 'runs');
      const left = fs.existsSync(runs)
        ? fs.readdirSync(runs).filter((id) => !fs.existsSync(path.join(runs, id, 'kept')))
        : [];
      assert.deepEqual(left, [], 'run directories left behind');
    },
    cleanup: () => fs.rmSync(base, { recursive: true, force: true }),
  };
}

function findSockets(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  const out: string[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    const full = path.join(entry.parentPath, entry.name);
    // Inside a gateway rootfs, sockets belong to the guest (k3s's, or planted stale ones).
    if (full.includes(`${path.sep}rootfs${path.sep}`)) continue;
    if (entry.isSocket() || entry.name.endsWith('.sock')) out.push(full);
  }
  return out;
}

async function runCli(args: readonly string[], options: RunOptions, eventsFile: string): Promise<CliRun> {
  // Subcommands with their own options: no --events before them.
  const argv = [
    'kernel',
    'runtime',
    'doctor',
    'rootfs',
    'verify',
    'status',
    'list',
    'stop',
    'logs',
    'delete',
    'exec',
    'shell',
    'version',
    'help',
    'completion',
  ].includes(args[0] ?? '')
    ? [...args]
    : ['prepare-rootfs', 'start', 'create'].includes(args[0] ?? '')
      ? [args[0] as string, '--events', eventsFile, ...args.slice(1)]
      : ['--events', eventsFile, ...args];
  const child = options.direct
    ? spawn(process.execPath, [MAIN, ...argv], { env: options.env, stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn(CLI, argv, { env: options.env, stdio: ['ignore', 'pipe', 'pipe'] });
  const stdout: Buffer[] = [];
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => stdout.push(d));
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const readEvents = () =>
    fs.existsSync(eventsFile)
      ? fs
          .readFileSync(eventsFile, 'utf8')
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l) as Record<string, unknown>)
      : [];
  let seen = 0;
  const watcher = options.onEvent
    ? setInterval(() => {
        const events = readEvents();
        for (const e of events.slice(seen))
          options.onEvent?.(e, { pid: child.pid as number, kill: (s) => child.kill(s) });
        seen = events.length;
      }, 20)
    : undefined;
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 240_000);
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
    child.on('close', (c, s) => resolve([c, s])),
  );
  clearTimeout(timer);
  if (watcher) clearInterval(watcher);
  const events = readEvents();
  const processes = events
    .filter((e) => e.type === 'process' && e.action === 'started')
    .map((e) => e.process as { name: string; pid: number; startTime?: string });
  return { code, signal, stdout: Buffer.concat(stdout), stderr, events, processes };
}

/** A loopback port free at the time of asking. */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}
