/**
 * @module
 * A rate or budget counted for an effect just before Keel stopped, before
 * the effect's intent was journaled, stands for a call that never went out.
 * The count is kept with a hold labelled by run and step; when the run asks
 * for that step again, the Gateway gives it back before counting the call
 * it does make. A hold whose intent was journaled is never given back. The
 * crash's leftover is what Keel's own `Limits` writes before the intent: a
 * count with its hold, and no step.
 */
import assert from "node:assert/strict";
import { Effect } from "effect";
import { Kv } from "../../core/store/mod.ts";
import { type AppliedLimit, Limits } from "../../core/policy/mod.ts";
import { type LedgerKeel, withLedgerKeel } from "./_ledger.ts";

const POLICY = `rules:
  - id: reads
    match: { effect: ledger.read }
    decision: allow
    limits:
      rate: { count: 1, per: 1h }
`;
const RATE: AppliedLimit = { kind: "rate", rule: "reads", key: "global", count: 1, per: "1h", perMs: 3_600_000 };

const run = <A, E>(k: LedgerKeel, e: Effect.Effect<A, E, Limits | Kv>) =>
  k.keel.runtime.runPromise(e as Effect.Effect<A, E, never>);
const used = (k: LedgerKeel) => run(k, Limits.use((l) => l.used(RATE)));
const holds = (k: LedgerKeel) =>
  run(k, Kv.use(({ kv }) => Effect.promise(() => Array.fromAsync(kv.list({ prefix: ["limit_hold"] })))));

Deno.test("a count left by an execution that stopped before its intent is given back when the step is asked again", async () => {
  await withLedgerKeel({ policies: { "p.yaml": POLICY } }, async (k) => {
    // What a Keel that stopped right after counting leaves: the count and its hold, no step.
    const counted = await run(k, Limits.use((l) => l.consume([RATE], {}, { hold: "effect:run_direct:1" })));
    assert.ok(counted.ok);
    assert.equal(await used(k), 1);
    const again = await k.gateway({ runId: "run_direct", seq: 1, workflow: "read", effect: "ledger.read", args: {} });
    assert.ok(again.ok, `the one call of the hour is the one that goes out: ${JSON.stringify(again.error)}`);
    assert.equal(k.witness.calls.length, 1);
    assert.equal(await used(k), 1, "counted once");
    // The hold of the call that went out goes once its intent is journaled (off the call's path).
    for (let i = 0; i < 100 && (await holds(k)).length; i++) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(await holds(k), []);
  });
});

Deno.test("an approved step counted just before a stop is counted once when its run resumes", async () => {
  const gated = POLICY.replace("decision: allow", "decision: approve\n    approval: { expires: 1h }");
  await withLedgerKeel({ policies: { "p.yaml": gated } }, async (k) => {
    const r = await k.start("read", { n: 1 }, 30);
    assert.equal(r.status, "waiting_approval", JSON.stringify(r));
    const step = await k.effectStep(r.runId);
    // Approved, and counted by an execution that stopped before it consumed the approval with its intent.
    assert.ok(await k.approveInJournal(r.waitingFor.approvalId));
    assert.ok((await run(k, Limits.use((l) => l.consume([RATE], {}, { hold: `effect:${r.runId}:${step.seq}` })))).ok);
    const resumed = await k.gateway({
      runId: r.runId,
      seq: step.seq,
      workflow: "read",
      effect: "ledger.read",
      args: step.args,
    });
    assert.ok(resumed.ok, JSON.stringify(resumed.error));
    assert.equal(k.witness.calls.length, 1);
    assert.equal(await used(k), 1);
    await k.api("POST", `/api/runs/${r.runId}/cancel`, {});
  });
});
