/**
 * The run queue's cap counts runs that wait in the queue, and starts on their way into it. A start that takes a free
 * slot at once never enters the queue: while its first write commits it must not count against the cap, or starts
 * arriving together are refused with 429 although nothing waits and slots are free.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, TEST_TOKEN } from "../_support/keel.ts";

Deno.test("starts at once with free slots and an empty queue are all taken: a start that runs at once is not queued", async () => {
  const k = await startTestKeel({ maxRuns: 16, maxQueued: 1 });
  try {
    const path = `${ROOT}/tests/fixtures/bench_workflows`;
    assert.equal((await k.api("POST", "/api/plugins", { path, grant: {} })).status, 201);
    const input = { steps: 2, bytes: 8, checkpoint: true };
    // Warm: the agent is started, so the starts below are not held up by its launch.
    assert.equal((await k.api("POST", "/api/workflows/bench_w1/runs?wait=10", { input })).body.status, "succeeded");
    for (let round = 0; round < 3; round++) {
      const answers = await Promise.all(Array.from({ length: 6 }, () =>
        fetch(`${k.url}/api/workflows/bench_w1/runs`, {
          method: "POST",
          headers: { authorization: `Bearer ${TEST_TOKEN}`, "content-type": "application/json" },
          body: JSON.stringify({ input }),
        }).then(async (r) => ({ status: r.status, body: await r.json() }))));
      // Six starts, sixteen free slots: none of them waits in the queue, so the cap of one has nothing to refuse.
      const refused = answers.filter((a) => a.status === 429);
      assert.equal(refused.length, 0, `round ${round}: ${JSON.stringify(refused.map((a) => a.body.error?.message))}`);
      assert.ok(answers.every((a) => a.status === 202), JSON.stringify(answers.map((a) => a.status)));
    }
  } finally {
    await k.close();
  }
});
