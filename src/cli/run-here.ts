import type { HostEnvironment } from '../config/environment.ts';
import { COMMAND_STARTED, type ExecPlan, runExec } from '../presets/run.ts';
import type { VmmBackend } from '../vmm/backend.ts';
import type { Reporter } from './reporter.ts';
import { withSignals } from './signals.ts';

/**
 * A run's VM and command in this process, with the terminal's streams and the Reporter, until the
 * command's exit code: `openshell-vm run` in the foreground (src/cli/run.ts) and a detached run's
 * supervisor (src/cli/run-supervisor.ts) alike. Ctrl-C, SIGTERM and SIGHUP stop the VM.
 * `onCommandStarted`: called once the guest has started the command.
 */
export function runHere(
  reporter: Reporter,
  env: HostEnvironment,
  plan: ExecPlan,
  backend: VmmBackend,
  onCommandStarted?: () => void,
): Promise<number> {
  return withSignals(reporter, 'stopping the microVM', async (signal) => {
    const result = await runExec(
      env,
      plan,
      { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr },
      {
        backend,
        signal,
        onEvent: (e) => {
          reporter.event(e);
          if (e.type === 'stage' && e.stage === 'running' && e.message === COMMAND_STARTED)
            onCommandStarted?.();
        },
      },
    );
    if (result.message) reporter.notice(result.message);
    reporter.event({
      type: 'result',
      exitCode: result.exitCode,
      reason: result.reason,
      timings: result.timings,
    });
    return result.exitCode;
  });
}
