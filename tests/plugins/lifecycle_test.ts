/**
 * @module
 * The plugin lifecycle over the real HTTP API of a real Keel (Deno KV files,
 * plugin Workers, the Gateway and policy): install from a folder and from a
 * `.tar.gz` made by the OS `tar` into `<data dir>/plugins/<name>/<version>`;
 * upgrades that carry the old grant or wait for a new one while the old
 * version keeps serving; grants recorded with the manifest hash; several
 * versions side by side, also after a restart; runs pinned to the agent
 * version they started with; removal refused while pinned runs wait; and
 * the CLI that drives all of it.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, TEST_TOKEN, type TestKeel } from "../_support/keel.ts";
import { osTarGz } from "../_support/tar.ts";
import { variant } from "../fixtures/lifecycle/variant.ts";

/** `lc.send` (irreversible) waits for approval; everything else is allowed. */
const POLICIES = {
  "p.yaml": "default: allow\nrules:\n  - id: gate-send\n    match:\n      effect: lc.send\n    decision: approve\n",
};

const scratch = Deno.realPathSync(await Deno.makeTempDir({ prefix: "keel-lifecycle-" }));
globalThis.addEventListener("unload", () => Deno.removeSync(scratch, { recursive: true }));

const install = (k: TestKeel, path: string, grant: unknown = {}) => k.api("POST", "/api/plugins", { path, grant });
const upgrade = (k: TestKeel, name: string, path: string, extra: Record<string, unknown> = {}) =>
  k.api("POST", `/api/plugins/${name}/upgrade`, { path, ...extra });
const grantVersion = (k: TestKeel, name: string, version: string, grant: unknown) =>
  k.api("POST", `/api/plugins/${name}/versions/${version}/grant`, { grant });
const ok = (r: { status: number; body: any }, status = 201) => {
  assert.equal(r.status, status, JSON.stringify(r.body));
  return r.body;
};
/** `name version activation` for every installed version of `name`. */
const versions = async (k: TestKeel, name: string) =>
  (await k.api("GET", "/api/plugins")).body.plugins.filter((p: any) => p.name === name).map((p: any) =>
    `${p.version} ${p.activation}`
  );
const audit = async (k: TestKeel, type: string) =>
  (await k.api("GET", "/api/audit?limit=10000")).body.events.filter((e: any) => e.type === type);
/** Run `lc_echo` to the end; returns `{agentVersion, echoed: {version, echoed}}`. */
const echo = async (k: TestKeel, value = "hi") => {
  const r = await k.api("POST", "/api/workflows/lc_echo/runs?wait=30", { input: { value } });
  assert.equal(r.body.status, "succeeded", JSON.stringify(r.body));
  return r.body.output;
};
const exists = (path: string) => {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
};

/** A Keel with echo 1.0.0 and agent 1.0.0 installed from temp folders. */
const withPlugins = async (body: (k: TestKeel, store: string) => Promise<void>, dataDir?: string) => {
  const k = await startTestKeel({ policies: POLICIES, ...(dataDir ? { dataDir } : {}) });
  try {
    await body(k, `${Deno.realPathSync(k.dataDir)}/plugins`);
  } finally {
    await k.close();
  }
};
const installBoth = async (k: TestKeel) => {
  ok(await install(k, await variant("echo", { version: "1.0.0" })));
  ok(await install(k, await variant("agent", { version: "1.0.0" })));
};

Deno.test("install from a folder stores a copy in <data dir>/plugins/<name>/<version>, and later edits to the folder change nothing", async () => {
  await withPlugins(async (k, store) => {
    const source = await variant("echo", { version: "1.0.0" });
    const { plugin } = ok(await install(k, source));
    assert.equal(plugin.path, `${store}/lc-echo/1.0.0`);
    assert.equal(plugin.source, source);
    assert.equal(plugin.activation, "active");
    assert.match(plugin.packageHash, /^[0-9a-f]{64}$/);
    assert.equal(
      await Deno.readTextFile(`${plugin.path}/plugin.json`),
      await Deno.readTextFile(`${source}/plugin.json`),
    );
    assert.equal(await Deno.readTextFile(`${plugin.path}/version.ts`), await Deno.readTextFile(`${source}/version.ts`));
    // Only the SDK import differs: it now names Keel's own core/sdk, from wherever the copy lives.
    const stored = await Deno.readTextFile(`${plugin.path}/mod.ts`);
    const original = await Deno.readTextFile(`${source}/mod.ts`);
    assert.match(original, /from "(\.\.\/)+.*core\/sdk\/mod\.ts"/);
    assert.ok(stored.includes(`from "file://${Deno.realPathSync(ROOT)}/core/sdk/mod.ts"`), stored);
    assert.equal(
      stored.replace(/from "[^"]*core\/sdk\/mod\.ts"/, "SDK"),
      original.replace(/from "[^"]*core\/sdk\/mod\.ts"/, "SDK"),
    );

    ok(await install(k, await variant("agent", { version: "1.0.0" })));
    assert.deepEqual(await echo(k), { agentVersion: "1.0.0", echoed: { version: "1.0.0", echoed: "hi" } });
    // The operator (or an attacker with write access to the folder) edits the source: nothing changes.
    await Deno.writeTextFile(`${source}/version.ts`, 'export const VERSION = "edited";\n');
    await Deno.writeTextFile(`${source}/mod.ts`, "throw new Error('edited');\n");
    await k.api("POST", "/api/plugins/lc-echo/versions/1.0.0/grant", { grant: {} }); // restarts its Worker
    assert.deepEqual((await echo(k)).echoed, { version: "1.0.0", echoed: "hi" });
    await Deno.remove(source, { recursive: true });
    assert.deepEqual((await echo(k)).echoed, { version: "1.0.0", echoed: "hi" });
    const installed = await audit(k, "plugin.installed");
    assert.equal(installed[0].data.source, source);
    assert.equal(installed[0].data.packageHash, plugin.packageHash);
  });
});

Deno.test("install from a .tar.gz made by the OS tar runs the stored copy; preview reads it without installing", async () => {
  await withPlugins(async (k, store) => {
    const folder = await variant("echo", { version: "1.0.0", dir: `${scratch}/tar-src/lc-echo` });
    const archive = await osTarGz(folder, `${scratch}/lc-echo-1.0.0.tar.gz`, { top: "lc-echo" });
    const preview = ok(await k.api("POST", "/api/plugins/preview", { path: archive }), 200);
    assert.equal(preview.manifest.name, "lc-echo");
    assert.deepEqual(preview.requested, { net: [], env: [], read: [], write: [] });
    assert.deepEqual(await versions(k, "lc-echo"), [], "preview installs nothing");
    assert.deepEqual([...Deno.readDirSync(store)].map((e) => e.name).filter((n) => n !== ".staging"), []);

    const { plugin } = ok(await install(k, archive));
    assert.equal(plugin.source, archive);
    assert.equal(plugin.path, `${store}/lc-echo/1.0.0`);
    assert.deepEqual([...Deno.readDirSync(plugin.path)].map((e) => e.name).sort(), [
      "mod.ts",
      "plugin.json",
      "version.ts",
    ]);
    ok(await install(k, await variant("agent", { version: "1.0.0" })));
    assert.deepEqual((await echo(k, "from a tarball")).echoed, { version: "1.0.0", echoed: "from a tarball" });
    assert.ok(!exists(`${store}/.staging`) || [...Deno.readDirSync(`${store}/.staging`)].length === 0);
  });
});

Deno.test("preview without config shows the permissions' {field} templates unfilled; a config given is checked and fills them", async () => {
  await withPlugins(async (k) => {
    const smtp = `${ROOT}/plugins/smtp`;
    const bare = ok(await k.api("POST", "/api/plugins/preview", { path: smtp }), 200);
    assert.equal(bare.manifest.name, "smtp");
    assert.deepEqual(bare.requested, { net: ["{host}:{port}"], env: [], read: [], write: [] });
    const config = { host: "127.0.0.1", port: 2525, from: "keel@example.test" };
    const filled = ok(await k.api("POST", "/api/plugins/preview", { path: smtp, config }), 200);
    assert.deepEqual(filled.requested, { net: ["127.0.0.1:2525"], env: [], read: [], write: [] });
    const partial = await k.api("POST", "/api/plugins/preview", { path: smtp, config: { host: "127.0.0.1" } });
    assert.equal(partial.status, 400);
    assert.match(partial.body.error.message, /^Config for plugin "smtp" is invalid: field "(port|from)" is required$/);
    // Installing still needs a config its schema accepts.
    const unconfigured = await install(k, smtp);
    assert.equal(unconfigured.status, 400);
    assert.match(unconfigured.body.error.message, /^Config for plugin "smtp" is invalid: field "host" is required$/);
    assert.deepEqual(await versions(k, "smtp"), []);
  });
});

Deno.test("upgrading with another plugin's package says whose package it is, before the old config is tried on it", async () => {
  await withPlugins(async (k) => {
    const config = { type: "object", additionalProperties: false, properties: { greeting: { type: "string" } } };
    const echo = await variant("echo", { version: "1.0.0", manifest: (m) => ({ ...m, config }) });
    ok(await k.api("POST", "/api/plugins", { path: echo, grant: {}, config: { greeting: "hi" } }));
    const other = await variant("agent", {
      version: "2.0.0",
      manifest: (m) => ({ ...m, config: { type: "object", additionalProperties: false } }),
    });
    for (const extra of [{}, { dryRun: true }, { config: {} }]) {
      const r = await upgrade(k, "lc-echo", other, extra);
      assert.equal(r.status, 400, JSON.stringify(extra));
      assert.equal(r.body.error.tag, "InvalidInputError");
      assert.equal(r.body.error.message, `Cannot upgrade "lc-echo": "${other}" holds plugin "lc-agent"`);
    }
    assert.deepEqual(await versions(k, "lc-echo"), ["1.0.0 active"]);
  });
});

Deno.test("a plugin folder moved out of Keel's tree is refused saying how to install it; packed as a .tar.gz it installs", async () => {
  await withPlugins(async (k) => {
    const moved = await variant("echo", { version: "1.0.0", dir: `${scratch}/moved/lc-echo` });
    const mod = await Deno.readTextFile(`${moved}/mod.ts`);
    await Deno.writeTextFile(`${moved}/mod.ts`, mod.replace(/"[^"]*core\/sdk\/mod\.ts"/, '"../../core/sdk/mod.ts"'));
    const r = await install(k, moved);
    assert.equal(r.status, 400);
    assert.equal(r.body.error.tag, "ModuleGraphError");
    assert.equal(
      r.body.error.message,
      `The plugin imports Keel's SDK as "../../core/sdk/mod.ts", which does not resolve from "${moved}": pack it as a .tar.gz (see docs/plugins.md) or fix the relative path`,
    );
    assert.deepEqual(await versions(k, "lc-echo"), []);
    const { plugin } = ok(await install(k, await osTarGz(moved, `${scratch}/moved-lc-echo.tar.gz`)));
    assert.equal(plugin.activation, "active");
  });
});

Deno.test("an upgrade asking for nothing more becomes active with the old grant; the old version stays installed", async () => {
  await withPlugins(async (k) => {
    await installBoth(k);
    const next = await variant("echo", { version: "1.1.0" });
    const dry = ok(await upgrade(k, "lc-echo", next, { dryRun: true }), 201);
    assert.equal(dry.dryRun, true);
    assert.equal(dry.from, "1.0.0");
    assert.equal(dry.diff.escalates, false);
    assert.deepEqual(await versions(k, "lc-echo"), ["1.0.0 active"], "a dry run installs nothing");

    const { plugin, from, diff } = ok(await upgrade(k, "lc-echo", next));
    assert.equal(from, "1.0.0");
    assert.equal(diff.escalates, false);
    assert.equal(plugin.activation, "active");
    assert.deepEqual(plugin.grant, { net: [], env: [], read: [], write: [] });
    assert.deepEqual(await versions(k, "lc-echo"), ["1.0.0 inactive", "1.1.0 active"]);
    assert.deepEqual((await echo(k)).echoed.version, "1.1.0");
    const [event] = await audit(k, "plugin.upgraded");
    assert.equal(event.actor, "operator");
    assert.equal(event.data.from, "1.0.0");
    assert.equal(event.data.version, "1.1.0");
    assert.equal(event.data.carriedGrant, true);
    assert.equal(event.data.manifestHash, plugin.manifestHash);

    // Narrower permissions carry too: the old grant, cut to what the new version still asks for.
    ok(await grantVersion(k, "lc-echo", "1.1.0", {}), 200);
    const wide = await variant("echo", {
      version: "1.2.0",
      manifest: (m) => ({ ...m, permissions: { net: ["127.0.0.1:9"], env: ["LC_TOKEN"] } }),
    });
    ok(await upgrade(k, "lc-echo", wide));
    ok(await grantVersion(k, "lc-echo", "1.2.0", { net: ["127.0.0.1:9"], env: ["LC_TOKEN"] }), 200);
    const narrow = await variant("echo", {
      version: "1.3.0",
      manifest: (m) => ({ ...m, permissions: { env: ["LC_TOKEN"] } }),
    });
    const narrowed = ok(await upgrade(k, "lc-echo", narrow));
    assert.equal(narrowed.plugin.activation, "active");
    assert.deepEqual(narrowed.plugin.grant, { net: [], env: ["LC_TOKEN"], read: [], write: [] });
    assert.ok(narrowed.diff.lines.includes("no longer asks to connect to 127.0.0.1:9"), narrowed.diff.lines);
  });
});

Deno.test("an upgrade asking for more stays disabled while the old version keeps serving, until it is granted", async () => {
  await withPlugins(async (k) => {
    await installBoth(k);
    const more = await variant("echo", {
      version: "2.0.0",
      manifest: (m) => ({ ...m, permissions: { net: ["127.0.0.1:9"] } }),
    });
    const { plugin, diff } = ok(await upgrade(k, "lc-echo", more));
    assert.equal(plugin.activation, "needs_grant");
    assert.deepEqual(plugin.grant, { net: [], env: [], read: [], write: [] });
    assert.equal(diff.escalates, true);
    assert.deepEqual(diff.permissions.added.net, ["127.0.0.1:9"]);
    assert.deepEqual(plugin.pendingChanges, ["asks to connect to 127.0.0.1:9 (new)"]);
    assert.deepEqual(await versions(k, "lc-echo"), ["1.0.0 active", "2.0.0 needs_grant"]);
    const listed = (await k.api("GET", "/api/plugins")).body.plugins.find((p: any) => p.version === "2.0.0");
    assert.equal(listed.state, "stopped", "a version waiting for a grant never runs");
    // 1.0.0 keeps serving real workflows through the Gateway meanwhile.
    assert.deepEqual(await echo(k, "during"), {
      agentVersion: "1.0.0",
      echoed: { version: "1.0.0", echoed: "during" },
    });
    const [held] = await audit(k, "plugin.upgrade_held");
    assert.deepEqual(held.data.permissionsAdded.net, ["127.0.0.1:9"]);

    // Granting more than 2.0.0 requests is refused, and audited; 1.0.0 still serves.
    const beyond = await grantVersion(k, "lc-echo", "2.0.0", { net: ["127.0.0.1:9", "127.0.0.1:22"] });
    assert.equal(beyond.status, 400);
    assert.equal(beyond.body.error.tag, "GrantError");
    assert.equal((await audit(k, "plugin.refused")).at(-1).data.action, "grant");
    assert.deepEqual((await echo(k)).echoed.version, "1.0.0");

    const granted = ok(await grantVersion(k, "lc-echo", "2.0.0", { net: ["127.0.0.1:9"] }), 200);
    assert.equal(granted.plugin.activation, "active");
    assert.deepEqual(granted.plugin.grant.net, ["127.0.0.1:9"]);
    assert.equal(granted.plugin.pendingChanges, undefined);
    assert.deepEqual(await versions(k, "lc-echo"), ["1.0.0 inactive", "2.0.0 active"]);
    assert.deepEqual((await echo(k)).echoed.version, "2.0.0");
    const [event] = await audit(k, "plugin.granted");
    assert.equal(event.data.manifestHash, granted.plugin.manifestHash, "the grant is recorded with the manifest hash");
    assert.deepEqual(event.data.grant.net, ["127.0.0.1:9"]);
    assert.equal(event.data.was, "needs_grant");
    assert.equal(event.data.replaces, "1.0.0");

    // Granting 1.0.0 again rolls back to it.
    ok(await grantVersion(k, "lc-echo", "1.0.0", {}), 200);
    assert.deepEqual(await versions(k, "lc-echo"), ["1.0.0 active", "2.0.0 inactive"]);
    assert.deepEqual((await echo(k)).echoed.version, "1.0.0");
  });
});

Deno.test("an upgrade changing an effect's declaration, the agent's uses or its isolation stays disabled", async () => {
  await withPlugins(async (k) => {
    await installBoth(k);
    const effect = (change: (e: any) => any) => (m: any) => ({
      ...m,
      effects: m.effects.map((e: any) => e.name === "lc.echo" ? change(e) : e),
    });
    const cases: Array<[string, "echo" | "agent", (m: any) => any, RegExp]> = [
      [
        "class read → write",
        "echo",
        effect((e) => ({ ...e, class: "write" })),
        /changes effect lc\.echo: class.*read → write/,
      ],
      [
        "a new input field",
        "echo",
        effect((e) => ({ ...e, input: { type: "object" } })),
        /changes effect lc\.echo: input/,
      ],
      ["idempotency", "echo", effect((e) => ({ ...e, idempotency: "key" })), /changes effect lc\.echo: idempotency/],
      [
        "a new effect",
        "echo",
        (m) => ({ ...m, effects: [...m.effects, { ...m.effects[0], name: "lc.more" }] }),
        /adds effect lc\.more/,
      ],
      [
        "a new effect in uses",
        "agent",
        (m) => ({ ...m, uses: [...m.uses, "lc.more"] }),
        /asks Keel for effect lc\.more \(new\)/,
      ],
      ["weaker isolation", "echo", (m) => ({ ...m, isolation: "worker" }), /weaker isolation/],
    ];
    let minor = 1;
    for (const [what, base, change, line] of cases) {
      const name = base === "echo" ? "lc-echo" : "lc-agent";
      const dir = await variant(base, { version: `1.${minor++}.0`, manifest: change });
      // Both versions come from folders outside Keel, so both run as processes unless one asks otherwise.
      const body = ok(await upgrade(k, name, dir));
      assert.equal(body.plugin.activation, "needs_grant", what);
      assert.ok(body.diff.lines.some((l: string) => line.test(l)), `${what}: ${body.diff.lines}`);
    }
    // Nothing was activated: the 1.0.0 pair still serves.
    assert.deepEqual(await echo(k), { agentVersion: "1.0.0", echoed: { version: "1.0.0", echoed: "hi" } });
    // A description-only change is not more power: it activates with the old grant.
    const prose = await variant("echo", {
      version: "1.9.0",
      manifest: effect((e) => ({ ...e, description: "Reworded" })),
    });
    const reworded = ok(await upgrade(k, "lc-echo", prose));
    assert.equal(reworded.plugin.activation, "active");
    assert.deepEqual(reworded.diff.lines, ["describes effect lc.echo differently"]);
  });
});

Deno.test("a run pins its agent version: started on 1.0.0 and waiting for approval, it finishes on 1.0.0 after 1.1.0 is activated", async () => {
  await withPlugins(async (k, store) => {
    await installBoth(k);
    const first = await k.api("POST", "/api/workflows/lc_flow/runs?wait=30", { input: { to: "ada" } });
    assert.equal(first.body.status, "waiting_approval", JSON.stringify(first.body));
    assert.equal(first.body.pluginVersion, "1.0.0");
    const next = ok(await upgrade(k, "lc-agent", await variant("agent", { version: "1.1.0" })));
    assert.equal(next.plugin.activation, "active");

    // Removal is refused while the pinned run waits: the version, and the whole plugin.
    for (const path of ["/api/plugins/lc-agent/versions/1.0.0", "/api/plugins/lc-agent"]) {
      const refused = await k.api("DELETE", path);
      assert.equal(refused.status, 409, JSON.stringify(refused.body));
      assert.equal(refused.body.error.tag, "ConflictError");
      assert.deepEqual(refused.body.error.details.runs, [first.body.runId]);
    }
    const refusedEvent = (await audit(k, "plugin.refused")).at(-1);
    assert.equal(refusedEvent.data.action, "remove");
    assert.equal(refusedEvent.data.error.tag, "ConflictError");
    assert.ok(exists(`${store}/lc-agent/1.0.0/mod.ts`));

    const [approval] = (await k.api("GET", "/api/approvals?status=pending")).body.approvals;
    ok(await k.api("POST", `/api/approvals/${approval.id}/approve`, {}), 200);
    const done = (await k.api("GET", `/api/runs/${first.body.runId}?wait=30`)).body;
    assert.equal(done.status, "succeeded", JSON.stringify(done));
    assert.equal(done.output.agentVersion, "1.0.0", "the run finished on the version it started with");
    assert.deepEqual(done.output.sent, { version: "1.0.0", sent: { to: "ada" } });
    // A new run uses the active version.
    const second = await k.api("POST", "/api/workflows/lc_flow/runs?wait=30", { input: { to: "bob" } });
    assert.equal(second.body.pluginVersion, "1.1.0");

    // 1.0.0 is no longer pinned by a live run: it can go. 1.1.0 cannot, being active and pinned.
    ok(await k.api("DELETE", "/api/plugins/lc-agent/versions/1.0.0"), 200);
    assert.ok(!exists(`${store}/lc-agent/1.0.0`));
    assert.ok(exists(`${store}/lc-agent/1.1.0/mod.ts`));
    assert.deepEqual(await versions(k, "lc-agent"), ["1.1.0 active"]);

    // Forced: the plugin goes, with its store folder and data; the run pinned to it is cancelled.
    const forced = ok(await k.api("DELETE", "/api/plugins/lc-agent?force=true"), 200);
    assert.deepEqual(forced, { name: "lc-agent", removed: ["1.1.0"], whole: true, cancelledRuns: [second.body.runId] });
    assert.ok(!exists(`${store}/lc-agent`));
    assert.ok(!exists(`${Deno.realPathSync(k.dataDir)}/plugin-data/lc-agent`));
    const removed = (await audit(k, "plugin.removed")).at(-1);
    assert.equal(removed.data.force, true);
    assert.deepEqual(removed.data.pinnedRuns, [second.body.runId]);
    // Its approval can release nothing now.
    assert.deepEqual((await k.api("GET", "/api/approvals?status=pending")).body.approvals, []);
    const orphan = (await k.api("GET", `/api/runs/${second.body.runId}`)).body;
    assert.equal(orphan.status, "cancelled");
    assert.equal(orphan.cancelled.reason, 'Plugin "lc-agent" was removed');
  });
});

Deno.test("several versions side by side keep their activation across a restart", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-lifecycle-data-" });
  try {
    await withPlugins(async (k) => {
      await installBoth(k);
      ok(await upgrade(k, "lc-echo", await variant("echo", { version: "1.1.0" })));
      const more = await variant("echo", {
        version: "2.0.0",
        manifest: (m) => ({ ...m, permissions: { env: ["X"] } }),
      });
      ok(await upgrade(k, "lc-echo", more));
    }, dataDir);
    await withPlugins(async (k, store) => {
      assert.deepEqual(await versions(k, "lc-echo"), ["1.0.0 inactive", "1.1.0 active", "2.0.0 needs_grant"]);
      assert.deepEqual([...Deno.readDirSync(`${store}/lc-echo`)].map((e) => e.name).sort(), [
        "1.0.0",
        "1.1.0",
        "2.0.0",
      ]);
      assert.deepEqual(await echo(k), { agentVersion: "1.0.0", echoed: { version: "1.1.0", echoed: "hi" } });
    }, dataDir);
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("installing over an installed plugin: the identical package re-grants, anything else is a clear conflict", async () => {
  await withPlugins(async (k) => {
    const source = await variant("echo", { version: "1.0.0" });
    ok(await install(k, source));
    const again = ok(await install(k, source, {}));
    assert.equal(again.plugin.activation, "active");
    const other = await variant("echo", { version: "1.0.0", manifest: (m) => ({ ...m, description: "Other files" }) });
    const same = await install(k, other);
    assert.equal(same.status, 409);
    assert.match(same.body.error.message, /lc-echo" 1\.0\.0 is already installed from ".*" with other files/);
    const newer = await install(k, await variant("echo", { version: "1.1.0" }));
    assert.equal(newer.status, 409);
    assert.match(newer.body.error.message, /upgrade it to 1\.1\.0 with "keel plugin upgrade"/);
    const stranger = await variant("echo", { version: "1.0.0", manifest: (m) => ({ ...m, name: "lc-other" }) });
    const clash = await install(k, stranger);
    assert.equal(clash.status, 409);
    assert.match(clash.body.error.message, /declares effect "lc\.echo", which plugin "lc-echo" provides/);
    const wrong = await upgrade(k, "lc-echo", stranger);
    assert.equal(wrong.status, 400);
    assert.match(wrong.body.error.message, /holds plugin "lc-other"/);
    const missing = await upgrade(k, "nope", source);
    assert.equal(missing.status, 404);
    const sameVersion = await upgrade(k, "lc-echo", source);
    assert.equal(sameVersion.status, 409);
    assert.match(sameVersion.body.error.message, /an upgrade needs a new version/);
    assert.deepEqual(await versions(k, "lc-echo"), ["1.0.0 active"]);
    assert.equal((await k.api("DELETE", "/api/plugins/lc-echo/versions/9.9.9")).status, 404);
    assert.equal((await k.api("DELETE", "/api/plugins/lc-echo?force=maybe")).status, 400);
  });
});

// ---- CLI ---------------------------------------------------------------------------------------

const cli = async (k: TestKeel, args: string[]) => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}/main.ts`, ...args],
    env: { KEEL_URL: k.url, KEEL_TOKEN: TEST_TOKEN, KEEL_DATA_DIR: `${scratch}/cli-data`, NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
};

Deno.test("`keel plugin upgrade|grant|remove|list` show versions and permission changes in plain words", async () => {
  await withPlugins(async (k) => {
    const v1 = await variant("echo", { version: "1.0.0" });
    const archive = await osTarGz(v1, `${scratch}/cli-echo.tar.gz`);
    const installed = await cli(k, ["plugin", "install", archive, "--isolation", "worker", "--yes"]);
    assert.equal(installed.code, 0, installed.stderr);
    assert.match(installed.stdout, /^Plugin lc-echo 1\.0\.0 \(connector\)/);
    assert.match(installed.stdout, /lc\.send \(irreversible\)/);

    const more = await variant("echo", {
      version: "2.0.0",
      manifest: (m) => ({ ...m, permissions: { net: ["127.0.0.1:9"] } }),
    });
    const refused = await cli(k, ["plugin", "upgrade", more]);
    assert.equal(refused.code, 1, "without --yes and without a terminal, nothing is upgraded");
    assert.match(refused.stdout, /Upgrade lc-echo 1\.0\.0 → 2\.0\.0/);
    assert.match(refused.stdout, / {2}- asks to connect to 127\.0\.0\.1:9 \(new\)/);
    assert.match(refused.stdout, /stays disabled, and 1\.0\.0 keeps serving, until you grant it/);
    assert.deepEqual(await versions(k, "lc-echo"), ["1.0.0 active"]);

    const upgraded = await cli(k, ["plugin", "upgrade", more, "--isolation", "worker", "--yes"]);
    assert.equal(upgraded.code, 0, upgraded.stderr);
    assert.match(upgraded.stdout, /Installed lc-echo 2\.0\.0, disabled until granted; 1\.0\.0 keeps serving/);
    const list = await cli(k, ["plugin", "list"]);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, /^lc-echo \(connector\)/m);
    assert.match(list.stdout, /^ {2}1\.0\.0 active — running, worker$/m);
    assert.match(list.stdout, /^ {2}2\.0\.0 disabled: needs a grant, worker$/m);
    assert.match(list.stdout, /^ {4}changes: asks to connect to 127\.0\.0\.1:9 \(new\)$/m);
    assert.match(list.stdout, /^ {4}grant it: deno task keel plugin grant lc-echo 2\.0\.0$/m);

    const granted = await cli(k, ["plugin", "grant", "lc-echo", "2.0.0", "--yes"]);
    assert.equal(granted.code, 0, granted.stderr);
    assert.match(granted.stdout, / {2}- connect to 127\.0\.0\.1:9/);
    assert.match(granted.stdout, /Granted lc-echo 2\.0\.0; it is the active version/);
    assert.deepEqual(await versions(k, "lc-echo"), ["1.0.0 inactive", "2.0.0 active"]);

    const same = await variant("echo", {
      version: "2.1.0",
      manifest: (m) => ({ ...m, permissions: { net: ["127.0.0.1:9"] } }),
    });
    const carried = await cli(k, ["plugin", "upgrade", same, "--isolation", "worker", "--yes"]);
    assert.equal(carried.code, 0, carried.stderr);
    assert.match(carried.stdout, /It declares exactly what 2\.0\.0 declares/);
    assert.match(carried.stdout, /it will run with 2\.0\.0's grant[^]*connect to 127\.0\.0\.1:9/);
    assert.match(carried.stdout, /Upgraded lc-echo to 2\.1\.0/);

    const removeOne = await cli(k, ["plugin", "remove", "lc-echo", "--version", "1.0.0"]);
    assert.equal(removeOne.code, 0, removeOne.stderr);
    assert.equal(removeOne.stdout.trim(), "Removed lc-echo 1.0.0");
    const active = await cli(k, ["plugin", "remove", "lc-echo", "--version", "2.1.0"]);
    assert.equal(active.code, 1);
    assert.match(active.stderr, /^error: ConflictError: Plugin "lc-echo" 2\.1\.0 is the active version/);
    const all = await cli(k, ["plugin", "remove", "lc-echo"]);
    assert.equal(all.code, 0, all.stderr);
    assert.equal(all.stdout.trim(), "Removed lc-echo (2.0.0, 2.1.0) and its data");
    assert.equal((await cli(k, ["plugin", "list"])).stdout.trim(), "No plugins installed");
    const unknown = await cli(k, ["plugin", "grant", "lc-echo", "1.0.0"]);
    assert.equal(unknown.stderr.trim(), 'error: No plugin named "lc-echo" is installed');
  });
});

Deno.test("`keel plugin --help` documents install, upgrade, grant, remove and list", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}/main.ts`, "plugin", "--help"],
    env: { NO_COLOR: "1", KEEL_DATA_DIR: `${scratch}/help-data` },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  for (
    const usage of [
      "install PATH|ARCHIVE.tar.gz",
      "upgrade PATH|ARCHIVE.tar.gz",
      "grant NAME VERSION",
      "remove NAME [--version V] [--force]",
      "list",
    ]
  ) {
    assert.ok(text.includes(`deno task keel plugin ${usage}`), usage);
  }
});
