/**
 * @module
 * The policy tooling: `lintPolicySet`/`checkPolicyFiles` (shadowed and
 * unreachable rules, unknown effect names, every parse error with file and
 * line), and `POST /api/policy/explain` and `/simulate` on a real Keel whose
 * decision log was filled by real workflows through the real Gateway: 120
 * past requests replayed against a candidate set, with exact transition
 * counts.
 */
import assert from "node:assert/strict";
import { Effect } from "effect";
import {
  checkPolicyFiles,
  type DecisionRecord,
  evaluate,
  globContains,
  type InstalledEffect,
  lintPolicySet,
  loadPolicySet,
  parsePolicyFile,
  type PolicyFinding,
  policySetFromFiles,
  type Rule,
  simulatePolicy,
} from "../../core/policy/mod.ts";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { withLedgerKeel } from "../gateway/_ledger.ts";
import { Journal } from "../../core/journal/mod.ts";
import {
  HISTORY_POLICY,
  historyCounts,
  installToolingFixtures,
  makeHistory,
} from "../fixtures/policy_tooling/history.ts";

/** Rules from inline YAML, as one file named `p.yaml`. */
const rulesOf = async (yaml: string): Promise<Rule[]> =>
  (await Effect.runPromise(parsePolicyFile("p.yaml", yaml))).rules;

const lint = async (yaml: string, effects?: InstalledEffect[]) =>
  lintPolicySet({ rules: await rulesOf(yaml) }, effects);

/** Findings as `kind rule [by]`, for compact asserts. */
const brief = (findings: ReadonlyArray<PolicyFinding>) =>
  findings.map((f) => `${f.kind} ${f.rule ?? "-"}${f.by ? ` by ${f.by}` : ""}`);

const INSTALLED: InstalledEffect[] = [
  { name: "crm.lookup", class: "read", plugin: "pt_crm" },
  { name: "crm.update", class: "write", plugin: "pt_crm" },
  { name: "crm.delete", class: "irreversible", plugin: "pt_crm" },
  { name: "bank.balance", class: "read", plugin: "pt_bank" },
  { name: "bank.pay", class: "financial", plugin: "pt_bank" },
];

Deno.test("globContains() decides exactly whether one effect glob matches everything another one does", () => {
  const yes: Array<[string, string]> = [
    ["*", "email.send"],
    ["*", "*"],
    ["email.*", "email.send"],
    ["email.*", "email.*"],
    ["email.*", "email.send.*"],
    ["e*.send", "email.send"],
    ["*.send", "*.*.send"],
    ["a*", "ab*"],
    ["*a*", "*ba*"],
  ];
  const no: Array<[string, string]> = [
    ["email.send", "email.*"],
    ["email.*", "*"],
    ["*.send", "email.*"],
    ["a*b*c", "a*c"],
    ["email.*", "emailXsend"],
    ["email.send", "email.sen"],
    ["*.*.send", "*.send"],
  ];
  for (const [outer, inner] of yes) assert.equal(globContains(outer, inner), true, `${outer} ⊇ ${inner}`);
  for (const [outer, inner] of no) assert.equal(globContains(outer, inner), false, `${outer} ⊉ ${inner}`);
});

Deno.test("lint reports a rule as shadowed when a more restrictive rule matches a superset of its requests", async () => {
  const findings = await lint(`rules:
  - { id: allow-pay, match: { effect: bank.pay }, decision: allow }
  - { id: deny-bank, match: { effect: "bank.*" }, decision: deny }
  - { id: approve-money, match: { class: financial }, decision: approve }
  - { id: deny-risky, match: { class: [irreversible, financial] }, decision: deny }
`);
  assert.deepEqual(brief(findings), ["shadowed allow-pay by deny-bank", "shadowed approve-money by deny-risky"]);
  assert.equal(findings[0].severity, "warning");
  assert.equal(findings[0].file, "p.yaml");
  assert.equal(findings[0].line, 2);
  assert.match(findings[0].message, /rule "deny-bank" \(p\.yaml:3\) matches every request this rule matches/);
  assert.match(findings[0].message, /it decides deny, which beats allow/);
});

Deno.test("lint: an equally restrictive rule shadows only when it comes first; narrower or less strict rules never do", async () => {
  assert.deepEqual(
    brief(
      await lint(`rules:
  - { id: allow-crm, match: { effect: "crm.*" }, decision: allow }
  - { id: allow-lookup, match: { effect: crm.lookup }, decision: allow }
`),
    ),
    ["shadowed allow-lookup by allow-crm"],
    "the first of equals decides",
  );
  assert.deepEqual(
    await lint(`rules:
  - { id: allow-lookup, match: { effect: crm.lookup }, decision: allow }
  - { id: allow-crm, match: { effect: "crm.*" }, decision: allow }
  - { id: deny-delete, match: { effect: crm.delete }, decision: deny }
  - { id: deny-pay-by-ops, match: { effect: bank.pay, agent: pt_ops }, decision: deny }
  - { id: allow-pay, match: { effect: bank.pay }, decision: allow }
  - { id: deny-pay-in-daily, match: { effect: bank.pay, workflow: daily, plugin: pt_bank }, decision: deny }
  - { id: approve-reads, match: { class: read, plugin: "pt_*" }, decision: approve }
  - { id: allow-crm-reads, match: { class: [read, write], plugin: pt_crm }, decision: allow }
`),
    [],
    "a broader allow never hides a deny, and a rule that needs an agent, workflow or class does not cover one that does not",
  );
});

Deno.test("checkPolicyFiles() orders files as the engine does (code units: B.yaml before a.yaml): it never calls the deciding rule shadowed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "keel-lint-order-" });
  try {
    const files = {
      "a.yaml":
        "rules:\n  - { id: ops-gate, match: { effect: bank.pay }, decision: approve, approval: { approver: ops } }\n",
      "B.yaml":
        "rules:\n  - { id: cfo-gate, match: { effect: bank.pay }, decision: approve, approval: { approver: cfo } }\n",
    };
    for (const [name, text] of Object.entries(files)) await Deno.writeTextFile(`${dir}/${name}`, text);
    const set = await Effect.runPromise(loadPolicySet(dir));
    assert.equal(evaluate(set, { effect: "bank.pay", effectClass: "financial", plugin: "bank" }).rule, "cfo-gate");
    const check = await Effect.runPromise(
      checkPolicyFiles(Object.entries(files).map(([name, text]) => ({ file: `${dir}/${name}`, text }))),
    );
    assert.deepEqual(brief(check.findings), ["shadowed ops-gate by cfo-gate"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkPolicyFiles() reports a file the loader cannot read as a finding, not a crash", async () => {
  const check = await Effect.runPromise(checkPolicyFiles([{
    file: "p.yaml",
    text:
      "rules:\n  - id: v\n    match: { effect: a.b }\n    decision: approve\n    approval: { expires: { toString: 1 } }\n",
  }]));
  assert.equal(check.findings.length, 1, JSON.stringify(check.findings));
  assert.match(check.findings[0].message, /approval "expires" must look like/);
});

Deno.test("lint against installed manifests: a class rule shadows a rule naming only effects of that class", async () => {
  const yaml = `rules:
  - { id: gate-irreversible, match: { class: irreversible }, decision: approve }
  - { id: allow-delete, match: { effect: crm.delete }, decision: allow }
  - { id: allow-crm, match: { effect: "crm.*" }, decision: allow }
`;
  assert.deepEqual(await lint(yaml), [], "without manifests nothing says crm.delete is irreversible");
  const findings = await lint(yaml, INSTALLED);
  assert.deepEqual(brief(findings), ["shadowed allow-delete by gate-irreversible"]);
  assert.match(findings[0].message, /matches every installed effect this rule matches \(crm\.delete\)/);
});

Deno.test("lint is conservative with conditions: only an unconditional rule or the same condition shadows", async () => {
  const findings = await lint(`rules:
  - { id: allow-pay, match: { effect: bank.pay }, decision: allow }
  - { id: deny-big, match: { effect: bank.pay }, when: "args.amount > 100", decision: deny }
  - { id: approve-big, match: { effect: bank.pay }, when: "args.amount>100", decision: approve }
  - { id: approve-big-x, match: { effect: bank.pay }, when: "args.amount > 100 and args.to == 'x'", decision: approve }
  - { id: deny-all-pay, match: { effect: "bank.*" }, decision: deny }
  - { id: never, match: { effect: bank.pay }, when: "false", decision: deny }
  - { id: always-deny-mail, match: { effect: "mail.*" }, when: "true", decision: deny }
  - { id: allow-mail-send, match: { effect: mail.send }, decision: allow }
`);
  assert.deepEqual(brief(findings), [
    "shadowed allow-pay by deny-all-pay",
    "shadowed approve-big by deny-big",
    "shadowed approve-big-x by deny-all-pay",
    "unreachable never",
    "shadowed allow-mail-send by always-deny-mail",
  ]);
  // deny-big comes before the broader deny, so it is the one that decides big payments: not shadowed.
  assert.equal(findings[3].message, 'rule "never" can never match: its condition "false" is never true');
  // Without the unconditional deny, a different condition never shadows.
  const conditional = await lint(`rules:
  - { id: allow-pay, match: { effect: bank.pay }, decision: allow }
  - { id: deny-big, match: { effect: bank.pay }, when: "args.amount > 100", decision: deny }
  - { id: approve-big-x, match: { effect: bank.pay }, when: "args.amount > 100 and args.to == 'x'", decision: approve }
`);
  assert.deepEqual(conditional, []);
});

Deno.test("lint keeps rules whose limits still act: counters under a gate, quiet hours that outrank it", async () => {
  const findings = await lint(`rules:
  - { id: gate-crm, match: { effect: "crm.*" }, decision: approve }
  - { id: rate-lookups, match: { effect: crm.lookup }, decision: allow, limits: { rate: { count: 10, per: 1h } } }
  - id: quiet-updates
    match: { effect: crm.update }
    decision: allow
    limits: { quietHours: { from: "22:00", to: "07:00", decision: deny } }
  - id: quiet-deletes
    match: { effect: crm.delete }
    decision: allow
    limits: { quietHours: { from: "22:00", to: "07:00" } }
  - { id: deny-bank, match: { effect: "bank.*" }, decision: deny }
  - { id: rate-pay, match: { effect: bank.pay }, decision: allow, limits: { rate: { count: 1, per: 1d } } }
`);
  assert.deepEqual(brief(findings), ["shadowed quiet-deletes by gate-crm", "shadowed rate-pay by deny-bank"]);
  assert.match(findings[0].message, /it decides approve \(gated\) too and comes first$/);
});

Deno.test("lint reports rules no request can match: invalid literal names, and class or plugin no installed effect has", async () => {
  const yaml = `rules:
  - { id: caps, match: { effect: Email.Send }, decision: deny }
  - { id: bad-plugin, match: { plugin: [SMTP, "Mail Server"] }, decision: deny }
  - { id: half-bad, match: { effect: [crm.lookup, "CRM.*", Bad] }, decision: allow }
  - { id: read-delete, match: { effect: crm.delete, class: read }, decision: allow }
  - { id: bank-from-crm, match: { effect: "bank.*", plugin: pt_crm }, decision: deny }
`;
  const statically = await lint(yaml);
  assert.deepEqual(brief(statically), ["unreachable caps", "unreachable bad-plugin", "unreachable half-bad"]);
  assert.match(
    statically[0].message,
    /effect "Email\.Send" is not a valid effect name \(names look like "crm\.lookup"\)/,
  );
  assert.match(statically[1].message, /plugin "SMTP", "Mail Server" is not a valid plugin name/);
  const installed = await lint(yaml, INSTALLED);
  assert.deepEqual(brief(installed), [
    "unreachable caps",
    "unreachable bad-plugin",
    "unreachable half-bad",
    "unknown-effect half-bad",
    "unreachable read-delete",
    "unreachable bank-from-crm",
  ]);
  assert.match(statically[2].message, /^rule "half-bad": effect "Bad" can never match, since it is not a valid/);
  assert.match(installed[3].message, /effect "CRM\.\*" matches no effect an installed plugin declares/);
  assert.match(
    installed[4].message,
    /can never match an installed effect: crm\.delete is irreversible from plugin pt_crm, but the rule asks for class read/,
  );
  assert.match(installed[5].message, /bank\.balance is read from plugin pt_bank, bank\.pay is financial/);
  assert.match(installed[5].message, /asks for plugin pt_crm$/);
});

Deno.test("lint names effects no installed plugin declares, and suggests a close one", async () => {
  const findings = await lint(
    `rules:
  - { id: typo, match: { effect: crm.lookpu }, decision: allow }
  - { id: gone, match: { effect: ["mail.*", crm.lookup] }, decision: approve }
  - { id: fine, match: { effect: "bank.*" }, decision: approve }
`,
    INSTALLED,
  );
  assert.deepEqual(brief(findings), ["unknown-effect typo", "unknown-effect gone"]);
  assert.equal(
    findings[0].message,
    'rule "typo": effect "crm.lookpu" matches no effect an installed plugin declares (did you mean "crm.lookup"?)',
  );
  assert.match(findings[1].message, /effect "mail\.\*" matches no effect/);
});

Deno.test("checkPolicyFiles() reports every file's parse error with file and line, and every duplicate id", async () => {
  const result = await Effect.runPromise(checkPolicyFiles([
    { file: "dir/a.yaml", text: "rules:\n  - id: one\n    decision: allow\n  - id: two\n    decision: maybe\n" },
    { file: "dir/b.yaml", text: "rules:\n  - id: three\n    id: four\n    decision: allow\n" },
    { file: "dir/c.yaml", text: "rules:\n  - { id: four, decision: deny }\n  - { id: five, decision: deny }\n" },
    { file: "dir/d.yaml", text: "rules:\n  - { id: four, decision: allow }\n  - { id: five, decision: allow }\n" },
  ]));
  assert.deepEqual(result.findings.map((f) => [f.severity, f.kind, `${f.file}:${f.line}`]), [
    ["error", "parse", "dir/a.yaml:5"],
    ["error", "parse", "dir/b.yaml:3"],
    ["error", "duplicate-id", "dir/d.yaml:2"],
    ["error", "duplicate-id", "dir/d.yaml:3"],
  ]);
  assert.equal(result.findings[0].message, 'rule "two": "decision" must be one of allow, approve, deny');
  assert.equal(result.findings[2].message, 'rule id "four" is already used at dir/c.yaml:2');
  assert.equal(result.findings[1].message, "Map keys must be unique");
  assert.equal(result.findings[3].message, 'rule id "five" is already used at dir/c.yaml:3');
  assert.equal(result.checkedAgainstInstalled, false);
});

Deno.test("checkPolicyFiles() finds nothing to report in Keel's shipped policies, with or without manifests", async () => {
  const dir = `${ROOT}/policies`;
  const files = [...Deno.readDirSync(dir)].filter((e) => /\.ya?ml$/.test(e.name))
    .map((e) => ({ file: `${dir}/${e.name}`, text: Deno.readTextFileSync(`${dir}/${e.name}`) }));
  assert.ok(files.length > 0);
  for (const effects of [undefined, INSTALLED, []]) {
    const result = await Effect.runPromise(checkPolicyFiles(files, effects));
    assert.deepEqual(result.findings, [], JSON.stringify(result.findings));
    assert.ok(result.rules > 0);
  }
});

Deno.test("policySetFromFiles() loads candidate texts like a policy folder and leaves no staging folder behind", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "keel-tmp-" });
  const saved = Deno.env.get("TMPDIR");
  Deno.env.set("TMPDIR", tmp);
  try {
    const set = await Effect.runPromise(policySetFromFiles({
      "b.yaml": "rules:\n  - { id: two, match: { effect: 'x.*' }, decision: deny }\n",
      "a.yml": "default: approve\nrules:\n  - { id: one, decision: allow }\n",
    }));
    assert.deepEqual(set.files, ["a.yml", "b.yaml"]);
    assert.deepEqual(set.rules.map((r) => `${r.id}@${r.file}:${r.line}`), ["one@a.yml:3", "two@b.yaml:2"]);
    assert.equal(set.defaultDecision, "approve");
    assert.match(set.hash, /^[0-9a-f]{64}$/);
    const exit = await Effect.runPromiseExit(policySetFromFiles({ "c.yaml": "rules: 3\n" }));
    assert.equal(exit._tag, "Failure");
    assert.deepEqual([...Deno.readDirSync(tmp)], [], "the staging folder is removed after success and failure");
  } finally {
    if (saved === undefined) Deno.env.delete("TMPDIR");
    else Deno.env.set("TMPDIR", saved);
    await Deno.remove(tmp, { recursive: true });
  }
});

// ---------------------------------------------------------------- a real Keel

/** A candidate that gates updates, denies billing's balance reads, gates deletes and denies payments. */
const CANDIDATE = `default: allow
rules:
  - id: gate-crm-updates
    match: { effect: crm.update }
    decision: approve
  - id: deny-balance-in-billing
    match: { effect: bank.balance, workflow: billing }
    decision: deny
  - id: gate-deletes
    match: { effect: crm.delete, plugin: pt_crm }
    decision: approve
  - id: no-payments
    match: { class: financial }
    decision: deny
`;

const withKeel = async (fn: (k: TestKeel) => Promise<void>) => {
  const k = await startTestKeel({ policies: { "history.yaml": HISTORY_POLICY } });
  try {
    await fn(k);
  } finally {
    await k.close();
  }
};

Deno.test("`POST /api/policy/simulate` replays 120 real past requests against a candidate with exact transition counts", async (t) => {
  await withKeel(async (k) => {
    await installToolingFixtures(k);
    await makeHistory(k, 4, 10);
    const counts = historyCounts(4, 10);
    assert.equal(counts.total, 120);

    await t.step("the decision log holds every request the Gateway decided, with its args", async () => {
      const sim = await k.api("POST", "/api/policy/simulate", { files: { "history.yaml": HISTORY_POLICY } });
      assert.equal(sim.status, 200, JSON.stringify(sim.body));
      assert.equal(sim.body.summary.total, 120);
      const requests = sim.body.requests as Array<Record<string, any>>;
      const byEffect: Record<string, number> = {};
      for (const r of requests) byEffect[r.effect] = (byEffect[r.effect] ?? 0) + 1;
      assert.deepEqual(byEffect, counts.byEffect);
      const before = (d: string) => requests.filter((r) => r.before.decision === d).length;
      assert.deepEqual([before("allow"), before("approve"), before("deny")], [90, 10, 20]);
      assert.deepEqual(
        [...new Set(requests.filter((r) => r.before.decision === "deny").map((r) => r.before.rule))],
        ["default-deny-irreversible"],
      );
      assert.equal(sim.body.pastPolicies.length, 1);
    });

    await t.step("the policy in force, replayed against itself, changes nothing", async () => {
      const sim = await k.api("POST", "/api/policy/simulate", { files: { "history.yaml": HISTORY_POLICY } });
      assert.equal(sim.body.summary.unchanged, 120);
      assert.equal(sim.body.summary.changed, 0);
      assert.deepEqual(Object.values(sim.body.summary.transitions), [0, 0, 0, 0, 0, 0]);
      assert.deepEqual(sim.body.pastPolicies, [sim.body.policyHash], "same files, same hash as the set in force");
    });

    await t.step("a candidate that gates some and denies others moves exactly the requests it should", async () => {
      const sim = await k.api("POST", "/api/policy/simulate", { files: { "candidate.yaml": CANDIDATE } });
      assert.equal(sim.status, 200, JSON.stringify(sim.body));
      assert.deepEqual(sim.body.summary, {
        total: 120,
        unchanged: 60, // 40 lookups + 20 daily balance reads
        changed: 60,
        transitions: {
          allowed_to_gated: 20, // crm.update
          allowed_to_denied: 10, // bank.balance in billing
          gated_to_allowed: 0,
          gated_to_denied: 10, // bank.pay
          denied_to_allowed: 0,
          denied_to_gated: 20, // crm.delete
        },
        limitedBefore: 0,
        failedClosedBefore: 0,
      });
      assert.deepEqual(sim.body.files, ["candidate.yaml"]);
      assert.equal(sim.body.rules, 4);
      const requests = sim.body.requests as Array<Record<string, any>>;
      assert.equal(requests.length, 120);
      const update = requests.find((r) => r.effect === "crm.update")!;
      assert.equal(update.transition, "allowed_to_gated");
      assert.deepEqual(update.after, { decision: "approve", rule: "gate-crm-updates", ruleSource: "candidate.yaml:3" });
      assert.equal(update.before.rule, "default");
      assert.match(update.argsDigest, /^[0-9a-f]{16}$/);
      assert.match(update.runId, /^run_/);
      const pay = requests.find((r) => r.effect === "bank.pay")!;
      assert.deepEqual([pay.before.rule, pay.after.rule, pay.workflow, pay.agent], [
        "gate-payments",
        "no-payments",
        "billing",
        "pt_ops",
      ]);
      // Different args, different digests; the same args always the same digest.
      const digests = new Set(requests.filter((r) => r.effect === "bank.pay").map((r) => r.argsDigest));
      assert.equal(digests.size, 10);
    });

    await t.step("conditions on the args and on the recorded context replay as the Gateway judged them", async () => {
      const sim = await k.api("POST", "/api/policy/simulate", {
        files: {
          "conditions.yaml": `default: allow
rules:
  - { id: gate-payments, match: { effect: bank.pay }, decision: approve }
  - { id: deny-over-100, match: { effect: bank.pay }, when: "args.amount > 100", decision: deny }
  - { id: gate-second-step, match: { effect: crm.update }, when: "context.seq == 2", decision: approve }
`,
        },
      });
      assert.equal(sim.status, 200, JSON.stringify(sim.body));
      // Billing paid 50, 100, …, 500: eight of ten are over 100. Each daily run's step 2 is its first update.
      assert.deepEqual(sim.body.summary.transitions, {
        allowed_to_gated: 4,
        allowed_to_denied: 0,
        gated_to_allowed: 0,
        gated_to_denied: 8,
        denied_to_allowed: 0,
        denied_to_gated: 0,
      });
      assert.equal(sim.body.summary.unchanged, 108);
      const gated = sim.body.requests.filter((r: { transition: string }) => r.transition === "allowed_to_gated");
      assert.ok(gated.every((r: { seq: number; effect: string }) => r.seq === 2 && r.effect === "crm.update"));
    });

    await t.step("quiet hours replay at the time each request was made", async () => {
      const first = (await k.api("POST", "/api/policy/simulate", { files: { "h.yaml": HISTORY_POLICY } })).body
        .requests[0];
      const hour = new Date(first.at).getUTCHours();
      const hh = (h: number) => `${String(h % 24).padStart(2, "0")}:00`;
      const quiet = (from: number, to: number) =>
        `default: allow
rules:
  - { id: gate-payments, match: { effect: bank.pay }, decision: approve }
  - id: quiet-lookups
    match: { effect: crm.lookup }
    decision: allow
    limits: { quietHours: { from: "${hh(from)}", to: "${hh(to)}", timezone: UTC, decision: deny } }
`;
      const during = await k.api("POST", "/api/policy/simulate", { files: { "q.yaml": quiet(hour, hour + 2) } });
      assert.equal(during.status, 200, JSON.stringify(during.body));
      assert.equal(during.body.summary.transitions.allowed_to_denied, 40, "every lookup fell in the quiet window");
      const lookup = during.body.requests.find((r: { effect: string }) => r.effect === "crm.lookup");
      assert.match(lookup.after.limit, /^quietHours /);
      const outside = await k.api("POST", "/api/policy/simulate", {
        files: { "q.yaml": quiet(hour + 3, hour + 5) },
      });
      assert.equal(outside.body.summary.changed, 0, "no lookup fell in a window hours away");
    });

    await t.step("`changedOnly` lists only the requests whose decision moves", async () => {
      const sim = await k.api("POST", "/api/policy/simulate", { files: { "c.yml": CANDIDATE }, changedOnly: true });
      assert.equal(sim.body.requests.length, 60);
      assert.ok(sim.body.requests.every((r: { transition: string }) => r.transition !== "unchanged"));
      assert.equal(sim.body.summary.total, 120);
    });

    await t.step(
      "a candidate over several files is loaded like the policy folder: in name order, one set",
      async () => {
        const sim = await k.api("POST", "/api/policy/simulate", {
          files: {
            "20-gates.yaml": "rules:\n  - { id: gate-all-crm, match: { effect: 'crm.*' }, decision: approve }\n",
            "10-base.yaml": "default: deny\nrules:\n  - { id: allow-reads, match: { class: read }, decision: allow }\n",
          },
        });
        assert.equal(sim.status, 200, JSON.stringify(sim.body));
        assert.deepEqual(sim.body.files, ["10-base.yaml", "20-gates.yaml"]);
        // lookups: allowed → gated (approve beats allow); updates: allowed → gated; deletes: denied → gated;
        // balance reads stay allowed; payments: gated → denied (financial, no rule).
        assert.deepEqual(sim.body.summary.transitions, {
          allowed_to_gated: 60,
          allowed_to_denied: 0,
          gated_to_allowed: 0,
          gated_to_denied: 10,
          denied_to_allowed: 0,
          denied_to_gated: 20,
        });
        assert.equal(sim.body.summary.unchanged, 30);
      },
    );

    await t.step("a candidate that does not parse is a 400 PolicyFileError naming the file and line", async () => {
      const bad = await k.api("POST", "/api/policy/simulate", {
        files: { "ok.yaml": CANDIDATE, "broken.yaml": "rules:\n  - id: x\n    decision: sometimes\n" },
      });
      assert.equal(bad.status, 400);
      assert.equal(bad.body.error.tag, "PolicyFileError");
      assert.equal(
        bad.body.error.message,
        'Policy file "broken.yaml" line 3: rule "x": "decision" must be one of allow, approve, deny',
      );
      assert.deepEqual(bad.body.error.details, { file: "broken.yaml", line: 3 });
      const dup = await k.api("POST", "/api/policy/simulate", {
        files: { "a.yaml": CANDIDATE, "b.yaml": "rules:\n  - { id: no-payments, decision: allow }\n" },
      });
      assert.equal(dup.status, 400);
      assert.match(
        dup.body.error.message,
        /^Policy file "b\.yaml" line 2: rule id "no-payments" is already used at a\.yaml:/,
      );
    });

    await t.step("bad candidate bodies are refused with 400 and say what is wrong", async () => {
      const cases: Array<[unknown, RegExp]> = [
        [{}, /Field "files" must map policy file names/],
        [{ files: [] }, /Field "files" must map/],
        [{ files: {} }, /needs at least one file/],
        [{ files: { "../escape.yaml": "rules: []" } }, /"\.\.\/escape\.yaml" must be a plain file name/],
        [{ files: { "notes.txt": "rules: []" } }, /must be a plain file name ending in \.yaml or \.yml/],
        [{ files: { "/etc/keel.yaml": "rules: []" } }, /"\/etc\/keel\.yaml" must be a plain file name/],
        [{ files: { "sub/dir.yaml": "rules: []" } }, /"sub\/dir\.yaml" must be a plain file name/],
        [{ files: { ".hidden.yaml": "rules: []" } }, /"\.hidden\.yaml" must be a plain file name/],
        [{ files: { "a.yaml": 42 } }, /Policy file "a\.yaml" must be given as text/],
        [{ files: { "a.yaml": "x".repeat(1024 * 1024 + 1) } }, /at most 1048576 bytes/],
        [{ files: { "a.yaml": "rules: []" }, changedOnly: "yes" }, /"changedOnly" must be true or false/],
      ];
      for (const [body, message] of cases) {
        const r = await k.api("POST", "/api/policy/simulate", body);
        assert.equal(r.status, 400, JSON.stringify(body).slice(0, 80));
        assert.equal(r.body.error.tag, "InvalidInputError");
        assert.match(r.body.error.message, message);
      }
    });
  });
});

Deno.test("`POST /api/policy/explain` lists every matching rule and the winner: deny beats approve", async () => {
  await withKeel(async (k) => {
    await installToolingFixtures(k);
    const r = await k.api("POST", "/api/policy/explain", {
      effect: "bank.pay",
      args: { amount: 120, to: "acme" },
      agent: "pt_ops",
      workflow: "daily",
    });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const file = `${k.policiesDir}/history.yaml`;
    const { context, ...request } = r.body.request;
    assert.deepEqual(request, {
      effect: "bank.pay",
      effectClass: "financial",
      plugin: "pt_bank",
      agent: "pt_ops",
      workflow: "daily",
      args: { amount: 120, to: "acme" },
    });
    assert.equal(typeof context.now, "number", "the request gets the Gateway's context: the time now");
    assert.equal(typeof context.hour, "number");
    assert.deepEqual(r.body.installed, { plugin: "pt_bank", class: "financial" });
    assert.deepEqual(r.body.matches, [
      {
        id: "gate-payments",
        decision: "approve",
        file,
        line: 3,
        description: "Payments wait for the operator",
        decides: false,
      },
      {
        id: "deny-pay-in-daily",
        decision: "deny",
        file,
        line: 11,
        description: "The daily round never pays anyone",
        decides: true,
      },
    ]);
    assert.equal(r.body.decision.decision, "deny");
    assert.equal(r.body.decision.rule, "deny-pay-in-daily");
    assert.equal(r.body.decision.ruleSource, `${file}:11`);
    assert.equal(r.body.fallback.rule, "default-deny-financial");
    assert.deepEqual(r.body.notes, []);

    // Outside the daily workflow only the gate matches.
    const billing = await k.api("POST", "/api/policy/explain", {
      effect: "bank.pay",
      args: { amount: 1, to: "acme" },
      agent: "pt_ops",
      workflow: "billing",
    });
    assert.deepEqual(billing.body.matches.map((m: { id: string }) => m.id), ["gate-payments"]);
    assert.equal(billing.body.decision.decision, "approve");
    assert.equal(billing.body.decision.approval.expiresInMs, 72 * 3600_000);

    // The args decide whether a `when:` condition matches.
    const big = await k.api("POST", "/api/policy/explain", {
      effect: "bank.pay",
      args: { amount: 5000, to: "acme" },
      agent: "pt_ops",
      workflow: "billing",
    });
    assert.deepEqual(big.body.matches.map((m: { id: string; decides: boolean }) => [m.id, m.decides]), [
      ["gate-payments", false],
      ["deny-big-payments", true],
    ]);
    assert.equal(big.body.decision.decision, "deny");
  });
});

Deno.test("`POST /api/policy/explain` lists the rate limits the request would be counted against", async () => {
  await withKeel(async (k) => {
    await installToolingFixtures(k);
    await makeHistory(k, 1, 0); // 10 lookups counted
    const r = await k.api("POST", "/api/policy/explain", {
      effect: "crm.lookup",
      args: { id: "c1" },
      workflow: "daily",
    });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.decision.rule, "count-lookups");
    assert.equal(r.body.limits.length, 1);
    const [limit] = r.body.limits;
    assert.equal(limit.name, "rate 100000/1h");
    assert.equal(limit.rule, "count-lookups");
    assert.equal(limit.key, "global");
    // 10 unless the lookups straddled a clock hour (the window is fixed).
    assert.ok(limit.used >= 0 && limit.used <= 10, String(limit.used));
  });
});

Deno.test("`POST /api/policy/explain` with no matching rule shows the default deny for irreversible effects", async () => {
  await withKeel(async (k) => {
    await installToolingFixtures(k);
    const r = await k.api("POST", "/api/policy/explain", {
      effect: "crm.delete",
      args: { id: "c1" },
      agent: "pt_ops",
      workflow: "daily",
    });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual(r.body.matches, []);
    assert.equal(r.body.decision.decision, "deny");
    assert.equal(r.body.decision.rule, "default-deny-irreversible");
    assert.equal(r.body.decision.reason, "no rule allows this irreversible effect");
    assert.deepEqual(r.body.fallback, {
      rule: "default-deny-irreversible",
      decision: "deny",
      reason: "no rule allows this irreversible effect",
    });

    // A read effect with no matching rule gets the set's default.
    const read = await k.api("POST", "/api/policy/explain", { effect: "bank.balance", args: { account: "ops" } });
    assert.equal(read.body.decision.rule, "default");
    assert.equal(read.body.decision.decision, "allow");
    assert.deepEqual(read.body.notes, ["No workflow given: 1 rule(s) that match on workflow cannot match"]);
  });
});

Deno.test("`POST /api/policy/explain` says when the Gateway would refuse first, and refuses bad bodies", async () => {
  await withKeel(async (k) => {
    await installToolingFixtures(k);
    const invalid = await k.api("POST", "/api/policy/explain", {
      effect: "bank.pay",
      args: { amount: -5 },
      agent: "pt_crm",
      workflow: "billing",
    });
    assert.equal(invalid.status, 200);
    assert.equal(invalid.body.notes.length, 2, JSON.stringify(invalid.body.notes));
    assert.match(invalid.body.notes[0], /^The Gateway would refuse these args before the policy: /);
    assert.match(invalid.body.notes[1], /Agent "pt_crm" does not list "bank\.pay" in its manifest's "uses"/);

    const unknown = await k.api("POST", "/api/policy/explain", { effect: "fax.send", args: {} });
    assert.equal(unknown.status, 404);
    assert.match(unknown.body.error.message, /No installed connector provides effect "fax\.send": give "class"/);
    const hypothetical = await k.api("POST", "/api/policy/explain", {
      effect: "fax.send",
      class: "write",
      plugin: "fax",
      workflow: "daily",
    });
    assert.equal(hypothetical.status, 200);
    assert.equal(hypothetical.body.decision.rule, "default");
    assert.match(hypothetical.body.notes[0], /No installed connector provides effect "fax\.send"/);

    // Args too deep to inspect: the Gateway refuses them before any rule (fail-closed), and explain says so.
    let nested: unknown = "bottom";
    for (let i = 0; i < 70; i++) nested = { n: nested };
    const deep = await k.api("POST", "/api/policy/explain", { effect: "crm.lookup", args: { nested } });
    assert.equal(deep.status, 200, JSON.stringify(deep.body));
    assert.ok(
      deep.body.notes.some((n: string) => /nest deeper than 64 levels \(a deny with rule fail-closed\)/.test(n)),
      JSON.stringify(deep.body.notes),
    );

    const cases: Array<[unknown, RegExp]> = [
      [{}, /Field "effect" must be an effect name/],
      [{ effect: 42 }, /Field "effect" must be an effect name/],
      [
        { effect: "crm.lookup", class: "dangerous" },
        /Field "class" must be one of read, write, irreversible, financial/,
      ],
      [{ effect: "crm.lookup", agent: 7 }, /Field "agent" must be a non-empty string/],
      [{ effect: "crm.lookup", context: [1] }, /Field "context" must be a JSON object/],
    ];
    for (const [body, message] of cases) {
      const r = await k.api("POST", "/api/policy/explain", body);
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.match(r.body.error.message, message);
    }
  });
});

const GATED = `rules:
  - id: gate-charges
    match: { effect: ledger.charge }
    decision: approve
    approval: { approver: cfo, expires: 1h }
  - id: allow-rest
    match: { effect: "ledger.*" }
    decision: allow
`;

Deno.test("`POST /api/policy/simulate` of the files in force changes nothing after an approver's denial or a fail-closed refusal", async () => {
  await withLedgerKeel({ policies: { "p.yaml": GATED } }, async (k) => {
    const gated = await k.start("charge", { amount: 5 }, 30);
    assert.equal(gated.status, "waiting_approval");
    const denied = await k.api("POST", `/api/approvals/${gated.waitingFor.approvalId}/deny`, { note: "no" });
    assert.equal(denied.status, 200);
    assert.equal((await k.run(gated.runId)).status, "failed");
    // Args nested past what the Gateway inspects: refused before any rule, and not kept in the log.
    const deep = await k.run((await k.start("deep", { depth: 70 })).runId);
    assert.equal(deep.error.details.rule, "fail-closed");
    const sim = await k.api("POST", "/api/policy/simulate", { files: { "p.yaml": GATED } });
    assert.equal(sim.status, 200, JSON.stringify(sim.body));
    assert.deepEqual(
      sim.body.requests.map((r: any) =>
        `${r.before.decision}/${r.before.rule} -> ${r.after.decision}: ${r.transition}`
      ),
      [
        "approve/gate-charges -> approve: unchanged",
        "deny/fail-closed -> deny: unchanged",
      ],
      "the denied charge is one request, though the Gateway checked it again when its run resumed",
    );
    assert.equal(sim.body.summary.total, 2);
    assert.equal(sim.body.summary.changed, 0);
    assert.equal(sim.body.summary.failedClosedBefore, 1);
    // The log still says the approver refused the request, at its second check.
    const log = await k.keel.runtime.runPromise(Journal.use((j) => j.listDecisions({})));
    assert.deepEqual(log.map((d) => d.approval?.status ?? "-"), ["-", "denied", "-"]);
  });
});

Deno.test("`POST /api/policy/simulate` counts a gated, approved and re-checked request once", async () => {
  await withLedgerKeel({ policies: { "p.yaml": GATED } }, async (k) => {
    const runs: string[] = [];
    for (const amount of [5, 7]) {
      const gated = await k.start("charge", { amount }, 30);
      assert.equal(gated.status, "waiting_approval");
      assert.equal((await k.api("POST", `/api/approvals/${gated.waitingFor.approvalId}/approve`, {})).status, 200);
      assert.equal((await k.run(gated.runId)).status, "succeeded");
      runs.push(`${gated.runId}#${(await k.effectStep(gated.runId)).seq}`);
    }
    // Each charge was decided twice: when asked, and when its run resumed with the approval.
    const log = await k.keel.runtime.runPromise(Journal.use((j) => j.listDecisions({})));
    assert.equal(log.length, 4);
    const candidate = GATED.replace(
      "decision: approve\n    approval: { approver: cfo, expires: 1h }",
      "decision: deny",
    );
    const sim = await k.api("POST", "/api/policy/simulate", { files: { "p.yaml": candidate } });
    assert.equal(sim.status, 200, JSON.stringify(sim.body));
    assert.equal(sim.body.summary.total, 2);
    assert.equal(sim.body.summary.changed, 2);
    assert.equal(sim.body.summary.transitions.gated_to_denied, 2);
    assert.deepEqual(sim.body.requests.map((r: any) => `${r.runId}#${r.seq}`), runs);
  });
});

Deno.test("simulatePolicy() replays each past request once: by run, step, effect and args digest, with its first decision", async () => {
  const candidate = await Effect.runPromise(policySetFromFiles({ "p.yaml": GATED }));
  const past = (over: Partial<DecisionRecord>): DecisionRecord => ({
    at: "2025-01-01T00:00:00.000Z",
    runId: "run_a",
    seq: 0,
    effect: "ledger.charge",
    effectClass: "financial",
    plugin: "ledger",
    agent: "ledger-agent",
    workflow: "charge",
    args: { amount: 5 },
    decision: "approve",
    rule: "gate-charges",
    policyHash: "old",
    ...over,
  });
  const result = await Effect.runPromise(simulatePolicy(candidate, [
    past({}),
    past({ at: "2025-01-01T00:05:00.000Z", policyHash: "new" }), // re-checked on resume, under a new policy
    past({ at: "2025-01-01T00:06:00.000Z", decision: "deny", limit: "rate 1/1h" }), // a counter refused it then
    past({ args: { amount: 6 } }), // other args at the same step: another request
    past({ seq: 1 }),
    past({ runId: "run_b", effect: "ledger.read", effectClass: "read", decision: "allow", rule: "allow-rest" }),
  ]));
  assert.equal(result.summary.total, 4);
  assert.equal(result.summary.unchanged, 4);
  assert.equal(result.summary.limitedBefore, 1, "a counter's refusal at a later check still counts");
  assert.deepEqual(result.requests.map((r) => `${r.runId}#${r.seq} ${r.at} ${r.before.decision}`), [
    "run_a#0 2025-01-01T00:00:00.000Z approve",
    "run_a#0 2025-01-01T00:00:00.000Z approve",
    "run_a#1 2025-01-01T00:00:00.000Z approve",
    "run_b#0 2025-01-01T00:00:00.000Z allow",
  ]);
  assert.notEqual(result.requests[0].argsDigest, result.requests[1].argsDigest);
  assert.deepEqual(result.pastPolicies, ["old", "new"]);
});
