/**
 * @module
 * Crash torture (issue 5's acceptance): 50 runs, each with chained
 * checkpointed steps, idempotent writes to a loopback HTTP witness and two
 * irreversible emails through the shipped smtp connector to a real SMTP peer,
 * while Keel — a real child process on one data dir — is killed with SIGKILL
 * at a random moment (50–800 ms after it answers) and restarted, for at
 * least 20 cycles and for as long as runs are still in flight (at most 30).
 * The runs' steps are paced by the wall clock over about 45 s, so all 50 are
 * in flight for most of the cycles however fast the engine is.
 * Between kills the test acts as the operator: an `unknown_outcome` approval
 * is answered "delivered" if the message is at the SMTP peer, else "retry".
 * A last start lets everything finish.
 *
 * What must hold afterwards: every run finished or is paused with a stated
 * reason, and once the operator has answered, every run succeeded; no email
 * reached the peer twice (by Message-ID, which the connector derives from the
 * idempotency key) and each arrived once; every witness key arrived, and
 * repeats of a key (allowed: the connector honours it) carried the same args;
 * each run's journal has one record per step number, the step chain is
 * unbroken (a completed step that ran again would break it), and what the
 * peers received matches the journal.
 *
 * The kill points are random: the summary line prints the seed, and
 * `TORTURE_SEED` replays the same kill delays (not the same interleavings:
 * the peers' delays and the runs' jitter are drawn afresh). `TORTURE_DEBUG=1`
 * prints where every unfinished run is at each cycle. Tuning knobs are in
 * `CFG`.
 */
import assert from "node:assert/strict";
import { type SmtpPeer, startSmtpPeer } from "../_support/smtp_peer.ts";
import { type ApiResponse, type KeelProcess, startKeelProcess, withTimeout } from "../_support/process.ts";
import { ROOT } from "../_support/keel.ts";

const CFG = {
  runs: 50,
  minCycles: 20,
  maxCycles: 30,
  /** Rounds per run: `steps` chained steps, then a witness write; an email after the first and the last round. */
  rounds: 3,
  steps: 12,
  /**
   * Runs are paced by the wall clock (each step's work ends at its share of
   * this, plus jitter), so they stay in flight across the cycles whatever
   * the engine's speed.
   */
  runMs: 45_000,
  jitterMs: 150,
  killAfterMs: { min: 50, max: 800 },
  /** The peers answer after up to this long, so kills land inside effects too. */
  witnessDelayMs: 150,
  /** The SMTP peer waits up to this long before taking a message, and again before answering "250". */
  smtpDelayMs: 200,
};
const EMAILS_PER_RUN = CFG.rounds > 1 ? 2 : 1;
const STEPS_PER_RUN = CFG.rounds * CFG.steps + 1;
const PACE_MS = Math.round(CFG.runMs / STEPS_PER_RUN);
/** `TORTURE_DEBUG=1` prints, each cycle, where every unfinished run is. */
const DEBUG = Deno.env.get("TORTURE_DEBUG") !== undefined;

/** mulberry32: a small seeded PRNG, so a failing seed can be tried again. */
const prng = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One write as the witness saw it. */
interface Delivery {
  readonly key: string;
  readonly body: { run: string; round: number; nonce: string };
}

/** A loopback HTTP peer for `witness.record`: counts every delivery, answers a repeated key with its first answer. */
const startWitness = (delayMs: () => number) => {
  const deliveries: Delivery[] = [];
  const answers = new Map<string, { key: string; delivery: number }>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const key = req.headers.get("idempotency-key");
    if (!key) return new Response("missing idempotency-key", { status: 400 });
    // Counted on arrival: from here on the write has happened, whatever becomes of the answer.
    deliveries.push({ key, body: await req.json() });
    if (!answers.has(key)) answers.set(key, { key, delivery: deliveries.length });
    await sleep(delayMs());
    return Response.json(answers.get(key));
  });
  return {
    host: "127.0.0.1",
    port: server.addr.port,
    deliveries,
    answers,
    close: () => server.shutdown(),
  };
};

type Witness = ReturnType<typeof startWitness>;

/** What one run's journal record and API view look like, as far as this test reads them. */
interface StepView {
  readonly seq: number;
  readonly kind: string;
  readonly name: string;
  readonly status: string;
  readonly value?: any;
  readonly args?: any;
  readonly idempotencyKey?: string;
}
interface RunBody {
  readonly id: string;
  readonly status: string;
  readonly waitingFor?: { approvalId: string; reason: string };
  readonly output?: any;
  readonly error?: unknown;
  readonly steps: StepView[];
}

const messageIdOf = (key: string) => `<${key}@keel.local>`;

const install = async (keel: KeelProcess, peer: SmtpPeer, witness: Witness) => {
  const installs: Array<[string, unknown]> = [
    [`${ROOT}/plugins/smtp`, {
      grant: { net: [`${peer.host}:${peer.port}`] },
      config: { host: peer.host, port: peer.port, from: "Keel <keel@torture.test>" },
    }],
    [`${ROOT}/tests/fixtures/torture/witness`, {
      grant: { net: [`${witness.host}:${witness.port}`] },
      config: { host: witness.host, port: witness.port },
    }],
    [`${ROOT}/tests/fixtures/torture/agent`, { grant: {} }],
  ];
  for (const [path, extra] of installs) {
    const res = await keel.api("POST", "/api/plugins", { path, ...(extra as object) });
    assert.equal(res.status, 201, `install ${path}: ${JSON.stringify(res.body)}`);
  }
};

Deno.test("kill -9 at random points over 20+ cycles with 50 runs in flight: nothing runs twice, no email twice", async () => {
  const seed = Number(Deno.env.get("TORTURE_SEED") ?? Math.floor(Math.random() * 2 ** 31));
  const random = prng(seed);
  const between = (min: number, max: number) => min + random() * (max - min);
  const began = performance.now();

  const peer = await startSmtpPeer({
    dataDelayMs: () => Math.random() * CFG.smtpDelayMs,
    answerDelayMs: () => Math.random() * CFG.smtpDelayMs,
  });
  const witness = startWitness(() => Math.random() * CFG.witnessDelayMs);
  const dataDir = await Deno.makeTempDir({ prefix: "keel-torture-" });
  const policiesDir = await Deno.makeTempDir({ prefix: "keel-torture-policies-" });
  await Deno.writeTextFile(
    `${policiesDir}/torture.yaml`,
    `default: allow
rules:
  - id: torture-mail
    description: The torture test's emails go out without a gate
    match: { effect: email.send }
    decision: allow
`,
  );
  const processes: KeelProcess[] = [];
  const start = async () => {
    const keel = await startKeelProcess({ dataDir, env: { KEEL_POLICIES: policiesDir } });
    processes.push(keel);
    return keel;
  };
  const anomalies: string[] = [];
  const resolutions = { delivered: 0, retry: 0, witness: 0 };

  /** The operator: answer every pending `unknown_outcome` by looking at the peers. */
  const resolveUnknown = async (keel: KeelProcess) => {
    const pending = await keel.api("GET", "/api/approvals?status=pending");
    if (pending.status !== 200) return;
    for (const a of pending.body.approvals) {
      if (a.kind !== "unknown_outcome") {
        anomalies.push(`unexpected ${a.kind} approval ${a.id} for ${a.effect} (rule ${a.rule})`);
        continue;
      }
      let resolution: "delivered" | "retry" = "retry";
      if (a.effect === "email.send") {
        const run: ApiResponse = await keel.api("GET", `/api/runs/${a.runId}`);
        const key = (run.body as RunBody).steps.find((s) => s.seq === a.seq)?.idempotencyKey;
        if (!key) {
          anomalies.push(`approval ${a.id}: step ${a.seq} of ${a.runId} has no idempotency key`);
          continue;
        }
        if (peer.received.some((m) => m.messageId === messageIdOf(key))) resolution = "delivered";
      }
      const res = await keel.api("POST", `/api/approvals/${a.id}/approve`, { resolution, by: "torture" });
      if (res.status === 200) {
        if (a.effect === "email.send") resolutions[resolution]++;
        else resolutions.witness++;
      }
    }
  };

  const statuses = async (keel: KeelProcess, runIds: string[], waitSeconds = 0): Promise<RunBody[]> =>
    await Promise.all(runIds.map(async (id) => {
      const res = await keel.api("GET", `/api/runs/${id}?wait=${waitSeconds}`);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      return res.body as RunBody;
    }));

  let cycles = 0;
  /** Runs not yet succeeded when each cycle's Keel came up (null: the kill came before the count). */
  const inFlightPerCycle: Array<number | null> = [];
  const startMs: number[] = [];
  try {
    // ------------------------------------------------------------ the cycles
    const runIds: string[] = [];
    for (;;) {
      cycles++;
      const t0 = performance.now();
      const keel = await start();
      startMs.push(performance.now() - t0);
      if (cycles === 1) {
        await install(keel, peer, witness);
        const t0 = Date.now();
        const started = await Promise.all(
          Array.from({ length: CFG.runs }, (_, i) =>
            keel.api("POST", "/api/workflows/torture/runs", {
              input: {
                i,
                email: `run${i}@torture.test`,
                rounds: CFG.rounds,
                steps: CFG.steps,
                // Staggered over one pace interval, so the runs reach their effects at different moments.
                t0: t0 + Math.round((i * PACE_MS) / CFG.runs),
                paceMs: PACE_MS,
                jitterMs: CFG.jitterMs,
              },
            })),
        );
        for (const res of started) {
          assert.equal(res.status, 202, JSON.stringify(res.body));
          runIds.push(res.body.runId);
        }
      }
      // The operator answers what the last crash left open (recovered runs keep going meanwhile), then
      // Keel gets a random time more before the kill, which may cut off the count of unfinished runs.
      await resolveUnknown(keel);
      const killAt = performance.now() + between(CFG.killAfterMs.min, CFG.killAfterMs.max);
      inFlightPerCycle.push(null);
      const count = statuses(keel, runIds).then(
        (runs) => {
          const open = runs.filter((r) => r.status !== "succeeded");
          inFlightPerCycle[cycles - 1] = open.length;
          if (DEBUG) {
            console.error(`[torture] cycle ${cycles}: ${open.length} unfinished`);
            for (const r of open) {
              const last = r.steps.at(-1);
              console.error(`  ${r.id} ${r.status} at ${last?.seq} ${last?.name} ${last?.status}`);
            }
          }
        },
        () => {},
      );
      await sleep(Math.max(0, killAt - performance.now()));
      await keel.kill();
      await count;
      // Let the peers see the dead connections before anyone looks at what they received.
      await peer.waitForNoConnections(30_000);
      if (cycles >= CFG.maxCycles || (cycles >= CFG.minCycles && inFlightPerCycle.at(-1) === 0)) break;
    }

    // ------------------------------------------------- the last, calm start
    const keel = await start();
    const settle = () =>
      withTimeout(statuses(keel, runIds, 60), 90_000, "waiting for every run to leave status running");
    let runs = await settle();
    let stuck = runs.filter((r) => r.status === "running");
    if (stuck.length) {
      // Does answering their approvals get them going again?
      await resolveUnknown(keel);
      stuck = (await statuses(keel, stuck.map((r) => r.id), 10)).filter((r) => r.status === "running");
    }
    if (stuck.length) {
      const approvals = (await keel.api("GET", "/api/approvals")).body.approvals as Array<Record<string, unknown>>;
      const detail = await Promise.all(stuck.map(async (r) => ({
        run: r.id,
        waitingFor: r.waitingFor,
        lastStep: r.steps.at(-1),
        approvals: approvals.filter((a) => a.runId === r.id).map((a) => `${a.id} ${a.kind} ${a.status}`),
        audit: (await keel.api("GET", `/api/audit?runId=${r.id}`)).body.events.map((e: { type: string }) => e.type),
      })));
      assert.fail(
        `${stuck.length} run(s) still running 60 s after the last start, and 10 s after the operator answered ` +
          `every pending approval:\n${JSON.stringify(detail, null, 1)}`,
      );
    }
    // Acceptance: every run finished, or is paused and says why.
    for (const r of runs) {
      const ok = r.status === "succeeded" || (r.status === "waiting_approval" && !!r.waitingFor?.reason);
      assert.ok(ok, `run ${r.id} is ${r.status} without a stated reason: ${JSON.stringify(r.waitingFor ?? r.error)}`);
    }
    const pausedAfterCrashes = runs.filter((r) => r.status === "waiting_approval").length;
    for (let pass = 0; pass < 5 && runs.some((r) => r.status !== "succeeded"); pass++) {
      await resolveUnknown(keel);
      runs = await settle();
    }
    assert.deepEqual(anomalies, []);
    for (const r of runs) {
      assert.equal(r.status, "succeeded", `run ${r.id}: ${JSON.stringify(r.waitingFor ?? r.error)}`);
    }
    await sleep(300); // a stray duplicate would have a moment to arrive

    // ------------------------------------------------------ the ground truth
    const perRunSeqs = STEPS_PER_RUN + CFG.rounds + EMAILS_PER_RUN;
    for (const run of runs) {
      const seqs = run.steps.map((s) => s.seq);
      assert.equal(new Set(seqs).size, seqs.length, `run ${run.id}: a step number is recorded twice`);
      assert.deepEqual(seqs, Array.from({ length: perRunSeqs }, (_, i) => i + 1), `run ${run.id}: step numbers`);
      let prev = `seed:${runIds.indexOf(run.id)}`; // run i was started with input i
      const nonces: string[] = [];
      for (const step of run.steps) {
        assert.equal(step.status, "done", `run ${run.id} step ${step.seq}: ${JSON.stringify(step)}`);
        if (step.kind === "step") {
          // A completed step that ran again would have handed its successor a nonce the journal does not hold.
          assert.equal(step.value.prev, prev, `run ${run.id}: the chain breaks at step ${step.seq} "${step.name}"`);
          prev = step.value.nonce;
          nonces.push(prev);
        } else if (step.name === "witness.record") {
          assert.equal(step.args.nonce, prev, `run ${run.id} step ${step.seq}: witness args`);
          const key = step.idempotencyKey!;
          const got = witness.deliveries.filter((d) => d.key === key);
          assert.ok(got.length >= 1, `run ${run.id} step ${step.seq}: the witness never got key ${key}`);
          for (const d of got) assert.deepEqual(d.body, step.args, `key ${key} was sent with different args`);
          assert.deepEqual(step.value, witness.answers.get(key), `run ${run.id} step ${step.seq}: witness answer`);
        } else if (step.name === "email.send") {
          assert.equal(step.args.text, `chain ${prev}`, `run ${run.id} step ${step.seq}: email args`);
          const got = peer.received.filter((m) => m.messageId === messageIdOf(step.idempotencyKey!));
          assert.equal(got.length, 1, `run ${run.id} step ${step.seq}: ${got.length} copies of the email`);
          assert.ok(got[0].raw.includes(`chain ${prev}`), `run ${run.id} step ${step.seq}: the email's text`);
        } else {
          assert.fail(`run ${run.id}: unexpected step ${JSON.stringify(step)}`);
        }
      }
      assert.deepEqual(run.output.nonces, nonces, `run ${run.id}: the workflow saw other values than the journal`);
    }
    const byMessageId = new Map<string, number>();
    for (const m of peer.received) byMessageId.set(m.messageId ?? "?", (byMessageId.get(m.messageId ?? "?") ?? 0) + 1);
    const duplicateEmails = [...byMessageId.values()].filter((n) => n > 1).length;
    assert.equal(duplicateEmails, 0, "an irreversible email reached the peer twice");
    assert.equal(peer.received.length, CFG.runs * EMAILS_PER_RUN);
    for (let i = 0; i < CFG.runs; i++) assert.equal(peer.receivedFor(`run${i}@torture.test`).length, EMAILS_PER_RUN);
    assert.equal(witness.answers.size, CFG.runs * CFG.rounds, "distinct witness keys");
    assert.deepEqual((await keel.api("GET", "/api/audit/verify")).body.ok, true);
    // Reported, not asserted (issue 5 does not ask for it): effect outcomes journaled without their audit event,
    // which a kill between the journal write and the audit append leaves behind.
    const auditGaps: Record<string, number> = {};
    for (const run of runs) {
      const events: Array<{ type: string; data: { seq?: number } }> =
        (await keel.api("GET", `/api/audit?runId=${run.id}`)).body.events;
      const audited = new Set(
        events.filter((e) => e.type === "effect.succeeded" || e.type === "effect.confirmed").map((e) => e.data.seq),
      );
      for (const step of run.steps.filter((s) => s.kind === "effect" && !audited.has(s.seq))) {
        auditGaps[step.name] = (auditGaps[step.name] ?? 0) + 1;
      }
    }

    const kills = processes.length - 1;
    const seconds = ((performance.now() - began) / 1000).toFixed(1);
    console.error(
      `[torture] seed ${seed}: ${cycles} cycles, ${kills} kills (runs unfinished at each restart: ${
        inFlightPerCycle.map((n) => n ?? "?").join(" ")
      }; Keel up in ${
        Math.round(startMs.reduce((a, b) => a + b, 0) / startMs.length)
      } ms on average), ${CFG.runs} runs succeeded, ${peer.received.length} emails (0 duplicates, ${peer.dropped} dropped mid-send), ` +
        `unknown outcomes resolved ${resolutions.delivered} delivered / ${resolutions.retry} retry ` +
        `(${pausedAfterCrashes} still paused after the last kill), witness ${witness.answers.size} keys in ${witness.deliveries.length} deliveries ` +
        `(${
          witness.deliveries.length - witness.answers.size
        } repeats under the same key, ${resolutions.witness} resolved by the operator), ` +
        `effect outcomes without an audit event: ${JSON.stringify(auditGaps)}, ${seconds} s`,
    );
  } catch (error) {
    console.error(
      `[torture] seed ${seed} failed after ${cycles} cycle(s); runs unfinished at each restart: ${
        inFlightPerCycle.map((n) => n ?? "?").join(" ")
      }; operator resolutions ${JSON.stringify(resolutions)}`,
    );
    for (const p of processes.slice(-3)) console.error(`--- Keel process pid ${p.pid} output ---\n${p.output()}`);
    throw error;
  } finally {
    for (const p of processes) await p.kill();
    await peer.close();
    await witness.close();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    await Deno.remove(policiesDir, { recursive: true }).catch(() => {});
  }
});
