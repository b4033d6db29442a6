/**
 * Odd values a workflow may pass to the context: a `ctx.parallel` limit that is not a number (NaN, say
 * `Number(config.value)` of a missing value) used to run no branch at all and return `[undefined, …]`; a timer past
 * what a `Date` holds (a nanosecond timestamp given to `sleepUntil`) used to journal a waiting timer and then fail
 * the run with an internal "Invalid time value". Both are refused as invalid input, before anything is journaled,
 * by the SDK and (for a plugin that bypasses it) by the host.
 */
import { assert, ENDED, start, until, withKeel } from "./_ctx_edges.ts";

Deno.test("ctx.parallel with a NaN limit is refused: no branch runs", () =>
  withKeel(async (k) => {
    const run = await start(k, "par_nan", { n: 3 });
    const done = await until(k, run.id, ENDED);
    assert.equal(done.status, "failed", JSON.stringify(done.output));
    assert.match(done.error.message, /limit must be a number/);
    assert.equal(done.steps.length, 0, JSON.stringify(done.steps));
  }));

Deno.test("a timer past the Date range is refused as invalid input, and no timer step is left waiting", () =>
  withKeel(async (k) => {
    for (const input of [{ ms: 1e16 }, { until: 1.7e18 }]) {
      const run = await start(k, "sleeper", input);
      const done = await until(k, run.id, [...ENDED, "sleeping"]);
      assert.equal(done.status, "failed", JSON.stringify(done));
      assert.equal(done.error.details?.tag, "InvalidInput", JSON.stringify(done.error));
      assert.match(done.error.message, /Cannot sleep/, JSON.stringify(done.error));
      assert.ok(!done.steps.some((s: { kind: string }) => s.kind === "timer"), JSON.stringify(done.steps));
    }
  }));

Deno.test("the host refuses a timer past the Date range from a plugin that bypasses the SDK", () =>
  withKeel(async (k) => {
    const run = await start(k, "raw_sleep", { until: 1e16 });
    const done = await until(k, run.id, ENDED);
    assert.equal(done.status, "succeeded", JSON.stringify(done.error));
    assert.equal(done.output.answer.ok, false, JSON.stringify(done.output));
    assert.equal(done.output.answer.error.tag, "InvalidInputError", JSON.stringify(done.output));
    assert.match(done.output.answer.error.message, /a timer wakes by \+275760-09-13/);
    assert.ok(!done.steps.some((s: { seq: number }) => s.seq === 500), JSON.stringify(done.steps));
  }));
