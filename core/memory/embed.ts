/**
 * @module
 * The offline embedding: no model, deterministic. Word unigrams, word bigrams
 * and character trigrams are hashed (FNV-1a) into a fixed number of signed
 * buckets and L2-normalised. It captures lexical overlap, not meaning; it
 * exists so memory works with no model installed, and is named as such in
 * every item's provenance (`embedder: "hash-ngram-384"`). Vectors are
 * rounded to 6 decimals so the same text gives the same bytes everywhere.
 */

/** Dimension of every vector memory stores (the column is `vector(384)`). */
export const EMBEDDING_DIM = 384;
/** Dimension of the offline embedding. */
export const OFFLINE_DIM = EMBEDDING_DIM;
/** The name recorded with vectors from this embedder. */
export const OFFLINE_EMBEDDER = "hash-ngram-384";

const fnv1a = (text: string): number => {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
};

/** Embed a text into a unit vector of `OFFLINE_DIM` numbers. */
export const embedOffline = (text: string, dim = OFFLINE_DIM): number[] => {
  const v = new Float64Array(dim);
  const words = text.toLowerCase().normalize("NFKC").match(/[\p{L}\p{N}]+/gu) ?? [];
  const add = (feature: string, weight: number) => {
    const h = fnv1a(feature);
    v[h % dim] += (h & 0x80000000 ? -1 : 1) * weight;
  };
  words.forEach((w, i) => {
    add(`w:${w}`, 1);
    if (i > 0) add(`b:${words[i - 1]} ${w}`, 0.5);
    const padded = ` ${w} `;
    for (let j = 0; j + 3 <= padded.length; j++) add(`c:${padded.slice(j, j + 3)}`, 0.25);
  });
  const norm = Math.hypot(...v) || 1;
  return Array.from(v, (x) => Math.round((x / norm) * 1e6) / 1e6);
};
