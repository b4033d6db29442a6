/**
 * @module
 * `GET /api/runs`: the operator's list of runs, newest first, by status and workflow, paged with `next`/`before`,
 * without inputs and outputs; bad queries are a 400 naming the query.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel } from "../_support/keel.ts";

const ids = (body: { runs: Array<{ id: string }> }) => body.runs.map((r) => r.id);

Deno.test("the run list: newest first, by status and workflow, paged without gaps or repeats, no inputs", async () => {
  const k = await startTestKeel();
  try {
    for (const path of [`${ROOT}/tests/fixtures/engine_slow`, `${ROOT}/tests/fixtures/conc_limits`]) {
      assert.equal((await k.api("POST", "/api/plugins", { path, grant: {} })).status, 201);
    }
    const parked: string[] = [];
    const done: string[] = [];
    for (let i = 0; i < 6; i++) {
      const a = await k.api("POST", "/api/workflows/asks_one/runs?wait=10", { input: {} });
      assert.equal(a.body.status, "waiting_approval", JSON.stringify(a.body));
      parked.push(a.body.runId);
      const b = await k.api("POST", "/api/workflows/one/runs?wait=10", { input: { ms: 0, secret: "s3cret" } });
      assert.equal(b.body.status, "succeeded", JSON.stringify(b.body));
      done.push(b.body.runId);
    }
    const cancelled = parked.shift()!;
    assert.equal((await k.api("POST", `/api/runs/${cancelled}/cancel`, { reason: "no longer needed" })).status, 200);
    const newestFirst = (list: string[]) => [...list].reverse();
    const everything = [cancelled, done[0], ...parked.flatMap((p, i) => [p, done[i + 1]])];

    const all = await k.api("GET", "/api/runs");
    assert.equal(all.status, 200, JSON.stringify(all.body));
    assert.deepEqual(ids(all.body), newestFirst(everything));
    assert.equal(all.body.next, undefined);
    assert.ok(all.body.runs.every((r: Record<string, unknown>) => !("input" in r) && !("output" in r)));
    assert.ok(!JSON.stringify(all.body).includes("s3cret"), "the list shows inputs");

    const waiting = (await k.api("GET", "/api/runs?status=waiting_approval")).body;
    assert.deepEqual(ids(waiting), newestFirst(parked));
    assert.ok(waiting.runs.every((r: any) => typeof r.waitingFor?.approvalId === "string"));
    assert.deepEqual(ids((await k.api("GET", "/api/runs?status=succeeded&workflow=one")).body), newestFirst(done));
    assert.deepEqual(ids((await k.api("GET", "/api/runs?status=succeeded&workflow=asks_one")).body), []);
    const gone = (await k.api("GET", "/api/runs?status=cancelled")).body;
    assert.deepEqual(ids(gone), [cancelled]);
    assert.equal(gone.runs[0].cancelled.reason, "no longer needed");

    // Pages of 5 (and of 2, through the index of runs not ended) give the whole list once, in order.
    const pagings: Array<[string, string[]]> = [["", newestFirst(everything)], [
      "status=waiting_approval&",
      newestFirst(parked),
    ]];
    for (const [query, expected] of pagings) {
      const size = query ? 2 : 5;
      const seen: string[] = [];
      let before: string | undefined;
      for (let page = 0; page < 10; page++) {
        const res = await k.api("GET", `/api/runs?${query}limit=${size}${before ? `&before=${before}` : ""}`);
        assert.equal(res.status, 200, JSON.stringify(res.body));
        assert.ok(res.body.runs.length <= size);
        seen.push(...ids(res.body));
        before = res.body.next;
        if (!before) break;
      }
      assert.deepEqual(seen, expected, query);
    }

    for (
      const [bad, what] of [
        ["status=done", /Query "status" must be one of queued, running/],
        ["status=", /Query "status" must be one of/],
        ["limit=0x10", /Query "limit" must be an integer from 1 to 1000/],
        ["limit=1001", /Query "limit" must be an integer from 1 to 1000/],
        ["workflow=a%2Fb", /Query "workflow" must be a workflow name/],
        [`before=${"x".repeat(201)}`, /Query "before" must be a run id/],
      ] as const
    ) {
      const res = await k.api("GET", `/api/runs?${bad}`);
      assert.equal(res.status, 400, `${bad}: ${JSON.stringify(res.body)}`);
      assert.match(res.body.error.message, what);
    }
    const anonymous = await fetch(`${k.url}/api/runs`);
    assert.equal(anonymous.status, 401);
    await anonymous.body?.cancel();
  } finally {
    await k.close();
  }
});
