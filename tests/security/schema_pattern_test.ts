/**
 * @module
 * A plugin's schema `pattern` that backtracks polynomially (`^\d*\d*x$`
 * passes the install check) cannot stall Keel: the value is checked in the
 * schema-check process, which is killed at its deadline. Keel runs in this
 * test's own process, so each `/healthz` answered and each run finished while
 * the slow check is under way shows Keel's main thread was free. Unguarded,
 * 45 KB of digits took seconds on this thread (three on the 2-core CI machine),
 * 58 KB about six, and nothing else was served meanwhile.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { SCHEMA_CHECK_DEADLINE_MS } from "../../core/manifest/mod.ts";

const FIXTURES = `${ROOT}/tests/fixtures/hostile`;

const install = async (k: TestKeel) => {
  for (const folder of ["slow_pattern", "slow_pattern_agent"]) {
    const res = await k.api("POST", "/api/plugins", { path: `${FIXTURES}/${folder}`, grant: {} });
    assert.equal(res.status, 201, JSON.stringify(res.body));
  }
};

const start = (k: TestKeel, workflow: string, input: unknown) =>
  k.api("POST", `/api/workflows/${workflow}/runs?wait=60`, { input });

/**
 * Run `slow` and, while it is pending, call `/healthz` one call after another and start one run of a workflow
 * without patterns. Returns `slow`'s answer, how many health checks were answered before it, the longest wait for
 * one (a blocked main thread answers none until it is free), and whether the other run had ended by then.
 */
const whileSlow = async <A>(k: TestKeel, slow: () => Promise<A>) => {
  let done = false;
  const answer = slow().finally(() => (done = true));
  let healthy = 0;
  let longestMs = 0;
  let otherEnded = false;
  const other = start(k, "pattern_free", { n: 7 }).then((res) => {
    assert.equal(res.status, 202, JSON.stringify(res.body));
    assert.equal(res.body.status, "succeeded", JSON.stringify(res.body));
    assert.deepEqual(res.body.output, { n: 7 });
    if (!done) otherEnded = true;
  });
  while (!done) {
    const asked = performance.now();
    const res = await fetch(`${k.url}/healthz`);
    assert.equal(res.status, 200);
    await res.body?.cancel();
    longestMs = Math.max(longestMs, performance.now() - asked);
    if (!done) healthy++;
  }
  await other;
  return { answer: await answer, healthy, longestMs, otherEnded };
};

Deno.test("a slow schema pattern on workflow input is refused at its deadline while Keel keeps serving", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    // The first check starts the schema-check process; a good value passes, a bad one is refused with the pattern.
    const good = await start(k, "pattern_start", { code: "123x" });
    assert.equal(good.status, 202, JSON.stringify(good.body));
    assert.equal(good.body.status, "succeeded", JSON.stringify(good.body));

    // 45 KB of digits: within the 48 KB input cap, and seconds of backtracking.
    const { answer, healthy, longestMs, otherEnded } = await whileSlow(
      k,
      () => start(k, "pattern_start", { code: "1".repeat(45_000) }),
    );
    assert.ok(healthy >= 10, `only ${healthy} health checks were answered during the slow check`);
    // Not a speed bound: a main thread stuck in the pattern answers nothing for seconds, longer than the deadline.
    assert.ok(longestMs < SCHEMA_CHECK_DEADLINE_MS, `a health check waited ${Math.round(longestMs)} ms`);
    assert.ok(otherEnded, "a run without patterns did not end while the slow check was under way");
    assert.equal(answer.status, 400, JSON.stringify(answer.body));
    assert.equal(answer.body.error.tag, "InvalidInputError");
    assert.equal(
      answer.body.error.message,
      `Input for workflow "pattern_start" is invalid: the check against the schema's patterns took longer than ${SCHEMA_CHECK_DEADLINE_MS} ms and was stopped`,
    );

    // The next checks run in a new process and still tell good from bad.
    const after = await start(k, "pattern_start", { code: "42x" });
    assert.equal(after.body.status, "succeeded", JSON.stringify(after.body));
    assert.deepEqual(after.body.output, { code: 3 });
    const bad = await start(k, "pattern_start", { code: "42" });
    assert.equal(bad.status, 400, JSON.stringify(bad.body));
    assert.match(bad.body.error.message, /field "code" String does not match pattern/);
  } finally {
    await k.close();
  }
});

Deno.test("format url, whose own regular expression backtracks, is refused at the deadline while Keel keeps serving", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    const good = await start(k, "format_start", { url: "https://example.com/x" });
    assert.equal(good.body.status, "succeeded", JSON.stringify(good.body));
    // 36 characters: eight seconds on Keel's main thread, each one more doubles it (no pattern of the plugin's own).
    const { answer, healthy, longestMs } = await whileSlow(
      k,
      () => start(k, "format_start", { url: `http://${"a".repeat(28)}_` }),
    );
    assert.ok(healthy >= 10, `only ${healthy} health checks were answered during the slow check`);
    assert.ok(longestMs < SCHEMA_CHECK_DEADLINE_MS, `a health check waited ${Math.round(longestMs)} ms`);
    assert.equal(answer.status, 400, JSON.stringify(answer.body));
    assert.equal(
      answer.body.error.message,
      `Input for workflow "format_start" is invalid: the check against the schema's patterns took longer than ${SCHEMA_CHECK_DEADLINE_MS} ms and was stopped`,
    );
    const bad = await start(k, "format_start", { url: "not a url" });
    assert.equal(bad.status, 400, JSON.stringify(bad.body));
    assert.match(bad.body.error.message, /field "url" String does not match format "url"/);
  } finally {
    await k.close();
  }
});

Deno.test("a slow schema pattern on effect args is refused at its deadline while Keel keeps serving", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    // 58 KB of digits in an effect's args (a step records at most 60 KB): seconds of backtracking, unguarded.
    const { answer, healthy, longestMs, otherEnded } = await whileSlow(
      k,
      () => start(k, "pattern_effect", { digits: 58_000 }),
    );
    assert.ok(healthy >= 10, `only ${healthy} health checks were answered during the slow check`);
    // Not a speed bound: a main thread stuck in the pattern answers nothing for seconds, longer than the deadline.
    assert.ok(longestMs < SCHEMA_CHECK_DEADLINE_MS, `a health check waited ${Math.round(longestMs)} ms`);
    assert.ok(otherEnded, "a run without patterns did not end while the slow check was under way");
    assert.equal(answer.status, 202, JSON.stringify(answer.body));
    assert.equal(answer.body.status, "succeeded", JSON.stringify(answer.body));
    assert.deepEqual(answer.body.output, {
      ok: false,
      tag: "InvalidInputError",
      message:
        `Effect "pattern.echo" args are invalid: the check against the schema's patterns took longer than ${SCHEMA_CHECK_DEADLINE_MS} ms and was stopped`,
    });

    const good = await start(k, "pattern_effect", { code: "7x" });
    assert.deepEqual(good.body.output, { ok: true, length: 2 }, JSON.stringify(good.body));
    const bad = await start(k, "pattern_effect", { code: "7" });
    assert.equal(bad.body.output.ok, false, JSON.stringify(bad.body));
    assert.equal(bad.body.output.tag, "InvalidInputError");
    assert.match(bad.body.output.message, /field "code" String does not match pattern/);
  } finally {
    await k.close();
  }
});

Deno.test("a schedule input that a slow schema pattern checks is refused at install while Keel keeps serving", async () => {
  const k = await startTestKeel();
  const dir = await Deno.makeTempDir({ prefix: "keel-slow-schedule-" });
  try {
    await install(k);
    // The plugin wrote both the pattern and the value it is checked against, at install: 45 KB of digits.
    const input = { type: "object", properties: { code: { type: "string", pattern: "^\\d*\\d*x$" } } };
    await Deno.writeTextFile(
      `${dir}/plugin.json`,
      JSON.stringify({
        name: "slow-schedule",
        version: "0.1.0",
        kind: "agent",
        description: "A scheduled workflow whose own schedule input backtracks in its own input schema",
        permissions: {},
        workflows: [{
          name: "pattern_scheduled",
          description: "Never runs: the install is refused",
          input,
          schedule: { cron: "0 3 * * *", input: { code: "1".repeat(45_000) } },
        }],
      }),
    );
    await Deno.copyFile(`${FIXTURES}/slow_pattern_agent/mod.ts`, `${dir}/mod.ts`);
    const { answer, healthy, longestMs, otherEnded } = await whileSlow(
      k,
      () => k.api("POST", "/api/plugins", { path: dir, grant: {} }),
    );
    assert.ok(healthy >= 10, `only ${healthy} health checks were answered during the slow check`);
    // Not a speed bound: a main thread stuck in the pattern answers nothing for seconds, longer than the deadline.
    assert.ok(longestMs < SCHEMA_CHECK_DEADLINE_MS, `a health check waited ${Math.round(longestMs)} ms`);
    assert.ok(otherEnded, "a run without patterns did not end while the slow check was under way");
    assert.equal(answer.status, 400, JSON.stringify(answer.body));
    assert.equal(
      answer.body.error.message,
      `Invalid manifest "${dir}/plugin.json": field "workflows.0.schedule.input" does not match the workflow's input: the check against the schema's patterns took longer than ${SCHEMA_CHECK_DEADLINE_MS} ms and was stopped`,
    );
    assert.equal((await k.api("GET", "/api/plugins/slow-schedule")).status, 404);
  } finally {
    await k.close();
    await Deno.remove(dir, { recursive: true });
  }
});
