/**
 * @module
 * `POST /api/runs/{id}/undo` end to end: a real agent Worker plans a meeting
 * through a real calendar connector Worker (`tests/fixtures/undo`), and a
 * witness peer on 127.0.0.1 records every call that really left Keel — the
 * effects, then the compensations undo sends, in order. Undo runs the
 * declared compensations last first through the Gateway, skips reads, names
 * what cannot be undone, reverts the run's memory, and does nothing new the
 * second time. A run still in progress cannot be undone, and a workflow
 * cannot reach a compensation or an undo step it does not list.
 */
import assert from "node:assert/strict";
import { UNDO_SEQ_BASE } from "../../core/gateway/mod.ts";
import { ROOT, startTestKeel, TEST_TOKEN, type TestKeel } from "../_support/keel.ts";
import { cliRunner } from "../_support/cli.ts";

const { keel: cli } = await cliRunner("keel-undo-cli-");

interface Call {
  readonly effect: string;
  readonly args: any;
  readonly key: string;
}

/** The peer every calendar call reaches; `delayMs` holds each answer back (to widen a race). */
const startWitness = async (delayMs = 0) => {
  const calls: Call[] = [];
  const ready = Promise.withResolvers<number>();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: ({ port }) => ready.resolve(port), onError: () => new Response() },
    async (req) => {
      calls.push(await req.json());
      if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
      return Response.json({ ok: true });
    },
  );
  return { host: "127.0.0.1", port: await ready.promise, calls, close: () => server.shutdown() };
};

const POLICY = `default: allow
rules:
  - id: allow-cal
    match: { effect: "cal.*" }
    decision: allow
  - id: gate-hold
    match: { effect: cal.hold }
    decision: approve
`;

const withUndoKeel = async (
  fn: (k: TestKeel, calls: Call[]) => Promise<void>,
  policy = POLICY,
  options: { calendar?: string; delayMs?: number } = {},
) => {
  const witness = await startWitness(options.delayMs);
  const k = await startTestKeel({ policies: { "p.yaml": policy } });
  try {
    const cal = await k.api("POST", "/api/plugins", {
      path: options.calendar ?? `${ROOT}/tests/fixtures/undo/cal`,
      grant: { net: [`${witness.host}:${witness.port}`] },
      config: { host: witness.host, port: witness.port },
    });
    assert.equal(cal.status, 201, JSON.stringify(cal.body));
    const planner = await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/undo/planner`, grant: {} });
    assert.equal(planner.status, 201, JSON.stringify(planner.body));
    await fn(k, witness.calls);
  } finally {
    await k.close();
    await witness.close();
  }
};

const start = async (k: TestKeel, workflow: string, input: unknown) => {
  const r = await k.api("POST", `/api/workflows/${workflow}/runs?wait=60`, { input });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  return r.body;
};

Deno.test("undo compensates two effects last first through the Gateway, reports what it skipped, reverts memory; a second undo does nothing new", async () => {
  await withUndoKeel(async (k, calls) => {
    const run = await start(k, "plan_meeting", { title: "kickoff", room: "blue" });
    assert.equal(run.status, "succeeded", JSON.stringify(run));
    assert.deepEqual(calls.map((c) => c.effect), ["cal.lookup", "cal.create", "cal.book", "cal.notify"]);

    const undo = await k.api("POST", `/api/runs/${run.runId}/undo`);
    assert.equal(undo.status, 200, JSON.stringify(undo.body));
    const report = undo.body;
    assert.equal(report.runId, run.runId);
    // The witness saw the compensations after the effects, the room released before the event was deleted.
    assert.deepEqual(calls.slice(4).map((c) => c.effect), ["cal.release", "cal.delete"]);
    assert.deepEqual(calls[4].args, { original: { room: "blue" }, result: { bookingId: "bk-blue" } });
    assert.deepEqual(calls[5].args, { original: { title: "kickoff" }, result: { eventId: "evt-kickoff" } });
    assert.deepEqual(
      report.compensated.map((e: any) => [e.effect, e.compensation, e.undoSeq, e.previously ?? false]),
      [["cal.book", "cal.release", UNDO_SEQ_BASE + 3, false], ["cal.create", "cal.delete", UNDO_SEQ_BASE + 2, false]],
    );
    assert.deepEqual(report.compensated[0].result, { released: "bk-blue" });
    assert.deepEqual(
      report.skipped.map((e: any) => [e.effect, e.reason]),
      [
        ["cal.notify", "not undoable: the connector declares no compensation"],
        ["cal.lookup", "read: it changed nothing"],
      ],
    );
    assert.deepEqual(report.failed, []);
    assert.deepEqual(report.waiting, []);
    assert.equal(report.memory.removed.length, 1, "the run's one memory item is gone");

    // The compensations are steps of the run, with their own keys, and audited like any effect.
    const view = (await k.api("GET", `/api/runs/${run.runId}`)).body;
    assert.equal(view.status, "succeeded", "undo does not change how the run ended");
    const undoSteps = view.steps.filter((s: any) => s.seq >= UNDO_SEQ_BASE);
    assert.deepEqual(undoSteps.map((s: any) => [s.seq, s.name, s.status]), [
      [UNDO_SEQ_BASE + 2, "undo:cal.create", "done"],
      [UNDO_SEQ_BASE + 3, "undo:cal.book", "done"],
    ]);
    assert.equal(calls[5].key, undoSteps[0].idempotencyKey);
    const events = (await k.api("GET", `/api/audit?runId=${run.runId}`)).body.events;
    const succeeded = events.filter((e: any) => e.type === "effect.succeeded" && e.data.undoes);
    assert.deepEqual(succeeded.map((e: any) => e.data.effect), ["cal.release", "cal.delete"]);
    assert.ok(events.some((e: any) => e.type === "run.undone"));

    const again = await k.api("POST", `/api/runs/${run.runId}/undo`);
    assert.equal(again.status, 200, JSON.stringify(again.body));
    assert.equal(calls.length, 6, "nothing new left Keel");
    assert.deepEqual(again.body.compensated.map((e: any) => e.previously), [true, true]);
    assert.deepEqual(again.body.memory.removed, []);

    const out = await cli(["undo", run.runId], { KEEL_URL: k.url, KEEL_TOKEN: TEST_TOKEN });
    assert.equal(out.code, 0, out.stderr);
    assert.match(out.stdout, /undone {3}step 3 cal\.book by cal\.release \(already, earlier\)/);
    assert.match(out.stdout, /skipped {2}step 4 cal\.notify: not undoable/);
    assert.equal(calls.length, 6);
  });
});

Deno.test("undo of a run that has not ended is refused with 409, of an unknown run with 404", async () => {
  await withUndoKeel(async (k, calls) => {
    const run = await start(k, "hold_slot", {});
    assert.equal(run.status, "waiting_approval", JSON.stringify(run));
    const undo = await k.api("POST", `/api/runs/${run.runId}/undo`);
    assert.equal(undo.status, 409, JSON.stringify(undo.body));
    assert.equal(undo.body.error.tag, "ConflictError");
    assert.match(undo.body.error.message, /is waiting_approval: only a finished or cancelled run can be undone/);
    assert.equal((await k.api("POST", "/api/runs/run_nope/undo")).status, 404);
    assert.equal(calls.length, 0);
  });
});

Deno.test("a workflow cannot call a compensation or an undo step that its manifest does not list in uses", async () => {
  await withUndoKeel(async (k, calls) => {
    for (const effect of ["cal.delete", "undo:cal.create"]) {
      const run = await start(k, "sneak", { effect });
      assert.equal(run.status, "failed", JSON.stringify(run));
      assert.equal(run.error.tag, "EffectNotDeclaredError", JSON.stringify(run.error));
    }
    assert.equal(calls.length, 0, "no compensation ran");
  });
});

Deno.test("a compensation the policy gates waits for its approval without touching the ended run; undo again then finishes", async () => {
  const gated = POLICY + `  - id: gate-release
    match: { effect: cal.release }
    decision: approve
`;
  await withUndoKeel(async (k, calls) => {
    const run = await start(k, "plan_meeting", { title: "review", room: "red" });
    assert.equal(run.status, "succeeded", JSON.stringify(run));
    const first = (await k.api("POST", `/api/runs/${run.runId}/undo`)).body;
    assert.deepEqual(first.compensated, []);
    assert.deepEqual(first.waiting.map((e: any) => [e.effect, e.compensation]), [["cal.book", "cal.release"]]);
    const approvalId = first.waiting[0].approvalId;
    assert.match(approvalId, /^apr_/);
    const waiting = await cli(["undo", run.runId], { KEEL_URL: k.url, KEEL_TOKEN: TEST_TOKEN });
    assert.equal(waiting.code, 2, "an undo that waits for an approval exits 2");
    assert.match(waiting.stdout, new RegExp(`waiting  step 3 cal\\.book: approve ${approvalId}, then run undo again`));
    assert.equal(calls.length, 4, "nothing was undone past the gate, so the order holds");
    const view = (await k.api("GET", `/api/runs/${run.runId}`)).body;
    assert.equal(view.status, "succeeded", "the run stays as it ended");
    assert.equal(view.waitingFor, undefined);
    const approval = (await k.api("GET", "/api/approvals?status=pending")).body.approvals[0];
    assert.equal(approval.id, approvalId);
    assert.deepEqual(approval.args, { original: { room: "red" }, result: { bookingId: "bk-red" } });
    assert.equal((await k.api("POST", `/api/approvals/${approvalId}/approve`, {})).status, 200);
    const second = (await k.api("POST", `/api/runs/${run.runId}/undo`)).body;
    assert.deepEqual(second.compensated.map((e: any) => e.compensation), ["cal.release", "cal.delete"]);
    assert.deepEqual(second.waiting, []);
    assert.deepEqual(calls.slice(4).map((c) => c.effect), ["cal.release", "cal.delete"]);
  }, gated);
});

Deno.test("a compensation's approval asked for under a policy since changed is voided with a 409 that says to undo again", async () => {
  const gated = POLICY + `  - id: gate-release
    match: { effect: cal.release }
    decision: approve
`;
  await withUndoKeel(async (k, calls) => {
    const run = await start(k, "plan_meeting", { title: "planning", room: "blue" });
    assert.equal(run.status, "succeeded", JSON.stringify(run));
    const first = (await k.api("POST", `/api/runs/${run.runId}/undo`)).body;
    const approvalId = first.waiting[0].approvalId;
    // The operator edits the policy (it still gates the compensation); policy files reload live.
    await Deno.writeTextFile(
      `${k.policiesDir}/p.yaml`,
      gated + "  # reviewed\n  - id: note\n    match: { effect: cal.none }\n    decision: deny\n",
    );
    for (let i = 0; i < 100; i++) {
      const explain = await k.api("POST", "/api/policy/explain", { effect: "cal.none", args: {} });
      if (JSON.stringify(explain.body).includes('"note"')) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const answer = await k.api("POST", `/api/approvals/${approvalId}/approve`, {});
    assert.equal(answer.status, 409, JSON.stringify(answer.body));
    assert.match(answer.body.error.message, /undo the run again: it checks the compensation under the new policy/);
    assert.doesNotMatch(answer.body.error.message, /the run checks/);
    const voided = (await k.api("GET", "/api/approvals?status=invalidated")).body.approvals
      .find((a: any) => a.id === approvalId);
    assert.equal(voided.status, "invalidated");
    assert.match(voided.reason, /undo the run again/);
    assert.equal((await k.api("GET", `/api/runs/${run.runId}`)).body.status, "succeeded", "the run stays as it ended");
    // As the message says: undo again asks anew, and once approved the compensation is sent.
    const second = (await k.api("POST", `/api/runs/${run.runId}/undo`)).body;
    const fresh = second.waiting[0].approvalId;
    assert.notEqual(fresh, approvalId);
    assert.equal((await k.api("POST", `/api/approvals/${fresh}/approve`, {})).status, 200);
    const third = (await k.api("POST", `/api/runs/${run.runId}/undo`)).body;
    assert.deepEqual(third.compensated.map((e: any) => e.compensation), ["cal.release", "cal.delete"]);
    assert.equal(calls.filter((c) => c.effect === "cal.release").length, 1);
  }, gated);
});

/** The undo fixture's calendar with its compensations irreversible (a message to attendees, say): in a temp dir. */
const irreversibleCalendar = async () => {
  const dir = await Deno.makeTempDir({ prefix: "keel-cal-irreversible-" });
  const from = `${ROOT}/tests/fixtures/undo/cal`;
  const source = await Deno.readTextFile(`${from}/mod.ts`);
  await Deno.writeTextFile(`${dir}/mod.ts`, source.replace("../../../../core/sdk/mod.ts", `${ROOT}/core/sdk/mod.ts`));
  const manifest = JSON.parse(await Deno.readTextFile(`${from}/plugin.json`));
  for (const e of manifest.effects) {
    if (e.name === "cal.release" || e.name === "cal.delete") {
      e.class = "irreversible";
      delete e.idempotency;
    }
  }
  await Deno.writeTextFile(`${dir}/plugin.json`, JSON.stringify(manifest));
  return { dir, remove: () => Deno.remove(dir, { recursive: true }) };
};

Deno.test("undos of one run sent at once take turns: an irreversible compensation leaves Keel once", async () => {
  const calendar = await irreversibleCalendar();
  try {
    await withUndoKeel(
      async (k, calls) => {
        for (let i = 0; i < 3; i++) {
          const run = await start(k, "plan_meeting", { title: `sync ${i}`, room: `r${i}` });
          assert.equal(run.status, "succeeded", JSON.stringify(run));
          const answers = await Promise.all([1, 2, 3, 4].map(() => k.api("POST", `/api/runs/${run.runId}/undo`)));
          for (const a of answers) assert.equal(a.status, 200, JSON.stringify(a.body));
          const sent = (effect: string) =>
            calls.filter((c) => c.effect === effect && c.args.original?.room === `r${i}`).length;
          assert.equal(sent("cal.release"), 1, `run ${i}: cal.release left Keel ${sent("cal.release")} times`);
          // One undo sent the compensations; the others found them done.
          const fresh = answers.filter((a) => a.body.compensated.some((e: any) => !e.previously));
          assert.equal(fresh.length, 1, JSON.stringify(answers.map((a) => a.body.compensated)));
          for (const a of answers) assert.deepEqual(a.body.failed, [], JSON.stringify(a.body));
        }
      },
      POLICY,
      { calendar: calendar.dir, delayMs: 100 },
    );
  } finally {
    await calendar.remove();
  }
});

Deno.test("a compensation the policy refused is sent by the next undo once the policy allows it", async () => {
  const frozen = POLICY + `  - id: freeze-release
    match: { effect: cal.release }
    decision: deny
`;
  await withUndoKeel(async (k, calls) => {
    const run = await start(k, "plan_meeting", { title: "retro", room: "green" });
    assert.equal(run.status, "succeeded", JSON.stringify(run));
    const first = (await k.api("POST", `/api/runs/${run.runId}/undo`)).body;
    assert.deepEqual(first.failed.map((e: any) => [e.compensation, e.error.tag]), [[
      "cal.release",
      "PolicyDeniedError",
    ]]);
    assert.equal(calls.filter((c) => c.effect === "cal.release").length, 0);
    // Asked again under the same policy, the refusal stands (and keeps its tag).
    const again = (await k.api("POST", `/api/runs/${run.runId}/undo`)).body;
    assert.deepEqual(again.failed.map((e: any) => e.error.tag), ["PolicyDeniedError"]);
    const out = await cli(["undo", run.runId], { KEEL_URL: k.url, KEEL_TOKEN: TEST_TOKEN });
    assert.equal(out.code, 1, "an undo with a failed compensation exits 1");
    assert.match(out.stdout, /failed {3}step 3 cal\.book: Policy denied effect "cal\.release"/);
    // The operator lifts the freeze; policy files reload live.
    await Deno.writeTextFile(`${k.policiesDir}/p.yaml`, POLICY);
    for (let i = 0; i < 100; i++) {
      const explain = await k.api("POST", "/api/policy/explain", { effect: "cal.release", args: {} });
      if (!JSON.stringify(explain.body).includes("freeze-release")) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const last = (await k.api("POST", `/api/runs/${run.runId}/undo`)).body;
    assert.deepEqual(last.failed, [], JSON.stringify(last));
    assert.deepEqual(last.compensated.map((e: any) => [e.compensation, e.previously === true]), [
      ["cal.release", false],
      ["cal.delete", true],
    ]);
    assert.equal(calls.filter((c) => c.effect === "cal.release").length, 1);
  }, frozen);
});

Deno.test("replay of an undone run does not count undo's compensations as calls the code no longer makes", async () => {
  await withUndoKeel(async (k) => {
    const run = await start(k, "plan_meeting", { title: "demo", room: "amber" });
    assert.equal(run.status, "succeeded", JSON.stringify(run));
    const undo = await k.api("POST", `/api/runs/${run.runId}/undo`);
    assert.equal(undo.body.compensated.length, 2, JSON.stringify(undo.body));
    const replay = await k.api("POST", `/api/runs/${run.runId}/replay`, {});
    assert.equal(replay.status, 200, JSON.stringify(replay.body));
    assert.deepEqual(replay.body.divergences, []);
    assert.equal(replay.body.steps, run.steps.length, "the report counts the workflow's own steps");
  });
});
