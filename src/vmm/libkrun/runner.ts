// The libkrun runner: a separate process per VM, because krun_start_enter never returns and ends
// the process with the guest's exit status. usage: node runner.ts CONFIG.json
// CONFIG: { libkrun, libkrunfw[], config (LibkrunConfig), errorFile }. When libkrun refuses the
// configuration, the runner writes {"fn", "code", "message"} to errorFile and exits 125, so the
// parent can tell "the VMM failed" from "the guest reported 125".
import fs from 'node:fs';
import { KrunError, loadLibkrun, replay } from './bindings.ts';
import { krunCalls, type LibkrunConfig } from './plan.ts';

interface RunnerInput {
  readonly libkrun: string;
  readonly libkrunfw: readonly string[];
  readonly config: LibkrunConfig;
  readonly errorFile: string;
}

const input = JSON.parse(fs.readFileSync(process.argv[2] as string, 'utf8')) as RunnerInput;
// RLIMIT_NOFILE: Node raises the soft limit to the hard one at start-up (what the seed's
// raise_nofile_limit did); the contract tests check that the VMM process sees it raised.
try {
  replay(loadLibkrun(input.libkrun, input.libkrunfw), krunCalls(input.config));
} catch (err) {
  const e = err as Error;
  fs.writeFileSync(
    input.errorFile,
    JSON.stringify({
      fn: err instanceof KrunError ? err.fn : undefined,
      code: err instanceof KrunError ? err.code : undefined,
      message: e.message,
      hint: (err as { hint?: string }).hint,
    }),
  );
  process.exit(125);
}
