/**
 * @module
 * Adversarial install attempts: manifests asking for powers Keel never
 * grants, grants beyond the request, wildcard and traversal permissions, and
 * plugins whose module graph reaches outside their folder (directly, through
 * a symlink, through `node:` builtins or remote URLs). Each must be refused
 * over the real HTTP API with the right tag, be audited as `plugin.refused`,
 * and leave nothing installed. One Keel serves all cases and must still serve
 * at the end.
 *
 * Plugins that cannot live in the repository as files (malformed JSON, a
 * text import of /etc/hostname that `deno check` rejects, symlinks) are
 * written to a temp dir by the test; the rest are under
 * `tests/fixtures/hostile/`.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";

const HOSTILE = `${ROOT}/tests/fixtures/hostile`;
const SDK = `file://${ROOT}/core/sdk/mod.ts`;

/** A connector manifest with one harmless effect, to be bent by each case. */
const manifest = (name: string, extra: Record<string, unknown> = {}) => ({
  name,
  version: "0.1.0",
  kind: "connector",
  description: `Generated hostile plugin ${name}`,
  effects: [{ name: `${name.replaceAll("-", "_")}.probe`, class: "read", description: "Probe", input: {} }],
  ...extra,
});

/** Install and expect a refusal with `tag` (and `status`), audited as plugin.refused; returns the error. */
const refused = async (k: TestKeel, body: Record<string, unknown>, tag: string, status: number) => {
  const r = await k.api("POST", "/api/plugins", body);
  assert.equal(r.status, status, JSON.stringify(r.body));
  assert.equal(r.body.error?.tag, tag, JSON.stringify(r.body));
  const events = (await k.api("GET", "/api/audit?limit=20")).body.events;
  const event = events.findLast((e: any) => e.type === "plugin.refused" && e.data.path === body.path);
  assert.ok(event, `install refusal of ${body.path} is audited: ${JSON.stringify(events.slice(-3))}`);
  assert.equal(event.data.error.tag, tag, JSON.stringify(event));
  assert.equal(event.actor, "operator");
  return r.body.error as { tag: string; message: string };
};

Deno.test("hostile installs are refused with the right tag, audited, and leave the host serving", async (t) => {
  const tmp = await Deno.makeTempDir({ prefix: "keel-hostile-" });
  /** Write a plugin folder under the temp dir. */
  const plugin = async (folder: string, files: Record<string, string>) => {
    const dir = `${tmp}/${folder}`;
    await Deno.mkdir(dir, { recursive: true });
    for (const [name, text] of Object.entries(files)) await Deno.writeTextFile(`${dir}/${name}`, text);
    return dir;
  };
  const modTs = (name: string, header = "") =>
    `${header}import { definePlugin } from "${SDK}";\ndefinePlugin({ effects: { "${
      name.replaceAll("-", "_")
    }.probe": () => Promise.resolve(null) } });\n`;
  const k = await startTestKeel({ policies: { "p.yaml": "default: allow\nrules: []\n" }, rpcTimeoutMs: 1500 });
  try {
    const installedNames = async () =>
      (await k.api("GET", "/api/plugins")).body.plugins.map((p: any) => p.name as string).sort();
    const benign = await k.api("POST", "/api/plugins", { path: `${HOSTILE}/benign`, grant: {} });
    assert.equal(benign.status, 201, JSON.stringify(benign.body));

    // ---- manifests ------------------------------------------------------------
    for (const power of ["run", "ffi", "sys", "all"]) {
      await t.step(`a manifest requesting "${power}" is refused with GrantError naming the override`, async () => {
        const dir = await plugin(`req-${power}`, {
          "plugin.json": JSON.stringify(manifest(`req-${power}`, { permissions: { [power]: true } })),
          "mod.ts": modTs(`req-${power}`),
        });
        // Only the operator's explicit override grants it (tests/security/permission_override_test.ts).
        const error = await refused(k, { path: dir, grant: {} }, "GrantError", 400);
        assert.ok(error.message.includes(`requests "${power}"`), error.message);
        assert.ok(error.message.includes(`pass --override ${power} `), error.message);
      });
    }
    await t.step('a manifest requesting "import" is refused with ManifestError: no override grants it', async () => {
      const dir = await plugin("req-import", {
        "plugin.json": JSON.stringify(manifest("req-import", { permissions: { import: ["example.com:443"] } })),
        "mod.ts": modTs("req-import"),
      });
      const error = await refused(k, { path: dir, grant: {}, override: ["import"] }, "ManifestError", 400);
      assert.match(error.message, /permissions\.import/);
    });
    await t.step("a malformed plugin.json is refused with ManifestError naming the file", async () => {
      const dir = await plugin("bad-json", { "plugin.json": '{ "name": "bad-json", ', "mod.ts": modTs("bad-json") });
      const error = await refused(k, { path: dir, grant: {} }, "ManifestError", 400);
      assert.ok(error.message.includes(`${Deno.realPathSync(dir)}/plugin.json`), error.message);
      assert.match(error.message, /not JSON/);
    });
    await t.step("a manifest with an unknown top-level field is refused with ManifestError", async () => {
      const dir = await plugin("extra-field", {
        "plugin.json": JSON.stringify(manifest("extra-field", { sandbox: "off" })),
        "mod.ts": modTs("extra-field"),
      });
      await refused(k, { path: dir, grant: {} }, "ManifestError", 400);
    });

    // ---- requested permissions -----------------------------------------------
    const requesting = async (folder: string, permissions: Record<string, string[]>) =>
      await plugin(folder, {
        "plugin.json": JSON.stringify(manifest(folder, { permissions })),
        "mod.ts": modTs(folder),
      });
    for (const net of ["*:443", "0.0.0.0:80", "0:80", "0x0:80", "[::]:80", "[::ffff:0.0.0.0]:80", "example.com"]) {
      await t.step(`a manifest requesting net "${net}" is refused with GrantError`, async () => {
        const dir = await requesting(`net-${crypto.randomUUID().slice(0, 8)}`, { net: [net] });
        const error = await refused(k, { path: dir, grant: { net: [net] } }, "GrantError", 400);
        assert.ok(error.message.includes(net), error.message);
      });
    }
    for (const [key, path] of [["read", "../x"], ["write", "cache/../../x"], ["read", "/etc"], ["write", ".."]]) {
      await t.step(`a manifest requesting ${key} path "${path}" is refused with GrantError`, async () => {
        const dir = await requesting(`path-${crypto.randomUUID().slice(0, 8)}`, { [key]: [path] });
        await refused(k, { path: dir, grant: { [key]: [path] } }, "GrantError", 400);
      });
    }
    await t.step("a config value cannot turn a net template into a wildcard", async () => {
      const body = {
        path: `${ROOT}/plugins/smtp`,
        grant: { net: ["*:25"] },
        config: { host: "*", port: 25, from: "x@example.test" },
      };
      await refused(k, body, "GrantError", 400);
    });

    // ---- grants ------------------------------------------------------------------
    const rogue = (grant: unknown) => ({ path: `${HOSTILE}/rogue`, grant, config: { port: 4242 } });
    await t.step("a grant beyond the request (another host) is refused with GrantError", async () => {
      const error = await refused(k, rogue({ net: ["127.0.0.1:4242", "127.0.0.1:22"] }), "GrantError", 400);
      assert.match(error.message, /127\.0\.0\.1:22/);
    });
    await t.step("a grant of an env variable the plugin did not request is refused with GrantError", async () => {
      await refused(k, rogue({ env: ["AWS_SECRET_ACCESS_KEY"] }), "GrantError", 400);
    });
    await t.step("a grant of a path the plugin did not request is refused with GrantError", async () => {
      await refused(k, rogue({ read: ["/"] }), "GrantError", 400);
    });
    await t.step("a grant naming run is refused with GrantError", async () => {
      const error = await refused(k, rogue({ run: ["id"] }), "GrantError", 400);
      assert.match(error.message, /run/);
    });
    await t.step("a grant of all is refused with GrantError", async () => {
      await refused(k, rogue({ all: true }), "GrantError", 400);
    });

    // ---- module graph ---------------------------------------------------------------
    await t.step("a static text import of file:///etc/hostname is refused with ModuleGraphError", async () => {
      const dir = await plugin("text-import", {
        "plugin.json": JSON.stringify(manifest("text-import")),
        "mod.ts": modTs("text-import", 'import host from "file:///etc/hostname" with { type: "text" };\n'),
      });
      const error = await refused(k, { path: dir, grant: {} }, "ModuleGraphError", 400);
      assert.match(error.message, /etc\/hostname/);
    });
    await t.step(
      "a static JSON import of a file outside the plugin folder is refused with ModuleGraphError",
      async () => {
        const error = await refused(k, { path: `${HOSTILE}/json_escape`, grant: {} }, "ModuleGraphError", 400);
        assert.match(error.message, /deno\.json/);
      },
    );
    await t.step(
      "a literal dynamic import of a file outside the plugin folder is refused with ModuleGraphError",
      async () => {
        const error = await refused(k, { path: `${HOSTILE}/dynamic_literal`, grant: {} }, "ModuleGraphError", 400);
        assert.match(error.message, /deno\.json/);
      },
    );
    await t.step("a static node:process import is refused with ModuleGraphError", async () => {
      const error = await refused(k, { path: `${HOSTILE}/node_import`, grant: {} }, "ModuleGraphError", 400);
      assert.match(error.message, /node:process/);
    });
    await t.step("a remote https import is refused with ModuleGraphError", async () => {
      const dir = await plugin("remote-import", {
        "plugin.json": JSON.stringify(manifest("remote-import")),
        "mod.ts": modTs("remote-import", 'import "https://deno.land/std@0.224.0/fmt/colors.ts";\n'),
      });
      await refused(k, { path: dir, grant: {} }, "ModuleGraphError", 400);
    });
    await t.step(
      "a module symlinked to a file outside the plugin folder is refused with ModuleGraphError",
      async () => {
        const outside = await plugin("outside", { "evil.ts": "export const evil = Deno.pid;\n" });
        const dir = await plugin("symlink-module", {
          "plugin.json": JSON.stringify(manifest("symlink-module")),
          "mod.ts": modTs("symlink-module", 'import { evil } from "./helper.ts";\nconsole.log(evil);\n'),
        });
        await Deno.symlink(`${outside}/evil.ts`, `${dir}/helper.ts`);
        const error = await refused(k, { path: dir, grant: {} }, "ModuleGraphError", 400);
        assert.match(error.message, /really/);
      },
    );
    await t.step(
      "a mod.ts that is itself a symlink to outside the plugin folder is refused with ModuleGraphError",
      async () => {
        const outside = await plugin("outside-mod", { "mod.ts": modTs("symlink-entry") });
        const dir = await plugin("symlink-entry", { "plugin.json": JSON.stringify(manifest("symlink-entry")) });
        await Deno.symlink(`${outside}/mod.ts`, `${dir}/mod.ts`);
        await refused(k, { path: dir, grant: {} }, "ModuleGraphError", 400);
      },
    );

    // ---- start-up ---------------------------------------------------------------------
    await t.step("a plugin that throws while loading is refused with PluginCrashedError", async () => {
      const error = await refused(k, { path: `${HOSTILE}/startup_crash`, grant: {} }, "PluginCrashedError", 502);
      assert.match(error.message, /refusing to start/);
    });
    await t.step("a plugin that spins while loading is refused with PluginTimeoutError", async () => {
      await refused(k, { path: `${HOSTILE}/startup_hang`, grant: {} }, "PluginTimeoutError", 504);
    });
    await t.step("a plugin that does not implement a declared effect is refused with InvalidInputError", async () => {
      const error = await refused(k, { path: `${HOSTILE}/unimplemented`, grant: {} }, "InvalidInputError", 400);
      assert.match(error.message, /unimplemented\.probe/);
    });
    await t.step("a plugin from another folder cannot take over an installed plugin's name", async () => {
      await refused(k, { path: `${HOSTILE}/name_thief`, grant: {} }, "ConflictError", 409);
    });

    // ---- nothing was installed, and the host still serves ------------------------------
    await t.step("no refused plugin is installed and the host still serves", async () => {
      assert.deepEqual(await installedNames(), ["benign"]);
      const health = await fetch(`${k.url}/healthz`);
      assert.equal(health.status, 200);
      assert.equal((await health.json()).ok, true);
      const caller = await k.api("POST", "/api/plugins", { path: `${HOSTILE}/caller`, grant: {} });
      assert.equal(caller.status, 201, JSON.stringify(caller.body));
      const run = await k.api("POST", "/api/workflows/call_effect/runs?wait=30", {
        input: { effect: "benign.echo", args: { value: "still the real benign" } },
      });
      assert.equal(run.body.status, "succeeded", JSON.stringify(run.body));
      assert.deepEqual(run.body.output, { result: { echoed: "still the real benign" } });
      const verify = await k.api("GET", "/api/audit/verify");
      assert.equal(verify.body.ok, true, JSON.stringify(verify.body));
    });
  } finally {
    await k.close();
    await Deno.remove(tmp, { recursive: true });
    await Deno.remove(k.dataDir, { recursive: true }).catch(() => {});
  }
});

Deno.test("a plugin answering init with a forged result (not ready) is refused with a tag and leaves nothing behind", async () => {
  const dir = Deno.realPathSync(await Deno.makeTempDir({ prefix: "keel-forged-ready-" }));
  await Deno.writeTextFile(
    `${dir}/plugin.json`,
    JSON.stringify({
      name: "fakeready",
      version: "0.1.0",
      kind: "connector",
      description: "answers init with a forged result",
      effects: [{ name: "fakeready.x", class: "read", description: "x", input: {} }],
    }),
  );
  await Deno.writeTextFile(
    `${dir}/mod.ts`,
    `import "file://${ROOT}/core/sdk/mod.ts";
self.addEventListener("message", (e) => {
  if (e.data?.t === "init") self.postMessage({ t: "result", id: 0, ok: true, value: null });
});
`,
  );
  const k = await startTestKeel();
  try {
    for (const isolation of ["worker", "process"]) {
      const res = await k.api("POST", "/api/plugins", { path: dir, grant: {}, isolation });
      assert.equal(res.status, 502, `${isolation}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error.tag, "PluginCrashedError");
      assert.match(res.body.error.message, /a result for init/);
      assert.deepEqual((await k.api("GET", "/api/plugins")).body.plugins, []);
      assert.throws(() => Deno.statSync(`${k.dataDir}/plugins/fakeready/0.1.0`), Deno.errors.NotFound);
    }
  } finally {
    await k.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a connector whose schema pattern could backtrack for ever (^(a+)+$) is refused at install, naming the pattern", async () => {
  const dir = Deno.realPathSync(await Deno.makeTempDir({ prefix: "keel-redos-" }));
  await Deno.writeTextFile(
    `${dir}/plugin.json`,
    JSON.stringify({
      name: "redos",
      version: "0.1.0",
      kind: "connector",
      description: "returns what its own output pattern backtracks on",
      effects: [{
        name: "redos.echo",
        class: "read",
        description: "echo",
        input: {},
        output: { type: "object", properties: { s: { type: "string", pattern: "^(a+)+$" } } },
      }],
    }),
  );
  await Deno.writeTextFile(
    `${dir}/mod.ts`,
    `import { definePlugin } from "file://${ROOT}/core/sdk/mod.ts";
definePlugin({ effects: { "redos.echo": () => Promise.resolve({ s: "a".repeat(27) + "!" }) } });
`,
  );
  const k = await startTestKeel();
  try {
    const res = await k.api("POST", "/api/plugins", { path: dir, grant: {} });
    assert.equal(res.status, 400, JSON.stringify(res.body));
    assert.equal(res.body.error.tag, "ManifestError");
    assert.match(res.body.error.message, /"\^\(a\+\)\+\$" repeats a group that itself repeats/);
    assert.deepEqual((await k.api("GET", "/api/plugins")).body.plugins, []);
  } finally {
    await k.close();
    await Deno.remove(dir, { recursive: true });
  }
});
