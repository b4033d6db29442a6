/**
 * @module
 * Policy files, the `when` expression language, the policy engine, and the
 * rate and budget counters its decisions carry.
 */
export * from "./PolicySet.ts";
export * from "./Policy.ts";
export * from "./Expr.ts";
export * from "./LocalTime.ts";
export * from "./Limits.ts";
export * from "./lint.ts";
export * from "./explain.ts";
export * from "./simulate.ts";
