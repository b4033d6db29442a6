/**
 * `?wait=` waiters are woken when their run ends or parks (`notify`); besides that, one shared sweep reads the waited
 * runs once a second, so a run whose end came without a wake-up (here: written behind this Keel's back, as another
 * host or a lost wake-up would leave it) still wakes its waiters soon, not at their deadline. Many waiters on one
 * run share that read and all wake.
 */
import assert from "node:assert/strict";
import { startTestKeel } from "../_support/keel.ts";
import type { RunRecord } from "../../core/journal/mod.ts";

Deno.test("waiters on a run that ends without a wake-up are woken by the sweep, long before their deadline", async () => {
  const k = await startTestKeel();
  const kv = await Deno.openKv(`${k.dataDir}/keel.kv`);
  try {
    const at = new Date().toISOString();
    const run: RunRecord = {
      id: "run_elsewhere",
      workflow: "w",
      plugin: "p",
      pluginVersion: "1.0.0",
      pins: {},
      input: {},
      priority: 5,
      status: "running",
      createdAt: at,
      updatedAt: at,
    } as RunRecord;
    await kv.set(["run", run.id], run);
    const t0 = performance.now();
    const waiters = Array.from({ length: 5 }, () => k.api("GET", `/api/runs/${run.id}?wait=60`));
    await new Promise((r) => setTimeout(r, 300));
    const still = await k.api("GET", `/api/runs/${run.id}`);
    assert.equal(still.body.status, "running", "the waiters are still waiting");
    await kv.set(["run", run.id], { ...run, status: "succeeded", output: { ok: 1 } });
    const answers = await Promise.all(waiters);
    const seconds = (performance.now() - t0) / 1000;
    for (const a of answers) {
      assert.equal(a.status, 200, JSON.stringify(a.body));
      assert.equal(a.body.status, "succeeded");
      assert.deepEqual(a.body.output, { ok: 1 });
    }
    // The sweep runs once a second; the waiters' deadline is 60 s away.
    assert.ok(seconds < 20, `woken after ${seconds.toFixed(1)} s: by the deadline, not the sweep`);
  } finally {
    kv.close();
    await k.close();
  }
});

Deno.test("a wait on a run that stays queued answers at its deadline with the run as it stands", async () => {
  const k = await startTestKeel();
  try {
    const res = await k.api("POST", "/api/plugins", {
      path: `${new URL("../fixtures/ctx_edges", import.meta.url).pathname}`,
      grant: {},
    });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    const run = await k.api("POST", "/api/workflows/kid/runs?delay=3600", { input: {} });
    assert.equal(run.body.status, "queued");
    const t0 = performance.now();
    const waited = await k.api("GET", `/api/runs/${run.body.runId}?wait=1.5`);
    assert.equal(waited.body.status, "queued");
    assert.ok(performance.now() - t0 >= 1400, "it waited out its deadline");
  } finally {
    await k.close();
  }
});
