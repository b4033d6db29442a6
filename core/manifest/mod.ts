/**
 * @module
 * Plugin manifests and grants: parsing, validation, permission resolution.
 */
export * from "./Manifest.ts";
export * from "./Grant.ts";
export * from "./ManifestDiff.ts";
export * from "./SchemaChecker.ts";
