import path from 'node:path';

/**
 * The command that sets this host up: the package's own `scripts/provision-host.sh` by absolute
 * path, so that a hint works the same from a checkout (src/host/) and from an installed package
 * (dist/host/, under node_modules), whatever the user's working directory.
 */
export function provisionCommand(args = ''): string {
  const script = path.resolve(import.meta.dirname, '..', '..', 'scripts', 'provision-host.sh');
  const quoted = /^[\w./-]+$/.test(script) ? script : `'${script.replaceAll("'", "'\\''")}'`;
  return `bash ${quoted}${args ? ` ${args}` : ''}`;
}
