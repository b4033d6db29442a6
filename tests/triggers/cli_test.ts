/**
 * @module
 * `keel hooks` and `keel schedules` as an operator runs them, against a real
 * Keel: create prints the secret once, list never shows it, delete removes
 * the hook; schedules lists the next fire time; every command answers
 * `--help`.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, TEST_TOKEN } from "../_support/keel.ts";
import { cleanError, cliRunner } from "../_support/cli.ts";

const cli = await cliRunner("keel-triggers-cli-");

Deno.test("keel hooks create prints the secret once; list hides it; delete removes the hook; schedules lists next fires", async () => {
  const k = await startTestKeel();
  const env = { KEEL_URL: k.url, KEEL_TOKEN: TEST_TOKEN };
  try {
    for (const name of ["tr_hooks", "tr_daily"]) {
      assert.equal(
        (await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/triggers/${name}`, grant: {} }))
          .status,
        201,
      );
    }
    const created = await cli.keel(["hooks", "create", "tr_order", "--name", "shop"], env);
    assert.equal(created.code, 0, created.stderr);
    const id = /Created (hk_[0-9a-f]{24})/.exec(created.stdout)?.[1];
    const secret = /Secret: ([0-9a-f]{64})/.exec(created.stdout)?.[1];
    assert.ok(id && secret, created.stdout);
    assert.match(created.stdout, new RegExp(`URL: +${k.url}/hooks/${id}`));

    const [listed, schedules] = await cli.keelAll([[["hooks", "list"], env], [["schedules"], env]]);
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, new RegExp(`${id}  tr_order  "shop"  /hooks/${id}`));
    assert.ok(!listed.stdout.includes(secret), "list never prints the secret");
    assert.equal(schedules.code, 0, schedules.stderr);
    assert.match(
      schedules.stdout,
      /tr_daily {2}"0 3 \* \* \*" UTC {2}next \d{4}-\d\d-\d\dT03:00:00\.000Z {2}\(tr_daily 1\.0\.0\)/,
    );

    assert.match(created.stdout, /Signing: timestamped/);
    assert.match(listed.stdout, new RegExp(`${id}  tr_order  "shop"  /hooks/${id}  timestamped  created `));
    const bodyOnly = await cli.keel(["hooks", "create", "tr_order", "--body-only"], env);
    assert.match(bodyOnly.stdout, /Signing: body \(no timestamp needed; replays possible\)/);

    // The example `hooks --help` gives, run as printed with bash, openssl and curl, delivers; sent again, it starts
    // nothing new; its delivery id changed after signing (a replay dressed as a new delivery) does not verify; the old
    // body-only form is refused by this hook.
    const help = (await cli.keel(["hooks", "--help"])).stdout;
    const from = help.indexOf("\n", help.indexOf("For example"));
    const example = help.slice(from, help.indexOf("\n\n", from))
      .split("\n").map((l) => l.trim()).filter(Boolean).join("\n");
    assert.match(example, /^ts=\$\(date \+%s\)\nsig=.*\ncurl .*"\$URL"$/, example);
    const send = async (script: string) => {
      const out = await new Deno.Command("bash", {
        args: ["-c", script + " -s"],
        env: {
          BODY: JSON.stringify({ count: 2, note: "from curl" }),
          SECRET: secret,
          URL: `${k.url}/hooks/${id}`,
          ID: "evt-77",
        },
      }).output();
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      return JSON.parse(new TextDecoder().decode(out.stdout));
    };
    const sent = await send(example);
    assert.equal(sent.duplicate, false, JSON.stringify(sent));
    assert.equal(sent.runId, `hook_${id}_evt-77`);
    const run = await k.api("GET", `/api/runs/${sent.runId}?wait=30`);
    assert.deepEqual(run.body.input, { count: 2, note: "from curl" });
    // The sender's retry (signed anew, same delivery id) finds its run.
    assert.deepEqual(await send(example), { runId: sent.runId, status: "succeeded", duplicate: true });
    const forged = await send(example.replace('-H "X-Keel-Delivery: $ID"', '-H "X-Keel-Delivery: evt-78"'));
    assert.equal(forged.error?.tag, "UnauthorizedError", JSON.stringify(forged));
    const old = await send(
      `sig=$(printf '%s' "$BODY" | openssl dgst -sha256 -hmac "$SECRET" -hex | sed 's/.* //')
curl -H "X-Keel-Signature: sha256=$sig" -d "$BODY" "$URL"`,
    );
    assert.equal(old.error.tag, "UnauthorizedError");
    assert.match(old.error.message, /needs header "X-Keel-Timestamp/);

    const deleted = await cli.keel(["hooks", "delete", id], env);
    assert.equal(deleted.code, 0, deleted.stderr);
    assert.match(deleted.stdout, new RegExp(`Deleted ${id}`));
    cleanError(await cli.keel(["hooks", "delete", id], env), `error: NotFoundError: No webhook with id "${id}"`);
    cleanError(await cli.keel(["hooks", "create", "nope"], env), /NotFoundError: Unknown workflow "nope"/);
    cleanError(await cli.keel(["hooks", "frobnicate"], env), /Usage: hooks create/);
  } finally {
    await k.close();
  }
});

Deno.test("keel hooks, schedules and replay answer --help", async () => {
  const results = await cli.keelAll([[["hooks", "--help"]], [["schedules", "--help"]], [["replay", "--help"]], [[
    "--help",
  ]]]);
  for (const r of results) assert.equal(r.code, 0, r.stderr);
  assert.match(results[0].stdout, /X-Keel-Signature: sha256=/);
  assert.match(results[0].stdout, /X-Keel-Timestamp: /);
  assert.match(results[1].stdout, /most recent missed slot/);
  assert.match(results[2].stdout, /Exits 0 when the code matches/);
  for (const command of ["hooks", "schedules", "replay"]) {
    assert.match(results[3].stdout, new RegExp(`^  ${command} `, "m"));
  }
});

Deno.test("keel run --delay queues the run for later and --priority is recorded; bad values are refused by the API", async () => {
  const k = await startTestKeel();
  const env = { KEEL_URL: k.url, KEEL_TOKEN: TEST_TOKEN };
  try {
    const res = await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/engine`, grant: {} });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    const started = await cli.keel(["run", "spin", "--input", '{"ms":1}', "--delay", "60", "--priority", "8"], env);
    assert.equal(started.code, 0, started.stderr);
    const runId = /Started (run_[0-9a-f]+) \(queued\)/.exec(started.stdout)?.[1];
    assert.ok(runId, started.stdout);
    const run = (await k.api("GET", `/api/runs/${runId}`)).body;
    assert.equal(run.status, "queued");
    assert.equal(run.priority, 8);
    assert.ok(run.notBefore > Date.now() + 50_000, "starts about a minute from now");
    const bad = await cli.keel(["run", "spin", "--input", "{}", "--priority", "12"], env);
    assert.equal(bad.code, 1);
    cleanError(bad, /priority/i);
  } finally {
    await k.close();
  }
});
