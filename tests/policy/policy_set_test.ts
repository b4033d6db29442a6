/**
 * @module
 * Unit tests for policy files and the policy engine: parsing with source
 * lines, precedence (deny > approve > allow), globs, matching on plugin,
 * agent, workflow and class, defaults, the policy hash every decision
 * records, and bad files refused with file and exact line.
 */
import assert from "node:assert/strict";
import { Cause, Effect, Layer } from "effect";
import {
  evaluate,
  loadPolicySet,
  parseDuration,
  parsePolicyFile,
  Policy,
  type PolicyRequest,
  type PolicySet,
} from "../../core/policy/mod.ts";
import { KeelConfig } from "../../core/config/mod.ts";
import { ROOT } from "../_support/keel.ts";

const FIXTURES = `${ROOT}/tests/fixtures/policies`;

const failureOf = async <A, E>(effect: Effect.Effect<A, E>): Promise<E> => {
  const exit = await Effect.runPromiseExit(effect);
  if (exit._tag === "Success") assert.fail(`expected a failure, got ${JSON.stringify(exit.value)}`);
  return Cause.squash(exit.cause) as E;
};

/** A policy set from inline YAML (one file named `inline.yaml`). */
const setOf = async (yaml: string): Promise<PolicySet> => {
  const parsed = await Effect.runPromise(parsePolicyFile("inline.yaml", yaml));
  return {
    hash: "h-inline",
    files: ["inline.yaml"],
    rules: parsed.rules,
    defaultDecision: parsed.defaultDecision ?? "allow",
  };
};

const req = (effect: string, effectClass: PolicyRequest["effectClass"], extra: Partial<PolicyRequest> = {}) => ({
  effect,
  effectClass,
  plugin: "smtp",
  ...extra,
});

const good = await Effect.runPromise(loadPolicySet(`${FIXTURES}/good`));

Deno.test("a policy folder loads every .yaml and .yml file, in name order, with each rule's file and line", () => {
  assert.deepEqual(good.files, ["10-base.yaml", "20-extra.yml"]);
  assert.equal(good.defaultDecision, "approve");
  assert.deepEqual(good.rules.map((r) => [r.id, r.file.slice(FIXTURES.length + 1), r.line]), [
    ["allow-email", "good/10-base.yaml", 4],
    ["gate-bulk-email", "good/10-base.yaml", 9],
    ["deny-payments-from-onboarding", "good/10-base.yaml", 18],
    ["allow-crm-reads", "good/20-extra.yml", 2],
    ["approve-invoices-in-billing", "good/20-extra.yml", 7],
    ["block-email-in-cleanup", "good/20-extra.yml", 12],
  ]);
  const bulk = good.rules[1];
  assert.equal(bulk.description, "Bulk sends wait for the operator");
  assert.deepEqual(bulk.match, { effect: ["email.send_bulk"] });
  assert.deepEqual(bulk.approval, {
    approver: "ops-lead",
    expiresInMs: 30 * 60_000,
    message: "Many people will get this.",
  });
  assert.deepEqual(good.rules[3].match, { plugin: ["crm", "crm-*"], class: ["read"] });
  assert.deepEqual(good.rules[4].approval, { approver: "operator", expiresInMs: 7 * 86_400_000, message: undefined });
});

Deno.test("the shipped default policy gates irreversible and financial effects behind the operator", async () => {
  const set = await Effect.runPromise(loadPolicySet(`${ROOT}/policies`));
  assert.equal(set.defaultDecision, "allow");
  const email = evaluate(set, req("email.send", "irreversible", { agent: "onboarding", workflow: "onboard_client" }));
  assert.equal(email.decision, "approve");
  assert.equal(email.rule, "gate-irreversible");
  assert.equal(email.approval?.expiresInMs, 72 * 3600_000);
  assert.equal(evaluate(set, req("bank.pay", "financial")).rule, "gate-financial");
  assert.equal(evaluate(set, req("crm.lookup", "read")).decision, "allow");
});

Deno.test("durations are seconds, minutes, hours or days and nothing else", () => {
  assert.equal(parseDuration("90s"), 90_000);
  assert.equal(parseDuration("15m"), 900_000);
  assert.equal(parseDuration(" 72h "), 72 * 3600_000);
  assert.equal(parseDuration("7d"), 7 * 86_400_000);
  assert.equal(parseDuration("366d"), 366 * 86_400_000);
  // Zero, or longer than a year (an approval's expiry must stay a date: 200000000d is not one).
  for (
    const bad of ["7", "1w", "1.5h", "-1h", "h", "next tuesday", "", "0h", "367d", "200000000d", "9".repeat(400) + "s"]
  ) {
    assert.equal(parseDuration(bad), undefined, bad);
  }
});

Deno.test("a policy refuses an approval expiry or rate window over a year, naming the field", async () => {
  const refused = async (rule: string) =>
    (await Effect.runPromise(Effect.flip(parsePolicyFile("p.yaml", `rules:\n  - id: r\n${rule}`)))).message;
  assert.match(
    await refused("    match: { effect: a.b }\n    decision: approve\n    approval: { expires: 200000000d }\n"),
    /line 5: rule "r": approval "expires" must look like 30m, 72h or 7d \(at most 366d\)/,
  );
  assert.match(
    await refused("    match: { effect: a.b }\n    decision: allow\n    limits: { rate: { count: 1, per: 400d } }\n"),
    /rule "r": limits "rate" must look like/,
  );
});

Deno.test("a policy file that is a link to a file is loaded like any other; a broken link fails the load", async () => {
  const dir = await Deno.makeTempDir({ prefix: "keel-policy-link-" });
  const elsewhere = await Deno.makeTempDir({ prefix: "keel-policy-link-src-" });
  try {
    await Deno.writeTextFile(`${dir}/a.yaml`, "default: allow\nrules: []\n");
    await Deno.writeTextFile(
      `${elsewhere}/deny.yaml`,
      `rules:\n  - { id: no-deletes, match: { effect: db.delete }, decision: deny }\n`,
    );
    await Deno.symlink(`${elsewhere}/deny.yaml`, `${dir}/deny.yaml`);
    const set = await Effect.runPromise(loadPolicySet(dir));
    assert.deepEqual(set.files, ["a.yaml", "deny.yaml"]);
    assert.equal(evaluate(set, { effect: "db.delete", effectClass: "write", plugin: "db" }).rule, "no-deletes");
    await Deno.symlink(`${elsewhere}/gone.yaml`, `${dir}/gone.yaml`);
    const error = await Effect.runPromise(Effect.flip(loadPolicySet(dir)));
    assert.match(error.message, /Cannot read policy folder/);
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(elsewhere, { recursive: true });
  }
});

Deno.test("the most restrictive matching rule wins: deny beats approve beats allow", () => {
  const allow = evaluate(good, req("email.send", "write"));
  assert.equal(allow.decision, "allow");
  assert.equal(allow.rule, "allow-email");

  const approve = evaluate(good, req("email.send_bulk", "write"));
  assert.equal(approve.decision, "approve", "gate-bulk-email beats allow-email");
  assert.equal(approve.rule, "gate-bulk-email");
  assert.equal(approve.approval?.approver, "ops-lead");

  const deny = evaluate(good, req("email.send_bulk", "write", { workflow: "cleanup" }));
  assert.equal(deny.decision, "deny", "block-email-in-cleanup beats gate-bulk-email and allow-email");
  assert.equal(deny.rule, "block-email-in-cleanup");
});

Deno.test("precedence does not depend on the order rules are written in", async () => {
  const a = await setOf(`rules:
  - { id: d, match: { effect: "x.*" }, decision: deny }
  - { id: p, match: { effect: x.y }, decision: approve }
  - { id: a, match: { effect: x.y }, decision: allow }
`);
  const b = { ...a, rules: [...a.rules].reverse() };
  assert.equal(evaluate(a, req("x.y", "read")).rule, "d");
  assert.equal(evaluate(b, req("x.y", "read")).rule, "d");
});

Deno.test("effect globs match by whole name, with * for any run of characters and a literal dot", async () => {
  const set = await setOf(`default: deny
rules:
  - { id: email-any, match: { effect: "email.*" }, decision: allow }
  - { id: exact, match: { effect: crm.lookup }, decision: allow }
  - { id: middle, match: { effect: "bank.*.read" }, decision: allow }
`);
  const d = (effect: string) => evaluate(set, req(effect, "write")).rule;
  assert.equal(d("email.send"), "email-any");
  assert.equal(d("email.send.bulk"), "email-any");
  assert.equal(d("email"), "default");
  assert.equal(d("xemail.send"), "default");
  assert.equal(d("crm.lookup"), "exact");
  assert.equal(d("crmXlookup"), "default", "the dot is literal");
  assert.equal(d("crm.lookup2"), "default", "globs are anchored");
  assert.equal(d("bank.acct.read"), "middle");
  assert.equal(d("bank.acct.write"), "default");
});

Deno.test("rules match on plugin, agent, workflow and class, and every listed key must match", () => {
  const d = (r: PolicyRequest) => evaluate(good, r);
  assert.equal(d(req("crm.lookup", "read", { plugin: "crm" })).rule, "allow-crm-reads");
  assert.equal(d(req("crm.lookup", "read", { plugin: "crm-eu" })).rule, "allow-crm-reads", "plugin glob");
  assert.equal(d(req("crm.lookup", "read", { plugin: "crmx" })).rule, "default");
  assert.equal(d(req("crm.update", "write", { plugin: "crm" })).rule, "default", "class must match too");

  assert.equal(d(req("invoice.create", "write", { workflow: "billing_monthly" })).rule, "approve-invoices-in-billing");
  assert.equal(d(req("invoice.create", "write", { workflow: "onboard_client" })).rule, "default");
  assert.equal(
    d(req("invoice.create", "write")).rule,
    "default",
    "a workflow rule never matches a request without one",
  );

  const pay = (agent?: string) => d(req("bank.pay", "financial", { plugin: "bank", agent }));
  assert.equal(pay("onboarding").decision, "deny");
  assert.equal(pay("onboarding").rule, "deny-payments-from-onboarding");
  assert.equal(pay("billing").rule, "default-deny-financial");
  assert.equal(pay(undefined).rule, "default-deny-financial", "an agent rule never matches a request without one");
});

Deno.test("with no matching rule, irreversible and financial effects are denied whatever the default", async () => {
  for (const def of ["allow", "approve", "deny"] as const) {
    const set = { ...good, rules: [], defaultDecision: def };
    for (const cls of ["irreversible", "financial"] as const) {
      const decision = evaluate(set, req("x.y", cls));
      assert.equal(decision.decision, "deny");
      assert.equal(decision.rule, `default-deny-${cls}`);
      assert.match(decision.reason, new RegExp(`no rule allows this ${cls} effect`));
    }
  }
  const allowed = await setOf(`rules:\n  - { id: ok-email, match: { effect: email.send }, decision: allow }\n`);
  assert.equal(evaluate(allowed, req("email.send", "irreversible")).decision, "allow", "an explicit rule overrides it");
});

Deno.test("with no matching rule, read and write effects get the configured default (allow when none is set)", async () => {
  for (const def of ["allow", "approve", "deny"] as const) {
    const set = await setOf(`default: ${def}\nrules: []\n`);
    for (const cls of ["read", "write"] as const) {
      const decision = evaluate(set, req("x.y", cls));
      assert.equal(decision.decision, def);
      assert.equal(decision.rule, "default");
    }
  }
  assert.equal((await setOf("rules: []\n")).defaultDecision, "allow");
  assert.equal((await setOf("")).rules.length, 0, "an empty file is an empty policy");
});

Deno.test("a decision records the policy hash, the rule id and where the rule is written", () => {
  const decision = evaluate(good, req("email.send_bulk", "write"));
  assert.match(good.hash, /^[0-9a-f]{64}$/);
  assert.equal(decision.policyHash, good.hash);
  assert.equal(decision.rule, "gate-bulk-email");
  assert.equal(decision.ruleSource, `${FIXTURES}/good/10-base.yaml:9`);
  assert.equal(decision.reason, "Bulk sends wait for the operator");
  const fallback = evaluate(good, req("x.y", "write"));
  assert.equal(fallback.policyHash, good.hash);
  assert.equal(fallback.ruleSource, undefined);
});

Deno.test("the policy hash is stable for the same files and changes when any policy file changes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "keel-policy-hash-" });
  try {
    for (const name of ["10-base.yaml", "20-extra.yml"]) {
      await Deno.copyFile(`${FIXTURES}/good/${name}`, `${dir}/${name}`);
    }
    const copy = await Effect.runPromise(loadPolicySet(dir));
    assert.equal(copy.hash, good.hash, "same names and contents, same hash");
    await Deno.writeTextFile(`${dir}/20-extra.yml`, "\n# a comment\n", { append: true });
    assert.notEqual((await Effect.runPromise(loadPolicySet(dir))).hash, good.hash);
    await Deno.writeTextFile(`${dir}/notes.txt`, "ignored");
    const withText = await Effect.runPromise(loadPolicySet(dir));
    assert.deepEqual(withText.files, ["10-base.yaml", "20-extra.yml"], "only YAML files are policy files");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Each bad fixture folder, the file at fault and the exact line the error must name. */
const BAD: ReadonlyArray<[string, string, number, RegExp]> = [
  ["bad-yaml", "policy.yaml", 8, /Sequence item without - indicator/],
  ["bad-decision", "policy.yaml", 9, /rule "maybe-later": "decision" must be one of allow, approve, deny/],
  ["bad-class", "policy.yaml", 7, /rule "gate-dangerous": unknown effect class "dangerous"/],
  ["bad-expires", "policy.yaml", 9, /rule "gate-email": approval "expires" must look like 30m, 72h or 7d/],
  ["duplicate-ids", "b.yaml", 6, /rule id "gate-email" is already used at .*duplicate-ids\/a\.yaml:2/],
];

for (const [folder, name, line, why] of BAD) {
  Deno.test(`policy folder ${folder} is refused with a PolicyFileError naming ${name} line ${line}`, async () => {
    const file = `${FIXTURES}/${folder}/${name}`;
    const error = await failureOf(loadPolicySet(`${FIXTURES}/${folder}`));
    assert.equal(error._tag, "PolicyFileError");
    assert.ok(error.message.startsWith(`Policy file "${file}" line ${line}: `), error.message);
    assert.match(error.message, why);
    assert.deepEqual(error.details, { file, line });
  });
}

Deno.test("two policy files with different defaults are refused, naming both files", async () => {
  const error = await failureOf(loadPolicySet(`${FIXTURES}/conflicting-defaults`));
  assert.equal(error._tag, "PolicyFileError");
  assert.equal(
    error.message,
    `Policy file "${FIXTURES}/conflicting-defaults/b.yaml": "default" conflicts with the one in "${FIXTURES}/conflicting-defaults/a.yaml"`,
  );
});

Deno.test("a missing policy folder is a PolicyFileError naming the folder", async () => {
  const error = await failureOf(loadPolicySet(`${FIXTURES}/no-such-folder`));
  assert.equal(error._tag, "PolicyFileError");
  assert.ok(error.message.startsWith(`Cannot read policy folder "${FIXTURES}/no-such-folder"`), error.message);
});

/** Inline files that must fail, with the line their error names. */
const BAD_INLINE: ReadonlyArray<[string, string, number, RegExp]> = [
  ["a list at the top", "- id: x\n  decision: allow\n", 1, /expected a mapping with "rules"/],
  ["an unknown top-level key", "default: allow\nrulez: []\n", 2, /unknown key "rulez"/],
  ["an unknown default", "rules: []\ndefault: maybe\n", 2, /"default" must be one of allow, approve, deny/],
  ["rules that are not a list", "rules:\n  id: x\n", 1, /"rules" must be a list/],
  ["a rule that is not a mapping", "rules:\n  - allow everything\n", 2, /a rule must be a mapping/],
  ["a rule without an id", "rules:\n  - decision: allow\n    match: { effect: a.b }\n", 2, /every rule needs an "id"/],
  [
    "an unknown rule key",
    "rules:\n  - id: x\n    decision: allow\n    unless: always\n",
    4,
    /unknown rule key "unless"/,
  ],
  [
    "an unknown match key",
    "rules:\n  - id: x\n    match:\n      effect: a.b\n      tenant: acme\n    decision: allow\n",
    5,
    /unknown match key "tenant"/,
  ],
  [
    "an empty match list",
    "rules:\n  - id: x\n    match:\n      effect: []\n    decision: allow\n",
    4,
    /must be a string or a list/,
  ],
  [
    "approval on a non-approve rule",
    "rules:\n  - id: x\n    decision: allow\n    approval:\n      expires: 1h\n",
    5,
    /"approval" only goes with decision approve/,
  ],
  ["a duplicate key", "rules:\n  - id: x\n    decision: allow\n    decision: deny\n", 4, /unique/],
  ["a tab used as indentation", "rules:\n  - id: x\n\tdecision: allow\n", 3, /[Tt]ab/],
];

for (const [what, yaml, line, why] of BAD_INLINE) {
  Deno.test(`a policy file with ${what} is refused at line ${line}`, async () => {
    const error = await failureOf(parsePolicyFile("p.yaml", yaml));
    assert.equal(error._tag, "PolicyFileError");
    assert.ok(error.message.startsWith(`Policy file "p.yaml" line ${line}: `), error.message);
    assert.match(error.message, why);
  });
}

Deno.test("the Policy service decides with the loaded set and keeps it when a reload finds a bad file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "keel-policy-reload-" });
  try {
    await Deno.writeTextFile(`${dir}/p.yaml`, "rules:\n  - { id: allow-x, match: { effect: x.y }, decision: allow }\n");
    const config = KeelConfig.layer({
      dataDir: ":memory:",
      hostname: "127.0.0.1",
      port: 0,
      token: "t",
      policiesDir: dir,
      root: ROOT,
      rpcTimeoutMs: 1000,
      eagerMemory: false,
    });
    await Effect.runPromise(
      Effect.gen(function* () {
        const policy = yield* Policy;
        const before = yield* policy.current;
        const first = yield* policy.decide(req("x.y", "irreversible"));
        assert.equal(first.decision, "allow");
        assert.equal(first.rule, "allow-x");
        assert.equal(first.policyHash, before.hash);

        yield* Effect.promise(() =>
          Deno.writeTextFile(`${dir}/p.yaml`, "rules:\n  - id: allow-x\n    decision: yes\n")
        );
        const error = yield* Effect.flip(policy.reload);
        assert.equal(error._tag, "PolicyFileError");
        assert.match(error.message, /line 3: rule "allow-x": "decision" must be one of/);
        assert.equal((yield* policy.current).hash, before.hash, "the old set stays in force");
        assert.equal((yield* policy.decide(req("x.y", "irreversible"))).decision, "allow");

        yield* Effect.promise(() => Deno.writeTextFile(`${dir}/p.yaml`, "rules: []\n"));
        const after = yield* policy.reload;
        assert.notEqual(after.hash, before.hash);
        const second = yield* policy.decide(req("x.y", "irreversible"));
        assert.equal(second.rule, "default-deny-irreversible");
        assert.equal(second.policyHash, after.hash);
      }).pipe(Effect.provide(Policy.layer.pipe(Layer.provide(config)))),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
