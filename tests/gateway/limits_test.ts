/**
 * @module
 * Limits at the Gateway, end to end: runs of a real agent Worker ask a real
 * connector Worker for effects, and a witness peer counts the calls that
 * really left Keel. Budgets hold under 50 truly concurrent runs; rates from
 * rules and from the connector's manifest refuse the call past the count;
 * an approved effect is counted when it runs, not when it is asked; quiet
 * hours gate an effect the rules allow. Each refusal names its rule and
 * limit in the run's error, the audit log and the decision log.
 */
import assert from "node:assert/strict";
import { Effect } from "effect";
import { Journal } from "../../core/journal/mod.ts";
import { Limits, Policy } from "../../core/policy/mod.ts";
import { withLedgerKeel } from "./_ledger.ts";

const decisions = (k: { keel: { runtime: { runPromise: <A, E>(e: Effect.Effect<A, E, any>) => Promise<A> } } }) =>
  k.keel.runtime.runPromise(Journal.use((j) => j.listDecisions({})));

Deno.test("50 runs started at once against a 5 USD daily budget: exactly 16 charges of 0.30 USD leave Keel", async () => {
  const policy = `rules:
  - id: charges
    match: { effect: ledger.charge }
    decision: allow
    limits:
      budget: { usdPerDay: 5 }
`;
  await withLedgerKeel({ policies: { "p.yaml": policy } }, async (k) => {
    // Start all 50 before waiting for any, so their effect requests race at the Gateway.
    const started = await Promise.all(Array.from({ length: 50 }, (_, i) => k.start("charge", { amount: i + 1 })));
    const runs = await Promise.all(started.map((r) => k.run(r.runId)));
    const succeeded = runs.filter((r) => r.status === "succeeded");
    const failed = runs.filter((r) => r.status === "failed");
    assert.equal(succeeded.length, 16, "floor(5 / 0.30) charges fit");
    assert.equal(failed.length, 34);
    assert.equal(k.witness.calls.length, 16, "and exactly that many reached the connector's peer");
    for (const r of failed) {
      assert.equal(r.error.tag, "PolicyDeniedError");
      assert.match(r.error.message, /money budget of 5 USD per day would be exceeded/);
      assert.equal(r.error.details.rule, "charges");
      assert.equal(r.error.details.limit, "budget usdPerDay 5");
    }
    const spent = await k.keel.runtime.runPromise(
      Limits.use((l) =>
        l.used({ kind: "budget", rule: "charges", key: "global", unit: "usd", period: "day", max: 5, timezone: "UTC" })
      ),
    );
    assert.equal(spent, 4.8);
    const log = await decisions(k);
    assert.equal(log.filter((d) => d.decision === "allow" && d.rule === "charges").length, 16);
    const refused = log.filter((d) => d.decision === "deny");
    assert.equal(refused.length, 34);
    assert.ok(refused.every((d) => d.rule === "charges" && d.limit === "budget usdPerDay 5"));
    const rejected = await k.audit("effect.rejected");
    assert.equal(rejected.length, 34);
    assert.ok(rejected.every((e) => e.data.limit === "budget usdPerDay 5" && e.data.rule === "charges"));
    const charged = await k.audit("effect.succeeded");
    assert.ok(charged.every((e) => e.data.costUsd === 0.3), "the audit records what each call cost");
  });
});

Deno.test("a rule's rate limit refuses the call past the count, and only for the scope it names", async () => {
  const policy = `rules:
  - id: reads
    match: { effect: ledger.read }
    decision: allow
    limits:
      rate: { count: 2, per: 1h }
      scope: workflow
`;
  await withLedgerKeel({ policies: { "p.yaml": policy } }, async (k) => {
    for (let i = 0; i < 2; i++) assert.equal((await k.start("read", { i }, 30)).status, "succeeded");
    const third = await k.start("read", { i: 3 }, 30);
    assert.equal(third.status, "failed");
    assert.equal(third.error.details.limit, "rate 2/1h");
    assert.match(third.error.message, /rate limit of 2 per 1h reached \(2 used\); limit of rule "reads"/);
    assert.equal(k.witness.calls.length, 2);
  });
});

Deno.test("a connector manifest's rateLimit holds at the Gateway even under a policy that allows everything", async () => {
  await withLedgerKeel({ policies: { "p.yaml": "default: allow\nrules: []\n" } }, async (k) => {
    const runs = [];
    for (let i = 0; i < 4; i++) runs.push(await k.start("note", { text: `note ${i}` }, 30));
    assert.deepEqual(runs.map((r) => r.status), ["succeeded", "succeeded", "succeeded", "failed"]);
    assert.equal(runs[3].error.details.rule, "manifest:ledger");
    assert.equal(runs[3].error.details.limit, "rate 3/1h");
    assert.equal(k.witness.calls.length, 3);
    const [rejected] = await k.audit("effect.rejected", runs[3].runId);
    assert.equal(rejected.data.rule, "manifest:ledger");
  });
});

Deno.test("an approved effect is counted when it runs; one that can no longer fit is refused, not asked for", async () => {
  const policy = `rules:
  - id: gated-charges
    match: { effect: ledger.charge }
    decision: approve
    approval: { expires: 1h }
    limits:
      budget: { usdPerDay: 0.5 }
`;
  await withLedgerKeel({ policies: { "p.yaml": policy } }, async (k) => {
    const a = await k.start("charge", { amount: 1 }, 30);
    const b = await k.start("charge", { amount: 2 }, 30);
    assert.equal(a.status, "waiting_approval");
    assert.equal(b.status, "waiting_approval", "nothing is spent while both wait, so both may ask");
    assert.equal((await k.api("POST", `/api/approvals/${a.waitingFor.approvalId}/approve`, {})).status, 200);
    assert.equal((await k.run(a.runId)).status, "succeeded");
    assert.equal((await k.api("POST", `/api/approvals/${b.waitingFor.approvalId}/approve`, {})).status, 200);
    const late = await k.run(b.runId);
    assert.equal(late.status, "failed", "0.30 + 0.30 would pass 0.50: the approval does not lift the budget");
    assert.equal(late.error.details.limit, "budget usdPerDay 0.5");
    const c = await k.start("charge", { amount: 3 }, 30);
    assert.equal(c.status, "failed", "with the budget spent, the operator is not even asked");
    const pending = await k.api("GET", "/api/approvals?status=pending");
    assert.equal(pending.body.approvals.length, 0);
    assert.equal(k.witness.calls.length, 1);
  });
});

Deno.test("quiet hours turn an allowed effect into one that waits for the operator, and the run says why", async () => {
  // A window around the current time (UTC), so the test does not depend on when it runs.
  const now = new Date();
  const hh = (h: number) => `${String((h + 24) % 24).padStart(2, "0")}:00`;
  const policy = `rules:
  - id: notes
    match: { effect: ledger.note }
    decision: allow
    limits:
      quietHours: { from: "${hh(now.getUTCHours() - 1)}", to: "${hh(now.getUTCHours() + 2)}", timezone: UTC }
`;
  await withLedgerKeel({ policies: { "p.yaml": policy } }, async (k) => {
    const r = await k.start("note", { text: "at night" }, 30);
    assert.equal(r.status, "waiting_approval");
    assert.match(r.waitingFor.reason, /rule "notes"/);
    const [requested] = await k.audit("approval.requested", r.runId);
    assert.match(requested.data.limit, /^quietHours \d\d:00-\d\d:00 UTC$/);
    const [decision] = (await decisions(k)).filter((d) => d.runId === r.runId);
    assert.equal(decision.decision, "approve");
    assert.equal(decision.limit, requested.data.limit);
    assert.equal(typeof decision.context?.hour, "number", "the decision log keeps the context the policy saw");
    assert.equal(decision.context?.runId, r.runId);
    assert.equal(k.witness.calls.length, 0);
    assert.equal((await k.api("POST", `/api/approvals/${r.waitingFor.approvalId}/approve`, {})).status, 200);
    assert.equal((await k.run(r.runId)).status, "succeeded");
    assert.equal(k.witness.calls.length, 1);
  });
});

Deno.test("a caller's own cost overrides the manifest's, and token budgets count the tokens it reports", async () => {
  const policy = `rules:
  - id: model-ish
    match: { effect: ledger.read }
    decision: allow
    limits:
      budget: { usdPerDay: 1, tokensPerDay: 1000 }
`;
  await withLedgerKeel({ policies: { "p.yaml": policy } }, async (k) => {
    const base = { runId: "run_direct", workflow: "read", effect: "ledger.read", args: {} };
    assert.ok((await k.gateway({ ...base, seq: 1, costUsd: 0.9, tokens: 100 })).ok);
    const money = await k.gateway({ ...base, seq: 2, costUsd: 0.2, tokens: 1 });
    assert.equal(money.ok, false);
    assert.equal(money.error.details.limit, "budget usdPerDay 1");
    const tokens = await k.gateway({ ...base, seq: 3, costUsd: 0, tokens: 901 });
    assert.equal(tokens.ok, false);
    assert.equal(tokens.error.details.limit, "budget tokensPerDay 1000");
    assert.ok((await k.gateway({ ...base, seq: 4, costUsd: 0.1, tokens: 900 })).ok);
    assert.equal(k.witness.calls.length, 2);
  });
});

Deno.test("a policy edited while Keel runs governs the next effect without a restart", async () => {
  await withLedgerKeel({ policies: { "p.yaml": "default: allow\nrules: []\n" } }, async (k) => {
    assert.equal((await k.start("read", {}, 30)).status, "succeeded");
    const before = await k.keel.runtime.runPromise(Policy.use((p) => p.current));
    await Deno.writeTextFile(
      `${k.policiesDir}/p.yaml`,
      "rules:\n  - { id: no-reads, match: { class: read }, decision: deny }\n",
    );
    const deadline = performance.now() + 10_000;
    while ((await k.keel.runtime.runPromise(Policy.use((p) => p.current))).hash === before.hash) {
      if (performance.now() > deadline) assert.fail("the edit was never picked up");
      await new Promise((r) => setTimeout(r, 20));
    }
    const r = await k.start("read", {}, 30);
    assert.equal(r.status, "failed");
    assert.equal(r.error.details.rule, "no-reads");
    const [reloaded] = await k.audit("policy.reloaded");
    assert.equal(reloaded.data.oldHash, before.hash);
    assert.equal(k.witness.calls.length, 1);
  });
});
