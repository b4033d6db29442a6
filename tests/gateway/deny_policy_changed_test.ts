/**
 * @module
 * An operator's deny is the one decision that can never release anything: it must stand when the policy set changed
 * after the approval was asked for. Refusing it with a 409 and resuming the run to "check again" lets a policy edit
 * (one that now allows the action, say) perform the very action the operator just refused.
 */
import assert from "node:assert/strict";
import { type ApprovalRecord, Journal } from "../../core/journal/mod.ts";
import { type LedgerKeel, withLedgerKeel } from "./_ledger.ts";

const gate = `rules:
  - id: gate-charges
    match: { effect: ledger.charge }
    decision: approve
    approval: { approver: cfo, expires: 1h, message: Money leaves the company }
  - id: allow-rest
    match: { effect: "ledger.*" }
    decision: allow
`;

const approval = (k: LedgerKeel, id: string) =>
  k.keel.runtime.runPromise(Journal.use((j) => j.getApproval(id))) as Promise<ApprovalRecord>;

Deno.test("a deny given after the policy changed (now allowing the charge) is kept, and the charge is not made", async () => {
  await withLedgerKeel({ policies: { "p.yaml": gate } }, async (k) => {
    const started = await k.start("charge", { amount: 10 }, 30);
    assert.equal(started.status, "waiting_approval", JSON.stringify(started));
    const { runId } = started;
    const approvalId = started.waitingFor.approvalId as string;
    // The operator loosens the rule while this charge waits (for charges to come), then refuses this one.
    await Deno.writeTextFile(
      `${k.policiesDir}/p.yaml`,
      gate.replace(
        "decision: approve\n    approval: { approver: cfo, expires: 1h, message: Money leaves the company }",
        "decision: allow",
      ),
    );
    const deadline = performance.now() + 10_000;
    while ((await k.audit("policy.reloaded")).length === 0) {
      if (performance.now() > deadline) assert.fail("the policy edit was never picked up");
      await new Promise((r) => setTimeout(r, 20));
    }
    const denied = await k.api("POST", `/api/approvals/${approvalId}/deny`, { note: "not this one" });
    assert.equal(denied.status, 200, JSON.stringify(denied.body));
    assert.equal(denied.body.approval.status, "denied");
    const after = await k.run(runId);
    assert.notEqual(after.status, "succeeded", JSON.stringify(after));
    assert.equal(k.witness.calls.length, 0, "the charge the operator denied was made");
    const old = await approval(k, approvalId);
    assert.equal(old.status, "denied");
    assert.equal((await k.audit("approval.denied", runId)).length, 1);
  });
});
