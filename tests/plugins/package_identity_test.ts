/**
 * @module
 * What makes an installed version what it is, from the plugin lifecycle review: a package's files (names with a
 * control character are refused, since the package hash takes one entry per line and a newline could forge one),
 * its manifest (a version no longer than the API takes), every field of an effect's declaration (an upgrade that
 * changes `backoff` waits for a grant), and where it runs (a re-install from another place keeps it).
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { variant } from "../fixtures/lifecycle/variant.ts";
import { normaliseEntryPath } from "../../core/plugins/archive.ts";
import { packageHash } from "../../core/plugins/store.ts";

const ok = (r: { status: number; body: any }, status = 201) => {
  assert.equal(r.status, status, JSON.stringify(r.body));
  return r.body;
};
const install = (k: TestKeel, path: string, extra: Record<string, unknown> = {}) =>
  k.api("POST", "/api/plugins", { path, grant: {}, ...extra });

Deno.test("a file name with a control character is refused in a folder, an archive entry and the package hash", async () => {
  const dir = await variant("echo", { version: "1.0.0" });
  await Deno.writeTextFile(`${dir}/notes\nf mod.ts`, "x");
  const k = await startTestKeel();
  try {
    const refused = await install(k, dir);
    assert.equal(refused.status, 400, JSON.stringify(refused.body));
    assert.equal(refused.body.error.tag, "PluginPackageError");
    assert.match(refused.body.error.message, /control character in its name/);
    assert.deepEqual((await k.api("GET", "/api/plugins")).body.plugins, []);
  } finally {
    await k.close();
  }
  for (const name of ["a\nb", "a\rb", "tab\there", "del\u007f"]) {
    assert.throws(() => normaliseEntryPath(name), /control character/, JSON.stringify(name));
  }
  await assert.rejects(
    packageHash([{ kind: "file", path: "q\nf mod.ts", data: new Uint8Array() }]),
    /control character/,
  );
});

Deno.test("a version longer than 64 characters is refused at install, not stored where the API cannot reach it", async () => {
  const k = await startTestKeel();
  try {
    ok(await install(k, await variant("echo", { version: "1.0.0" })));
    const long = `1.1.0-${"a".repeat(64)}`;
    const up = await k.api("POST", "/api/plugins/lc-echo/upgrade", { path: await variant("echo", { version: long }) });
    assert.equal(up.status, 400, JSON.stringify(up.body));
    assert.equal(up.body.error.tag, "ManifestError");
    assert.match(up.body.error.message, /version/);
  } finally {
    await k.close();
  }
});

Deno.test("an upgrade that changes only an effect's backoff waits for a grant", async () => {
  const k = await startTestKeel();
  try {
    const withBackoff = (maxAttempts: number) => (m: any) => ({
      ...m,
      effects: m.effects.map((e: any) => e.name === "lc.echo" ? { ...e, backoff: { maxAttempts } } : e),
    });
    ok(await install(k, await variant("echo", { version: "1.0.0", manifest: withBackoff(1) })));
    const up = ok(
      await k.api("POST", "/api/plugins/lc-echo/upgrade", {
        path: await variant("echo", { version: "1.1.0", manifest: withBackoff(10) }),
      }),
    );
    assert.equal(up.plugin.activation, "needs_grant");
    assert.ok(up.diff.lines.some((l: string) => /lc\.echo.*backoff/.test(l)), JSON.stringify(up.diff.lines));
  } finally {
    await k.close();
  }
});

/** A connector package whose files do not depend on where it is (its SDK import is absolute). */
const writeEcho = async (dir: string) => {
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(
    `${dir}/plugin.json`,
    JSON.stringify({
      name: "pi-echo",
      version: "1.0.0",
      kind: "connector",
      description: "echo",
      permissions: {},
      effects: [{ name: "pi.echo", class: "read", description: "echo", input: { type: "object" } }],
    }),
  );
  await Deno.writeTextFile(
    `${dir}/mod.ts`,
    `import { definePlugin } from "file://${ROOT}/core/sdk/mod.ts";\n` +
      `definePlugin({ effects: { "pi.echo": (a: unknown) => Promise.resolve(a) } });\n`,
  );
  return dir;
};

Deno.test("re-installing the identical package from Keel's own folder keeps it in its own process", async () => {
  const outside = await writeEcho(Deno.realPathSync(await Deno.makeTempDir({ prefix: "keel-pi-" })));
  const inside = await writeEcho(`${ROOT}/.keel-test-reinstall-${crypto.randomUUID()}`);
  const k = await startTestKeel();
  const isolation = async () =>
    (await k.api("GET", "/api/plugins")).body.plugins.find((p: { name: string }) => p.name === "pi-echo").isolation;
  try {
    ok(await install(k, outside));
    assert.equal(await isolation(), "process");
    ok(await install(k, inside));
    assert.equal(await isolation(), "process", "a re-install moved the plugin into Keel's process unasked");
    // Asked for, it moves.
    ok(await install(k, inside, { isolation: "worker" }));
    assert.equal(await isolation(), "worker");
  } finally {
    await k.close();
    await Deno.remove(inside, { recursive: true });
  }
});
