/**
 * "Did you mean ...?" for a mistyped command or option: the closest known word by edit distance
 * (insertions, deletions, substitutions and swaps of two neighbouring characters each cost 1, so
 * `lsit` is 1 from `list` and `--detatch` 1 from `--detach`).
 */

/** The optimal-string-alignment distance between `a` and `b`. */
export function editDistance(a: string, b: string): number {
  const rows = a.length + 1;
  const cols = b.length + 1;
  const d: number[][] = Array.from({ length: rows }, (_, i) =>
    Array.from({ length: cols }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i < rows; i++) {
    for (let j = 1; j < cols; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      const row = d[i] as number[];
      const above = d[i - 1] as number[];
      let best = Math.min(
        (above[j] as number) + 1,
        (row[j - 1] as number) + 1,
        (above[j - 1] as number) + cost,
      );
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        best = Math.min(best, ((d[i - 2] as number[])[j - 2] as number) + 1);
      }
      row[j] = best;
    }
  }
  return (d[a.length] as number[])[b.length] as number;
}

/**
 * The candidate closest to `word`, if it is close enough to be what was meant: at most a third of
 * the word's length away (at least 1, at most 3); on a tie, the first in `candidates`. A word that
 * is the start of exactly one candidate (`--det` for `--detach`) counts as meant too.
 */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  const strip = (w: string) => w.replace(/^-+/, '');
  const bare = strip(word);
  if (!bare) return undefined;
  const limit = Math.min(3, Math.max(1, Math.floor(bare.length / 3)));
  let best: string | undefined;
  let bestDistance = Number.POSITIVE_INFINITY;
  for (const candidate of candidates) {
    if (candidate === word) continue;
    const distance = editDistance(bare, strip(candidate));
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  if (best !== undefined && bestDistance <= limit) return best;
  const starting = candidates.filter((c) => c.startsWith(word) && c !== word);
  return bare.length >= 2 && starting.length === 1 ? starting[0] : undefined;
}
