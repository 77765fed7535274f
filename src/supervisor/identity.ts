import fs from 'node:fs/promises';

/**
 * `ps`'s stdout. Not util.promisify: `import … from 'node:util'` builds util's ES module namespace,
 * which reads every export and so loads worker_threads (~3 ms, ~2 MB), on exec's path for one call.
 * node:child_process is loaded here, on the first call: on Linux (/proc) `list`, `status` and
 * `exec` never make one.
 */
function psOutput(args: readonly string[]): Promise<string> {
  const { execFile } = process.getBuiltinModule('node:child_process');
  return new Promise((resolve, reject) => {
    execFile('ps', [...args], { encoding: 'utf8' }, (err, stdout) => (err ? reject(err) : resolve(stdout)));
  });
}

/**
 * A process's start time as an opaque string, so that a recorded PID is only treated as ours
 * while the same process holds it (PIDs are reused). Linux: field 22 of /proc/PID/stat (clock
 * ticks since boot); elsewhere: `ps -o lstart=`. undefined when the process does not exist or is a
 * zombie.
 */
export async function processStartTime(pid: number): Promise<string | undefined> {
  if (process.platform === 'linux') {
    try {
      const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
      // The command name (field 2) is in parentheses and may contain spaces: split after it.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // A zombie has exited: it only waits for its parent to reap it.
      if (fields[0] === 'Z') return undefined;
      return fields[19];
    } catch {
      return undefined;
    }
  }
  try {
    return (await psOutput(['-o', 'lstart=', '-p', String(pid)])).trim() || undefined;
  } catch {
    return undefined;
  }
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** True when `pid` is alive and is the process that had `startTime`. */
export async function isSameProcess(pid: number, startTime: string | undefined): Promise<boolean> {
  if (!isAlive(pid)) return false;
  if (startTime === undefined) return false;
  return (await processStartTime(pid)) === startTime;
}
