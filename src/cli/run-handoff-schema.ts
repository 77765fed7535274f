import * as v from 'valibot';
import type { Accelerator } from '../accel/probe.ts';
import { HostError } from '../errors.ts';
import { GUEST_ARCHES } from '../host/arch.ts';
import { describeIssues } from '../instance/schema.ts';
import type { NetworkMode } from '../options/exec-options.ts';
import { BACKENDS } from '../vmm/select.ts';
import { RUN_HANDOFF_FORMAT, type RunHandoff } from './run-handoff.ts';

/*
 * The handoff's full schema, checked by the starting command on what it is about to send (a
 * short-lived process), so that the resident supervisor loads no validator (bench:startup); the
 * supervisor checks the format and the build (acceptRunHandoff).
 */

/** The values of a string-literal union, checked against it both ways at compile time. */
function literals<T extends string>() {
  return <const L extends readonly T[]>(values: L & ([T] extends [L[number]] ? unknown : never)) => values;
}

const ACCELERATORS = literals<Accelerator>()(['kvm', 'hvf', 'tcg']);
const NETWORKS = literals<NetworkMode>()(['gvproxy', 'user', 'tsi', 'none']);

const port = v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(65_535));
const count = v.pipe(v.number(), v.integer(), v.minValue(1));

const PLAN_SCHEMA = v.strictObject({
  arch: v.picklist(GUEST_ARCHES),
  accel: v.strictObject({
    accel: v.picklist(ACCELERATORS),
    reason: v.string(),
    forced: v.boolean(),
    warning: v.optional(v.string()),
  }),
  vcpus: count,
  memMib: count,
  instance: v.string(),
  command: v.optional(v.array(v.string())),
  bootTimeoutMs: count,
  keepLogs: v.boolean(),
  network: v.picklist(NETWORKS),
  forwards: v.array(v.strictObject({ hostAddress: v.string(), hostPort: port, guestPort: port })),
  rootfs: v.optional(v.string()),
  kernel: v.optional(
    v.variant('kind', [
      v.strictObject({ kind: v.picklist(['auto', 'debian', 'built']) }),
      v.strictObject({ kind: v.literal('file'), path: v.string() }),
    ]),
  ),
  detached: v.literal(true),
  prepared: v.strictObject({
    artifacts: v.strictObject({
      kernel: v.string(),
      initramfs: v.string(),
      rootfs: v.string(),
      modulesRelease: v.optional(v.string()),
    }),
    rootfs: v.optional(v.string()),
  }),
  request: v.strictObject({
    exec: v.string(),
    args: v.array(v.string()),
    env: v.array(v.pipe(v.tuple([v.string(), v.string()]), v.readonly())),
    workdir: v.string(),
  }),
});

const HANDOFF_SCHEMA = v.strictObject({
  format: v.literal(RUN_HANDOFF_FORMAT),
  build: v.string(),
  backend: v.picklist(BACKENDS),
  plan: PLAN_SCHEMA,
  events: v.array(
    v.variant('type', [
      v.strictObject({
        type: v.literal('stage'),
        stage: v.literal('artifacts'),
        message: v.string(),
        elapsedMs: v.number(),
      }),
      v.strictObject({ type: v.literal('warning'), message: v.string(), elapsedMs: v.number() }),
    ]),
  ),
  reporter: v.strictObject({
    quiet: v.boolean(),
    debug: v.boolean(),
    eventsFile: v.optional(v.string()),
    recorded: v.string(),
  }),
  readyText: v.string(),
});

/**
 * A detached run's handoff, checked in full: the starting command checks what it sends with it.
 * It goes to the CLI process's own child of the same user through a private socket pair: the check
 * is against a bug in building it, not an attacker.
 */
export function parseRunHandoff(value: unknown): RunHandoff {
  const result = v.safeParse(HANDOFF_SCHEMA, value);
  if (result.success) return result.output satisfies RunHandoff;
  throw new HostError(
    `the detached supervisor's handoff from its starting command is not what this version sends (${describeIssues(result.issues)})`,
    { hint: 'start the instance again with this openshell-vm (openshell-vm run --detach ...)' },
  );
}
