/**
 * The run queue's cap (`KEEL_MAX_QUEUED`): once it holds that many runs, starts from outside — the API and webhooks —
 * are refused with 429 and `Retry-After`, nothing is written for them, and they succeed again once the queue drains.
 * Work Keel already owes is never refused: a repeated webhook delivery still gets its run, and a workflow's children
 * queue past the cap.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, TEST_TOKEN, type TestKeel } from "../_support/keel.ts";
import { signHookDelivery } from "../../core/triggers/mod.ts";

const until = async (k: TestKeel, runId: string, statuses: string[], seconds = 30) => {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const run = (await k.api("GET", `/api/runs/${runId}?wait=1`)).body;
    if (statuses.includes(run.status)) return run;
    if (Date.now() > deadline) assert.fail(`run ${runId} is ${run.status}, not ${statuses.join("|")}`);
  }
};
const startRaw = (k: TestKeel, workflow: string, input: unknown) =>
  fetch(`${k.url}/api/workflows/${workflow}/runs`, {
    method: "POST",
    headers: { authorization: `Bearer ${TEST_TOKEN}`, "content-type": "application/json" },
    body: JSON.stringify({ input }),
  });
const events = async (k: TestKeel, type: string) =>
  ((await k.api("GET", "/api/audit?limit=10000")).body.events as Array<Record<string, any>>)
    .filter((e) => e.type === type);

Deno.test("a full run queue refuses API starts with 429 and Retry-After, writes nothing, and takes them once drained", async () => {
  const k = await startTestKeel({ maxRuns: 1, maxQueued: 3 });
  try {
    for (const path of [`${ROOT}/tests/fixtures/engine_slow`, `${ROOT}/tests/fixtures/conc_limits`]) {
      assert.equal((await k.api("POST", "/api/plugins", { path, grant: {} })).status, 201);
    }
    const first = await k.api("POST", "/api/workflows/one/runs", { input: { ms: 600 } });
    assert.equal(first.body.status, "running", JSON.stringify(first.body));
    const queued: string[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await k.api("POST", "/api/workflows/one/runs", { input: { ms: 0 } });
      assert.equal(res.status, 202, JSON.stringify(res.body));
      assert.equal(res.body.status, "queued");
      queued.push(res.body.runId);
    }
    const before = (await events(k, "run.started")).length;
    const refused = await startRaw(k, "one", { ms: 0 });
    assert.equal(refused.status, 429);
    assert.equal(refused.headers.get("retry-after"), "1");
    const body = await refused.json();
    assert.equal(body.error.tag, "QueueFullError");
    assert.match(body.error.message, /3 runs are queued \(KEEL_MAX_QUEUED is 3\)/);
    assert.deepEqual(body.error.details, { queued: 3, limit: 3 });
    assert.equal((await events(k, "run.started")).length, before, "a refused start writes no run");

    for (const id of [first.body.runId, ...queued]) {
      assert.equal((await until(k, id, ["succeeded"])).status, "succeeded");
    }
    const again = await k.api("POST", "/api/workflows/one/runs?wait=10", { input: { ms: 0 } });
    assert.equal(again.status, 202, JSON.stringify(again.body));
    assert.equal(again.body.status, "succeeded");
  } finally {
    await k.close();
  }
});

Deno.test("a webhook delivery to a full queue is a 429 the sender can repeat: one run for its delivery id, once drained", async () => {
  const k = await startTestKeel({ maxRuns: 1, maxQueued: 1 });
  try {
    for (const path of [`${ROOT}/tests/fixtures/engine_slow`, `${ROOT}/tests/fixtures/conc_limits`]) {
      assert.equal((await k.api("POST", "/api/plugins", { path, grant: {} })).status, 201);
    }
    const { hook, secret } = (await k.api("POST", "/api/hooks", { workflow: "one" })).body;
    const deliver = async (delivery: string) => {
      const body = JSON.stringify({ ms: 0 });
      const res = await fetch(`${k.url}/hooks/${hook.id}`, {
        method: "POST",
        headers: await signHookDelivery(secret, body, undefined, delivery),
        body,
      });
      return { status: res.status, retryAfter: res.headers.get("retry-after"), body: await res.json() };
    };
    const busy = await k.api("POST", "/api/workflows/one/runs", { input: { ms: 800 } });
    assert.equal(busy.body.status, "running");
    const queuedFirst = await deliver("evt_1");
    assert.equal(queuedFirst.status, 202, JSON.stringify(queuedFirst.body));
    assert.equal(queuedFirst.body.status, "queued");

    const full = await deliver("evt_2");
    assert.equal(full.status, 429, JSON.stringify(full.body));
    assert.equal(full.retryAfter, "1");
    assert.equal(full.body.error.tag, "QueueFullError");
    assert.equal((await k.api("GET", `/api/runs/hook_${hook.id}_evt_2`)).status, 404, "no run for a refused delivery");
    // The sender repeats the delivery it already made: that run exists, and is the answer even while the queue is full.
    const repeated = await deliver("evt_1");
    assert.equal(repeated.status, 202, JSON.stringify(repeated.body));
    assert.equal(repeated.body.duplicate, true);
    const rejected = await events(k, "webhook.rejected");
    assert.equal(rejected.length, 1);
    assert.equal(rejected[0].data.reason, "queue_full");

    await until(k, busy.body.runId, ["succeeded"]);
    await until(k, queuedFirst.body.runId, ["succeeded"]);
    const later = await deliver("evt_2");
    assert.equal(later.status, 202, JSON.stringify(later.body));
    assert.equal(later.body.duplicate, false);
    assert.equal((await until(k, later.body.runId, ["succeeded"])).status, "succeeded");
    const started = (await events(k, "run.started")).filter((e) => e.runId === `hook_${hook.id}_evt_2`);
    assert.equal(started.length, 1);
  } finally {
    await k.close();
  }
});

Deno.test("a child started while the queue is full queues past the cap: work Keel already owes is not refused", async () => {
  const k = await startTestKeel({ maxRuns: 2, maxQueued: 1 });
  try {
    for (const path of [`${ROOT}/tests/fixtures/engine_slow`, `${ROOT}/tests/fixtures/conc_limits`]) {
      assert.equal((await k.api("POST", "/api/plugins", { path, grant: {} })).status, 201);
    }
    // The parent works for 600 ms, then starts its child; meanwhile the other slot is busy and the queue full.
    const parent = await k.api("POST", "/api/workflows/late_spawner/runs", { input: { ms: 600 } });
    assert.equal(parent.body.status, "running", JSON.stringify(parent.body));
    const busy = await k.api("POST", "/api/workflows/one/runs", { input: { ms: 1500 } });
    assert.equal(busy.body.status, "running", JSON.stringify(busy.body));
    const queued = await k.api("POST", "/api/workflows/one/runs", { input: { ms: 0 } });
    assert.equal(queued.body.status, "queued", JSON.stringify(queued.body));
    const refused = await startRaw(k, "one", { ms: 0 });
    assert.equal(refused.status, 429, "the queue is full for starts from outside");
    await refused.body?.cancel();

    const done = await until(k, parent.body.runId, ["succeeded", "failed"]);
    assert.equal(done.status, "succeeded", JSON.stringify(done));
    assert.ok(Number.isFinite(done.output.t0) && Number.isFinite(done.output.t1), JSON.stringify(done.output));
    for (const r of [busy, queued]) assert.equal((await until(k, r.body.runId, ["succeeded"])).status, "succeeded");
  } finally {
    await k.close();
  }
});

Deno.test("starts that arrive at once cannot overfill the queue: admitted starts count before their runs are queued", async () => {
  const k = await startTestKeel({ maxRuns: 1, maxQueued: 3 });
  try {
    for (const path of [`${ROOT}/tests/fixtures/engine_slow`, `${ROOT}/tests/fixtures/conc_limits`]) {
      assert.equal((await k.api("POST", "/api/plugins", { path, grant: {} })).status, 201);
    }
    const first = await k.api("POST", "/api/workflows/one/runs", { input: { ms: 3000 } });
    assert.equal(first.body.status, "running", JSON.stringify(first.body));
    // Twelve starts at once against room for three: each one's check used to pass before any of their writes.
    const answers = await Promise.all(Array.from({ length: 12 }, () => startRaw(k, "one", { ms: 0 })));
    const statuses = answers.map((r) => r.status);
    await Promise.all(answers.map((r) => r.body?.cancel()));
    assert.equal(statuses.filter((s) => s === 202).length, 3, `statuses: ${statuses.join(" ")}`);
    assert.equal(statuses.filter((s) => s === 429).length, 9, `statuses: ${statuses.join(" ")}`);
    // The refused starts wrote nothing: the first run and three queued ones are all that started.
    assert.equal((await events(k, "run.started")).length, 4);
  } finally {
    await k.close();
  }
});
