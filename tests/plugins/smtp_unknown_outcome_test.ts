/**
 * @module
 * The smtp connector when the server takes the whole message and then goes
 * silent or hangs up before its final "250": the email may well be delivered,
 * and nobody can tell. `email.send` is irreversible, so through the real
 * Gateway that must park the run on an `unknown_outcome` approval (as a crash
 * or an RPC timeout does), not fail the step as if nothing had been sent: a
 * failed step invites the workflow, the operator or a re-run to send the same
 * email again. Failures before the message is complete stay definite.
 */
import assert from "node:assert/strict";
import { installOnboarding, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { startSmtpPeer } from "../_support/smtp_peer.ts";
import { sendMail, SmtpError } from "../../plugins/smtp/smtp_client.ts";

// Irreversible effects are allowed outright here, so only the outcome decides whether the run pauses.
const ALLOW_EMAIL = `default: allow
rules:
  - id: allow-email
    match: { effect: email.send }
    decision: allow
`;

/**
 * A minimal SMTP server on 127.0.0.1 that accepts the envelope and reads the
 * whole message, then hangs up without a reply (`hangUp`), or rejects RCPT.
 */
const startRawPeer = (mode: "hangUpAfterData" | "rejectRcpt") => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const messages: string[] = [];
  const serve = async (conn: Deno.Conn) => {
    const enc = new TextEncoder();
    const dec = new TextDecoder();
    let buf = "";
    let inData = false;
    const say = (s: string) => conn.write(enc.encode(s));
    await say("220 raw peer\r\n");
    const chunk = new Uint8Array(8192);
    for (;;) {
      const n = await conn.read(chunk).catch(() => null);
      if (n === null) break;
      buf += dec.decode(chunk.subarray(0, n));
      if (inData) {
        const end = buf.indexOf("\r\n.\r\n");
        if (end < 0) continue;
        messages.push(buf.slice(0, end));
        conn.close(); // the message is complete on this side; the client never hears "250"
        return;
      }
      let nl: number;
      while ((nl = buf.indexOf("\r\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        if (/^EHLO/i.test(line)) await say("250-raw\r\n250 8BITMIME\r\n");
        else if (/^RCPT/i.test(line) && mode === "rejectRcpt") await say("550 no such user\r\n");
        else if (/^(MAIL|RCPT)/i.test(line)) await say("250 ok\r\n");
        else if (/^DATA/i.test(line)) {
          await say("354 go ahead\r\n");
          inData = true;
          break;
        } else if (/^QUIT/i.test(line)) {
          await say("221 bye\r\n");
          conn.close();
          return;
        } else await say("502 what\r\n");
      }
      if (inData) {
        const end = buf.indexOf("\r\n.\r\n");
        if (end >= 0) {
          messages.push(buf.slice(0, end));
          conn.close();
          return;
        }
      }
    }
    try {
      conn.close();
    } catch { /* closed */ }
  };
  (async () => {
    for await (const conn of listener) serve(conn).catch(() => {});
  })().catch(() => {});
  return {
    host: "127.0.0.1",
    port: (listener.addr as Deno.NetAddr).port,
    messages,
    close: () => listener.close(),
  };
};

/** The run once it has stopped running: a loaded machine (the parallel suite) may take longer than one wait. */
const settled = async (k: TestKeel, started: any) => {
  let run = started;
  for (let i = 0; i < 6 && (run.status === "queued" || run.status === "running"); i++) {
    run = { runId: started.runId, ...(await k.api("GET", `/api/runs/${started.runId}?wait=30`)).body };
  }
  return run;
};

Deno.test("smtp: a server that hangs up after taking the whole message parks the run on an unknown outcome", async () => {
  const peer = startRawPeer("hangUpAfterData");
  const k = await startTestKeel({ policies: { "p.yaml": ALLOW_EMAIL } });
  try {
    await installOnboarding(k, peer);
    const r = await k.api("POST", "/api/workflows/onboard_client/runs?wait=30", {
      input: { name: "Ada", email: "ada@client.test" },
    });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    const run = await settled(k, r.body);
    assert.equal(peer.messages.length, 1, "the server has the whole message: it may well be delivered");
    const step = run.steps.find((s: any) => s.kind === "effect");
    assert.equal(
      run.status,
      "waiting_approval",
      `a lost reply after the message was sent is an unknown outcome, not a failure: ${
        JSON.stringify({ status: run.status, error: run.error, step: step?.status })
      }`,
    );
    assert.equal(step.status, "unknown_outcome");
    const approval = (await k.api("GET", "/api/approvals?status=pending")).body.approvals
      .find((a: any) => a.id === run.waitingFor.approvalId);
    assert.equal(approval.kind, "unknown_outcome");
    // The operator checks the mailbox: it arrived. The run ends without sending again.
    const ok = await k.api("POST", `/api/approvals/${approval.id}/approve`, { resolution: "delivered" });
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    const done = (await k.api("GET", `/api/runs/${run.runId}?wait=30`)).body;
    assert.equal(done.status, "succeeded", JSON.stringify(done));
    assert.equal(peer.messages.length, 1);
  } finally {
    await k.close();
    peer.close();
  }
});

Deno.test("smtp: a refusal before the message is complete still fails the step for certain", async () => {
  const peer = startRawPeer("rejectRcpt");
  const k = await startTestKeel({ policies: { "p.yaml": ALLOW_EMAIL } });
  try {
    await installOnboarding(k, peer);
    const r = await k.api("POST", "/api/workflows/onboard_client/runs?wait=30", {
      input: { name: "Ada", email: "ada@client.test" },
    });
    const run = await settled(k, r.body);
    assert.equal(run.status, "failed", JSON.stringify(run));
    assert.equal(run.error.details.tag, "SmtpRejected");
    assert.equal(peer.messages.length, 0);
  } finally {
    await k.close();
    peer.close();
  }
});

Deno.test("`sendMail()` says the outcome is unknown when the reply to a complete message times out", async () => {
  // The real peer records the message, then answers "250" only after 1 s; the client waits 200 ms.
  const peer = await startSmtpPeer({ answerDelayMs: 1000 });
  try {
    await assert.rejects(
      sendMail({ host: peer.host, port: peer.port, timeoutMs: 200 }, {
        from: "keel@example.com",
        to: "a@example.com",
        subject: "s",
        text: "t",
        messageId: "<x@keel.local>",
      }),
      (error: unknown) => {
        assert.ok(error instanceof SmtpError);
        assert.equal(error.stage, "timeout");
        assert.equal((error as SmtpError & { outcomeUnknown?: boolean }).outcomeUnknown, true, error.message);
        return true;
      },
    );
    assert.equal(peer.received.length, 1);
  } finally {
    await peer.close();
  }
});
