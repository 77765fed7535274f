import { GATEWAY_STOP_TIMEOUT_MS, resetPreparedGateway, runPreparedGateway } from '../api/gateway.ts';
import { prepareGateway } from '../api/prepare-gateway.ts';
import { UsageError } from '../errors.ts';
import { describeVersion } from '../gateway/health.ts';
import { CLI_NAMES } from '../options/exec-options.ts';
import type { RawGatewayOptions } from '../options/gateway-options.ts';
import { GATEWAY_GUEST_PORT, type GatewayReady } from '../presets/gateway.ts';
import { type ParsedArgs, single } from './args.ts';
import { reportDetachedReady, runDetached } from './detach.ts';
import { Reporter } from './reporter.ts';
import { Interrupted, withSignals } from './signals.ts';

/**
 * `openshell-vm [OPTIONS]` without --exec: boots the gateway in the foreground, prints Ready
 * (or one JSON object with --json) on stdout, and runs until Ctrl-C/SIGTERM, which stops it and
 * exits 0. A failure before Ready exits 125 (130/143 when interrupted).
 */
export async function gatewayCommand(args: ParsedArgs, argv: readonly string[]): Promise<number> {
  const raw: RawGatewayOptions = {
    name: single(args, 'name'),
    rootfs: single(args, 'rootfs'),
    kernel: single(args, 'kernel'),
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
    snapshot: args.flags.has('snapshot') ? true : args.flags.has('no-snapshot') ? false : undefined,
  };
  if (args.flags.has('snapshot') && args.flags.has('no-snapshot')) {
    throw new UsageError('--snapshot and --no-snapshot contradict each other', { hint: 'give one of them' });
  }
  const json = args.flags.has('json');
  const reporter = new Reporter({
    stderr: process.stderr,
    quiet: args.flags.has('quiet'),
    eventsFile: single(args, 'events'),
  });
  // Everything that can fail without starting a process fails here (the library's preparation).
  const prepared = await prepareGateway(raw, CLI_NAMES, reporter);
  const { env, options } = prepared;
  const supervise = args.flags.has('supervise');
  if (args.flags.has('detach') && !supervise) {
    return runDetached(env, options.instance, argv, reporter, args.flags.has('quiet'));
  }

  if (args.flags.has('reset')) {
    const { removed, takenOut } = await resetPreparedGateway(prepared, (m) => reporter.warn(m));
    reporter.progress(
      `reset: cluster state and credentials of '${options.instance}' removed (${removed.length} paths); the built rootfs layers are kept`,
    );
    for (const line of takenOut) reporter.progress(`reset: taken out of ${line}`);
  }

  let ready: GatewayReady | undefined;
  try {
    return await withSignals(reporter, 'stopping the gateway', async (signal, force) => {
      await runPreparedGateway(prepared, {
        keepLogs: args.flags.has('keep-logs'),
        detached: supervise,
        stopTimeoutMs: GATEWAY_STOP_TIMEOUT_MS,
        signal,
        force,
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
      });
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
    ['health', `HEALTHY (${describeVersion(r.gatewayVersion)})`],
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
  return `Ready in ${(r.readyMs / 1000).toFixed(1)} s: gateway '${r.name}' (${r.backend}/${r.accel}, credentials ${r.bootstrap}${r.start === 'restored' ? ', restored from its saved state' : ''})\n${rows
    .map(([k, v]) => `  ${k.padEnd(11)}${v}\n`)
    .join(
      '',
    )}${detached ? `Running in the background: openshell-vm status ${r.name}; openshell-vm stop ${r.name} stops it.` : 'Ctrl-C stops it (twice: at once).'}\n`;
}
