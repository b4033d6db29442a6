/**
 * @module
 * A real model router for tests: Keel's own `ModelRouter.layer` over a real
 * policy engine and limits, a real Deno KV file, and a temp policy folder
 * holding the test's `models.json` and policy files. Providers are the real
 * SDK clients, pointed at the loopback fakes.
 */
import { Cause, Effect, Layer, ManagedRuntime } from "effect";
import { KeelConfig } from "../../core/config/mod.ts";
import { Kv } from "../../core/store/mod.ts";
import { Limits, Policy } from "../../core/policy/mod.ts";
import { type ModelCallContext, ModelRouter } from "../../core/models/mod.ts";
import type { ModelRequest, ModelResult } from "../../core/sdk/mod.ts";
import { ROOT } from "../_support/keel.ts";
import type { FakeAnthropic } from "../_support/fake_anthropic.ts";

/** The environment variable tests keep the fake Anthropic key in. */
export const KEY_ENV = "KEEL_TEST_ANTHROPIC_KEY";
Deno.env.set(KEY_ENV, "sk-ant-fake-test-key");

/** A policy that allows everything that no rule gates. */
export const ALLOW_ALL = "default: allow\nrules: []\n";

/** A started router. */
export interface TestRouter {
  generate(request: ModelRequest, context?: Partial<ModelCallContext>): Promise<ModelResult>;
  /** Run `generate` and return the failure's tagged error (throws if it succeeded). */
  fail(
    request: ModelRequest,
    context?: Partial<ModelCallContext>,
  ): Promise<{ _tag: string; message: string; details?: any }>;
  readonly dir: string;
  close(): Promise<void>;
}

let seq = 0;

/** Start a router over `models` (written as models.json) and `policies` (name → YAML). */
export const startRouter = async (
  models: unknown,
  policies: Record<string, string> = { "allow.yaml": ALLOW_ALL },
  options: { dataDir?: string } = {},
): Promise<TestRouter> => {
  const dir = await Deno.makeTempDir({ prefix: "keel-models-" });
  const policiesDir = `${dir}/policies`;
  await Deno.mkdir(policiesDir);
  if (models !== undefined) await Deno.writeTextFile(`${policiesDir}/models.json`, JSON.stringify(models, null, 2));
  for (const [name, text] of Object.entries(policies)) await Deno.writeTextFile(`${policiesDir}/${name}`, text);
  const config = KeelConfig.layer({
    dataDir: options.dataDir ?? `${dir}/data`,
    hostname: "127.0.0.1",
    port: 0,
    token: "t",
    policiesDir,
    root: ROOT,
    rpcTimeoutMs: 10_000,
    eagerMemory: false,
  });
  const stores = Kv.layer.pipe(Layer.provideMerge(config));
  const layer = ModelRouter.layer.pipe(
    Layer.provideMerge(Layer.mergeAll(Policy.layer, Limits.layer)),
    Layer.provideMerge(stores),
  );
  const runtime = ManagedRuntime.make(layer);
  const context = (c: Partial<ModelCallContext> = {}): ModelCallContext => ({
    runId: "run_test",
    seq: ++seq,
    agent: "tester",
    workflow: "test",
    tools: [],
    snippets: [],
    ...c,
  });
  try {
    await runtime.runPromise(ModelRouter.use(() => Effect.void));
  } catch (error) {
    await runtime.dispose();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw error;
  }
  return {
    dir,
    generate: (request, c) => runtime.runPromise(ModelRouter.use((r) => r.generate(request, context(c)))),
    async fail(request, c) {
      const exit = await runtime.runPromiseExit(ModelRouter.use((r) => r.generate(request, context(c))));
      if (exit._tag === "Success") throw new Error(`expected a failure, got ${JSON.stringify(exit.value)}`);
      return Cause.squash(exit.cause) as { _tag: string; message: string; details?: any };
    },
    async close() {
      await runtime.dispose();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
};

/** models.json: `draft` → the fake Anthropic; the cache off, so only the journal can prevent a second call. */
export const claudeModels = (fake: FakeAnthropic, extra: Record<string, unknown> = {}) =>
  JSON.stringify({
    providers: { claude: { type: "anthropic", baseURL: fake.url, apiKeyEnv: KEY_ENV, timeoutMs: 10_000 } },
    routes: [{ purpose: "draft", use: [{ provider: "claude", model: "claude-sonnet-4-6" }] }],
    cache: { enabled: false },
    ...extra,
  });

/** Replies wait for the operator. */
export const GATE_REPLIES = `default: allow
rules:
  - id: gate-replies
    match: { effect: inbox.reply }
    decision: approve
`;
