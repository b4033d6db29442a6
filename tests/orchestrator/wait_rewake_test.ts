/**
 * Review: a `?wait=` caller woken by `notify` while its run goes on (an agent crash requeues it) must still be woken
 * when the run ends. `notify` wakes listeners synchronously: the waiter registers again (a new set) before `notify`
 * deletes the run's entry, which then deletes the new set and orphans the waiter until its deadline.
 */
import assert from "node:assert/strict";
import { startTestKeel } from "../_support/keel.ts";
import { ALLOW_FLAKY, installFlaky, startWitness } from "../_support/witness.ts";

Deno.test("a waiter of a run whose agent crashed and was replayed hears the run's end, not its own deadline", async () => {
  const witness = await startWitness();
  const k = await startTestKeel({
    policies: { "p.yaml": ALLOW_FLAKY },
  });
  try {
    await installFlaky(k, witness.port, "crasher");
    const dir = `${k.dataDir}/plugin-data/crasher`;
    await Deno.mkdir(dir, { recursive: true });
    const t0 = Date.now();
    const res = await k.api("POST", "/api/workflows/send_then_crash/runs?wait=25", {
      input: { effect: "flaky.note", tag: "x", counter: `${dir}/passes`, crashAfterMs: 100 },
    });
    const took = Date.now() - t0;
    assert.equal(res.body.status, "succeeded", JSON.stringify(res.body));
    assert.ok(took < 10_000, `the waiter returned after ${took} ms (its deadline), not at the run's end`);
  } finally {
    await k.close();
    await witness.close();
  }
});
