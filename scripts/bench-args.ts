// The argument reading the benchmark scripts share (beside them, not in scripts/lib/, which the package ships): `--name VALUE` options and a usage failure
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
