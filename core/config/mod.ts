/**
 * @module
 * Configuration service and helpers.
 */
export * from "./Config.ts";
