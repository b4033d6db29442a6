/**
 * @module
 * The rate and budget counters on a real Deno KV file: windows, exact money
 * sums, all-or-nothing across several limits, dry runs, charges after the
 * fact, and — the point of keeping them in KV with version checks — many
 * concurrent callers, even through two separate KV handles on one file (two
 * hosts), never spend past a budget.
 */
import assert from "node:assert/strict";
import { Effect, Layer, ManagedRuntime } from "effect";
import { type AppliedLimit, Limits, type Reservation, type Usage } from "../../core/policy/mod.ts";
import { Kv, makeGroupCommitter } from "../../core/store/mod.ts";
import { at } from "./_clock.ts";

const rate = (count: number, per = "1h", perMs = 3600_000, key = "global"): AppliedLimit => ({
  kind: "rate",
  rule: "r",
  key,
  count,
  per,
  perMs,
});
const budget = (
  max: number,
  unit: "usd" | "tokens" = "usd",
  period: "day" | "month" = "day",
  timezone = "UTC",
): AppliedLimit => ({ kind: "budget", rule: "b", key: "global", unit, period, max, timezone });

/** 2025-01-15 at hh:mm UTC. */
const T = (hh: number, mm = 0) => Date.UTC(2025, 0, 15, hh, mm);

/** Limits over `handles` separate Deno KV handles on one temp file; one runtime each. */
const withLimits = async (
  handles: number,
  body: (runs: Array<<A, E>(e: Effect.Effect<A, E, Limits | Kv>) => Promise<A>>) => Promise<void>,
) => {
  const dir = await Deno.makeTempDir({ prefix: "keel-limits-" });
  const kvs = await Promise.all(Array.from({ length: handles }, () => Deno.openKv(`${dir}/keel.kv`)));
  const runtimes = kvs.map((kv) =>
    ManagedRuntime.make(Limits.layer.pipe(Layer.provideMerge(Layer.succeed(Kv, { kv, group: makeGroupCommitter(kv) }))))
  );
  try {
    await body(runtimes.map((rt) => <A, E>(e: Effect.Effect<A, E, Limits | Kv>) => rt.runPromise(e)));
  } finally {
    for (const rt of runtimes) await rt.dispose();
    for (const kv of kvs) kv.close();
    await Deno.remove(dir, { recursive: true });
  }
};

const consume = (limits: AppliedLimit[], usage = {}, ms = T(12), dryRun = false) =>
  at(ms, Limits.use((l) => l.consume(limits, usage, { dryRun })));
const used = (limit: AppliedLimit, ms = T(12)) => at(ms, Limits.use((l) => l.used(limit)));

Deno.test("a rate limit lets count calls through per window and refuses the next, naming the limit", async () => {
  await withLimits(1, async ([run]) => {
    const limit = rate(3);
    for (let i = 0; i < 3; i++) assert.equal((await run(consume([limit], {}, T(12, i)))).ok, true);
    const refused = await run(consume([limit], {}, T(12, 59)));
    assert.equal(refused.ok, false);
    if (refused.ok) return;
    assert.equal(refused.name, "rate 3/1h");
    assert.equal(refused.used, 3);
    assert.equal(refused.reason, 'rate limit of 3 per 1h reached (3 used); limit of rule "r"');
    assert.deepEqual(refused.limit, limit);
    assert.equal(await run(used(limit, T(12, 30))), 3);
    assert.equal((await run(consume([limit], {}, T(13)))).ok, true, "the next hour is a new window");
    assert.equal(await run(used(limit, T(13))), 1);
  });
});

Deno.test("rate counters are separate per scope key and per rule", async () => {
  await withLimits(1, async ([run]) => {
    assert.ok((await run(consume([rate(1, "1h", 3600_000, "agent:a")]))).ok);
    assert.ok((await run(consume([rate(1, "1h", 3600_000, "agent:b")]))).ok);
    assert.ok(!(await run(consume([rate(1, "1h", 3600_000, "agent:a")]))).ok);
    assert.ok((await run(consume([{ ...rate(1, "1h", 3600_000, "agent:a"), rule: "other" }]))).ok);
  });
});

Deno.test("money is counted exactly: ten calls of 0.1 USD fit a 1 USD budget, the eleventh does not", async () => {
  await withLimits(1, async ([run]) => {
    const limit = budget(1);
    for (let i = 0; i < 10; i++) assert.ok((await run(consume([limit], { usd: 0.1 }))).ok, `call ${i + 1}`);
    const refused = await run(consume([limit], { usd: 0.1 }));
    assert.equal(refused.ok, false);
    if (!refused.ok) {
      assert.equal(refused.name, "budget usdPerDay 1");
      assert.equal(refused.used, 1);
      assert.match(refused.reason, /^money budget of 1 USD per day would be exceeded \(1 used\)/);
    }
    assert.equal(await run(used(limit)), 1);
    assert.ok((await run(consume([limit], { usd: 0 }))).ok, "a free call fits a spent budget");
    assert.ok((await run(consume([limit]))).ok, "so does a call with no cost");
  });
});

Deno.test("a budget day starts at midnight in the budget's time zone, a month on the first", async () => {
  await withLimits(1, async ([run]) => {
    const berlin = budget(1, "usd", "day", "Europe/Berlin");
    assert.ok((await run(consume([berlin], { usd: 1 }, Date.UTC(2025, 0, 15, 22, 30)))).ok, "23:30 in Berlin");
    assert.ok(!(await run(consume([berlin], { usd: 1 }, Date.UTC(2025, 0, 15, 22, 50)))).ok, "same Berlin day");
    assert.ok((await run(consume([berlin], { usd: 1 }, Date.UTC(2025, 0, 15, 23, 10)))).ok, "00:10 next day");
    const month = budget(100, "tokens", "month");
    assert.ok((await run(consume([month], { tokens: 100 }, Date.UTC(2025, 0, 31, 23)))).ok);
    assert.ok(!(await run(consume([month], { tokens: 1 }, Date.UTC(2025, 0, 31, 23, 59)))).ok);
    assert.ok((await run(consume([month], { tokens: 100 }, Date.UTC(2025, 1, 1)))).ok, "February");
  });
});

Deno.test("several limits are all or nothing: one that refuses leaves the others uncounted", async () => {
  await withLimits(1, async ([run]) => {
    const calls = rate(100);
    const money = budget(1);
    assert.ok((await run(consume([calls, money], { usd: 0.75 }))).ok);
    const refused = await run(consume([calls, money], { usd: 0.5 }));
    assert.equal(refused.ok, false);
    if (!refused.ok) assert.equal(refused.limit, money);
    assert.equal(await run(used(calls)), 1, "the refused call did not count against the rate");
    assert.equal(await run(used(money)), 0.75);
  });
});

Deno.test("a dry run says whether a call would fit without counting it", async () => {
  await withLimits(1, async ([run]) => {
    const limit = rate(1);
    assert.ok((await run(consume([limit], {}, T(12), true))).ok);
    assert.equal(await run(used(limit)), 0);
    assert.ok((await run(consume([limit]))).ok);
    assert.ok(!(await run(consume([limit], {}, T(12), true))).ok);
  });
});

/** Count a worst case with a hold, as the model router does, and return what was counted. */
const reserve = async (
  run: <A, E>(e: Effect.Effect<A, E, Limits | Kv>) => Promise<A>,
  limits: AppliedLimit[],
  usage: Usage,
  ms = T(12),
) => {
  const verdict = await run(at(ms, Limits.use((l) => l.consume(limits, usage, { hold: "run_x:1" }))));
  assert.ok(verdict.ok && verdict.reservation, JSON.stringify(verdict));
  return verdict.reservation;
};
const settle = (reservation: Reservation, actual: Usage, ms = T(12)) =>
  at(ms, Limits.use((l) => l.settle(reservation, actual)));

Deno.test("settle charges usage known only afterwards, past the cap if it must; the next call is refused", async () => {
  await withLimits(1, async ([run]) => {
    const tokens = budget(1000, "tokens");
    const held = await reserve(run, [tokens], { tokens: 900 });
    await run(settle(held, { tokens: 1300 }));
    assert.equal(await run(used(tokens)), 1300);
    assert.ok(!(await run(consume([tokens], { tokens: 1 }))).ok);
  });
});

Deno.test("settle gives back the unused part of a worst case, so the budget fits the calls it really paid for", async () => {
  await withLimits(1, async ([run]) => {
    const money = budget(1);
    const tokens = budget(1000, "tokens");
    const calls = rate(10);
    const held = await reserve(run, [money, tokens, calls], { calls: 1, usd: 0.8, tokens: 900 });
    assert.ok(!(await run(consume([money], { usd: 0.3 }))).ok, "the worst case is counted while the call is out");
    await run(settle(held, { calls: 1, usd: 0.05, tokens: 120 }));
    assert.equal(await run(used(money)), 0.05);
    assert.equal(await run(used(tokens)), 120);
    assert.equal(await run(used(calls)), 1, "the call itself stays counted");
    assert.ok((await run(consume([money], { usd: 0.9 }))).ok, "what was given back is spendable again");
    assert.ok(!(await run(consume([money], { usd: 0.1 }))).ok, "and no more");
  });
});

Deno.test("a reservation is settled once: settling it again moves nothing", async () => {
  await withLimits(2, async ([a, b]) => {
    const money = budget(1);
    const held = await reserve(a, [money], { usd: 0.5 });
    assert.ok((await a(consume([money], { usd: 0.25 }))).ok, "another call spends beside it");
    // Two settles racing, through two handles, then a third: only one of them gives anything back.
    await Promise.all([a(settle(held, { usd: 0.1 })), b(settle(held, { usd: 0.1 }))]);
    await a(settle(held, {}));
    assert.equal(await a(used(money)), 0.35);
  });
});

Deno.test("settle moves the counters of the window the call was counted in, not the window it ends in", async () => {
  await withLimits(1, async ([run]) => {
    const money = budget(1);
    const hourly = rate(5);
    const held = await reserve(run, [money, hourly], { calls: 1, usd: 0.6 }, T(23, 59));
    const next = Date.UTC(2025, 0, 16, 0, 1);
    assert.ok((await run(consume([money, hourly], { calls: 1, usd: 0.2 }, next))).ok, "a call in the new day");
    // The first call ends after midnight: it gives back to the day before, and never below the new day's own use.
    await run(settle(held, { calls: 0, usd: 0.1 }, next));
    assert.equal(await run(used(money, T(23, 59))), 0.1);
    assert.equal(await run(used(hourly, T(23, 59))), 0);
    assert.equal(await run(used(money, next)), 0.2);
    assert.equal(await run(used(hourly, next)), 1);
  });
});

Deno.test("a hold never settled (Keel stopped while the call was out) leaves its worst case counted", async () => {
  await withLimits(1, async ([run]) => {
    const money = budget(1);
    await reserve(run, [money], { usd: 0.7 });
    const holds = await run(
      Kv.use(({ kv }) => Effect.promise(() => Array.fromAsync(kv.list({ prefix: ["limit_hold"] })))),
    );
    assert.equal(holds.length, 1);
    assert.equal((holds[0].value as { label: string }).label, "run_x:1");
    assert.equal(await run(used(money)), 0.7);
  });
});

Deno.test("50 concurrent calls of 0.30 USD against a 5 USD budget: exactly 16 pass and 4.80 USD is spent", async () => {
  await withLimits(1, async ([run]) => {
    const limit = budget(5);
    const results = await Promise.all(Array.from({ length: 50 }, () => run(consume([limit], { usd: 0.3 }))));
    assert.equal(results.filter((r) => r.ok).length, 16);
    assert.equal(await run(used(limit)), 4.8);
  });
});

Deno.test("two KV handles on one file (two hosts) racing 60 calls never overspend their shared budget", async () => {
  await withLimits(2, async ([a, b]) => {
    const limit = budget(2);
    const calls = Array.from({ length: 60 }, (_, i) => (i % 2 ? a : b)(consume([limit], { usd: 0.25 })));
    const results = await Promise.all(calls);
    assert.equal(results.filter((r) => r.ok).length, 8);
    assert.equal(await a(used(limit)), 2);
    assert.equal(await b(used(limit)), 2);
  });
});
