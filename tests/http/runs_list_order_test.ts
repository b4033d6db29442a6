/**
 * @module
 * `GET /api/runs` is "newest first" for every run, not only for runs whose id Keel generated: a webhook delivery's run
 * (`hook_<hook>_<delivery>`) and a schedule's (`cron_<workflow>_<ms>`) have ids that do not sort by time, and must
 * still be listed where their creation puts them, paged without gaps or repeats.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel } from "../_support/keel.ts";
import { signHookDelivery } from "../../core/triggers/mod.ts";

const ids = (body: { runs: Array<{ id: string }> }) => body.runs.map((r) => r.id);

Deno.test("the run list puts a webhook's run (an id given by the sender) where its creation puts it: newest first", async () => {
  const k = await startTestKeel();
  try {
    assert.equal(
      (await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/bench_workflows`, grant: {} })).status,
      201,
    );
    const input = { steps: 1, bytes: 8, checkpoint: true };
    const start = async () => (await k.api("POST", "/api/workflows/bench_w1/runs?wait=10", { input })).body.runId;
    const { hook, secret } = (await k.api("POST", "/api/hooks", { workflow: "bench_w1" })).body;
    const deliver = async (delivery: string) => {
      const body = JSON.stringify(input);
      const res = await fetch(`${k.url}/hooks/${hook.id}`, {
        method: "POST",
        headers: await signHookDelivery(secret, body, undefined, delivery),
        body,
      });
      const answer = await res.json();
      assert.equal(res.status, 202, JSON.stringify(answer));
      return answer.runId as string;
    };
    // Oldest to newest: an API run, a delivery whose id sorts late ("zz"), two API runs, a delivery whose id sorts
    // early ("aa"), an API run.
    const created: string[] = [];
    created.push(await start());
    await new Promise((r) => setTimeout(r, 5));
    created.push(await deliver("zz-1"));
    await new Promise((r) => setTimeout(r, 5));
    created.push(await start(), await start());
    await new Promise((r) => setTimeout(r, 5));
    created.push(await deliver("aa-2"));
    await new Promise((r) => setTimeout(r, 5));
    created.push(await start());
    const newestFirst = [...created].reverse();

    const all = await k.api("GET", "/api/runs");
    assert.equal(all.status, 200, JSON.stringify(all.body));
    assert.deepEqual(ids(all.body), newestFirst, "newest first, whatever the ids");
    // The newest run is on the first page of one.
    const first = await k.api("GET", "/api/runs?limit=1");
    assert.deepEqual(ids(first.body), [newestFirst[0]]);
    // Pages of two give every run once, in the same order.
    for (const query of ["", "status=succeeded&", "workflow=bench_w1&"]) {
      const seen: string[] = [];
      let before: string | undefined;
      for (let page = 0; page < 10; page++) {
        const res = await k.api("GET", `/api/runs?${query}limit=2${before ? `&before=${before}` : ""}`);
        assert.equal(res.status, 200, JSON.stringify(res.body));
        seen.push(...ids(res.body));
        before = res.body.next;
        if (!before) break;
      }
      assert.deepEqual(seen, newestFirst, query);
    }
  } finally {
    await k.close();
  }
});

Deno.test("runs written before the creation-time index are indexed once at start, and listed in order", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-runs-order-" });
  try {
    const created: string[] = [];
    let k = await startTestKeel({ dataDir });
    try {
      const path = `${ROOT}/tests/fixtures/conc_limits`;
      for (const p of [`${ROOT}/tests/fixtures/engine_slow`, path]) {
        assert.equal((await k.api("POST", "/api/plugins", { path: p, grant: {} })).status, 201);
      }
      for (let i = 0; i < 3; i++) {
        const r = await k.api("POST", "/api/workflows/asks_one/runs?wait=10", { input: {} });
        assert.equal(r.body.status, "waiting_approval", JSON.stringify(r.body));
        created.push(r.body.runId);
        await new Promise((r) => setTimeout(r, 3));
      }
    } finally {
      await k.close();
    }
    // As an older Keel left it: no creation-time entries, and active-run entries that only say `true`.
    const kv = await Deno.openKv(`${dataDir}/keel.kv`);
    try {
      const op = kv.atomic().delete(["meta", "run_created_index"]);
      for await (const e of kv.list({ prefix: ["run_created"] })) op.delete(e.key);
      for await (const e of kv.list({ prefix: ["run_active"] })) op.set(e.key, true);
      assert.ok((await op.commit()).ok);
    } finally {
      kv.close();
    }
    k = await startTestKeel({ dataDir });
    try {
      const newestFirst = [...created].reverse();
      assert.deepEqual(ids((await k.api("GET", "/api/runs")).body), newestFirst);
      assert.deepEqual(ids((await k.api("GET", "/api/runs?status=waiting_approval")).body), newestFirst);
      const page = await k.api("GET", `/api/runs?status=waiting_approval&limit=1&before=${newestFirst[0]}`);
      assert.deepEqual(ids(page.body), [newestFirst[1]]);
      assert.equal(page.body.next, newestFirst[1]);
      const unknown = await k.api("GET", "/api/runs?before=run_none");
      assert.equal(unknown.status, 400);
      assert.match(unknown.body.error.message, /Query "before" must be the id of a run/);
    } finally {
      await k.close();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});
