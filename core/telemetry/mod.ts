/**
 * @module
 * Semantic events and the tamper-evident audit log.
 */
export * from "./Audit.ts";
export * from "./marks.ts";
