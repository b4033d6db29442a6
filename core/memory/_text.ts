/**
 * @module
 * Words for full-text queries and summaries: lower-case letters and digits
 * after Unicode NFKC normalisation, without the commonest English words.
 * Private to `core/memory`.
 */

/** Words too common to say anything about a text. */
export const STOPWORDS: ReadonlySet<string> = new Set(
  ("a an and are as at be been but by can could did do does for from had has have he her his how i if in into is it " +
    "its me my no not of on or our she so than that the their them then there these they this to too us was we were " +
    "what when where which who why will with would you your")
    .split(" "),
);

/** The words of a text, in order, lower-cased and NFKC-normalised. */
export const words = (text: string): string[] => text.normalize("NFKC").toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? [];

/** The distinct content words of a text (stopwords dropped), first occurrence first. */
export const contentWords = (text: string): string[] => [...new Set(words(text).filter((w) => !STOPWORDS.has(w)))];

/** How deep a JSON value Keel stores in Postgres may nest (deeper is refused, not walked). */
export const MAX_STORED_DEPTH = 64;

/**
 * Why Postgres cannot store `value` as text or jsonb as it is, or undefined: a NUL character or a lone surrogate in
 * a string or key (Postgres refuses both), or nesting deeper than `MAX_STORED_DEPTH`. Walked iteratively.
 */
export const storableProblem = (value: unknown): string | undefined => {
  const stack: Array<[unknown, number]> = [[value, 0]];
  const badText = (s: string) =>
    s.includes("\u0000") ? "holds a NUL character" : s.isWellFormed() ? undefined : "holds a lone UTF-16 surrogate";
  while (stack.length) {
    const [v, depth] = stack.pop()!;
    if (typeof v === "string") {
      const bad = badText(v);
      if (bad) return bad;
      continue;
    }
    if (v === null || typeof v !== "object") continue;
    if (depth >= MAX_STORED_DEPTH) return `nests deeper than ${MAX_STORED_DEPTH} levels`;
    for (const [key, child] of Object.entries(v)) {
      const bad = Array.isArray(v) ? undefined : badText(key);
      if (bad) return bad;
      stack.push([child, depth + 1]);
    }
  }
  return undefined;
};
