/**
 * One run of a VM: its directory (logs, pid files, the console log) and where its sockets go. The
 * lifecycle (src/instance/runs.ts) makes them; the VM session and the backends use them.
 */
export interface RunPaths {
  readonly id: string;
  readonly instanceDir: string;
  readonly dir: string;
  /** Directory for sockets: the run directory, or a short one under the runtime dir. */
  readonly socketDir: string;
  readonly consoleLog: string;
}
