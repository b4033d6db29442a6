/**
 * @module
 * A Keel that closes while an effect is with its connector sends nothing
 * after it closed: the call cut off by the shutdown is neither retried by the
 * closing host (no Worker is started again once plugins stopped) nor recorded
 * as a failure. Its intent is left for the next start, which resends a read or
 * keyed write only if its policy allows it, and otherwise asks the operator.
 */
import assert from "node:assert/strict";
import { startTestKeel, type TestKeel } from "../_support/keel.ts";
import { closeWhileInFlight, installFlaky, startWitness } from "../_support/witness.ts";

const policy = (decision: string, effect: string) =>
  `default: allow
rules:
  - id: the-rule
    match: { effect: ${effect} }
    decision: ${decision}
`;

// A read and a keyed write are resent only if policy allows (here it gates them, so the operator is asked); an
// irreversible send never; an unkeyed write's outcome is unknown, not a failure.
for (const effect of ["flaky.note", "flaky.read", "flaky.send", "flaky.post"]) {
  Deno.test(`${effect} in flight when Keel closes is not sent again by the closed Keel`, async () => {
    const dataDir = await Deno.makeTempDir({ prefix: "keel-test-" });
    const witness = await startWitness("first");
    let k: TestKeel | undefined;
    try {
      k = await startTestKeel({ dataDir, policies: { "p.yaml": policy("allow", "flaky.*") } });
      await installFlaky(k, witness.port, "caller");
      const runId = await closeWhileInFlight(k, witness, effect, "cut");
      k = undefined;
      // Nothing of the closed Keel may reach the connector's peer any more.
      await new Promise((r) => setTimeout(r, 600));
      assert.equal(witness.calls.length, 1, "the closed Keel sent the call again");

      // Back up under a policy that gates the effect: nothing is resent, the operator is asked.
      k = await startTestKeel({ dataDir, policies: { "p.yaml": policy("approve", effect) } });
      const run = (await k.api("GET", `/api/runs/${runId}?wait=30`)).body;
      assert.equal(run.status, "waiting_approval", JSON.stringify(run));
      const approval = (await k.api("GET", "/api/approvals?status=pending")).body.approvals
        .find((a: any) => a.id === run.waitingFor.approvalId);
      assert.equal(approval?.kind, "unknown_outcome", JSON.stringify(approval));
      await new Promise((r) => setTimeout(r, 600));
      assert.equal(witness.calls.length, 1, "the call was sent again though policy gates it");
    } finally {
      await k?.close();
      await witness.close();
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    }
  });
}
