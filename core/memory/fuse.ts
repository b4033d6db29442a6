/**
 * @module
 * Reciprocal rank fusion: one ranking from several (vector search and
 * full-text search). An item's score is the sum over lists of
 * `1 / (k + rank)`, so agreement between lists beats a high place in one,
 * and no list's raw scores need to be comparable with another's.
 */

/** The conventional RRF constant (Cormack et al., 2009). */
export const RRF_K = 60;

/** One fused result: its score and its 1-based rank in each input list (undefined where absent). */
export interface Fused {
  readonly id: string;
  readonly score: number;
  readonly ranks: ReadonlyArray<number | undefined>;
}

/** Fuse ranked id lists; ties go to the better best rank, then the id, so the order is total. */
export const fuseRanks = (lists: ReadonlyArray<ReadonlyArray<string>>, k = RRF_K): Fused[] => {
  const byId = new Map<string, { score: number; ranks: (number | undefined)[] }>();
  lists.forEach((list, l) => {
    list.forEach((id, i) => {
      const entry = byId.get(id) ?? { score: 0, ranks: lists.map(() => undefined) };
      if (entry.ranks[l] !== undefined) return;
      entry.ranks[l] = i + 1;
      entry.score += 1 / (k + i + 1);
      byId.set(id, entry);
    });
  });
  const best = (r: ReadonlyArray<number | undefined>) => Math.min(...r.map((x) => x ?? Infinity));
  return [...byId.entries()]
    .map(([id, e]) => ({ id, score: Math.round(e.score * 1e6) / 1e6, ranks: e.ranks }))
    .sort((a, b) => b.score - a.score || best(a.ranks) - best(b.ranks) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
};
