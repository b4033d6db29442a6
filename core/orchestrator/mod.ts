/**
 * @module
 * Runs: the run queue with priorities, delayed starts and concurrency limits,
 * the workflow context's calls (steps, effects, timers, approvals, children,
 * memory and models), cancel, leases and crash recovery, undo and replay.
 */
export * from "./Orchestrator.ts";
export * from "./replay.ts";
export * from "./undo.ts";
