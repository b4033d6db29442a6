/**
 * @module
 * End to end: a real Keel (real Deno KV, PGlite, plugin Workers, HTTP API on
 * loopback) with the shipped smtp connector, granted network access to one
 * real SMTP server on 127.0.0.1 and nothing else, and the onboarding agent.
 * `onboard_client` must stop at the policy gate, send exactly one email once
 * the operator approves over HTTP (or none when denied), and leave an audit
 * trail that names the rule and the approver and verifies. The CLI is driven
 * as a real child process against the same host.
 */
import assert from "node:assert/strict";
import { installOnboarding, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { type SmtpPeer, startSmtpPeer } from "../_support/smtp_peer.ts";
import { runCli } from "../_support/process.ts";

/** A Keel with smtp + onboarding installed, an SMTP peer, and cleanup of both. */
const withOnboarding = async (body: (k: TestKeel, peer: SmtpPeer) => Promise<void>) => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-e2e-" });
  const peer = await startSmtpPeer();
  let k: TestKeel | undefined;
  try {
    k = await startTestKeel({ dataDir });
    await installOnboarding(k, peer);
    await body(k, peer);
  } finally {
    await k?.close();
    await peer.close();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
};

/** Give a stray duplicate a moment to show up before asserting "exactly one". */
const settle = () => new Promise((r) => setTimeout(r, 300));

const types = (events: Array<{ type: string }>) => events.map((e) => e.type);

Deno.test("`onboard_client` waits for approval, sends exactly one email, audits rule and approver", async () => {
  await withOnboarding(async (k, peer) => {
    const plugins = (await k.api("GET", "/api/plugins")).body.plugins;
    const smtp = plugins.find((p: { name: string }) => p.name === "smtp");
    const granted = (grant: Record<string, unknown>) =>
      Object.fromEntries(Object.entries(grant).filter(([, v]) => !(Array.isArray(v) && v.length === 0) && v !== false));
    assert.deepEqual(granted(smtp.grant), { net: [`127.0.0.1:${peer.port}`] }, "smtp may reach only the SMTP peer");
    assert.deepEqual(granted(plugins.find((p: { name: string }) => p.name === "onboarding").grant), {});

    const client = { name: "Ada Lovelace", email: "ada@client.test" };
    const started = await k.api("POST", "/api/workflows/onboard_client/runs?wait=60", { input: client });
    assert.equal(started.status, 202, JSON.stringify(started.body));
    const runId: string = started.body.runId;
    assert.equal(started.body.status, "waiting_approval", JSON.stringify(started.body));
    const approvalId: string = started.body.waitingFor.approvalId;
    assert.match(started.body.waitingFor.reason, /gate-irreversible/);
    assert.equal(peer.received.length, 0, "nothing is sent before the operator approves");

    const pending = await k.api("GET", "/api/approvals?status=pending");
    const approval = pending.body.approvals.find((a: { id: string }) => a.id === approvalId);
    assert.ok(approval, "the approval is listed as pending");
    assert.equal(approval.kind, "effect");
    assert.equal(approval.effect, "email.send");
    assert.equal(approval.rule, "gate-irreversible");
    assert.equal(approval.args.to, client.email);
    assert.equal(approval.args.subject, "Welcome aboard, Ada Lovelace");

    const approved = await k.api("POST", `/api/approvals/${approvalId}/approve`, { note: "looks right" });
    assert.equal(approved.status, 200, JSON.stringify(approved.body));
    assert.equal(approved.body.approval.status, "approved");
    assert.equal(approved.body.approval.decidedBy, "operator");

    const done = await k.api("GET", `/api/runs/${runId}?wait=60`);
    assert.equal(done.body.status, "succeeded", JSON.stringify(done.body));
    await settle();
    assert.equal(peer.received.length, 1, "exactly one message arrives");
    const [message] = peer.received;
    assert.deepEqual(message.to, [client.email]);
    assert.equal(message.from, "keel@example.test");
    assert.match(message.raw, /^Subject: Welcome aboard, Ada Lovelace\r?$/m);
    assert.match(message.raw, /Hi Ada Lovelace,/);
    assert.ok(message.messageId, "the message has a Message-ID");
    assert.equal(done.body.output.messageId, message.messageId, "the run reports the Message-ID the server got");
    assert.equal(done.body.output.client, client.email);
    const send = done.body.steps.find((s: { name: string }) => s.name === "email.send");
    assert.equal(send.status, "done");
    assert.match(message.messageId!, new RegExp(`^<${send.idempotencyKey}@keel\\.local>$`));

    // Approving again changes nothing: the approval is spent.
    const again = await k.api("POST", `/api/approvals/${approvalId}/approve`, {});
    assert.equal(again.status, 409, JSON.stringify(again.body));

    const audit = await k.api("GET", `/api/audit?runId=${runId}`);
    assert.equal(audit.status, 200);
    const events: any[] = audit.body.events;
    assert.deepEqual(
      types(events),
      ["run.started", "approval.requested", "approval.approved", "effect.succeeded", "run.succeeded"],
    );
    assert.ok(events.every((e) => e.runId === runId));
    const requested = events.find((e) => e.type === "approval.requested");
    assert.equal(requested.data.rule, "gate-irreversible");
    const decided = events.find((e) => e.type === "approval.approved");
    assert.equal(decided.actor, "operator");
    assert.equal(decided.data.rule, "gate-irreversible");
    assert.equal(decided.data.approver, "operator");
    assert.equal(decided.data.approvalId, approvalId);
    const effect = events.find((e) => e.type === "effect.succeeded");
    assert.equal(effect.data.effect, "email.send");
    assert.equal(effect.data.plugin, "smtp");
    assert.equal(effect.data.agent, "onboarding");
    assert.equal(effect.data.rule, "gate-irreversible");
    assert.equal(effect.data.approver, "operator");
    assert.equal(effect.data.approvalId, approvalId);

    const verify = await k.api("GET", "/api/audit/verify");
    assert.equal(verify.status, 200);
    assert.equal(verify.body.ok, true, JSON.stringify(verify.body));
    assert.ok(verify.body.checked >= events.length);
  });
});

Deno.test("denying `onboard_client`'s email fails the run with PolicyDeniedError, sends nothing and audits the denial", async () => {
  await withOnboarding(async (k, peer) => {
    const started = await k.api("POST", "/api/workflows/onboard_client/runs?wait=60", {
      input: { name: "Bob", email: "bob@client.test" },
    });
    assert.equal(started.body.status, "waiting_approval", JSON.stringify(started.body));
    const runId: string = started.body.runId;
    const approvalId: string = started.body.waitingFor.approvalId;

    const denied = await k.api("POST", `/api/approvals/${approvalId}/deny`, { note: "wrong client" });
    assert.equal(denied.status, 200, JSON.stringify(denied.body));
    assert.equal(denied.body.approval.status, "denied");

    const done = await k.api("GET", `/api/runs/${runId}?wait=60`);
    assert.equal(done.body.status, "failed", JSON.stringify(done.body));
    assert.equal(done.body.error.tag, "PolicyDeniedError", JSON.stringify(done.body.error));
    assert.match(done.body.error.message, /denied by operator: wrong client/);
    await settle();
    assert.equal(peer.received.length, 0, "no message is sent");

    const events: any[] = (await k.api("GET", `/api/audit?runId=${runId}`)).body.events;
    const kinds = types(events);
    assert.ok(kinds.includes("approval.denied"), kinds.join(", "));
    assert.ok(!kinds.includes("effect.succeeded"), kinds.join(", "));
    assert.equal(kinds.at(-1), "run.failed");
    const denial = events.find((e) => e.type === "approval.denied");
    assert.equal(denial.actor, "operator");
    assert.equal(denial.data.rule, "gate-irreversible");
    assert.equal(denial.data.approver, "operator");
    assert.equal(denial.data.note, "wrong client");
    const rejected = events.find((e) => e.type === "effect.rejected");
    assert.equal(rejected?.data.error.tag, "PolicyDeniedError");
    assert.equal((await k.api("GET", "/api/audit/verify")).body.ok, true);
  });
});

Deno.test("the CLI starts `onboard_client`, lists and approves its email, and prints the audit trail", async () => {
  await withOnboarding(async (k, peer) => {
    const cli = async (...args: string[]) => {
      const out = await runCli(args, { url: k.url });
      assert.equal(out.code, 0, `keel ${args.join(" ")} failed:\n${out.stdout}\n${out.stderr}`);
      return out.stdout;
    };

    const input = JSON.stringify({ name: "Grace Hopper", email: "grace@client.test" });
    const started = await cli("run", "onboard_client", "--input", input, "--wait", "60");
    const json = started.slice(0, started.lastIndexOf("}") + 1);
    const run = JSON.parse(json);
    assert.equal(run.status, "waiting_approval", started);
    const runId: string = run.runId;
    const approvalId: string = run.waitingFor.approvalId;
    assert.match(runId, /^run_[0-9a-f]{32}$/);
    assert.match(started, new RegExp(`Waiting for approval: deno task keel approve ${approvalId}`));

    const listed = await cli("approvals");
    assert.match(listed, new RegExp(`^${approvalId}\\s+email\\.send\\s+run ${runId}\\s+rule gate-irreversible`, "m"));
    assert.match(listed, /"to":"grace@client\.test"/);
    assert.match(listed, /This cannot be undone once it happens\./);
    assert.equal(peer.received.length, 0);

    const approved = await cli("approve", approvalId, "--note", "go");
    assert.equal(approved.trim(), `${approvalId} approved by operator`);

    const done = await k.api("GET", `/api/runs/${runId}?wait=60`);
    assert.equal(done.body.status, "succeeded", JSON.stringify(done.body));
    const shown = JSON.parse(await cli("runs", "show", runId));
    assert.equal(shown.status, "succeeded");
    await settle();
    assert.equal(peer.received.length, 1);
    assert.deepEqual(peer.received[0].to, ["grace@client.test"]);
    assert.equal(peer.received[0].messageId, shown.output.messageId);

    assert.equal(await cli("approvals"), "No pending approvals\n");

    const audit = await cli("audit", "--run", runId);
    const rows = audit.trim().split("\n").map((line) => line.split("\t"));
    assert.deepEqual(
      rows.map((r) => r[2]),
      ["run.started", "approval.requested", "approval.approved", "effect.succeeded", "run.succeeded"],
      audit,
    );
    assert.ok(rows.every((r) => r[4] === runId), audit);
    const approvedRow = rows.find((r) => r[2] === "approval.approved")!;
    assert.equal(approvedRow[3], "operator");
    assert.equal(JSON.parse(approvedRow[5]).rule, "gate-irreversible");
    assert.equal(JSON.parse(approvedRow[5]).approver, "operator");

    const verified = JSON.parse(await cli("audit", "--verify"));
    assert.equal(verified.ok, true);

    const wrong = await runCli(["approvals"], { url: k.url, token: "not-the-token" });
    assert.equal(wrong.code, 1);
    assert.match(wrong.stderr, /UnauthorizedError/);
  });
});
