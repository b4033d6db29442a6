/**
 * @module
 * Two executions racing for one step (a replay joining a call still being
 * authorized, an approval used twice) charge the step's rates and budgets
 * once: only the call that runs is counted. The witness peer counts what
 * reached the connector; the counters are read from Deno KV.
 */
import assert from "node:assert/strict";
import { Journal } from "../../core/journal/mod.ts";
import { sha256Hex } from "../../core/manifest/mod.ts";
import type { AppliedLimit } from "../../core/policy/mod.ts";
import { withLedgerKeel } from "./_ledger.ts";

/** The `charges` rule's daily USD budget, as the Gateway applies it. */
const chargesPerDay = (max: number): AppliedLimit => ({
  kind: "budget",
  rule: "charges",
  key: "global",
  unit: "usd",
  period: "day",
  max,
  timezone: "UTC",
});

const RATE: AppliedLimit = { kind: "rate", rule: "reads", key: "global", count: 100, per: "1h", perMs: 3_600_000 };
/** Reads allowed, 100 an hour. */
const READS_ALLOWED = `rules:
  - id: reads
    match: { effect: ledger.read }
    decision: allow
    limits:
      rate: { count: 100, per: 1h }
`;

Deno.test("two requests racing on one approved step charge its rate once", async () => {
  const policy = `default: allow
rules:
  - id: reads
    match: { effect: ledger.read }
    decision: approve
    approval: { expires: 1h }
    limits:
      rate: { count: 100, per: 1h }
`;
  await withLedgerKeel({ policies: { "p.yaml": policy } }, async (k) => {
    for (let round = 0; round < 3; round++) {
      // Approved in the journal without resuming the run: the test plays the two executors.
      const { runId, answers } = await k.raceApprovedRead({ round });
      assert.equal(k.witness.calls.length, round + 1, JSON.stringify(answers));
      assert.equal(await k.used(RATE), round + 1, `round ${round}: one call ran, one unit is charged`);
      await k.api("POST", `/api/runs/${runId}/cancel`, {});
    }
  });
});

Deno.test("two requests racing on one allowed step send it once and charge its rate once", async () => {
  await withLedgerKeel({ policies: { "p.yaml": READS_ALLOWED } }, async (k) => {
    for (let round = 0; round < 3; round++) {
      const request = () =>
        k.gateway({ runId: "run_direct", seq: round + 1, workflow: "read", effect: "ledger.read", args: { round } });
      const answers = await Promise.all([request(), request()]);
      assert.ok(answers.every((a) => a.ok), JSON.stringify(answers));
      assert.deepEqual(answers[0].value, answers[1].value, "the second gets the first's outcome");
      assert.equal(k.witness.calls.length, round + 1, `round ${round}: sent once`);
      assert.equal(await k.used(RATE), round + 1, `round ${round}: charged once`);
    }
  });
});

Deno.test("a financial step raced by two requests is charged against its budget once, and neither is refused", async () => {
  const policy = `rules:
  - id: charges
    match: { effect: ledger.charge }
    decision: allow
    limits:
      budget: { usdPerDay: 0.5 }
`;
  const BUDGET = chargesPerDay(0.5);
  await withLedgerKeel({ policies: { "p.yaml": policy } }, async (k) => {
    const request = () =>
      k.gateway({ runId: "run_direct", seq: 1, workflow: "charge", effect: "ledger.charge", args: { amount: 7 } });
    const answers = await Promise.all([request(), request()]);
    assert.equal(k.witness.calls.length, 1);
    assert.equal(await k.used(BUDGET), 0.3, "0.30 charged once, not twice");
    // The budget has room for one 0.30 charge: the loser must not be refused by the winner's charge.
    assert.ok(answers.every((a) => a.ok), JSON.stringify(answers));
    assert.deepEqual(await k.audit("effect.rejected"), []);
    assert.equal((await k.effectStep("run_direct")).status, "done");
  });
});

Deno.test("a call that loses its intent to another holder is not sent, and its budget charge is given back", async () => {
  const policy = `rules:
  - id: charges
    match: { effect: ledger.charge }
    decision: allow
    limits:
      budget: { usdPerDay: 5 }
`;
  const BUDGET = chargesPerDay(5);
  await withLedgerKeel({ policies: { "p.yaml": policy } }, async (k) => {
    // Another executor (in another run's journal, as a second host would) already holds this step's idempotency key.
    const idempotencyKey = `keel-${(await sha256Hex("run_direct:1")).slice(0, 32)}`;
    await k.keel.runtime.runPromise(Journal.use((j) =>
      j.claimIntent("run_other", {
        seq: 1,
        kind: "effect",
        name: "ledger.charge",
        status: "intent",
        args: { amount: 7 },
        idempotencyKey,
        startedAt: new Date().toISOString(),
      })
    ));
    const lost = await k.gateway({
      runId: "run_direct",
      seq: 1,
      workflow: "charge",
      effect: "ledger.charge",
      args: { amount: 7 },
    });
    assert.equal(lost.ok, false);
    assert.equal(lost.error._tag, "ConflictError", JSON.stringify(lost.error));
    assert.equal(k.witness.calls.length, 0);
    assert.equal(await k.used(BUDGET), 0, "the charge that was never sent is not counted");
  });
});

// A request for a step whose call is already in flight with other args (a replay of a workflow that asked something
// else) is refused as diverged: it neither sends a second call for the step nor gives back the first call's count.
Deno.test("Gateway.request() refuses a racing request for an in-flight step with other args: sent once, counted once", async () => {
  await withLedgerKeel({ policies: { "p.yaml": READS_ALLOWED } }, async (k) => {
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
