/**
 * @module
 * The operator's answer to an `unknown_outcome` approval is final for that
 * step. A keyed write that was in flight when Keel stopped is resent on its
 * own only while nobody has been asked: once the run parked on the operator
 * (here because the policy gated the write when Keel came back), a denial
 * ("give up") must fail the step and send nothing, even if the policy allows
 * the write again by the time the run resumes (quiet hours ending, a policy
 * edit).
 */
import assert from "node:assert/strict";
import { startTestKeel, type TestKeel } from "../_support/keel.ts";
import { closeWhileInFlight, installFlaky, startWitness } from "../_support/witness.ts";

interface Call {
  readonly effect: string;
  readonly args: { tag: string };
  readonly key: string;
}

const ALLOW = `default: allow
rules:
  - id: allow-flaky
    match: { effect: "flaky.*" }
    decision: allow
`;
const GATE_NOTE = `default: allow
rules:
  - id: gate-note
    match: { effect: flaky.note }
    decision: approve
`;

Deno.test("a denied unknown_outcome of a keyed write is final: the write is not resent when the policy allows it again", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-test-" });
  const witness = await startWitness("first");
  let k: TestKeel | undefined;
  try {
    k = await startTestKeel({ dataDir, policies: { "p.yaml": ALLOW } });
    await installFlaky(k, witness.port, "caller");
    // Keel stops while the write is with the connector: its intent has no outcome.
    const runId = await closeWhileInFlight(k, witness, "flaky.note", "gone");
    k = undefined;

    // Back up under a policy that gates the write: it is not resent blindly, the operator is asked.
    k = await startTestKeel({ dataDir, policies: { "p.yaml": GATE_NOTE } });
    const parked = (await k.api("GET", `/api/runs/${runId}?wait=30`)).body;
    assert.equal(parked.status, "waiting_approval", JSON.stringify(parked));
    const approvalId: string = parked.waitingFor.approvalId;
    const approval = (await k.api("GET", "/api/approvals?status=pending")).body.approvals
      .find((a: any) => a.id === approvalId);
    assert.equal(approval.kind, "unknown_outcome");
    // The closed Keel sent nothing after it closed, and the gated write was not resent (see shutdown_inflight_test.ts).
    assert.equal(witness.calls.length, 1, "the write was resent though the policy gates it");
    const before = witness.calls.length;

    // The gate lifts (quiet hours end, the rule is edited), then the operator gives up on the write.
    await Deno.writeTextFile(`${k.policiesDir}/p.yaml`, ALLOW);
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline) {
      const events = (await k.api("GET", "/api/audit?type=policy.reloaded")).body.events ?? [];
      if (events.some((e: any) => e.type === "policy.reloaded")) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const denied = await k.api("POST", `/api/approvals/${approvalId}/deny`, { note: "give up" });
    assert.equal(denied.status, 200, JSON.stringify(denied.body));
    const done = (await k.api("GET", `/api/runs/${runId}?wait=30`)).body;
    assert.equal(witness.calls.length, before, "the operator gave up on the write: it must not be sent again");
    assert.equal(done.status, "failed", JSON.stringify(done));
    assert.equal(done.error.tag, "PolicyDeniedError");
  } finally {
    await k?.close();
    await witness.close();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});
