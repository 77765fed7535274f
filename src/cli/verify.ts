import fs from 'node:fs/promises';
import path from 'node:path';
import { readEnvironment } from '../config/environment.ts';
import { HostError, isErrno, UsageError } from '../errors.ts';
import { gatewayDir, readMtlsBundle } from '../gateway/client-config.ts';
import { type VerifyReport, verifyGateway } from '../gateway/verify.ts';
import { parseInstanceName } from '../instance/runs.ts';
import { integer } from '../options/exec-options.ts';
import { type OptionSpec, parseArgs, single } from './args.ts';

const OPTIONS: readonly OptionSpec[] = [
  { name: 'name', kind: 'value' },
  { name: 'kubeconfig', kind: 'value' },
  { name: 'timeout', kind: 'value' },
  { name: 'json', kind: 'flag' },
  { name: 'debug', kind: 'flag' },
  { name: 'help', short: 'h', kind: 'flag' },
];

export const VERIFY_HELP = `Usage: openshell-vm verify [--name NAME] [--kubeconfig FILE] [--timeout S] [--json]

Checks a running gateway through the Kubernetes API (kubeconfig default ~/.kube/NAME.yaml) and
its forwarded port (mTLS with the client credentials of gateway NAME): node Ready, kube-system
pods scheduled, no sandbox-creation failures, CrashLoopBackOff, CNI errors, port clashes or
host-network fallbacks, the openshell namespace, pod openshell-0 Ready on the bridge network, its
services, the kubernetes service VIP reachable from the pod, and the gateway port answering
mTLS and openshell.v1.OpenShell/Health with HEALTHY (checked also when the API does not answer).
PASS/FAIL per check.
Exit code: 0 every check passed, 1 some failed, 2 no kubeconfig or the API did not answer
within --timeout (default 120 s).
`;

export async function verifyCommand(argv: readonly string[]): Promise<number> {
  const args = parseArgs(argv, OPTIONS, false, 'verify');
  if (args.flags.has('help')) {
    process.stdout.write(VERIFY_HELP);
    return 0;
  }
  const name = parseInstanceName(single(args, 'name'));
  const timeoutS = integer('--timeout', single(args, 'timeout') ?? '120', { min: 1, max: 86_400 }, 'seconds');
  const env = readEnvironment();
  const kubeconfig = path.resolve(single(args, 'kubeconfig') ?? path.join(env.kubeDir, `${name}.yaml`));
  try {
    await fs.access(kubeconfig);
  } catch {
    throw new UsageError(`no kubeconfig at ${kubeconfig}`, {
      hint: `start the gateway first (openshell-vm --name ${name}), or give --kubeconfig FILE`,
    });
  }
  const gateway = await gatewayTarget(env.openshellConfigDir, name);
  const report = await verifyGateway({ kubeconfig, timeoutMs: timeoutS * 1000, gateway });
  process.stdout.write(
    args.flags.has('json') ? `${JSON.stringify(report, null, 2)}\n` : renderVerifyReport(report, name),
  );
  if (!report.reachable) return 2;
  return report.fail ? 1 : 0;
}

async function gatewayTarget(configDir: string, name: string) {
  let meta: { gateway_port?: number };
  try {
    meta = JSON.parse(await fs.readFile(path.join(gatewayDir(configDir, name), 'metadata.json'), 'utf8'));
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw new HostError(`cannot read the metadata of gateway '${name}'`, { cause: err });
  }
  const bundle = await readMtlsBundle(configDir, name);
  return bundle && typeof meta.gateway_port === 'number' ? { port: meta.gateway_port, bundle } : undefined;
}

/** The report as PASS/FAIL lines; an API that did not answer ends with how to start instance `name`. */
export function renderVerifyReport(r: VerifyReport, name: string): string {
  const lines = [`verify: ${r.server} (kubeconfig ${r.kubeconfig})`];
  for (const c of r.results)
    lines.push(`  ${c.status === 'pass' ? 'PASS' : 'FAIL'}  ${c.name.padEnd(28)} ${c.detail}`);
  lines.push(
    r.reachable
      ? `${r.pass} passed, ${r.fail} failed`
      : `the Kubernetes API did not answer: is the gateway running? (see: openshell-vm status ${name}; start it: openshell-vm --name ${name} --detach)`,
  );
  return `${lines.join('\n')}\n`;
}
