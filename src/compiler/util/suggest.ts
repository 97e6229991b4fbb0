/** "Did you mean" suggestions for misspelt names. */

/** The option nearest to `word` by edit distance, when near enough to be a likely typo. */
export function closest(word: string, options: Iterable<string>): string | undefined {
  // The distance is quadratic in the lengths: a 100 000-character name against a similar one would hang the
  // linter, and nobody misspells a name that long.
  if (word.length > MAX_SUGGEST_LENGTH) return undefined;
  const limit = Math.max(1, Math.floor(word.length / 3));
  const w = word.toLowerCase();
  let best: string | undefined;
  let bestD = Infinity;
  for (const o of options) {
    const lo = o.toLowerCase();
    // The distance is at least the difference in length: such an option can never be near enough.
    if (Math.abs(lo.length - w.length) > limit) continue;
    const d = editDistance(w, lo);
    if (d < bestD) {
      bestD = d;
      best = o;
    }
  }
  return best !== undefined && bestD <= limit ? best : undefined;
}

/** Longer names get no suggestion. */
const MAX_SUGGEST_LENGTH = 100;

/** Names for a hint, `a, b, c`: at most `max` of them, so a hint stays short however many there are. */
export function nameList(names: string[], max = 12): string {
  return names.length <= max ? names.join(', ') : `${names.slice(0, max).join(', ')} and ${names.length - max} more`;
}

/** Damerau-Levenshtein (optimal string alignment) distance. */
export function editDistance(a: string, b: string): number {
  // Rows i-2, i-1 and i of the matrix, rotated.
  let before = new Array<number>(b.length + 1).fill(0);
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  let cur = new Array<number>(b.length + 1).fill(0);
  for (let i = 1; i <= a.length; i++) {
    cur[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) cur[j] = Math.min(cur[j], before[j - 2] + 1);
    }
    [before, prev, cur] = [prev, cur, before];
  }
  return prev[b.length];
}


/** A hint naming the nearest option, or undefined when nothing is close. */
export function didYouMean(word: string, options: Iterable<string>): string | undefined {
  const best = closest(word, options);
  return best === undefined ? undefined : `did you mean \`${best}\`?`;
}
