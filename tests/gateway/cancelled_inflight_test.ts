/**
 * Review: a run cancelled while its (detached) effect call is still with the connector must stay cancelled.
 * The call's later unknown outcome must not park the ended run on a fresh approval.
 */
import assert from "node:assert/strict";
import { startTestKeel } from "../_support/keel.ts";
import { ALLOW_FLAKY, installFlaky, startWitness } from "../_support/witness.ts";

Deno.test("a cancelled run stays cancelled when its in-flight irreversible call later times out", async () => {
  const witness = await startWitness("all");
  const k = await startTestKeel({
    rpcTimeoutMs: 2500,
    policies: { "p.yaml": ALLOW_FLAKY },
  });
  try {
    await installFlaky(k, witness.port, "crasher");
    const dir = `${k.dataDir}/plugin-data/crasher`;
    await Deno.mkdir(dir, { recursive: true });
    const started = await k.api("POST", "/api/workflows/send_then_crash/runs", {
      input: { effect: "flaky.send", tag: "x", counter: `${dir}/passes`, crashAfterMs: 50 },
    });
    assert.equal(started.status, 202, JSON.stringify(started.body));
    const runId = started.body.runId;
    await witness.arrived;
    // The agent dies; the run is queued for a replay 500 ms later. Cancel it in that pause.
    let status = "";
    for (let i = 0; i < 200 && status !== "queued"; i++) {
      status = (await k.api("GET", `/api/runs/${runId}`)).body.status;
      if (status !== "queued") await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(status, "queued");
    const c = await k.api("POST", `/api/runs/${runId}/cancel`, {});
    assert.equal(c.status, 200, JSON.stringify(c.body));
    assert.equal((await k.api("GET", `/api/runs/${runId}`)).body.status, "cancelled");
    // The detached call times out (rpcTimeoutMs) after the run ended.
    await new Promise((r) => setTimeout(r, 3500));
    const after = (await k.api("GET", `/api/runs/${runId}`)).body;
    assert.equal(after.status, "cancelled", `run came back as ${after.status}: ${JSON.stringify(after.waitingFor)}`);
    const asked = (await k.api("GET", "/api/approvals?status=pending")).body.approvals;
    assert.deepEqual(asked, [], "no operator prompt for an ended run");
  } finally {
    witness.release();
    await k.close();
    await witness.close();
  }
});
