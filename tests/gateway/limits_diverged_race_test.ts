/**
 * @module
 * A request for a step whose call is already in flight with other args (a
 * replay of a workflow that asked something else) is refused as diverged:
 * it neither sends a second call for the step nor gives back the first
 * call's count.
 */
import assert from "node:assert/strict";
import type { AppliedLimit } from "../../core/policy/mod.ts";
import { withLedgerKeel } from "./_ledger.ts";

const RATE: AppliedLimit = { kind: "rate", rule: "reads", key: "global", count: 100, per: "1h", perMs: 3_600_000 };

Deno.test("Gateway.request() refuses a racing request for an in-flight step with other args: sent once, counted once", async () => {
  const policy = `rules:
  - id: reads
    match: { effect: ledger.read }
    decision: allow
    limits:
      rate: { count: 100, per: 1h }
`;
  await withLedgerKeel({ policies: { "p.yaml": policy } }, async (k) => {
    for (let round = 0; round < 5; round++) {
      const seq = round + 1;
      const ask = (args: unknown) =>
        k.gateway({ runId: "run_direct", seq, workflow: "read", effect: "ledger.read", args });
      const answers = await Promise.all([ask({ round, v: "a" }), ask({ round, v: "b" })]);
      assert.equal(answers.filter((a) => a.ok).length, 1, JSON.stringify(answers));
      assert.match(answers.find((a) => !a.ok)!.error.message, /diverge|other args/i, JSON.stringify(answers));
      const sent = k.witness.calls.length;
      const used = await k.used(RATE);
      assert.equal(sent, seq, `round ${round}: step sent ${sent - round} times: ${JSON.stringify(answers)}`);
      assert.equal(used, seq, `round ${round}: ${sent} calls sent, ${used} counted`);
    }
  });
});
