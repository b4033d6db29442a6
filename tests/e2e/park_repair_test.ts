/**
 * @module
 * A kill -9 between the Gateway's two writes for an unknown outcome (the
 * step with its approval, then parking the run) used to leave the run
 * "running" with a pending approval that could not resume it (found by the
 * torture test). After a real kill -9 mid-SMTP-send, the KV surgery below
 * writes exactly what that first commit writes; the restarted Keel must park
 * the run on the approval, and approving it must finish the run.
 */
import assert from "node:assert/strict";
import { startSmtpPeer } from "../_support/smtp_peer.ts";
import { startKeelProcess } from "../_support/process.ts";
import { ROOT } from "../_support/keel.ts";

Deno.test("a run whose unknown-outcome approval was journaled but not parked before a kill -9 is parked after restart, and resumes when approved", async () => {
  const peer = await startSmtpPeer({ holdData: true });
  const witness = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (req) => Response.json({ key: req.headers.get("idempotency-key"), delivery: 1 }),
  );
  const dataDir = await Deno.makeTempDir();
  const policies = await Deno.makeTempDir();
  await Deno.writeTextFile(
    `${policies}/p.yaml`,
    "default: allow\nrules:\n  - { id: mail, match: { effect: email.send }, decision: allow }\n",
  );
  const env = { KEEL_POLICIES: policies };
  const a = await startKeelProcess({ dataDir, env });
  let b;
  try {
    for (
      const [path, extra] of [
        [`${ROOT}/plugins/smtp`, {
          grant: { net: [`${peer.host}:${peer.port}`] },
          config: { host: peer.host, port: peer.port, from: "k@x.test" },
        }],
        [`${ROOT}/tests/fixtures/torture/witness`, {
          grant: { net: [`127.0.0.1:${witness.addr.port}`] },
          config: { host: "127.0.0.1", port: witness.addr.port },
        }],
        [`${ROOT}/tests/fixtures/torture/agent`, { grant: {} }],
      ] as const
    ) assert.equal((await a.api("POST", "/api/plugins", { path, ...extra })).status, 201);
    const started = await a.api("POST", "/api/workflows/torture/runs", {
      input: { i: 0, email: "r@x.test", rounds: 1, steps: 1, t0: Date.now(), paceMs: 0, jitterMs: 0 },
    });
    const runId = started.body.runId;
    await peer.waitForHeld(1, 30_000);
    await a.kill();
    await peer.waitForNoConnections();
    peer.release();

    // What Gateway.askOperator's first commit (journal.putStep with the approval) writes; the kill came before park().
    const kv = await Deno.openKv(`${dataDir}/keel.kv`);
    const step = (await kv.get<any>(["run_step", runId, 3])).value;
    assert.equal(step.status, "intent");
    const id = "apr_repro";
    const now = Date.now();
    await kv.atomic()
      .set(["run_step", runId, 3], { ...step, status: "unknown_outcome", approvalId: id })
      .set(["approval", id], {
        id,
        kind: "unknown_outcome",
        runId,
        seq: 3,
        effect: "email.send",
        plugin: "smtp",
        args: step.args,
        digest: "x",
        policyHash: "x",
        rule: "unknown-outcome",
        approver: "operator",
        status: "pending",
        createdAt: new Date(now).toISOString(),
        expiresAt: new Date(now + 86_400_000).toISOString(),
      })
      .set(["approval_pending", id], true)
      .commit();
    kv.close();

    b = await startKeelProcess({ dataDir, env });
    const run = (await b.api("GET", `/api/runs/${runId}?wait=5`)).body;
    assert.equal(run.status, "waiting_approval", JSON.stringify(run));
    assert.equal(run.waitingFor.approvalId, "apr_repro");
    const decided = await b.api("POST", `/api/approvals/${id}/approve`, { resolution: "retry" });
    assert.equal(decided.status, 200, JSON.stringify(decided.body));
    const after = (await b.api("GET", `/api/runs/${runId}?wait=10`)).body;
    assert.equal(after.status, "succeeded", JSON.stringify(after));
    await peer.waitFor(1);
    assert.equal(peer.received.length, 1, "exactly one email after the operator said retry");
  } finally {
    await a.kill();
    await b?.kill();
    await peer.close();
    await witness.shutdown();
    await Deno.remove(dataDir, { recursive: true });
    await Deno.remove(policies, { recursive: true });
  }
});
