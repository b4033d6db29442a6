/**
 * @module
 * The model configuration: `models.json` in the policies folder (JSON, so the
 * policy loader, which reads `*.yaml`, leaves it alone). It names providers
 * (their endpoints and the environment variable holding an API key), routes
 * from purposes to an ordered list of provider and model (the first that
 * answers wins; the rest are fallbacks), prices, retries and the cache.
 * Budgets are policy: a rule matching effect `model.generate` with
 * `limits.budget` caps what paid calls may spend. With no file, every
 * purpose routes to the offline provider: Keel makes no network call for a
 * model unless the operator configured one. A file that does not validate
 * stops Keel from starting, naming the field.
 *
 * ```json
 * {
 *   "providers": {
 *     "local": { "type": "ollama", "host": "http://127.0.0.1:11434" },
 *     "claude": { "type": "anthropic", "apiKeyEnv": "ANTHROPIC_API_KEY" }
 *   },
 *   "routes": [
 *     { "purpose": ["route", "classify"], "use": [{ "provider": "local", "model": "llama3.2:3b" }, { "provider": "offline" }] },
 *     { "purpose": ["draft", "plan"], "use": [{ "provider": "claude", "model": "claude-sonnet-4-6" }, { "provider": "offline" }] }
 *   ]
 * }
 * ```
 */
import { Effect } from "effect";
import { Validator } from "@cfworker/json-schema";
import { ModelConfigError } from "../errors/mod.ts";
import { schemaErrors } from "../manifest/mod.ts";
import { DEFAULT_PRICING, type Price } from "./Pricing.ts";

/** One configured provider. */
export type ProviderConfig =
  | {
    readonly type: "anthropic";
    readonly baseURL: string;
    /** Name of the environment variable holding the API key (never the key itself). */
    readonly apiKeyEnv: string;
    readonly stream: boolean;
    readonly timeoutMs: number;
  }
  | { readonly type: "ollama"; readonly host: string; readonly stream: boolean; readonly timeoutMs: number };

/** One step of a route: a provider and, except for `offline`, a model. */
export interface RouteTarget {
  readonly provider: string;
  readonly model: string;
}

/** Purposes (globs) and the targets to try, in order. */
export interface Route {
  readonly purpose: ReadonlyArray<string>;
  readonly use: ReadonlyArray<RouteTarget>;
  readonly maxTokens?: number;
}

/** Resolved model configuration. */
export interface ModelsConfig {
  /** Where it was read from, or `built-in` when there is no file. */
  readonly source: string;
  readonly providers: Readonly<Record<string, ProviderConfig>>;
  readonly routes: ReadonlyArray<Route>;
  readonly pricing: Readonly<Record<string, Price>>;
  readonly retry: { readonly maxAttempts: number; readonly baseDelayMs: number; readonly maxDelayMs: number };
  readonly cache: { readonly enabled: boolean; readonly ttlHours: number };
  /** Default answer length when neither request nor route says. */
  readonly maxTokens: number;
}

/** The name of the always-present offline provider. */
export const OFFLINE = "offline";

/** The configuration with no file: everything offline, nothing paid. */
export const DEFAULT_MODELS_CONFIG: ModelsConfig = {
  source: "built-in",
  providers: {},
  routes: [{ purpose: ["*"], use: [{ provider: OFFLINE, model: "offline-deterministic-v1" }] }],
  pricing: DEFAULT_PRICING,
  retry: { maxAttempts: 3, baseDelayMs: 500, maxDelayMs: 30_000 },
  cache: { enabled: true, ttlHours: 24 * 7 },
  maxTokens: 1024,
};

const positive = { type: "number", minimum: 0 };
const SCHEMA = {
  type: "object",
  additionalProperties: false,
  properties: {
    $schema: { type: "string" },
    providers: {
      type: "object",
      propertyNames: { pattern: "^[a-z][a-z0-9_-]{0,31}$" },
      additionalProperties: {
        type: "object",
        required: ["type"],
        properties: {
          type: { enum: ["anthropic", "ollama"] },
          baseURL: { type: "string", pattern: "^https?://" },
          host: { type: "string", pattern: "^https?://" },
          apiKeyEnv: { type: "string", pattern: "^[A-Za-z_][A-Za-z0-9_]*$" },
          stream: { type: "boolean" },
          timeoutMs: { type: "integer", minimum: 10, maximum: 600_000 },
        },
        additionalProperties: false,
      },
    },
    routes: {
      type: "array",
      items: {
        type: "object",
        required: ["purpose", "use"],
        additionalProperties: false,
        properties: {
          purpose: {
            anyOf: [{ type: "string", minLength: 1 }, {
              type: "array",
              minItems: 1,
              items: { type: "string", minLength: 1 },
            }],
          },
          use: {
            type: "array",
            minItems: 1,
            items: {
              type: "object",
              required: ["provider"],
              additionalProperties: false,
              properties: { provider: { type: "string" }, model: { type: "string", minLength: 1 } },
            },
          },
          maxTokens: { type: "integer", minimum: 1, maximum: 200_000 },
        },
      },
    },
    pricing: {
      type: "object",
      additionalProperties: {
        type: "object",
        required: ["inputPerMTok", "outputPerMTok"],
        additionalProperties: false,
        properties: { inputPerMTok: positive, outputPerMTok: positive },
      },
    },
    retry: {
      type: "object",
      additionalProperties: false,
      properties: {
        maxAttempts: { type: "integer", minimum: 1, maximum: 10 },
        baseDelayMs: { type: "integer", minimum: 0, maximum: 60_000 },
        maxDelayMs: { type: "integer", minimum: 0, maximum: 600_000 },
      },
    },
    cache: {
      type: "object",
      additionalProperties: false,
      properties: { enabled: { type: "boolean" }, ttlHours: { type: "number", exclusiveMinimum: 0 } },
    },
    maxTokens: { type: "integer", minimum: 1, maximum: 200_000 },
  },
};
const validator = new Validator(SCHEMA as Record<string, unknown>, "2020-12", false);

/** Check and resolve a parsed `models.json`; `file` names it in errors. */
export const parseModelsConfig = (raw: unknown, file: string): Effect.Effect<ModelsConfig, ModelConfigError> =>
  Effect.gen(function* () {
    const fail = (why: string) =>
      new ModelConfigError({ message: `Invalid model config "${file}": ${why}`, details: { file } });
    const errors = schemaErrors(validator, raw);
    if (errors.length) return yield* fail(errors[0]);
    const r = raw as Record<string, any>;
    const providers: Record<string, ProviderConfig> = {};
    for (const [name, p] of Object.entries((r.providers ?? {}) as Record<string, Record<string, any>>)) {
      if (name === OFFLINE) return yield* fail(`provider name "offline" is built in`);
      const timeoutMs = p.timeoutMs ?? 120_000;
      const stream = p.stream ?? true;
      if (p.type === "anthropic") {
        if (p.host !== undefined) return yield* fail(`field "providers.${name}.host" is for ollama; use "baseURL"`);
        providers[name] = {
          type: "anthropic",
          baseURL: p.baseURL ?? "https://api.anthropic.com",
          apiKeyEnv: p.apiKeyEnv ?? "ANTHROPIC_API_KEY",
          stream,
          timeoutMs,
        };
      } else {
        if (p.baseURL !== undefined || p.apiKeyEnv !== undefined) {
          return yield* fail(`field "providers.${name}" of type ollama takes "host", not "baseURL" or "apiKeyEnv"`);
        }
        providers[name] = { type: "ollama", host: p.host ?? "http://127.0.0.1:11434", stream, timeoutMs };
      }
    }
    const routes: Route[] = [];
    for (const [i, route] of ((r.routes ?? []) as Array<Record<string, any>>).entries()) {
      const use: RouteTarget[] = [];
      for (const [j, t] of (route.use as Array<{ provider: string; model?: string }>).entries()) {
        if (t.provider !== OFFLINE && !providers[t.provider]) {
          return yield* fail(`field "routes.${i}.use.${j}.provider" names "${t.provider}", which is not configured`);
        }
        if (t.provider !== OFFLINE && t.model === undefined) {
          return yield* fail(`field "routes.${i}.use.${j}.model" is required for provider "${t.provider}"`);
        }
        use.push({ provider: t.provider, model: t.model ?? "offline-deterministic-v1" });
      }
      routes.push({
        purpose: Array.isArray(route.purpose) ? route.purpose : [route.purpose],
        use,
        ...(route.maxTokens ? { maxTokens: route.maxTokens } : {}),
      });
    }
    return {
      source: file,
      providers,
      // Anything no route names still works, offline.
      routes: [...routes, ...DEFAULT_MODELS_CONFIG.routes],
      pricing: { ...DEFAULT_PRICING, ...(r.pricing ?? {}) },
      retry: { ...DEFAULT_MODELS_CONFIG.retry, ...(r.retry ?? {}) },
      cache: { ...DEFAULT_MODELS_CONFIG.cache, ...(r.cache ?? {}) },
      maxTokens: r.maxTokens ?? DEFAULT_MODELS_CONFIG.maxTokens,
    };
  });

/** Read `<dir>/models.json`; no file means the built-in offline configuration. */
export const loadModelsConfig = (dir: string): Effect.Effect<ModelsConfig, ModelConfigError> =>
  Effect.gen(function* () {
    const file = `${dir}/models.json`;
    const text = yield* Effect.try({ try: () => Deno.readTextFileSync(file), catch: (cause) => cause }).pipe(
      Effect.catch((cause) =>
        cause instanceof Deno.errors.NotFound
          ? Effect.succeed(undefined)
          : Effect.fail(new ModelConfigError({ message: `Cannot read model config "${file}": ${String(cause)}` }))
      ),
    );
    if (text === undefined) return DEFAULT_MODELS_CONFIG;
    const raw = yield* Effect.try({
      try: () => JSON.parse(text) as unknown,
      catch: (cause) =>
        new ModelConfigError({
          message: `Invalid model config "${file}": not JSON: ${(cause as Error).message}`,
          details: { file },
        }),
    });
    return yield* parseModelsConfig(raw, file);
  });

/** Does a purpose glob match a purpose? */
export const purposeMatches = (pattern: string, purpose: string): boolean =>
  new RegExp(`^${pattern.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replaceAll("*", ".*")}$`).test(purpose);
