/**
 * @module
 * The content-addressed response cache in Deno KV. Only deterministic calls
 * are cached (temperature 0, or the offline provider): the key is a SHA-256
 * of everything that decides the answer — provider, model, system prompt,
 * rendered messages, tools, schema, max tokens and temperature — so a hit is
 * the answer that request got before, and any change is a miss. Entries
 * expire after the configured TTL; an answer too large for one KV value is
 * simply not cached.
 */
import { Effect } from "effect";
import { kvTry } from "../store/mod.ts";
import type { StoreError } from "../errors/mod.ts";
import { canonicalJson, sha256Hex } from "../manifest/mod.ts";
import type { ProviderAnswer, ProviderCall } from "./Provider.ts";

/** Largest cached answer, in bytes of JSON (a Deno KV value holds at most 64 KiB). */
export const MAX_CACHED_BYTES = 60 * 1024;

/** The cache key of a call to one provider. */
export const cacheKey = (provider: string, call: ProviderCall): Effect.Effect<string> =>
  Effect.promise(() =>
    sha256Hex(canonicalJson({
      v: 1,
      provider,
      model: call.model,
      purpose: call.purpose,
      system: call.system,
      messages: call.messages,
      tools: call.tools,
      schema: call.schema ?? null,
      maxTokens: call.maxTokens,
      temperature: call.temperature,
    }))
  );

/** A cache over a Deno KV handle. */
export interface ResponseCache {
  get(key: string): Effect.Effect<ProviderAnswer | undefined, StoreError>;
  put(key: string, answer: ProviderAnswer, ttlMs: number): Effect.Effect<void, StoreError>;
}

/** The response cache in `kv` under `["model_cache", key]`. */
export const kvResponseCache = (kv: Deno.Kv): ResponseCache => ({
  get: (key) =>
    kvTry(
      "Cannot read the model cache",
      async () => (await kv.get<ProviderAnswer>(["model_cache", key])).value ?? undefined,
    ),
  put: (key, answer, ttlMs) =>
    kvTry("Cannot write the model cache", async () => {
      if (new TextEncoder().encode(JSON.stringify(answer)).length > MAX_CACHED_BYTES) return;
      await kv.set(["model_cache", key], answer, { expireIn: ttlMs });
    }),
});
