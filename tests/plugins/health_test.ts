/**
 * @module
 * Periodic plugin health checks. The scheduler on its own (a real audit log
 * on a real KV file): failures counted, restarts at 3, 6 and 12 failures in
 * a row, nothing left running once its scope closes. Then end to end with
 * real Workers: a connector whose health is switched off through the
 * Gateway is marked unhealthy, audited and restarted, and comes back
 * healthy; one whose health check never answers is timed out and restarted
 * while it, and the other plugins, keep serving; `GET /api/plugins` and
 * `keel plugin list` show the health.
 */
import assert from "node:assert/strict";
import { Effect, Exit, Layer, ManagedRuntime, Scope } from "effect";
import { KeelConfig } from "../../core/config/mod.ts";
import { Kv } from "../../core/store/mod.ts";
import { Audit } from "../../core/telemetry/mod.ts";
import { FAILURES_BEFORE_RESTART, type HealthTarget, startHealthChecks } from "../../core/plugins/mod.ts";
import { ROOT, startTestKeel, testConfig, type TestKeel } from "../_support/keel.ts";
import { eventually, runCli } from "../_support/process.ts";

const FIXTURES = `${ROOT}/tests/fixtures/health`;

Deno.test("startHealthChecks() restarts a failing plugin after 3, 6 and 12 failures and stops with its scope", async () => {
  const dir = await Deno.makeTempDir({ prefix: "keel-health-" });
  const rt = ManagedRuntime.make(
    Audit.layer.pipe(Layer.provideMerge(Kv.layer), Layer.provide(KeelConfig.layer(testConfig(dir)))),
  );
  try {
    let pings = 0;
    let passing = false;
    const restartsAt: number[] = [];
    const target: HealthTarget = {
      key: "sick@1.0.0",
      plugin: "sick",
      version: "1.0.0",
      intervalSeconds: 0.01,
      timeoutMs: 1000,
      ping: () =>
        Effect.suspend(() => {
          pings++;
          return passing ? Effect.succeed(true) : Effect.fail(new Error("boom"));
        }),
      restart: () => Effect.sync(() => void restartsAt.push(pings)),
    };
    const scope = await rt.runPromise(Scope.make());
    const checks = await rt.runPromise(
      startHealthChecks(Effect.succeed([target]), { tickMs: 2 }).pipe(Scope.provide(scope)),
    );
    await eventually(() => Promise.resolve(restartsAt.length >= 3 ? true : undefined), () => `restarts: ${restartsAt}`);
    assert.deepEqual(restartsAt.slice(0, 3), [3, 6, 12], "backs off: restarts after 3, 6, 12 failures in a row");
    assert.ok(checks.unhealthy("sick@1.0.0"));
    const failing = checks.status("sick@1.0.0")!;
    assert.equal(failing.ok, false);
    assert.equal(failing.error, "boom");
    assert.ok(failing.consecutiveFailures >= 12);

    passing = true;
    await eventually(() => Promise.resolve(checks.status("sick@1.0.0")?.ok ? true : undefined), () => "never passed");
    assert.equal(checks.unhealthy("sick@1.0.0"), false);
    assert.equal(checks.status("sick@1.0.0")!.consecutiveFailures, 0);

    const events = await rt.runPromise(Audit.use((a) => a.list({})));
    const unhealthy = events.filter((e) => e.type === "plugin.unhealthy");
    assert.deepEqual(unhealthy.slice(0, 3).map((e) => e.data.consecutiveFailures), [3, 6, 12]);
    assert.equal(unhealthy[0].data.plugin, "sick");
    assert.equal(unhealthy[0].data.error, "boom");
    assert.ok(events.some((e) => e.type === "plugin.healthy" && e.data.plugin === "sick"), "recovery is audited");

    await rt.runPromise(Scope.close(scope, Exit.void));
    const after = pings;
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(pings, after, "no check runs once the scope is closed");
  } finally {
    await rt.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("startHealthChecks() counts a ping that never answers as a failed check", async () => {
  const dir = await Deno.makeTempDir({ prefix: "keel-health-" });
  const rt = ManagedRuntime.make(
    Audit.layer.pipe(Layer.provideMerge(Kv.layer), Layer.provide(KeelConfig.layer(testConfig(dir)))),
  );
  try {
    let restarts = 0;
    const target: HealthTarget = {
      key: "stuck@1.0.0",
      plugin: "stuck",
      version: "1.0.0",
      intervalSeconds: 0.01,
      timeoutMs: 20,
      ping: () => Effect.never,
      restart: () => Effect.sync(() => void restarts++),
    };
    const status = await rt.runPromise(Effect.scoped(Effect.gen(function* () {
      const checks = yield* startHealthChecks(Effect.succeed([target]), { tickMs: 2 });
      for (;;) {
        yield* Effect.sleep("10 millis");
        const s = checks.status("stuck@1.0.0");
        if (s && s.consecutiveFailures >= FAILURES_BEFORE_RESTART && restarts >= 1) return s;
      }
    })));
    assert.equal(status.ok, false);
    assert.equal(status.error, 'Plugin did not answer "health" within 20 ms');
    assert.ok(restarts >= 1);
  } finally {
    await rt.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});

/** The plugin named `name` as `GET /api/plugins` shows it. */
const pluginOf = async (k: TestKeel, name: string) => {
  const res = await k.api("GET", "/api/plugins");
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body.plugins.find((p: { name: string }) => p.name === name);
};

const install = async (k: TestKeel, folder: string, config?: unknown) => {
  const res = await k.api("POST", "/api/plugins", { path: `${FIXTURES}/${folder}`, grant: {}, config });
  assert.equal(res.status, 201, JSON.stringify(res.body));
};

/** Run one of the driver agent's workflows and return its output. */
const drive = async (k: TestKeel, workflow: string, input: unknown) => {
  const res = await k.api("POST", `/api/workflows/${workflow}/runs?wait=60`, { input });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  assert.equal(res.body.status, "succeeded", JSON.stringify(res.body));
  return res.body.output;
};

const auditOf = async (k: TestKeel, type: string, plugin: string) =>
  (await k.api("GET", "/api/audit")).body.events.filter((e: any) => e.type === type && e.data?.plugin === plugin);

Deno.test("a plugin whose health check fails is marked unhealthy, audited, restarted, and healthy again", async () => {
  const k = await startTestKeel();
  try {
    await install(k, "flaky");
    await install(k, "driver");
    const healthy = await eventually(async () => {
      const p = await pluginOf(k, "flaky");
      return p.health?.ok ? p : undefined;
    }, () => "flaky was never checked");
    assert.equal(healthy.state, "running");
    assert.equal(healthy.health.consecutiveFailures, 0);
    assert.ok(!Number.isNaN(Date.parse(healthy.health.at)), healthy.health.at);
    assert.equal("error" in healthy.health, false);

    const before = await drive(k, "health_echo", { effect: "flip.echo", value: "a" });
    await drive(k, "health_flip", { ok: false });

    const [event] = await eventually(async () => {
      const events = await auditOf(k, "plugin.unhealthy", "flaky");
      return events.length ? events : undefined;
    }, () => "no plugin.unhealthy event");
    assert.equal(event.actor, "system");
    assert.equal(event.data.consecutiveFailures, FAILURES_BEFORE_RESTART);
    assert.equal(event.data.version, "0.1.0");
    assert.equal(event.data.action, "restart");
    assert.match(event.data.error, /switched off by the test/);

    // The restarted Worker starts healthy again (the switch lived in the old one).
    const recovered = await eventually(async () => {
      const p = await pluginOf(k, "flaky");
      return p.health?.ok && p.restarts >= 1 ? p : undefined;
    }, () => "flaky did not come back healthy");
    assert.equal(recovered.state, "running");
    assert.equal((await auditOf(k, "plugin.healthy", "flaky")).length >= 1, true, "recovery is audited");
    const after = await drive(k, "health_echo", { effect: "flip.echo", value: "b" });
    assert.equal(after.echoed, "b");
    assert.notEqual(after.instance, before.instance, "a new Worker answers");
  } finally {
    await k.close();
  }
});

Deno.test("a plugin that never answers its health check is restarted, keeps serving, and others are unaffected", async () => {
  const k = await startTestKeel();
  try {
    await install(k, "hangs");
    await install(k, "flaky");
    await install(k, "driver");
    const sick = await eventually(async () => {
      const p = await pluginOf(k, "hangs");
      return p.state === "unhealthy" ? p : undefined;
    }, () => "hangs never became unhealthy");
    assert.equal(sick.health.ok, false);
    assert.ok(sick.health.consecutiveFailures >= FAILURES_BEFORE_RESTART);
    assert.match(JSON.stringify(await auditOf(k, "plugin.unhealthy", "hangs")), /within 200 ms/);
    await eventually(async () => ((await pluginOf(k, "hangs")).restarts >= 1 ? true : undefined), () => "no restart");

    // Its effect still works (a fresh Worker answers), and so does every other plugin.
    assert.equal((await drive(k, "health_echo", { effect: "hang.echo", value: "x" })).echoed, "x");
    assert.equal((await drive(k, "health_echo", { effect: "flip.echo", value: "y" })).echoed, "y");
    const flaky = await eventually(async () => {
      const p = await pluginOf(k, "flaky");
      return p.health?.ok ? p : undefined;
    }, () => "flaky was never checked");
    assert.equal(flaky.state, "running");
    assert.equal(flaky.restarts, 0, "the healthy plugin was never restarted");
    const ok = await fetch(`${k.url}/healthz`);
    assert.equal(ok.status, 200);
    await ok.body?.cancel();

    // `keel plugin list` shows both, the sick one as unhealthy with why.
    const cli = await runCli(["plugin", "list"], { url: k.url });
    assert.equal(cli.code, 0, cli.stderr);
    // One block per plugin, starting at an unindented line that names it.
    const block = (name: string) => cli.stdout.split(/\n(?=\S)/).find((b) => b.startsWith(`${name} `)) ?? "";
    assert.match(block("hangs"), /0\.1\.0 .*— unhealthy/, cli.stdout);
    assert.match(block("hangs"), /health: failing, \d+ times in a row \(checked [^)]+\): .*within 200 ms/, cli.stdout);
    assert.match(block("flaky"), /0\.1\.0 .*— running\b.*\n\s+health: ok \(checked /, cli.stdout);
  } finally {
    await k.close();
  }
});

Deno.test("a plugin unhealthy from its first check stays unhealthy in the API while restarts back off", async () => {
  const k = await startTestKeel();
  try {
    await install(k, "flaky", { unhealthy: true });
    const p = await eventually(async () => {
      const p = await pluginOf(k, "flaky");
      return p.health?.consecutiveFailures >= FAILURES_BEFORE_RESTART + 1 ? p : undefined;
    }, () => "flaky did not fail four checks");
    assert.equal(p.state, "unhealthy");
    assert.deepEqual(Object.keys(p.health).sort(), ["at", "consecutiveFailures", "error", "ok"]);
    assert.equal(p.health.error, "Plugin reported itself unhealthy: switched off by the test");
    // Restarted at the third failure, then only at the sixth, twelfth …: never at every check.
    const events = await auditOf(k, "plugin.unhealthy", "flaky");
    assert.ok(events.length >= 1);
    assert.deepEqual(events.map((e: any) => e.data.consecutiveFailures), [3, 6, 12, 24].slice(0, events.length));
  } finally {
    await k.close();
  }
});
