/**
 * @module
 * The plugin host: install, Workers, permissions, RPC, module-graph checks.
 */
export * from "./PluginHost.ts";
export { checkModuleGraph } from "./moduleGraph.ts";
export type { HostCallHandler } from "./_connection.ts";
export { MAX_MESSAGE_BYTES } from "./_connection.ts";
