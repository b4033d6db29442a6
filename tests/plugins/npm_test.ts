/**
 * @module
 * Declared npm packages: a plugin may import exactly the `npm:` packages its
 * manifest's `npm` field declares, name and version; an undeclared package,
 * another version or an unpinned import is refused at install with a
 * `ModuleGraphError`. The declared package runs in both isolation modes (in
 * `process` mode from the host's npm cache, linked into the plugin's Deno
 * cache and bound read-only under bwrap). The package used,
 * `@cfworker/json-schema@4.1.6`, is one of Keel's own dependencies, so it is
 * in the Deno cache and nothing is downloaded.
 */
import assert from "node:assert/strict";
import { Effect } from "effect";
import { PluginHost } from "../../core/plugins/mod.ts";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";

const SDK = `file://${ROOT}/core/sdk/mod.ts`;
const PACKAGE = "@cfworker/json-schema@4.1.6";

/** A connector `name` declaring `npm` and importing `specifier`. */
const plugin = (name: string, npm: string[], specifier = `npm:${PACKAGE}`) => ({
  "plugin.json": JSON.stringify({
    name,
    version: "0.1.0",
    kind: "connector",
    description: "Validates with an npm package",
    npm,
    effects: [{
      name: `${name.replaceAll("-", "_")}.check`,
      class: "read",
      description: "Is the value a string?",
      input: {},
    }],
  }),
  "mod.ts": `import { definePlugin } from "${SDK}";
import { Validator } from "${specifier}";
const strings = new Validator({ type: "string" });
definePlugin({ effects: {
  "${
    name.replaceAll("-", "_")
  }.check": ({ value }: { value: unknown }) => Promise.resolve({ valid: strings.validate(value).valid }),
} });
`,
});

const callCheck = (k: TestKeel, name: string, value: unknown) =>
  k.keel.runtime.runPromise(Effect.gen(function* () {
    const host = yield* PluginHost;
    const p = yield* host.get(name);
    return yield* host.callEffect(p, `${name.replaceAll("-", "_")}.check`, { value }, `key-${crypto.randomUUID()}`);
  }));

Deno.test("a plugin may import exactly the npm packages it declares, name and version, in both modes", async (t) => {
  const tmp = await Deno.makeTempDir({ prefix: "keel-npm-" });
  const write = async (folder: string, files: Record<string, string>) => {
    await Deno.mkdir(`${tmp}/${folder}`, { recursive: true });
    for (const [name, text] of Object.entries(files)) await Deno.writeTextFile(`${tmp}/${folder}/${name}`, text);
    return `${tmp}/${folder}`;
  };
  const k = await startTestKeel({ rpcTimeoutMs: 20_000 });
  try {
    for (const isolation of ["worker", "process"] as const) {
      await t.step(`a declared npm package installs and works in ${isolation} isolation`, async () => {
        const name = `npm-${isolation}`;
        const r = await k.api("POST", "/api/plugins", {
          path: await write(name, plugin(name, [PACKAGE])),
          grant: {},
          isolation,
        });
        assert.equal(r.status, 201, JSON.stringify(r.body));
        assert.deepEqual(await callCheck(k, name, "text"), { valid: true });
        assert.deepEqual(await callCheck(k, name, 42), { valid: false });
      });
    }
    const refused = async (name: string, files: Record<string, string>, says: RegExp) => {
      const r = await k.api("POST", "/api/plugins", { path: await write(name, files), grant: {} });
      assert.equal(r.status, 400, JSON.stringify(r.body));
      assert.equal(r.body.error.tag, "ModuleGraphError", JSON.stringify(r.body));
      assert.match(r.body.error.message, says);
      const plugins = (await k.api("GET", "/api/plugins")).body.plugins.map((p: any) => p.name);
      assert.ok(!plugins.includes(name), "nothing was installed");
      const events = (await k.api("GET", "/api/audit?limit=1000")).body.events;
      assert.ok(events.some((e: any) => e.type === "plugin.refused" && e.data.error.tag === "ModuleGraphError"));
    };
    await t.step("an undeclared npm import is refused with ModuleGraphError", async () => {
      await refused("npm-undeclared", plugin("npm-undeclared", []), /"@cfworker\/json-schema" is not declared/);
      const other = plugin("npm-other", ["yaml@2.9.1"]);
      await refused("npm-other", other, /is not declared in plugin\.json "npm" \(it declares yaml@2\.9\.1\)/);
    });
    await t.step("an npm import of another version than declared is refused with ModuleGraphError", async () => {
      const older = plugin("npm-version", ["@cfworker/json-schema@4.1.5"]);
      await refused("npm-version", older, /declares @cfworker\/json-schema@4\.1\.5: the import must name exactly/);
      const range = plugin("npm-range", [PACKAGE], "npm:@cfworker/json-schema@^4.1.0");
      await refused("npm-range", range, /must name exactly that version/);
      const unpinned = plugin("npm-unpinned", [PACKAGE], "npm:@cfworker/json-schema");
      await refused("npm-unpinned", unpinned, /must name exactly that version/);
    });
  } finally {
    await k.close();
    await Deno.remove(tmp, { recursive: true });
  }
});
