/**
 * @module
 * Adversarial tests of the plugin sandbox, end to end: a hostile connector
 * (`tests/fixtures/hostile/rogue`) is installed with a narrow grant and each
 * escape attempt is driven through a real workflow and the Gateway. Every
 * case asserts the safe outcome (the run failed with the right tag, nothing
 * secret reached the run or the audit log) and the audit event that records
 * it. One Keel serves all cases; at the end it must still answer `/healthz`
 * and a well-behaved plugin's effect must still work.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";

const HOSTILE = `${ROOT}/tests/fixtures/hostile`;
const SECRET_ENV = `canary-env-${crypto.randomUUID()}`;
const SECRET_FILE = `canary-file-${crypto.randomUUID()}`;
const UNGRANTED_BODY = `canary-ungranted-${crypto.randomUUID()}`;
/** Strings that must never appear in a run or an audit event. */
const CANARIES = ["root:x:0:0", SECRET_ENV, SECRET_FILE, UNGRANTED_BODY, "uid=0(", "PRIVATE KEY"];

interface Outcome {
  readonly run: any;
  readonly audit: any[];
}

/** Run the caller agent's `call_effect` workflow and collect the run and its audit events. */
const drive = async (k: TestKeel, effect: string, args: unknown): Promise<Outcome> => {
  const started = await k.api("POST", "/api/workflows/call_effect/runs?wait=60", { input: { effect, args } });
  assert.equal(started.status, 202, JSON.stringify(started.body));
  const audit = await k.api("GET", `/api/audit?runId=${started.body.runId}`);
  assert.equal(audit.status, 200, JSON.stringify(audit.body));
  return { run: started.body, audit: audit.body.events };
};

const assertNoLeak = (o: Outcome) => {
  const text = JSON.stringify(o);
  for (const canary of CANARIES) assert.ok(!text.includes(canary), `leaked "${canary}" in ${text.slice(0, 2000)}`);
};

/** The run failed at `effect` with `tag`, the audit log says so with `type`, and nothing leaked. */
const assertRefused = (o: Outcome, effect: string, tag: string, type = "effect.failed") => {
  const show = JSON.stringify(o.run).slice(0, 2000);
  assert.equal(o.run.status, "failed", show);
  const runTag = o.run.error?.details?.tag ?? o.run.error?.tag;
  assert.ok(o.run.error?.tag === tag || runTag === tag, `run error should carry ${tag}: ${show}`);
  const step = o.run.steps.find((s: any) => s.kind === "effect" && s.name === effect);
  assert.ok(step, `no journaled step for ${effect}: ${show}`);
  assert.equal(step.status, "failed", show);
  assert.equal(step.error?.tag, tag, show);
  const event = o.audit.find((e) => e.type === type && e.data?.effect === effect);
  assert.ok(event, `no ${type} audit event for ${effect}: ${JSON.stringify(o.audit).slice(0, 2000)}`);
  assert.equal(event.data.error?.tag, tag, JSON.stringify(event));
  assert.ok(o.audit.some((e) => e.type === "run.failed"), "run.failed is audited");
  assertNoLeak(o);
};

const assertSucceeded = (o: Outcome, effect: string) => {
  assert.equal(o.run.status, "succeeded", JSON.stringify(o.run).slice(0, 2000));
  assert.ok(o.audit.some((e) => e.type === "effect.succeeded" && e.data?.effect === effect), "effect.succeeded");
  return o.run.output.result;
};

/** The run failed and its error message names the denied permission. */
const assertDenied = (o: Outcome, effect: string, mentions: string) => {
  assertRefused(o, effect, "PermissionDeniedError");
  const step = o.run.steps.find((s: any) => s.name === effect);
  assert.match(step.error.message, new RegExp(mentions.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")), step.error.message);
};

/** A tiny HTTP server on 127.0.0.1 that counts what reaches it. */
const serve = (handler: (req: Request) => Response) => {
  let hits = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    hits++;
    return handler(req);
  });
  return { port: server.addr.port, hits: () => hits, close: () => server.shutdown() };
};

Deno.test("a hostile connector cannot escape its grant, and the host keeps serving", async (t) => {
  const ungranted = serve(() => new Response(UNGRANTED_BODY));
  const granted = serve((req) =>
    new URL(req.url).pathname === "/redirect"
      ? Response.redirect(`http://127.0.0.1:${ungranted.port}/stolen`, 302)
      : new Response("granted server says hi")
  );
  const outside = await Deno.makeTempDir({ prefix: "keel-outside-" });
  const secretJson = `${outside}/secret.json`;
  await Deno.writeTextFile(secretJson, JSON.stringify({ secret: SECRET_FILE }));
  Deno.env.set("KEEL_TEST_ALLOWED", "allowed-value");
  Deno.env.set("KEEL_TEST_SECRET", SECRET_ENV);
  const k = await startTestKeel({ policies: { "p.yaml": "default: allow\nrules: []\n" }, rpcTimeoutMs: 1500 });
  const rogueData = `${k.dataDir}/plugin-data/rogue`;
  try {
    const rogue = await k.api("POST", "/api/plugins", {
      path: `${HOSTILE}/rogue`,
      // Everything it asks for except the second environment variable.
      grant: { net: [`127.0.0.1:${granted.port}`], env: ["KEEL_TEST_ALLOWED"], read: ["."], write: ["."] },
      config: { port: granted.port },
    });
    assert.equal(rogue.status, 201, JSON.stringify(rogue.body));
    for (const name of ["caller", "benign", "rogue_agent"]) {
      const r = await k.api("POST", "/api/plugins", { path: `${HOSTILE}/${name}`, grant: {} });
      assert.equal(r.status, 201, JSON.stringify(r.body));
    }

    // ---- files -------------------------------------------------------------
    await t.step("a plugin reading /etc/passwd fails with PermissionDeniedError and is audited", async () => {
      assertDenied(await drive(k, "rogue.read_file", { path: "/etc/passwd" }), "rogue.read_file", "/etc/passwd");
    });
    await t.step("a plugin reading ~/.ssh/id_rsa fails with PermissionDeniedError and is audited", async () => {
      const path = `${Deno.env.get("HOME") ?? "/root"}/.ssh/id_rsa`;
      assertDenied(await drive(k, "rogue.read_file", { path }), "rogue.read_file", ".ssh/id_rsa");
    });
    await t.step("a plugin reading /proc/self/environ fails with PermissionDeniedError and is audited", async () => {
      const o = await drive(k, "rogue.read_file", { path: "/proc/self/environ" });
      assertDenied(o, "rogue.read_file", "/proc/self/environ");
    });
    await t.step("a plugin reading Keel's own KV store fails with PermissionDeniedError", async () => {
      assertDenied(await drive(k, "rogue.read_file", { path: `${k.dataDir}/keel.kv` }), "rogue.read_file", "keel.kv");
    });
    await t.step("a plugin opening Keel's KV database fails with PermissionDeniedError", async () => {
      assertDenied(await drive(k, "rogue.open_kv", { path: `${k.dataDir}/keel.kv` }), "rogue.open_kv", "keel.kv");
    });
    await t.step("a plugin may read its own stored code, but not write it nor read another plugin's", async () => {
      // A Worker loads its plugin by a computed import, so it holds read access to its own stored folder (and
      // core/sdk): Deno then checks every module the plugin loads (see core/plugins/_worker_entry.ts).
      const own = assertSucceeded(await drive(k, "rogue.read_own_folder", {}), "rogue.read_own_folder");
      assert.match(own.text, /"name": "rogue"/);
      const store = `${Deno.realPathSync(k.dataDir)}/plugins`;
      const write = await drive(k, "rogue.write_file", { path: `${store}/rogue/0.1.0/mod.ts`, text: "pwned" });
      assertDenied(write, "rogue.write_file", "mod.ts");
      const other = await drive(k, "rogue.read_file", { path: `${store}/benign/0.1.0/plugin.json` });
      assertDenied(other, "rogue.read_file", "plugin.json");
    });
    await t.step("a plugin writing outside its data dir fails with PermissionDeniedError", async () => {
      const path = `${outside}/dropped.txt`;
      const o = await drive(k, "rogue.write_file", { path, text: "pwned" });
      assertDenied(o, "rogue.write_file", path);
      await assert.rejects(Deno.stat(path), Deno.errors.NotFound);
    });
    await t.step(
      "a plugin writing into another plugin's data dir via ../ fails with PermissionDeniedError",
      async () => {
        const path = `${rogueData}/../benign/dropped.txt`;
        assertDenied(await drive(k, "rogue.write_file", { path, text: "pwned" }), "rogue.write_file", "benign");
        await assert.rejects(Deno.stat(`${k.dataDir}/plugin-data/benign/dropped.txt`), Deno.errors.NotFound);
      },
    );
    await t.step("a plugin may write inside its own data dir (the grant works)", async () => {
      const o = await drive(k, "rogue.write_file", { path: `${rogueData}/notes.txt`, text: "mine" });
      assertSucceeded(o, "rogue.write_file");
      assert.equal(await Deno.readTextFile(`${rogueData}/notes.txt`), "mine");
    });
    await t.step(
      "a plugin planting a symlink to /etc/passwd in its data dir fails with PermissionDeniedError",
      async () => {
        const o = await drive(k, "rogue.symlink", { target: "/etc/passwd", path: `${rogueData}/passwd` });
        assertDenied(o, "rogue.symlink", "symlink");
        await assert.rejects(Deno.lstat(`${rogueData}/passwd`), Deno.errors.NotFound);
      },
    );
    await t.step(
      "a plugin hard-linking a file from outside into its data dir fails with PermissionDeniedError",
      async () => {
        const o = await drive(k, "rogue.hardlink", { target: secretJson, path: `${rogueData}/secret.json` });
        assertDenied(o, "rogue.hardlink", "secret.json");
        await assert.rejects(Deno.lstat(`${rogueData}/secret.json`), Deno.errors.NotFound);
      },
    );

    // ---- environment ---------------------------------------------------------
    await t.step("a plugin may read the env variable it was granted (the grant works)", async () => {
      const result = assertSucceeded(await drive(k, "rogue.env_get", { name: "KEEL_TEST_ALLOWED" }), "rogue.env_get");
      assert.deepEqual(result, { value: "allowed-value" });
    });
    await t.step(
      "a plugin reading an env variable it requested but was not granted fails with PermissionDeniedError",
      async () => {
        const o = await drive(k, "rogue.env_get", { name: "KEEL_TEST_SECRET" });
        assertDenied(o, "rogue.env_get", "KEEL_TEST_SECRET");
      },
    );
    await t.step("a plugin reading HOME fails with PermissionDeniedError", async () => {
      assertDenied(await drive(k, "rogue.env_get", { name: "HOME" }), "rogue.env_get", "HOME");
    });
    await t.step("a plugin dumping the whole environment fails with PermissionDeniedError", async () => {
      assertDenied(await drive(k, "rogue.env_all", {}), "rogue.env_all", "env");
    });

    // ---- network -------------------------------------------------------------
    await t.step("a plugin may fetch from its granted host:port (the grant works)", async () => {
      const o = await drive(k, "rogue.fetch", { url: `http://127.0.0.1:${granted.port}/` });
      assert.equal(assertSucceeded(o, "rogue.fetch").text, "granted server says hi");
    });
    await t.step("a plugin fetching an ungranted port fails with PermissionDeniedError", async () => {
      const o = await drive(k, "rogue.fetch", { url: `http://127.0.0.1:${ungranted.port}/` });
      assertDenied(o, "rogue.fetch", `127.0.0.1:${ungranted.port}`);
    });
    await t.step(
      "a plugin opening a TCP connection to an ungranted port fails with PermissionDeniedError",
      async () => {
        const o = await drive(k, "rogue.connect", { hostname: "127.0.0.1", port: ungranted.port });
        assertDenied(o, "rogue.connect", `127.0.0.1:${ungranted.port}`);
      },
    );
    await t.step(
      "a plugin granted 127.0.0.1:port reaching localhost:port fails with PermissionDeniedError",
      async () => {
        const o = await drive(k, "rogue.fetch", { url: `http://localhost:${granted.port}/` });
        assertDenied(o, "rogue.fetch", `localhost:${granted.port}`);
      },
    );
    await t.step("a plugin reaching its granted port over [::1] fails with PermissionDeniedError", async () => {
      const o = await drive(k, "rogue.connect", { hostname: "::1", port: granted.port });
      assertDenied(o, "rogue.connect", `${granted.port}`);
    });
    await t.step(
      "a plugin using a numeric spelling of 127.0.0.1 for an ungranted port fails with PermissionDeniedError",
      async () => {
        const o = await drive(k, "rogue.fetch", { url: `http://2130706433:${ungranted.port}/` });
        assertDenied(o, "rogue.fetch", `${ungranted.port}`);
      },
    );
    await t.step("a plugin connecting to a private or metadata address fails with PermissionDeniedError", async () => {
      for (const hostname of ["169.254.169.254", "10.0.0.1", "192.168.1.1"]) {
        assertDenied(await drive(k, "rogue.connect", { hostname, port: 80 }), "rogue.connect", hostname);
      }
    });
    await t.step("a plugin calling Keel's own HTTP API fails with PermissionDeniedError", async () => {
      const o = await drive(k, "rogue.fetch", { url: `${k.url}/api/plugins` });
      assertDenied(o, "rogue.fetch", new URL(k.url).host);
    });
    await t.step("a plugin opening a listener fails with PermissionDeniedError", async () => {
      assertDenied(await drive(k, "rogue.listen", {}), "rogue.listen", "127.0.0.1:0");
    });
    await t.step("a redirect from the granted server to an ungranted one is not followed", async () => {
      const before = ungranted.hits();
      const o = await drive(k, "rogue.fetch", { url: `http://127.0.0.1:${granted.port}/redirect` });
      assertDenied(o, "rogue.fetch", `127.0.0.1:${ungranted.port}`);
      assert.equal(ungranted.hits(), before, "the ungranted server was never contacted");
    });

    // ---- powers no plugin ever gets -----------------------------------------
    await t.step("Deno.permissions.request({name: 'read'}) in a plugin returns denied", async () => {
      const result = assertSucceeded(await drive(k, "rogue.ask_permission", { name: "read" }), "rogue.ask_permission");
      assert.deepEqual(result, { state: "denied" });
      assertDenied(await drive(k, "rogue.read_file", { path: "/etc/passwd" }), "rogue.read_file", "/etc/passwd");
    });
    await t.step("Deno.permissions.request({name: 'run'}) in a plugin returns denied", async () => {
      const result = assertSucceeded(await drive(k, "rogue.ask_permission", { name: "run" }), "rogue.ask_permission");
      assert.deepEqual(result, { state: "denied" });
    });
    await t.step("a plugin spawning Deno.Command fails with PermissionDeniedError", async () => {
      assertDenied(await drive(k, "rogue.command", {}), "rogue.command", "run");
    });
    await t.step("a plugin calling Deno.dlopen fails with PermissionDeniedError", async () => {
      assertDenied(await drive(k, "rogue.dlopen", {}), "rogue.dlopen", "ffi");
    });
    await t.step("a plugin reading system information fails with PermissionDeniedError", async () => {
      assertDenied(await drive(k, "rogue.sys_info", {}), "rogue.sys_info", "sys");
    });
    await t.step("a plugin reading a file through node:fs fails with PermissionDeniedError", async () => {
      assertDenied(await drive(k, "rogue.node_builtin", { what: "fs" }), "rogue.node_builtin", "/etc/passwd");
    });
    await t.step("a plugin spawning through node:child_process fails with PermissionDeniedError", async () => {
      assertRefused(
        await drive(k, "rogue.node_builtin", { what: "child_process" }),
        "rogue.node_builtin",
        "PermissionDeniedError",
      );
    });
    await t.step("a plugin reading the host name through node:os fails with PermissionDeniedError", async () => {
      assertDenied(await drive(k, "rogue.node_builtin", { what: "os" }), "rogue.node_builtin", "sys");
    });

    // ---- module loading ------------------------------------------------------
    await t.step("a plugin's dynamic import() of a remote https URL fails with PermissionDeniedError", async () => {
      const o = await drive(k, "rogue.import", { specifier: "https://example.com/payload.ts" });
      assertDenied(o, "rogue.import", "example.com");
    });
    await t.step(
      "a plugin's dynamic import() of a computed file path outside fails with PermissionDeniedError",
      async () => {
        const o = await drive(k, "rogue.import", { specifier: `file://${secretJson}`, type: "json" });
        assertDenied(o, "rogue.import", secretJson);
      },
    );
    await t.step("a data: module cannot import a file the plugin may not read", async () => {
      const o = await drive(k, "rogue.data_import", { target: `file://${secretJson}` });
      assertDenied(o, "rogue.data_import", secretJson);
    });
    await t.step(
      "current behaviour: a plugin may evaluate a self-contained data: module, with no more power",
      async () => {
        // Deno's permissions do not gate data: imports (FACTS.md); it is the plugin's own code, so
        // it gains nothing: the data: module runs under the same grant, as the case above shows.
        const result = assertSucceeded(await drive(k, "rogue.eval_data", {}), "rogue.eval_data");
        assert.deepEqual(result, { value: 42 });
      },
    );
    await t.step("a nested Worker asking for more permissions fails with PermissionDeniedError", async () => {
      assertRefused(
        await drive(k, "rogue.nested_worker", { mode: "more" }),
        "rogue.nested_worker",
        "PermissionDeniedError",
      );
    });
    await t.step("a nested Worker inheriting the grant cannot read /etc/passwd either", async () => {
      const o = await drive(k, "rogue.nested_worker", { mode: "inherit" });
      assertDenied(o, "rogue.nested_worker", "/etc/passwd");
    });

    // ---- the Gateway's own checks ---------------------------------------------
    await t.step(
      "an agent calling an effect not listed in its manifest uses fails with EffectNotDeclaredError and effect.rejected",
      async () => {
        const o = await drive(k, "rogue.undeclared", {});
        assertRefused(o, "rogue.undeclared", "EffectNotDeclaredError", "effect.rejected");
        assert.ok(
          !o.audit.some((e) => e.type === "effect.succeeded" || e.type === "effect.failed"),
          "never dispatched",
        );
      },
    );
    await t.step("an agent calling an effect no connector provides fails with EffectNotDeclaredError", async () => {
      assertRefused(await drive(k, "ghost.effect", {}), "ghost.effect", "EffectNotDeclaredError", "effect.rejected");
    });
    await t.step("effect args failing the input schema fail with InvalidInputError and effect.rejected", async () => {
      assertRefused(await drive(k, "rogue.echo", { value: 42 }), "rogue.echo", "InvalidInputError", "effect.rejected");
      const extra = await drive(k, "rogue.echo", { value: "hi", path: "/etc/passwd" });
      assertRefused(extra, "rogue.echo", "InvalidInputError", "effect.rejected");
    });
    await t.step("an irreversible effect no rule allows fails with PolicyDeniedError and effect.rejected", async () => {
      const o = await drive(k, "rogue.irreversible", {});
      assertRefused(o, "rogue.irreversible", "PolicyDeniedError", "effect.rejected");
      assert.equal(o.audit.find((e) => e.type === "effect.rejected").data.rule, "default-deny-irreversible");
    });
    await t.step("a connector forging a workflow call to the host is refused and nothing is dispatched", async () => {
      const result = assertSucceeded(await drive(k, "rogue.forge_call", { runId: "$RUN" }), "rogue.forge_call");
      assert.equal(result.reply.ok, false, JSON.stringify(result));
      assert.equal(result.reply.error.tag, "InvalidInputError", JSON.stringify(result));
      const all = (await k.api("GET", "/api/audit?limit=10000")).body.events;
      assert.ok(
        !all.some((e: any) => e.data?.effect === "rogue.irreversible" && e.data?.seq === 99),
        "no forged effect",
      );
    });
    await t.step("a connector failing with a Keel-only error tag does not pass for a Keel decision", async () => {
      const o = await drive(k, "rogue.forge_tag", { tag: "PolicyDeniedError" });
      assertRefused(o, "rogue.forge_tag", "PluginFailedError");
      const step = o.run.steps.find((s: any) => s.name === "rogue.forge_tag");
      assert.equal(step.error.details.tag, "PolicyDeniedError", "the plugin's own tag is kept as a detail");
    });

    // ---- hurting the host ------------------------------------------------------
    const restartsOf = async (name: string) =>
      (await k.api("GET", "/api/plugins")).body.plugins.find((p: any) => p.name === name).restarts as number;
    const stillServes = async () => {
      const o = await drive(k, "rogue.echo", { value: "still here" });
      assert.deepEqual(assertSucceeded(o, "rogue.echo"), { value: "still here" });
    };
    await t.step(
      "an infinite loop in an effect fails with PluginTimeoutError; the plugin is restarted and serves again",
      async () => {
        const before = await restartsOf("rogue");
        assertRefused(await drive(k, "rogue.spin", {}), "rogue.spin", "PluginTimeoutError");
        const crashed = (await k.api("GET", "/api/audit?limit=50")).body.events;
        assert.ok(crashed.some((e: any) => e.type === "plugin.crashed" && e.data.plugin === "rogue"), "plugin.crashed");
        await stillServes();
        assert.ok(await restartsOf("rogue") > before, "the retired Worker was replaced by a fresh one");
      },
    );
    await t.step("an uncaught throw from a timer fails with PluginCrashedError and the host stays up", async () => {
      assertRefused(await drive(k, "rogue.async_throw", {}), "rogue.async_throw", "PluginCrashedError");
      await stillServes();
    });
    await t.step("an unhandled promise rejection fails with PluginCrashedError and the host stays up", async () => {
      assertRefused(await drive(k, "rogue.unhandled_rejection", {}), "rogue.unhandled_rejection", "PluginCrashedError");
      await stillServes();
    });
    await t.step("a plugin calling Deno.exit ends only its own Worker and fails with a tagged error", async () => {
      const o = await drive(k, "rogue.exit", {});
      const tag = o.run.steps.find((s: any) => s.name === "rogue.exit")?.error?.tag;
      assert.ok(tag === "PluginCrashedError" || tag === "PluginTimeoutError", JSON.stringify(o.run));
      assertRefused(o, "rogue.exit", tag);
      await stillServes();
    });
    await t.step("a result over 8 MB kills the plugin with PluginCrashedError and the host stays up", async () => {
      const o = await drive(k, "rogue.big_result", { chars: 9 * 1024 * 1024 });
      assertRefused(o, "rogue.big_result", "PluginCrashedError");
      assert.match(o.run.steps.find((s: any) => s.name === "rogue.big_result").error.message, /limit is 8388608/);
      await stillServes();
    });
    await t.step("a result too large to journal fails with a tagged error and is audited", async () => {
      assertRefused(await drive(k, "rogue.big_result", { chars: 200_000 }), "rogue.big_result", "PluginFailedError");
      await stillServes();
    });
    await t.step("an error with huge details fails with a tagged error and is audited", async () => {
      assertRefused(await drive(k, "rogue.huge_error", { chars: 200_000 }), "rogue.huge_error", "PluginFailedError");
      await stillServes();
    });
    await t.step(
      "a message flood kills the plugin with PluginCrashedError while /healthz keeps answering",
      async () => {
        const flood = drive(k, "rogue.flood", { count: 20_000 });
        const health = await fetch(`${k.url}/healthz`);
        assert.equal(health.status, 200);
        await health.body?.cancel();
        const o = await flood;
        assertRefused(o, "rogue.flood", "PluginCrashedError");
        assert.match(o.run.steps.find((s: any) => s.name === "rogue.flood").error.message, /answer to no request/);
        await stillServes();
      },
    );
    await t.step(
      "a flood of calls for a run the plugin is not executing retires it (each would be answered, without bound)",
      async () => {
        const o = await drive(k, "rogue.call_flood", { count: 100_000 });
        assertRefused(o, "rogue.call_flood", "PluginCrashedError");
        assert.match(
          o.run.steps.find((s: any) => s.name === "rogue.call_flood").error.message,
          /more than 64 calls for runs it is not executing/,
        );
        await stillServes();
      },
    );
    await t.step(
      "an answer that breaks the protocol fails the call with a tagged error and the host stays up",
      async () => {
        for (const shape of ["no-error", "null-error", "odd-error", "string-error"]) {
          const o = await drive(k, "rogue.malformed_result", { shape });
          const tag = o.run.steps.find((s: any) => s.name === "rogue.malformed_result")?.error?.tag;
          assert.ok(typeof tag === "string", JSON.stringify(o.run));
          assertRefused(o, "rogue.malformed_result", tag);
          await stillServes();
        }
      },
    );
    await t.step("a message outside the protocol kills the plugin with PluginCrashedError", async () => {
      const o = await drive(k, "rogue.garbage", {});
      assertRefused(o, "rogue.garbage", "PluginCrashedError");
      assert.match(o.run.steps.find((s: any) => s.name === "rogue.garbage").error.message, /protocol/);
      await stillServes();
    });

    // ---- a hostile coordinator ------------------------------------------------------
    const runOf = async (workflow: string, input: unknown): Promise<Outcome> => {
      const started = await k.api("POST", `/api/workflows/${workflow}/runs?wait=60`, { input });
      assert.equal(started.status, 202, JSON.stringify(started.body));
      const audit = (await k.api("GET", `/api/audit?runId=${started.body.runId}`)).body.events;
      return { run: started.body, audit };
    };
    /** The run failed with `tag` and run.failed in the audit log carries it; nothing leaked. */
    const assertRunFailed = (o: Outcome, tags: string[]) => {
      const show = JSON.stringify(o.run).slice(0, 2000);
      assert.equal(o.run.status, "failed", show);
      assert.ok(tags.includes(o.run.error?.tag), `run error should be one of ${tags}: ${show}`);
      const event = o.audit.find((e) => e.type === "run.failed");
      assert.ok(event, `run.failed is audited: ${JSON.stringify(o.audit)}`);
      assert.equal(event.data.error.tag, o.run.error.tag);
      assertNoLeak(o);
    };
    await t.step(
      "an agent reading /etc/passwd in its workflow fails with PermissionDeniedError and is audited",
      async () => {
        assertRunFailed(await runOf("read_secret", {}), ["PermissionDeniedError"]);
      },
    );
    await t.step("an agent returning an output too large to record fails its run instead of hanging", async () => {
      const o = await runOf("huge_output", { chars: 1_000_000 });
      assertRunFailed(o, ["PluginFailedError"]);
      assert.match(o.run.error.message, /records at most/);
    });
    await t.step("an agent checkpointing a value too large to record fails its run with a tagged error", async () => {
      // 40,000 two-byte characters pass a character count but not Deno KV's 64 KiB byte limit.
      assertRunFailed(await runOf("wide_checkpoint", { chars: 40_000 }), ["InvalidInputError", "StoreError"]);
    });
    await t.step("an agent making calls with step numbers the protocol forbids is refused every time", async () => {
      const o = await runOf("bad_seq", {});
      assert.equal(o.run.status, "succeeded", JSON.stringify(o.run));
      for (const reply of o.run.output.replies) {
        assert.equal(reply.ok, false, JSON.stringify(reply));
        assert.equal(reply.error.tag, "InvalidInputError", JSON.stringify(reply));
      }
      assert.ok(!o.audit.some((e) => e.type.startsWith("effect.")), "nothing reached the Gateway");
    });
    await t.step(
      "an agent whose result carries a checkpoint the protocol forbids fails its run; nothing of it is recorded",
      async () => {
        const o = await runOf("forged_trailing", {});
        assertRunFailed(o, ["InvalidInputError"]);
        assert.match(o.run.error.message, /does not belong to this run/);
        assert.deepEqual(o.run.steps, [], "the valid checkpoint beside it is not recorded either");
      },
    );
    await t.step(
      "an agent sending checkpoints on a result to no request is retired as a protocol breaker",
      async () => {
        const o = await runOf("orphan_trailing", {});
        assertRunFailed(o, ["PluginCrashedError"]);
        assert.match(o.run.error.message, /checkpoints on a result without a run/);
      },
    );
    await t.step("an agent making a call in another run's name is refused and that run is untouched", async () => {
      const victim = await drive(k, "benign.echo", { value: "victim" });
      assert.equal(victim.run.status, "succeeded");
      const o = await runOf("foreign_call", { runId: victim.run.runId });
      assert.equal(o.run.status, "succeeded", JSON.stringify(o.run));
      assert.equal(o.run.output.reply.ok, false, JSON.stringify(o.run.output));
      assert.equal(o.run.output.reply.error.tag, "InvalidInputError", JSON.stringify(o.run.output));
      const after = (await k.api("GET", `/api/audit?runId=${victim.run.runId}`)).body.events;
      assert.deepEqual(
        after.map((e: any) => e.seq),
        victim.audit.map((e) => e.seq),
        "no event was added to the victim run",
      );
      const steps = (await k.api("GET", `/api/runs/${victim.run.runId}`)).body.steps;
      assert.equal(steps.length, victim.run.steps.length, "no step was added to the victim run");
    });

    // ---- the host still serves ---------------------------------------------------
    await t.step(
      "after all of it the host still serves /healthz, a benign plugin, and an intact audit chain",
      async () => {
        const health = await fetch(`${k.url}/healthz`);
        assert.equal(health.status, 200);
        assert.equal((await health.json()).ok, true);
        const o = await drive(k, "benign.echo", { value: "hello" });
        assert.deepEqual(assertSucceeded(o, "benign.echo"), { echoed: "hello" });
        const verify = await k.api("GET", "/api/audit/verify");
        assert.equal(verify.body.ok, true, JSON.stringify(verify.body));
        const all = await k.api("GET", "/api/audit?limit=10000");
        assertNoLeak({ run: null, audit: all.body.events });
      },
    );
  } finally {
    await k.close();
    await granted.close();
    await ungranted.close();
    Deno.env.delete("KEEL_TEST_ALLOWED");
    Deno.env.delete("KEEL_TEST_SECRET");
    await Deno.remove(outside, { recursive: true });
    await Deno.remove(k.dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test({
  // Deno lets code signal its own process without `run` permission, from a Worker too
  // (`Deno.kill(Deno.pid, "SIGKILL")`, or `kill` from a computed `import("node:process")`),
  // so a plugin in a Worker can stop the host (a known hole of `worker` isolation, README).
  // In `process` isolation, the default for third-party plugins, "its own process" is the plugin's.
  name: "a plugin in process isolation cannot signal the Keel process: Deno.kill(Deno.pid) reaches only its own",
  async fn() {
    let signalled = 0;
    const listener = () => signalled++;
    Deno.addSignalListener("SIGWINCH", listener);
    const k = await startTestKeel({ policies: { "p.yaml": "default: allow\nrules: []\n" } });
    try {
      for (const [name, body] of Object.entries({ rogue: { config: { port: 9 }, isolation: "process" }, caller: {} })) {
        const r = await k.api("POST", "/api/plugins", { path: `${HOSTILE}/${name}`, grant: {}, ...body });
        assert.equal(r.status, 201, JSON.stringify(r.body));
      }
      const o = await drive(k, "rogue.signal_self", { signal: "SIGWINCH" });
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.equal(signalled, 0, "the host process was signalled by a plugin");
      // It signalled itself, which harms no one: the effect ran and is audited as such.
      assert.deepEqual(assertSucceeded(o, "rogue.signal_self"), { sent: "SIGWINCH" });
      // SIGKILL to "its own" pid ends the plugin's process only; the host fails the call and restarts the plugin.
      const killed = await drive(k, "rogue.signal_self", { signal: "SIGKILL" });
      assertRefused(killed, "rogue.signal_self", "PluginCrashedError");
      const crashed = (await k.api("GET", "/api/audit?limit=100")).body.events;
      assert.ok(crashed.some((e: any) => e.type === "plugin.crashed" && e.data.plugin === "rogue"), "plugin.crashed");
      const again = await drive(k, "rogue.echo", { value: "still here" });
      assert.deepEqual(assertSucceeded(again, "rogue.echo"), { value: "still here" });
      assert.equal(signalled, 0);
    } finally {
      Deno.removeSignalListener("SIGWINCH", listener);
      await k.close();
    }
  },
});
