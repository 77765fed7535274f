// The libkrun runner: a separate process per VM, because krun_start_enter never returns and ends
// the process with the workload's exit status (the guest agent's: 0 after the host's SHUTDOWN).
// usage: node runner.ts CONFIG.json, CONFIG: { libkrun, libkrunfw[], config (LibkrunConfig) }.
// When libkrun refuses the configuration (or cannot be loaded), the runner says which call and
// why on stderr, its log (libkrun.log): the lifecycle puts that log's tail into the error it
// reports for a VM that ended before its agent connected. It then exits 125.
import fs from 'node:fs';
import { loadLibkrun, replay } from './bindings.ts';
import { krunCalls, type LibkrunConfig } from './plan.ts';

interface RunnerInput {
  readonly libkrun: string;
  readonly libkrunfw: readonly string[];
  readonly config: LibkrunConfig;
}

const input = JSON.parse(fs.readFileSync(process.argv[2] as string, 'utf8')) as RunnerInput;
// RLIMIT_NOFILE: Node raises the soft limit to the hard one at start-up (what the seed's
// raise_nofile_limit did); the contract tests check that the VMM process sees it raised.
try {
  replay(loadLibkrun(input.libkrun, input.libkrunfw), krunCalls(input.config));
} catch (err) {
  const e = err as Error & { hint?: string };
  process.stderr.write(`libkrun did not start the VM: ${e.message}${e.hint ? ` (hint: ${e.hint})` : ''}\n`);
  process.exit(125);
}
