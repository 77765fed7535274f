import { HostError } from '../errors.ts';
import type { ExecEvent, ExecPlan } from '../presets/run.ts';
import { packageVersion } from '../version.ts';
import { BACKENDS, type BackendName } from '../vmm/select.ts';

/**
 * What a detached run's starting command (src/cli/run.ts) hands the supervisor it starts
 * (src/cli/run-supervisor.ts) over the IPC channel: everything decided and prepared (the options
 * validated, the VMM and accelerator chosen, the guest artifacts checked or built), so that the
 * resident supervisor loads and runs none of that code and keeps none of the memory it took.
 */
export interface RunHandoff {
  /** RUN_HANDOFF_FORMAT: both sides are the same build (a checkout changed in between is refused). */
  readonly format: typeof RUN_HANDOFF_FORMAT;
  /** The sending build's version (acceptRunHandoff refuses another). */
  readonly build: string;
  readonly backend: BackendName;
  /** The run, as runExec takes it: detached, with its prepared guest. */
  readonly plan: ExecPlan & { readonly detached: true; readonly prepared: NonNullable<ExecPlan['prepared']> };
  /** Progress made while preparing the guest, said by the supervisor (its log is what the starter shows). */
  readonly events: readonly ExecEvent[];
  readonly reporter: {
    readonly quiet: boolean;
    readonly debug: boolean;
    readonly eventsFile?: string | undefined;
    /** What the starting command wrote to the events file, which the supervisor's Reporter starts afresh. */
    readonly recorded: string;
  };
  /** What the starting command prints once the command has started in the guest. */
  readonly readyText: string;
}

export const RUN_HANDOFF_FORMAT = 1;

/** What a handoff's `build` is: this build's version (package.json). */
export function runHandoffBuild(): string {
  return packageVersion();
}

/**
 * The handoff a detached run's supervisor received (receiveHandoff), as its starting command sent
 * it after checking it in full (parseRunHandoff, run-handoff-schema.ts). Only what tells a
 * mismatched sender (another build, or not a handoff) is checked here: the resident supervisor
 * loads no validator (bench:startup).
 */
export function acceptRunHandoff(value: unknown): RunHandoff {
  const mismatch = (what: string) =>
    new HostError(
      `the detached supervisor's handoff from its starting command is not what this version sends (${what})`,
      {
        hint: 'start the instance again with this openshell-vm (openshell-vm run --detach ...)',
      },
    );
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw mismatch('not an object');
  const h = value as Record<string, unknown>;
  if (h.format !== RUN_HANDOFF_FORMAT) throw mismatch('format');
  if (h.build !== runHandoffBuild()) throw mismatch('build');
  if (typeof h.backend !== 'string' || !(BACKENDS as readonly string[]).includes(h.backend))
    throw mismatch('backend');
  const plan = h.plan as Record<string, unknown> | null | undefined;
  if (
    typeof plan !== 'object' ||
    plan === null ||
    typeof plan.instance !== 'string' ||
    plan.detached !== true
  )
    throw mismatch('plan');
  return value as RunHandoff;
}
