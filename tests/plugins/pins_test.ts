/**
 * @module
 * A run's connector pins (`EffectRequest.pins`, filled by the orchestrator at
 * run start) decide which connector version serves its effects: after an
 * upgrade makes a new version active, the pinned run keeps the old one and a
 * new run gets the new one. Driven through the real Gateway with real
 * Workers; the connector answers with its own version.
 */
import assert from "node:assert/strict";
import { Cause, Effect } from "effect";
import { Gateway } from "../../core/gateway/mod.ts";
import { PluginHost } from "../../core/plugins/mod.ts";
import { ROOT, startTestKeel } from "../_support/keel.ts";

const SDK = `file://${ROOT}/core/sdk/mod.ts`;

const versioned = (version: string) => ({
  "plugin.json": JSON.stringify({
    name: "pinned",
    version,
    kind: "connector",
    description: "Answers with its own version",
    effects: [{ name: "pinned.which", class: "read", description: "Which version serves", input: {} }],
  }),
  "mod.ts": `import { definePlugin } from "${SDK}";
definePlugin({ effects: { "pinned.which": () => Promise.resolve({ version: "${version}" }) } });
`,
});

const agent = {
  "plugin.json": JSON.stringify({
    name: "pin-agent",
    version: "0.1.0",
    kind: "agent",
    description: "Calls pinned.which",
    uses: ["pinned.which"],
    workflows: [{ name: "which_pinned", description: "Ask", input: {} }],
  }),
  "mod.ts": `import { definePlugin } from "${SDK}";
definePlugin({ workflows: { which_pinned: (ctx) => ctx.effect("pinned.which", {}) } });
`,
};

Deno.test("Gateway.request() sends an effect to the run's pinned connector version after an upgrade", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "keel-pins-" });
  const write = async (folder: string, files: Record<string, string>) => {
    await Deno.mkdir(`${tmp}/${folder}`, { recursive: true });
    for (const [name, text] of Object.entries(files)) await Deno.writeTextFile(`${tmp}/${folder}/${name}`, text);
    return `${tmp}/${folder}`;
  };
  const k = await startTestKeel({ policies: { "p.yaml": "default: allow\nrules: []\n" } });
  try {
    for (const [path, name] of [[await write("v1", versioned("1.0.0")), "pinned"], [await write("a", agent), "a"]]) {
      const r = await k.api("POST", "/api/plugins", { path, grant: {}, isolation: "worker" });
      assert.equal(r.status, 201, `${name}: ${JSON.stringify(r.body)}`);
    }
    const call = (runId: string, seq: number, pins?: Record<string, string>) =>
      k.keel.runtime.runPromise(Effect.gen(function* () {
        const a = yield* PluginHost.use((h) => h.get("pin-agent"));
        return yield* Gateway.use((g) =>
          g.request({
            runId,
            seq,
            agent: a,
            workflow: "which_pinned",
            effect: "pinned.which",
            args: {},
            ...(pins ? { pins } : {}),
          })
        );
      }));
    // The old run started while 1.0.0 was active, and pinned it.
    assert.deepEqual(await call("run_old", 1, { pinned: "1.0.0" }), { version: "1.0.0" });

    const up = await k.api("POST", "/api/plugins/pinned/upgrade", {
      path: await write("v2", versioned("2.0.0")),
      isolation: "worker",
    });
    assert.equal(up.body.plugin?.activation, "active", JSON.stringify(up.body));

    // Mid-run, after the upgrade: the pinned run still reaches 1.0.0 (now inactive); a new run gets 2.0.0.
    assert.deepEqual(await call("run_old", 2, { pinned: "1.0.0" }), { version: "1.0.0" });
    assert.deepEqual(await call("run_new", 1, { pinned: "2.0.0" }), { version: "2.0.0" });
    assert.deepEqual(await call("run_unpinned", 1), { version: "2.0.0" }, "no pins: the active version serves");
    const versions = (await k.api("GET", "/api/plugins")).body.plugins.filter((p: any) => p.name === "pinned");
    assert.deepEqual(versions.map((p: any) => [p.version, p.activation]), [["1.0.0", "inactive"], ["2.0.0", "active"]]);

    // A pinned version removed by force: the run fails instead of moving to another version unseen.
    const removed = await k.api("DELETE", "/api/plugins/pinned/versions/1.0.0?force=true");
    assert.equal(removed.status, 200, JSON.stringify(removed.body));
    const exit = await k.keel.runtime.runPromiseExit(
      Effect.promise(() => call("run_old", 3, { pinned: "1.0.0" }).then(() => "served", (e) => e)),
    );
    const outcome = exit._tag === "Success" ? exit.value : Cause.squash(exit.cause);
    assert.notEqual(outcome, "served", "a run pinned to a removed version is not served by another one");
  } finally {
    await k.close();
    await Deno.remove(tmp, { recursive: true });
  }
});
