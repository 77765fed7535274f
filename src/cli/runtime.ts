import { readEnvironment } from '../config/environment.ts';
import { HostError } from '../errors.ts';
import {
  describeLibkrunfw,
  gatewayRefusal,
  inspectLibkrunfw,
  type LibkrunfwReport,
} from '../vmm/libkrun/krunfw.ts';
import {
  describeRuntime,
  discoverRuntime,
  findLibkrunfwDir,
  type RuntimeDir,
} from '../vmm/libkrun/runtime.ts';
import { type OptionSpec, parseArgs } from './args.ts';

const OPTIONS: readonly OptionSpec[] = [
  { name: 'json', kind: 'flag' },
  { name: 'help', short: 'h', kind: 'flag' },
];

export const RUNTIME_HELP = `Usage: openshell-vm runtime [--json]

Finds and validates the libkrun runtime (OPENSHELL_VM_RUNTIME_DIR, else openshell-vm.runtime/
next to the package, else the system's library directories) and prints which libkrun and
libkrunfw it uses, the libkrunfw sha256, and its provenance (custom OpenShell build or stock).
It loads libkrunfw through its ABI and prints the ABI version (krunfw_get_version), the embedded
kernel's size and \`Linux version\` banner, and where its kernel options come from: kernel.config
beside the library, else the kernel's own IKCONFIG, else "unknown" (the gateway refuses such a
libkrunfw; \`openshell-vm kernel build --target libkrunfw\` builds one with its options).
Without a bootable runtime it still reports the libkrunfw it finds (OPENSHELL_VM_RUNTIME_DIR, or a
system library directory with libkrunfw but no libkrun).
Exit code: 0 found and valid, 125 missing or invalid (the error says what and how to fix it).
`;

export async function runtimeCommand(argv: readonly string[]): Promise<number> {
  const args = parseArgs(argv, OPTIONS, false);
  if (args.flags.has('help')) {
    process.stdout.write(RUNTIME_HELP);
    return 0;
  }
  const env = readEnvironment();
  let dir: RuntimeDir;
  let problem: HostError | undefined;
  try {
    dir = await discoverRuntime(env);
  } catch (err) {
    if (!(err instanceof HostError)) throw err;
    // No bootable runtime: report the libkrunfw there is, if any, and end with the error.
    // Its own errors (a libkrunfw build in a cache others could write, refused) are the news.
    const libkrunfwOnly = await findLibkrunfwDir(env);
    if (!libkrunfwOnly) throw err;
    dir = libkrunfwOnly;
    problem = err;
  }
  const report = await inspectLibkrunfw(dir);
  if (args.flags.has('json')) {
    process.stdout.write(`${JSON.stringify(runtimeJson(dir, report, problem), null, 2)}\n`);
    return problem ? 125 : 0;
  }
  process.stdout.write(`${[...describeRuntime(dir), ...describeLibkrunfw(report)].join('\n')}\n`);
  if (problem) throw problem;
  return 0;
}

/** The JSON form: the runtime directory, what its libkrunfw carries, and whether it can boot VMs. */
function runtimeJson(dir: RuntimeDir, report: LibkrunfwReport, problem: HostError | undefined): object {
  const refusal = gatewayRefusal(report);
  const options = report.options;
  return {
    ...dir,
    bootable: !problem,
    ...(problem ? { problem: { message: problem.message, hint: problem.hint } } : {}),
    libkrunfwKernel: {
      ...report.facts,
      options: options.known
        ? {
            known: true,
            source: options.source,
            kernel: options.check.kernel,
            gatewayOptions: options.check.results.length,
            missing: options.check.missing,
            modules: options.check.modules,
          }
        : { known: false, why: options.why },
      gateway: refusal ? { ok: false, message: refusal.message, hint: refusal.hint } : { ok: true },
    },
  };
}
