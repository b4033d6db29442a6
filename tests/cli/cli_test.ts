/**
 * @module
 * The CLI as an operator runs it: `deno run -A main.ts …` in a child process.
 * Help for every command, clear one-line errors (no stack traces) for unknown
 * commands, bad JSON and an unreachable Keel, and `plugin install`, which
 * shows the requested permissions in plain words and installs only when told
 * to (`--yes`, or a "y" at a terminal).
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, TEST_TOKEN, type TestKeel } from "../_support/keel.ts";
import { cleanError, cliRunner } from "../_support/cli.ts";
import { parseHttpTimeout, parseMaxConnections, parsePort } from "../../core/config/mod.ts";

const { scratch, keel, keelAll } = await cliRunner("keel-cli-");

const COMMANDS = ["serve", "plugin", "run", "runs", "approvals", "approve", "deny", "audit"];

Deno.test("`main.ts --help`, `-h` and no command print the overview listing every command and exit 0", async () => {
  const results = await keelAll([[["--help"]], [["-h"]], [[]]]);
  for (const r of results) {
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, "");
    assert.match(r.stdout, /^Keel — /);
    assert.match(r.stdout, /Usage: deno task keel <command>/);
    for (const command of COMMANDS) assert.match(r.stdout, new RegExp(`^  ${command}\\b`, "m"), command);
  }
  assert.equal(results[0].stdout, results[1].stdout);
  assert.equal(results[0].stdout, results[2].stdout);
});

Deno.test("`--help` on every command prints that command's usage and exits 0 without touching Keel", async () => {
  const results = await keelAll(COMMANDS.map((c) => [[c, "--help"]]));
  for (const [i, r] of results.entries()) {
    const command = COMMANDS[i];
    assert.equal(r.code, 0, `${command}: ${r.stderr}`);
    assert.equal(r.stderr, "", command);
    assert.match(r.stdout, /Usage:/, command);
    assert.match(r.stdout, new RegExp(`deno task keel ${command}\\b`), command);
    assert.doesNotMatch(r.stdout, /^Keel — /, `${command} has its own help`);
  }
  // `serve --help` explains, and does not start a server or create the data dir.
  assert.match(results[0].stdout, /KEEL_DATA_DIR/);
  assert.throws(() => Deno.statSync(`${scratch}/data/keel.kv`));
});

Deno.test("an unknown command exits 1 with a clear message and no stack trace", async () => {
  const [unknown, flag, sub] = await keelAll([
    [["frobnicate"]],
    [["audit", "--frobnicate"]],
    [["plugin", "frobnicate", "smtp"]],
  ]);
  cleanError(unknown, 'error: Unknown command "frobnicate". Run "deno task keel --help"');
  cleanError(flag, /^error: Unknown option '--frobnicate'/);
  cleanError(sub, 'error: Unknown plugin command "frobnicate": use install, upgrade, grant, remove, list or new');
});

Deno.test("`serve` with a setting it cannot use exits 1 naming the variable and its range, touching nothing", async () => {
  const cases: Array<[Record<string, string>, string]> = [
    [{ KEEL_RPC_TIMEOUT_MS: "abc" }, 'KEEL_RPC_TIMEOUT_MS must be an integer between 100 and 3600000: got "abc"'],
    [{ KEEL_RPC_TIMEOUT_MS: "-1" }, 'KEEL_RPC_TIMEOUT_MS must be an integer between 100 and 3600000: got "-1"'],
    [{ KEEL_MAX_RUNS: "0" }, 'KEEL_MAX_RUNS must be an integer between 1 and 10000: got "0"'],
    [{ KEEL_MAX_QUEUED: "lots" }, 'KEEL_MAX_QUEUED must be an integer between 1 and 10000000: got "lots"'],
    [{ KEEL_PORT: "70000" }, 'KEEL_PORT must be an integer between 0 and 65535: got "70000"'],
    [{ KEEL_HTTP_TIMEOUT_MS: "30s" }, 'KEEL_HTTP_TIMEOUT_MS must be an integer between 100 and 3600000: got "30s"'],
    [{ KEEL_MAX_CONNECTIONS: "0" }, 'KEEL_MAX_CONNECTIONS must be an integer between 1 and 100000: got "0"'],
  ];
  const results = await keelAll(cases.map(([env]) => [["serve"], { ...env, KEEL_DATA_DIR: `${scratch}/untouched` }]));
  for (const [i, r] of results.entries()) cleanError(r, `error: ${cases[i][1]}`);
  assert.throws(() => Deno.statSync(`${scratch}/untouched`), Deno.errors.NotFound);
});

Deno.test("an integer setting is plain digits: hex, an exponent, a fraction or spaces are refused, not read as a number", () => {
  // `Number()` took "0x10" as 16, "1e3" as 1000, " 500 " as 500 and "500.0" as 500: a typo started Keel with a value
  // that was not the one written.
  const cases: Array<[() => number, string]> = [
    [() => parseMaxConnections("0x10"), 'KEEL_MAX_CONNECTIONS must be an integer between 1 and 100000: got "0x10"'],
    [() => parseHttpTimeout("1e3"), 'KEEL_HTTP_TIMEOUT_MS must be an integer between 100 and 3600000: got "1e3"'],
    [() => parseHttpTimeout(" 500 "), 'KEEL_HTTP_TIMEOUT_MS must be an integer between 100 and 3600000: got " 500 "'],
    [() => parseMaxConnections("500.0"), 'KEEL_MAX_CONNECTIONS must be an integer between 1 and 100000: got "500.0"'],
    [() => parsePort("+8787", 1), 'KEEL_PORT must be an integer between 0 and 65535: got "+8787"'],
  ];
  for (const [parse, message] of cases) assert.throws(parse, { message });
  assert.equal(parseMaxConnections("256"), 256);
  assert.equal(parseHttpTimeout(undefined), 30_000);
});

Deno.test('client commands exit 1 with "Keel is not running at …" when nothing listens there', async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const url = `http://127.0.0.1:${port}`;
  const commands = [
    ["plugin", "list"],
    ["run", "onboard_client", "--input", '{"name":"Ada","email":"ada@example.test"}'],
    ["runs", "show", "run_x"],
    ["approvals"],
    ["approve", "apr_x"],
    ["deny", "apr_x", "--note", "no"],
    ["audit"],
    ["audit", "--verify"],
  ];
  const results = await keelAll(commands.map((args) => [args, { KEEL_URL: url, KEEL_TOKEN: "t" }]));
  for (const [i, r] of results.entries()) {
    cleanError(r, `error: Keel is not running at ${url}: start it with "deno task start"`);
    assert.equal(r.stdout, "", commands[i].join(" "));
  }
  // Without KEEL_URL the address comes from KEEL_PORT.
  cleanError(await keel(["approvals"], { KEEL_PORT: String(port) }), new RegExp(`not running at ${url}:`));
});

Deno.test("a client command gives up on a Keel that takes the connection and never answers, saying so", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of listener) held.push(conn); // taken, never answered
  })().catch(() => {});
  try {
    const url = `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`;
    const [stuck, bad] = await keelAll([
      [["approvals"], { KEEL_URL: url, KEEL_TOKEN: "t", KEEL_CLIENT_TIMEOUT: "1" }],
      [["approvals"], { KEEL_URL: url, KEEL_TOKEN: "t", KEEL_CLIENT_TIMEOUT: "0" }],
    ]);
    cleanError(stuck, `error: Keel at ${url} did not answer within 1 s (KEEL_CLIENT_TIMEOUT)`);
    cleanError(bad, 'error: KEEL_CLIENT_TIMEOUT must be seconds from 1 to 86400: got "0"');
  } finally {
    listener.close();
    for (const conn of held) conn.close();
    await accepting;
  }
});

Deno.test("`serve` on a data dir that is a file, or a port it cannot listen on, says which setting; no token is kept", async () => {
  const file = `${scratch}/a-file`;
  await Deno.writeTextFile(file, "");
  const busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = String((busy.addr as Deno.NetAddr).port);
  const fresh = `${scratch}/fresh-data`;
  try {
    const [notDir, inUse] = await keelAll([
      [["serve"], { KEEL_DATA_DIR: file }],
      [["serve"], { KEEL_DATA_DIR: fresh, KEEL_PORT: port, KEEL_TOKEN: "" }],
    ]);
    cleanError(notDir, `error: KEEL_DATA_DIR "${file}" is not a folder`);
    cleanError(
      inUse,
      new RegExp(`^Keel cannot start: Cannot listen on 127\\.0\\.0\\.1:${port}: .*\\(set KEEL_PORT or KEEL_HOST\\)$`),
    );
    // The token that start made was never shown: it is not kept, so the next start makes one and shows it.
    assert.throws(() => Deno.statSync(`${fresh}/token`), Deno.errors.NotFound);
  } finally {
    busy.close();
  }
});

Deno.test("bad JSON in --input, --config or --grant is a clear error before anything is sent", async () => {
  const [input, config, grant] = await keelAll([
    [["run", "onboard_client", "--input", "notjson"]],
    [["plugin", "install", `${ROOT}/plugins/smtp`, "--config", "{host: x}"]],
    [["plugin", "install", `${ROOT}/agents/onboarding`, "--grant", "net=all", "--yes"]],
  ]);
  cleanError(input, /^error: --input must be JSON: /);
  cleanError(config, /^error: --config must be JSON: /);
  cleanError(grant, /^error: --grant must be JSON: /);
});

Deno.test("`run --wait` takes seconds or stands alone before the workflow name; a bad value is a clear error", async () => {
  const k = await startTestKeel();
  try {
    const inst = await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/triggers/tr_hooks`, grant: {} });
    assert.equal(inst.status, 201, JSON.stringify(inst.body));
    const env = { KEEL_URL: k.url, KEEL_TOKEN: TEST_TOKEN };
    for (const args of [["--wait", "tr_ping"], ["--wait", "20", "tr_ping"], ["tr_ping", "--wait"]]) {
      const r = await keel(["run", ...args, "--input", "{}"], env);
      assert.equal(r.code, 0, `${args.join(" ")}: ${r.stdout}${r.stderr}`);
      assert.match(r.stdout, /"status": "succeeded"/);
    }
    const [zero, words] = await keelAll([
      [["run", "tr_ping", "--wait", "0", "--input", "{}"], env],
      [["run", "tr_ping", "--wait", "soon", "--input", "{}"], env],
    ]);
    cleanError(zero, /^error: --wait takes seconds from 1 to 300: got "0"/);
    cleanError(words, 'error: --wait takes seconds from 1 to 300, or stands alone: got "soon"');
    // Bad --delay and --priority are named as the flags the operator typed, before anything is sent.
    const [delay, priority] = await keelAll([
      [["run", "tr_ping", "--delay", "abc", "--input", "{}"], env],
      [["run", "tr_ping", "--priority", "10", "--input", "{}"], env],
    ]);
    cleanError(delay, 'error: --delay takes seconds from 0 to 31536000: got "abc"');
    cleanError(priority, 'error: --priority takes an integer from 0 to 9: got "10"');

    // A run that fails fails the command: scripts check the exit code.
    for (const [path, config] of [["connector", { greeting: "Hi" }], ["agent", undefined]] as const) {
      const res = await k.api("POST", "/api/plugins", {
        path: `${ROOT}/tests/fixtures/sdk/${path}`,
        grant: {},
        config,
      });
      assert.equal(res.status, 201, JSON.stringify(res.body));
    }
    const failed = await keel(["run", "sdk_fail", "--wait", "--input", '{"how":"rejected","handle":false}'], env);
    assert.equal(failed.code, 1, failed.stdout + failed.stderr);
    assert.match(failed.stdout, /"status": "failed"/);
  } finally {
    await k.close();
  }
});

Deno.test("every command refuses arguments it does not take, and KEEL_URL may end in / but must be a URL", async () => {
  const k = await startTestKeel();
  try {
    const env = { KEEL_URL: k.url, KEEL_TOKEN: TEST_TOKEN };
    const cases: Array<[string[], string | RegExp]> = [
      [["approve", "a", "b"], 'approve takes one argument: got also "b"'],
      [["deny", "a", "b"], 'deny takes one argument: got also "b"'],
      [["cancel", "a", "b"], 'cancel takes one argument: got also "b"'],
      [["undo", "a", "b"], 'undo takes one argument: got also "b"'],
      [["replay", "a", "b"], 'replay takes one argument: got also "b"'],
      [["runs", "show", "a", "b"], 'runs show takes one argument: got also "b"'],
      [["approvals", "extra"], 'approvals takes no arguments: got also "extra"'],
      [["audit", "extra"], 'audit takes no arguments: got also "extra"'],
      [["schedules", "extra"], 'schedules takes no arguments: got also "extra"'],
      [["plugin", "list", "extra"], 'plugin list takes no arguments: got also "extra"'],
      [["plugin", "remove", "a", "b"], 'plugin remove takes one argument: got also "b"'],
      [["hooks", "list", "extra"], 'hooks list takes no arguments: got also "extra"'],
      // deny never performs the effect: a resolution there is a mix-up, not something to ignore.
      [["deny", "a", "--resolution", "retry"], /^error: Unknown option '--resolution'/],
      [["audit", "--verify", "--run", "r"], "audit --verify checks the whole chain: it takes no --run or --limit"],
      [["audit", "--anchor", `1:${"a".repeat(64)}`], "--anchor goes with --verify"],
      [["audit", "--verify", "--anchor", "1:abc"], /^error: --anchor must be a head as "audit --verify" reports it/],
    ];
    const results = await keelAll(cases.map(([args]) => [args, env]));
    for (const [i, r] of results.entries()) {
      const expected = cases[i][1];
      cleanError(r, typeof expected === "string" ? `error: ${expected}` : expected);
    }
    // Nothing was asked of Keel: no approval decided, no run cancelled, nothing audited but the test's own start.
    assert.equal((await k.api("GET", "/api/audit")).body.events.length, 0);

    const [slash, notUrl] = await keelAll([
      [["approvals"], { ...env, KEEL_URL: `${k.url}/` }],
      [["approvals"], { ...env, KEEL_URL: "notaurl" }],
    ]);
    assert.equal(slash.code, 0, slash.stderr);
    assert.match(slash.stdout, /No pending approvals/);
    cleanError(notUrl, 'error: KEEL_URL must be an http(s) URL such as http://127.0.0.1:8787: got "notaurl"');
  } finally {
    await k.close();
  }
});

Deno.test("`plugin install` of a bad manifest names the file and field and never contacts Keel", async () => {
  const [version, run] = await keelAll([
    [["plugin", "install", `${ROOT}/tests/fixtures/bad/bad-version`, "--yes"]],
    [["plugin", "install", `${ROOT}/tests/fixtures/hostile/needs_override_run`, "--yes"]],
  ]);
  cleanError(version, /^error: Invalid manifest ".*\/bad-version\/plugin\.json": field "version"/);
  cleanError(
    run,
    /^error: Plugin "needs-override-run" requests "run:\/bin\/sh" .* without an operator override: .*--override run:\/bin\/sh/,
  );
  assert.doesNotMatch(version.stderr + run.stderr, /not running/);
});

Deno.test("`plugin install` of a path holding no plugin package says so in the API's words and never contacts Keel", async () => {
  const notes = `${scratch}/notes.txt`;
  await Deno.writeTextFile(notes, "not a plugin\n");
  const [missing, file] = await keelAll([
    [["plugin", "install", `${scratch}/does-not-exist`, "--yes"]],
    [["plugin", "install", notes, "--yes"]],
  ]);
  cleanError(missing, `error: Cannot install plugin: no folder or .tar.gz archive at "${scratch}/does-not-exist"`);
  cleanError(file, `error: Cannot install plugin from "${notes}": it is neither a folder nor a .tar.gz archive`);
});

const pluginsOf = async (k: TestKeel) => (await k.api("GET", "/api/plugins")).body.plugins;
const eventTypes = async (k: TestKeel) =>
  (await k.api("GET", "/api/audit")).body.events.map((e: { type: string }) => e.type) as string[];

Deno.test("the CLI against a running Keel: install asks first, --yes installs, and errors change nothing", async (t) => {
  const k = await startTestKeel();
  const env = { KEEL_URL: k.url, KEEL_TOKEN: TEST_TOKEN };
  const smtp = `${ROOT}/plugins/smtp`;
  const config = JSON.stringify({ host: "127.0.0.1", port: 2525, from: "Keel <keel@example.test>" });
  try {
    await t.step(
      "`plugin install PATH` without --yes and without a terminal shows the permissions, refuses and installs nothing",
      async () => {
        const r = await keel(["plugin", "install", smtp, "--config", config], env);
        assert.match(r.stdout, /^Plugin smtp 0\.1\.1 \(connector\): Sends email/m);
        assert.match(r.stdout, /^It asks to:\n {2}- connect to 127\.0\.0\.1:2525$/m);
        assert.match(r.stdout, /^ {2}- email\.send \(irreversible\): /m);
        cleanError(r, "error: Not installed (answer y, or pass --yes in scripts)");
        assert.deepEqual(await pluginsOf(k), []);
        assert.ok(!(await eventTypes(k)).includes("plugin.installed"));
      },
    );

    await t.step("`plugin install` with a grant beyond the request is refused by Keel with a GrantError", async () => {
      const r = await keel(
        ["plugin", "install", smtp, "--config", config, "--grant", '{"net":["127.0.0.1:25"]}', "--yes"],
        env,
      );
      assert.match(r.stdout, /You grant: \{"net":\["127\.0\.0\.1:25"\]\}/);
      cleanError(
        r,
        /^error: GrantError: Grant for plugin "smtp" gives net "127\.0\.0\.1:25", which the plugin did not/,
      );
      assert.deepEqual(await pluginsOf(k), []);
    });

    await t.step("`plugin install` with a wrong token is refused with UnauthorizedError", async () => {
      const r = await keel(["plugin", "install", smtp, "--config", config, "--yes"], { ...env, KEEL_TOKEN: "wrong" });
      cleanError(r, /^error: UnauthorizedError: Missing or wrong bearer token/);
      assert.deepEqual(await pluginsOf(k), []);
    });

    await t.step("`plugin install PATH --yes` installs with exactly the requested permissions", async () => {
      const r = await keel(["plugin", "install", smtp, "--config", config, "--yes"], env);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^Installed smtp 0\.1\.1 \(manifest [0-9a-f]{12}\)$/m);
      const plugins = await pluginsOf(k);
      assert.deepEqual(plugins.map((p: { name: string }) => p.name), ["smtp"]);
      assert.deepEqual(plugins[0].grant, { net: ["127.0.0.1:2525"], env: [], read: [], write: [] });
      assert.equal((await eventTypes(k)).filter((e) => e === "plugin.installed").length, 1);
    });

    await t.step("`plugin list` shows the plugin and its grant in plain words", async () => {
      const r = await keel(["plugin", "list"], env);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^smtp \(connector\): /m);
      assert.match(r.stdout, /^ {2}0\.1\.1 active — running, worker$/m);
      assert.match(r.stdout, /^ {4}grant: connect to 127\.0\.0\.1:2525$/m);
    });

    await t.step("client commands with unknown names exit 1 with Keel's error and change nothing", async () => {
      const before = await eventTypes(k);
      const [run, show, approve, deny, input, wait] = await keelAll([
        [["run", "offboard_client", "--input", "{}"], env],
        [["runs", "show", "run_missing"], env],
        [["approve", "apr_missing"], env],
        [["deny", "apr_missing"], env],
        [["run", "onboard_client", "--input", "notjson"], env],
        [["approvals", "--status", "bogus"], env],
      ]);
      cleanError(run, 'error: NotFoundError: Unknown workflow "offboard_client": no installed agent offers it');
      cleanError(show, 'error: NotFoundError: No run with id "run_missing"');
      cleanError(approve, 'error: NotFoundError: No approval with id "apr_missing"');
      cleanError(deny, 'error: NotFoundError: No approval with id "apr_missing"');
      cleanError(input, /^error: --input must be JSON: /);
      cleanError(wait, /^error: InvalidInputError: Query "status" must be one of/);
      assert.deepEqual(await eventTypes(k), before);
    });

    await t.step("`runs` lists runs, and its bad filters are Keel's clear errors", async () => {
      const [none, bogus, word] = await keelAll([
        [["runs"], env],
        [["runs", "--status", "bogus"], env],
        [["runs", "lots"], env],
      ]);
      assert.equal(none.code, 0, none.stderr);
      assert.equal(none.stdout.trim(), "No runs");
      cleanError(bogus, /^error: InvalidInputError: Query "status" must be one of queued, running/);
      cleanError(word, 'error: runs takes "list" or "show RUN_ID": got "lots"');
    });

    await t.step("`approvals` and `audit` work against the running Keel", async () => {
      const approvals = await keel(["approvals"], env);
      assert.equal(approvals.code, 0, approvals.stderr);
      assert.equal(approvals.stdout.trim(), "No pending approvals");
      const audit = await keel(["audit", "--verify"], env);
      assert.equal(audit.code, 0, audit.stderr);
      const { ok, head } = JSON.parse(audit.stdout);
      assert.equal(ok, true);
      assert.match(audit.stderr, new RegExp(`^Head: ${head.seq}:${head.hash} \\(keep it; check it with --anchor\\)`));
      const anchored = await keel(["audit", "--verify", "--anchor", `${head.seq}:${head.hash}`], env);
      assert.equal(anchored.code, 0, anchored.stdout);
      assert.equal(JSON.parse(anchored.stdout).anchor.held, true);
      // An anchor past the log's end: newer events were removed (or the anchor belongs to another Keel).
      const gone = await keel(["audit", "--verify", "--anchor", `${head.seq + 5}:${head.hash}`], env);
      assert.equal(gone.code, 1, gone.stdout);
      assert.match(JSON.parse(gone.stdout).anchor.problem, new RegExp(`event ${head.seq + 5} is gone`));
    });

    await t.step("`audit --verify` exits 1 when an event was changed behind Keel's back", async () => {
      const kv = await Deno.openKv(`${k.dataDir}/keel.kv`);
      let newest = 0;
      try {
        // The newest event: the chain before it still holds, and has a head, which is not one to keep.
        for await (const e of kv.list<{ seq: number }>({ prefix: ["audit"] }, { reverse: true, limit: 1 })) {
          newest = e.value.seq;
          await kv.set(e.key, { ...e.value, actor: "mallory" });
        }
      } finally {
        kv.close();
      }
      assert.ok(newest > 1, "the log has events before the changed one");
      const audit = await keel(["audit", "--verify"], env);
      assert.equal(audit.code, 1, audit.stdout);
      const report = JSON.parse(audit.stdout);
      assert.deepEqual({ ...report, head: undefined }, {
        ok: false,
        checked: newest - 1,
        brokenAt: newest,
        head: undefined,
      });
      assert.equal(report.head.seq, newest - 1);
      assert.equal(audit.stderr, "", "no head to keep when the chain is broken");
    });
  } finally {
    await k.close();
  }
});

Deno.test("`deno task smtp-sink` with a bad or busy port says so in one line, no stack trace", async () => {
  const busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = String((busy.addr as Deno.NetAddr).port);
  try {
    for (
      const [arg, expected] of [
        ["abc", 'error: --port must be an integer from 1 to 65535: got "abc"'],
        [port, `error: cannot listen on 127.0.0.1:${port}: `],
      ]
    ) {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", `${ROOT}/tests/_support/smtp_sink.ts`, "--port", arg],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 1, stderr);
      assert.ok(stderr.startsWith(expected), stderr);
      assert.equal(stderr.trim().split("\n").length, 1, `more than one line: ${stderr}`);
    }
  } finally {
    busy.close();
  }
});
