import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { chooseAccelerator, readHostAccelFacts } from '../accel/probe.ts';
import { type HostEnvironment, readEnvironment } from '../config/environment.ts';
import { HostError, OvmError } from '../errors.ts';
import { GUEST_ARCHES, hostArch } from '../host/arch.ts';
import { type DoctorCheck, failed, passed } from '../host/doctor-check.ts';
import { gvproxyCheck } from '../host/doctor-gvproxy.ts';
import {
  type FoundLibrary,
  type GatewayOptions,
  gatewayOptionsCheck,
  type LibkrunfwFacts,
  type LibkrunPlatform,
  LOADER_VARIABLE,
  libkrunCheck,
  libkrunfwCheck,
  loaderCheck,
  runnerCheck,
} from '../host/doctor-libkrun.ts';
import { errorOf, parseRuntimeReport } from '../host/doctor-runtime-report.ts';
import { pathExists } from '../host/fs.ts';
import { siblingModulePath } from '../host/module-path.ts';
import { provisionCommand } from '../host/provision.ts';
import { findQemu, findVirtiofsd, loadGuestInputs } from '../host/toolchain.ts';
import { findGvproxy } from '../net/gvproxy.ts';
import {
  codesignArgs,
  HYPERVISOR_ENTITLEMENT,
  parseCodesignEntitlements,
  parseCodesignSignature,
  readRunnerSignature,
  signedNodePath,
} from '../vmm/libkrun/macos.ts';
import {
  describeRuntime,
  discoverRuntime,
  findLibkrunfwDir,
  type RuntimeBundle,
  type RuntimeDir,
} from '../vmm/libkrun/runtime.ts';
import { backendFeatures } from '../vmm/registry.ts';
import { chooseBackend } from '../vmm/select.ts';
import { type OptionSpec, parseArgs } from './args.ts';

export type { DoctorCheck } from '../host/doctor-check.ts';

const OPTIONS: readonly OptionSpec[] = [
  { name: 'json', kind: 'flag' },
  { name: 'help', short: 'h', kind: 'flag' },
];

export const DOCTOR_HELP = `Usage: openshell-vm doctor [--json]

Checks what openshell-vm needs on this host and says how to fix what is missing: Node.js, QEMU
and the guest kernel per architecture, virtiofsd, gvproxy (with -listen-qemu, the unix stream
transport used on Linux and macOS alike), the accelerator, and the libkrun runtime: libkrun and
libkrunfw with their versions (libkrunfw's ABI through krunfw_get_version), whether its kernel has
the gateway's options built in, the loader path the runner gets and, on macOS, the runner's
hypervisor entitlement; then which backend a run would use.
--json prints {ok, checks: [{name, ok, status, detail, fix}]}.
Exit code: 0 when the default backend can run, 1 otherwise.
`;

async function check(name: string, optional: boolean, probe: () => Promise<string>): Promise<DoctorCheck> {
  try {
    return passed(name, await probe());
  } catch (err) {
    if (!(err instanceof OvmError)) throw err;
    return failed(name, !optional, err.message, err.hint);
  }
}

/** stdout and stderr of a command, whatever its exit status (gvproxy -help exits 2). */
function outputOf(
  command: string,
  args: readonly string[],
  options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<{ stdout: string; stderr: string; code: number | null }> {
  return new Promise((resolve) => {
    execFile(
      command,
      [...args],
      { encoding: 'utf8', env: options.env, timeout: options.timeoutMs ?? 10_000, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
        resolve({ stdout, stderr, code });
      },
    );
  });
}

const GVPROXY_FIX: Readonly<Record<LibkrunPlatform, string>> = {
  darwin:
    'brew install podman (its gvproxy, in /opt/homebrew/opt/podman/libexec/podman, is found), or put a gvproxy on PATH or in OPENSHELL_VM_GVPROXY',
  linux: `run ${provisionCommand()}, or put a gvproxy on PATH or in OPENSHELL_VM_GVPROXY`,
};

async function gvproxyDoctor(env: HostEnvironment, platform: LibkrunPlatform): Promise<DoctorCheck> {
  let binary: string;
  try {
    binary = await findGvproxy(env);
  } catch (err) {
    if (!(err instanceof HostError)) throw err;
    return failed('gvproxy', true, err.message, platform === 'darwin' ? GVPROXY_FIX.darwin : err.hint);
  }
  const help = await outputOf(binary, ['-help']);
  const version = await outputOf(binary, ['-version']);
  return gvproxyCheck(
    {
      binary,
      usage: `${help.stdout}\n${help.stderr}`,
      version: version.code === 0 ? version.stdout : undefined,
    },
    GVPROXY_FIX[platform],
  );
}

async function found(file: string): Promise<FoundLibrary> {
  return { path: file, resolved: await fs.realpath(file).catch(() => file) };
}

/**
 * What a runtime directory's libkrunfw carries, read by `openshell-vm runtime --json` on that
 * directory in a child process: loading a library through the FFI (koffi) stays out of doctor's
 * process, and a damaged library crashes the child, not the report.
 */
async function readLibkrunfw(
  dir: RuntimeDir,
): Promise<{ facts: LibkrunfwFacts; options: GatewayOptions } | { error: string; hint: string | undefined }> {
  const main = siblingModulePath(import.meta.url, 'main');
  const r = await outputOf(process.execPath, [...process.execArgv, main, 'runtime', '--json'], {
    env: { ...process.env, OPENSHELL_VM_RUNTIME_DIR: dir.dir },
    timeoutMs: 60_000,
  });
  const report = parseRuntimeReport(r.stdout);
  if (!report) {
    const said = errorOf(r.stdout, r.stderr);
    return {
      error: `${dir.libkrunfw[0]}: ${said.error ?? `openshell-vm runtime --json exited ${r.code ?? 'by a signal'} without a report`}`,
      hint: said.hint,
    };
  }
  return { facts: { ...report.facts, library: await found(report.facts.library) }, options: report.options };
}

/** The libkrun runtime's checks, in order, and what the backend choice needs of them. */
async function libkrunDoctor(
  env: HostEnvironment,
  platform: LibkrunPlatform,
): Promise<{
  checks: (needed: boolean) => Promise<DoctorCheck[]>;
  bundle: RuntimeBundle | undefined;
  why: string;
}> {
  let bundle: RuntimeBundle | undefined;
  let problem: HostError | undefined;
  try {
    bundle = await discoverRuntime(env);
  } catch (err) {
    if (!(err instanceof HostError)) throw err;
    problem = err;
  }
  // No bootable runtime: the libkrunfw there is (a build, a distribution's), or its refusal.
  let dir: RuntimeDir | undefined = bundle;
  let dirProblem: HostError | undefined;
  if (!dir) {
    try {
      dir = await findLibkrunfwDir(env);
    } catch (err) {
      if (!(err instanceof HostError)) throw err;
      dirProblem = err;
    }
  }
  const checks = async (needed: boolean): Promise<DoctorCheck[]> => {
    const out: DoctorCheck[] = [];
    out.push(
      bundle
        ? passed('libkrun runtime', describeRuntime(bundle).join('; '))
        : failed(
            'libkrun runtime',
            needed || Boolean(env.runtimeBundleDir),
            problem?.message ?? '',
            problem?.hint,
          ),
    );
    out.push(
      libkrunCheck({
        platform,
        needed,
        libkrun: dir?.libkrun ? await found(dir.libkrun) : undefined,
        runtimeDir: dir?.dir,
      }),
    );
    const fw = dir
      ? await readLibkrunfw(dir)
      : dirProblem
        ? { error: dirProblem.message, hint: dirProblem.hint }
        : undefined;
    out.push(libkrunfwCheck({ platform, needed, facts: fw && 'facts' in fw ? fw.facts : fw }));
    out.push(gatewayOptionsCheck(platform, fw && 'options' in fw ? fw.options : undefined));
    let runnerHardened: boolean | undefined;
    const runner = signedNodePath(env, process.execPath, process.version);
    if (platform === 'darwin') {
      const exists = await pathExists(runner);
      const text = exists ? await readRunnerSignature(runner) : undefined;
      const entitlements =
        text?.entitlements === undefined ? undefined : parseCodesignEntitlements(text.entitlements);
      runnerHardened =
        text?.signature === undefined ? undefined : parseCodesignSignature(text.signature).hardenedRuntime;
      out.push(
        runnerCheck(
          {
            path: runner,
            exists,
            codesign: !exists || text?.entitlements !== undefined,
            signed: entitlements?.signed ?? false,
            granted: entitlements?.entitlements[HYPERVISOR_ENTITLEMENT] === true,
            entitlement: HYPERVISOR_ENTITLEMENT,
            signCommand: `codesign ${codesignArgs(runner).join(' ')}`,
          },
          needed,
        ),
      );
    }
    out.push(
      loaderCheck({
        platform,
        needed,
        runtimeDir: dir?.dir,
        libkrunfwNames: (dir?.libkrunfw ?? []).map((f) => path.basename(f)),
        inherited: process.env[LOADER_VARIABLE[platform]] || undefined,
        runnerHardened,
        runnerPath: runner,
      }),
    );
    return out;
  };
  return { checks, bundle, why: problem?.message ?? '' };
}

export async function doctorChecks(): Promise<DoctorCheck[]> {
  const env = readEnvironment();
  const arch = hostArch();
  const platform: LibkrunPlatform = process.platform === 'darwin' ? 'darwin' : 'linux';
  const checks: DoctorCheck[] = [];
  const major = Number(process.versions.node.split('.')[0]);
  checks.push(
    major >= 24
      ? passed('node', `Node.js ${process.version}`)
      : failed('node', true, `Node.js ${process.version} is older than 24`, `run ${provisionCommand()}`),
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
  checks.push(await gvproxyDoctor(env, platform));
  const facts = await readHostAccelFacts();
  if (arch) {
    const accel = chooseAccelerator(arch, facts);
    checks.push(passed('accelerator', `${accel.accel} (${accel.reason})`));
  }
  const libkrun = await libkrunDoctor(env, platform);
  const choice = chooseBackend(
    facts,
    libkrun.bundle ? { found: true, dir: libkrun.bundle.dir } : { found: false, why: libkrun.why },
  );
  // libkrun's checks fail doctor when a run would use it, or the user named a runtime.
  checks.push(
    ...(await libkrun.checks(
      backendFeatures()[choice.backend].guestKernel === 'libkrunfw' || Boolean(env.runtimeBundleDir),
    )),
  );
  checks.push(passed('default backend', `${choice.backend} (${choice.reason})`));
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
      if (c.fix && !c.ok) process.stdout.write(`         fix: ${c.fix}\n`);
    }
    process.stdout.write(ok ? 'ready\n' : 'not ready: fix the MISSING lines above\n');
  }
  return ok ? 0 : 1;
}
