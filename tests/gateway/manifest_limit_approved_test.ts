/**
 * @module
 * A connector manifest's own `rateLimit` binds whatever the rules decide,
 * an `approve` included: the operator's yes does not lift the connector's
 * limit. `ledger.note` allows 3 calls an hour; under a rule that gates
 * notes, three approved notes go out, and the fourth is refused at once,
 * naming the manifest's limit, without asking the operator.
 */
import assert from "node:assert/strict";
import { withLedgerKeel } from "./_ledger.ts";

const GATE_NOTES = `default: allow
rules:
  - id: gated-notes
    match: { effect: ledger.note }
    decision: approve
    approval: { expires: 1h }
`;

Deno.test("a connector's rateLimit holds for effects the operator approves: past it, the call is refused, not asked", async () => {
  await withLedgerKeel({ policies: { "p.yaml": GATE_NOTES } }, async (k) => {
    for (let i = 0; i < 3; i++) {
      const r = await k.start("note", { text: `note ${i}` }, 30);
      assert.equal(r.status, "waiting_approval", JSON.stringify(r));
      assert.equal((await k.api("POST", `/api/approvals/${r.waitingFor.approvalId}/approve`, {})).status, 200);
      assert.equal((await k.run(r.runId)).status, "succeeded");
    }
    assert.equal(k.witness.calls.length, 3);
    const fourth = await k.start("note", { text: "note 3" }, 30);
    assert.equal(fourth.status, "failed", JSON.stringify(fourth));
    assert.equal(fourth.error.tag, "PolicyDeniedError");
    assert.equal(fourth.error.details.rule, "manifest:ledger");
    assert.equal(fourth.error.details.limit, "rate 3/1h");
    const pending = await k.api("GET", "/api/approvals?status=pending");
    assert.equal(
      pending.body.approvals.length,
      0,
      "the operator is not asked for a call the connector's limit refuses",
    );
    assert.equal(k.witness.calls.length, 3);
  });
});
