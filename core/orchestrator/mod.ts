/**
 * @module
 * Runs: start, replay, approvals, recovery, undo.
 */
export * from "./Orchestrator.ts";
export * from "./replay.ts";
export * from "./undo.ts";
