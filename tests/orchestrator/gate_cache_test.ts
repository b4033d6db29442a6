/**
 * @module
 * `decide` on a gate whose run parked here uses the approval and run it
 * holds (`Journal.watchGate`) and reads nothing. These tests change the
 * records behind that copy — the way the expiry of an approval, a cancel or
 * another decision would — and check that `decide` then goes by the store:
 * no second decision, no run resumed twice, one end in the store and in the
 * audit log. A watch that missed a write would let `decide` act on a stale
 * copy and fail them.
 */
import assert from "node:assert/strict";
import { Effect } from "effect";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { Orchestrator } from "../../core/orchestrator/mod.ts";
import { PluginHost } from "../../core/plugins/mod.ts";
import { Journal } from "../../core/journal/mod.ts";
import { Audit } from "../../core/telemetry/mod.ts";

const install = async (k: TestKeel) => {
  const res = await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/bench_workflows`, grant: {} });
  assert.equal(res.status, 201, JSON.stringify(res.body));
};
const run = <A, E>(k: TestKeel, f: (o: Orchestrator["Service"]) => Effect.Effect<A, E>) =>
  k.keel.runtime.runPromise(Orchestrator.use(f));
const journal = <A, E>(k: TestKeel, f: (j: Journal["Service"]) => Effect.Effect<A, E>) =>
  k.keel.runtime.runPromise(Journal.use(f));

const parkedW2 = async (k: TestKeel) => {
  const started = await run(k, (o) => o.start("bench_w2", { bytes: 10 }, "test"));
  const parked = await run(k, (o) => o.wait(started.id, 10));
  assert.equal(parked.status, "waiting_approval", JSON.stringify(parked));
  return { runId: parked.id, approvalId: parked.waitingFor!.approvalId! };
};

Deno.test("an approval that moved behind decide's copy (expired, decided elsewhere) is not decided again", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    for (const moved of ["expired", "denied"] as const) {
      const { runId, approvalId } = await parkedW2(k);
      // What the expiry sweeper or another decision does: a transition through the Journal, no run resumed.
      const current = (await journal(k, (j) => j.getApproval(approvalId)))!;
      assert.equal(
        await journal(k, (j) => j.transitionApproval({ ...current, status: moved, decidedBy: "elsewhere" }, "pending")),
        true,
      );
      await assert.rejects(
        run(k, (o) => o.decide(approvalId, { approve: true, actor: "ops" })),
        (e: unknown) => String(e).includes(`already ${moved}`),
      );
      const after = (await journal(k, (j) => j.getApproval(approvalId)))!;
      assert.equal(after.status, moved);
      assert.equal(after.decidedBy, "elsewhere");
      // The run was not resumed by the refused decision: still parked on its gate.
      const view = await run(k, (o) => o.get(runId));
      assert.equal(view.status, "waiting_approval");
      await run(k, (o) => o.cancel(runId, "test"));
    }
    assert.equal((await k.keel.runtime.runPromise(Audit.use((a) => a.verify()))).ok, true);
  } finally {
    await k.close();
  }
});

Deno.test("a run cancelled behind decide's copy is not resumed: the decision is refused, the run ends once", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    const { runId, approvalId } = await parkedW2(k);
    const cancelled = await run(k, (o) => o.cancel(runId, "ops", "changed my mind"));
    assert.equal(cancelled.status, "cancelled");
    await assert.rejects(
      run(k, (o) => o.decide(approvalId, { approve: true, actor: "ops" })),
      (e: unknown) => /already denied|cannot resume|ConflictError/.test(String(e)),
    );
    const { record, steps } = await journal(
      k,
      (j) => Effect.all({ record: j.getRun(runId), steps: j.steps(runId) }),
    );
    assert.equal(record?.status, "cancelled");
    // The last step never ran: the workflow was not resumed.
    assert.deepEqual(steps.map((s) => s.seq), [1, 2]);
    const ends = (await k.keel.runtime.runPromise(Audit.use((a) => a.list({ runId }))))
      .filter((e) => e.type.startsWith("run.") && e.type !== "run.started");
    assert.deepEqual(ends.map((e) => e.type), ["run.cancelled"]);
  } finally {
    await k.close();
  }
});

Deno.test("a gate decided through its cached copy, twice in a row on fresh runs, reads back as the store holds it", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    for (let i = 0; i < 3; i++) {
      const { runId, approvalId } = await parkedW2(k);
      const decided = await run(k, (o) => o.decide(approvalId, { approve: i % 2 === 0, actor: `op${i}` }));
      const stored = (await journal(k, (j) => j.getApproval(approvalId)))!;
      assert.deepEqual(
        [stored.status, stored.decidedBy, stored.decidedAt],
        [decided.status, decided.decidedBy, decided.decidedAt],
      );
      const done = await run(k, (o) => o.wait(runId, 10));
      assert.equal(done.status, "succeeded");
      // A second decision of the same gate is refused from the store, not from a stale copy.
      await assert.rejects(run(k, (o) => o.decide(approvalId, { approve: true, actor: "late" })), /already/);
    }
  } finally {
    await k.close();
  }
});

Deno.test("a decision that reserves a gate while a checked decision is reading it wins; the checked one is refused", async () => {
  const k = await startTestKeel();
  const proto = Deno.Kv.prototype as unknown as { getMany: (...args: unknown[]) => Promise<unknown> };
  const getMany = proto.getMany;
  try {
    await install(k);
    const { runId, approvalId } = await parkedW2(k);
    const j = await journal(k, (j) => Effect.succeed(j));
    const current = (await journal(k, (j) => j.getApproval(approvalId)))!;
    // Exactly while the checked path (`transitionApproval`) reads the approval, a held decision reserves it
    // (what `decide`'s fast path does before its blind write).
    let reserved: boolean | undefined;
    proto.getMany = function (this: unknown, ...args: unknown[]) {
      const keys = args[0] as Deno.KvKey[];
      if (reserved === undefined && keys[0]?.[0] === "approval" && keys[0]?.[1] === approvalId) {
        reserved = j.reserveApproval(approvalId, "approved");
      }
      return getMany.apply(this, args);
    };
    const checked = await journal(
      k,
      (j) => j.transitionApproval({ ...current, status: "denied", decidedBy: "slow" }, "pending"),
    );
    proto.getMany = getMany;
    assert.equal(reserved, true, "the reservation was taken during the read");
    assert.equal(checked, false, "the checked decision must not commit over a reservation");
    j.releaseApproval(approvalId);
    assert.equal((await journal(k, (j) => j.getApproval(approvalId)))?.status, "pending");
    await run(k, (o) => o.cancel(runId, "test"));
  } finally {
    proto.getMany = getMany;
    await k.close();
  }
});

Deno.test("a gate decided after its agent was removed is not resumed in the removed agent: the run fails, naming it", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    const { runId, approvalId } = await parkedW2(k);
    // `decide` calls a live agent itself (`PluginHost.runWorkflowNow`); a removed one is neither live nor installed.
    // (Removed through the host, not the API, which would cancel the run: this is the orchestrator's own guard.)
    const removed = await k.keel.runtime.runPromise(
      PluginHost.use((h) => h.remove({ name: "bench_workflows", force: true, pinnedRuns: Effect.succeed([]) }, "test")),
    );
    assert.deepEqual(removed.removed, ["0.1.0"]);
    const decided = await run(k, (o) => o.decide(approvalId, { approve: true, actor: "ops" }));
    assert.equal(decided.status, "approved");
    const view = await run(k, (o) => o.wait(runId, 10));
    assert.equal(view.status, "failed", JSON.stringify(view));
    assert.match(view.error?.message ?? "", /bench_workflows.*not installed|No plugin named "bench_workflows"/);
    // The workflow's last step never ran: the journal ends at the answered gate.
    assert.deepEqual(view.steps.map((s) => [s.seq, s.kind, s.status]), [[1, "step", "done"], [2, "approval", "done"]]);
  } finally {
    await k.close();
  }
});

Deno.test("a resumed run whose last step or result is too large to record fails, saying so, like any run", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    for (
      const [input, message] of [
        [{ bytes: 10, afterBytes: 70_000 }, /Step 3 "after" is \d+ bytes; a step records at most/],
        [{ bytes: 10, outBytes: 70_000 }, /Workflow "bench_w2" returned \d+ bytes with its input/],
      ] as const
    ) {
      const started = await run(k, (o) => o.start("bench_w2", input, "test"));
      const parked = await run(k, (o) => o.wait(started.id, 10));
      assert.equal(parked.status, "waiting_approval", JSON.stringify(parked));
      // The quick resumption ends a run on the spot only when nothing is in the way; these go the general way.
      await run(k, (o) => o.decide(parked.waitingFor!.approvalId!, { approve: true, actor: "ops" }));
      const view = await run(k, (o) => o.wait(started.id, 10));
      assert.equal(view.status, "failed", JSON.stringify(view));
      assert.match(view.error?.message ?? "", message);
      const stored = await journal(k, (j) => j.getRun(started.id));
      assert.equal(stored?.status, "failed");
      const ends = (await k.keel.runtime.runPromise(Audit.use((a) => a.list({ runId: started.id }))))
        .filter((e) => e.type.startsWith("run.") && e.type !== "run.started");
      assert.deepEqual(ends.map((e) => e.type), ["run.failed"]);
    }
  } finally {
    await k.close();
  }
});

Deno.test("two decisions of one parked gate at once: one wins, the other is told who did, whatever its path", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    for (let round = 0; round < 5; round++) {
      const { runId, approvalId } = await parkedW2(k);
      const [first, second] = await Promise.allSettled([
        run(k, (o) => o.decide(approvalId, { approve: true, actor: "ops" })),
        run(k, (o) => o.decide(approvalId, { approve: false, actor: "other" })),
      ]);
      assert.equal(first.status, "fulfilled", String((first as PromiseRejectedResult).reason));
      assert.equal(second.status, "rejected");
      // Refused as decided (by the quick decision, durable or on its way), not as a run that cannot resume.
      assert.match(String((second as PromiseRejectedResult).reason), /already approved|decided by someone else first/);
      const approval = await journal(k, (j) => j.getApproval(approvalId));
      assert.equal(approval?.status, "approved");
      assert.equal(approval?.decidedBy, "ops");
      assert.equal((await run(k, (o) => o.wait(runId, 10))).status, "succeeded");
    }
  } finally {
    await k.close();
  }
});

Deno.test("a decision whose commit fails leaves the gate pending; deciding it again resumes the run to its end", async () => {
  const k = await startTestKeel();
  const proto = Deno.AtomicOperation.prototype as unknown as { commit: (...args: unknown[]) => Promise<unknown> };
  const commit = proto.commit;
  try {
    await install(k);
    const { runId, approvalId } = await parkedW2(k);
    // Commits fail (a full disk) while the decision is made: its commit carries the decision and the run's end.
    // (Every commit, not just the next: a rider's own timer may commit first on a loaded machine.)
    proto.commit = () => Promise.reject(new TypeError("disk full (test)"));
    await assert.rejects(
      run(k, (o) => o.decide(approvalId, { approve: true, actor: "ops" })),
      (e: unknown) => String(e).includes("disk full (test)"),
    );
    proto.commit = commit;
    assert.equal((await journal(k, (j) => j.getApproval(approvalId)))?.status, "pending", "the decision was lost");
    assert.equal((await run(k, (o) => o.get(runId))).status, "waiting_approval");
    // The run's writes were refused after the lost one; its next pass reads the journal back and may write again.
    const decided = await run(k, (o) => o.decide(approvalId, { approve: true, actor: "ops" }));
    assert.equal(decided.status, "approved");
    const view = await run(k, (o) => o.wait(runId, 10));
    assert.equal(view.status, "succeeded", JSON.stringify(view));
    assert.deepEqual(view.steps.map((s) => [s.seq, s.kind, s.status]), [
      [1, "step", "done"],
      [2, "approval", "done"],
      [3, "step", "done"],
    ]);
    assert.equal((await k.keel.runtime.runPromise(Audit.use((a) => a.verify()))).ok, true);
  } finally {
    proto.commit = commit;
    await k.close();
  }
});
