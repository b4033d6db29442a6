/**
 * A replay that diverges from its journal fails the run (README: "A replay that asks for a different call than the
 * journal holds at that position fails the run with an error naming the step"), even when the workflow wraps the
 * call in try/catch, as it must around `ctx.child` to handle a failed child. Both sides hold to it: the SDK fails
 * every later call and the result with the divergence, and the host, which cannot trust the SDK, refuses every later
 * call and fails the run whatever its workflow returns.
 */
import { assert, ENDED, start, until, withKeel } from "./_ctx_edges.ts";

Deno.test("a diverged ctx.child inside try/catch still fails the run with NonDeterminism naming the step", () =>
  withKeel(async (k) => {
    // Pass 1 starts child "kid" (seq 1) and parks; the replay asks for child "kid2" at seq 1.
    const run = await start(k, "diverge_child", {});
    const done = await until(k, run.id, ENDED);
    assert.equal(done.status, "failed", `run ${done.status} with output ${JSON.stringify(done.output)}`);
    assert.match(
      done.error.message,
      /diverged from its journal at step 1: recorded child "child:kid", code asked for child "child:kid2"/,
    );
  }));

Deno.test("a diverged ctx.step inside try/catch still fails the run", () =>
  withKeel(async (k) => {
    const run = await start(k, "diverge_step", {});
    const done = await until(k, run.id, ENDED);
    assert.equal(done.status, "failed", `run ${done.status} with output ${JSON.stringify(done.output)}`);
    assert.match(done.error.message, /step 1: recorded step "fetch_a", code asked for step "fetch_b"/);
  }));

Deno.test("a divergence the host finds fails the run even if the workflow, without the SDK, ignores it", () =>
  withKeel(async (k) => {
    const run = await start(k, "raw_diverge", {});
    const done = await until(k, run.id, ENDED);
    assert.equal(done.status, "failed", `run ${done.status} with output ${JSON.stringify(done.output)}`);
    assert.match(done.error.message, /step 1: recorded step "a", code asked for timer "sleep"/);
  }));
