/**
 * @module
 * Every way a policy engine's answer can be malformed is a deny on its own.
 * Each answer below is a well-formed decision except for exactly one field,
 * so a Gateway that forgot to check that field would act on it (an unknown
 * decision word is not a deny: it would be put to the operator as an
 * approval). Each must end as `fail-closed`, with nothing sent.
 */
import assert from "node:assert/strict";
import { Effect } from "effect";
import { evaluate, Policy, type PolicyDecision } from "../../core/policy/mod.ts";
import { withLedgerKeel } from "./_ledger.ts";

const ALLOW_ALL = { "p.yaml": "rules:\n  - { id: all, match: { effect: 'ledger.*' }, decision: allow }\n" };

Deno.test("an engine answer malformed in one field only is a fail-closed deny, for each field", async () => {
  let broken: (good: PolicyDecision) => unknown = (good) => good;
  const policyLayer = Policy.layerTest({
    decide: (request, set) => {
      const good = evaluate(set, request);
      return Effect.succeed(request.effect === "ledger.charge" ? broken(good) as PolicyDecision : good);
    },
  });
  const cases: Array<[string, (good: PolicyDecision) => unknown]> = [
    ["a decision word that is not allow, approve or deny", (good) => ({ ...good, decision: "ALLOW" })],
    ["no decision", ({ decision: _d, ...rest }) => rest],
    ["a rule that is not a string", (good) => ({ ...good, rule: 42 })],
    ["no policy hash", ({ policyHash: _p, ...rest }) => rest],
    ["limits that are not a list", (good) => ({ ...good, limits: { kind: "rate" } })],
    ["null", () => null],
  ];
  await withLedgerKeel({ policies: ALLOW_ALL, policyLayer }, async (k) => {
    for (const [what, answer] of cases) {
      broken = answer;
      const r = await k.start("charge", { amount: 5 }, 30);
      assert.equal(r.status, "failed", `${what}: ${JSON.stringify(r)}`);
      assert.equal(r.error.tag, "PolicyDeniedError", what);
      assert.equal(r.error.details.rule, "fail-closed", what);
      assert.match(r.error.message, /policy engine returned a malformed decision/, what);
    }
    assert.equal(k.witness.calls.length, 0, "nothing reached the connector");
    // The well-formed answer still allows it: the cases above failed for their one bad field.
    broken = (good) => good;
    assert.equal((await k.start("charge", { amount: 5 }, 30)).status, "succeeded");
    assert.equal(k.witness.calls.length, 1);
  });
});
