/**
 * @module
 * The engine's fast paths, against a real Keel (real KV file, real Worker):
 * a quick run's start, checkpoints and end share one commit; a decided gate
 * resumes its run from the journal its pass left in memory, with the decision
 * riding on the run's end; and the races those paths open — two decisions of
 * one gate, a cancel while the decision is held — end with one outcome and an
 * audit chain that verifies. What the store holds is read back from the KV
 * file, not from the engine's memory.
 */
import assert from "node:assert/strict";
import { Effect } from "effect";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { Orchestrator } from "../../core/orchestrator/mod.ts";
import { Journal } from "../../core/journal/mod.ts";
import { Kv } from "../../core/store/mod.ts";
import { Audit } from "../../core/telemetry/mod.ts";

/** A start may wait this long for its run's first write: on a loaded machine the run still ends first. */
const HOLD = { startHoldMs: 10_000 };

const install = async (k: TestKeel) => {
  const res = await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/bench_workflows`, grant: {} });
  assert.equal(res.status, 201, JSON.stringify(res.body));
};
const run = <A, E>(k: TestKeel, f: (o: Orchestrator["Service"]) => Effect.Effect<A, E>) =>
  k.keel.runtime.runPromise(Orchestrator.use(f));
/** Commits that carried records: index entries riding alone later (`GroupCommit` riders) are not counted. */
const commits = (k: TestKeel) =>
  k.keel.runtime.runPromise(Kv.use((kv) => {
    const { commits, riderCommits } = kv.group.stats();
    return Effect.succeed(commits - riderCommits);
  }));
/** Commit the index entries still riding, so the window measured below starts with none. */
const flushRiders = (k: TestKeel) =>
  k.keel.runtime.runPromise(Kv.use((kv) => Effect.promise(() => kv.group.flushRiders())));
const stored = (k: TestKeel, runId: string) =>
  k.keel.runtime.runPromise(
    Journal.use((j) => Effect.all({ run: j.getRun(runId), steps: j.steps(runId) })),
  );
const auditOf = (k: TestKeel, runId: string) => k.keel.runtime.runPromise(Audit.use((a) => a.list({ runId })));
const verify = (k: TestKeel) => k.keel.runtime.runPromise(Audit.use((a) => a.verify()));

/** Start a W2 run and let it park on its gate. */
const parkedW2 = async (k: TestKeel) => {
  const started = await run(k, (o) => o.start("bench_w2", { bytes: 10 }, "test"));
  const parked = await run(k, (o) => o.wait(started.id, 10));
  assert.equal(parked.status, "waiting_approval", JSON.stringify(parked));
  return { runId: parked.id, approvalId: parked.waitingFor!.approvalId! };
};

Deno.test("a quick run's start, ten checkpoints and end share one commit, and read back whole from the store", async () => {
  const k = await startTestKeel(HOLD);
  try {
    await install(k);
    // Warm the agent's Worker so the measured run is the only writer.
    await run(
      k,
      (o) =>
        Effect.flatMap(o.start("bench_w1", { steps: 1, bytes: 10, checkpoint: true }, "t"), (r) => o.wait(r.id, 10)),
    );
    await flushRiders(k);
    const before = await commits(k);
    const started = await run(k, (o) => o.start("bench_w1", { steps: 10, bytes: 100, checkpoint: true }, "test"));
    // `start` returned: the run is durable — and, this quick, already ended.
    const after = await commits(k);
    assert.equal(after - before, 1, "start, steps and end in one commit");
    const { run: record, steps } = await stored(k, started.id);
    assert.equal(record?.status, "succeeded", JSON.stringify(record));
    assert.deepEqual(
      steps.map((s) => [s.seq, s.name, s.status]),
      Array.from({ length: 10 }, (_, i) => [i + 1, `s${i}`, "done"]),
    );
    assert.equal((steps[9].value as string).length, 100);
    // What `wait` answers (from the pass's memory) is what the store holds.
    const waited = await run(k, (o) => o.wait(started.id, 10));
    const got = await run(k, (o) => o.get(started.id));
    assert.deepEqual(waited, got);
    const types = (await auditOf(k, started.id)).map((e) => e.type);
    assert.deepEqual(types, ["run.started", "run.succeeded"]);
    assert.equal((await verify(k)).ok, true);
    // A run that ended in its first commit never had an active-run entry to leave behind.
    assert.equal((await k.keel.runtime.runPromise(Journal.use((j) => j.activeRuns))).length, 0);
  } finally {
    await k.close();
  }
});

Deno.test("a decided gate resumes its run without re-reading its journal; the decision and the run's end are one commit", async () => {
  const k = await startTestKeel(HOLD);
  try {
    await install(k);
    const { runId, approvalId } = await parkedW2(k);
    await flushRiders(k);
    const before = await commits(k);
    const decided = await run(k, (o) => o.decide(approvalId, { approve: true, actor: "ops" }));
    assert.equal(decided.status, "approved");
    assert.equal((await commits(k)) - before, 1, "decision, gate answer, last step and end in one commit");
    const { run: record, steps } = await stored(k, runId);
    assert.equal(record?.status, "succeeded", JSON.stringify(record));
    assert.deepEqual(record?.output, { after: 10 });
    assert.deepEqual(steps.map((s) => [s.seq, s.kind, s.status]), [[1, "step", "done"], [2, "approval", "done"], [
      3,
      "step",
      "done",
    ]]);
    assert.equal((steps[1].value as { approved: boolean; actor: string }).actor, "ops");
    const approval = await k.keel.runtime.runPromise(Journal.use((j) => j.getApproval(approvalId)));
    assert.equal(approval?.status, "approved");
    assert.equal((await k.api("GET", "/api/approvals?status=pending")).body.approvals.length, 0);
    const types = (await auditOf(k, runId)).map((e) => e.type);
    assert.deepEqual(types.slice(-2), ["approval.approved", "run.succeeded"]);
    assert.equal((await verify(k)).ok, true);
  } finally {
    await k.close();
  }
});

Deno.test("two decisions of one gate at once: one wins, the other is a ConflictError, and the run ends once", async () => {
  const k = await startTestKeel(HOLD);
  try {
    await install(k);
    for (let round = 0; round < 5; round++) {
      const { runId, approvalId } = await parkedW2(k);
      const outcomes = await Promise.allSettled([
        run(k, (o) => o.decide(approvalId, { approve: true, actor: "alice" })),
        run(k, (o) => o.decide(approvalId, { approve: false, actor: "bob" })),
      ]);
      const won = outcomes.filter((o) => o.status === "fulfilled");
      const lost = outcomes.filter((o) => o.status === "rejected") as PromiseRejectedResult[];
      assert.equal(won.length, 1, JSON.stringify(outcomes));
      assert.match(String(lost[0].reason), /ConflictError|already|someone else/, String(lost[0].reason));
      const winner = (won[0] as PromiseFulfilledResult<{ status: string; decidedBy?: string }>).value;
      // `bench_w2` goes on whatever its gate answers: the answer it recorded is the winner's.
      const done = await run(k, (o) => o.wait(runId, 10));
      assert.equal(done.status, "succeeded", JSON.stringify(done));
      const answer = done.steps.find((s) => s.kind === "approval")?.value as { approved: boolean; actor: string };
      assert.deepEqual([answer.approved, answer.actor], [winner.status === "approved", winner.decidedBy]);
      const { run: record } = await stored(k, runId);
      assert.equal(record?.status, done.status);
      const decisions = (await auditOf(k, runId)).filter((e) =>
        e.type.startsWith("approval.") && e.type !== "approval.requested"
      );
      assert.equal(decisions.length, 1, JSON.stringify(decisions));
      assert.equal(decisions[0].actor, winner.decidedBy);
    }
    assert.equal((await verify(k)).ok, true);
  } finally {
    await k.close();
  }
});

Deno.test("a cancel racing a decided gate's resumption leaves one end in the store, agreed by the audit log", async () => {
  const k = await startTestKeel(HOLD);
  try {
    await install(k);
    for (let round = 0; round < 5; round++) {
      const { runId, approvalId } = await parkedW2(k);
      const [decided, cancelled] = await Promise.allSettled([
        run(k, (o) => o.decide(approvalId, { approve: true, actor: "ops" })),
        run(k, (o) => o.cancel(runId, "ops", "changed my mind")),
      ]);
      const { run: record } = await stored(k, runId);
      assert.ok(
        record && ["succeeded", "cancelled"].includes(record.status),
        JSON.stringify({ record, decided, cancelled }),
      );
      const ends = (await auditOf(k, runId)).filter((e) =>
        ["run.succeeded", "run.cancelled", "run.failed"].includes(e.type)
      );
      assert.equal(ends.length, 1, JSON.stringify(ends));
      assert.equal(ends[0].type, `run.${record.status}`);
      // The cancel's answer agrees with the store: it took effect, or it is refused as too late.
      if (record.status === "cancelled") {
        assert.equal(cancelled.status, "fulfilled", String((cancelled as PromiseRejectedResult).reason));
        assert.equal((cancelled as PromiseFulfilledResult<{ status: string }>).value.status, "cancelled");
      } else {
        assert.equal(cancelled.status, "rejected", JSON.stringify(cancelled));
        assert.match(String((cancelled as PromiseRejectedResult).reason), /succeeded/);
      }
      // The gate is no longer pending either way.
      const approval = await k.keel.runtime.runPromise(Journal.use((j) => j.getApproval(approvalId)));
      assert.notEqual(approval?.status, "pending");
    }
    assert.equal((await verify(k)).ok, true);
  } finally {
    await k.close();
  }
});
