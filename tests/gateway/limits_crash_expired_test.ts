/**
 * @module
 * A count left by an execution that stopped after counting an approved step,
 * before its intent, is given back when the run asks for that step again even
 * if the approval expired meanwhile: the step is put to the operator again,
 * not refused by a limit that only the call that never went out used up.
 */
import assert from "node:assert/strict";
import { type AppliedLimit, Limits } from "../../core/policy/mod.ts";
import { withLedgerKeel } from "./_ledger.ts";

const POLICY = `rules:
  - id: reads
    match: { effect: ledger.read }
    decision: approve
    approval: { expires: 1m }
    limits:
      rate: { count: 1, per: 24h }
`;
const RATE: AppliedLimit = { kind: "rate", rule: "reads", key: "global", count: 1, per: "24h", perMs: 86_400_000 };

Deno.test("a count left before a stop is given back when the step's approval expired meanwhile", async () => {
  await withLedgerKeel({ policies: { "p.yaml": POLICY } }, async (k) => {
    const r = await k.start("read", { n: 1 }, 30);
    assert.equal(r.status, "waiting_approval", JSON.stringify(r));
    const step = await k.effectStep(r.runId);
    assert.ok(await k.approveInJournal(r.waitingFor.approvalId));
    // Counted by an execution that stopped before it consumed the approval with its intent.
    const counted = await k.keel.runtime.runPromise(
      Limits.use((l) => l.consume([RATE], {}, { hold: `effect:${r.runId}:${step.seq}` })),
    );
    assert.ok(counted.ok);
    // Keel comes back after the approval expired (same day, same rate window).
    const later = Date.now() + 2 * 60_000;
    const again = await k.gateway(
      { runId: r.runId, seq: step.seq, workflow: "read", effect: "ledger.read", args: step.args },
      { atMs: later },
    );
    assert.equal(k.witness.calls.length, 0);
    assert.equal(again.ok, false);
    assert.equal(
      again.error._tag,
      "RunSuspendedError",
      `asked again, not refused by the stopped call's count: ${JSON.stringify(again.error)}`,
    );
    await k.api("POST", `/api/runs/${r.runId}/cancel`, {});
  });
});
