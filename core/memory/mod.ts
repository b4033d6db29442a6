/**
 * @module
 * Long-term memory (PGlite + pgvector): items with provenance, hybrid recall
 * with a retrieval log, structured records, deterministic summaries, undoing
 * a run's writes, and the embedding providers.
 */
export * from "./Memory.ts";
export * from "./Records.ts";
export * from "./MemoryDb.ts";
export * from "./Embedder.ts";
export * from "./embed.ts";
export * from "./fuse.ts";
export * from "./migrations.ts";
export * from "./recallOptions.ts";
export * from "./summarize.ts";
