/**
 * openshell-vm as a library (the package's main export). For now: the error vocabulary every
 * failure is reported in (each with a `hint` naming the fix and the original as `cause`) and the
 * package's version. Importing it prints nothing and starts nothing.
 */
export {
  CommandError,
  type CommandFailure,
  type ErrorKind,
  HostError,
  OvmError,
  type OvmErrorOptions,
  UsageError,
  VmError,
} from './errors.ts';

import { packageVersion } from './version.ts';

/** This package's version (package.json's). */
export const version: string = packageVersion();
