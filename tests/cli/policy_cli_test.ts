/**
 * @module
 * `keel policy check|explain|simulate` as an operator runs them: `deno run
 * -A main.ts policy …` in a child process, against a real Keel in this
 * process (KEEL_URL + KEEL_TOKEN) whose decision log was filled by real
 * workflows through the Gateway. Help for the group and each subcommand,
 * exit codes (0 clean, 1 with findings), file:line in every finding, and
 * one-line errors for bad input (missing file, bad JSON, unknown flags).
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, TEST_TOKEN, type TestKeel } from "../_support/keel.ts";
import { HISTORY_POLICY, installToolingFixtures, makeHistory } from "../fixtures/policy_tooling/history.ts";
import { cleanError, cliRunner } from "../_support/cli.ts";

const { scratch, keel, keelAll } = await cliRunner("keel-policy-cli-");

/** A folder of policy files under the scratch dir. */
const folder = (name: string, files: Record<string, string>): string => {
  const dir = `${scratch}/${name}`;
  Deno.mkdirSync(dir, { recursive: true });
  for (const [file, text] of Object.entries(files)) Deno.writeTextFileSync(`${dir}/${file}`, text);
  return dir;
};

/** An address where nothing listens. */
const deadUrl = () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return `http://127.0.0.1:${port}`;
};

Deno.test("`policy --help` and `--help` on each subcommand print the usage of check, explain and simulate", async () => {
  const runs = [["policy", "--help"], ["policy", "check", "--help"], ["policy", "explain", "-h"], [
    "policy",
    "simulate",
    "--help",
  ]];
  const results = await keelAll(runs.map((args) => [args]));
  for (const [i, r] of results.entries()) {
    assert.equal(r.code, 0, `${runs[i].join(" ")}: ${r.stderr}`);
    assert.equal(r.stderr, "");
    assert.match(r.stdout, /^Usage:/);
    for (const sub of ["check", "explain", "simulate"]) {
      assert.match(r.stdout, new RegExp(`deno task keel policy ${sub}\\b`), sub);
    }
    assert.match(r.stdout, /--args JSON/);
  }
  const overview = await keel(["--help"]);
  for (const sub of ["check", "explain", "simulate"]) {
    assert.match(overview.stdout, new RegExp(`^  policy ${sub}\\b`, "m"));
  }
});

Deno.test("`policy` with a bad subcommand, flag or argument exits 1 with one clear line", async () => {
  const [sub, none, flag, extra, noEffect, noFile] = await keelAll([
    [["policy", "lint"]],
    [["policy"]],
    [["policy", "check", "--args", "{}"]],
    [["policy", "simulate", "a.yaml", "b.yaml"]],
    [["policy", "explain"]],
    [["policy", "simulate"]],
  ]);
  cleanError(sub, 'error: Unknown policy command "lint": use check, explain or simulate');
  cleanError(none, 'error: Unknown policy command "": use check, explain or simulate');
  cleanError(flag, "error: policy check does not take --args");
  cleanError(extra, 'error: policy simulate takes one argument: got also "b.yaml"');
  cleanError(noEffect, "error: policy explain needs an EFFECT name, e.g. email.send");
  cleanError(noFile, "error: policy simulate needs a candidate policy FILE or DIR");
});

Deno.test("`policy check` exits 0 on the shipped policies and says the installed-plugin check was skipped without Keel", async () => {
  const url = deadUrl();
  const [explicit, fromEnv] = await keelAll([
    [["policy", "check", `${ROOT}/policies`], { KEEL_URL: url }],
    [["policy", "check"], { KEEL_URL: url, KEEL_POLICIES: `${ROOT}/policies` }],
  ]);
  for (const r of [explicit, fromEnv]) {
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.equal(r.stderr, "");
    assert.match(r.stdout, /^Checked 1 file with \d+ rules$/m);
    assert.match(
      r.stdout,
      new RegExp(
        `^Skipped the checks against installed plugins \\(unknown effect names\\): Keel is not running at ${url}`,
        "m",
      ),
    );
    assert.match(r.stdout, /^No findings$/m);
  }
});

Deno.test("`policy check` reports a parse error with file:line, and exits 1", async () => {
  const dir = folder("broken", {
    "a.yaml": "rules:\n  - id: fine\n    decision: allow\n",
    "b.yaml": "rules:\n  - id: bad\n    match:\n      klass: read\n    decision: deny\n",
  });
  const [r, missing, json] = await keelAll([
    [["policy", "check", dir], { KEEL_URL: deadUrl() }],
    [["policy", "check", `${scratch}/nowhere`]],
    [["policy", "check", dir, "--json"], { KEEL_URL: deadUrl() }],
  ]);
  assert.equal(r.code, 1);
  assert.equal(
    r.stdout.split("\n")[0],
    `${dir}/b.yaml:4: error [parse] rule "bad": unknown match key "klass" (expected effect, plugin, agent, workflow, class)`,
  );
  cleanError(r, "error: policy check found 1 error and 0 warnings");
  cleanError(missing, `error: Cannot read policy folder "${scratch}/nowhere": no such file or folder`);
  assert.equal(json.code, 1);
  const parsed = JSON.parse(json.stdout);
  assert.deepEqual(parsed.findings.map((f: { file: string; line: number }) => `${f.file}:${f.line}`), [
    `${dir}/b.yaml:4`,
  ]);
  assert.equal(parsed.checkedAgainstInstalled, false);
  assert.match(parsed.installedCheckSkipped, /Keel is not running/);
});

Deno.test("the policy commands against a running Keel with a real decision log", async (t) => {
  const k: TestKeel = await startTestKeel({ policies: { "history.yaml": HISTORY_POLICY } });
  const env = { KEEL_URL: k.url, KEEL_TOKEN: TEST_TOKEN };
  try {
    await installToolingFixtures(k);
    await makeHistory(k, 2, 3); // 2 × 25 + 3 × 2 = 56 past requests

    await t.step(
      "`policy check` finds a shadowed rule and an unknown effect name against the installed plugins",
      async () => {
        const dir = folder("lint", {
          "10-base.yaml": `rules:
  - id: no-money
    match: { class: financial }
    decision: deny
  - id: allow-pay
    match: { effect: bank.pay }
    decision: allow
  - id: gate-crm
    match: { effect: "crm.*" }
    decision: approve
`,
          "20-typos.yaml": `rules:
  - id: allow-balance
    match: { effect: bnak.balance }
    decision: allow
`,
        });
        const r = await keel(["policy", "check", dir], env);
        assert.deepEqual(r.stdout.trim().split("\n"), [
          `${dir}/10-base.yaml:5: warning [shadowed] rule "allow-pay" never decides: rule "no-money" (${dir}/10-base.yaml:2) matches every installed effect this rule matches (bank.pay), and it decides deny, which beats allow`,
          `${dir}/20-typos.yaml:2: warning [unknown-effect] rule "allow-balance": effect "bnak.balance" matches no effect an installed plugin declares (did you mean "bank.balance"?)`,
          "Checked 2 files with 4 rules against 5 effects from 3 installed plugins",
        ]);
        cleanError(r, "error: policy check found 0 errors and 2 warnings");

        const clean = await keel(["policy", "check", `${k.policiesDir}/history.yaml`], env);
        assert.equal(clean.code, 0, clean.stdout + clean.stderr);
        assert.match(clean.stdout, /against 5 effects from 3 installed plugins\nNo findings\n$/);
      },
    );

    await t.step("`policy explain` shows every matching rule, the winner and the fallback", async () => {
      const [deny, fallback] = await keelAll([
        [[
          "policy",
          "explain",
          "bank.pay",
          "--args",
          '{"amount":5,"to":"acme"}',
          "--agent",
          "pt_ops",
          "--workflow",
          "daily",
        ], env],
        [["policy", "explain", "crm.delete", "--args", '{"id":"c1"}', "--agent", "pt_ops", "--workflow", "daily"], env],
      ]);
      assert.equal(deny.code, 0, deny.stderr);
      const file = `${k.policiesDir}/history.yaml`;
      assert.match(deny.stdout, /^Effect bank\.pay \(financial, plugin pt_bank\), agent pt_ops, workflow daily$/m);
      assert.match(deny.stdout, /^Args: \{"amount":5,"to":"acme"\}$/m);
      assert.match(deny.stdout, /^Matching rules \(2\):$/m);
      assert.match(deny.stdout, new RegExp(`^  approve  gate-payments      ${file}:3$`, "m"));
      assert.match(deny.stdout, new RegExp(`^  deny     deny-pay-in-daily  ${file}:11  <- decides$`, "m"));
      assert.match(
        deny.stdout,
        new RegExp(
          `^Decision: deny by rule "deny-pay-in-daily" \\(${file}:11\\): The daily round never pays anyone$`,
          "m",
        ),
      );
      assert.match(deny.stdout, /^If no rule matched: deny \(default-deny-financial\)/m);

      assert.equal(fallback.code, 0, fallback.stderr);
      assert.match(fallback.stdout, /^Matching rules: none$/m);
      assert.match(
        fallback.stdout,
        /^Decision: deny by default-deny-irreversible: no rule allows this irreversible effect$/m,
      );

      const [limited, json] = await keelAll([
        [["policy", "explain", "crm.lookup", "--args", '{"id":"x"}', "--at", "2025-06-01T23:30:00Z"], env],
        [["policy", "explain", "crm.lookup", "--args", '{"id":"x"}', "--json", "--at", "2025-06-01T23:30:00Z"], env],
      ]);
      assert.equal(limited.code, 0, limited.stderr);
      assert.match(limited.stdout, /^At: 2025-06-01T23:30:00\.000Z \(/m);
      assert.match(
        limited.stdout,
        /^Limit: rate 100000\/1h \(rule count-lookups, counted per global\): \d+ used in this window$/m,
      );
      const parsed = JSON.parse(json.stdout);
      assert.equal(parsed.decision.rule, "count-lookups");
      assert.equal(parsed.request.context.now, Date.parse("2025-06-01T23:30:00Z"));
    });

    await t.step("`policy explain` refuses bad JSON, a bad class and an unknown effect with one line", async () => {
      const [json, cls, unknown, dead] = await keelAll([
        [["policy", "explain", "bank.pay", "--args", "{amount: 5}"], env],
        [["policy", "explain", "bank.pay", "--class", "huge"], env],
        [["policy", "explain", "fax.send"], env],
        [["policy", "explain", "bank.pay"], { KEEL_URL: deadUrl(), KEEL_TOKEN: "t" }],
      ]);
      cleanError(json, /^error: --args must be JSON: /);
      cleanError(
        await keel(["policy", "explain", "crm.lookup", "--at", "teatime"], env),
        'error: --at must be a date and time, e.g. 2025-06-01T23:30:00Z: got "teatime"',
      );
      cleanError(cls, 'error: --class must be one of read, write, irreversible, financial: got "huge"');
      cleanError(
        unknown,
        'error: NotFoundError: No installed connector provides effect "fax.send": give "class" (and "plugin") to explain it anyway',
      );
      cleanError(dead, /^error: Keel is not running at http:\/\/127\.0\.0\.1:\d+: start it with "deno task start"$/);
    });

    await t.step("`policy simulate FILE` prints the transition table and the changed requests", async () => {
      const dir = folder("candidate", {
        "candidate.yaml": `default: allow
rules:
  - id: gate-crm-updates
    match: { effect: crm.update }
    decision: approve
  - id: no-payments
    match: { class: financial }
    decision: deny
  - id: allow-deletes
    match: { effect: crm.delete }
    decision: allow
`,
      });
      const r = await keel(["policy", "simulate", `${dir}/candidate.yaml`], env);
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stdout.split("\n");
      assert.match(
        lines[0],
        /^Replayed 56 past effect requests \(decided under 1 policy set\) against candidate [0-9a-f]{12} \(1 file, 3 rules\)$/,
      );
      assert.deepEqual(lines.slice(2, 9), [
        "  unchanged              33",
        "  allowed → gated        10",
        "  allowed → denied        0",
        "  gated → allowed         0",
        "  gated → denied          3",
        "  denied → allowed       10",
        "  denied → gated          0",
      ]);
      assert.equal(lines[10], "Changed requests (23):");
      const rows = lines.slice(11).filter((l) => l.trim());
      assert.equal(rows.length, 23);
      assert.ok(
        rows.every((row) =>
          /^ {2}(allowed|gated|denied) → (allowed|gated|denied) +\S+ +run_\w+#\d+ +args [0-9a-f]{12} +\S+ -> \S+/.test(
            row,
          )
        ),
        rows.join("\n"),
      );
      assert.equal(
        rows.filter((row) =>
          /gated → denied +bank\.pay .*gate-payments -> no-payments \(candidate\.yaml:6\)$/.test(row)
        ).length,
        3,
      );

      // A folder is the whole candidate set; --json is the API's answer.
      const json = await keel(["policy", "simulate", dir, "--json"], env);
      assert.equal(json.code, 0, json.stderr);
      const parsed = JSON.parse(json.stdout);
      assert.deepEqual(parsed.summary.transitions, {
        allowed_to_gated: 10,
        allowed_to_denied: 0,
        gated_to_allowed: 0,
        gated_to_denied: 3,
        denied_to_allowed: 10,
        denied_to_gated: 0,
      });
      assert.equal(parsed.requests.length, 23, "only the changed requests unless --all");
      const all = JSON.parse((await keel(["policy", "simulate", dir, "--json", "--all"], env)).stdout);
      assert.equal(all.requests.length, 56);
    });

    await t.step(
      "`policy simulate` refuses a missing file, a non-YAML file and a file that does not parse",
      async () => {
        const dir = folder("bad-candidates", {
          "broken.yaml": "rules:\n  - id: x\n    decision: allow\n    approval: { expires: 3h }\n",
          "notes.txt": "rules: []\n",
        });
        const empty = folder("empty-candidates", {});
        const [missing, txt, broken, none] = await keelAll([
          [["policy", "simulate", `${scratch}/nope.yaml`], env],
          [["policy", "simulate", `${dir}/notes.txt`], env],
          [["policy", "simulate", `${dir}/broken.yaml`], env],
          [["policy", "simulate", empty], env],
        ]);
        cleanError(missing, `error: Cannot read candidate policy "${scratch}/nope.yaml": no such file or folder`);
        cleanError(txt, `error: Policy file "${dir}/notes.txt" must end in .yaml or .yml`);
        cleanError(
          broken,
          'error: PolicyFileError: Policy file "broken.yaml" line 4: rule "x": "approval" only goes with decision approve',
        );
        cleanError(none, `error: No policy files (*.yaml, *.yml) in "${empty}"`);
      },
    );
  } finally {
    await k.close();
  }
});
