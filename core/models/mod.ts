/**
 * @module
 * Keel's model layer: the router (routes, fallback, retries, cache, budgets,
 * taint), its providers (Anthropic, Ollama, offline), prices and the model
 * configuration.
 */
export * from "./ModelRouter.ts";
export * from "./ModelsConfig.ts";
export * from "./Provider.ts";
export * from "./AnthropicProvider.ts";
export * from "./OllamaProvider.ts";
export * from "./OfflineProvider.ts";
export * from "./Pricing.ts";
export * from "./ResponseCache.ts";
export * from "./Untrusted.ts";
export * from "./checkModelRequest.ts";
