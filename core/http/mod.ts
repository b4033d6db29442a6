/**
 * @module
 * The HTTP API and its OpenAPI document.
 */
export * from "./app.ts";
export * from "./errors.ts";
export { openApiDocument } from "./openapi.ts";
