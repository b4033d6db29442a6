/**
 * @module
 * Adversarial tests of `process` isolation, end to end, in one Keel. A
 * hostile connector (`tests/fixtures/process/runaway`) is installed the way
 * a third-party plugin is: from a folder outside Keel's, so it runs in its
 * own sandboxed process by default. Each case drives one attack through a
 * real workflow and the Gateway and asserts the safe outcome (the run failed
 * with the right tag, nothing secret reached the run or the audit log) and
 * the audit event that records it. Plugins that exhaust memory, loop, flood
 * or send 100 MB are killed and restarted; at the end the host still serves
 * `/healthz`, a Worker plugin, the restarted plugin, and an intact audit
 * chain.
 *
 * Cases that show a file is not even visible (the OS layer, not only Deno's
 * permissions) need bwrap; where it cannot run they are skipped loudly.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { sandboxTools } from "../../core/plugins/_process.ts";

const FIXTURES = `${ROOT}/tests/fixtures/process`;
const SECRET_ENV = `canary-env-${crypto.randomUUID()}`;
const SECRET_FILE = `canary-file-${crypto.randomUUID()}`;
const SSH_KEY = `-----BEGIN OPENSSH PRIVATE KEY----- canary-ssh-${crypto.randomUUID()}`;
const UNGRANTED_BODY = `canary-ungranted-${crypto.randomUUID()}`;
/** Strings that must never appear in a run or an audit event. */
const CANARIES = [SECRET_ENV, SECRET_FILE, SSH_KEY, UNGRANTED_BODY, "PRIVATE KEY", "uid=0("];

interface Outcome {
  readonly run: any;
  readonly audit: any[];
}

/** Run the driver agent's workflow on one runaway effect and collect the run and its audit events. */
const drive = async (k: TestKeel, effect: string, args: unknown): Promise<Outcome> => {
  const started = await k.api("POST", "/api/workflows/drive_runaway/runs?wait=120", { input: { effect, args } });
  assert.equal(started.status, 202, JSON.stringify(started.body));
  const audit = await k.api("GET", `/api/audit?runId=${started.body.runId}`);
  assert.equal(audit.status, 200, JSON.stringify(audit.body));
  return { run: started.body, audit: audit.body.events };
};

const assertNoLeak = (o: unknown) => {
  const text = JSON.stringify(o);
  for (const canary of CANARIES) assert.ok(!text.includes(canary), `leaked "${canary}" in ${text.slice(0, 2000)}`);
};

/** The failed step of `effect` in a run. */
const stepOf = (o: Outcome, effect: string) => o.run.steps.find((s: any) => s.kind === "effect" && s.name === effect);

/** The run failed at `effect` with `tag` (and the plugin's own `pluginTag`), audited as effect.failed; nothing leaked. */
const assertRefused = (o: Outcome, effect: string, tag: string, pluginTag?: string) => {
  const show = JSON.stringify(o.run).slice(0, 2000);
  assert.equal(o.run.status, "failed", show);
  const step = stepOf(o, effect);
  assert.ok(step, `no journaled step for ${effect}: ${show}`);
  assert.equal(step.status, "failed", show);
  assert.equal(step.error?.tag, tag, show);
  if (pluginTag) assert.equal(step.error?.details?.tag, pluginTag, show);
  const event = o.audit.find((e) => e.type === "effect.failed" && e.data?.effect === effect);
  assert.ok(event, `no effect.failed audit event for ${effect}: ${JSON.stringify(o.audit).slice(0, 2000)}`);
  assert.equal(event.data.error?.tag, tag, JSON.stringify(event));
  assert.ok(o.audit.some((e) => e.type === "run.failed"), "run.failed is audited");
  assertNoLeak(o);
  return step.error as { tag: string; message: string; details?: any };
};

const assertDenied = (o: Outcome, effect: string, mentions: string) => {
  const error = assertRefused(o, effect, "PermissionDeniedError");
  assert.ok(error.message.includes(mentions), `"${error.message}" should name ${mentions}`);
};

const assertSucceeded = (o: Outcome, effect: string) => {
  assert.equal(o.run.status, "succeeded", JSON.stringify(o.run).slice(0, 2000));
  assert.ok(o.audit.some((e) => e.type === "effect.succeeded" && e.data?.effect === effect), "effect.succeeded");
  assertNoLeak(o);
  return o.run.output.result;
};

/** A tiny HTTP server on 127.0.0.1 that counts what reaches it. */
const serve = (body: string) => {
  let hits = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
    hits++;
    return new Response(body);
  });
  return { port: server.addr.port, hits: () => hits, close: () => server.shutdown() };
};

Deno.test("a hostile plugin in its own process cannot exhaust, flood or escape the host, which keeps serving", async (t) => {
  const tools = await sandboxTools();
  const bwrap = tools.bwrap !== undefined;
  if (!bwrap) {
    console.warn(
      `\n!!! SKIPPING the "not even visible" cases: bwrap cannot run here (${tools.bwrapProblem}).` +
        `\n!!! Plugin processes then rely on Deno's permissions alone. Install bubblewrap (see .ci/run).\n`,
    );
  }
  const granted = serve("granted server says hi");
  const ungranted = serve(UNGRANTED_BODY);
  const outside = await Deno.makeTempDir({ prefix: "keel-outside-" });
  await Deno.mkdir(`${outside}/home/.ssh`, { recursive: true });
  await Deno.writeTextFile(`${outside}/home/.ssh/id_rsa`, SSH_KEY);
  await Deno.writeTextFile(`${outside}/secret.txt`, SECRET_FILE);
  // A third-party copy of the fixture, importing Keel's SDK by absolute path: it defaults to process isolation.
  await Deno.mkdir(`${outside}/vendor/runaway`, { recursive: true });
  await Deno.copyFile(`${FIXTURES}/runaway/plugin.json`, `${outside}/vendor/runaway/plugin.json`);
  await Deno.writeTextFile(
    `${outside}/vendor/runaway/mod.ts`,
    (await Deno.readTextFile(`${FIXTURES}/runaway/mod.ts`))
      .replace('"../../../../core/sdk/mod.ts"', JSON.stringify(`${ROOT}/core/sdk/mod.ts`)),
  );
  Deno.env.set("KEEL_PROC_ALLOWED", "allowed-value");
  Deno.env.set("KEEL_PROC_SECRET", SECRET_ENV);
  let signalled = 0;
  const onSignal = () => signalled++;
  Deno.addSignalListener("SIGWINCH", onSignal);
  const k = await startTestKeel({ policies: { "p.yaml": "default: allow\nrules: []\n" }, rpcTimeoutMs: 15_000 });
  try {
    const installed = await k.api("POST", "/api/plugins", {
      path: `${outside}/vendor/runaway`,
      grant: { net: [`127.0.0.1:${granted.port}`], env: ["KEEL_PROC_ALLOWED"], read: ["."], write: ["."] },
      config: { port: granted.port },
    });
    assert.equal(installed.status, 201, JSON.stringify(installed.body));
    assert.equal(installed.body.plugin.isolation, "process", "a plugin from outside Keel runs in its own process");
    // The driving agent runs in a process too, so its workflow's calls to the host cross a stdio pipe.
    const driver = await k.api("POST", "/api/plugins", { path: `${FIXTURES}/driver`, grant: {}, isolation: "process" });
    assert.equal(driver.status, 201, JSON.stringify(driver.body));
    assert.equal(driver.body.plugin.isolation, "process", "the operator's override is honoured");
    // Links planted in the plugin's data dir by someone else: Deno's read grant follows them; bwrap hides the targets.
    const data = `${k.dataDir}/plugin-data/runaway`;
    await Deno.symlink(`${outside}/home/.ssh/id_rsa`, `${data}/ssh_key`);
    await Deno.symlink("/proc/self/environ", `${data}/environ`);
    await Deno.symlink(`${outside}/secret.txt`, `${data}/secret.txt`);

    const plugin = async () => (await k.api("GET", "/api/plugins")).body.plugins.find((p: any) => p.name === "runaway");
    const allAudit = async () => (await k.api("GET", "/api/audit?limit=10000")).body.events as any[];
    const crashesAudited = async () =>
      (await allAudit()).filter((e) => e.type === "plugin.crashed" && e.data.plugin === "runaway");
    /** The plugin was killed with `message`, audited as plugin.crashed, restarted, and serves again. */
    const assertKilledAndRestarted = async (before: { restarts: number; crashes: number }, message: RegExp) => {
      const crashes = await crashesAudited();
      assert.ok(crashes.length > before.crashes, "plugin.crashed is audited");
      assert.match(crashes.at(-1).data.error.message, message);
      const o = await drive(k, "runaway.echo", { value: "still here" });
      assert.deepEqual(assertSucceeded(o, "runaway.echo"), { value: "still here" });
      assert.ok((await plugin()).restarts > before.restarts, "a fresh process replaced the killed one");
      const health = await fetch(`${k.url}/healthz`);
      assert.equal(health.status, 200);
      await health.body?.cancel();
    };
    const snapshot = async () => ({ restarts: (await plugin()).restarts, crashes: (await crashesAudited()).length });

    await t.step("the plugin's start is audited with its sandbox", async () => {
      const started = (await allAudit()).find((e) => e.type === "plugin.started" && e.data.plugin === "runaway");
      assert.ok(started, "plugin.started");
      assert.equal(started.data.isolation, "process");
      assert.equal(started.data.sandbox, bwrap ? "bwrap" : "none");
      assert.equal((await plugin()).sandbox, bwrap ? "bwrap" : "none");
    });

    // ---- exhausting the host ---------------------------------------------------
    await t.step("a heap bomb kills only the plugin's process, which is restarted", async () => {
      const before = await snapshot();
      const o = await drive(k, "runaway.heap_bomb", {});
      const error = assertRefused(o, "runaway.heap_bomb", "PluginCrashedError");
      assert.match(error.message, /ran out of memory \(heap cap 256 MB\)/);
      await assertKilledAndRestarted(before, /ran out of memory/);
    });
    await t.step("memory outside the V8 heap (3 GB of ArrayBuffers) is refused by the OS limit", async () => {
      const o = await drive(k, "runaway.buffer_bomb", { chunks: 12 });
      const step = stepOf(o, "runaway.buffer_bomb");
      // Refused inside the plugin (RangeError) or the process killed: either way it never got 3 GB.
      if (step?.error?.tag === "PluginFailedError") {
        assertRefused(o, "runaway.buffer_bomb", "PluginFailedError", "AllocationRefused");
        assert.match(step.error.message, /refused after \d+ MB/);
      } else assertRefused(o, "runaway.buffer_bomb", "PluginCrashedError");
      const after = await drive(k, "runaway.echo", { value: "ok" });
      assert.deepEqual(assertSucceeded(after, "runaway.echo"), { value: "ok" });
    });
    await t.step("an infinite loop fails with PluginTimeoutError; the process is killed and restarted", async () => {
      const before = await snapshot();
      assertRefused(await drive(k, "runaway.spin", {}), "runaway.spin", "PluginTimeoutError");
      await assertKilledAndRestarted(before, /did not answer "effect runaway.spin" within 15000 ms/);
    });
    await t.step("a 100 MB message is cut off at 8 MB; the process is killed and restarted", async () => {
      const before = await snapshot();
      const o = await drive(k, "runaway.huge_message", { mb: 100 });
      const error = assertRefused(o, "runaway.huge_message", "PluginCrashedError");
      assert.match(error.message, /the limit is 8388608/);
      await assertKilledAndRestarted(before, /the limit is 8388608/);
    });
    await t.step("a message flood kills the process while /healthz keeps answering", async () => {
      const before = await snapshot();
      const flood = drive(k, "runaway.flood", { count: 20_000 });
      const health = await fetch(`${k.url}/healthz`);
      assert.equal(health.status, 200);
      await health.body?.cancel();
      const error = assertRefused(await flood, "runaway.flood", "PluginCrashedError");
      assert.match(error.message, /answer to no request/);
      await assertKilledAndRestarted(before, /answer to no request/);
    });
    await t.step("a flood of calls for a run it is not executing kills the process", async () => {
      const before = await snapshot();
      const error = assertRefused(
        await drive(k, "runaway.call_flood", { count: 100_000 }),
        "runaway.call_flood",
        "PluginCrashedError",
      );
      assert.match(error.message, /more than 64 calls for runs it is not executing/);
      await assertKilledAndRestarted(before, /calls for runs it is not executing/);
    });
    await t.step("a plugin printing to stdout behind the SDK's back is killed for breaking the protocol", async () => {
      const before = await snapshot();
      const error = assertRefused(
        await drive(k, "runaway.stdout_garbage", {}),
        "runaway.stdout_garbage",
        "PluginCrashedError",
      );
      assert.match(error.message, /not JSON/);
      await assertKilledAndRestarted(before, /not JSON/);
    });
    await t.step("Deno.exit ends only the plugin's process, which is restarted", async () => {
      const before = await snapshot();
      const error = assertRefused(await drive(k, "runaway.exit", {}), "runaway.exit", "PluginCrashedError");
      assert.match(error.message, /exited with code 3/);
      await assertKilledAndRestarted(before, /exited with code 3/);
    });

    // ---- signals ----------------------------------------------------------------
    await t.step("Deno.kill(Deno.pid) reaches only the plugin's own process, never Keel's", async () => {
      const o = await drive(k, "runaway.signal", { target: "self", signal: "SIGWINCH" });
      assertSucceeded(o, "runaway.signal");
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.equal(signalled, 0, "the host process was signalled by a plugin");
    });
    await t.step("signalling the parent or Keel's pid fails with PermissionDeniedError", async () => {
      assertDenied(await drive(k, "runaway.signal", { target: "parent", signal: "SIGWINCH" }), "runaway.signal", "run");
      const o = await drive(k, "runaway.signal", { target: "pid", pid: Deno.pid, signal: "SIGKILL" });
      assertDenied(o, "runaway.signal", "run");
      assert.equal(signalled, 0);
    });
    await t.step("SIGKILL to its own pid kills only the plugin's process, which is restarted", async () => {
      const before = await snapshot();
      const o = await drive(k, "runaway.signal", { target: "self", signal: "SIGKILL" });
      const error = assertRefused(o, "runaway.signal", "PluginCrashedError");
      assert.match(error.message, /killed by SIGKILL/);
      await assertKilledAndRestarted(before, /killed by SIGKILL/);
    });

    // ---- files ------------------------------------------------------------------
    await t.step("reading ~/.ssh/id_rsa fails with PermissionDeniedError", async () => {
      const path = `${Deno.env.get("HOME") ?? "/root"}/.ssh/id_rsa`;
      assertDenied(await drive(k, "runaway.read_file", { path }), "runaway.read_file", ".ssh/id_rsa");
      const other = `${outside}/home/.ssh/id_rsa`;
      assertDenied(await drive(k, "runaway.read_file", { path: other }), "runaway.read_file", ".ssh/id_rsa");
    });
    await t.step("reading /proc/self/environ fails with PermissionDeniedError", async () => {
      const o = await drive(k, "runaway.read_file", { path: "/proc/self/environ" });
      assertDenied(o, "runaway.read_file", "/proc/self/environ");
    });
    for (
      const [link, what] of [["ssh_key", "an SSH key"], ["environ", "/proc/self/environ"], ["secret.txt", "a secret"]]
    ) {
      await t.step({
        name: `a symlink in its data dir to ${what} leads nowhere: under bwrap the target does not exist`,
        ignore: !bwrap,
        fn: async () => {
          const o = await drive(k, "runaway.read_file", { path: `${data}/${link}` });
          assertRefused(o, "runaway.read_file", "PluginFailedError", "NotFound");
        },
      });
    }
    await t.step("writing outside its data dir fails with PermissionDeniedError", async () => {
      const path = `${outside}/dropped.txt`;
      assertDenied(await drive(k, "runaway.write_file", { path, text: "pwned" }), "runaway.write_file", path);
      await assert.rejects(Deno.stat(path), Deno.errors.NotFound);
    });
    await t.step("the plugin may write inside its own data dir (the grant works)", async () => {
      const o = await drive(k, "runaway.write_file", { path: `${data}/notes.txt`, text: "mine" });
      assertSucceeded(o, "runaway.write_file");
      assert.equal(await Deno.readTextFile(`${data}/notes.txt`), "mine");
    });

    // ---- environment -------------------------------------------------------------
    await t.step("the granted env variable is readable (the grant works)", async () => {
      const o = await drive(k, "runaway.env_get", { name: "KEEL_PROC_ALLOWED" });
      assert.deepEqual(assertSucceeded(o, "runaway.env_get"), { value: "allowed-value" });
    });
    await t.step("env beyond the grant fails with PermissionDeniedError", async () => {
      assertDenied(
        await drive(k, "runaway.env_get", { name: "KEEL_PROC_SECRET" }),
        "runaway.env_get",
        "KEEL_PROC_SECRET",
      );
      assertDenied(await drive(k, "runaway.env_get", { name: "HOME" }), "runaway.env_get", "HOME");
      assertDenied(await drive(k, "runaway.env_all", {}), "runaway.env_all", "env");
    });

    // ---- network -----------------------------------------------------------------
    await t.step("the granted host:port is reachable (the grant works)", async () => {
      const o = await drive(k, "runaway.fetch", { url: `http://127.0.0.1:${granted.port}/` });
      assert.equal(assertSucceeded(o, "runaway.fetch").text, "granted server says hi");
    });
    await t.step("net to an ungranted host fails with PermissionDeniedError and never reaches it", async () => {
      const before = ungranted.hits();
      const o = await drive(k, "runaway.fetch", { url: `http://127.0.0.1:${ungranted.port}/` });
      assertDenied(o, "runaway.fetch", `127.0.0.1:${ungranted.port}`);
      assertDenied(await drive(k, "runaway.fetch", { url: "http://169.254.169.254/" }), "runaway.fetch", "169.254");
      assert.equal(ungranted.hits(), before);
    });

    // ---- powers no plugin ever gets ------------------------------------------------
    await t.step("Deno.Command fails with PermissionDeniedError", async () => {
      assertDenied(await drive(k, "runaway.command", {}), "runaway.command", "run");
    });
    await t.step("Deno.dlopen fails with PermissionDeniedError", async () => {
      assertDenied(await drive(k, "runaway.dlopen", {}), "runaway.dlopen", "ffi");
    });
    await t.step("Deno.permissions.request returns denied and grants nothing", async () => {
      for (const name of ["read", "run", "env"]) {
        const o = await drive(k, "runaway.ask_permission", { name });
        assert.deepEqual(assertSucceeded(o, "runaway.ask_permission"), { state: "denied" });
      }
      assertDenied(await drive(k, "runaway.read_file", { path: "/etc/passwd" }), "runaway.read_file", "/etc/passwd");
    });

    // ---- the host still serves -------------------------------------------------------
    await t.step(
      "after all of it the host serves /healthz, the agent, the restarted plugin, and an intact audit chain",
      async () => {
        const health = await fetch(`${k.url}/healthz`);
        assert.equal(health.status, 200);
        assert.equal((await health.json()).ok, true);
        const benign = await k.api("POST", "/api/workflows/drive_runaway/runs?wait=60", {
          input: { effect: "runaway.echo", args: { value: "end" } },
        });
        assert.equal(benign.body.status, "succeeded", JSON.stringify(benign.body));
        const status = await plugin();
        assert.equal(status.state, "running");
        assert.ok(status.restarts >= 7, `restarted after each kill: ${status.restarts}`);
        const verify = await k.api("GET", "/api/audit/verify");
        assert.equal(verify.body.ok, true, JSON.stringify(verify.body));
        assertNoLeak(await allAudit());
        assert.equal(signalled, 0);
      },
    );
  } finally {
    await k.close();
    Deno.removeSignalListener("SIGWINCH", onSignal);
    await granted.close();
    await ungranted.close();
    Deno.env.delete("KEEL_PROC_ALLOWED");
    Deno.env.delete("KEEL_PROC_SECRET");
    await Deno.remove(outside, { recursive: true });
  }
});
