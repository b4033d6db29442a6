/**
 * @module
 * The durable run journal: runs, steps and approvals on Deno KV.
 */
export * from "./Journal.ts";
export * from "./diverged.ts";
