import fs from 'node:fs/promises';
import { PassThrough } from 'node:stream';
import type * as K8s from '@kubernetes/client-node';
import { abortableSleep } from '../supervisor/wait.ts';
import type { MtlsBundle } from './client-config.ts';
import { callHealth, describeVersion, HEALTH_METHOD } from './health.ts';
import { readGatewayKubeconfig } from './kubeconfig-entry.ts';
import { type HandshakeOutcome, mtlsHandshake, probeTcp } from './readiness.ts';

export type CheckStatus = 'pass' | 'fail';

export interface CheckResult {
  readonly name: string;
  readonly status: CheckStatus;
  readonly detail: string;
}

export interface VerifyReport {
  readonly kubeconfig: string;
  readonly server: string;
  /** false: the API server did not answer within the timeout (nothing else was checked). */
  readonly reachable: boolean;
  readonly pass: number;
  readonly fail: number;
  readonly results: readonly CheckResult[];
}

export interface VerifyOptions {
  readonly kubeconfig: string;
  readonly timeoutMs: number;
  /** The gateway's host port and client credentials, for the mTLS check. */
  readonly gateway?: { readonly port: number; readonly bundle: MtlsBundle } | undefined;
  readonly namespace?: string;
  readonly pod?: string;
  readonly signal?: AbortSignal | undefined;
  /** Run commands in the gateway pod (the in-cluster API check); tests without exec turn it off. */
  readonly exec?: boolean;
}

const POD_CIDR = /^10\.42\.0\.\d+$/;

/**
 * The seed's verification matrix, through the Kubernetes API with the gateway's kubeconfig:
 * node present and Ready; kube-system pods scheduled; no sandbox-creation failures, CrashLoopBackOff,
 * CNI/bridge errors, port clashes or host-network fallbacks in the events; the OpenShell namespace,
 * its pod Ready with an address from the bridge CNI, its services; the kubernetes service's VIP and
 * that the pod reaches it (kube-proxy); and, from the host, the gateway port answering mTLS with the
 * client credentials, and its openshell.v1.OpenShell/Health answering HEALTHY. (The seed looked
 * for cni0 inside the pod, which a pod-network pod cannot see.)
 */
export async function verifyGateway(options: VerifyOptions): Promise<VerifyReport> {
  // The Kubernetes client (most of the installed size, ~0.3 s to load) only when a gateway is checked.
  const k8s = await import('@kubernetes/client-node');
  const kc = await loadVerifiedKubeconfig(k8s, options.kubeconfig);
  const server = kc.getCurrentCluster()?.server ?? '';
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const ns = options.namespace ?? 'openshell';
  const podName = options.pod ?? 'openshell-0';
  const results: CheckResult[] = [];
  const add = (name: string, ok: boolean, detail: string) =>
    results.push({ name, status: ok ? 'pass' : 'fail', detail });
  const report = (reachable: boolean): VerifyReport => ({
    kubeconfig: options.kubeconfig,
    server,
    reachable,
    pass: results.filter((r) => r.status === 'pass').length,
    fail: results.filter((r) => r.status === 'fail').length,
    results,
  });

  // Prerequisite: the API server answers (polled every 2 s up to the timeout).
  const t0 = performance.now();
  let nodes: K8s.V1NodeList | undefined;
  let lastError = '';
  for (;;) {
    try {
      nodes = await core.listNode();
      break;
    } catch (err) {
      lastError = describe(err);
    }
    if (performance.now() - t0 > options.timeoutMs) {
      add(
        'api-server',
        false,
        `${server} did not answer within ${Math.round(options.timeoutMs / 1000)} s: ${lastError}`,
      );
      // The gateway's own port is checked all the same: it tells a dead VM from a dead API server.
      await gatewayChecks(options, add);
      return report(false);
    }
    await abortableSleep(2_000, options.signal);
  }
  add('api-server', true, server);

  const node = nodes.items[0];
  add('node-exists', Boolean(node), node ? `node ${node.metadata?.name}` : 'no node registered');
  const ready = node?.status?.conditions?.find((c) => c.type === 'Ready');
  add(
    'node-ready',
    ready?.status === 'True',
    ready ? `Ready=${ready.status}${ready.reason ? ` (${ready.reason})` : ''}` : 'no Ready condition',
  );

  const safe = async <T>(name: string, fn: () => Promise<T>): Promise<T | undefined> => {
    try {
      return await fn();
    } catch (err) {
      add(name, false, describe(err));
      return undefined;
    }
  };

  const system = await safe('kube-system-pods', () => core.listNamespacedPod({ namespace: 'kube-system' }));
  if (system) {
    const pending = system.items.filter((p) => p.status?.phase === 'Pending').map((p) => p.metadata?.name);
    add(
      'kube-system-pods',
      pending.length === 0,
      pending.length ? `Pending: ${pending.join(', ')}` : `${system.items.length} pods, none Pending`,
    );
  }

  const events = await safe('events', () => core.listEventForAllNamespaces());
  if (events) {
    const matching = (test: (e: K8s.CoreV1Event) => boolean) =>
      events.items
        .filter(test)
        .map(
          (e) =>
            `${e.involvedObject?.namespace ?? ''}/${e.involvedObject?.name ?? ''}: ${e.reason}: ${(e.message ?? '').slice(0, 160)}`,
        );
    const report = (name: string, found: string[], none: string) =>
      add(name, found.length === 0, found.length ? found.slice(0, 3).join('; ') : none);
    report(
      'no-sandbox-failures',
      matching((e) => e.reason === 'FailedCreatePodSandBox'),
      'no FailedCreatePodSandBox events',
    );
    report(
      'no-cni-errors',
      matching((e) => e.type === 'Warning' && /cni0|bridge|\bCNI\b/i.test(e.message ?? '')),
      'no bridge/CNI warnings',
    );
    report(
      'no-port-clash',
      matching((e) => /address already in use/i.test(e.message ?? '')),
      'no "address already in use"',
    );
    report(
      'no-hostnetwork-fallback',
      matching((e) => /hostNetwork fallback/i.test(e.message ?? '')),
      'no host-network fallback',
    );
  }

  const all = await safe('no-crashloop', () => core.listPodForAllNamespaces());
  if (all) {
    const looping = all.items
      .filter((p) =>
        p.status?.containerStatuses?.some((c) => c.state?.waiting?.reason === 'CrashLoopBackOff'),
      )
      .map((p) => `${p.metadata?.namespace}/${p.metadata?.name}`);
    add(
      'no-crashloop',
      looping.length === 0,
      looping.length ? `CrashLoopBackOff: ${looping.join(', ')}` : 'no container in CrashLoopBackOff',
    );
  }

  const namespace = await safe(`namespace-${ns}`, () => core.readNamespace({ name: ns }));
  if (namespace)
    add(`namespace-${ns}`, namespace.status?.phase === 'Active', `phase ${namespace.status?.phase}`);

  const pod = await safe('gateway-pod-ready', () => core.readNamespacedPod({ name: podName, namespace: ns }));
  if (pod) {
    const podReady = pod.status?.conditions?.find((c) => c.type === 'Ready')?.status === 'True';
    add('gateway-pod-ready', podReady, `${ns}/${podName} phase ${pod.status?.phase}, Ready=${podReady}`);
    const ip = pod.status?.podIP ?? '';
    add(
      'gateway-pod-network',
      POD_CIDR.test(ip),
      ip ? `pod IP ${ip} (bridge CNI range 10.42.0.0/24)` : 'no pod IP',
    );
  }

  const services = await safe('gateway-services', () => core.listNamespacedService({ namespace: ns }));
  if (services) {
    const names = services.items.map((s) => s.metadata?.name);
    add('gateway-services', names.length > 0, names.length ? names.join(', ') : `no services in ${ns}`);
  }

  const kubernetes = await safe('kubernetes-service-vip', () =>
    core.readNamespacedService({ name: 'kubernetes', namespace: 'default' }),
  );
  if (kubernetes) {
    const vip = kubernetes.spec?.clusterIP;
    add('kubernetes-service-vip', Boolean(vip && vip !== 'None'), vip ? `ClusterIP ${vip}` : 'no ClusterIP');
  }

  if (options.exec !== false) {
    // From inside the gateway pod: kube-proxy (nftables) and DNS make the API reachable by name.
    const script =
      'u=https://kubernetes.default.svc/healthz; if command -v wget >/dev/null; then wget -q -T 5 --no-check-certificate -O - $u; elif command -v curl >/dev/null; then curl -sk -m 5 $u; else echo "no wget or curl in the pod" >&2; exit 3; fi';
    const out = await execInPod(k8s, kc, ns, podName, ['sh', '-c', script], 20_000).catch((err: unknown) => ({
      code: -1,
      stdout: '',
      stderr: describe(err),
    }));
    // An unauthenticated /healthz may answer "ok" or 401/403: any HTTP answer proves the path.
    // (Only from the command itself: code -1 is exec failing, whatever its message says.)
    const reached =
      out.code === 0 ||
      (out.code > 0 && /\b(401|403)\b|Unauthorized|Forbidden/i.test(out.stderr + out.stdout));
    add(
      'pod-reaches-kubernetes-svc',
      reached,
      reached
        ? 'kubernetes.default.svc answered from the pod'
        : `exec in ${ns}/${podName}: ${(out.stderr || out.stdout || `exit ${out.code}`).trim().slice(0, 200)}`,
    );
  }

  await gatewayChecks(options, add);
  return report(true);
}

/** From the host: the gateway port answers mTLS with the client credentials, and Health is HEALTHY. */
async function gatewayChecks(
  options: VerifyOptions,
  add: (name: string, ok: boolean, detail: string) => void,
): Promise<void> {
  if (!options.gateway) return;
  const { port, bundle } = options.gateway;
  let ok = false;
  let detail = '';
  let outcome: HandshakeOutcome = 'no-answer';
  try {
    outcome = (await probeTcp(port)) ? await mtlsHandshake(port, bundle) : 'no-answer';
    ok = outcome === 'ok' || outcome === 'no-h2';
    detail = ok
      ? `127.0.0.1:${port} answers mTLS with the client credentials`
      : outcome === 'closed'
        ? `127.0.0.1:${port} closes the connection right after the TLS handshake (it refuses the client certificate)`
        : `127.0.0.1:${port} does not answer TLS`;
  } catch (err) {
    detail = describe(err);
  }
  add('gateway-port-mtls', ok, detail);
  // The gateway's own readiness, as the CLI's readiness sees it: Health over the same mTLS.
  if (ok && outcome === 'no-h2') {
    add('gateway-health', false, `127.0.0.1:${port} speaks TLS without HTTP/2 (ALPN): no gRPC server`);
  } else if (ok) {
    let healthy = false;
    try {
      const probe = await callHealth(port, bundle, { signal: options.signal });
      healthy = probe.kind === 'answer' && probe.status === 'HEALTHY';
      detail =
        probe.kind === 'answer'
          ? `${HEALTH_METHOD.slice(1)}: ${probe.status} (${describeVersion(probe.version)})`
          : `${HEALTH_METHOD.slice(1)}: no answer (${probe.detail})`;
    } catch (err) {
      detail = describe(err);
    }
    add('gateway-health', healthy, detail);
  } else add('gateway-health', false, 'not called: the gateway port does not answer mTLS');
}

/**
 * The client configuration from the validated entry of `file` only (readGatewayKubeconfig): the
 * loopback server, the CA and the client certificate and key as data. The file is never handed to
 * the client library, so no exec plugin, auth provider, token file or proxy in it is ever used.
 */
async function loadVerifiedKubeconfig(k8s: typeof K8s, file: string): Promise<K8s.KubeConfig> {
  const entry = readGatewayKubeconfig(await fs.readFile(file, 'utf8'), file);
  const kc = new k8s.KubeConfig();
  kc.loadFromClusterAndUser(
    { name: entry.name, server: entry.server, caData: entry.credentials.caData, skipTLSVerify: false },
    { name: entry.name, certData: entry.credentials.certData, keyData: entry.credentials.keyData },
  );
  return kc;
}

async function execInPod(
  k8s: typeof K8s,
  kc: K8s.KubeConfig,
  namespace: string,
  pod: string,
  command: string[],
  timeoutMs: number,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (d: Buffer) => (out += d.toString()));
  stderr.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs / 1000} s`)), timeoutMs);
    new k8s.Exec(kc)
      .exec(namespace, pod, '', command, stdout, stderr, null, false, (status) => {
        clearTimeout(timer);
        const code =
          status.status === 'Success'
            ? 0
            : Number(status.details?.causes?.find((c) => c.reason === 'ExitCode')?.message ?? 1);
        resolve({
          code,
          stdout: out,
          stderr: err || (status.status === 'Success' ? '' : (status.message ?? '')),
        });
      })
      .catch((e: unknown) => {
        clearTimeout(timer);
        reject(e);
      });
  });
}

function describe(err: unknown): string {
  if (err && typeof err === 'object') {
    const e = err as {
      code?: number | string;
      body?: unknown;
      message?: string;
      cause?: { code?: string; message?: string };
    };
    // fetch failures carry the reason in their cause chain (ECONNREFUSED, a TLS error).
    const reasons: string[] = [];
    type Cause = { code?: string; message?: string; cause?: unknown };
    for (let c = e.cause as Cause | undefined; c; c = c.cause as Cause | undefined) {
      reasons.push(c.code ?? c.message ?? '');
    }
    if (reasons.length) return [e.message, ...reasons].filter(Boolean).join(': ');
    if (typeof e.code === 'number') {
      let reason = '';
      try {
        const body = typeof e.body === 'string' ? JSON.parse(e.body) : e.body;
        reason = (body as { message?: string })?.message ?? '';
      } catch {
        // not JSON
      }
      return `HTTP ${e.code}${reason ? `: ${reason}` : ''}`;
    }
    if (e.message) return e.message.split('\n')[0] ?? e.message;
  }
  return String(err);
}
