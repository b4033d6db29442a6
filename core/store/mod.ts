/**
 * @module
 * State stores: Deno KV and the data-dir lock.
 */
export * from "./Kv.ts";
export * from "./GroupCommit.ts";
