/**
 * @module
 * A workflow's own gate (`ctx.approval`) expires after its `timeoutSeconds`.
 * An operator who answers after that gets a 409, and the workflow never sees
 * the late "yes": it asks again. Nothing after the gate re-checks the answer
 * (unlike an effect's approval, which the Gateway checks again), so `decide`
 * is the only guard: on its quick path (the run parked in this Keel) and on
 * its checked path (after a restart, nothing cached).
 */
import assert from "node:assert/strict";
import { Effect } from "effect";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { Orchestrator } from "../../core/orchestrator/mod.ts";
import { Journal } from "../../core/journal/mod.ts";

const install = async (k: TestKeel) => {
  const res = await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/engine`, grant: {} });
  assert.equal(res.status, 201, JSON.stringify(res.body));
};
const wait = async (k: TestKeel, runId: string, seconds = 30) =>
  (await k.api("GET", `/api/runs/${runId}?wait=${seconds}`)).body;

/** Start the `gate` workflow with a one-second gate and return it parked. */
const parkedGate = async (k: TestKeel) => {
  const run = await k.keel.runtime.runPromise(
    Orchestrator.use((o) => o.start("gate", { message: "Pay 40 EUR?", timeoutSeconds: 1 }, "test")),
  );
  const parked = await wait(k, run.id, 10);
  assert.equal(parked.status, "waiting_approval", JSON.stringify(parked));
  return { runId: run.id as string, approvalId: parked.waitingFor.approvalId as string };
};

/** The late decision is refused as expired, and the run asks again instead of going on with a "yes". */
const assertLateApprovalRefused = async (k: TestKeel, runId: string, approvalId: string) => {
  const late = await k.api("POST", `/api/approvals/${approvalId}/approve`, {});
  assert.equal(late.status, 409, JSON.stringify(late.body));
  assert.equal(late.body.error.tag, "ConflictError");
  assert.match(late.body.error.message, /expired/);
  const stored = await k.keel.runtime.runPromise(Journal.use((j) => j.getApproval(approvalId)));
  assert.equal(stored?.status, "expired");
  const after = await wait(k, runId, 10);
  assert.equal(after.status, "waiting_approval", JSON.stringify(after));
  assert.notEqual(after.waitingFor.approvalId, approvalId, "the workflow asks for a new approval");
  assert.equal(after.output, undefined, "the workflow did not go on past its gate");
  assert.ok(
    !after.steps.some((s: { name: string }) => s.name === "after"),
    `no step after the gate ran: ${JSON.stringify(after.steps)}`,
  );
};

Deno.test("a workflow gate answered after its timeout is refused as expired, and the run asks again", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    const { runId, approvalId } = await parkedGate(k);
    await new Promise((r) => setTimeout(r, 1200));
    await assertLateApprovalRefused(k, runId, approvalId);
    await k.keel.runtime.runPromise(Orchestrator.use((o) => o.cancel(runId, "test")).pipe(Effect.asVoid));
  } finally {
    await k.close();
  }
});

Deno.test("a workflow gate that expired while Keel was down is refused as expired after the restart", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-gate-expiry-" });
  try {
    let parked: { runId: string; approvalId: string };
    const first = await startTestKeel({ dataDir });
    try {
      await install(first);
      parked = await parkedGate(first);
    } finally {
      await first.close();
    }
    await new Promise((r) => setTimeout(r, 1200));
    const second = await startTestKeel({ dataDir });
    try {
      await assertLateApprovalRefused(second, parked.runId, parked.approvalId);
    } finally {
      await second.close();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});
