/**
 * @module
 * A compensation request (`undo` set) skips the agent's `uses`: it is
 * declared by the connector of the effect it undoes, through that effect's
 * `compensate`. So the Gateway must refuse an undo request whose effect is
 * not the declared compensation, or any effect could be reached by calling
 * it "the undo of" another one. `ledger.read` declares no compensation;
 * claiming `ledger.charge` undoes it is refused, and nothing is charged.
 */
import assert from "node:assert/strict";
import { EffectNotDeclaredError } from "../../core/errors/mod.ts";
import { UNDO_SEQ_BASE } from "../../core/gateway/mod.ts";
import { withLedgerKeel } from "./_ledger.ts";

const ALLOW_ALL = { "p.yaml": "rules:\n  - { id: all, match: { effect: 'ledger.*' }, decision: allow }\n" };

Deno.test("an undo request for an effect that is not the declared compensation is refused, and nothing is sent", async () => {
  await withLedgerKeel({ policies: ALLOW_ALL }, async (k) => {
    const read = await k.start("read", {}, 30);
    assert.equal(read.status, "succeeded", JSON.stringify(read));
    assert.equal(k.witness.calls.length, 1);
    const forged = await k.gateway({
      runId: read.runId,
      seq: UNDO_SEQ_BASE + 1,
      workflow: "read",
      effect: "ledger.charge",
      args: { amount: 1000 },
      undo: { effect: "ledger.read", seq: 1 },
    });
    assert.equal(forged.ok, false);
    assert.ok(forged.error instanceof EffectNotDeclaredError, String(forged.error));
    assert.match(forged.error.message, /not the declared compensation of "ledger.read"/);
    assert.equal(k.witness.calls.length, 1, "the forged compensation must not reach the connector");
  });
});
