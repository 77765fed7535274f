import { spawnSync } from 'node:child_process';
// What the benchmark scripts share: a timed CLI call, and the argument reading (beside them, not in scripts/lib/, which the package ships): `--name VALUE` options and a usage failure
// (exit 2) that names the script.

/** `option('--runs')`: the word after it (a missing or flag-like value fails), undefined without it. */
export function scriptArgs(script: string, argv: readonly string[] = process.argv.slice(2)) {
  const fail = (message: string): never => {
    process.stderr.write(`${script}: ${message}\n`);
    process.exit(2);
  };
  const option = (name: string): string | undefined => {
    const i = argv.indexOf(name);
    if (i < 0) return undefined;
    const value = argv[i + 1];
    if (value === undefined || value.startsWith('--')) fail(`${name} needs a value`);
    return value;
  };
  return { argv, option, fail };
}

/**
 * `run(args)`: the CLI at `cli` with `env`, timed from spawn to exit (ms); a non-zero exit throws
 * with its stderr.
 */
export function timedCli(cli: string, env: NodeJS.ProcessEnv) {
  return (args: readonly string[]) => {
    const start = process.hrtime.bigint();
    const r = spawnSync(cli, args, { env, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    if (r.status !== 0) throw new Error(`openshell-vm ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
    return { ms, stdout: r.stdout, stderr: r.stderr };
  };
}
