/**
 * @module
 * State stores: Deno KV, the data-dir lock, and the grouped commit that
 * carries many writes in one atomic (`GroupCommit`).
 */
export * from "./Kv.ts";
export * from "./GroupCommit.ts";
