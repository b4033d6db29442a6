/**
 * @module
 * Long-term memory (PGlite + pgvector) and the offline embedder.
 */
export * from "./Memory.ts";
export * from "./embed.ts";
