/**
 * @module
 * Hot reload: the `Policy` service watches its folder and, a moment after the
 * last change, reloads the whole set — or, if any file fails to parse, keeps
 * the set in force. Both outcomes are audited (`policy.reloaded` with old and
 * new hash, `policy.reload_failed` with file and line) in a real Deno KV
 * audit log. Releasing the layer stops the watcher: Deno's resource and op
 * sanitizers, on for every test here, fail the test if it leaks.
 */
import assert from "node:assert/strict";
import { Effect, Layer, ManagedRuntime } from "effect";
import { Policy, type PolicyRequest } from "../../core/policy/mod.ts";
import { KeelConfig } from "../../core/config/mod.ts";
import { Kv } from "../../core/store/mod.ts";
import { Audit, type AuditEvent } from "../../core/telemetry/mod.ts";

const ROOT = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

const req = (effect: string): PolicyRequest => ({ effect, effectClass: "write", plugin: "p" });
const rule = (id: string, effect: string, decision: string) =>
  `  - { id: ${id}, match: { effect: "${effect}" }, decision: ${decision} }\n`;

/** What a test body gets: the service, the audit events of one type, and a way to write policy files. */
interface Ctx {
  readonly dir: string;
  readonly policy: Policy["Service"];
  run<A, E>(effect: Effect.Effect<A, E>): Promise<A>;
  events(type: string): Promise<AuditEvent[]>;
  write(name: string, text: string): Promise<void>;
}

/** Run `body` with a watching Policy service over a temp folder and a real audit log in a temp data dir. */
const withPolicy = async (files: Record<string, string>, body: (ctx: Ctx) => Promise<void>) => {
  const dir = await Deno.makeTempDir({ prefix: "keel-policy-watch-" });
  const dataDir = await Deno.makeTempDir({ prefix: "keel-policy-watch-data-" });
  try {
    for (const [name, text] of Object.entries(files)) await Deno.writeTextFile(`${dir}/${name}`, text);
    const config = KeelConfig.layer({
      dataDir,
      hostname: "127.0.0.1",
      port: 0,
      token: "t",
      policiesDir: dir,
      root: ROOT,
      rpcTimeoutMs: 1000,
      eagerMemory: false,
    });
    const audit = Audit.layer.pipe(Layer.provide(Kv.layer), Layer.provide(config));
    const runtime = ManagedRuntime.make(
      Layer.mergeAll(Policy.layer.pipe(Layer.provide(audit), Layer.provide(config)), audit),
    );
    try {
      const policy = await runtime.runPromise(Policy.use(Effect.succeed));
      const log = await runtime.runPromise(Audit.use(Effect.succeed));
      await body({
        dir,
        policy,
        run: (effect) => runtime.runPromise(effect),
        events: (type) =>
          runtime.runPromise(Effect.map(log.list({ limit: 1000 }), (all) => all.filter((e) => e.type === type))),
        write: (name, text) => Deno.writeTextFile(`${dir}/${name}`, text),
      });
    } finally {
      await runtime.dispose();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(dataDir, { recursive: true });
  }
};

/** Poll until `check` holds (a generous bound, only so a broken watcher fails instead of hanging). */
const eventually = async (what: string, check: () => Promise<boolean>, timeoutMs = 10_000) => {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) assert.fail(`never happened: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

Deno.test("editing a policy file reloads the set on its own, and the reload is audited with old and new hash", async () => {
  await withPolicy({ "p.yaml": `rules:\n${rule("x", "x.y", "allow")}` }, async ({ policy, events, write, run }) => {
    const before = await run(policy.current);
    assert.equal((await run(policy.decide(req("x.y")))).rule, "x");
    await write("p.yaml", `default: deny\nrules:\n${rule("x2", "x.*", "approve")}`);
    await eventually("the new set is in force", async () => (await run(policy.current)).hash !== before.hash);
    const now = await run(policy.current);
    const d = await run(policy.decide(req("x.y")));
    assert.equal(d.rule, "x2");
    assert.equal(d.decision, "approve");
    assert.equal(d.policyHash, now.hash);
    assert.equal((await run(policy.decide(req("q.r")))).decision, "deny", "the new default is in force too");
    await eventually("the reload is audited", async () => (await events("policy.reloaded")).length > 0);
    const [reloaded] = await events("policy.reloaded");
    assert.equal(reloaded.actor, "system");
    assert.deepEqual(reloaded.data, {
      trigger: "watch",
      oldHash: before.hash,
      newHash: now.hash,
      files: ["p.yaml"],
      rules: 1,
    });
  });
});

Deno.test("a file that fails to parse keeps the old set in force, and the failure is audited with file and line", async () => {
  await withPolicy(
    { "p.yaml": `rules:\n${rule("x", "x.y", "allow")}` },
    async ({ dir, policy, events, write, run }) => {
      const before = await run(policy.current);
      await write(
        "p.yaml",
        "rules:\n  - id: x\n    match: { effect: x.y }\n    when: args.n >> 2\n    decision: allow\n",
      );
      await eventually("the failure is audited", async () => (await events("policy.reload_failed")).length > 0);
      const [failed] = await events("policy.reload_failed");
      assert.equal(failed.data.file, `${dir}/p.yaml`);
      assert.equal(failed.data.line, 4);
      assert.equal(failed.data.column, 19);
      assert.equal(failed.data.keptHash, before.hash);
      assert.match(
        failed.data.reason as string,
        /^Policy file ".*p\.yaml" line 4: rule "x": "when" column 19: unexpected ">"/,
      );
      assert.equal((await run(policy.current)).hash, before.hash, "the old set stays in force");
      assert.equal((await run(policy.decide(req("x.y")))).rule, "x");
      assert.equal((await events("policy.reloaded")).length, 0);

      await write("p.yaml", `rules:\n${rule("fixed", "x.y", "deny")}`);
      await eventually("the fixed file is loaded", async () => (await run(policy.decide(req("x.y")))).rule === "fixed");
    },
  );
});

Deno.test("an edit the loader cannot read (a mapping where a duration goes, with its own toString) is audited, and later edits still load", async () => {
  await withPolicy({ "p.yaml": `rules:\n${rule("v1", "x.y", "allow")}` }, async ({ policy, events, write, run }) => {
    for (
      const broken of [
        "    decision: approve\n    approval: { expires: { toString: 1 } }\n",
        "    decision: approve\n    limits: { quietHours: { from: { toString: 1 }, to: '07:00' } }\n",
        "    decision: approve\n    limits: { budget: { usdPerDay: 5, timezone: { valueOf: 1, toString: 1 } } }\n",
      ]
    ) {
      const before = (await events("policy.reload_failed")).length;
      await write("p.yaml", `rules:\n  - id: v2\n    match: { effect: x.y }\n${broken}`);
      await eventually("the failure is audited", async () => (await events("policy.reload_failed")).length > before);
      assert.equal((await run(policy.decide(req("x.y")))).rule, "v1", "the set in force stays");
    }
    await write("p.yaml", `rules:\n${rule("v3", "x.y", "deny")}`);
    await eventually("the fixed file is loaded", async () => (await run(policy.decide(req("x.y")))).rule === "v3");
  });
});

Deno.test("a reload is atomic across files: one bad file among several changes applies none of them", async () => {
  await withPolicy({
    "a.yaml": `rules:\n${rule("a", "a.b", "allow")}`,
    "b.yaml": `rules:\n${rule("b", "c.d", "allow")}`,
  }, async ({ policy, events, write, run }) => {
    const before = await run(policy.current);
    await write("a.yaml", `rules:\n${rule("a", "a.b", "deny")}`);
    await write("b.yaml", "rules:\n  - id: b\n    decision: perhaps\n");
    await eventually("the failure is audited", async () => (await events("policy.reload_failed")).length > 0);
    // Let any reload still in flight finish, then check that a.yaml's valid change did not slip in alone.
    await new Promise((r) => setTimeout(r, 300));
    assert.equal((await run(policy.current)).hash, before.hash);
    assert.equal((await run(policy.decide(req("a.b")))).decision, "allow", "a.yaml's change waits for b.yaml");
    await write("b.yaml", `rules:\n${rule("b", "c.d", "approve")}`);
    await eventually(
      "both changes apply together",
      async () => (await run(policy.decide(req("a.b")))).decision === "deny",
    );
    assert.equal((await run(policy.decide(req("c.d")))).decision, "approve");
  });
});

Deno.test("a burst of writes is debounced into fewer reloads that end on the last content", async () => {
  await withPolicy({ "p.yaml": `rules:\n${rule("v0", "x.y", "allow")}` }, async ({ policy, events, write, run }) => {
    const writes = 20;
    for (let i = 1; i <= writes; i++) {
      await write("p.yaml", `rules:\n${rule(`v${i}`, "x.y", "allow")}`);
      await new Promise((r) => setTimeout(r, 5));
    }
    await eventually("the last version is in force", async () => (await run(policy.decide(req("x.y")))).rule === "v20");
    await new Promise((r) => setTimeout(r, 300));
    const reloads = (await events("policy.reloaded")).length;
    assert.ok(reloads >= 1 && reloads < writes, `${reloads} reloads for ${writes} writes`);
    assert.equal((await run(policy.decide(req("x.y")))).rule, "v20");
  });
});

Deno.test("files that are not YAML do not trigger a reload, and an unchanged set is not re-audited", async () => {
  await withPolicy({ "p.yaml": `rules:\n${rule("x", "x.y", "allow")}` }, async ({ policy, events, write, run }) => {
    await write("notes.txt", "scratch");
    await write("p.yaml", `rules:\n${rule("x", "x.y", "allow")}`); // same bytes: same hash
    await new Promise((r) => setTimeout(r, 400));
    assert.equal((await events("policy.reloaded")).length, 0);
    // An explicit reload of the same files says nothing either, and returns the set in force.
    assert.equal((await run(Effect.orDie(policy.reload))).hash, (await run(policy.current)).hash);
    assert.equal((await events("policy.reloaded")).length, 0);
  });
});

Deno.test("an explicit reload of a bad folder fails with the file's error and is audited as a request", async () => {
  await withPolicy({ "p.yaml": "rules: []\n" }, async ({ policy, events, write, run }) => {
    await write("p.yaml", "rules: [\n");
    const error = await run(Effect.flip(policy.reload));
    assert.equal(error._tag, "PolicyFileError");
    await eventually("both failures are audited", async () => (await events("policy.reload_failed")).length >= 1);
    assert.ok((await events("policy.reload_failed")).some((e) => e.data.trigger === "request"));
  });
});
