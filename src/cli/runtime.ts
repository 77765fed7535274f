import { readEnvironment } from '../config/environment.ts';
import { describeRuntime, discoverRuntime } from '../vmm/libkrun/runtime.ts';
import { type OptionSpec, parseArgs } from './args.ts';

const OPTIONS: readonly OptionSpec[] = [
  { name: 'json', kind: 'flag' },
  { name: 'help', short: 'h', kind: 'flag' },
];

export const RUNTIME_HELP = `Usage: openshell-vm runtime [--json]

Finds and validates the libkrun runtime (OPENSHELL_VM_RUNTIME_DIR, else openshell-vm.runtime/
next to the package, else the system's library directories) and prints which libkrun and
libkrunfw it uses, the libkrunfw sha256, and its provenance (custom OpenShell build or stock).
Exit code: 0 found and valid, 125 missing or invalid (the error says what and how to fix it).
`;

export async function runtimeCommand(argv: readonly string[]): Promise<number> {
  const args = parseArgs(argv, OPTIONS, false);
  if (args.flags.has('help')) {
    process.stdout.write(RUNTIME_HELP);
    return 0;
  }
  const runtime = await discoverRuntime(readEnvironment());
  process.stdout.write(
    args.flags.has('json')
      ? `${JSON.stringify(runtime, null, 2)}\n`
      : `${describeRuntime(runtime).join('\n')}\n`,
  );
  return 0;
}
