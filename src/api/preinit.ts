import { createHash, X509Certificate } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { readEnvironment } from '../config/environment.ts';
import { UsageError, VmError } from '../errors.ts';
import { writePrebakedPki } from '../gateway/bootstrap.ts';
import { generatePki } from '../gateway/pki.ts';
import { lexists } from '../host/fs.ts';
import { GuestRoot } from '../host/guest-root.ts';
import { instanceDir } from '../instance/runs.ts';
import type { StopOutcome } from '../instance/start.ts';
import { freeLoopbackPort } from '../net/ports.ts';
import { CLI_NAMES } from '../options/exec-options.ts';
import type { GatewayReady } from '../presets/gateway.ts';
import { GATEWAY_GUEST_PORT } from '../presets/gateway.ts';
import { cleanRootfsKineDatastore, type KineReport } from '../rootfs/kine.ts';
import type { PreinitRecord } from '../rootfs/record.ts';
import { GATEWAY_STOP_TIMEOUT_MS, runPreparedGateway } from './gateway.ts';
import { prepareGateway } from './prepare-gateway.ts';

/** The marker a pre-initialized rootfs carries (JSON: when, the CA's fingerprint, the version). */
export const INITIALIZED_FILE = 'opt/openshell/.initialized';

export interface PreinitOptions {
  /** The instance the rootfs is built for: the boot runs as NAME-preinit, its files thrown away. */
  readonly instance: string;
  readonly arch: string;
  readonly backend?: string | undefined;
  readonly kernel?: string | undefined;
  readonly readyTimeoutMs: number;
  readonly signal?: AbortSignal | undefined;
  readonly progress: (message: string) => void;
  readonly warn: (message: string) => void;
}

/** The name of the throw-away instance a preinit of `instance` boots as (at most 63 characters). */
export function preinitInstanceName(instance: string): string {
  return `${instance.slice(0, 63 - '-preinit'.length)}-preinit`;
}

/**
 * Pre-initializes the gateway rootfs at `rootfs` (complete, built, not yet in place, not running):
 * bakes a new PKI into opt/openshell/pki, boots it once as a gateway until Ready, stops it in
 * order (k3s first), cleans kine's runtime records, and writes opt/openshell/.initialized. Every
 * later boot takes the pre-baked path and keeps what k3s unpacked. The boot's host files
 * (credentials, kubeconfig, its instance directory) go to temporary places and are removed, so
 * nothing of the user's changes. Throws on any failure; the caller throws the rootfs away then.
 */
export async function preinitRootfs(rootfs: string, options: PreinitOptions): Promise<PreinitRecord> {
  const t0 = performance.now();
  const name = preinitInstanceName(options.instance);
  // The boot's instance directory is made here, and only one that did not exist (it is removed
  // afterwards: it must never be anyone's instance, nor become one while this runs).
  const env0 = readEnvironment();
  const ownDir = instanceDir(env0, name);
  await fs.mkdir(path.dirname(ownDir), { recursive: true, mode: 0o700 });
  try {
    await fs.mkdir(ownDir, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw preinitNameTaken(name);
    throw err;
  }
  const scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'ovm-preinit-'));
  try {
    const pki = await generatePki();
    await writePrebakedPki(rootfs, pki);
    const gatewayPort = await freeLoopbackPort();
    let apiPort = await freeLoopbackPort();
    while (apiPort === gatewayPort) apiPort = await freeLoopbackPort();
    const prepared = await prepareGateway(
      {
        name,
        rootfs,
        arch: options.arch,
        backend: options.backend,
        kernel: options.kernel,
        ports: [`127.0.0.1:${gatewayPort}:${GATEWAY_GUEST_PORT}`],
        apiPort,
        readyTimeoutMs: options.readyTimeoutMs,
      },
      CLI_NAMES,
      {
        progress: (m) => options.progress(`preinit: ${m}`),
        warn: (m) => options.warn(`preinit: ${m}`),
        event: () => undefined,
      },
    );
    const env = {
      ...prepared.env,
      openshellConfigDir: path.join(scratch, 'openshell'),
      kubeDir: path.join(scratch, 'kube'),
    };
    const stopper = new AbortController();
    const signal = options.signal ? AbortSignal.any([options.signal, stopper.signal]) : stopper.signal;
    let ready: GatewayReady | undefined;
    let stopped: StopOutcome | undefined;
    options.progress(`preinit: booting the rootfs once as a gateway (until Ready, then an ordered stop)`);
    try {
      await runPreparedGateway(
        { ...prepared, env },
        {
          keepLogs: false,
          detached: false,
          stopTimeoutMs: GATEWAY_STOP_TIMEOUT_MS,
          signal,
          onEvent: (e) => {
            if (e.type === 'stage' || e.type === 'guest') options.progress(`preinit: ${e.message}`);
            else if (e.type === 'warning') options.warn(`preinit: ${e.message}`);
          },
          onReady: (r) => {
            ready = r;
            options.progress(`preinit: Ready in ${(r.readyMs / 1000).toFixed(1)} s; stopping it in order`);
            stopper.abort();
          },
          onStopped: (how) => {
            stopped = how;
          },
        },
      );
    } catch (err) {
      // Only the stop this function asked for after Ready ends the boot as expected.
      if (!ready || err !== stopper.signal.reason || options.signal?.aborted) throw err;
    }
    const readyNow = ready as GatewayReady | undefined;
    if (!readyNow) throw new VmError('the preinit boot ended before the gateway was ready');
    if (stopped !== 'clean') {
      // k3s killed mid-write: its state is not one to bake into every later boot.
      throw new VmError(
        `the preinit boot did not stop in order (${stopped ?? 'unknown'}): the rootfs is not used`,
        {
          hint: `k3s gets ${GATEWAY_STOP_TIMEOUT_MS / 1000} s to stop; try again, and if it persists boot the rootfs without --preinit and see its console log`,
        },
      );
    }
    const kine: KineReport | undefined = await cleanRootfsKineDatastore(rootfs);
    const record: PreinitRecord = {
      at: new Date().toISOString(),
      readyMs: readyNow.readyMs,
      totalMs: Math.round(performance.now() - t0),
      gatewayVersion: readyNow.gatewayVersion,
      caSha256: createHash('sha256').update(new X509Certificate(pki.caCert).raw).digest('hex'),
      kine: kine
        ? { rowsBefore: kine.rowsBefore, rowsAfter: kine.rowsAfter, bytesAfter: kine.bytesAfter }
        : null,
    };
    await new GuestRoot(rootfs).writeFileAtomic(INITIALIZED_FILE, `${JSON.stringify(record, null, 2)}\n`, {
      mode: 0o644,
    });
    return record;
  } finally {
    await fs.rm(scratch, { recursive: true, force: true });
    await fs.rm(ownDir, { recursive: true, force: true });
  }
}

/**
 * Refuses a preinit of `instance` whose boot instance (NAME-preinit) exists, before anything is
 * built (preinitRootfs refuses it again, atomically, when it starts).
 */
export async function checkPreinitName(instance: string): Promise<void> {
  const name = preinitInstanceName(instance);
  if (await lexists(instanceDir(readEnvironment(), name))) throw preinitNameTaken(name);
}

function preinitNameTaken(name: string): UsageError {
  return new UsageError(
    `--preinit boots the rootfs as instance '${name}', and an instance of that name exists`,
    {
      hint: `delete it (openshell-vm delete ${name}) or build under another --name`,
    },
  );
}
