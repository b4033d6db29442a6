/**
 * @module
 * After a restart, an intent with no outcome is resent on Keel's own only
 * when sending it again cannot do harm: a read, or a write whose connector
 * honours the idempotency key. A write without a key, or an irreversible
 * effect, may have happened; even when the policy allows it outright, the
 * next Keel asks the operator (`unknown_outcome`) and sends nothing.
 * (`shutdown_inflight_test.ts` restarts under a policy that gates the effect,
 * which asks the operator whatever the class; this one allows it.)
 */
import assert from "node:assert/strict";
import { startTestKeel, type TestKeel } from "../_support/keel.ts";
import { ALLOW_FLAKY, closeWhileInFlight, installFlaky, startWitness } from "../_support/witness.ts";

for (const effect of ["flaky.post", "flaky.send"]) {
  Deno.test(`${effect} in flight when Keel stops is not resent after the restart, even under a policy that allows it`, async () => {
    const dataDir = await Deno.makeTempDir({ prefix: "keel-test-" });
    const witness = await startWitness("first");
    let k: TestKeel | undefined;
    try {
      k = await startTestKeel({ dataDir, policies: { "p.yaml": ALLOW_FLAKY } });
      await installFlaky(k, witness.port, "caller");
      const runId = await closeWhileInFlight(k, witness, effect, "cut");
      k = undefined;

      // Back up under the same policy, which allows the effect: still, it may have happened, so it is not resent.
      k = await startTestKeel({ dataDir, policies: { "p.yaml": ALLOW_FLAKY } });
      const run = (await k.api("GET", `/api/runs/${runId}?wait=30`)).body;
      assert.equal(run.status, "waiting_approval", JSON.stringify(run));
      const approval = (await k.api("GET", "/api/approvals?status=pending")).body.approvals
        .find((a: any) => a.id === run.waitingFor.approvalId);
      assert.equal(approval?.kind, "unknown_outcome", JSON.stringify(approval));
      const step = run.steps.find((s: any) => s.kind === "effect");
      assert.equal(step.status, "unknown_outcome", JSON.stringify(step));
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(witness.calls.length, 1, `${effect} was sent again after the restart without the operator`);
    } finally {
      await k?.close();
      await witness.close();
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    }
  });
}
