/** Workflow-context behaviour across restarts, cancels, children, parallel bounds and odd timer values. */
import { assert, ENDED, get, install, start, startTestKeel, until, withKeel } from "./_ctx_edges.ts";
import { Journal } from "../../core/journal/mod.ts";

Deno.test("parallel bounds: 0/-3 → 1, 2.7 → 2, 100/1e9 → 16, default 8, all branches run", () =>
  withKeel(async (k) => {
    for (const [limit, peak] of [[0, 1], [-3, 1], [2.7, 2], [100, 16], [1e9, 16], [undefined, 8]] as const) {
      const r = await start(k, "par", { n: 20, ...(limit === undefined ? {} : { limit }) });
      const d = await until(k, r.id, ENDED);
      assert.equal(d.status, "succeeded");
      assert.equal(d.output.peak, peak, `limit ${limit}`);
      assert.equal(d.output.ran, 20);
      assert.deepEqual(d.output.results, Array.from({ length: 20 }, (_, i) => i));
    }
  }));

Deno.test("branches swapped between passes fail with NonDeterminism naming the step", () =>
  withKeel(async (k) => {
    const d = await until(k, (await start(k, "par_diverge", {})).id, ENDED);
    assert.equal(d.status, "failed");
    assert.match(d.error.message, /step 1: recorded step "a", code asked for step "b"/);
  }));

Deno.test("cancelling the top of a 5-deep chain cancels every descendant; sleeping leaf leaves the queue", () =>
  withKeel(async (k) => {
    const top = await start(k, "chain", { depth: 0, max: 4 });
    const leaf = `${top.id}.c1.c1.c1.c1`;
    await until(k, leaf, ["sleeping"]);
    assert.equal((await k.api("POST", `/api/runs/${top.id}/cancel`, {})).status, 200);
    let id = top.id;
    for (let i = 0; i <= 4; i++, id += ".c1") assert.equal((await get(k, id)).status, "cancelled", id);
    const queue = await k.keel.runtime.runPromise(Journal.use((j) => j.queue));
    assert.ok(!queue.some((q) => q.runId === leaf));
  }));

Deno.test("restart mid-sleep: child started once, now()/random() identical after restart, branch now() recorded", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-ctx-" });
  try {
    let id: string;
    let firstT: number;
    const k1 = await startTestKeel({ dataDir });
    try {
      await install(k1);
      id = (await start(k1, "once", { ms: 1200 })).id;
      const p = await until(k1, id, ["sleeping"]);
      firstT = p.steps.find((s: { name: string }) => s.name === "keel:now").value;
    } finally {
      await k1.close();
    }
    await new Promise((r) => setTimeout(r, 1300));
    const k2 = await startTestKeel({ dataDir });
    try {
      const d = await until(k2, id, ENDED);
      assert.equal(d.status, "succeeded", JSON.stringify(d.error));
      assert.equal(d.output.t, firstT);
      assert.equal(d.output.out, "kid done");
      const runs = await k2.keel.runtime.runPromise(Journal.use((j) => j.listRuns({})));
      assert.equal(runs.filter((r) => r.parentRunId === id).length, 1);
      assert.notEqual(d.output.r[0].r, d.output.r[1].r);
      assert.ok(d.output.t2 - d.output.t >= 1200);
    } finally {
      await k2.close();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("parent waiting_child survives a restart; the child's wake resumes it; 40 children with limit 16", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-ctx-" });
  try {
    let p: string, w: string;
    const k1 = await startTestKeel({ dataDir });
    try {
      await install(k1);
      p = (await start(k1, "parent", { child: "kid", input: { ms: 800 } })).id;
      w = (await start(k1, "par_children", { n: 40, ms: 700, limit: 16 })).id;
      await until(k1, p, ["waiting_child"]);
      await until(k1, w, ["waiting_child"]);
    } finally {
      await k1.close();
    }
    const k2 = await startTestKeel({ dataDir });
    try {
      const d = await until(k2, p, ENDED);
      assert.deepEqual(d.output, { ok: true, out: "kid done" });
      const dw = await until(k2, w, ENDED, 90);
      assert.equal(dw.status, "succeeded", JSON.stringify(dw.error));
      assert.equal(dw.output.results.length, 40);
      const runs = await k2.keel.runtime.runPromise(Journal.use((j) => j.listRuns({})));
      assert.equal(runs.filter((r) => r.parentRunId === w).length, 40);
    } finally {
      await k2.close();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("a child cancelled on its own is RunCancelledError in the parent; a missing child workflow is a failed child", () =>
  withKeel(async (k) => {
    const p = await start(k, "parent", { child: "kid", input: { ms: 60000 } });
    await until(k, `${p.id}.c1`, ["sleeping"]);
    await k.api("POST", `/api/runs/${p.id}.c1/cancel`, {});
    const d = await until(k, p.id, ENDED);
    assert.equal(d.output.tag, "RunCancelledError");
    const m = await until(k, (await start(k, "parent", { child: "nope", input: {} })).id, ENDED);
    assert.equal(m.output.ok, false);
  }));

Deno.test("sleep: negative/NaN refused; past sleepUntil and 0 do not park; 3e9 ms parks", () =>
  withKeel(async (k) => {
    for (const ms of [-1, 0]) {
      const d = await until(k, (await start(k, "sleeper", { ms })).id, [...ENDED, "sleeping"]);
      assert.equal(d.status, ms < 0 ? "failed" : "succeeded", JSON.stringify(d.error));
    }
    const s = await until(k, (await start(k, "sleeper", { ms: 3e9 })).id, [...ENDED, "sleeping"]);
    assert.equal(s.status, "sleeping");
  }));

Deno.test("cancel while a parallel branch sleeps: cancelled at once, still cancelled and unqueued after a restart", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-ctx-" });
  try {
    let id: string;
    const k1 = await startTestKeel({ dataDir });
    try {
      await install(k1);
      id = (await start(k1, "par_sleep", { ms: [800, 60_000] })).id;
      await until(k1, id, ["sleeping"]);
      assert.equal((await k1.api("POST", `/api/runs/${id}/cancel`, {})).body.status, "cancelled");
    } finally {
      await k1.close();
    }
    await new Promise((r) => setTimeout(r, 900));
    const k2 = await startTestKeel({ dataDir });
    try {
      await new Promise((r) => setTimeout(r, 300));
      const d = await get(k2, id);
      assert.equal(d.status, "cancelled");
      assert.ok(!d.steps.some((s: { name: string }) => s.name.startsWith("post")));
    } finally {
      await k2.close();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});
