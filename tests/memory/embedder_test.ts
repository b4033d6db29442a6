/**
 * @module
 * Embedding providers: the real `ollama` npm client against a loopback
 * server speaking Ollama's `POST /api/embed`, batching, the 384-dimension
 * rule, failures as `EmbeddingError`, and memory recording which embedder
 * made each vector (vector search compares only vectors from the embedder in
 * use; full-text search still finds the others).
 */
import assert from "node:assert/strict";
import { Effect, Layer, ManagedRuntime } from "effect";
import { KeelConfig } from "../../core/config/mod.ts";
import {
  embedderFromSetting,
  EMBEDDING_DIM,
  layerOllama,
  Memory,
  MemoryDb,
  offlineEmbedder,
  ollamaEmbedder,
} from "../../core/memory/mod.ts";
import { ROOT } from "../_support/keel.ts";
import { startFakeOllamaEmbed } from "../_support/fake_ollama_embed.ts";
import { freshDataDir } from "./_pg_template.ts";

const runtime = (
  dataDir: string,
  embedder: Layer.Layer<never> = Layer.empty,
  setting: { embedder?: string; ollamaHost?: string } = {},
) =>
  ManagedRuntime.make(
    Memory.layer.pipe(
      Layer.provide(embedder),
      Layer.provide(
        KeelConfig.layer({
          dataDir,
          hostname: "127.0.0.1",
          port: 0,
          token: "t",
          policiesDir: `${ROOT}/policies`,
          root: ROOT,
          rpcTimeoutMs: 1000,
          eagerMemory: true,
          ...setting,
        }),
      ),
    ),
  );

Deno.test("the Ollama embedder sends texts to /api/embed in batches, asks for 384 dimensions, and returns unit vectors", async () => {
  const fake = await startFakeOllamaEmbed();
  try {
    const embedder = ollamaEmbedder({ host: fake.url, batchSize: 4 });
    const texts = Array.from({ length: 10 }, (_, i) => `note number ${i} about invoices`);
    const vectors = await Effect.runPromise(embedder.embed(texts));
    assert.equal(embedder.name, "ollama:nomic-embed-text");
    assert.equal(vectors.length, 10);
    for (const v of vectors) {
      assert.equal(v.length, EMBEDDING_DIM);
      assert.ok(Math.abs(Math.hypot(...v) - 1) < 1e-4);
    }
    assert.deepEqual(fake.requests.map((r) => [r.path, r.body.input.length]), [
      ["/api/embed", 4],
      ["/api/embed", 4],
      ["/api/embed", 2],
    ]);
    assert.ok(fake.requests.every((r) => r.body.model === "nomic-embed-text" && r.body.dimensions === 384));
    assert.deepEqual(fake.requests.flatMap((r) => r.body.input), texts, "in order, each text once");
  } finally {
    await fake.close();
  }
});

Deno.test("an Ollama model that answers in another dimension, an unknown model and a down server are EmbeddingErrors", async () => {
  const fake = await startFakeOllamaEmbed({ honoursDimensions: false });
  try {
    const fail = async (embedder: ReturnType<typeof ollamaEmbedder>) => {
      const exit = await Effect.runPromiseExit(embedder.embed(["hello"]));
      assert.equal(exit._tag, "Failure");
      return String(exit._tag === "Failure" && exit.cause);
    };
    assert.match(
      await fail(ollamaEmbedder({ host: fake.url })),
      /EmbeddingError.*returned 768 dimensions; Keel's memory stores 384/s,
    );
    fake.honoursDimensions = true;
    assert.match(await fail(ollamaEmbedder({ host: fake.url, model: "llama-embed" })), /"llama-embed".*not found/s);
    fake.failWith = 503;
    assert.match(await fail(ollamaEmbedder({ host: fake.url })), /EmbeddingError.*scripted failure/s);
  } finally {
    await fake.close();
  }
  assert.match(
    await Effect.runPromiseExit(ollamaEmbedder({ host: fake.url }).embed(["x"])).then((e) => String(e)),
    /EmbeddingError.*Cannot embed with Ollama model "nomic-embed-text"/s,
    "a server that is gone",
  );
});

Deno.test("memory embeds with the configured Ollama model, records it in provenance, and embeds only new items", async () => {
  const fake = await startFakeOllamaEmbed();
  const dir = await freshDataDir();
  try {
    const rt = runtime(dir, layerOllama({ host: fake.url }));
    const items = [
      "Ada pays invoices by bank transfer",
      "Bob prefers phone calls",
      "The VAT return is due in April",
    ].map((text) => ({ scope: "agent:crm", kind: "fact", text, provenance: { source: "operator" } }));
    const { written, again, hits } = await rt.runPromise(Effect.gen(function* () {
      const m = yield* Memory;
      const written = yield* m.rememberAll(items);
      const again = yield* m.rememberAll(items);
      const hits = yield* m.recall("how does Ada pay her invoices", {}, { actor: "operator" });
      return { written, again, hits };
    }));
    assert.ok(written.every((w) => w.created));
    assert.ok(again.every((w) => !w.created));
    assert.equal(hits.items[0].text, "Ada pays invoices by bank transfer");
    assert.ok(hits.items.every((i) => i.provenance.embedder === "ollama:nomic-embed-text"));
    assert.deepEqual(fake.requests.map((r) => r.body.input), [
      items.map((i) => i.text),
      ["how does Ada pay her invoices"],
    ], "one batch for the new items, nothing for the repeats, one for the query");

    fake.failWith = 500;
    const exit = await rt.runPromiseExit(
      Memory.use((m) =>
        m.remember({ scope: "agent:crm", kind: "fact", text: "never stored", provenance: { source: "operator" } })
      ),
    );
    assert.match(String(exit._tag === "Failure" && exit.cause), /EmbeddingError/);
    const count = await rt.runPromise(
      MemoryDb.use((db) =>
        db.run(
          "count",
          async (pg) => (await pg.query<{ n: number }>("select count(*)::int as n from memory_items")).rows[0].n,
        )
      ),
    );
    assert.equal(count, 3, "a failed embedding writes nothing");
    await rt.dispose();

    // The same memory opened with the offline embedder: other vectors are not compared, full text still finds them.
    const offline = runtime(dir);
    const later = await offline.runPromise(Memory.use((m) => m.recall("Ada invoices", {}, { actor: "operator" })));
    await offline.dispose();
    assert.equal(later.items[0].text, "Ada pays invoices by bank transfer");
    assert.ok(later.items.every((i) => i.vectorRank === undefined && i.textRank !== undefined));
  } finally {
    await fake.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("`embedderFromSetting()` reads offline, ollama and ollama:MODEL, and nothing else", () => {
  assert.equal(embedderFromSetting(undefined, "http://x"), offlineEmbedder);
  assert.equal(embedderFromSetting("offline", "http://x"), offlineEmbedder);
  assert.equal(embedderFromSetting("ollama", "http://x")?.name, "ollama:nomic-embed-text");
  assert.equal(embedderFromSetting("ollama:all-minilm", "http://x")?.name, "ollama:all-minilm");
  assert.equal(embedderFromSetting("openai", "http://x"), undefined);
});

Deno.test("KEEL_EMBEDDER picks memory's embedder at start, and a setting Keel does not know stops it with a clear error", async () => {
  const fake = await startFakeOllamaEmbed({ models: ["all-minilm"], nativeDim: 384 });
  const dir = await freshDataDir();
  try {
    const rt = runtime(dir, Layer.empty, { embedder: "ollama:all-minilm", ollamaHost: fake.url });
    const hit = await rt.runPromise(Effect.gen(function* () {
      const m = yield* Memory;
      yield* m.remember({ scope: "s", kind: "fact", text: "Ada pays by transfer", provenance: { source: "operator" } });
      return (yield* m.recall("Ada", {}, { actor: "operator" })).items[0];
    }));
    await rt.dispose();
    assert.equal(hit.provenance.embedder, "ollama:all-minilm");
    assert.equal(fake.requests.length, 2);

    const wrong = runtime(dir, Layer.empty, { embedder: "openai:ada-002" });
    const exit = await wrong.runPromiseExit(Memory.use((m) => m.get("x")));
    await wrong.dispose();
    assert.match(
      String(exit._tag === "Failure" && exit.cause),
      /KEEL_EMBEDDER must be "offline", "ollama" or "ollama:MODEL": got "openai:ada-002"/,
    );
  } finally {
    await fake.close();
    await Deno.remove(dir, { recursive: true });
  }
});
