import { appendFileSync } from 'node:fs';
import { readEnvironment } from '../config/environment.ts';
import { HostError } from '../errors.ts';
import { processEventsTo } from '../vmm/backend.ts';
import { loadBackend } from '../vmm/load-backend.ts';
import { receiveHandoff, reportDetachedReady } from './detach-child.ts';
import { reportError } from './error-report.ts';
import { Reporter } from './reporter.ts';
import { acceptRunHandoff } from './run-handoff.ts';
import { runHere } from './run-here.ts';

/**
 * The resident process of a detached run (`openshell-vm run --detach`), started by its starting
 * command (runDetached) as `node run-supervisor.ts INSTANCE` and handed everything it needs over
 * the IPC channel (src/cli/run-handoff.ts): the validated run, the chosen VMM and accelerator and
 * the prepared guest. It only supervises: the VM and its helpers, the control socket, the state
 * file. It stays for the instance's life, so it loads none of the CLI's parser, help, validators,
 * VMM choice or guest build (src/cli/startup.test.ts keeps it so): its memory is the target of
 * `npm run bench:startup`. Its stderr is the instance's supervisor.log, which the starting command
 * shows until the command has started; its stdout the command's output.log.
 */
async function superviseRun(instance: string | undefined): Promise<number> {
  let debug = false;
  try {
    if (!process.send) {
      throw new HostError('run-supervisor is started by openshell-vm run --detach, not by hand', {
        hint: 'use: openshell-vm run --name NAME --detach -- PATH [ARG...]',
      });
    }
    const handoff = acceptRunHandoff(await receiveHandoff());
    debug = handoff.reporter.debug;
    if (handoff.plan.instance !== instance) {
      throw new HostError(
        `the detached supervisor was started for instance '${instance}' but handed '${handoff.plan.instance}'`,
        { hint: 'start the instance again (openshell-vm run --detach ...)' },
      );
    }
    const { quiet, eventsFile, recorded } = handoff.reporter;
    // The Reporter starts the events file afresh; what the starting command recorded goes first.
    const reporter = new Reporter({ stderr: process.stderr, quiet, eventsFile });
    if (eventsFile !== undefined && recorded) appendFileSync(eventsFile, recorded);
    for (const e of handoff.events) reporter.event({ ...e, elapsedMs: Math.round(performance.now()) });
    const env = readEnvironment();
    const backend = await loadBackend(handoff.backend, env, processEventsTo(reporter));
    return await runHere(reporter, env, handoff.plan, backend, () => reportDetachedReady(handoff.readyText));
  } catch (err) {
    return reportError(err, { debug, json: false });
  }
}

process.exitCode = await superviseRun(process.argv[2]);
