/**
 * @module
 * A keyed write that keeps failing is tried at most its `maxAttempts` times in all, across a restart of Keel in
 * the middle of its retries: the next Keel counts the attempts the first one made. (It used to start counting
 * again, so a restart during a backoff bought the effect a fresh set of attempts.)
 */
import assert from "node:assert/strict";
import { startTestKeel, type TestKeel } from "../_support/keel.ts";
import { ALLOW_FLAKY, installFlaky, startWitness } from "../_support/witness.ts";

Deno.test("a keyed write's attempts before a restart count against its maxAttempts after it", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-test-" });
  const witness = await startWitness();
  let k: TestKeel | undefined;
  try {
    k = await startTestKeel({ dataDir, policies: { "p.yaml": ALLOW_FLAKY } });
    await installFlaky(k, witness.port, "caller");
    // Fails every time; up to 4 s between attempts, at most 5 attempts.
    const started = await k.api("POST", "/api/workflows/flaky_call/runs", {
      input: { effect: "flaky.slow_note", args: { tag: "never", failTimes: 1000 } },
    });
    assert.equal(started.status, 202, JSON.stringify(started.body));
    const runId = started.body.runId;
    for (let i = 0; i < 200 && witness.calls.length < 2; i++) await new Promise((r) => setTimeout(r, 50));
    assert.ok(witness.calls.length >= 2, "two attempts were made before the restart");
    await k.close();
    k = undefined;
    const beforeRestart = witness.calls.length;

    k = await startTestKeel({ dataDir, policies: { "p.yaml": ALLOW_FLAKY } });
    const done = (await k.api("GET", `/api/runs/${runId}?wait=60`)).body;
    assert.equal(done.status, "failed", JSON.stringify(done));
    assert.ok(
      witness.calls.length <= 5,
      `${witness.calls.length} attempts in all (${beforeRestart} before the restart); maxAttempts is 5`,
    );
    assert.ok(new Set(witness.calls.map((c) => c.key)).size === 1, "every attempt carried the same key");
  } finally {
    await k?.close();
    await witness.close();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});
