/**
 * @module
 * The journal records a step once, on a real Deno KV file, and survives a
 * reopen.
 */
import assert from "node:assert/strict";
import { Effect, Layer, ManagedRuntime } from "effect";
import { KeelConfig } from "../../core/config/mod.ts";
import { Kv } from "../../core/store/mod.ts";
import { Journal, type RunRecord } from "../../core/journal/mod.ts";
import { testConfig } from "../_support/keel.ts";

const runtimeFor = (dataDir: string) =>
  ManagedRuntime.make(
    Journal.layer.pipe(
      Layer.provideMerge(Kv.layer),
      Layer.provide(
        KeelConfig.layer(testConfig(dataDir)),
      ),
    ),
  );

const run: RunRecord = {
  id: "run_1",
  workflow: "w",
  plugin: "p",
  pluginVersion: "1.0.0",
  input: {},
  status: "running",
  createdAt: "2026-01-01T00:00:00.000Z",
  updatedAt: "2026-01-01T00:00:00.000Z",
};

Deno.test("`Journal.checkpoint()` records a step once: a second write of the same step returns the first", async () => {
  const dir = await Deno.makeTempDir();
  const rt = runtimeFor(dir);
  try {
    const [first, second] = await rt.runPromise(Effect.gen(function* () {
      const j = yield* Journal;
      yield* j.createRun(run);
      const step = { seq: 1, kind: "step" as const, name: "a", status: "done" as const, startedAt: "x" };
      const first = yield* j.checkpoint(run.id, { ...step, value: 1 });
      const second = yield* j.checkpoint(run.id, { ...step, value: 2 });
      return [first, second];
    }));
    assert.equal(first.value, 1);
    assert.equal(second.value, 1);
  } finally {
    await rt.dispose();
  }
  const again = runtimeFor(dir);
  try {
    const steps = await again.runPromise(Journal.use((j) => j.steps(run.id)));
    assert.deepEqual(steps.map((s) => s.value), [1]);
  } finally {
    await again.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("`Journal.updateRun()` with an expected status does not overwrite a run that moved on", async () => {
  const rt = runtimeFor(":memory:");
  try {
    const result = await rt.runPromise(Effect.gen(function* () {
      const j = yield* Journal;
      yield* j.createRun(run);
      yield* j.updateRun(run.id, { status: "succeeded" }, ["running"]);
      return yield* j.updateRun(run.id, { status: "failed" }, ["running"]);
    }));
    assert.equal(result, undefined);
    const stored = await rt.runPromise(Journal.use((j) => j.getRun(run.id)));
    assert.equal(stored?.status, "succeeded");
  } finally {
    await rt.dispose();
  }
});

Deno.test("`Journal.createRun()` refuses a duplicate run id", async () => {
  const rt = runtimeFor(":memory:");
  try {
    const exit = await rt.runPromiseExit(Journal.use((j) => Effect.andThen(j.createRun(run), j.createRun(run))));
    assert.equal(exit._tag, "Failure");
  } finally {
    await rt.dispose();
  }
});
