import { runExec } from '../presets/run.ts';
import { commandIo } from './command-io.ts';
import { eventSink } from './events.ts';
import {
  type CommandResult,
  LIBRARY_NAMES,
  type RunOptions,
  rawRunOptions,
  type VmEvent,
} from './options.ts';
import { prepareExec } from './prepare.ts';

/**
 * One command in a fresh microVM, as `openshell-vm run -- COMMAND` runs it: the same validation,
 * the same lifecycle, the same exit codes (the command's own; 128+N for signal N, with `signal`
 * named; 127 not found, 126 not executable, 125 not started). Its output is buffered and returned
 * unless `stdout`/`stderr` streams are given. Everything started is stopped before this settles;
 * openshell-vm's own failures reject with UsageError, HostError or VmError, an abort with the
 * signal's reason.
 */
export async function run(options: RunOptions): Promise<CommandResult> {
  options.signal?.throwIfAborted();
  const sink = eventSink<VmEvent>(options.onEvent);
  const { io, signal, result } = commandIo(options);
  const prepared = await prepareExec(rawRunOptions(options), LIBRARY_NAMES, sink);
  options.signal?.throwIfAborted();
  // `signal` is the caller's and the output's overflow: either stops the VM.
  const ran = await runExec(
    prepared.env,
    { ...prepared.options, accel: prepared.accel, keepLogs: options.keepLogs ?? false },
    io,
    { backend: prepared.backend, signal, onEvent: sink.emit },
  );
  return result(ran.exitCode);
}
