/**
 * @module
 * Embedding providers. Memory turns text into vectors through the `Embedder`
 * reference: by default the offline embedder (hashed n-grams, no model, see
 * `embed.ts`); `layerOllama` swaps in an Ollama model through the `ollama`
 * npm client (`POST /api/embed`), in batches.
 *
 * Dimension: memory stores `vector(384)`, so every provider must give 384
 * numbers. The Ollama provider asks for 384 (`dimensions`, honoured by
 * Matryoshka models such as `nomic-embed-text` v1.5 on a recent Ollama) and
 * refuses any other length with a clear error rather than truncating a model
 * that was not trained for it: use a 384-dimension model (`all-minilm`,
 * `bge-small`) or one that honours `dimensions`. Each item records the
 * embedder that made its vector, and vector search compares only vectors
 * from the current embedder (full-text search still finds the rest).
 */
import { Context, Effect, Layer } from "effect";
import { Ollama } from "ollama";
import { EmbeddingError } from "../errors/mod.ts";
import { EMBEDDING_DIM, embedOffline, OFFLINE_EMBEDDER } from "./embed.ts";

/** What memory needs from an embedding provider. */
export interface EmbedderShape {
  /** Recorded with every vector (`hash-ngram-384`, `ollama:nomic-embed-text`). */
  readonly name: string;
  /** Always `EMBEDDING_DIM`. */
  readonly dim: number;
  /** One vector per text, in order. */
  embed(texts: ReadonlyArray<string>): Effect.Effect<number[][], EmbeddingError>;
}

/** The offline embedder: hashed word and character n-grams, no model. */
export const offlineEmbedder: EmbedderShape = {
  name: OFFLINE_EMBEDDER,
  dim: EMBEDDING_DIM,
  embed: (texts) => Effect.sync(() => texts.map((text) => embedOffline(text))),
};

/** The embedder memory uses; the offline one unless a layer provides another. */
export const Embedder: Context.Reference<EmbedderShape> = Context.Reference<EmbedderShape>("keel/memory/Embedder", {
  defaultValue: () => offlineEmbedder,
});

/** Where and how to reach Ollama. */
export interface OllamaEmbedderOptions {
  /** Base URL, e.g. `http://127.0.0.1:11434`. */
  readonly host: string;
  /** Default `nomic-embed-text`. */
  readonly model?: string;
  /** Texts per request; default 32. */
  readonly batchSize?: number;
}

const unit = (v: ReadonlyArray<number>): number[] => {
  const norm = Math.hypot(...v) || 1;
  return v.map((x) => Math.round((x / norm) * 1e6) / 1e6);
};

/** An embedder backed by an Ollama model, `batchSize` texts per request. */
export const ollamaEmbedder = (options: OllamaEmbedderOptions): EmbedderShape => {
  const model = options.model ?? "nomic-embed-text";
  const batchSize = Math.max(1, Math.floor(options.batchSize ?? 32));
  const client = new Ollama({ host: options.host });
  const fail = (why: string) =>
    new EmbeddingError({
      message: `Cannot embed with Ollama model "${model}" at ${options.host}: ${why}`,
      details: { provider: "ollama", model, host: options.host },
    });
  const batch = (texts: string[]) =>
    Effect.tryPromise({
      try: () => client.embed({ model, input: texts, dimensions: EMBEDDING_DIM, truncate: true }),
      catch: (cause) => fail(cause instanceof Error ? cause.message : String(cause)),
    }).pipe(
      Effect.flatMap((res) => {
        const vectors = Array.isArray(res?.embeddings) ? res.embeddings : [];
        if (vectors.length !== texts.length) {
          return Effect.fail(fail(`asked for ${texts.length} vectors, got ${vectors.length}`));
        }
        const wrong = vectors.find((v) => !Array.isArray(v) || v.length !== EMBEDDING_DIM);
        if (wrong) {
          return Effect.fail(
            fail(
              `it returned ${
                Array.isArray(wrong) ? wrong.length : "no"
              } dimensions; Keel's memory stores ${EMBEDDING_DIM}: use a model that honours "dimensions" or a ${EMBEDDING_DIM}-dimension model`,
            ),
          );
        }
        if (vectors.some((v) => v.some((x) => typeof x !== "number" || !Number.isFinite(x)))) {
          return Effect.fail(fail("it returned a vector with a non-finite number"));
        }
        return Effect.succeed(vectors.map(unit));
      }),
    );
  return {
    name: `ollama:${model}`,
    dim: EMBEDDING_DIM,
    embed: Effect.fn("Embedder.embed")(function* (texts: ReadonlyArray<string>) {
      const out: number[][] = [];
      for (let i = 0; i < texts.length; i += batchSize) {
        out.push(...(yield* batch(texts.slice(i, i + batchSize))));
      }
      return out;
    }),
  };
};

/** Memory embeds with Ollama instead of the offline embedder. */
export const layerOllama = (options: OllamaEmbedderOptions): Layer.Layer<never> =>
  Layer.succeed(Embedder, ollamaEmbedder(options));

/**
 * The embedder named by a setting such as `KEEL_EMBEDDER`: `offline` (or
 * empty) or `ollama` / `ollama:MODEL`; undefined for anything else.
 */
export const embedderFromSetting = (setting: string | undefined, ollamaHost: string): EmbedderShape | undefined => {
  const value = (setting ?? "").trim();
  if (value === "" || value === "offline") return offlineEmbedder;
  const m = /^ollama(?::(.+))?$/.exec(value);
  return m ? ollamaEmbedder({ host: ollamaHost, model: m[1] }) : undefined;
};
