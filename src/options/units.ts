import { UsageError } from '../errors.ts';

/**
 * Counts and sizes as a user gives them: a string from the command line (`--mem 4GiB`) or a value
 * from the library (`memory: 4096`, `memory: '4GiB'`), checked by the same rules. Every error
 * names the option as that front end spells it (`option`), the bad value and what was expected.
 */

export interface Range {
  readonly min: number;
  readonly max: number;
}

/** MiB per unit. Binary units, as in Docker, podman and QEMU's `-m`: M = MiB, G = GiB. */
const MIB_PER_UNIT: Readonly<Record<string, number>> = {
  '': 1,
  m: 1,
  mi: 1,
  mib: 1,
  g: 1024,
  gi: 1024,
  gib: 1024,
  t: 1024 * 1024,
  ti: 1024 * 1024,
  tib: 1024 * 1024,
};

const MEMORY_FORMS = 'a number (4096) or a size with a unit (4096M, 4096MiB, 4G, 4GiB)';

/**
 * A memory size in MiB: a whole number is MiB; a string may carry a binary unit (M, MiB, G, GiB,
 * T, TiB; any case). `1.5G` is 1536 MiB; a size that is not a whole number of MiB is refused, as
 * are decimal units (MB, GB: ambiguous), zero, negative numbers and sizes outside `range`.
 */
export function parseMemoryMib(option: string, value: string | number, range: Range): number {
  const expected = `give MiB from ${range.min} to ${range.max} as ${MEMORY_FORMS}`;
  let mib: number;
  if (typeof value === 'number') {
    if (!Number.isInteger(value)) {
      throw new UsageError(`${option}: ${value} is not a whole number of MiB`, { hint: expected });
    }
    mib = value;
  } else {
    const m = /^\s*(-?)(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$/.exec(value);
    const unit = m?.[3]?.toLowerCase() ?? '';
    if (!m || !(unit in MIB_PER_UNIT)) {
      const decimal = m && /^[kmgt]b$/i.test(m[3] ?? '');
      throw new UsageError(
        `${option}: '${value}' is not a whole number of MiB or a size with a ${decimal ? `binary unit (${m?.[3]} is decimal)` : 'unit'}`,
        { hint: decimal ? `use binary units: ${MEMORY_FORMS}` : expected },
      );
    }
    mib = Number(`${m[1]}${m[2]}`) * (MIB_PER_UNIT[unit] as number);
    if (!Number.isInteger(mib)) {
      throw new UsageError(`${option}: '${value}' is not a whole number of MiB (${mib} MiB)`, {
        hint: expected,
      });
    }
  }
  if (mib < range.min || mib > range.max) {
    throw new UsageError(`${option}: ${String(value).trim()} is out of range`, { hint: expected });
  }
  return mib;
}

/**
 * A whole number of `unit` in `range`: the decimal digits of a string (no sign, no fraction, no
 * exponent), or an integer from the library.
 */
export function parseCount(option: string, value: string | number, range: Range, unit: string): number {
  const hint = `give a number of ${unit} from ${range.min} to ${range.max}`;
  const n = typeof value === 'number' ? value : /^\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isInteger(n)) {
    throw new UsageError(
      `${option}: ${typeof value === 'number' ? value : `'${value}'`} is not a whole number`,
      {
        hint,
      },
    );
  }
  if (n < range.min || n > range.max) throw new UsageError(`${option}: ${value} is out of range`, { hint });
  return n;
}
