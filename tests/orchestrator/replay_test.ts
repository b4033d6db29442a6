/**
 * @module
 * Replay after a restart: completed steps return their journaled values and
 * are never run again, and code that asks for a different step than the
 * journal holds fails with a clear non-determinism error naming the step.
 */
import assert from "node:assert/strict";
import { installOnboarding, ROOT, startTestKeel } from "../_support/keel.ts";
import { startSmtpPeer } from "../_support/smtp_peer.ts";

Deno.test("a completed step is not redone after a restart: the workflow sees the journaled value", async () => {
  const smtp = await startSmtpPeer();
  const dataDir = await Deno.makeTempDir({ prefix: "keel-replay-" });
  try {
    const first = await startTestKeel({ dataDir });
    let runId: string, nonce: string, approvalId: string;
    try {
      await installOnboarding(first, smtp);
      assert.equal(
        (await first.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/replay_probe`, grant: {} })).status,
        201,
      );
      const run = await first.api("POST", "/api/workflows/probe/runs?wait=30", { input: { to: "ada@example.test" } });
      assert.equal(run.body.status, "waiting_approval", JSON.stringify(run.body));
      runId = run.body.runId;
      approvalId = run.body.waitingFor.approvalId;
      nonce = run.body.steps.find((s: { name: string }) => s.name === "nonce").value;
    } finally {
      await first.close();
    }
    const second = await startTestKeel({ dataDir });
    try {
      assert.equal((await second.api("POST", `/api/approvals/${approvalId}/approve`, {})).status, 200);
      const done = await second.api("GET", `/api/runs/${runId}?wait=30`);
      assert.equal(done.body.status, "succeeded", JSON.stringify(done.body));
      assert.equal(done.body.output.nonce, nonce, "a redone step would have drawn a new nonce");
      await smtp.waitFor(1);
      assert.match(smtp.received[0].raw, new RegExp(`Subject: ${nonce}`));
      assert.equal(smtp.received.length, 1);
    } finally {
      await second.close();
    }
  } finally {
    await smtp.close();
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("a workflow that asks for a different step than its journal holds fails with a non-determinism error", async () => {
  const smtp = await startSmtpPeer();
  const k = await startTestKeel();
  try {
    await installOnboarding(k, smtp);
    assert.equal(
      (await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/replay_probe`, grant: {} })).status,
      201,
    );
    const run = await k.api("POST", "/api/workflows/diverge/runs?wait=30", { input: {} });
    assert.equal(run.body.status, "waiting_approval", JSON.stringify(run.body));
    assert.equal((await k.api("POST", `/api/approvals/${run.body.waitingFor.approvalId}/approve`, {})).status, 200);
    const done = await k.api("GET", `/api/runs/${run.body.runId}?wait=30`);
    assert.equal(done.body.status, "failed");
    assert.match(
      done.body.error.message,
      /diverged from its journal at step 1: recorded step "a", code asked for step "b"/,
    );
    assert.equal(smtp.received.length, 0, "nothing is sent after a divergence");
  } finally {
    await k.close();
    await smtp.close();
  }
});
