/**
 * @module
 * Memory on real PGlite with pgvector: provenance on every item, writes
 * idempotent by content hash per scope, recall by the offline embedder, and
 * items still there after the database is closed and opened again.
 */
import assert from "node:assert/strict";
import { Effect, Layer, ManagedRuntime } from "effect";
import { KeelConfig } from "../../core/config/mod.ts";
import { embedOffline, Memory, OFFLINE_DIM } from "../../core/memory/mod.ts";
import { testConfig } from "../_support/keel.ts";

const runtimeFor = (dataDir: string) =>
  ManagedRuntime.make(
    Memory.layer.pipe(
      Layer.provide(
        KeelConfig.layer(testConfig(dataDir, { eagerMemory: true })),
      ),
    ),
  );

Deno.test("`Memory.remember()` keeps provenance, is idempotent per scope, and survives a reopen", async () => {
  const dir = await Deno.makeTempDir({ prefix: "keel-memory-" });
  const provenance = { runId: "run_a", seq: 1, plugin: "onboarding", source: "workflow:onboard_client" };
  const rt = runtimeFor(dir);
  try {
    const [a, b, c] = await rt.runPromise(Effect.gen(function* () {
      const m = yield* Memory;
      const a = yield* m.remember({ scope: "agent:x", kind: "fact", text: "Ada prefers email over calls", provenance });
      const b = yield* m.remember({ scope: "agent:x", kind: "fact", text: "Ada prefers email over calls", provenance });
      const c = yield* m.remember({ scope: "agent:y", kind: "fact", text: "Ada prefers email over calls", provenance });
      yield* m.remember({ scope: "agent:x", kind: "note", text: "Invoices go out on the first Monday", provenance });
      return [a, b, c];
    }));
    assert.equal(a.created, true);
    assert.deepEqual(b, { id: a.id, created: false }, "same text in the same scope is written once");
    assert.equal(c.created, true, "another scope keeps its own copy");
  } finally {
    await rt.dispose();
  }
  const again = runtimeFor(dir);
  try {
    const hits = await again.runPromise(
      Memory.use((m) => m.search("how does Ada like to be contacted? email", { scope: "agent:x" })),
    );
    assert.equal(hits.length, 2);
    assert.equal(hits[0].text, "Ada prefers email over calls");
    assert.ok(hits[0].score > hits[1].score);
    assert.deepEqual(
      { ...hits[0].provenance, contentHash: typeof hits[0].provenance.contentHash },
      { ...provenance, contentHash: "string", embedder: "hash-ngram-384" },
    );
  } finally {
    await again.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("`embedOffline()` is deterministic, unit length, and closer for overlapping texts", () => {
  const a = embedOffline("send the invoice to Ada");
  assert.deepEqual(a, embedOffline("send the invoice to Ada"));
  assert.equal(a.length, OFFLINE_DIM);
  const dot = (x: number[], y: number[]) => x.reduce((s, v, i) => s + v * y[i], 0);
  assert.ok(Math.abs(dot(a, a) - 1) < 1e-3);
  assert.ok(dot(a, embedOffline("invoice for Ada")) > dot(a, embedOffline("walk the dog at noon")));
});
