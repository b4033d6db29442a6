/**
 * @module
 * The Gateway, the one path to side effects, and its retry policy by effect class.
 */
export * from "./Gateway.ts";
export * from "./retry.ts";
