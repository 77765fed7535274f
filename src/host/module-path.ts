import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The file path of the module `name` (no extension) beside the module at `moduleUrl` (its
 * `import.meta.url`), with that module's own extension: `runner.ts` when the caller runs from the
 * sources (a checkout), `runner.js` when it runs from the build (dist/, the installed package).
 * For modules started as their own process (`node <path>`), which an import specifier, rewritten
 * by the build, does not cover.
 */
export function siblingModulePath(moduleUrl: string | URL, name: string): string {
  const self = fileURLToPath(moduleUrl);
  return path.join(path.dirname(self), `${name}${path.extname(self)}`);
}
