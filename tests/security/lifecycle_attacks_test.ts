/**
 * @module
 * Hostile packages and hostile upgrades against the plugin lifecycle, over
 * the real HTTP API of one Keel: archives with `../`, absolute, symlink,
 * hardlink and device entries, a gzip bomb and too many files; a folder
 * holding a symlink to a secret; stored copies whose imports reach outside;
 * and upgrades that silently ask for more (a permission, an effect's class,
 * weaker isolation). Each is refused or held with a tagged error and an
 * audit event; nothing is ever written outside the plugins store (the test
 * compares the whole folder around the data dir before and after); the
 * serving version keeps answering real workflows throughout; and the host
 * is still up at the end.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { gzip, tar, type TarEntry, writeTarGz } from "../_support/tar.ts";
import { relativePath, variant } from "../fixtures/lifecycle/variant.ts";

const POLICIES = { "p.yaml": "default: allow\nrules: []\n" };

/** Every file and folder under `root` (path → size), skipping the KV files and what `skip` says. */
const snapshot = (root: string, skip: (path: string) => boolean): Map<string, number> => {
  const out = new Map<string, number>();
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(dir)) {
      const path = `${dir}/${e.name}`;
      if (skip(path) || /\/keel\.(kv|lock)(-wal|-shm)?$/.test(path)) continue;
      const info = Deno.lstatSync(path);
      out.set(path, info.isDirectory ? -1 : info.size);
      if (info.isDirectory) walk(path);
    }
  };
  walk(root);
  return out;
};

const text = (s: string) => ({ data: s });

Deno.test("hostile packages and upgrades are refused or held, audited, and write nothing outside the plugins store", async (t) => {
  const world = Deno.realPathSync(await Deno.makeTempDir({ prefix: "keel-lc-attacks-" }));
  const dataDir = `${world}/data`;
  const store = `${dataDir}/plugins`;
  const k: TestKeel = await startTestKeel({ policies: POLICIES, dataDir, rpcTimeoutMs: 3000 });
  try {
    const manifestOf = (name: string) =>
      JSON.stringify({
        name,
        version: "0.1.0",
        kind: "connector",
        description: `Hostile package ${name}`,
        effects: [{ name: `${name.replaceAll("-", "_")}.probe`, class: "read", description: "Probe", input: {} }],
      });
    const modOf = (name: string, header = "") =>
      `${header}import { definePlugin } from "file://${ROOT}/core/sdk/mod.ts";\ndefinePlugin({ effects: { "${
        name.replaceAll("-", "_")
      }.probe": () => Promise.resolve(null) } });\n`;
    const archive = async (name: string, extra: TarEntry[], base = true) =>
      await writeTarGz(`${world}/${name}.tar.gz`, [
        ...(base ? [{ name: "plugin.json", ...text(manifestOf(name)) }, { name: "mod.ts", ...text(modOf(name)) }] : []),
        ...extra,
      ]);
    const echo = async (value: string) => {
      const r = await k.api("POST", "/api/workflows/lc_echo/runs?wait=30", { input: { value } });
      assert.equal(r.body.status, "succeeded", JSON.stringify(r.body));
      return r.body.output;
    };
    const lastAudit = async (type: string) =>
      (await k.api("GET", "/api/audit?limit=10000")).body.events.filter((e: any) => e.type === type).at(-1);

    /** Install and expect a refusal with `tag`, audited as plugin.refused; nothing outside the store changes. */
    const refused = async (path: string, tag: string, why: RegExp, route = "/api/plugins", extra = {}) => {
      const before = snapshot(world, (p) => p.startsWith(`${store}/`) || p === `${world}/${path.split("/").pop()}`);
      const r = await k.api("POST", route, { path, grant: {}, ...extra });
      assert.equal(r.body.error?.tag, tag, JSON.stringify(r.body));
      assert.equal(r.status, 400);
      assert.match(r.body.error.message, why);
      const event = await lastAudit("plugin.refused");
      assert.equal(event.data.path, path, JSON.stringify(event));
      assert.equal(event.data.error.tag, tag);
      assert.equal(event.actor, "operator");
      const after = snapshot(world, (p) => p.startsWith(`${store}/`) || p === `${world}/${path.split("/").pop()}`);
      assert.deepEqual([...after].filter(([p, s]) => before.get(p) !== s), [], "nothing changed outside the store");
      assert.deepEqual([...before].filter(([p]) => !after.has(p)), [], "nothing outside the store went away");
      // …and inside it, nothing stays behind: no staging leftovers, no version folder.
      const staging = `${store}/.staging`;
      assert.deepEqual([...(() => {
        try {
          return Deno.readDirSync(staging);
        } catch {
          return [];
        }
      })()], []);
      return r.body.error.message as string;
    };

    // A serving pair that must keep answering through everything below.
    const v1 = await variant("echo", { version: "1.0.0" });
    assert.equal((await k.api("POST", "/api/plugins", { path: v1, grant: {} })).status, 201);
    const agent = await variant("agent", { version: "1.0.0" });
    assert.equal((await k.api("POST", "/api/plugins", { path: agent, grant: {} })).status, 201);
    assert.equal((await echo("before")).echoed.version, "1.0.0");

    // ---- archives ------------------------------------------------------------------------------
    await t.step("an archive with ../ entries is refused with PluginPackageError and writes nothing", async () => {
      const climbs = Array.from({ length: 6 }, (_, i) => ({ name: `${"../".repeat(i + 1)}evil-${i}.txt`, data: "x" }));
      const path = await archive("dotdot", climbs);
      const message = await refused(path, "PluginPackageError", /climbs out with "\.\."/);
      assert.ok(message.includes(path), message);
      for (let i = 0; i < 6; i++) {
        for (const dir of [world, dataDir, store, `${store}/.staging`, "/tmp"]) {
          assert.throws(() => Deno.statSync(`${dir}/evil-${i}.txt`), Deno.errors.NotFound);
        }
      }
    });
    await t.step("an archive entry that climbs out to overwrite another plugin's stored copy is refused", async () => {
      const path = await archive("overwrite", [{ name: "../../lc-echo/1.0.0/mod.ts", data: "throw 1;" }]);
      await refused(path, "PluginPackageError", /climbs out/);
      assert.equal((await echo("after overwrite")).echoed.version, "1.0.0");
    });
    await t.step("an archive with an absolute path is refused and the path is not written", async () => {
      const target = `${world}/absolute-evil.txt`;
      await refused(await archive("absolute", [{ name: target, data: "x" }]), "PluginPackageError", /absolute path/);
      assert.throws(() => Deno.statSync(target), Deno.errors.NotFound);
    });
    await t.step("an archive with a symlink entry is refused", async () => {
      const path = await archive("symlink", [{ name: "secret.json", type: "2", linkname: "/etc/passwd" }]);
      await refused(path, "PluginPackageError", /is a symlink/);
    });
    await t.step("an archive whose mod.ts is a symlink is refused", async () => {
      const path = await archive("symlink-mod", [
        { name: "plugin.json", ...text(manifestOf("symlink-mod")) },
        { name: "mod.ts", type: "2", linkname: `${ROOT}/plugins/smtp/mod.ts` },
      ], false);
      await refused(path, "PluginPackageError", /symlink/);
    });
    await t.step("an archive with a hardlink entry is refused", async () => {
      await refused(
        await archive("hardlink", [{ name: "h.txt", type: "1", linkname: "/etc/shadow" }]),
        "PluginPackageError",
        /hardlink/,
      );
    });
    await t.step("an archive with a device entry is refused", async () => {
      await refused(await archive("device", [{ name: "null", type: "3" }]), "PluginPackageError", /character device/);
    });
    await t.step("a gzip bomb is refused while it inflates", async () => {
      const bombTar = tar([
        { name: "plugin.json", ...text(manifestOf("bomb")) },
        { name: "zeros.bin", data: new Uint8Array(40 * 1024 * 1024) },
      ]);
      const path = `${world}/bomb.tar.gz`;
      await Deno.writeFile(path, await gzip(bombTar));
      assert.ok(Deno.statSync(path).size < 512 * 1024);
      await refused(path, "PluginPackageError", /more than 33554432 bytes|inflates to more than/);
    });
    await t.step("an archive with too many files is refused", async () => {
      const many = Array.from({ length: 2100 }, (_, i) => ({ name: `f/${i}.txt`, data: "" }));
      await refused(await archive("many", many), "PluginPackageError", /more than 2000 files/);
    });

    // ---- stored copies whose imports reach outside -----------------------------------------------
    await t.step(
      "an archive whose module imports a file outside the store is refused with ModuleGraphError",
      async () => {
        const name = "escape-import";
        const path = await archive(name, [
          { name: "plugin.json", ...text(manifestOf(name)) },
          {
            name: "mod.ts",
            ...text(modOf(name, 'import host from "../../../../../../../../etc/hostname" with { type: "text" };\n')),
          },
        ], false);
        const message = await refused(path, "ModuleGraphError", /etc\/hostname/);
        assert.ok(!message.includes(".staging"), `names the archive, not the staging folder: ${message}`);
      },
    );
    await t.step("a path that only passes through core/sdk is not taken for the SDK", async () => {
      const name = "sdk-detour";
      const path = await archive(name, [
        { name: "plugin.json", ...text(manifestOf(name)) },
        {
          name: "mod.ts",
          ...text(modOf(name, 'import cfg from "../../../../core/sdk/../../deno.json" with { type: "json" };\n')),
        },
      ], false);
      await refused(path, "ModuleGraphError", /deno\.json/);
      const ghost = "sdk-ghost";
      const ghostPath = await archive(ghost, [
        { name: "plugin.json", ...text(manifestOf(ghost)) },
        { name: "mod.ts", ...text(modOf(ghost, 'import "../../core/sdk/not_in_the_sdk.ts";\n')) },
      ], false);
      await refused(ghostPath, "ModuleGraphError", /not_in_the_sdk/);
    });
    await t.step("a folder holding a symlink to a secret is refused: the store copies plain files only", async () => {
      const dir = `${world}/linked-secret`;
      await Deno.mkdir(dir);
      await Deno.writeTextFile(`${dir}/plugin.json`, manifestOf("linked-secret"));
      await Deno.writeTextFile(`${dir}/mod.ts`, modOf("linked-secret"));
      await Deno.writeTextFile(`${world}/secret.txt`, "the operator's secret");
      await Deno.symlink(`${world}/secret.txt`, `${dir}/data.txt`);
      await refused(dir, "PluginPackageError", /"data\.txt" is a symlink/);
    });

    // ---- upgrades ----------------------------------------------------------------------------------
    const held = async (what: string, change: (m: any) => any, expected: RegExp) => {
      const version = `1.${Math.floor(Math.random() * 1e6)}.0`;
      const dir = await variant("echo", { version, manifest: change });
      const r = await k.api("POST", "/api/plugins/lc-echo/upgrade", { path: dir });
      assert.equal(r.status, 201, JSON.stringify(r.body));
      assert.equal(r.body.plugin.activation, "needs_grant", what);
      assert.deepEqual(r.body.plugin.grant, { net: [], env: [], read: [], write: [] });
      const event = await lastAudit("plugin.upgrade_held");
      assert.equal(event.data.version, version);
      assert.equal(event.data.from, "1.0.0");
      assert.ok(event.data.changes.some((l: string) => expected.test(l)), JSON.stringify(event.data.changes));
      // The held version never started, and the serving one answers a real workflow meanwhile.
      const listed = (await k.api("GET", "/api/plugins")).body.plugins.find((p: any) => p.version === version);
      assert.equal(listed.state, "stopped");
      const started = (await k.api("GET", "/api/audit?limit=10000")).body.events.filter((e: any) =>
        e.type === "plugin.started" && e.data.version === version
      );
      assert.deepEqual(started, []);
      assert.equal((await echo(what)).echoed.version, "1.0.0");
      return event;
    };
    await t.step("an upgrade that silently adds permissions stays disabled while 1.0.0 keeps serving", async () => {
      const event = await held(
        "more permissions",
        (m) => ({ ...m, permissions: { net: ["127.0.0.1:22"], env: ["AWS_SECRET_ACCESS_KEY"], read: ["cache"] } }),
        /asks to connect to 127\.0\.0\.1:22 \(new\)/,
      );
      assert.deepEqual(event.data.permissionsAdded, {
        net: ["127.0.0.1:22"],
        env: ["AWS_SECRET_ACCESS_KEY"],
        read: ["cache"],
        write: [],
      });
    });
    await t.step("an upgrade that silently turns a read effect irreversible stays disabled", async () => {
      const event = await held(
        "class change",
        (m) => ({
          ...m,
          effects: m.effects.map((e: any) => e.name === "lc.echo" ? { ...e, class: "irreversible" } : e),
        }),
        /changes effect lc\.echo: class.*read → irreversible/,
      );
      assert.ok(event.data.effectsChanged["lc.echo"].includes("class"));
    });
    await t.step(
      "an upgrade that silently asks to leave its process for an in-host Worker stays disabled",
      async () => {
        await held("weaker isolation", (m) => ({ ...m, isolation: "worker" }), /weaker isolation/);
      },
    );
    await t.step("an upgrade that silently adds an effect stays disabled", async () => {
      await held(
        "new effect",
        (m) => ({ ...m, effects: [...m.effects, { ...m.effects[0], name: "lc.exfiltrate", class: "write" }] }),
        /adds effect lc\.exfiltrate \(write\)/,
      );
    });
    await t.step("an upgrade from an archive with ../ entries is refused and 1.0.0 keeps serving", async () => {
      const path = await archive("lc-echo-dotdot", [{ name: "../../../evil.txt", data: "x" }]);
      await refused(path, "PluginPackageError", /climbs out/, "/api/plugins/lc-echo/upgrade");
      assert.equal((await lastAudit("plugin.refused")).data.action, "upgrade");
      assert.equal((await echo("after upgrade refusal")).echoed.version, "1.0.0");
    });
    await t.step("an upgrade cannot swap in another plugin under the installed name", async () => {
      const other = await variant("echo", { version: "3.0.0", manifest: (m) => ({ ...m, name: "lc-impostor" }) });
      const r = await k.api("POST", "/api/plugins/lc-echo/upgrade", { path: other });
      assert.equal(r.status, 400);
      assert.equal(r.body.error.tag, "InvalidInputError");
      assert.equal((await lastAudit("plugin.refused")).data.plugin, "lc-echo");
    });

    await t.step("the host still serves, the serving version never changed, and the audit chain verifies", async () => {
      const health = await fetch(`${k.url}/healthz`);
      assert.equal(health.status, 200);
      await health.body?.cancel();
      const versions = (await k.api("GET", "/api/plugins")).body.plugins
        .filter((p: any) => p.name === "lc-echo" && p.activation === "active").map((p: any) => p.version);
      assert.deepEqual(versions, ["1.0.0"]);
      assert.equal((await echo("at the end")).echoed.version, "1.0.0");
      assert.deepEqual(
        [...Deno.readDirSync(store)].map((e) => e.name).filter((n) => n !== ".staging").sort(),
        ["lc-agent", "lc-echo"],
      );
      assert.equal((await k.api("GET", "/api/audit/verify")).body.ok, true);
      // The relative SDK import of the fixtures was pointed at Keel's SDK in the stored copy.
      const stored = await Deno.readTextFile(`${store}/lc-echo/1.0.0/mod.ts`);
      assert.ok(stored.includes(`"file://${Deno.realPathSync(ROOT)}/core/sdk/mod.ts"`));
      assert.ok(!stored.includes(relativePath(v1, `${ROOT}/core/sdk`)));
    });
  } finally {
    await k.close();
    await Deno.remove(world, { recursive: true });
  }
});
