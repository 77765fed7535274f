/**
 * One line of `openshell-vm doctor`: what was checked, whether it is fine, what was found, and the
 * one-line fix when it is not. `status` says how much a failure matters: missing (the default
 * path needs it: doctor exits 1), optional (only some features need it); `ok` is status === 'ok'.
 */
export interface DoctorCheck {
  readonly name: string;
  readonly ok: boolean;
  readonly status: 'ok' | 'missing' | 'optional';
  readonly detail: string;
  readonly fix?: string | undefined;
}

export function passed(name: string, detail: string): DoctorCheck {
  return { name, ok: true, status: 'ok', detail };
}

/** A failed check: `needed` makes it missing (doctor fails), else optional. */
export function failed(name: string, needed: boolean, detail: string, fix: string | undefined): DoctorCheck {
  return { name, ok: false, status: needed ? 'missing' : 'optional', detail, fix };
}
