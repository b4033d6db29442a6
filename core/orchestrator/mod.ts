/**
 * @module
 * Runs: start, replay, approvals, recovery.
 */
export * from "./Orchestrator.ts";
