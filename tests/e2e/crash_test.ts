/**
 * @module
 * Crash acceptance: Keel runs as a real child process (`deno run -A main.ts
 * serve`) and is killed with SIGKILL — no finalizers, no flush — at the worst
 * moments of an approved, irreversible effect, then restarted on the same
 * data dir. The SMTP peer lives in the test process across restarts and
 * counts deliveries. Whatever the moment, every run ends `succeeded` with
 * exactly one message; where Keel cannot know whether the send happened
 * (intent journaled, no outcome), it says so with an `unknown_outcome`
 * approval instead of guessing, and the operator resolves it.
 */
import assert from "node:assert/strict";
import { type SmtpPeer, startSmtpPeer } from "../_support/smtp_peer.ts";
import {
  installOnboardingOver,
  type KeelProcess,
  runCli,
  spawnKeel,
  startKeelProcess,
  withTimeout,
} from "../_support/process.ts";
import { TEST_TOKEN } from "../_support/keel.ts";
import { sendMail } from "../../plugins/smtp/smtp_client.ts";

/** One crash scenario: a data dir, an SMTP peer, and every Keel process it starts, all cleaned up. */
interface Scenario {
  readonly dataDir: string;
  readonly peer: SmtpPeer;
  /** Start Keel on the scenario's data dir and wait until it answers. */
  start(): Promise<KeelProcess>;
}

const scenario = async (
  options: { holdData?: boolean },
  body: (s: Scenario) => Promise<void>,
): Promise<void> => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-crash-" });
  const peer = await startSmtpPeer({ holdData: options.holdData });
  const processes: KeelProcess[] = [];
  try {
    await body({
      dataDir,
      peer,
      async start() {
        const keel = await startKeelProcess({ dataDir });
        processes.push(keel);
        return keel;
      },
    });
  } catch (error) {
    processes.forEach((p, i) => console.error(`--- Keel process ${i + 1} (pid ${p.pid}) output ---\n${p.output()}`));
    throw error;
  } finally {
    for (const p of processes) await p.kill();
    await peer.close();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
};

/** Start `onboard_client` for one client and wait until it parks at the approval gate. */
const startRun = async (keel: KeelProcess, client: { name: string; email: string }) => {
  const res = await keel.api("POST", "/api/workflows/onboard_client/runs?wait=60", { input: client });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  assert.equal(res.body.status, "waiting_approval", JSON.stringify(res.body));
  return { runId: res.body.runId as string, approvalId: res.body.waitingFor.approvalId as string };
};

/** Wait (bounded) until the run is no longer `running`, and return it. */
const settled = async (keel: KeelProcess, runId: string) => {
  const res = await keel.api("GET", `/api/runs/${runId}?wait=60`);
  assert.equal(res.status, 200, JSON.stringify(res.body));
  assert.notEqual(res.body.status, "running", `run ${runId} is still running after 60 s`);
  return res.body;
};

/** The approval a run is waiting for. */
const approvalOf = async (keel: KeelProcess, run: { waitingFor?: { approvalId: string } }) => {
  assert.ok(run.waitingFor, `run is not waiting for anything: ${JSON.stringify(run)}`);
  const res = await keel.api("GET", "/api/approvals?status=pending");
  const approval = res.body.approvals.find((a: { id: string }) => a.id === run.waitingFor!.approvalId);
  assert.ok(approval, `approval ${run.waitingFor.approvalId} is not pending: ${JSON.stringify(res.body)}`);
  return approval;
};

const approve = async (keel: KeelProcess, approvalId: string, body: Record<string, unknown> = {}) => {
  const res = await keel.api("POST", `/api/approvals/${approvalId}/approve`, body);
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body.approval;
};

/**
 * The run succeeded and its client got exactly one message, whose Message-ID
 * comes from the send step's idempotency key (and matches what the run
 * reports, when it reports one: an operator-confirmed "delivered" send has no
 * server reply to report).
 */
const assertDeliveredOnce = (peer: SmtpPeer, run: any, email: string) => {
  assert.equal(run.status, "succeeded", JSON.stringify(run));
  const got = peer.receivedFor(email);
  assert.equal(got.length, 1, `${email} got ${got.length} messages`);
  assert.match(got[0].raw, /^Subject: Welcome aboard, /m);
  const send = run.steps.find((step: { name: string }) => step.name === "email.send");
  assert.equal(send?.status, "done", JSON.stringify(run.steps));
  assert.equal(got[0].messageId, `<${send.idempotencyKey}@keel.local>`);
  if (run.output.messageId !== undefined) assert.equal(run.output.messageId, got[0].messageId);
};

const auditTypes = async (keel: KeelProcess, runId: string): Promise<string[]> =>
  (await keel.api("GET", `/api/audit?runId=${runId}`)).body.events.map((e: { type: string }) => e.type);

const assertAuditVerifies = async (keel: KeelProcess) => {
  const res = await keel.api("GET", "/api/audit/verify");
  assert.equal(res.body.ok, true, JSON.stringify(res.body));
};

/** Give a stray duplicate a moment to show up before asserting "exactly one". */
const settle = () => new Promise((r) => setTimeout(r, 300));

Deno.test("a second Keel on a data dir in use exits with a clear error, and kill -9 leaves no stale lock", async () => {
  await scenario({}, async ({ dataDir, start }) => {
    const first = await start();
    const second = spawnKeel({ dataDir });
    const exited = withTimeout(second.exited, 30_000, "waiting for the second Keel to exit");
    const status = await exited.finally(second.kill);
    assert.notEqual(status.code, 0, "the second Keel must not start");
    assert.match(second.output(), /Keel cannot start: Data dir ".*" is in use by another Keel process/);
    assert.match(second.output(), new RegExp(`\\(pid ${first.pid}\\)`));
    assert.equal((await first.api("GET", "/api/plugins")).status, 200, "the first Keel keeps serving");

    const killed = await first.kill();
    assert.equal(killed.signal, "SIGKILL");
    const third = await start();
    assert.equal((await third.api("GET", "/api/plugins")).status, 200, "a restart after kill -9 is not blocked");
  });
});

Deno.test("a run waiting for approval survives kill -9 and, once approved, sends exactly one email", async () => {
  await scenario({}, async ({ peer, start }) => {
    const client = { name: "Ada", email: "ada@crash.test" };
    const first = await start();
    await installOnboardingOver(first.api, peer);
    const { runId, approvalId } = await startRun(first, client);
    const before = (await first.api("GET", `/api/runs/${runId}`)).body.steps;
    await first.kill();
    assert.equal(peer.received.length, 0);

    const second = await start();
    const run = (await second.api("GET", `/api/runs/${runId}`)).body;
    assert.equal(run.status, "waiting_approval", JSON.stringify(run));
    assert.equal(run.waitingFor.approvalId, approvalId);
    const approval = await approvalOf(second, run);
    assert.equal(approval.kind, "effect");
    assert.equal(approval.rule, "gate-irreversible");

    await approve(second, approvalId);
    const done = await settled(second, runId);
    await settle();
    assertDeliveredOnce(peer, done, client.email);
    assert.equal(peer.received.length, 1);
    // Completed steps are replayed from the journal, not redone: the same records, untouched by the restart.
    const completed = before.filter((s: { status: string }) => s.status === "done");
    assert.deepEqual(completed.map((s: { name: string }) => s.name), ["remember", "draft_welcome"]);
    assert.deepEqual(done.steps.slice(0, completed.length), completed);
    const types = await auditTypes(second, runId);
    assert.deepEqual(types, [
      "run.started",
      "approval.requested",
      "approval.approved",
      "effect.succeeded",
      "run.succeeded",
    ]);
    await assertAuditVerifies(second);
  });
});

/** How one run came through a kill -9 after its approval. */
type Branch =
  | "sent before the kill"
  | "sent after the restart (approved, not yet dispatched)"
  | 'unknown outcome, resolved "delivered"'
  | 'unknown outcome, resolved "retry"';

/**
 * Start `count` runs on `keel`, approve them all at once, kill -9 Keel at
 * `killAt`, restart on the same data dir and bring every run to `succeeded`
 * the way an operator would. Returns the restarted Keel and each run's branch.
 */
const approveAndKill = async (
  s: Scenario,
  keel: KeelProcess,
  round: number,
  count: number,
  killAt: "approved" | "first email accepted",
): Promise<{ keel: KeelProcess; branches: Branch[] }> => {
  const { peer } = s;
  const clients = Array.from({ length: count }, (_, i) => ({
    name: `Client ${round}.${i}`,
    email: `client${round}.${i}@crash.test`,
  }));
  const runs = await Promise.all(clients.map((c) => startRun(keel, c)));

  const before = peer.received.length;
  await Promise.all(runs.map((r) => approve(keel, r.approvalId)));
  // The peer wakes this waiter in the very turn it records the message, before
  // it reads Keel's QUIT, so Keel cannot have journaled that send's outcome.
  if (killAt === "first email accepted") await peer.waitFor(before + 1, 60_000);
  await keel.kill();
  await peer.waitForNoConnections();
  const sentBeforeKill = clients.map((c) => peer.receivedFor(c.email).length);

  const restarted = await s.start();
  const branches: Branch[] = [];
  for (const [i, { runId }] of runs.entries()) {
    const email = clients[i].email;
    let run = await settled(restarted, runId);
    let branch: Branch;
    if (run.status === "waiting_approval") {
      // Keel died after journaling the intent and before journaling the outcome.
      const approval = await approvalOf(restarted, run);
      assert.equal(approval.kind, "unknown_outcome", JSON.stringify(approval));
      assert.equal(approval.rule, "unknown-outcome");
      assert.equal(approval.effect, "email.send");
      assert.equal(approval.args.to, email);
      // The operator checks the recipient's mailbox before answering.
      const arrived = peer.receivedFor(email).length;
      assert.ok(arrived <= 1, `${email} got ${arrived} messages`);
      const resolution = arrived === 1 ? "delivered" : "retry";
      await approve(restarted, approval.id, { resolution });
      run = await settled(restarted, runId);
      branch = `unknown outcome, resolved "${resolution}"`;
      const types = await auditTypes(restarted, runId);
      assert.ok(types.includes("effect.outcome_unknown"), types.join(", "));
      assert.ok(types.includes(resolution === "delivered" ? "effect.confirmed" : "effect.succeeded"), types.join(", "));
    } else if (sentBeforeKill[i] === 1) {
      branch = "sent before the kill";
    } else {
      branch = "sent after the restart (approved, not yet dispatched)";
    }
    branches.push(branch);
    await settle();
    assertDeliveredOnce(peer, run, email);
  }
  return { keel: restarted, branches };
};

Deno.test("kill -9 right after approving runs: every run still sends exactly one email", async () => {
  const RUNS = 5;
  await scenario({}, async (s) => {
    let keel = await s.start();
    await installOnboardingOver(keel.api, s.peer);
    const seen: Record<string, number> = {};
    // Round 1 kills as soon as the approvals are recorded; round 2 (on the
    // restarted host, so memory reopens after kill -9) kills the moment the
    // SMTP server has accepted the first email, before Keel hears "250".
    const rounds = ["approved", "first email accepted"] as const;
    for (const [round, killAt] of rounds.entries()) {
      const result = await approveAndKill(s, keel, round + 1, RUNS, killAt);
      keel = result.keel;
      const counts: Record<string, number> = {};
      for (const b of result.branches) {
        counts[b] = (counts[b] ?? 0) + 1;
        seen[b] = (seen[b] ?? 0) + 1;
      }
      console.log(`round ${round + 1}, kill -9 when ${killAt}: ${JSON.stringify(counts)}`);
    }
    console.log(`kill -9 after approval, branches over ${rounds.length * RUNS} runs: ${JSON.stringify(seen)}`);
    assert.equal(s.peer.received.length, rounds.length * RUNS, "one message per run, no more");
    assert.deepEqual((await keel.api("GET", "/api/approvals?status=pending")).body.approvals, []);
    await assertAuditVerifies(keel);
  });
});

Deno.test("kill -9 while the SMTP transaction is open leaves an unknown outcome; retry sends exactly one email", async () => {
  await scenario({ holdData: true }, async ({ peer, start }) => {
    const client = { name: "Mid Send", email: "mid@crash.test" };
    const first = await start();
    await installOnboardingOver(first.api, peer);
    const { runId, approvalId } = await startRun(first, client);
    await approve(first, approvalId);

    // The whole message is on the wire; the server has not answered "250" yet.
    await peer.waitForHeld(1, 30_000);
    const inFlight = (await first.api("GET", `/api/runs/${runId}`)).body;
    assert.equal(inFlight.status, "running");
    const step = inFlight.steps.find((s: { name: string }) => s.name === "email.send");
    assert.equal(step.status, "intent", "the intent is journaled before dispatch");
    await first.kill();
    await peer.waitForNoConnections();
    assert.deepEqual(peer.release(), { delivered: 0, dropped: 1 }, "the dropped transaction is not a delivery");
    assert.equal(peer.received.length, 0);

    const second = await start();
    const run = await settled(second, runId);
    assert.equal(run.status, "waiting_approval", JSON.stringify(run));
    assert.match(run.waitingFor.reason, /unknown after a crash/);
    const approval = await approvalOf(second, run);
    assert.equal(approval.kind, "unknown_outcome");
    assert.equal(approval.effect, "email.send");
    assert.equal(approval.args.to, client.email);
    assert.match(approval.message, /cannot know whether it happened/);

    // Approving without saying what happened is refused.
    const vague = await second.api("POST", `/api/approvals/${approval.id}/approve`, {});
    assert.equal(vague.status, 400, JSON.stringify(vague.body));

    assert.equal(peer.receivedFor(client.email).length, 0, "the operator checks: nothing arrived");
    const decided = await approve(second, approval.id, { resolution: "retry" });
    assert.equal(decided.resolution, "retry");
    const done = await settled(second, runId);
    await settle();
    assertDeliveredOnce(peer, done, client.email);
    assert.equal(peer.received.length, 1);
    assert.equal(done.steps.find((s: { name: string }) => s.name === "email.send").idempotencyKey, step.idempotencyKey);

    const types = await auditTypes(second, runId);
    assert.deepEqual(types, [
      "run.started",
      "approval.requested",
      "approval.approved",
      "effect.outcome_unknown",
      "approval.approved",
      "effect.succeeded",
      "run.succeeded",
    ]);
    const events: any[] = (await second.api("GET", `/api/audit?runId=${runId}`)).body.events;
    assert.equal(events.filter((e) => e.type === "approval.approved")[1].data.resolution, "retry");
    await assertAuditVerifies(second);

    // The CLI sees the same host after the crash.
    const cli = await runCli(["audit", "--run", runId], { url: second.url, token: TEST_TOKEN });
    assert.equal(cli.code, 0, cli.stderr);
    assert.match(cli.stdout, /effect\.outcome_unknown/);
  });
});

Deno.test("the SMTP peer counts a held message only if its sender is still connected when released", async () => {
  const peer = await startSmtpPeer({ holdData: true });
  try {
    // A sender that hangs up after the final "." without waiting for the answer.
    const conn = await Deno.connect({ hostname: peer.host, port: peer.port });
    const lines = [
      "EHLO tester",
      "MAIL FROM:<a@x.test>",
      "RCPT TO:<gone@x.test>",
      "DATA",
      "Subject: hi\r\nMessage-ID: <gone@x.test>\r\n\r\nbody\r\n.",
    ];
    const reader = conn.readable.getReader();
    const writer = conn.writable.getWriter();
    const decoder = new TextDecoder();
    let pending = "";
    /** Read one whole (possibly multi-line) reply. */
    const reply = async (): Promise<string> => {
      for (;;) {
        const match = /(?:^|\r\n)\d{3} [^\r\n]*\r\n/.exec(pending);
        if (match) {
          const text = pending.slice(0, match.index + match[0].length);
          pending = pending.slice(text.length);
          return text;
        }
        const { value, done } = await reader.read();
        if (done) throw new Error(`connection closed; got ${JSON.stringify(pending)}`);
        pending += decoder.decode(value, { stream: true });
      }
    };
    assert.match(await reply(), /^220 /);
    for (const line of lines) {
      await writer.write(new TextEncoder().encode(`${line}\r\n`));
      if (line !== lines.at(-1)) assert.match(await reply(), /(^|\n)(250|354) [^\n]*\r\n$/);
    }
    await peer.waitForHeld(1);
    reader.releaseLock();
    writer.releaseLock();
    conn.close();
    await peer.waitForNoConnections();
    assert.deepEqual(peer.release(), { delivered: 0, dropped: 1 });
    assert.equal(peer.received.length, 0);

    // A sender that waits is answered "250" on release and counted once.
    peer.hold();
    const sent = sendMail({ host: peer.host, port: peer.port }, {
      from: "a@x.test",
      to: "stays@x.test",
      subject: "hi",
      text: "body",
      messageId: "<stays@x.test>",
    });
    await peer.waitForHeld(1);
    assert.equal(peer.received.length, 0);
    assert.deepEqual(peer.release(), { delivered: 1, dropped: 0 });
    assert.match((await sent).response, /^250/);
    assert.equal(peer.received.length, 1);
    assert.equal(peer.received[0].messageId, "<stays@x.test>");
    assert.equal(peer.dropped, 1);
  } finally {
    await peer.close();
  }
});
