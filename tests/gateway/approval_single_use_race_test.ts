/**
 * @module
 * An approval is single-use even against two executions racing for it. Two
 * Gateway requests for the same approved step (what two executors replaying
 * the same run would send) both find the approval `approved`; consuming it
 * and journaling the intent is one atomic write, and only the request whose
 * write commits may dispatch. The other must not send. A witness counts what
 * reached the connector. (Unlike a financial effect's, a read's intent has
 * no idempotency-key claim behind the approval: the approval is the guard.)
 */
import assert from "node:assert/strict";
import { Journal } from "../../core/journal/mod.ts";
import { withLedgerKeel } from "./_ledger.ts";

const GATE_NOTES = {
  "p.yaml": `default: allow
rules:
  - id: gated-reads
    match: { effect: ledger.read }
    decision: approve
    approval: { expires: 1h }
`,
};

Deno.test("two requests racing on one approved approval dispatch the effect once", async () => {
  await withLedgerKeel({ policies: GATE_NOTES }, async (k) => {
    for (let round = 0; round < 3; round++) {
      const before = k.witness.calls.length;
      // Approved in the journal, as a decision would, without resuming the run: the test plays the executors.
      const { runId, approvalId, answers } = await k.raceApprovedRead({ round });
      assert.equal(k.witness.calls.length, before + 1, `round ${round}: ${JSON.stringify(answers)}`);
      assert.ok(answers.some((a) => a.ok), "one of them sent it");
      const used = await k.keel.runtime.runPromise(Journal.use((j) => j.getApproval(approvalId)));
      assert.equal(used?.status, "used");
      await k.api("POST", `/api/runs/${runId}/cancel`, {});
    }
  });
});
