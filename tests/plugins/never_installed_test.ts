/**
 * @module
 * A plugin that was never installed leaves nothing for the next plugin of its name: not when Keel refuses its
 * install after starting it (what it wrote at start is removed with it), and not when Keel is killed in the middle
 * of its install (the next start removes stored copies and data the registry does not hold).
 */
import assert from "node:assert/strict";
import { ROOT } from "../_support/keel.ts";
import { callEffect, startTestKeel } from "../_support/plugins.ts";
import { startKeelProcess } from "../_support/process.ts";

const SDK = `file://${ROOT}/core/sdk/mod.ts`;
/** A connector named rv-notes, granted its data dir, whose `mod.ts` is `mod`. */
const pkg = async (mod: string, effects: string[]) => {
  const dir = Deno.realPathSync(await Deno.makeTempDir({ prefix: "keel-rv-notes-" }));
  await Deno.writeTextFile(
    `${dir}/plugin.json`,
    JSON.stringify({
      name: "rv-notes",
      version: "1.0.0",
      kind: "connector",
      description: "notes",
      permissions: { read: ["."], write: ["."] },
      effects: effects.map((name) => ({ name, class: "read", description: "x", input: { type: "object" } })),
    }),
  );
  await Deno.writeTextFile(`${dir}/mod.ts`, mod);
  return dir;
};

Deno.test("a refused install takes what the plugin wrote at start with it; the next plugin of its name finds nothing", async () => {
  const k = await startTestKeel();
  try {
    const pdata = `${Deno.realPathSync(k.dataDir)}/plugin-data/rv-notes`;
    // A declares a.missing but does not implement it: Keel starts it, then refuses the install.
    const a = await pkg(
      `import { definePlugin } from "${SDK}";\n` +
        `await Deno.writeTextFile("${pdata}/left.txt", "written by A, never installed");\n` +
        `definePlugin({ effects: { "a.note": () => Promise.resolve({}) } });\n`,
      ["a.note", "a.missing"],
    );
    const refused = await k.api("POST", "/api/plugins", { path: a, grant: { read: ["."], write: ["."] } });
    assert.equal(refused.status, 400, JSON.stringify(refused.body));
    const b = await pkg(
      `import { definePlugin } from "${SDK}";\n` +
        `definePlugin({ effects: { "b.peek": async () => ({ found: await Deno.readTextFile("${pdata}/left.txt").catch(() => null) }) } });\n`,
      ["b.peek"],
    );
    const ok = await k.api("POST", "/api/plugins", { path: b, grant: { read: ["."] } });
    assert.equal(ok.status, 201, JSON.stringify(ok.body));
    const seen = await callEffect(k, "b.peek", {});
    assert.deepEqual(seen, { found: null }, "B read what a refused install of A left");
  } finally {
    await k.close();
  }
});

const exists = (p: string) => {
  try {
    Deno.statSync(p);
    return true;
  } catch {
    return false;
  }
};

Deno.test("after a kill -9 during an install, the next start removes its stored copy and data; a new plugin of its name finds nothing", async () => {
  const dataDir = Deno.realPathSync(await Deno.makeTempDir({ prefix: "keel-rv-crash-data-" }));
  const pdata = `${dataDir}/plugin-data/rv-notes`;
  // Author A's plugin writes into its data dir while it starts, and starts slowly (3 s, under the 5 s start limit).
  const a = await pkg(
    `import { definePlugin } from "${SDK}";\n` +
      `await Deno.writeTextFile("${pdata}/secret.txt", "written by A");\n` +
      `await new Promise((r) => setTimeout(r, 3000));\n` +
      `definePlugin({ effects: { "a.note": () => Promise.resolve({}) } });\n`,
    ["a.note"],
  );
  let keel = await startKeelProcess({ dataDir });
  try {
    const pending = keel.api("POST", "/api/plugins", { path: a, grant: { read: ["."], write: ["."] } }).catch(() => {});
    for (let i = 0; i < 200 && !exists(`${pdata}/secret.txt`); i++) await new Promise((r) => setTimeout(r, 25));
    assert.ok(exists(`${pdata}/secret.txt`), keel.output());
    await keel.kill();
    await pending;

    keel = await startKeelProcess({ dataDir });
    const listed = (await keel.api("GET", "/api/plugins")).body.plugins.map((p: any) => `${p.name} ${p.version}`);
    assert.deepEqual(listed, []);
    assert.ok(!exists(`${dataDir}/plugins/rv-notes`), "the stored copy of a never-installed plugin was left");
    assert.ok(!exists(pdata), "the data of a never-installed plugin was left");
    // Author B's unrelated plugin, same name, installed fresh: it reads what A left.
    const b = await pkg(
      `import { definePlugin } from "${SDK}";\n` +
        `definePlugin({ effects: { "b.peek": async () => ({ found: await Deno.readTextFile("${pdata}/secret.txt").catch(() => null) }) } });\n`,
      ["b.peek"],
    );
    const ins = await keel.api("POST", "/api/plugins", { path: b, grant: { read: ["."] } });
    assert.equal(ins.status, 201, JSON.stringify(ins.body));
    assert.ok(
      !exists(`${pdata}/secret.txt`),
      "a plugin that was never installed left data a fresh install of its name can read",
    );
  } finally {
    await keel.kill();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});
