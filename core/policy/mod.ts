/**
 * @module
 * Policy files and the policy engine.
 */
export * from "./PolicySet.ts";
export * from "./Policy.ts";
