/**
 * @module
 * Completed checkpoints are stored in chunks (KV layout 2), on a real Deno KV
 * file: `steps` reads chunks and own-key records back as one journal in step
 * order, a step too large to share goes alone, other records keep their own
 * keys, and the layout version moves 1 → 2 while a newer layout is refused.
 */
import assert from "node:assert/strict";
import { Effect, Layer, ManagedRuntime } from "effect";
import { KeelConfig } from "../../core/config/mod.ts";
import { Kv, KV_SCHEMA_VERSION } from "../../core/store/mod.ts";
import { Journal, type StepRecord } from "../../core/journal/mod.ts";
import { testConfig } from "../_support/keel.ts";

const runtimeFor = (dataDir: string) =>
  ManagedRuntime.make(
    Journal.layer.pipe(Layer.provideMerge(Kv.layer), Layer.provide(KeelConfig.layer(testConfig(dataDir)))),
  );

const at = "2026-01-01T00:00:00.000Z";
const step = (seq: number, value: unknown): StepRecord => ({
  seq,
  kind: "step",
  name: `s${seq}`,
  status: "done",
  value,
  startedAt: at,
  endedAt: at,
});

Deno.test("`Journal.stepsWrite()` chunks completed checkpoints, and `Journal.steps()` reads them back in order with own-key records", async () => {
  const dir = await Deno.makeTempDir();
  const rt = runtimeFor(dir);
  try {
    const big = "b".repeat(40 * 1024);
    const timer: StepRecord = {
      seq: 4,
      kind: "timer",
      name: "sleep",
      status: "waiting",
      value: { wakeAt: 1 },
      startedAt: at,
    };
    const steps = [step(1, "a"), step(2, { n: 2 }), step(3, big), timer, step(5, null), step(6, [1, 2, 3])];
    const read = await rt.runPromise(Effect.gen(function* () {
      const j = yield* Journal;
      yield* Effect.promise(() => j.submit("run_c", [j.stepsWrite("run_c", steps)]));
      // A later batch of the same run, and an own-key record written the old way.
      yield* Effect.promise(() => j.submit("run_c", [j.stepsWrite("run_c", [step(7, "seven"), step(8, "eight")])]));
      yield* j.recordStep("run_c", step(9, "own key"));
      return {
        all: yield* j.steps("run_c"),
        timer: yield* j.getStep("run_c", 4),
        chunked: yield* j.getStep("run_c", 1),
      };
    }));
    assert.deepEqual(read.all.map((s) => s.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert.deepEqual(read.all, [...steps, step(7, "seven"), step(8, "eight"), step(9, "own key")]);
    // The timer kept its own key (it changes later); checkpoints are read through `steps`, not `getStep`.
    assert.deepEqual(read.timer, timer);
    assert.equal(read.chunked, undefined);
  } finally {
    await rt.dispose();
  }
  // What the KV file holds: 1–2 share a chunk, 3 (40 KiB) goes alone, 5–6 share one, 7–8 share one; 4 and 9 own keys.
  const kv = await Deno.openKv(`${dir}/keel.kv`);
  try {
    const keys: string[] = [];
    for await (const e of kv.list({ prefix: ["run_step", "run_c"] })) {
      keys.push(`${e.key.slice(2).join(":")}=${Array.isArray(e.value) ? e.value.length : "own"}`);
    }
    assert.deepEqual(keys, ["1:steps=2", "3:steps=1", "4=own", "5:steps=2", "7:steps=2", "9=own"]);
  } finally {
    kv.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the KV layout version moves from 1 to 4 when this Keel opens an older data dir, and a newer one is refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const kv = await Deno.openKv(`${dir}/keel.kv`);
    await kv.set(["meta", "schema"], 1);
    kv.close();
    const rt = runtimeFor(dir);
    await rt.runPromise(Journal.use((j) => j.steps("none")));
    await rt.dispose();
    const after = await Deno.openKv(`${dir}/keel.kv`);
    assert.equal((await after.get(["meta", "schema"])).value, KV_SCHEMA_VERSION);
    assert.equal(KV_SCHEMA_VERSION, 4);
    await after.set(["meta", "schema"], 5);
    after.close();
    const newer = runtimeFor(dir);
    await assert.rejects(
      newer.runPromise(Journal.use((j) => j.steps("none"))),
      /layout version 5; this Keel understands up to 4/,
    );
    await newer.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
