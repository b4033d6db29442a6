/**
 * A workflow's `concurrency: 1` holds however its runs get a slot: decisions made at once (the full path of
 * `decide`, for effect gates), children started at once, and webhook deliveries (runs with given ids) arriving at
 * once. Each run records [t0, t1] while it holds its slot; no two spans may overlap. Decisions and given-id starts
 * used to check the limit, then commit, then execute: every one made meanwhile saw the same free slot.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { signHookDelivery } from "../../core/triggers/mod.ts";

const FIX = `${ROOT}/tests/fixtures/conc_limits`;
const install = async (k: TestKeel) => {
  for (const path of [`${ROOT}/tests/fixtures/engine_slow`, FIX]) {
    const res = await k.api("POST", "/api/plugins", { path, grant: {} });
    assert.equal(res.status, 201, JSON.stringify(res.body));
  }
};
const until = async (k: TestKeel, runId: string, statuses: string[], seconds = 30) => {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const run = (await k.api("GET", `/api/runs/${runId}?wait=1`)).body;
    if (statuses.includes(run.status)) return run;
    if (Date.now() > deadline) assert.fail(`run ${runId} is ${run.status}, not ${statuses.join("|")}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};
/** The most spans that overlap at any moment. */
const peak = (spans: Array<{ t0: number; t1: number }>) =>
  Math.max(...spans.map((s) => spans.filter((o) => o.t0 <= s.t0 && s.t0 < o.t1).length));

Deno.test("workflow concurrency 1 holds when several policy-gated runs are approved at once", async () => {
  const k = await startTestKeel({
    policies: {
      "p.yaml": `default: allow
rules:
  - id: gate-slow
    match: { effect: slow.work }
    decision: approve
`,
    },
  });
  try {
    await install(k);
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) {
      const res = await k.api("POST", "/api/workflows/gated_one/runs?wait=10", { input: { tag: i } });
      assert.equal(res.body.status, "waiting_approval", JSON.stringify(res.body));
      ids.push(res.body.runId);
    }
    const pending = (await k.api("GET", "/api/approvals?status=pending")).body.approvals;
    assert.equal(pending.length, 4);
    const decided = await Promise.all(
      pending.map((a: { id: string }) => k.api("POST", `/api/approvals/${a.id}/approve`, {})),
    );
    for (const d of decided) assert.equal(d.status, 200, JSON.stringify(d.body));
    const done = await Promise.all(ids.map((id) => until(k, id, ["succeeded", "failed"])));
    for (const d of done) assert.equal(d.status, "succeeded", JSON.stringify(d));
    const spans = done.map((d) => d.output);
    assert.equal(peak(spans), 1, `runs of a concurrency-1 workflow overlapped: ${JSON.stringify(spans)}`);
  } finally {
    await k.close();
  }
});

Deno.test("workflow concurrency 1 holds when several parents start it as a child at once", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    const parents = await Promise.all(
      Array.from({ length: 4 }, () => k.api("POST", "/api/workflows/spawner/runs", { input: {} })),
    );
    const done = await Promise.all(parents.map((p) => until(k, p.body.runId, ["succeeded", "failed"])));
    for (const d of done) assert.equal(d.status, "succeeded", JSON.stringify(d));
    const spans = done.map((d) => d.output);
    assert.equal(peak(spans), 1, `child runs of a concurrency-1 workflow overlapped: ${JSON.stringify(spans)}`);
  } finally {
    await k.close();
  }
});

Deno.test("workflow concurrency 1 holds for webhook deliveries that arrive at once", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    const created = (await k.api("POST", "/api/hooks", { workflow: "one" })).body;
    const hook = { id: created.hook.id as string, secret: created.secret as string };
    const deliveries = await Promise.all(Array.from({ length: 4 }, async (_, i) => {
      const body = JSON.stringify({ ms: 400 });
      const res = await fetch(`${k.url}/hooks/${hook.id}`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          ...(await signHookDelivery(hook.secret, body, undefined, `d${i}`)),
        },
        body,
      });
      const body2 = await res.json();
      assert.ok(body2.runId, JSON.stringify(body2));
      return body2;
    }));
    const done = await Promise.all(deliveries.map((d) => until(k, d.runId, ["succeeded", "failed"])));
    for (const d of done) assert.equal(d.status, "succeeded", JSON.stringify(d));
    const spans = done.map((d) => d.output);
    assert.equal(peak(spans), 1, `webhook runs of a concurrency-1 workflow overlapped: ${JSON.stringify(spans)}`);
  } finally {
    await k.close();
  }
});
