/** Priorities and delayed starts survive a restart. */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { Orchestrator, type StartOptions } from "../../core/orchestrator/mod.ts";

const start = (k: TestKeel, workflow: string, input: unknown, options: StartOptions = {}) =>
  k.keel.runtime.runPromise(Orchestrator.use((o) => o.start(workflow, input, "test", options)));
const until = async (k: TestKeel, runId: string, seconds = 60) => {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const run = (await k.api("GET", `/api/runs/${runId}?wait=1`)).body;
    if (["succeeded", "failed"].includes(run.status)) return run;
    if (Date.now() > deadline) assert.fail(`run ${runId} is ${run.status}`);
  }
};

Deno.test("after a restart, queued runs start by priority and a delayed start waits for its time", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-queue-restart-" });
  try {
    const ids: Record<string, string> = {};
    let notBefore = 0;
    const a = await startTestKeel({ dataDir, maxRuns: 1 });
    try {
      const res = await a.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/conc_limits`, grant: {} });
      assert.equal(res.status, 201);
      ids.busy = (await start(a, "spawner", { ms: 8000 })).id; // holds the only slot past close()
      await new Promise((r) => setTimeout(r, 300));
      ids.low = (await start(a, "one", { ms: 200 }, { priority: 1 })).id;
      ids.high = (await start(a, "one", { ms: 200 }, { priority: 9 })).id;
      notBefore = Date.now() + 12_000;
      ids.later = (await start(a, "one", { ms: 200 }, { priority: 9, notBefore })).id;
    } finally {
      await a.close();
    }
    const b = await startTestKeel({ dataDir, maxRuns: 1 });
    try {
      const low = await until(b, ids.low);
      const high = await until(b, ids.high);
      const later = await until(b, ids.later);
      assert.ok(high.output.t0 < low.output.t0, `high ${high.output.t0} low ${low.output.t0}`);
      assert.ok(later.output.t0 >= notBefore, `delayed run started ${notBefore - later.output.t0} ms early`);
    } finally {
      await b.close();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});
