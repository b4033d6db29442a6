/**
 * @module
 * The HTTP API, its OpenAPI document, and the server that bounds its connections.
 */
export * from "./app.ts";
export * from "./errors.ts";
export { openApiDocument } from "./openapi.ts";
export { BodyDeadlines } from "./params.ts";
export * from "./server.ts";
