/**
 * @module
 * The SDK's typed helpers. At type-check time (`deno test` checks this file
 * first): `defineConnector<Effects, Config>` wants exactly one handler per
 * effect with the declared argument, result and config types, and
 * `defineAgent<Workflows, Uses>` gives workflows a `ctx.effect` that accepts
 * only the effects in `Uses`, typed; `definePlugin` and the untyped
 * `WorkflowContext` still accept what they always did. At run time: a
 * connector and an agent written with them (`tests/fixtures/sdk`) serve real
 * calls in real Workers through the real host and Gateway, their health
 * handler sees the config, and `PluginError`'s helpers survive the trip.
 */
import assert from "node:assert/strict";
import {
  defineAgent,
  defineConnector,
  definePlugin,
  type EffectCaller,
  PluginError,
  type WorkflowContext,
} from "../../core/sdk/mod.ts";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { eventually } from "../_support/process.ts";

type Effects = { "a.read": { input: { n: number }; output: { m: string } } };
type Workflows = { w: { input: { x: string }; output: number } };
interface Config {
  readonly host: string;
}

/** Never called: its body only has to type-check, and each `@ts-expect-error` line has to fail to. */
const typeChecks = () => {
  defineConnector<Effects>({ effects: { "a.read": ({ n }) => ({ m: String(n) }) } });
  defineConnector<Effects>({
    effects: { "a.read": ({ n }, ctx) => Promise.resolve({ m: `${n}${ctx.idempotencyKey}` }) },
  });
  // @ts-expect-error a declared effect without a handler
  defineConnector<Effects>({ effects: {} });
  // @ts-expect-error a handler for an effect the map does not declare
  defineConnector<Effects>({ effects: { "a.read": () => ({ m: "" }), "a.other": () => ({}) } });
  // @ts-expect-error a handler taking the wrong argument type
  defineConnector<Effects>({ effects: { "a.read": ({ n }: { n: string }) => ({ m: n }) } });
  // @ts-expect-error a handler returning the wrong type
  defineConnector<Effects>({ effects: { "a.read": () => ({ m: 1 }) } });
  defineConnector<Effects, Config>({ effects: { "a.read": (_args, ctx) => ({ m: ctx.config.host }) } });
  // @ts-expect-error a config field the Config type does not have
  defineConnector<Effects, Config>({ effects: { "a.read": (_args, ctx) => ({ m: ctx.config.port }) } });
  defineConnector<Effects, Config>({
    effects: { "a.read": () => ({ m: "" }) },
    health: ({ config }) => config.host !== "" || { ok: false, message: "no host" },
  });

  defineAgent<Workflows, Effects>({
    workflows: { w: async (ctx, { x }) => (await ctx.effect("a.read", { n: x.length })).m.length },
  });
  // @ts-expect-error an effect the agent does not declare it uses
  defineAgent<Workflows, Effects>({ workflows: { w: async (ctx) => (await ctx.effect("a.write", {}), 1) } });
  // @ts-expect-error an effect called with the wrong arguments
  defineAgent<Workflows, Effects>({ workflows: { w: async (ctx) => (await ctx.effect("a.read", { n: "1" }), 1) } });
  // @ts-expect-error an agent that declares no `Uses` may call no effect
  defineAgent<Workflows>({ workflows: { w: async (ctx) => (await ctx.effect("a.read", { n: 1 }), 1) } });
  // @ts-expect-error a workflow returning the wrong type
  defineAgent<Workflows, Effects>({ workflows: { w: () => Promise.resolve("one") } });
  defineAgent<Workflows>({
    workflows: { w: async (ctx, { x }) => (await ctx.step("len", () => x.length)) + ctx.runId.length },
  });

  // The untyped forms are unchanged: any effect name, a result type the caller picks.
  const loose = async (ctx: WorkflowContext, input: { to: string }) =>
    (await ctx.effect<{ sent: boolean }>("email.send", input)).sent;
  definePlugin({ workflows: { loose }, effects: { "x.y": (args) => Promise.resolve(args) }, health: () => true });
  const anyEffect: EffectCaller<Record<string, { input: unknown; output: unknown }>> = (_name, _args) =>
    Promise.resolve(undefined as never);
  return anyEffect;
};

Deno.test("the SDK's typed helpers type-check correct plugins and reject wrong handlers and undeclared effects", () => {
  // Reaching this line means this file type-checked, every `@ts-expect-error` included.
  assert.equal(typeof typeChecks, "function");
});

Deno.test("PluginError helpers set the tag and whether a retry may help, and `is` matches tags", () => {
  const cases = [
    [PluginError.unavailable("down"), "Unavailable", true],
    [PluginError.rejected("no"), "Rejected", false],
    [PluginError.invalidInput("bad"), "InvalidInput", false],
    [PluginError.notFound("gone"), "NotFound", false],
  ] as const;
  for (const [error, tag, retryable] of cases) {
    assert.equal(error.tag, tag);
    assert.equal(error.name, tag);
    assert.equal(error.retryable, retryable);
    assert.ok(PluginError.is(error, tag));
    assert.ok(PluginError.is(error));
    assert.ok(!PluginError.is(error, "Other"));
  }
  assert.equal(new PluginError("Mine", "m").retryable, undefined);
  const wrapped = new PluginError("PluginFailedError", "failed", { plugin: "p", tag: "Unavailable" });
  assert.ok(PluginError.is(wrapped, "Unavailable"), "the connector's tag inside a PluginFailedError");
  assert.ok(PluginError.is(wrapped, "PluginFailedError"));
  assert.ok(!PluginError.is(new Error("x")));
  assert.ok(!PluginError.is(new PluginError("PolicyDeniedError", "no", { tag: "Unavailable" }), "Unavailable"));
});

const FIXTURES = `${ROOT}/tests/fixtures/sdk`;

const run = async (k: TestKeel, workflow: string, input: unknown) => {
  const res = await k.api("POST", `/api/workflows/${workflow}/runs?wait=60`, { input });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  return res.body;
};

Deno.test("a connector and an agent written with defineConnector and defineAgent serve real calls through the host", async () => {
  const k = await startTestKeel();
  try {
    for (const [folder, config] of [["connector", { greeting: "Hello" }], ["agent", undefined]] as const) {
      const res = await k.api("POST", "/api/plugins", { path: `${FIXTURES}/${folder}`, grant: {}, config });
      assert.equal(res.status, 201, JSON.stringify(res.body));
    }

    const greeted = await run(k, "sdk_greet", { name: "ada" });
    assert.equal(greeted.status, "succeeded", JSON.stringify(greeted));
    assert.deepEqual(greeted.output, { first: "Hello, ada", second: "Hello, ADA", upper: "ADA", keys: 2 });
    assert.deepEqual(
      greeted.steps.map((s: { kind: string; name: string }) => `${s.kind}:${s.name}`),
      ["effect:sdk.greet", "step:upper", "effect:sdk.greet"],
    );

    // A connector's PluginError reaches the workflow as a PluginError the helpers recognise.
    const expected = [
      ["unavailable", "Unavailable", true],
      ["rejected", "Rejected", false],
      ["invalid", "InvalidInput", false],
      ["not_found", "NotFound", false],
    ] as const;
    for (const [how, tag, retryable] of expected) {
      const handled = await run(k, "sdk_fail", { how, handle: true });
      assert.equal(handled.status, "succeeded", JSON.stringify(handled));
      assert.equal(handled.output.tag, "PluginFailedError", JSON.stringify(handled.output));
      assert.equal(handled.output.connectorTag, tag);
      assert.equal(handled.output.retryable, retryable, "the plugin's word on retrying reaches the caller");
      assert.deepEqual(handled.output.matched, [tag, "PluginFailedError"]);
    }
    const plain = await run(k, "sdk_fail", { how: "plain", handle: true });
    assert.equal(plain.output.connectorTag, "Error", "a plain Error keeps its name as the tag");
    assert.equal(plain.output.retryable, undefined, "and says nothing about retrying");

    // Unhandled, it fails the run with the connector's tag and details on record.
    const failed = await run(k, "sdk_fail", { how: "rejected", handle: false });
    assert.equal(failed.status, "failed", JSON.stringify(failed));
    const step = failed.steps.find((s: { name: string }) => s.name === "sdk.fail");
    assert.equal(step.error.tag, "PluginFailedError");
    assert.equal(step.error.details.tag, "Rejected");
    assert.deepEqual(step.error.details.details, { code: 550 });

    // The health handler sees the typed config.
    const health = await eventually(async () => {
      const list = await k.api("GET", "/api/plugins");
      return list.body.plugins.find((p: { name: string }) => p.name === "sdk-connector").health;
    }, () => "sdk-connector was never checked");
    assert.equal(health.ok, true, JSON.stringify(health));
  } finally {
    await k.close();
  }
});
