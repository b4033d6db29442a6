/**
 * @module
 * The list routes take a strict `?limit=`: approvals give the oldest `limit` (pending ones read ten at a time),
 * the audit log the newest; `0`, `abc`, `0x10` and values past 10,000 are a 400.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel } from "../_support/keel.ts";

Deno.test("approvals and audit events take a strict limit", async () => {
  const k = await startTestKeel();
  try {
    const res = await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/conc_limits`, grant: {} });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    const runs: string[] = [];
    for (let i = 0; i < 13; i++) {
      const run = await k.api("POST", "/api/workflows/asks_one/runs?wait=10", { input: {} });
      assert.equal(run.body.status, "waiting_approval", JSON.stringify(run.body));
      runs.push(run.body.runId);
    }
    const all = (await k.api("GET", "/api/approvals?status=pending")).body.approvals;
    assert.deepEqual(all.map((a: { runId: string }) => a.runId), runs, "oldest first");
    const three = await k.api("GET", "/api/approvals?status=pending&limit=3");
    assert.equal(three.status, 200);
    assert.deepEqual(three.body.approvals.map((a: { runId: string }) => a.runId), runs.slice(0, 3));
    // A decided one leaves the pending list; the limit counts pending ones only.
    assert.equal((await k.api("POST", `/api/approvals/${all[0].id}/deny`, {})).status, 200);
    const next = (await k.api("GET", "/api/approvals?status=pending&limit=12")).body.approvals;
    assert.deepEqual(next.map((a: { runId: string }) => a.runId), runs.slice(1, 13));
    assert.equal((await k.api("GET", "/api/approvals?limit=2")).body.approvals.length, 2);
    for (const path of ["/api/approvals", "/api/audit"]) {
      for (const bad of ["0", "abc", "0x10", "10001", "", "1.5"]) {
        const reply = await k.api("GET", `${path}?limit=${bad}`);
        assert.equal(reply.status, 400, `${path}?limit=${bad}: ${JSON.stringify(reply.body)}`);
        assert.match(reply.body.error.message, /Query "limit" must be an integer from 1 to 10000/);
      }
    }
  } finally {
    await k.close();
  }
});
