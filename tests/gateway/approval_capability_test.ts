/**
 * @module
 * Tries to break approvals as capabilities. An approval is bound to a digest
 * of one exact action (effect, args, run, step, policy hash), is used once,
 * expires, and is checked again when the effect executes. Each test attacks
 * one of those properties — by replaying a used approval, changing args
 * after approval, pointing a step at another run's approval, forging ids,
 * executing after expiry, or changing the policy in between — sometimes
 * through a misbehaving agent, sometimes by writing the journal directly and
 * calling the Gateway the way the orchestrator does. A witness peer counts
 * what really reached the connector; the answer must always be "nothing
 * more", and the operator must be asked again.
 */
import assert from "node:assert/strict";
import { Effect } from "effect";
import { RunSuspendedError } from "../../core/errors/mod.ts";
import { type ApprovalRecord, Journal } from "../../core/journal/mod.ts";
import { runCli } from "../_support/process.ts";
import { type LedgerKeel, withLedgerKeel } from "./_ledger.ts";

const gate = (expires = "1h") => ({
  "p.yaml": `rules:
  - id: gate-charges
    match: { effect: ledger.charge }
    decision: approve
    approval: { approver: cfo, expires: ${expires}, message: Money leaves the company }
  - id: allow-rest
    match: { effect: "ledger.*" }
    decision: allow
`,
});

const approval = (k: LedgerKeel, id: string) =>
  k.keel.runtime.runPromise(Journal.use((j) => j.getApproval(id))) as Promise<ApprovalRecord>;

/** Start a charge and return the run waiting on its approval. */
const waitingCharge = async (k: LedgerKeel, amount: number) => {
  const r = await k.start("charge", { amount }, 30);
  assert.equal(r.status, "waiting_approval", JSON.stringify(r));
  return { runId: r.runId as string, approvalId: r.waitingFor.approvalId as string };
};

const approve = async (k: LedgerKeel, id: string, body: Record<string, unknown> = {}) =>
  await k.api("POST", `/api/approvals/${id}/approve`, body);

/** Point a run's effect step back at `approvalId`, as if the journal said the step waits on it. */
const rewind = (k: LedgerKeel, runId: string, approvalId: string) =>
  k.keel.runtime.runPromise(Effect.gen(function* () {
    const journal = yield* Journal;
    const step = (yield* journal.steps(runId)).find((s) => s.kind === "effect")!;
    yield* journal.putStep(runId, {
      seq: step.seq,
      kind: "effect",
      name: step.name,
      status: "waiting_approval",
      approvalId,
      args: step.args,
      startedAt: step.startedAt,
    });
    return step;
  }));

/** Approve in the journal directly, as a decision the run has not yet acted on (the host stopped right after it). */
Deno.test("a used approval cannot be replayed: not on its own step rewound, and not on another run's step", async () => {
  await withLedgerKeel({ policies: gate() }, async (k) => {
    const first = await waitingCharge(k, 10);
    assert.equal((await approve(k, first.approvalId)).status, 200);
    assert.equal((await k.run(first.runId)).status, "succeeded");
    assert.equal(k.witness.calls.length, 1);
    assert.equal((await approval(k, first.approvalId)).status, "used");

    // The same step, rewound to "waiting" on the used approval, asked again with the very same args.
    const step = await rewind(k, first.runId, first.approvalId);
    const replay = await k.gateway({
      runId: first.runId,
      seq: step.seq,
      workflow: "charge",
      effect: "ledger.charge",
      args: step.args,
    });
    assert.equal(replay.ok, false);
    assert.ok(replay.error instanceof RunSuspendedError, String(replay.error));
    assert.notEqual((await k.effectStep(first.runId)).approvalId, first.approvalId, "a new approval is asked for");
    assert.equal(k.witness.calls.length, 1, "the used approval released nothing more");

    // Another run's step pointed at the used approval.
    const second = await waitingCharge(k, 10);
    const other = await rewind(k, second.runId, first.approvalId);
    const borrowed = await k.gateway({
      runId: second.runId,
      seq: other.seq,
      workflow: "charge",
      effect: "ledger.charge",
      args: other.args,
    });
    assert.ok(borrowed.error instanceof RunSuspendedError);
    assert.equal(k.witness.calls.length, 1);
    assert.equal((await approval(k, first.approvalId)).status, "used", "still used, never reopened");
    assert.equal((await approve(k, first.approvalId)).status, 409, "and the API will not approve it again");
  });
});

Deno.test("an agent whose args change after approval gets a new approval request, and nothing is charged", async () => {
  await withLedgerKeel({ policies: gate() }, async (k) => {
    const r = await k.start("fickle", {}, 30);
    assert.equal(r.status, "waiting_approval");
    const firstId = r.waitingFor.approvalId;
    const shown = await approval(k, firstId);
    assert.deepEqual(shown.args, { amount: 10, memo: "execution 1" }, "the operator approves exact args");
    assert.equal((await approve(k, firstId, { note: "ok for execution 1" })).status, 200);

    // Replayed, the coordinator now asks with memo "execution 2": the approval does not cover that.
    const after = await k.run(r.runId);
    assert.equal(after.status, "waiting_approval");
    assert.notEqual(after.waitingFor.approvalId, firstId);
    assert.deepEqual((await approval(k, after.waitingFor.approvalId)).args, { amount: 10, memo: "execution 2" });
    const voided = await approval(k, firstId);
    assert.equal(voided.status, "invalidated", "the approved-but-unused approval is voided");
    assert.equal(voided.reason, "action changed: the run asks again for the action it requests now");
    assert.equal(voided.decidedBy, "operator", "who approved it is kept");
    const [invalidated] = await k.audit("approval.invalidated", r.runId);
    assert.deepEqual(
      [invalidated.data.approvalId, invalidated.data.was, invalidated.data.reason],
      [firstId, "approved", "action changed"],
    );
    assert.equal(k.witness.calls.length, 0);
  });
});

Deno.test("an approval for some args does not release the same step with other args, called directly", async () => {
  await withLedgerKeel({ policies: gate() }, async (k) => {
    const { runId, approvalId } = await waitingCharge(k, 10);
    // Approve without resuming the run (as if the host stopped right after), then ask with changed args.
    await k.keel.runtime.runPromise(
      Journal.use((j) =>
        Effect.flatMap(j.getApproval(approvalId), (a) =>
          j.transitionApproval({
            ...a!,
            status: "approved",
            decidedBy: "operator",
            decidedAt: new Date().toISOString(),
          }, "pending"))
      ),
    );
    const step = await k.effectStep(runId);
    const changed = await k.gateway({
      runId,
      seq: step.seq,
      workflow: "charge",
      effect: "ledger.charge",
      args: { amount: 10_000 },
    });
    assert.ok(changed.error instanceof RunSuspendedError);
    assert.equal(k.witness.calls.length, 0);
    assert.equal((await approval(k, approvalId)).status, "invalidated");
    // Going back to the approved args does not revive it either: it was voided for good.
    const back = await k.gateway({
      runId,
      seq: step.seq,
      workflow: "charge",
      effect: "ledger.charge",
      args: { amount: 10 },
    });
    assert.ok(back.error instanceof RunSuspendedError);
    assert.equal(k.witness.calls.length, 0);
    const pending = (await k.api("GET", "/api/approvals?status=pending")).body.approvals;
    assert.equal(pending.length, 1);
    assert.deepEqual(pending[0].args, { amount: 10 }, "the operator is asked about the args actually requested");
  });
});

Deno.test("forged approval ids are refused: unknown ids are 404 by API and an error by CLI", async () => {
  await withLedgerKeel({ policies: gate() }, async (k) => {
    const { runId } = await waitingCharge(k, 10);
    const forged = `apr_${crypto.randomUUID().replaceAll("-", "")}`;
    for (const verb of ["approve", "deny"]) {
      const r = await k.api("POST", `/api/approvals/${forged}/${verb}`, {});
      assert.equal(r.status, 404);
      assert.equal(r.body.error.tag, "NotFoundError");
    }
    for (const odd of ["..%2F..%2Frun", "apr_%00", "%20"]) {
      assert.equal((await k.api("POST", `/api/approvals/${odd}/approve`, {})).status, 404, odd);
    }
    const cli = await runCli(["approve", forged, "--note", "trust me"], { url: k.url });
    assert.equal(cli.code, 1);
    assert.match(cli.stderr, new RegExp(`No approval with id "${forged}"`));
    assert.equal(cli.stderr.trim().split("\n").length, 1, "one line, no stack trace");
    assert.equal((await k.run(runId)).status, "waiting_approval");
    assert.equal(k.witness.calls.length, 0);
  });
});

Deno.test("another run's approval cannot release this run, even with identical args", async () => {
  await withLedgerKeel({ policies: gate() }, async (k) => {
    const mine = await waitingCharge(k, 10);
    const theirs = await waitingCharge(k, 10);
    // Approve theirs without letting it run, then point my step at it.
    await k.approveInJournal(theirs.approvalId);
    const step = await rewind(k, mine.runId, theirs.approvalId);
    const stolen = await k.gateway({
      runId: mine.runId,
      seq: step.seq,
      workflow: "charge",
      effect: "ledger.charge",
      args: step.args,
    });
    assert.ok(stolen.error instanceof RunSuspendedError);
    assert.equal(k.witness.calls.length, 0);
    assert.equal(
      (await approval(k, theirs.approvalId)).status,
      "invalidated",
      "a mismatched approval is voided, not spent",
    );
    assert.notEqual((await k.effectStep(mine.runId)).approvalId, theirs.approvalId);
  });
});

Deno.test("an approval given in time but executed after it expired is refused, and a new one is asked for", async () => {
  await withLedgerKeel({ policies: gate("1h") }, async (k) => {
    const { runId, approvalId } = await waitingCharge(k, 10);
    await k.approveInJournal(approvalId);
    const step = await k.effectStep(runId);
    const late = await k.gateway(
      { runId, seq: step.seq, workflow: "charge", effect: "ledger.charge", args: step.args },
      { atMs: Date.now() + 2 * 3600_000 },
    );
    assert.ok(late.error instanceof RunSuspendedError, String(late.error));
    assert.equal(k.witness.calls.length, 0);
    const expired = await approval(k, approvalId);
    assert.equal(expired.status, "expired");
    assert.equal(expired.reason, "expired before the run could use it: the run asks again");
    const [invalidated] = await k.audit("approval.invalidated", runId);
    assert.equal(invalidated.data.reason, "expired");
    const next = (await k.effectStep(runId)).approvalId!;
    assert.notEqual(next, approvalId);
    assert.equal((await approval(k, next)).status, "pending");
  });
});

/** Edit the policy folder and wait for the watcher to reload it; the new hash. */
const editPolicy = async (k: LedgerKeel) => {
  await Deno.writeTextFile(
    `${k.policiesDir}/p.yaml`,
    gate()["p.yaml"] + "  - { id: extra, match: { effect: other.thing }, decision: deny }\n",
  );
  // No explicit reload: the watcher picks the edit up.
  const deadline = performance.now() + 10_000;
  while ((await k.audit("policy.reloaded")).length === 0) {
    if (performance.now() > deadline) assert.fail("the policy edit was never picked up");
    await new Promise((r) => setTimeout(r, 20));
  }
};

Deno.test("an approval asked for before a hot-reloaded policy change cannot be approved, and the run asks again", async () => {
  await withLedgerKeel({ policies: gate() }, async (k) => {
    const { runId, approvalId } = await waitingCharge(k, 10);
    const before = (await approval(k, approvalId)).policyHash;
    await editPolicy(k);
    const refused = await approve(k, approvalId);
    assert.equal(refused.status, 409);
    assert.match(refused.body.error.message, /asked for under a policy that has changed since/);
    const cli = await runCli(["approvals", "--status", "invalidated"], { url: k.url });
    assert.match(cli.stdout, new RegExp(`${approvalId}  ledger\\.charge`));
    const after = await k.run(runId);
    assert.equal(after.status, "waiting_approval");
    assert.notEqual(after.waitingFor.approvalId, approvalId);
    const fresh = await approval(k, after.waitingFor.approvalId);
    assert.notEqual(fresh.policyHash, before);
    const old = await approval(k, approvalId);
    assert.deepEqual([old.status, old.reason], [
      "invalidated",
      "policy changed: the run checks the action again under the new policy",
    ]);
    const [invalidated] = await k.audit("approval.invalidated", runId);
    assert.equal(invalidated.data.reason, "policy changed");
    assert.equal(k.witness.calls.length, 0);
    assert.equal((await approve(k, fresh.id)).status, 200);
    assert.equal((await k.run(runId)).status, "succeeded");
    assert.equal(k.witness.calls.length, 1);
  });
});

Deno.test("an approval given just before a policy change is invalidated when the run resumes, not expired", async () => {
  await withLedgerKeel({ policies: gate() }, async (k) => {
    const { runId, approvalId } = await waitingCharge(k, 10);
    // Approved under the old policy, the run not yet resumed (as if the host stopped right after).
    await k.approveInJournal(approvalId);
    await editPolicy(k);
    const step = await k.effectStep(runId);
    const resumed = await k.gateway({
      runId,
      seq: step.seq,
      workflow: "charge",
      effect: "ledger.charge",
      args: step.args,
    });
    assert.ok(resumed.error instanceof RunSuspendedError, String(resumed.error));
    assert.equal(k.witness.calls.length, 0);
    const old = await approval(k, approvalId);
    assert.equal(old.status, "invalidated", "voided because the policy changed, not because it expired");
    assert.equal(old.reason, "policy changed: the run asks again under the new policy");
    assert.ok(!Number.isNaN(Date.parse(old.invalidatedAt!)));
    assert.equal(old.decidedBy, "operator");
    const [invalidated] = await k.audit("approval.invalidated", runId);
    assert.deepEqual([invalidated.data.was, invalidated.data.reason], ["approved", "policy changed"]);
    const next = (await k.effectStep(runId)).approvalId!;
    assert.notEqual(next, approvalId);
    assert.equal((await approval(k, next)).status, "pending");
  });
});

Deno.test("approve and deny through the API and the CLI record who, when and the note in the audit log", async () => {
  await withLedgerKeel({ policies: gate() }, async (k) => {
    const viaApi = await waitingCharge(k, 1);
    const res = await approve(k, viaApi.approvalId, { by: "ada", note: "budgeted in Q3" });
    assert.equal(res.status, 200);
    assert.equal(res.body.approval.decidedBy, "operator:ada");
    assert.ok(!Number.isNaN(Date.parse(res.body.approval.decidedAt)));
    const [approved] = await k.audit("approval.approved", viaApi.runId);
    assert.equal(approved.actor, "operator:ada");
    assert.equal(approved.data.note, "budgeted in Q3");
    assert.equal(approved.data.approvalId, viaApi.approvalId);
    assert.equal(approved.data.rule, "gate-charges");
    assert.ok(!Number.isNaN(Date.parse(approved.at)));
    assert.equal((await k.run(viaApi.runId)).status, "succeeded");
    const [succeeded] = await k.audit("effect.succeeded", viaApi.runId);
    assert.equal(succeeded.data.approver, "operator:ada", "the effect's audit names who released it");
    assert.equal(succeeded.data.approvalId, viaApi.approvalId);

    const viaCli = await waitingCharge(k, 2);
    const denied = await runCli(["deny", viaCli.approvalId, "--note", "not this month"], { url: k.url });
    assert.equal(denied.code, 0, denied.stderr);
    assert.match(denied.stdout, new RegExp(`${viaCli.approvalId} denied by operator`));
    const [deniedEvent] = await k.audit("approval.denied", viaCli.runId);
    assert.equal(deniedEvent.actor, "operator");
    assert.equal(deniedEvent.data.note, "not this month");
    const run = await k.run(viaCli.runId);
    assert.equal(run.status, "failed");
    assert.match(run.error.message, /denied by operator: not this month/);

    const viaCli2 = await waitingCharge(k, 3);
    const ok = await runCli(["approve", viaCli2.approvalId, "--note", "fine"], { url: k.url });
    assert.equal(ok.code, 0, ok.stderr);
    const [cliApproved] = await k.audit("approval.approved", viaCli2.runId);
    assert.equal(cliApproved.data.note, "fine");
    assert.equal((await k.run(viaCli2.runId)).status, "succeeded");
    assert.equal(k.witness.calls.length, 2);
  });
});
