/**
 * @module
 * Approvals are capabilities: bound to the exact action under the policy in
 * force, single-use, expiring, and checked again when the effect executes.
 * Each test tries to get an email out with an approval that should no longer
 * be good for it, against a real SMTP peer that counts deliveries.
 */
import assert from "node:assert/strict";
import { Effect } from "effect";
import { Policy } from "../../core/policy/mod.ts";
import { installOnboarding, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { runCli } from "../_support/process.ts";
import { type SmtpPeer, startSmtpPeer } from "../_support/smtp_peer.ts";

const gate = (expires = "72h") =>
  `default: allow
rules:
  - id: gate-mail
    match: { effect: "email.*" }
    decision: approve
    approval: { approver: operator, expires: ${expires} }
`;

const withKeel = async (policy: string, fn: (k: TestKeel, smtp: SmtpPeer) => Promise<void>) => {
  const smtp = await startSmtpPeer();
  const k = await startTestKeel({ policies: { "gate.yaml": policy } });
  try {
    await installOnboarding(k, smtp);
    await fn(k, smtp);
  } finally {
    await k.close();
    await smtp.close();
  }
};

const startRun = async (k: TestKeel, email = "ada@example.test") => {
  const r = await k.api("POST", "/api/workflows/onboard_client/runs?wait=30", { input: { name: "Ada", email } });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  assert.equal(r.body.status, "waiting_approval", JSON.stringify(r.body));
  return { runId: r.body.runId as string, approvalId: r.body.waitingFor.approvalId as string };
};

Deno.test("approving after the policy changed is refused with why, and the approval shows it was invalidated", async () => {
  await withKeel(gate(), async (k, smtp) => {
    const { runId, approvalId } = await startRun(k);
    await Deno.writeTextFile(
      `${k.policiesDir}/gate.yaml`,
      gate() + "  - id: harmless\n    match: { effect: nothing.* }\n    decision: deny\n",
    );
    await k.keel.runtime.runPromise(Policy.use((p) => p.reload).pipe(Effect.asVoid));
    const stale = await k.api("POST", `/api/approvals/${approvalId}/approve`, {});
    assert.equal(stale.status, 409, 'not "approved": the approval cannot release anything any more');
    assert.equal(stale.body.error.tag, "ConflictError");
    assert.match(stale.body.error.message, /policy that has changed since: the run checks the action again/);
    assert.equal(stale.body.error.details.status, "invalidated");
    const again = await k.api("GET", `/api/runs/${runId}?wait=10`);
    assert.equal(again.body.status, "waiting_approval");
    assert.notEqual(again.body.waitingFor.approvalId, approvalId, "a new approval must be asked for");
    assert.equal(smtp.received.length, 0, "no mail may leave on a stale approval");

    // The old approval says what happened to it, not "expired" days before its expiry.
    const [old] = (await k.api("GET", "/api/approvals?status=invalidated")).body.approvals;
    assert.equal(old.id, approvalId);
    assert.equal(old.reason, "policy changed: the run checks the action again under the new policy");
    assert.ok(!Number.isNaN(Date.parse(old.invalidatedAt)));
    assert.equal((await k.api("GET", "/api/approvals?status=expired")).body.approvals.length, 0);
    const invalidated = (await k.api("GET", `/api/audit?runId=${runId}`)).body.events
      .filter((e: { type: string }) => e.type === "approval.invalidated");
    assert.deepEqual(invalidated.map((e: any) => [e.data.approvalId, e.data.reason]), [[approvalId, "policy changed"]]);
    const cli = await runCli(["approvals", "--status", "invalidated"], { url: k.url });
    assert.equal(cli.code, 0, cli.stderr);
    assert.match(cli.stdout, new RegExp(`${approvalId}  email\\.send`));
    assert.match(cli.stdout, /invalidated at .*: policy changed: the run checks the action again under the new policy/);

    assert.equal((await k.api("POST", `/api/approvals/${again.body.waitingFor.approvalId}/approve`, {})).status, 200);
    assert.equal((await k.api("GET", `/api/runs/${runId}?wait=10`)).body.status, "succeeded");
    assert.equal(smtp.received.length, 1);
  });
});

Deno.test("an expired approval cannot be approved, and the run asks for a new one", async () => {
  await withKeel(gate("1s"), async (k, smtp) => {
    const { runId, approvalId } = await startRun(k);
    await new Promise((r) => setTimeout(r, 1200));
    const late = await k.api("POST", `/api/approvals/${approvalId}/approve`, {});
    assert.equal(late.status, 409);
    assert.equal(late.body.error.tag, "ConflictError");
    assert.match(late.body.error.message, /expired/);
    const run = await k.api("GET", `/api/runs/${runId}?wait=10`);
    assert.equal(run.body.status, "waiting_approval");
    assert.notEqual(run.body.waitingFor.approvalId, approvalId);
    assert.equal(smtp.received.length, 0);
    const audit = await k.api("GET", `/api/audit?runId=${runId}`);
    assert.ok(audit.body.events.some((e: { type: string }) => e.type === "approval.expired"));
  });
});

Deno.test("an approval is single-use: approving it again fails and sends nothing more", async () => {
  await withKeel(gate(), async (k, smtp) => {
    const { runId, approvalId } = await startRun(k);
    assert.equal((await k.api("POST", `/api/approvals/${approvalId}/approve`, {})).status, 200);
    assert.equal((await k.api("GET", `/api/runs/${runId}?wait=10`)).body.status, "succeeded");
    const again = await k.api("POST", `/api/approvals/${approvalId}/approve`, {});
    assert.equal(again.status, 409);
    assert.match(again.body.error.message, /already used/);
    assert.equal((await k.api("POST", `/api/approvals/${approvalId}/deny`, {})).status, 409);
    assert.equal(smtp.received.length, 1);
  });
});

Deno.test("an approval binds the run and step: one run's approval does not release another's email", async () => {
  await withKeel(gate(), async (k, smtp) => {
    const first = await startRun(k, "one@example.test");
    const second = await startRun(k, "two@example.test");
    assert.equal((await k.api("POST", `/api/approvals/${first.approvalId}/approve`, {})).status, 200);
    assert.equal((await k.api("GET", `/api/runs/${first.runId}?wait=10`)).body.status, "succeeded");
    const other = await k.api("GET", `/api/runs/${second.runId}`);
    assert.equal(other.body.status, "waiting_approval");
    assert.equal(other.body.waitingFor.approvalId, second.approvalId);
    assert.deepEqual(smtp.received.map((m) => m.to), [["one@example.test"]]);
    const approvals = await k.api("GET", "/api/approvals?status=pending");
    assert.deepEqual(approvals.body.approvals.map((a: { id: string }) => a.id), [second.approvalId]);
    assert.equal(approvals.body.approvals[0].args.to, "two@example.test", "the approver sees the exact args");
  });
});

Deno.test("with no rule matching, an irreversible effect is denied and the run fails with PolicyDeniedError", async () => {
  await withKeel("default: allow\nrules: []\n", async (k, smtp) => {
    const r = await k.api("POST", "/api/workflows/onboard_client/runs?wait=30", {
      input: { name: "Ada", email: "ada@example.test" },
    });
    assert.equal(r.body.status, "failed", JSON.stringify(r.body));
    assert.equal(r.body.error.tag, "PolicyDeniedError");
    assert.match(r.body.error.message, /default-deny-irreversible/);
    assert.equal(smtp.received.length, 0);
    const audit = await k.api("GET", `/api/audit?runId=${r.body.runId}`);
    const rejected = audit.body.events.find((e: { type: string }) => e.type === "effect.rejected");
    assert.equal(rejected.data.rule, "default-deny-irreversible");
  });
});
