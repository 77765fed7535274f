import * as v from 'valibot';
import { LOG_SOURCES } from './log-sources.ts';
import { boundedString, exactObject, filePath, processIdentity, recordOf } from './schema.ts';

/*
 * The state file's schema, apart from state.ts so that writing a state (what a running instance's
 * supervisor does) loads no validator: loadState imports this when it reads one.
 */

/** The state file's schema (unknown fields are errors). */
// Its output is checked against InstanceState where it is parsed (loadState, and schema.test.ts).
export const instanceStateSchema = exactObject({
  version: v.literal(1),
  instance: boundedString(64),
  mode: v.picklist(['gateway', 'run']),
  phase: v.picklist(['starting', 'running', 'stopping']),
  supervisor: processIdentity,
  detached: v.boolean(),
  backend: boundedString(64),
  accel: boundedString(64),
  arch: boundedString(64),
  vcpus: v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(1024)),
  memMib: v.pipe(v.number(), v.integer(), v.minValue(1)),
  startedAt: boundedString(64),
  readyAt: v.optional(boundedString(64)),
  runDir: filePath,
  control: filePath,
  processes: v.pipe(v.array(processIdentity), v.maxLength(16)),
  sockets: v.pipe(v.array(filePath), v.maxLength(64)),
  forwards: v.pipe(v.array(boundedString(256)), v.maxLength(256)),
  logs: recordOf(v.picklist(LOG_SOURCES), filePath),
  endpoints: v.optional(
    exactObject({
      gateway: v.optional(boundedString(1024)),
      gatewayVersion: v.optional(boundedString(256)),
      kubeApi: v.optional(boundedString(1024)),
      kubeconfig: v.optional(filePath),
      mtlsDir: v.optional(filePath),
    }),
  ),
  command: v.optional(v.array(v.string())),
});
