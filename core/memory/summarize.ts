/**
 * @module
 * Deterministic extractive summaries of a run's working context (messages,
 * tool results). No model: sentences are scored by how many of the
 * context's frequent content words they carry (integer arithmetic, so the
 * same inputs give the same summary on every machine), the best are kept
 * until the budget is spent, and they are printed in their original order
 * with who said them. It is honest about what it is: a selection of what was
 * said, never a paraphrase.
 */
import { contentWords } from "./_text.ts";

/** One entry of a working context: a message or a tool result. */
export interface ContextEntry {
  /** Who said it (`user`, `assistant`, `tool:email.send` …). */
  readonly role?: string;
  readonly text: string;
  /** What the entry is (a step `step:4`, a memory id …); default `#<position>`. */
  readonly ref?: string;
}

/** A summary and what it cites. */
export interface ContextSummary {
  readonly text: string;
  /** Refs of every entry the summary covers. */
  readonly summarized: ReadonlyArray<string>;
  /** Refs of the entries it quotes from. */
  readonly quoted: ReadonlyArray<string>;
}

/** Smallest and default summary budgets, in characters. */
export const SUMMARY_MIN_CHARS = 200;
/** Default summary budget, in characters. */
export const SUMMARY_DEFAULT_CHARS = 1200;
const MAX_SENTENCE = 280;

/** Summarize entries in at most `maxChars` characters; same inputs, same summary. */
export const summarizeContext = (
  entries: ReadonlyArray<ContextEntry>,
  maxChars: number = SUMMARY_DEFAULT_CHARS,
): ContextSummary => {
  const budget = Math.max(SUMMARY_MIN_CHARS, Math.floor(maxChars));
  const refs = entries.map((e, i) => e.ref ?? `#${i + 1}`);
  const sentences: Array<{ entry: number; pos: number; text: string; words: string[] }> = [];
  entries.forEach((entry, i) => {
    for (const raw of entry.text.split(/(?<=[.!?])\s+|\n+/u)) {
      const s = raw.replace(/\s+/gu, " ").trim();
      if (!s) continue;
      const text = s.length > MAX_SENTENCE ? `${s.slice(0, MAX_SENTENCE - 1)}…` : s;
      sentences.push({ entry: i, pos: sentences.length, text, words: contentWords(s) });
    }
  });
  const tf = new Map<string, number>();
  for (const s of sentences) for (const w of s.words) tf.set(w, (tf.get(w) ?? 0) + 1);
  const score = (s: { words: string[] }) =>
    Math.floor((1000 * s.words.reduce((sum, w) => sum + Math.min(tf.get(w) ?? 0, 8), 0)) / (s.words.length + 3));
  const seen = new Set<string>();
  const unique = sentences.filter((s) => {
    const key = s.words.join(" ") || s.text.toLowerCase();
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
  const ranked = unique.map((s) => ({ ...s, score: score(s) })).sort((a, b) => b.score - a.score || a.pos - b.pos);
  const header = entries.length
    ? `Summary of ${entries.length} entr${entries.length === 1 ? "y" : "ies"} (${refs[0]} … ${refs.at(-1)}):`
    : "Summary of 0 entries:";
  const line = (s: { entry: number; text: string }) => {
    const role = entries[s.entry].role;
    return `- ${role ? `${role}: ` : ""}${s.text}`;
  };
  let used = header.length;
  const chosen: typeof ranked = [];
  for (const s of ranked) {
    const cost = line(s).length + 1;
    if (used + cost > budget) continue;
    chosen.push(s);
    used += cost;
  }
  chosen.sort((a, b) => a.pos - b.pos);
  const quoted = [...new Set(chosen.map((s) => s.entry))].sort((a, b) => a - b).map((i) => refs[i]);
  return {
    text: [header, ...(chosen.length ? chosen.map(line) : ["- (nothing to summarize)"])].join("\n"),
    summarized: refs,
    quoted,
  };
};
