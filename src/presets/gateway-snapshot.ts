import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import { Writable } from 'node:stream';
import { RestoreError, VmError } from '../errors.ts';
import type { MtlsBundle } from '../gateway/client-config.ts';
import { TLS_SECRETS_MANIFEST } from '../gateway/tls-secrets.ts';
import type { AgentBinary } from '../guest/agent-build.ts';
import { GuestRoot } from '../host/guest-root.ts';
import { SNAPSHOT_INPUTS, type SnapshotInputs } from '../instance/snapshot.ts';
import type { InstanceHandle } from '../instance/start.ts';
import { ROOTFS_PATHS } from '../rootfs/layout.ts';
import type { RootfsRecord } from '../rootfs/record.ts';
import { abortableSleep } from '../supervisor/wait.ts';

/**
 * What a gateway snapshot depends on (src/instance/snapshot.ts keeps and compares them): every
 * input of the saved VM as a fingerprint. A change in any one makes the next start a cold boot.
 */
export async function gatewaySnapshotInputs(options: {
  readonly rootfs: string;
  readonly record: RootfsRecord;
  readonly agent: AgentBinary | undefined;
  readonly bundle: MtlsBundle;
  readonly kernel: string;
  readonly initramfs: string;
  readonly vmm: string;
  readonly machine: string;
}): Promise<SnapshotInputs> {
  const root = new GuestRoot(options.rootfs);
  const manifests = ROOTFS_PATHS.k3sManifests;
  const files = await Promise.all([
    root.readFile(`${manifests}/openshell-helmchart.yaml`, { maxBytes: 4 << 20 }),
    root.readFile(`${manifests}/${TLS_SECRETS_MANIFEST}`, { maxBytes: 4 << 20 }),
  ]);
  return {
    format: Object.keys(SNAPSHOT_INPUTS).join(','),
    rootfs: digest(JSON.stringify(options.record)),
    rootfsFiles: digest(...files.map((f) => f ?? ''), options.agent?.sha256 ?? ''),
    credentials: digest(options.bundle.caCert, options.bundle.clientCert),
    kernel: await fileDigest(options.kernel),
    initramfs: await fileDigest(options.initramfs),
    vmm: options.vmm,
    machine: options.machine,
  };
}

function digest(...parts: (string | Buffer)[]): string {
  const h = createHash('sha256');
  for (const p of parts) {
    h.update(String(Buffer.byteLength(p)));
    h.update(':');
    h.update(p);
  }
  return h.digest('hex');
}

async function fileDigest(file: string): Promise<string> {
  if (!file) return '';
  return createHash('sha256')
    .update(await fs.readFile(file))
    .digest('hex');
}

/** How long one read through the agent may take. */
const READ_TIMEOUT_MS = 15_000;

/** The largest kubeconfig read from the guest (k3s writes a few KiB). */
const KUBECONFIG_MAX_BYTES = 256 * 1024;

/**
 * A file of the running guest read through its agent (`cat`), for a root the host cannot read
 * (a disk image): its bytes, or undefined when it is absent or unreadable. The guest's answer is
 * untrusted: over `maxBytes` is an error, never buffered whole.
 */
export async function readGuestFile(
  handle: Pick<InstanceHandle, 'exec'>,
  file: string,
  maxBytes: number,
  timeoutMs = READ_TIMEOUT_MS,
): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  const sink = (keep: boolean) =>
    new Writable({
      write(chunk: Buffer, _enc, done) {
        if (keep) {
          size += chunk.length;
          if (size <= maxBytes) chunks.push(chunk);
        }
        done();
      },
    });
  const session = handle.exec(
    { argv: ['cat', '--', file], env: [], workdir: '', tty: false, rows: 0, cols: 0 },
    { stdout: sink(true), stderr: sink(false) },
  );
  // A guest that never ends the command must not hold the start.
  let timer: NodeJS.Timeout | undefined;
  const code = await Promise.race([
    session.done,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        session.close();
        reject(new VmError(`the guest did not answer \`cat ${file}\` within ${timeoutMs / 1000} s`));
      }, timeoutMs);
    }),
  ]).finally(() => clearTimeout(timer));
  if (size > maxBytes) throw new VmError(`the guest's ${file} is over ${maxBytes} bytes`);
  return code === 0 ? Buffer.concat(chunks) : undefined;
}

/** Waits for k3s's kubeconfig in a disk-root guest, read through the agent (as waitForKubeconfig). */
export async function waitForGuestKubeconfig(
  handle: InstanceHandle,
  file: string,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<string | undefined> {
  const t0 = performance.now();
  for (;;) {
    const bytes = await readGuestFile(handle, `/${file}`, KUBECONFIG_MAX_BYTES).catch((err) => {
      if (handle.vm.hasExited) return undefined;
      throw err;
    });
    const text = bytes?.toString('utf8');
    if (text?.includes('clusters:') && text.includes('users:')) return text;
    if (handle.vm.hasExited || performance.now() - t0 > timeoutMs) return undefined;
    await abortableSleep(500, signal);
  }
}

/** The longest a restored gateway's checks may take (a restore is Ready in seconds). */
export const RESTORE_READY_MAX_MS = 120_000;

/** How long a restored gateway gets to be Ready: min(--ready-timeout, RESTORE_READY_MAX_MS). */
export function restoreReadyBudgetMs(readyTimeoutMs: number): number {
  return Math.min(readyTimeoutMs, RESTORE_READY_MAX_MS);
}

/**
 * A failure while checking a restored guest (its agent, its readiness, its kubeconfig) as a
 * RestoreError with the same words, hint and cause; an abort's reason stays as it is.
 */
export function restoreCheckFailure(err: unknown, signal: AbortSignal | undefined): unknown {
  if (signal?.aborted || err instanceof RestoreError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new RestoreError(message, { hint: err instanceof VmError ? err.hint : undefined, cause: err });
}

/**
 * Whether a failed start drops its saved state and boots cold: only when it was a restore that
 * did not come back (a RestoreError), and not aborted. Anything else (a host port in use, a
 * missing tool) fails the start as it would without snapshots, and the state is kept.
 */
export function coldRetryAfter(err: unknown, restoring: boolean, signal: AbortSignal | undefined): boolean {
  return restoring && !signal?.aborted && err instanceof RestoreError;
}
