/**
 * @module
 * Cancelling a run denies its pending approvals however many others are pending (the API's approval list stops at
 * its limit, and cancel once used it).
 */
import assert from "node:assert/strict";
import { Effect } from "effect";
import { ROOT, startTestKeel } from "../_support/keel.ts";
import { Orchestrator } from "../../core/orchestrator/mod.ts";
import { Journal } from "../../core/journal/mod.ts";
import { Kv } from "../../core/store/mod.ts";

Deno.test("cancel denies the run's pending approval even with 1000 older pending approvals", async () => {
  const k = await startTestKeel();
  try {
    const res = await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/bench_workflows`, grant: {} });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    const o = <A, E>(f: (o: Orchestrator["Service"]) => Effect.Effect<A, E>) =>
      k.keel.runtime.runPromise(Orchestrator.use(f));
    const started = await o((x) => x.start("bench_w2", { bytes: 10 }, "test"));
    const parked = await o((x) => x.wait(started.id, 10));
    assert.equal(parked.status, "waiting_approval");
    const approvalId = parked.waitingFor!.approvalId!;
    // 1000 older pending approvals of other runs (ids that sort first in the pending index).
    const { kv } = await k.keel.runtime.runPromise(Kv.use((s) => Effect.succeed(s)));
    const now = new Date().toISOString();
    for (let i = 0; i < 1000; i++) {
      const id = `a0_${String(i).padStart(5, "0")}`;
      await kv.atomic().set(["approval", id], {
        id,
        kind: "gate",
        runId: `other_${i}`,
        seq: 1,
        effect: "gate",
        plugin: "p",
        args: {},
        digest: "d",
        policyHash: "h",
        rule: "r",
        approver: "ops",
        status: "pending",
        createdAt: now,
        expiresAt: new Date(Date.now() + 3600_000).toISOString(),
      }).set(["approval_pending", id], true).commit();
    }
    await o((x) => x.cancel(started.id, "test"));
    const after = await k.keel.runtime.runPromise(Journal.use((j) => j.getApproval(approvalId)));
    assert.equal(after!.status, "denied", "the cancelled run's approval is left pending");
  } finally {
    await k.close();
  }
});
