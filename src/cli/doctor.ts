import { chooseAccelerator, readHostAccelFacts } from '../accel/probe.ts';
import { readEnvironment } from '../config/environment.ts';
import { OvmError } from '../errors.ts';
import { GUEST_ARCHES, hostArch } from '../host/arch.ts';
import { provisionCommand } from '../host/provision.ts';
import { findQemu, findVirtiofsd, loadGuestInputs } from '../host/toolchain.ts';
import { findGvproxy } from '../net/gvproxy.ts';
import { hasHypervisorEntitlement, signedNodePath } from '../vmm/libkrun/macos.ts';
import { describeRuntime, discoverRuntime } from '../vmm/libkrun/runtime.ts';
import { chooseBackend } from '../vmm/select.ts';
import { type OptionSpec, parseArgs } from './args.ts';

const OPTIONS: readonly OptionSpec[] = [
  { name: 'json', kind: 'flag' },
  { name: 'help', short: 'h', kind: 'flag' },
];

export const DOCTOR_HELP = `Usage: openshell-vm doctor [--json]

Checks what openshell-vm needs on this host and says how to fix what is missing: Node.js, QEMU
and the guest kernel per architecture, virtiofsd, gvproxy, the accelerator, the libkrun runtime
and (macOS) the runner's hypervisor entitlement, and which backend a run would use.
Exit code: 0 when the default backend can run, 1 otherwise.
`;

export interface DoctorCheck {
  readonly name: string;
  /** ok; missing (needed by the default path); optional (only some features need it). */
  readonly status: 'ok' | 'missing' | 'optional';
  readonly detail: string;
  readonly fix?: string | undefined;
}

async function check(name: string, optional: boolean, probe: () => Promise<string>): Promise<DoctorCheck> {
  try {
    return { name, status: 'ok', detail: await probe() };
  } catch (err) {
    const e = err as OvmError;
    return {
      name,
      status: optional ? 'optional' : 'missing',
      detail: e.message,
      fix: e instanceof OvmError ? e.hint : undefined,
    };
  }
}

export async function doctorChecks(): Promise<DoctorCheck[]> {
  const env = readEnvironment();
  const arch = hostArch();
  const checks: DoctorCheck[] = [];
  const major = Number(process.versions.node.split('.')[0]);
  checks.push(
    major >= 24
      ? { name: 'node', status: 'ok', detail: `Node.js ${process.version}` }
      : {
          name: 'node',
          status: 'missing',
          detail: `Node.js ${process.version} is older than 24`,
          fix: `run ${provisionCommand()}`,
        },
  );
  for (const guest of GUEST_ARCHES) {
    const optional = guest !== arch;
    checks.push(await check(`qemu (${guest})`, optional, () => findQemu(env, guest)));
    checks.push(
      await check(`guest kernel (${guest})`, optional, async () => {
        const g = await loadGuestInputs(env, guest);
        const { kernelChoiceFromEnvironment, resolveBootKernel } = await import('../kernel/selection.ts');
        const boot = await resolveBootKernel(env, g, kernelChoiceFromEnvironment());
        return `${boot.description}${boot.note ? ` (${boot.note})` : ''}, busybox ${g.busybox.version}`;
      }),
    );
  }
  if (process.platform === 'linux') checks.push(await check('virtiofsd', false, () => findVirtiofsd(env)));
  checks.push(await check('gvproxy', false, () => findGvproxy(env)));
  const facts = await readHostAccelFacts();
  if (arch) {
    const accel = chooseAccelerator(arch, facts);
    checks.push({ name: 'accelerator', status: 'ok', detail: `${accel.accel} (${accel.reason})` });
  }
  let runtimeDir: string | undefined;
  let runtimeWhy = '';
  const runtime = await check('libkrun runtime', true, async () => {
    const r = await discoverRuntime(env);
    runtimeDir = r.dir;
    return describeRuntime(r).join('; ');
  });
  if (runtime.status !== 'ok') runtimeWhy = runtime.detail;
  // A runtime the user pointed at must be valid.
  checks.push(env.runtimeBundleDir && runtime.status !== 'ok' ? { ...runtime, status: 'missing' } : runtime);
  if (process.platform === 'darwin') {
    const signed = signedNodePath(env, process.execPath, process.version);
    checks.push(
      (await hasHypervisorEntitlement(signed))
        ? {
            name: 'runner entitlement',
            status: 'ok',
            detail: `${signed} carries com.apple.security.hypervisor`,
          }
        : {
            name: 'runner entitlement',
            status: 'optional',
            detail: 'the signed runner is made on the first libkrun run',
            fix: 'needs codesign (xcode-select --install)',
          },
    );
  }
  const choice = chooseBackend(
    facts,
    runtimeDir ? { found: true, dir: runtimeDir } : { found: false, why: runtimeWhy },
  );
  checks.push({ name: 'default backend', status: 'ok', detail: `${choice.backend} (${choice.reason})` });
  return checks;
}

export async function doctorCommand(argv: readonly string[]): Promise<number> {
  const args = parseArgs(argv, OPTIONS, false, 'doctor');
  if (args.flags.has('help')) {
    process.stdout.write(DOCTOR_HELP);
    return 0;
  }
  const checks = await doctorChecks();
  const ok = !checks.some((c) => c.status === 'missing');
  if (args.flags.has('json')) {
    process.stdout.write(`${JSON.stringify({ ok, checks }, null, 2)}\n`);
  } else {
    const mark = { ok: 'ok     ', missing: 'MISSING', optional: 'absent ' } as const;
    for (const c of checks) {
      process.stdout.write(`${mark[c.status]}  ${c.name}: ${c.detail}\n`);
      if (c.fix && c.status !== 'ok') process.stdout.write(`         fix: ${c.fix}\n`);
    }
    process.stdout.write(ok ? 'ready\n' : 'not ready: fix the MISSING lines above\n');
  }
  return ok ? 0 : 1;
}
