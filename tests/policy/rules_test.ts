/**
 * @module
 * Conditions and limits in policy files: `when` refines a rule with a
 * condition on args and context, `limits` carries rates, budgets and quiet
 * hours. A bad condition or limit stops the load with file, line and (for a
 * condition) column; quiet hours raise an allow in their window, in their
 * time zone; the limits of every matching rule travel with the decision so
 * the Gateway can count them.
 */
import assert from "node:assert/strict";
import { Cause, Effect } from "effect";
import {
  evaluate,
  inWindow,
  loadPolicySet,
  localTime,
  manifestRateLimit,
  parsePolicyFile,
  policyContext,
  type PolicyRequest,
  type PolicySet,
} from "../../core/policy/mod.ts";

const failureOf = async <A, E>(effect: Effect.Effect<A, E>): Promise<E> => {
  const exit = await Effect.runPromiseExit(effect);
  if (exit._tag === "Success") assert.fail(`expected a failure, got ${JSON.stringify(exit.value)}`);
  return Cause.squash(exit.cause) as E;
};

const setOf = async (yaml: string, file = "inline.yaml"): Promise<PolicySet> => {
  const parsed = await Effect.runPromise(parsePolicyFile(file, yaml));
  return { hash: "h-inline", files: [file], rules: parsed.rules, defaultDecision: parsed.defaultDecision ?? "allow" };
};

const pay = (args: unknown, extra: Partial<PolicyRequest> = {}): PolicyRequest => ({
  effect: "bank.pay",
  effectClass: "financial",
  plugin: "bank",
  agent: "billing",
  workflow: "billing_monthly",
  args,
  ...extra,
});

/** 2025-01-15 (a Wednesday) at `hh:mm` UTC. */
const utc = (hh: number, mm = 0) => Date.UTC(2025, 0, 15, hh, mm);

const PAYMENTS = `rules:
  - id: small-eur-payments
    description: Small euro payments go through
    match: { effect: "bank.*" }
    when: "args.amount <= 100 and args.currency == 'EUR'"
    decision: allow
  - id: large-payments
    match: { effect: "bank.*" }
    when: args.amount > 100
    decision: approve
    approval: { approver: cfo, expires: 24h }
  - id: never-to-sanctioned
    match: { effect: "bank.*" }
    when: args.country in ['XX', 'YY']
    decision: deny
`;

Deno.test("a rule with a when condition matches only when the condition is exactly true", async () => {
  const set = await setOf(PAYMENTS);
  assert.deepEqual(set.rules.map((r) => r.when?.source), [
    "args.amount <= 100 and args.currency == 'EUR'",
    "args.amount > 100",
    "args.country in ['XX', 'YY']",
  ]);
  const d = (args: unknown) => evaluate(set, pay(args));
  assert.equal(d({ amount: 40, currency: "EUR" }).rule, "small-eur-payments");
  assert.equal(d({ amount: 40, currency: "EUR" }).decision, "allow");
  assert.equal(d({ amount: 400, currency: "EUR" }).rule, "large-payments");
  assert.equal(d({ amount: 400, currency: "EUR" }).approval?.approver, "cfo");
  assert.equal(
    d({ amount: 40, currency: "USD" }).rule,
    "default-deny-financial",
    "no rule matches: financial is denied",
  );
  assert.equal(d({ amount: "40", currency: "EUR" }).rule, "default-deny-financial", "a string is not a number");
  assert.equal(d({ currency: "EUR" }).rule, "default-deny-financial", "a missing amount matches neither rule");
  assert.equal(d(undefined).rule, "default-deny-financial", "no args at all");
  assert.equal(d({ amount: 40, currency: "EUR", country: "XX" }).rule, "never-to-sanctioned", "deny still wins");
});

Deno.test("conditions see the effect, plugin, agent, workflow, class and the request context", async () => {
  const set = await setOf(`default: deny
rules:
  - id: office-hours-crm
    when: "effect like 'crm.*' and plugin == 'crm' and agent != null and workflow startsWith 'sync' and class == 'write' and context.hour >= 9 and context.hour < 18 and context.weekday not in ['sat', 'sun']"
    decision: allow
`);
  const at = (ms: number, extra: Partial<PolicyRequest> = {}) =>
    evaluate(set, {
      effect: "crm.update",
      effectClass: "write",
      plugin: "crm",
      agent: "sync",
      workflow: "sync_nightly",
      context: policyContext(ms, { runId: "run_1" }, "UTC"),
      ...extra,
    }).rule;
  assert.equal(at(utc(10)), "office-hours-crm");
  assert.equal(at(utc(20)), "default");
  assert.equal(at(Date.UTC(2025, 0, 18, 10)), "default", "a Saturday");
  assert.equal(at(utc(10), { agent: undefined }), "default", "agent != null");
  assert.equal(at(utc(10), { effectClass: "read" }), "default");
  assert.equal(at(utc(10), { context: undefined }), "default", "no context: context.hour is null");
});

Deno.test("policyContext gives the time in a named zone, and the run and step it is given", () => {
  const ctx = policyContext(Date.UTC(2025, 2, 30, 22, 30), { runId: "run_9", seq: 4 }, "Europe/Berlin");
  assert.deepEqual(ctx, {
    now: Date.UTC(2025, 2, 30, 22, 30),
    timezone: "Europe/Berlin",
    date: "2025-03-31",
    hour: 0,
    minute: 30,
    weekday: "mon",
    runId: "run_9",
    seq: 4,
  });
  assert.deepEqual(localTime(Date.UTC(2025, 0, 1, 0, 5), "America/New_York"), {
    date: "2024-12-31",
    month: "2024-12",
    hour: 19,
    minute: 5,
    weekday: "tue",
  });
});

Deno.test("quiet hours turn a matching allow into approve (or deny) inside their window, in their zone", async () => {
  const set = await setOf(`rules:
  - id: posts
    match: { effect: "social.*" }
    decision: allow
    limits:
      quietHours: { from: "22:00", to: "07:00", timezone: Europe/Berlin }
  - id: payouts
    match: { effect: "bank.*" }
    decision: allow
    limits:
      quietHours: { from: "18:00", to: "20:00", decision: deny }
`);
  const post = (ms: number | undefined) =>
    evaluate(set, {
      effect: "social.post",
      effectClass: "irreversible",
      plugin: "social",
      context: ms === undefined ? {} : { now: ms },
    });
  // Berlin is UTC+1 in January: 21:30 UTC is 22:30 there.
  const night = post(utc(21, 30));
  assert.equal(night.decision, "approve");
  assert.equal(night.rule, "posts");
  assert.equal(night.limit, "quietHours 22:00-07:00 Europe/Berlin");
  assert.match(night.reason, /^quiet hours 22:00-07:00 \(Europe\/Berlin\)/);
  assert.equal(night.approval?.approver, "operator");
  assert.equal(post(utc(20, 59)).decision, "allow", "21:59 in Berlin");
  assert.equal(post(utc(5, 59)).decision, "approve", "06:59 in Berlin");
  assert.equal(post(utc(6, 0)).decision, "allow", "07:00 in Berlin: the window ends");
  assert.equal(post(undefined).decision, "approve", "without a clock, quiet hours count as in force");
  const payout = (ms: number) =>
    evaluate(set, { effect: "bank.pay", effectClass: "financial", plugin: "bank", context: { now: ms } });
  assert.equal(payout(utc(19)).decision, "deny");
  assert.equal(payout(utc(19)).rule, "payouts");
  assert.equal(payout(utc(20)).decision, "allow");
  assert.ok(inWindow(23 * 60, 22 * 60, 7 * 60) && inWindow(0, 22 * 60, 7 * 60) && !inWindow(12 * 60, 22 * 60, 7 * 60));
  assert.ok(!inWindow(600, 600, 600), "from == to is an empty window");
});

Deno.test("the limits of every matching rule travel with an allow or approve, scoped as the rule says", async () => {
  const set = await setOf(`rules:
  - id: mail
    match: { effect: "email.*" }
    decision: allow
    limits:
      rate: { count: 10, per: 1h }
      scope: agent
  - id: spend
    match: { class: irreversible }
    decision: approve
    limits:
      budget: { usdPerDay: 5, usdPerMonth: 50, tokensPerDay: 1000, timezone: Europe/Berlin }
      scope: run
  - id: no-limits
    match: { plugin: smtp }
    decision: allow
`);
  const d = evaluate(set, {
    effect: "email.send",
    effectClass: "irreversible",
    plugin: "smtp",
    agent: "onboarding",
    context: { runId: "run_7" },
  });
  assert.equal(d.decision, "approve");
  assert.equal(d.rule, "spend");
  assert.deepEqual(d.limits, [
    { kind: "rate", rule: "mail", key: "agent:onboarding", count: 10, per: "1h", perMs: 3600_000 },
    { kind: "budget", rule: "spend", key: "run:run_7", unit: "usd", period: "day", max: 5, timezone: "Europe/Berlin" },
    {
      kind: "budget",
      rule: "spend",
      key: "run:run_7",
      unit: "usd",
      period: "month",
      max: 50,
      timezone: "Europe/Berlin",
    },
    {
      kind: "budget",
      rule: "spend",
      key: "run:run_7",
      unit: "tokens",
      period: "day",
      max: 1000,
      timezone: "Europe/Berlin",
    },
  ]);
  const read = evaluate(set, { effect: "email.read", effectClass: "read", plugin: "imap", agent: "triage" });
  assert.deepEqual(read.limits?.map((l) => [l.rule, l.key]), [["mail", "agent:triage"]]);
  const other = evaluate(set, { effect: "crm.lookup", effectClass: "read", plugin: "crm" });
  assert.equal(other.limits, undefined, "no matching rule has limits");
});

Deno.test("a request with an unknown effect class is denied as malformed input, whatever the default", async () => {
  const set = await setOf("default: allow\nrules:\n  - { id: all, match: { effect: '*' }, decision: allow }\n");
  for (const cls of ["dangerous", "toString", "__proto__", ""]) {
    const d = evaluate(set, { effect: "x.y", effectClass: cls as "read", plugin: "p" });
    assert.equal(d.decision, "deny", cls);
    assert.equal(d.rule, "fail-closed");
    assert.match(d.reason, /^malformed input: unknown effect class/);
  }
});

Deno.test("a connector manifest's rateLimit becomes a limit scoped to its effect", () => {
  const decl = {
    name: "sms.send",
    class: "irreversible" as const,
    description: "",
    idempotency: "none" as const,
    input: {},
    retry: "none" as const,
    rateLimit: { count: 3, per: "1m" },
  };
  assert.deepEqual(manifestRateLimit("sms", decl), {
    kind: "rate",
    rule: "manifest:sms",
    key: "effect:sms.send",
    count: 3,
    per: "1m",
    perMs: 60_000,
  });
  assert.equal(manifestRateLimit("sms", { ...decl, rateLimit: undefined }), undefined);
});

/** Inline files that must fail: the line, the column when there is one, and the reason. */
const BAD: ReadonlyArray<[string, string, number, number | undefined, RegExp]> = [
  [
    "a condition with a syntax error",
    "rules:\n  - id: x\n    decision: allow\n    when: args.amount => 3\n",
    4,
    23,
    /rule "x": "when" column 23: use ">=" \(not "=>"\)/,
  ],
  [
    "a condition with a typo in a quoted string",
    "rules:\n  - id: x\n    decision: allow\n    when: \"args.to endsWith '@example.test' and arg.cc == null\"\n",
    4,
    49,
    /"when" column 49: unknown name "arg"/,
  ],
  [
    "a condition that is not true or false",
    "rules:\n  - id: x\n    decision: allow\n    when: args.amount * 2\n",
    4,
    11,
    /a condition must be true or false, not a number/,
  ],
  [
    "a condition comparing a string with a number",
    "rules:\n  - id: x\n    decision: allow\n    when: \"args.currency == 'EUR' and 'a' < 3\"\n",
    4,
    43,
    /compares a string with a number/,
  ],
  [
    "a condition naming an unknown class",
    "rules:\n  - id: x\n    decision: allow\n    when: class == 'money'\n",
    4,
    20,
    /unknown effect class "money"/,
  ],
  [
    "a multi-line condition with an error",
    "rules:\n  - id: x\n    decision: allow\n    when: >-\n      args.amount > 1 and\n      args.x ==\n",
    4,
    undefined,
    /"when" at character 30: the expression ends too early/,
  ],
  [
    "a condition that is a list",
    "rules:\n  - id: x\n    decision: allow\n    when: [1, 2]\n",
    4,
    undefined,
    /"when" must be a condition/,
  ],
  [
    "limits on a deny rule",
    "rules:\n  - id: x\n    decision: deny\n    limits:\n      rate: { count: 1, per: 1h }\n",
    4,
    undefined,
    /"limits" do nothing on a deny rule/,
  ],
  [
    "a rate of zero",
    "rules:\n  - id: x\n    decision: allow\n    limits:\n      rate: { count: 0, per: 1h }\n",
    5,
    undefined,
    /limits "rate" must look like \{ count: 10, per: 1h \}/,
  ],
  [
    "a rate with a bad window",
    "rules:\n  - id: x\n    decision: allow\n    limits:\n      rate: { count: 5, per: 1week }\n",
    5,
    undefined,
    /"rate" must look like/,
  ],
  [
    "a budget with an unknown cap",
    "rules:\n  - id: x\n    decision: allow\n    limits:\n      budget: { eurPerDay: 5 }\n",
    5,
    undefined,
    /"budget" has an unknown key "eurPerDay"/,
  ],
  [
    "a negative budget",
    "rules:\n  - id: x\n    decision: allow\n    limits:\n      budget: { usdPerDay: -1 }\n",
    5,
    undefined,
    /"budget.usdPerDay" must be a number of at least 0/,
  ],
  [
    "an empty budget",
    "rules:\n  - id: x\n    decision: allow\n    limits:\n      budget: { timezone: UTC }\n",
    5,
    undefined,
    /"budget" needs at least one of usdPerDay/,
  ],
  [
    "a budget in an unknown time zone",
    "rules:\n  - id: x\n    decision: allow\n    limits:\n      budget: { usdPerDay: 1, timezone: Mars/Olympus }\n",
    5,
    undefined,
    /"budget.timezone" "Mars\/Olympus" is not a time zone/,
  ],
  [
    "an unknown scope",
    "rules:\n  - id: x\n    decision: allow\n    limits:\n      rate: { count: 1, per: 1h }\n      scope: tenant\n",
    6,
    undefined,
    /"scope" must be one of global, effect, plugin, agent, workflow, run/,
  ],
  [
    "quiet hours with a bad clock",
    'rules:\n  - id: x\n    decision: allow\n    limits:\n      quietHours: { from: "22:00", to: "7" }\n',
    5,
    undefined,
    /"quietHours" must look like/,
  ],
  [
    "quiet hours in an unknown zone",
    'rules:\n  - id: x\n    decision: allow\n    limits:\n      quietHours: { from: "22:00", to: "07:00", timezone: Nowhere }\n',
    5,
    undefined,
    /"quietHours.timezone" "Nowhere" is not a time zone/,
  ],
  [
    "quiet hours that allow",
    'rules:\n  - id: x\n    decision: allow\n    limits:\n      quietHours: { from: "22:00", to: "07:00", decision: allow }\n',
    5,
    undefined,
    /"quietHours.decision" must be approve or deny/,
  ],
  [
    "an unknown limit",
    "rules:\n  - id: x\n    decision: allow\n    limits:\n      burst: 3\n",
    5,
    undefined,
    /limits has an unknown key "burst"/,
  ],
];

for (const [what, yaml, line, column, why] of BAD) {
  Deno.test(`a policy file with ${what} is refused at line ${line}${column ? ` column ${column}` : ""}`, async () => {
    const error = await failureOf(parsePolicyFile("p.yaml", yaml));
    assert.equal(error._tag, "PolicyFileError");
    assert.ok(error.message.startsWith(`Policy file "p.yaml" line ${line}: `), error.message);
    assert.match(error.message, why);
    assert.deepEqual(error.details, { file: "p.yaml", line, ...(column ? { column } : {}) });
  });
}

Deno.test("a bad condition in the second file of a folder names that file, line and column", async () => {
  const dir = await Deno.makeTempDir({ prefix: "keel-policy-when-" });
  try {
    await Deno.writeTextFile(`${dir}/a.yaml`, "rules:\n  - { id: a, match: { effect: a.b }, decision: allow }\n");
    await Deno.writeTextFile(
      `${dir}/b.yaml`,
      "rules:\n  - id: b\n    match: { effect: c.d }\n    when: args.n <== 3\n    decision: allow\n",
    );
    const error = await failureOf(loadPolicySet(dir));
    assert.equal(error.message, `Policy file "${dir}/b.yaml" line 4: rule "b": "when" column 20: use "==" to compare`);
    assert.deepEqual(error.details, { file: `${dir}/b.yaml`, line: 4, column: 20 });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
