/**
 * @module
 * The plugin host: install, upgrade, grant and remove (folders and archives),
 * Workers and bubblewrap processes, permissions, RPC, health, module-graph
 * checks.
 */
export * from "./PluginHost.ts";
export { checkModuleGraph } from "./moduleGraph.ts";
export { PACKAGE_LIMITS, type PackageLimits, readArchiveManifest, readTarGz } from "./archive.ts";
export { isArchivePath, locatePackage } from "./store.ts";
export { type Activation, compareSemver } from "./registry.ts";
export type { RemoveRequest, UpgradePreview, UpgradeRequest, UpgradeResult } from "./lifecycle.ts";
export {
  DEFAULT_HEALTH,
  FAILURES_BEFORE_RESTART,
  type HealthStatus,
  type HealthTarget,
  startHealthChecks,
} from "./health.ts";
export type { HostCallHandler, Isolation } from "./_connection.ts";
export { MAX_IN_FLIGHT, MAX_MESSAGE_BYTES } from "./_connection.ts";
export { DEFAULT_LIMITS, type ProcessLimits, type SandboxReport } from "./_process.ts";
