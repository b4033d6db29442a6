/**
 * @module
 * The Gateway, the one path to side effects.
 */
export * from "./Gateway.ts";
