/**
 * @module
 * A paid model call is counted at its worst case before the call (so
 * concurrent calls never spend past a budget) and settled to what the
 * provider reports after it: the unused part is given back once, in the
 * window it was counted in. A call the provider refused gives back its
 * budgets; one that may have been billed (a timeout) stays counted. The
 * loopback Anthropic fake reports the usage, through the real SDK; the
 * counters are read from the same Deno KV file through Keel's `Limits`.
 */
import assert from "node:assert/strict";
import { Effect, Layer, ManagedRuntime } from "effect";
import { type AppliedLimit, Limits } from "../../core/policy/mod.ts";
import { Kv, makeGroupCommitter } from "../../core/store/mod.ts";
import type { ModelRequest } from "../../core/sdk/mod.ts";
import { type FakeAnthropic, startFakeAnthropic } from "../_support/fake_anthropic.ts";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { claudeModels, GATE_REPLIES, KEY_ENV, startRouter, type TestRouter } from "./_router.ts";

const BUDGET = `default: allow
rules:
  - id: model-budget
    match: { effect: model.generate }
    decision: allow
    limits:
      rate: { count: 100, per: 1d }
      budget: { usdPerDay: 0.002, tokensPerDay: 100000 }
`;

const moneyPerDay: AppliedLimit = {
  kind: "budget",
  rule: "model-budget",
  key: "global",
  unit: "usd",
  period: "day",
  max: 0.002,
  timezone: "UTC",
};
const money = moneyPerDay;
const tokens: AppliedLimit = { ...money, unit: "tokens", max: 100000 };
const calls: AppliedLimit = {
  kind: "rate",
  rule: "model-budget",
  key: "global",
  count: 100,
  per: "1d",
  perMs: 86_400_000,
};

const ask = (text: string, maxTokens = 50): ModelRequest => ({
  purpose: "draft",
  messages: [{ role: "user", content: text }],
  maxTokens,
});

/** A router over the fake, and a second handle on its Deno KV file to read the counters and holds with. */
const withRouter = async (
  body: (
    fake: FakeAnthropic,
    router: TestRouter,
    read: <A>(e: Effect.Effect<A, unknown, Limits | Kv>) => Promise<A>,
  ) => Promise<void>,
  models: (fake: FakeAnthropic) => string = (fake) => claudeModels(fake),
) => {
  const fake = await startFakeAnthropic();
  const dataDir = await Deno.makeTempDir({ prefix: "keel-refund-" });
  const router = await startRouter(JSON.parse(models(fake)), { "budget.yaml": BUDGET }, { dataDir });
  const kv = await Deno.openKv(`${dataDir}/keel.kv`);
  const runtime = ManagedRuntime.make(
    Limits.layer.pipe(Layer.provideMerge(Layer.succeed(Kv, { kv, group: makeGroupCommitter(kv) }))),
  );
  try {
    await body(fake, router, (e) => runtime.runPromise(e));
  } finally {
    await runtime.dispose();
    kv.close();
    await router.close();
    await fake.close();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
};

const used = (limit: AppliedLimit) => Limits.use((l) => l.used(limit));
const holds = Kv.use(({ kv }) => Effect.promise(() => Array.fromAsync(kv.list({ prefix: ["limit_hold"] }))));

Deno.test("a paid call's unused worst case is given back: the budget counts what the provider reported", async () => {
  await withRouter(async (fake, router, read) => {
    fake.fallback = () => ({ content: [{ type: "text", text: "ok" }], usage: { input: 10, output: 5 } });
    // Each call's worst case is about 0.0008 USD (50 output tokens at 15 USD/M and the input): without giving
    // back, the third call would not fit in 0.002 USD. Each really costs 10 × 3 + 5 × 15 = 105 micro-dollars.
    const results = [];
    for (let i = 0; i < 6; i++) results.push(await router.generate(ask(`Call ${i}`)));
    assert.ok(results.every((r) => r.provider === "claude" && r.costUsd === 0.000105), JSON.stringify(results));
    assert.equal(fake.requests.length, 6);
    assert.equal(await read(used(money)), 6 * 0.000105);
    assert.equal(await read(used(tokens)), 6 * 15);
    assert.equal(await read(used(calls)), 6, "each call still counts against the rate");
    assert.deepEqual(await read(holds), [], "every hold was settled");
  });
});

Deno.test("a paid call that used more than its estimate is charged the difference, past the cap if it must", async () => {
  await withRouter(async (fake, router, read) => {
    // 2,000 input tokens reported for a short prompt: the estimate missed them.
    fake.script({ content: [{ type: "text", text: "long" }], usage: { input: 2000, output: 50 } });
    const r = await router.generate(ask("Short"));
    assert.equal(r.costUsd, 0.00675);
    assert.equal(await read(used(money)), 0.00675);
    assert.equal(await read(used(tokens)), 2050);
    const refused = await router.fail(ask("Next"));
    assert.equal(refused._tag, "PolicyDeniedError");
    assert.equal(fake.requests.length, 1);
  });
});

Deno.test("a paid call the provider refused gives its budgets back; one that timed out stays counted", async () => {
  await withRouter(
    async (fake, router, read) => {
      fake.script({ status: 500 }, { status: 500 }, { status: 500 });
      assert.equal((await router.fail(ask("Refused")))._tag, "ModelUnavailableError");
      assert.equal(await read(used(money)), 0, "nothing was billed for an answer that was an error");
      assert.equal(await read(used(tokens)), 0);
      assert.equal(await read(used(calls)), 1, "the call went out: it counts against the rate");
      fake.script({ hang: true });
      assert.equal((await router.fail(ask("Hangs")))._tag, "ModelUnavailableError");
      const worst = await read(used(money));
      assert.ok(worst > 0.00075, `the worst case of a call that may have been billed stays counted (${worst})`);
      assert.deepEqual(await read(holds), []);
    },
    (fake) =>
      JSON.stringify({
        providers: { claude: { type: "anthropic", baseURL: fake.url, apiKeyEnv: KEY_ENV, timeoutMs: 500 } },
        routes: [{ purpose: "draft", use: [{ provider: "claude", model: "claude-sonnet-4-6" }] }],
        retry: { maxAttempts: 3, baseDelayMs: 5, maxDelayMs: 50 },
        cache: { enabled: false },
      }),
  );
});

const FIXTURES = `${ROOT}/tests/models/fixtures`;

Deno.test("a run replayed after an approval settles its model call once: the budget keeps the real cost", async () => {
  const fake = await startFakeAnthropic();
  const k: TestKeel = await startTestKeel({
    policies: {
      "gate.yaml": GATE_REPLIES,
      "budget.yaml": BUDGET.replace("default: allow\n", "").replace("usdPerDay: 0.002", "usdPerDay: 1"),
      "models.json": claudeModels(fake),
    },
  });
  try {
    for (const name of ["inbox", "model_agent"]) {
      const res = await k.api("POST", "/api/plugins", { path: `${FIXTURES}/${name}`, grant: {} });
      assert.equal(res.status, 201, JSON.stringify(res.body));
    }
    const read = <A>(e: Effect.Effect<A, unknown, Limits | Kv>) => k.keel.runtime.runPromise(e as Effect.Effect<A>);
    fake.script({ content: [{ type: "text", text: "Thanks, see you Friday." }], usage: { input: 50, output: 8 } });
    const parked = (await k.api("POST", "/api/workflows/ask_then_reply/runs?wait=30", {
      input: { purpose: "draft", text: "Reply to Ada" },
    })).body;
    assert.equal(parked.status, "waiting_approval", JSON.stringify(parked));
    const money = { ...moneyPerDay, max: 1 };
    assert.equal(await read(used(money)), 0.00027, "50 × 3 + 8 × 15 micro-dollars, not the worst case");
    assert.equal(await read(used(tokens)), 58);
    const approved = await k.api("POST", `/api/approvals/${parked.waitingFor.approvalId}/approve`, {});
    assert.equal(approved.status, 200, JSON.stringify(approved.body));
    const done = (await k.api("GET", `/api/runs/${parked.id}?wait=30`)).body;
    assert.equal(done.status, "succeeded", JSON.stringify(done));
    assert.equal(fake.requests.length, 1);
    assert.equal(await read(used(money)), 0.00027, "the replay neither charged nor gave back again");
    assert.equal(await read(used(calls)), 1);
    assert.deepEqual(await read(holds), []);
  } finally {
    await k.close();
    await fake.close();
  }
});
