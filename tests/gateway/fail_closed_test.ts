/**
 * @module
 * The gate fails closed. A policy engine that throws, hangs, dies or answers
 * nonsense, and args too deeply nested to inspect safely, all end in a deny
 * with rule `fail-closed` — journaled, audited with the reason — and the
 * host keeps serving the next request. The engine is broken on purpose with
 * `Policy.layerTest`, inside a real Keel with real Workers; a witness peer
 * proves that nothing reached the connector.
 */
import assert from "node:assert/strict";
import { Effect } from "effect";
import { evaluate, Policy, type PolicyDecision } from "../../core/policy/mod.ts";
import { POLICY_TIMEOUT_MS } from "../../core/gateway/mod.ts";
import { Journal } from "../../core/journal/mod.ts";
import { type LedgerKeel, withLedgerKeel } from "./_ledger.ts";

const ALLOW_ALL = { "p.yaml": "rules:\n  - { id: all, match: { effect: 'ledger.*' }, decision: allow }\n" };

/** A charge is refused with fail-closed and `reason`; a note right after still goes through. */
const expectFailClosed = async (k: LedgerKeel, reason: RegExp) => {
  const r = await k.start("charge", { amount: 5 }, 30);
  assert.equal(r.status, "failed", JSON.stringify(r));
  assert.equal(r.error.tag, "PolicyDeniedError");
  assert.equal(r.error.details.rule, "fail-closed");
  assert.match(r.error.message, reason);
  const [rejected] = await k.audit("effect.rejected", r.runId);
  assert.equal(rejected.data.rule, "fail-closed");
  assert.match(rejected.data.reason, reason);
  const logged = (await k.keel.runtime.runPromise(Journal.use((j) => j.listDecisions({}))))
    .filter((d) => d.runId === r.runId);
  assert.deepEqual(logged.map((d) => [d.decision, d.rule]), [["deny", "fail-closed"]]);
  assert.equal(k.witness.calls.length, 0, "nothing reached the connector");

  const next = await k.start("note", { text: "still serving" }, 30);
  assert.equal(next.status, "succeeded", "the host keeps serving");
  assert.equal(k.witness.calls.length, 1);
  assert.equal(await fetch(`${k.url}/healthz`).then((res) => res.json().then(() => res.status)), 200);
};

/** The real engine, except for charges. */
const breakCharges =
  (broken: () => PolicyDecision) => (set: Parameters<typeof evaluate>[0], request: Parameters<typeof evaluate>[1]) =>
    request.effect === "ledger.charge" ? broken() : evaluate(set, request);

Deno.test("a policy engine that throws denies the effect, audits fail-closed with the reason, and Keel keeps serving", async () => {
  const policyLayer = Policy.layerTest({
    evaluate: breakCharges(() => {
      throw new Error("rule table corrupted");
    }),
  });
  await withLedgerKeel(
    { policies: ALLOW_ALL, policyLayer },
    (k) => expectFailClosed(k, /policy evaluation failed: Error: rule table corrupted/),
  );
});

Deno.test("a policy engine that never answers is cut off after the timeout and the effect is denied", async () => {
  const policyLayer = Policy.layerTest({
    decide: (request, set) =>
      request.effect === "ledger.charge" ? Effect.never : Effect.succeed(evaluate(set, request)),
  });
  await withLedgerKeel(
    { policies: ALLOW_ALL, policyLayer },
    (k) => expectFailClosed(k, new RegExp(`policy evaluation timed out after ${POLICY_TIMEOUT_MS} ms`)),
  );
});

Deno.test("a policy engine that dies inside decide is a deny, not a crashed run", async () => {
  const policyLayer = Policy.layerTest({
    decide: (request, set) =>
      request.effect === "ledger.charge"
        ? Effect.die(new Error("out of cheese"))
        : Effect.succeed(evaluate(set, request)),
  });
  await withLedgerKeel(
    { policies: ALLOW_ALL, policyLayer },
    (k) => expectFailClosed(k, /policy evaluation failed: out of cheese/),
  );
});

Deno.test("an engine answer that is not a decision is treated as a deny", async () => {
  const policyLayer = Policy.layerTest({
    decide: (request, set) =>
      request.effect === "ledger.charge"
        ? Effect.succeed({ decision: "allow-ish", rule: 42 } as unknown as PolicyDecision)
        : Effect.succeed(evaluate(set, request)),
  });
  await withLedgerKeel(
    { policies: ALLOW_ALL, policyLayer },
    (k) => expectFailClosed(k, /policy engine returned a malformed decision/),
  );
});

Deno.test("args nested too deep to inspect safely are denied as malformed input before any validator walks them", async () => {
  await withLedgerKeel({ policies: ALLOW_ALL }, async (k) => {
    const shallow = await k.start("deep", { depth: 20 }, 30);
    assert.equal(shallow.status, "succeeded", JSON.stringify(shallow));
    const deep = await k.start("deep", { depth: 1000 }, 30);
    assert.equal(deep.status, "failed", JSON.stringify(deep));
    assert.equal(deep.error.details?.rule, "fail-closed", JSON.stringify(deep.error));
    assert.match(deep.error.message, /malformed input: args nest deeper than 64 levels/);
    const [rejected] = await k.audit("effect.rejected", deep.runId);
    assert.equal(rejected.data.rule, "fail-closed");
    assert.equal(k.witness.calls.length, 1);
    assert.equal((await k.start("note", { text: "next" }, 30)).status, "succeeded");
  });
});
