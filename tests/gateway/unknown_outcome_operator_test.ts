/**
 * @module
 * What the operator may say about an irreversible effect whose outcome Keel
 * cannot know (it timed out at the connector). An approval of such an
 * `unknown_outcome` must say which it is, "delivered" or "retry"; a bare
 * approve is refused and changes nothing. And "retry" is the operator's
 * word, not the policy's: if the policy in force now denies the effect, it
 * is not sent again. A witness peer counts what really left Keel.
 */
import assert from "node:assert/strict";
import { Effect } from "effect";
import { Policy } from "../../core/policy/mod.ts";
import { startTestKeel, type TestKeel } from "../_support/keel.ts";
import { ALLOW_FLAKY, installFlaky, startWitness } from "../_support/witness.ts";

const DENY_SEND = `default: allow
rules:
  - id: allow-flaky
    match: { effect: "flaky.*" }
    decision: allow
  - id: no-more-sends
    match: { effect: flaky.send }
    decision: deny
`;

/** Start an irreversible send that hangs at the connector; returns the run parked on its unknown_outcome approval. */
const lostSend = async (k: TestKeel, tag: string) => {
  const r = await k.api("POST", "/api/workflows/flaky_call/runs?wait=60", {
    input: { effect: "flaky.send", args: { tag, failTimes: 100, mode: "hang" } },
  });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  assert.equal(r.body.status, "waiting_approval", JSON.stringify(r.body));
  const approvalId: string = r.body.waitingFor.approvalId;
  const approval = (await k.api("GET", "/api/approvals?status=pending")).body.approvals
    .find((a: { id: string }) => a.id === approvalId);
  assert.equal(approval.kind, "unknown_outcome");
  return { runId: r.body.runId as string, approvalId };
};

const withKeel = async (fn: (k: TestKeel, witness: Awaited<ReturnType<typeof startWitness>>) => Promise<void>) => {
  const witness = await startWitness();
  const k = await startTestKeel({ policies: { "p.yaml": ALLOW_FLAKY }, rpcTimeoutMs: 1500 });
  try {
    await installFlaky(k, witness.port, "caller");
    await fn(k, witness);
  } finally {
    await k.close();
    await witness.close();
  }
};

Deno.test("an unknown_outcome approved without a resolution is refused: the run stays parked, nothing is sent", async () => {
  await withKeel(async (k, witness) => {
    const { runId, approvalId } = await lostSend(k, "bare");
    assert.equal(witness.calls.length, 1);
    const bare = await k.api("POST", `/api/approvals/${approvalId}/approve`, {});
    assert.equal(bare.status, 400, JSON.stringify(bare.body));
    assert.equal(bare.body.error.tag, "InvalidInputError");
    assert.match(bare.body.error.message, /resolution "delivered" or "retry"/);
    const still = (await k.api("GET", `/api/runs/${runId}?wait=1`)).body;
    assert.equal(still.status, "waiting_approval", JSON.stringify(still));
    assert.equal(still.waitingFor.approvalId, approvalId, "the same approval still waits for a real answer");
    // The answer the operator should have given is still possible, and nothing was resent meanwhile.
    const delivered = await k.api("POST", `/api/approvals/${approvalId}/approve`, { resolution: "delivered" });
    assert.equal(delivered.status, 200, JSON.stringify(delivered.body));
    assert.equal((await k.api("GET", `/api/runs/${runId}?wait=30`)).body.status, "succeeded");
    assert.equal(witness.calls.length, 1);
  });
});

Deno.test("an operator's 'retry' of an unknown outcome is not sent past a policy that now denies the effect", async () => {
  await withKeel(async (k, witness) => {
    const { runId, approvalId } = await lostSend(k, "retry-denied");
    assert.equal(witness.calls.length, 1);
    await Deno.writeTextFile(`${k.policiesDir}/p.yaml`, DENY_SEND);
    await k.keel.runtime.runPromise(Policy.use((p) => p.reload).pipe(Effect.asVoid));
    const retry = await k.api("POST", `/api/approvals/${approvalId}/approve`, { resolution: "retry" });
    assert.equal(retry.status, 200, JSON.stringify(retry.body));
    const done = (await k.api("GET", `/api/runs/${runId}?wait=30`)).body;
    assert.equal(done.status, "failed", JSON.stringify(done));
    assert.equal(done.error.tag, "PolicyDeniedError");
    assert.match(done.error.message, /no-more-sends/);
    assert.equal(witness.calls.length, 1, "the policy denies the send now: the operator's retry must not send it");
  });
});
