/**
 * @module
 * What model calls cost. A price is USD per million input and output tokens,
 * looked up by the longest model-name prefix in the table (so
 * `claude-sonnet-4-5-20250929` finds `claude-sonnet-4-5`). The built-in table
 * holds Anthropic's list prices as Keel knows them; `pricing` in
 * `models.json` overrides or extends it. A paid provider's model with no price
 * is refused rather than counted as free. Costs are kept in micro-dollars
 * (integers) so budgets add up exactly.
 */

/** USD per million tokens. */
export interface Price {
  readonly inputPerMTok: number;
  readonly outputPerMTok: number;
}

/** Anthropic list prices (USD per million tokens); override in `models.json` when they change. */
export const DEFAULT_PRICING: Readonly<Record<string, Price>> = {
  "claude-opus-4-5": { inputPerMTok: 5, outputPerMTok: 25 },
  "claude-opus-4": { inputPerMTok: 15, outputPerMTok: 75 },
  "claude-sonnet-4": { inputPerMTok: 3, outputPerMTok: 15 },
  "claude-3-7-sonnet": { inputPerMTok: 3, outputPerMTok: 15 },
  "claude-haiku-4-5": { inputPerMTok: 1, outputPerMTok: 5 },
  "claude-3-5-haiku": { inputPerMTok: 0.8, outputPerMTok: 4 },
  "claude-3-haiku": { inputPerMTok: 0.25, outputPerMTok: 1.25 },
};

/** The price of a model: the entry with the longest name that prefixes it, or undefined. */
export const priceOf = (table: Readonly<Record<string, Price>>, model: string): Price | undefined => {
  let best: string | undefined;
  for (const key of Object.keys(table)) {
    if (model.startsWith(key) && (best === undefined || key.length > best.length)) best = key;
  }
  return best === undefined ? undefined : table[best];
};

/** Cost of a call in micro-dollars (rounded up: Keel never under-counts). */
export const costMicroUsd = (price: Price, usage: { inputTokens: number; outputTokens: number }): number =>
  Math.ceil(usage.inputTokens * price.inputPerMTok + usage.outputTokens * price.outputPerMTok);

/** Micro-dollars as USD. */
export const toUsd = (micro: number): number => micro / 1_000_000;

/** A rough token count for a text before the call (4 characters a token, rounded up). */
export const estimateTokens = (text: string): number => Math.ceil(text.length / 4);
