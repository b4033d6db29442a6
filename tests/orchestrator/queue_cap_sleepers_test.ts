/**
 * Review of the run-queue cap: runs parked on a durable timer (`ctx.sleep`) sit in the in-memory queue as timers,
 * but they wait for no slot; they must not make outside starts fail with 429. And a start that can never succeed
 * (unknown workflow, invalid input) must hear why, not "try again later".
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel } from "../_support/keel.ts";

Deno.test("sleeping runs do not fill the run queue: an outside start is not refused while nothing waits for a slot", async () => {
  const k = await startTestKeel({ maxRuns: 4, maxQueued: 2 });
  try {
    assert.equal(
      (await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/engine`, grant: {} })).status,
      201,
    );
    for (let i = 0; i < 2; i++) {
      const r = await k.api("POST", "/api/workflows/sleepy/runs?wait=5", { input: { ms: 60_000 } });
      assert.equal(r.body.status, "sleeping", JSON.stringify(r.body));
    }
    const r = await k.api("POST", "/api/workflows/sleepy/runs", { input: { ms: 60_000 } });
    assert.equal(r.status, 202, `a start with every slot free was refused: ${JSON.stringify(r.body)}`);
  } finally {
    await k.close();
  }
});

Deno.test("with a full queue, a start of an unknown workflow is a 404 and invalid input a 400, not 429", async () => {
  const k = await startTestKeel({ maxRuns: 1, maxQueued: 1 });
  try {
    for (const path of [`${ROOT}/tests/fixtures/engine_slow`, `${ROOT}/tests/fixtures/conc_limits`]) {
      assert.equal((await k.api("POST", "/api/plugins", { path, grant: {} })).status, 201);
    }
    const busy = await k.api("POST", "/api/workflows/one/runs", { input: { ms: 1500 } });
    assert.equal(busy.body.status, "running", JSON.stringify(busy.body));
    const queued = await k.api("POST", "/api/workflows/one/runs", { input: { ms: 0 } });
    assert.equal(queued.body.status, "queued", JSON.stringify(queued.body));
    const missing = await k.api("POST", "/api/workflows/no_such_workflow/runs", { input: {} });
    assert.equal(missing.status, 404, JSON.stringify(missing.body));
  } finally {
    await k.close();
  }
});
