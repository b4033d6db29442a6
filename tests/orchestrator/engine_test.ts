/**
 * @module
 * The run engine against a real Keel (real KV file, real Workers): durable
 * timers across a restart, `ctx.approval`, child workflows, bounded parallel
 * branches, seeded `random()` and recorded `now()` across a replay, the run
 * queue (delayed start, priorities, per-workflow and global concurrency
 * limits), leases taken back after a crash, and cancel.
 */
import assert from "node:assert/strict";
import { Effect } from "effect";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { Orchestrator, type StartOptions } from "../../core/orchestrator/mod.ts";
import { Journal, type RunRecord } from "../../core/journal/mod.ts";

const install = async (k: TestKeel) => {
  const res = await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/engine`, grant: {} });
  assert.equal(res.status, 201, JSON.stringify(res.body));
};
const start = (k: TestKeel, workflow: string, input: unknown, options: StartOptions = {}) =>
  k.keel.runtime.runPromise(Orchestrator.use((o) => o.start(workflow, input, "test", options)));
const wait = async (k: TestKeel, runId: string, seconds = 30) =>
  (await k.api("GET", `/api/runs/${runId}?wait=${seconds}`)).body;
const journalRun = (k: TestKeel, runId: string) =>
  k.keel.runtime.runPromise(Journal.use((j) => j.getRun(runId))) as Promise<RunRecord>;
/** Wait until the run reaches one of `statuses` (parked states end `?wait=` too). */
const until = async (k: TestKeel, runId: string, statuses: string[], seconds = 30) => {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const run = await wait(k, runId, 1);
    if (statuses.includes(run.status)) return run;
    if (Date.now() > deadline) assert.fail(`run ${runId} is ${run.status}, not ${statuses.join("|")}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

Deno.test("ctx.sleep parks the run durably: no Worker while it sleeps, and it wakes after a restart", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-engine-" });
  try {
    let runId: string;
    const first = await startTestKeel({ dataDir });
    try {
      await install(first);
      runId = (await start(first, "sleepy", { ms: 1500 })).id;
      const parked = await until(first, runId, ["sleeping"]);
      assert.ok(parked.wakeAt > Date.now(), "it wakes in the future");
      assert.match(parked.waitingFor.reason, /Sleeping until/);
      const timer = parked.steps.find((s: { kind: string }) => s.kind === "timer");
      assert.equal(timer.status, "waiting");
      assert.equal(timer.value.wakeAt, parked.wakeAt);
    } finally {
      await first.close();
    }
    // Keel is down while the timer fires; the next Keel finds it in the queue.
    await new Promise((r) => setTimeout(r, 1600));
    const second = await startTestKeel({ dataDir });
    try {
      const done = await until(second, runId, ["succeeded", "failed"]);
      assert.equal(done.status, "succeeded", JSON.stringify(done));
      assert.ok(done.output.after - done.output.before >= 1500, JSON.stringify(done.output));
      assert.equal(done.steps.filter((s: { name: string }) => s.name === "before").length, 1);
    } finally {
      await second.close();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("ctx.sleepUntil in the past does not park, and a timer wakes a run without a restart", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    const past = await start(k, "sleepy", { until: Date.now() - 1000 });
    assert.equal((await wait(k, past.id)).status, "succeeded");
    const soon = await start(k, "sleepy", { ms: 300 });
    const done = await until(k, soon.id, ["succeeded", "failed"]);
    assert.equal(done.status, "succeeded");
    assert.ok(done.output.after - done.output.before >= 300);
  } finally {
    await k.close();
  }
});

Deno.test("ctx.approval parks the run; approving answers the workflow, denying too, and twice is refused", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    const run = await start(k, "gate", { message: "Pay 40 EUR to Acme?" });
    const parked = await until(k, run.id, ["waiting_approval"]);
    assert.equal(parked.waitingFor.reason, "Pay 40 EUR to Acme?");
    const approvalId = parked.waitingFor.approvalId;
    const listed = (await k.api("GET", "/api/approvals?status=pending")).body.approvals;
    assert.equal(listed.find((a: { id: string }) => a.id === approvalId)?.kind, "gate");
    const ok = await k.api("POST", `/api/approvals/${approvalId}/approve`, { note: "fine" });
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    const done = await until(k, run.id, ["succeeded", "failed"]);
    assert.equal(done.status, "succeeded", JSON.stringify(done));
    assert.equal(done.output.answer.approved, true);
    assert.equal(done.output.answer.actor, "operator");
    assert.equal(done.output.answer.note, "fine");
    assert.equal(done.output.sent, "sent");
    assert.equal((await k.api("POST", `/api/approvals/${approvalId}/approve`, {})).status, 409);

    const other = await start(k, "gate", {});
    const waiting = await until(k, other.id, ["waiting_approval"]);
    assert.equal((await k.api("POST", `/api/approvals/${waiting.waitingFor.approvalId}/deny`, {})).status, 200);
    const denied = await until(k, other.id, ["succeeded", "failed"]);
    assert.equal(denied.output.answer.approved, false);
    assert.equal(denied.output.sent, "dropped");
    const audit = (await k.api("GET", `/api/audit?run=${other.id}`)).body.events.map((e: { type: string }) => e.type);
    assert.ok(audit.includes("approval.requested") && audit.includes("approval.denied"), audit.join());
  } finally {
    await k.close();
  }
});

Deno.test("a child workflow starts once, its output reaches the parent, and its failure is the parent's to handle", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    const ok = await start(k, "parent", { n: 21 });
    const done = await until(k, ok.id, ["succeeded", "failed"]);
    assert.equal(done.status, "succeeded", JSON.stringify(done));
    assert.deepEqual(done.output, { ok: true, out: { doubled: 42 } });
    const child = await wait(k, `${ok.id}.c1`);
    assert.equal(child.status, "succeeded");
    assert.equal(child.parentRunId, ok.id);
    assert.deepEqual(child.trigger, { kind: "child", id: ok.id });

    const bad = await start(k, "parent", { n: 1, fail: true });
    const failed = await until(k, bad.id, ["succeeded", "failed"]);
    assert.equal(failed.output.ok, false);
    assert.match(failed.output.error.message, /kid refuses 1/);

    const missing = await start(k, "parent", { n: 1, child: "no_such_workflow" });
    const none = await until(k, missing.id, ["succeeded", "failed"]);
    assert.equal(none.output.ok, false);
    assert.match(none.output.error.message, /cannot start workflow "no_such_workflow" as a child/);
  } finally {
    await k.close();
  }
});

Deno.test("a parent waiting for a child that waits for approval is parked, and cancelling the parent cancels the child", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    const run = await start(k, "parent", { n: 1, child: "gate" });
    const parked = await until(k, run.id, ["waiting_child"]);
    assert.match(parked.waitingFor.reason, /child run/);
    const child = await until(k, `${run.id}.c1`, ["waiting_approval"]);
    const cancelled = await k.api("POST", `/api/runs/${run.id}/cancel`, { reason: "client left" });
    assert.equal(cancelled.status, 200, JSON.stringify(cancelled.body));
    assert.equal(cancelled.body.status, "cancelled");
    assert.equal(cancelled.body.cancelled.reason, "client left");
    assert.equal((await wait(k, `${run.id}.c1`)).status, "cancelled");
    // The child's approval can release nothing now.
    const approve = await k.api("POST", `/api/approvals/${child.waitingFor.approvalId}/approve`, {});
    assert.equal(approve.status, 409);
    assert.equal((await k.api("POST", `/api/runs/${run.id}/cancel`, {})).status, 409);
    assert.equal((await k.api("POST", `/api/runs/run_nope/cancel`, {})).status, 404);
  } finally {
    await k.close();
  }
});

Deno.test("cancel stops a sleeping run at once and a running one at its next call, keeping finished steps", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    const sleeper = await start(k, "sleepy", { ms: 60_000 });
    await until(k, sleeper.id, ["sleeping"]);
    const c1 = await k.api("POST", `/api/runs/${sleeper.id}/cancel`, {});
    assert.equal(c1.body.status, "cancelled");
    const queue = await k.keel.runtime.runPromise(Journal.use((j) => j.queue));
    assert.ok(!queue.some((q) => q.runId === sleeper.id), "a cancelled run leaves the queue");

    const busy = await start(k, "spin", { ms: 800 });
    await new Promise((r) => setTimeout(r, 200));
    const c2 = await k.api("POST", `/api/runs/${busy.id}/cancel`, { reason: "stop" });
    assert.equal(c2.status, 200);
    const done = await until(k, busy.id, ["cancelled", "succeeded", "failed"]);
    assert.equal(done.status, "cancelled", JSON.stringify(done));
    assert.ok(done.steps.some((s: { name: string }) => s.name === "t0"), "finished steps stay in the journal");
    assert.ok(!done.steps.some((s: { name: string }) => s.name === "t1"), "nothing after the cancel ran");
  } finally {
    await k.close();
  }
});

Deno.test("ctx.parallel runs branches at most `limit` at a time, in deterministic journal positions, and replays", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    const run = await start(k, "fanout", { n: 6, limit: 2 });
    const done = await until(k, run.id, ["succeeded", "failed"]);
    assert.equal(done.status, "succeeded", JSON.stringify(done));
    assert.equal(done.output.peak, 2);
    assert.deepEqual(done.output.results.map((r: { a: number }) => r.a), [0, 1, 4, 9, 16, 25]);
    // Branch i's steps sit in its own block of positions, whatever order they finished in.
    for (let i = 0; i < 6; i++) {
      const step = done.steps.find((s: { name: string }) => s.name === `square_${i}`);
      assert.equal(step.seq, 1 + i * 1000, `square_${i}`);
    }
    const draws = done.output.results.map((r: { b: number }) => r.b);
    assert.equal(new Set(draws).size, 6, "each branch has its own random sequence");

    const failing = await start(k, "fanout", { n: 3, failAt: 1 });
    const failed = await until(k, failing.id, ["succeeded", "failed"]);
    assert.equal(failed.status, "failed");
    assert.match(failed.error.message, /branch 1 failed/);
  } finally {
    await k.close();
  }
});

Deno.test("random() is seeded by the run and now() is recorded: a replay after a timer sees the same values", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    const a = await start(k, "dice", {});
    const b = await start(k, "dice", {});
    const [ra, rb] = [await until(k, a.id, ["succeeded", "failed"]), await until(k, b.id, ["succeeded", "failed"])];
    assert.equal(ra.status, "succeeded", JSON.stringify(ra));
    // The workflow ran twice (before and after its timer); the second pass drew the same first number.
    assert.equal(ra.output.same, true);
    assert.notEqual(ra.output.first, rb.output.first, "two runs draw different numbers");
    assert.notEqual(ra.output.second, ra.output.first);
    assert.equal(ra.steps.find((s: { name: string }) => s.name === "keel:now").value, ra.output.at);
    assert.ok(ra.output.atAgain - ra.output.at >= 300);
  } finally {
    await k.close();
  }
});

Deno.test("a delayed start waits in the queue until its time, then runs", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    const notBefore = Date.now() + 700;
    const run = await start(k, "spin", { ms: 1 }, { notBefore });
    assert.equal(run.status, "queued");
    assert.equal((await journalRun(k, run.id)).status, "queued");
    const done = await until(k, run.id, ["succeeded", "failed"]);
    assert.equal(done.status, "succeeded");
    assert.ok(done.output.t0 >= notBefore, `started ${notBefore - done.output.t0} ms early`);
  } finally {
    await k.close();
  }
});

Deno.test("a workflow's concurrency limit queues its runs, and the higher priority goes first", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    const first = await start(k, "hold", { ms: 500 });
    await new Promise((r) => setTimeout(r, 100));
    const low = await start(k, "hold", { ms: 50 }, { priority: 1 });
    const high = await start(k, "hold", { ms: 50 }, { priority: 9 });
    assert.equal(low.status, "queued");
    assert.equal(high.status, "queued");
    const runs = [];
    for (const r of [first, low, high]) runs.push(await until(k, r.id, ["succeeded", "failed"]));
    const spans = runs.map((r) => r.output as { t0: number; t1: number });
    // Never two at once, and the high-priority run started before the low one that queued first.
    const sorted = [...spans].sort((a, b) => a.t0 - b.t0);
    for (let i = 1; i < sorted.length; i++) assert.ok(sorted[i].t0 >= sorted[i - 1].t1, JSON.stringify(spans));
    assert.ok(spans[2].t0 < spans[1].t0, `priority 9 started at ${spans[2].t0}, priority 1 at ${spans[1].t0}`);
    // A workflow without a limit of its own is not held back by the other's.
    const free = await start(k, "spin", { ms: 1 });
    assert.equal(free.status, "running");
  } finally {
    await k.close();
  }
});

Deno.test("the global slot limit queues runs past it and starts them as slots free", async () => {
  const k = await startTestKeel({ maxRuns: 2 });
  try {
    await install(k);
    const runs = [];
    for (let i = 0; i < 5; i++) runs.push(await start(k, "spin", { ms: 200 }));
    assert.deepEqual(runs.map((r) => r.status), ["running", "running", "queued", "queued", "queued"]);
    const done = [];
    for (const r of runs) done.push(await until(k, r.id, ["succeeded", "failed"]));
    const spans = done.map((r) => r.output as { t0: number; t1: number });
    // At the moment each run starts, how many are running (the most at once is reached at some run's start).
    for (const s of spans) {
      const running = spans.filter((o) => o.t0 <= s.t0 && s.t0 < o.t1).length;
      assert.ok(running <= 2, `${running} runs at once: ${JSON.stringify(spans)}`);
    }
  } finally {
    await k.close();
  }
});

Deno.test("a run left running by a host that died is taken back from its lease and finishes, its steps not redone", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-engine-" });
  try {
    let runId: string;
    const first = await startTestKeel({ dataDir });
    try {
      await install(first);
      // Longer than close() waits for runs to drain (5 s): the host stops with the run mid-step.
      runId = (await start(first, "spin", { ms: 8000 })).id;
      // Wait until t0 is durable, then stop this host while the run holds its lease mid-step.
      for (;;) {
        const run = await wait(first, runId, 0);
        if (run.steps.some((s: { name: string }) => s.name === "t0")) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      const held = await journalRun(first, runId);
      assert.equal(held.status, "running");
      assert.ok(held.lease && held.lease.until > Date.now(), "a running run holds a lease");
    } finally {
      await first.close();
    }
    const stale = await Deno.openKv(`${dataDir}/keel.kv`);
    const before = (await stale.get<RunRecord>(["run", runId])).value!;
    stale.close();
    assert.equal(before.status, "running", JSON.stringify(before));
    const second = await startTestKeel({ dataDir });
    try {
      assert.equal(second.keel.recovered, 1);
      const done = await until(second, runId, ["succeeded", "failed"]);
      assert.equal(done.status, "succeeded", JSON.stringify(done));
      assert.notEqual(done.lease?.owner, before.lease!.owner);
      const t0 = done.steps.filter((s: { name: string }) => s.name === "t0");
      assert.equal(t0.length, 1);
      assert.equal(done.output.t0, t0[0].value, "the recorded t0 is what the finished run returned");
    } finally {
      await second.close();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("bad timer and approval requests fail the run with a clear error", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    const bad = await start(k, "gate", { message: "" });
    const failed = await until(k, bad.id, ["succeeded", "failed"]);
    assert.equal(failed.status, "failed");
    assert.match(failed.error.message, /ctx.approval needs a message/);
    const res = await k.keel.runtime.runPromiseExit(
      Orchestrator.use((o) => o.start("spin", {}, "test", { priority: 12 })),
    );
    assert.equal(res._tag, "Failure");
    const started = await k.api("GET", "/api/runs/none");
    assert.equal(started.status, 404);
    // Nothing was left behind by the refused start.
    const active = await k.keel.runtime.runPromise(Journal.use((j) => j.activeRuns));
    assert.ok(active.every((r) => r.workflow !== "spin"));
    void Effect;
  } finally {
    await k.close();
  }
});

Deno.test("an agent starts another agent's workflow as a child only if its manifest lists it, and nesting is bounded", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    const other = await k.api("POST", "/api/plugins", {
      path: `${ROOT}/tests/fixtures/engine_other`,
      grant: { read: ["."], write: ["."] },
    });
    assert.equal(other.status, 201, JSON.stringify(other.body));
    const listed = await until(k, (await start(k, "parent", { n: 4, child: "other_kid" })).id, ["succeeded", "failed"]);
    assert.deepEqual(listed.output, { ok: true, out: { doubled: 8 } });
    const unlisted = await until(k, (await start(k, "parent", { n: 4, child: "secret" })).id, ["succeeded", "failed"]);
    assert.equal(unlisted.output.ok, false);
    assert.match(unlisted.output.error.message, /not its own and its manifest does not list it in "children"/);
    const secretRuns = (await k.keel.runtime.runPromise(Journal.use((j) => j.listRuns({}))))
      .filter((r) => r.workflow === "secret");
    assert.equal(secretRuns.length, 0, "the refused child never started");

    // A workflow that starts itself forever stops at the nesting bound, and the failure travels up.
    const nest = await until(k, (await start(k, "nest", {})).id, ["succeeded", "failed"], 60);
    assert.equal(nest.status, "failed");
    assert.match(nest.error.message, /nest at most 8 deep/);
    const chain = (await k.keel.runtime.runPromise(Journal.use((j) => j.listRuns({}))))
      .filter((r) => r.workflow === "nest");
    assert.equal(chain.length, 9, "the top run and eight levels of children");
  } finally {
    await k.close();
  }
});

Deno.test("a run whose agent dies under it is replayed from its journal, a few times, then fails", async () => {
  const k = await startTestKeel();
  try {
    const other = await k.api("POST", "/api/plugins", {
      path: `${ROOT}/tests/fixtures/engine_other`,
      grant: { read: ["."], write: ["."] },
    });
    assert.equal(other.status, 201, JSON.stringify(other.body));
    const dir = `${k.dataDir}/plugin-data/engine_other`;
    await Deno.mkdir(dir, { recursive: true });
    const twice = await start(k, "crashy", { counter: `${dir}/twice`, times: 2 });
    const done = await until(k, twice.id, ["succeeded", "failed"], 60);
    assert.equal(done.status, "succeeded", JSON.stringify(done));
    assert.equal(done.output.passes, 3);
    assert.equal(done.agentCrashes, 2);
    assert.equal(done.steps.filter((s: { name: string }) => s.name === "before").length, 1);
    const events = (await k.api("GET", `/api/audit?run=${twice.id}`)).body.events;
    assert.equal(events.filter((e: { type: string }) => e.type === "run.agent_crashed").length, 2);

    const always = await start(k, "crashy", { counter: `${dir}/always`, times: 100 });
    const failed = await until(k, always.id, ["succeeded", "failed"], 60);
    assert.equal(failed.status, "failed", JSON.stringify(failed));
    assert.equal(failed.agentCrashes, 3);
    assert.equal(failed.error.tag, "PluginCrashedError");
  } finally {
    await k.close();
  }
});

Deno.test("a connector's concurrency limit makes its calls wait their turn at the Gateway instead of overlapping", async () => {
  const k = await startTestKeel();
  try {
    const slow = await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/engine_slow`, grant: {} });
    assert.equal(slow.status, 201, JSON.stringify(slow.body));
    await install(k);
    const runs = await Promise.all([1, 2, 3].map(() => start(k, "slowcall", { ms: 150 })));
    const done = [];
    for (const r of runs) done.push(await until(k, r.id, ["succeeded", "failed"]));
    for (const d of done) assert.equal(d.status, "succeeded", JSON.stringify(d));
    const spans = done.map((d) => d.output as { t0: number; t1: number }).sort((a, b) => a.t0 - b.t0);
    for (let i = 1; i < spans.length; i++) assert.ok(spans[i].t0 >= spans[i - 1].t1, JSON.stringify(spans));
  } finally {
    await k.close();
  }
});

Deno.test("a parent whose child ended just before a crash (two commits) resumes after the restart", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-child-crash-" });
  try {
    let parentId: string;
    let childId: string;
    const first = await startTestKeel({ dataDir });
    try {
      await install(first);
      parentId = (await start(first, "parent", { n: 1, child: "gate" })).id;
      const parked = await until(first, parentId, ["waiting_child"]);
      const step = parked.steps.find((s: { kind: string }) => s.kind === "child") as { args: { runId: string } };
      childId = step.args.runId;
      assert.equal((await until(first, childId, ["waiting_approval"])).status, "waiting_approval");
      // Only the first of the two commits happens (the child's end); then the host stops.
      const ended = await first.keel.runtime.runPromise(
        Journal.use((j) =>
          j.updateRun(childId, { status: "succeeded", output: { ok: 1 }, waitingFor: undefined }, ["waiting_approval"])
        ),
      );
      assert.equal(ended?.status, "succeeded");
    } finally {
      await first.close();
    }
    const second = await startTestKeel({ dataDir });
    try {
      const parent = await until(second, parentId, ["succeeded", "failed", "cancelled"]);
      assert.equal(parent.status, "succeeded", JSON.stringify(parent));
      const child = parent.steps.find((s: { kind: string }) => s.kind === "child")!;
      assert.equal(child.status, "done");
    } finally {
      await second.close();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});
