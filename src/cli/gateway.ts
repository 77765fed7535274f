import os from 'node:os';
import path from 'node:path';
import { readEnvironment } from '../config/environment.ts';
import { stableApiPort } from '../gateway/api-port.ts';
import { lexists } from '../host/fs.ts';
import { ensureRootLocation } from '../instance/root-location.ts';
import { ensureInstanceDir, instanceDir } from '../instance/runs.ts';
import { checkHostPortsFree } from '../net/ports.ts';
import { type RawGatewayOptions, resolveGatewayOptions } from '../options/gateway-options.ts';
import {
  GATEWAY_GUEST_PORT,
  type GatewayReady,
  KUBE_API_GUEST_PORT,
  runGateway,
} from '../presets/gateway.ts';
import { resetGateway } from '../presets/gateway-cleanup.ts';
import { rootfsDir } from '../rootfs/build.ts';
import { readRootfsRecord } from '../rootfs/record.ts';
import { type ParsedArgs, single } from './args.ts';
import { reportDetachedReady, runDetached } from './detach.ts';
import { Reporter } from './reporter.ts';
import { Interrupted, withSignals } from './signals.ts';
import { chooseVmm } from './vmm-choice.ts';

/** How long a stop gives k3s to wind down before the VM is killed. */
export const GATEWAY_STOP_TIMEOUT_MS = 30_000;

/**
 * `openshell-vm [OPTIONS]` without --exec: boots the gateway in the foreground, prints Ready
 * (or one JSON object with --json) on stdout, and runs until Ctrl-C/SIGTERM, which stops it and
 * exits 0. A failure before Ready exits 125 (130/143 when interrupted).
 */
export async function gatewayCommand(args: ParsedArgs, argv: readonly string[]): Promise<number> {
  const raw: RawGatewayOptions = {
    name: single(args, 'name'),
    rootfs: single(args, 'rootfs'),
    ports: args.values.get('port'),
    apiPort: single(args, 'api-port'),
    vcpus: single(args, 'vcpus'),
    mem: single(args, 'mem'),
    arch: single(args, 'arch'),
    accel: single(args, 'accel'),
    backend: single(args, 'backend'),
    net: single(args, 'net'),
    readyTimeout: single(args, 'ready-timeout'),
    tlsSans: args.values.get('tls-san'),
    mergeKubeconfig: args.flags.has('merge-kubeconfig'),
    useContext: args.flags.has('use-context'),
  };
  const json = args.flags.has('json');
  const reporter = new Reporter({
    stderr: process.stderr,
    quiet: args.flags.has('quiet'),
    eventsFile: single(args, 'events'),
  });
  const { options, warnings } = resolveGatewayOptions(raw, {
    cpus: os.availableParallelism(),
    memMib: Math.floor(os.totalmem() / (1024 * 1024)),
  });
  for (const warning of warnings) reporter.warn(warning);

  // Everything that can fail without starting a process fails here.
  const env = readEnvironment();
  // A rootfs of the user's choice only where no other local user can reach it (the guest's root
  // owns it); the instance's own is inside the instance directory, checked (and tightened) before
  // anything in it is read, since another user may have planted files there while it was open.
  const rootfs =
    options.rootfs === undefined
      ? rootfsDir(env, options.instance)
      : await ensureRootLocation(options.rootfs);
  if (options.rootfs !== undefined || (await lexists(instanceDir(env, options.instance))))
    await ensureInstanceDir(env, options.instance, (m) => reporter.warn(m));
  await readRootfsRecord(rootfs); // a missing rootfs: "build it: openshell-vm prepare-rootfs --name N"
  const api = {
    hostAddress: '127.0.0.1',
    hostPort:
      options.apiPort ??
      (await stableApiPort(instanceDir(env, options.instance), { warn: (m) => reporter.warn(m) })),
    guestPort: KUBE_API_GUEST_PORT,
  };
  const forwards = [options.gateway, api, ...options.extraForwards];
  const { backend, accel } = await chooseVmm(
    env,
    { ...options, network: 'gvproxy', forwards, purpose: 'gateway' },
    reporter,
  );
  await checkHostPortsFree(forwards);
  const supervise = args.flags.has('supervise');
  if (args.flags.has('detach') && !supervise) {
    return runDetached(env, options.instance, argv, reporter, args.flags.has('quiet'));
  }

  if (args.flags.has('reset')) {
    const { removed, takenOut } = await resetGateway(env, options.instance, rootfs, (m) => reporter.warn(m));
    reporter.progress(
      `reset: cluster state and credentials of '${options.instance}' removed (${removed.length} paths); the built rootfs layers are kept`,
    );
    for (const line of takenOut) reporter.progress(`reset: taken out of ${line}`);
  }

  let ready: GatewayReady | undefined;
  try {
    return await withSignals(reporter, 'stopping the gateway', async (signal, force) => {
      await runGateway(
        env,
        {
          arch: options.arch,
          accel,
          vcpus: options.vcpus,
          memMib: options.memMib,
          instance: options.instance,
          rootfs,
          gateway: options.gateway,
          api,
          extraForwards: options.extraForwards,
          readyTimeoutMs: options.readyTimeoutMs,
          mergeKubeconfig: options.mergeKubeconfig ? path.join(env.kubeDir, 'config') : undefined,
          useContext: options.useContext,
          extraSans: options.extraSans,
          keepLogs: args.flags.has('keep-logs'),
          stopTimeoutMs: GATEWAY_STOP_TIMEOUT_MS,
        },
        {
          backend,
          signal,
          force,
          detached: supervise,
          kubeDir: env.kubeDir,
          onEvent: (e) => {
            if (e.type === 'guest') reporter.progress(`guest: ${e.message}`);
            else if (e.type === 'agent') reporter.progress(e.message);
            else if (e.type === 'clock') reporter.warn(e.message);
            else if (e.type === 'stage' && e.stage === 'stopping') {
              if (ready || signal.aborted) reporter.progress(e.message);
            } else reporter.event(e as Record<string, unknown>);
          },
          onReady: (r) => {
            ready = r;
            reporter.event({ type: 'ready', ...r });
            const text = json ? `${JSON.stringify(r)}\n` : renderReady(r, supervise);
            if (supervise) reportDetachedReady(text);
            else process.stdout.write(text);
          },
        },
      );
      return 0;
    });
  } catch (err) {
    // Ctrl-C or SIGTERM after Ready is how a foreground gateway is stopped: not a failure.
    if (err instanceof Interrupted && ready) return 0;
    throw err;
  }
}

export function renderReady(r: GatewayReady, detached = false): string {
  const rows: [string, string][] = [
    ['endpoint', `${r.endpoint} (mTLS; guest port ${GATEWAY_GUEST_PORT})`],
    ['mTLS', `${r.mtlsDir}/ (ca.crt, tls.crt, tls.key)`],
    ['kubeconfig', r.kubeconfig],
    ['kube API', r.kubeApi],
  ];
  if (r.mergedInto) {
    rows.push([
      'merged',
      `context '${r.name}' in ${r.mergedInto}${r.kubeconfigBackup ? ` (backup ${r.kubeconfigBackup})` : ''}`,
    ]);
  }
  rows.push(['try', `KUBECONFIG=${r.kubeconfig} kubectl get pods -A`]);
  rows.push(['console', r.consoleLog]);
  return `Ready in ${(r.readyMs / 1000).toFixed(1)} s: gateway '${r.name}' (${r.backend}/${r.accel}, credentials ${r.bootstrap})\n${rows
    .map(([k, v]) => `  ${k.padEnd(11)}${v}\n`)
    .join(
      '',
    )}${detached ? `Running in the background: openshell-vm status ${r.name}; openshell-vm stop ${r.name} stops it.` : 'Ctrl-C stops it (twice: at once).'}\n`;
}
