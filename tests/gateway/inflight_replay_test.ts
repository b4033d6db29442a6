/**
 * @module
 * An agent that dies while one of its effects is with the connector is replayed, and the replay asks for the same
 * effect at the same step while the first call is still out. That call is not lost and not made again: the replay
 * gets its outcome when it comes. An irreversible send is delivered once and the operator is not asked about an
 * outcome Keel is about to learn.
 */
import assert from "node:assert/strict";
import { startTestKeel } from "../_support/keel.ts";
import { ALLOW_FLAKY, installFlaky, startWitness } from "../_support/witness.ts";

for (const effect of ["flaky.send", "flaky.note"]) {
  Deno.test(`an agent that dies while ${effect} is with the connector: the replay gets that call's outcome, sent once`, async () => {
    const witness = await startWitness("all");
    const k = await startTestKeel({ policies: { "p.yaml": ALLOW_FLAKY } });
    try {
      await installFlaky(k, witness.port, "crasher");
      const dir = `${k.dataDir}/plugin-data/crasher`;
      await Deno.mkdir(dir, { recursive: true });
      const started = await k.api("POST", "/api/workflows/send_then_crash/runs", {
        input: { effect, tag: "once", counter: `${dir}/passes`, crashAfterMs: 100 },
      });
      assert.equal(started.status, 202, JSON.stringify(started.body));
      const runId = started.body.runId;
      await witness.arrived;
      // The agent dies 100 ms after sending; Keel replays it after a pause. The first call is still held.
      let replayed = false;
      for (let i = 0; i < 100 && !replayed; i++) {
        const events = (await k.api("GET", `/api/audit?runId=${runId}`)).body.events;
        replayed = events.some((e: { type: string }) => e.type === "run.agent_crashed");
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(replayed, "the agent died and the run was replayed");
      await new Promise((r) => setTimeout(r, 1000));
      witness.release();
      const done = (await k.api("GET", `/api/runs/${runId}?wait=30`)).body;
      assert.equal(done.status, "succeeded", JSON.stringify(done));
      assert.equal(done.output.passes, 2);
      assert.deepEqual(done.output.sent, { tag: "once", n: 1 });
      assert.equal(witness.calls.length, 1, `sent ${witness.calls.length} times`);
      const asked = (await k.api("GET", "/api/approvals")).body.approvals;
      assert.deepEqual(asked, [], "nobody was asked about an outcome Keel learnt");
    } finally {
      witness.release();
      await k.close();
      await witness.close();
    }
  });
}
