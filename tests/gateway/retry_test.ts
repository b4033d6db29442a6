/**
 * @module
 * Semantic retries at the Gateway, end to end: a real agent Worker asks a
 * real connector Worker (`tests/fixtures/retry/flaky`) for effects that fail
 * a set number of times, and a witness peer on 127.0.0.1 counts every call
 * that really left Keel, with the idempotency key it carried. Reads are
 * retried until they succeed, with the retry visible in the run while it
 * waits; writes only under their key; irreversible effects never, and a
 * timeout after dispatch parks the run for the operator; a financial intent
 * is refused when another intent holds its key. The backoff timing comes
 * from the fixture's manifest (a few milliseconds), so nothing here waits on
 * the wall clock.
 */
import assert from "node:assert/strict";
import { Cause, Effect } from "effect";
import {
  backoffDelay,
  DEFAULT_BACKOFF,
  Gateway,
  nextRetryDelay,
  RETRY_BUDGET_MS,
  retryModeOf,
  UNDO_SEQ_BASE,
} from "../../core/gateway/mod.ts";
import { Journal } from "../../core/journal/mod.ts";
import { sha256Hex } from "../../core/manifest/mod.ts";
import { PluginHost } from "../../core/plugins/mod.ts";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";

/** One call the flaky connector made. */
interface Call {
  readonly effect: string;
  readonly args: { tag: string };
  readonly key: string;
}

/** A witness that counts calls per tag and can hold one call's answer until the test lets it go. */
interface Witness {
  readonly host: string;
  readonly port: number;
  readonly calls: Call[];
  of(tag: string): Call[];
  /** Hold the `n`-th call of `tag`: resolves when it arrives; call the returned function to answer it. */
  hold(tag: string, n: number): Promise<() => void>;
  close(): Promise<void>;
}

const startWitness = async (): Promise<Witness> => {
  const calls: Call[] = [];
  const holds = new Map<string, { arrived: (release: () => void) => void }>();
  const ready = Promise.withResolvers<number>();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: ({ port }) => ready.resolve(port), onError: () => new Response() },
    async (req) => {
      const call = await req.json() as Call;
      calls.push(call);
      const n = calls.filter((c) => c.args.tag === call.args.tag).length;
      const held = holds.get(`${call.args.tag}#${n}`);
      if (held) {
        const go = Promise.withResolvers<void>();
        held.arrived(() => go.resolve());
        await go.promise;
      }
      return Response.json({ n });
    },
  );
  const port = await ready.promise;
  return {
    host: "127.0.0.1",
    port,
    calls,
    of: (tag) => calls.filter((c) => c.args.tag === tag),
    hold: (tag, n) => new Promise((arrived) => holds.set(`${tag}#${n}`, { arrived })),
    close: () => server.shutdown(),
  };
};

const POLICY = `default: allow
rules:
  - id: allow-flaky
    match: { effect: "flaky.*" }
    decision: allow
`;

interface RetryKeel {
  readonly k: TestKeel;
  readonly witness: Witness;
  /** Start `flaky_call` on one effect; without `wait: false`, wait for the run to end or pause. */
  call(effect: string, args: Record<string, unknown>, wait?: boolean): Promise<any>;
  audit(runId: string, type: string): Promise<any[]>;
}

const withRetryKeel = async (fn: (t: RetryKeel) => Promise<void>, rpcTimeoutMs = 10_000, policy = POLICY) => {
  const witness = await startWitness();
  const k = await startTestKeel({ policies: { "p.yaml": policy }, rpcTimeoutMs });
  try {
    const flaky = await k.api("POST", "/api/plugins", {
      path: `${ROOT}/tests/fixtures/retry/flaky`,
      grant: { net: [`${witness.host}:${witness.port}`] },
      config: { host: witness.host, port: witness.port },
    });
    assert.equal(flaky.status, 201, JSON.stringify(flaky.body));
    const caller = await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/retry/caller`, grant: {} });
    assert.equal(caller.status, 201, JSON.stringify(caller.body));
    await fn({
      k,
      witness,
      async call(effect, args, wait = true) {
        const r = await k.api("POST", `/api/workflows/flaky_call/runs${wait ? "?wait=60" : ""}`, {
          input: { effect, args },
        });
        assert.equal(r.status, 202, JSON.stringify(r.body));
        return r.body;
      },
      async audit(runId, type) {
        const events = (await k.api("GET", `/api/audit?runId=${runId}`)).body.events;
        return events.filter((e: { type: string }) => e.type === type);
      },
    });
  } finally {
    await k.close();
    await witness.close();
  }
};

const effectStep = (run: any) => run.steps.find((s: any) => s.kind === "effect");

Deno.test("retryModeOf() follows the effect class: reads retry, keyed writes retry, irreversible and financial ask", () => {
  const mode = (cls: string, idempotency = "none", retry = "none") =>
    retryModeOf({ class: cls as "read", idempotency: idempotency as "none", retry: retry as "none" });
  assert.equal(mode("read", "none", "backoff"), "retry");
  assert.equal(mode("read", "none", "none"), "fail", "a read may opt out with retry: none");
  assert.equal(mode("write", "key", "idempotent-key"), "retry");
  assert.equal(mode("write", "none", "none"), "fail");
  assert.equal(mode("irreversible", "key", "idempotent-key"), "ask", "a key does not make an irreversible effect safe");
  assert.equal(mode("financial", "key", "idempotent-key"), "ask");
});

Deno.test("backoffDelay() draws full jitter below min(cap, base·2^(n-1)); nextRetryDelay() stops at maxAttempts and the budget", () => {
  const s = { baseMs: 100, capMs: 1000, maxAttempts: 5 };
  assert.equal(backoffDelay(s, 1, 0), 0);
  assert.equal(backoffDelay(s, 1, 0.999), 99);
  assert.equal(backoffDelay(s, 3, 0.5), 200);
  assert.equal(backoffDelay(s, 10, 0.999), 999, "capped");
  const read = { class: "read" as const, idempotency: "none" as const, retry: "backoff" as const };
  const failed = { _tag: "PluginFailedError", details: { tag: "Unavailable" } };
  assert.equal(nextRetryDelay(read, failed, 1, 0, 0.5), Math.floor(0.5 * DEFAULT_BACKOFF.baseMs));
  assert.equal(nextRetryDelay(read, failed, DEFAULT_BACKOFF.maxAttempts, 0, 0.5), undefined, "attempts used up");
  assert.equal(nextRetryDelay(read, failed, 1, RETRY_BUDGET_MS, 0.5), undefined, "budget spent");
  assert.equal(
    nextRetryDelay(read, { _tag: "PluginFailedError", details: { retryable: false } }, 1, 0, 0.5),
    undefined,
  );
  assert.equal(
    nextRetryDelay(read, { _tag: "PluginFailedError", details: { retryable: false, outcomeUnknown: true } }, 1, 0, 0.5),
    undefined,
    "a plugin's no to retrying stands even when it cannot tell whether the call happened",
  );
  assert.equal(
    typeof nextRetryDelay(read, { _tag: "PluginFailedError", details: { outcomeUnknown: true } }, 1, 0, 0.5),
    "number",
  );
  assert.equal(nextRetryDelay(read, { _tag: "PolicyDeniedError" }, 1, 0, 0.5), undefined, "Keel's refusals are final");
  assert.equal(typeof nextRetryDelay(read, { _tag: "PluginTimeoutError" }, 1, 0, 0.5), "number");
});

Deno.test("a failing read is retried until it succeeds, and the run shows attempts, lastError and nextAttemptAt while it retries", async () => {
  await withRetryKeel(async ({ k, witness, call, audit }) => {
    const third = witness.hold("vis", 3);
    const started = await call("flaky.read", { tag: "vis", failTimes: 2 }, false);
    const release = await third;
    // The third call is with the witness: the journal shows the two failed attempts and when the next was due.
    const during = (await k.api("GET", `/api/runs/${started.runId}`)).body;
    assert.equal(during.status, "running");
    const step = effectStep(during);
    assert.equal(step.status, "intent");
    assert.equal(step.attempts, 2);
    assert.equal(step.lastError.tag, "PluginFailedError");
    assert.equal(step.lastError.details.tag, "Unavailable");
    assert.ok(!Number.isNaN(Date.parse(step.nextAttemptAt)), JSON.stringify(step));
    release();
    const run = (await k.api("GET", `/api/runs/${started.runId}?wait=60`)).body;
    assert.equal(run.status, "succeeded", JSON.stringify(run));
    assert.deepEqual(run.output, { tag: "vis", n: 3 });
    assert.equal(effectStep(run).attempts, 3);
    assert.equal(effectStep(run).nextAttemptAt, undefined);
    assert.equal(witness.of("vis").length, 3);
    const retries = await audit(started.runId, "effect.retry");
    assert.deepEqual(retries.map((e) => e.data.attempt), [1, 2]);
    assert.ok(retries.every((e) => e.data.delayMs >= 0 && e.data.delayMs < 20 && e.data.error.tag));
    assert.equal((await audit(started.runId, "effect.succeeded"))[0].data.attempts, 3);
  });
});

Deno.test("a read is retried through a crash of its connector", async () => {
  await withRetryKeel(async ({ witness, call }) => {
    const run = await call("flaky.read", { tag: "boom", failTimes: 1, mode: "crash" });
    assert.equal(run.status, "succeeded", JSON.stringify(run));
    assert.equal(effectStep(run).lastError.tag, "PluginCrashedError");
    assert.equal(witness.of("boom").length, 2);
  });
});

Deno.test("a read that keeps failing stops after maxAttempts and fails the step with its last error", async () => {
  await withRetryKeel(async ({ witness, call, audit }) => {
    const run = await call("flaky.read", { tag: "down", failTimes: 99 });
    assert.equal(run.status, "failed");
    assert.equal(run.error.details.tag, "Unavailable");
    assert.equal(witness.of("down").length, 4, "the manifest allows 4 attempts");
    assert.equal(effectStep(run).attempts, 4);
    assert.equal((await audit(run.runId, "effect.retry")).length, 3);
    assert.equal((await audit(run.runId, "effect.failed"))[0].data.attempts, 4);
  });
});

Deno.test("a read whose plugin says retryable: false is not retried", async () => {
  await withRetryKeel(async ({ witness, call, audit }) => {
    const run = await call("flaky.read", { tag: "final", failTimes: 1, retryable: false });
    assert.equal(run.status, "failed");
    assert.equal(run.error.details.retryable, false);
    assert.equal(witness.of("final").length, 1);
    assert.equal((await audit(run.runId, "effect.retry")).length, 0);
  });
});

Deno.test("a write that honours an idempotency key is retried with the same key every time", async () => {
  await withRetryKeel(async ({ witness, call }) => {
    const run = await call("flaky.note", { tag: "keyed", failTimes: 2 });
    assert.equal(run.status, "succeeded", JSON.stringify(run));
    const calls = witness.of("keyed");
    assert.equal(calls.length, 3);
    assert.match(calls[0].key, /^keel-[0-9a-f]{32}$/);
    assert.deepEqual(new Set(calls.map((c) => c.key)), new Set([calls[0].key]), "one key for every attempt");
    assert.equal(effectStep(run).idempotencyKey, calls[0].key);
  });
});

Deno.test("a write without an idempotency key is not retried: its failure fails the step", async () => {
  await withRetryKeel(async ({ witness, call, audit }) => {
    const run = await call("flaky.post", { tag: "plain", failTimes: 1 });
    assert.equal(run.status, "failed");
    assert.equal(effectStep(run).status, "failed");
    assert.equal(effectStep(run).attempts, 1);
    assert.equal(witness.of("plain").length, 1);
    assert.equal((await audit(run.runId, "effect.retry")).length, 0);
  });
});

Deno.test("an irreversible effect is never retried: a definite failure fails the step", async () => {
  await withRetryKeel(async ({ witness, call }) => {
    const run = await call("flaky.send", { tag: "refused", failTimes: 1 });
    assert.equal(run.status, "failed");
    assert.equal(witness.of("refused").length, 1);
  });
});

Deno.test("an irreversible effect that times out after dispatch parks the run on an unknown_outcome approval; it is sent once", async () => {
  await withRetryKeel(async ({ k, witness, call, audit }) => {
    const run = await call("flaky.send", { tag: "lost", failTimes: 1, mode: "hang" });
    assert.equal(run.status, "waiting_approval", JSON.stringify(run));
    assert.match(run.waitingFor.reason, /unknown after a timeout/);
    const step = effectStep(run);
    assert.equal(step.status, "unknown_outcome");
    assert.equal(step.lastError.tag, "PluginTimeoutError");
    const approval = (await k.api("GET", "/api/approvals?status=pending")).body.approvals
      .find((a: any) => a.id === run.waitingFor.approvalId);
    assert.equal(approval.kind, "unknown_outcome");
    assert.match(approval.message, /timed out/);
    assert.equal(witness.of("lost").length, 1, "never sent again blindly");
    const unknown = await audit(run.runId, "effect.outcome_unknown");
    assert.equal(unknown[0].data.cause, "timeout");
    // The operator checked: it went out. The run completes without sending again.
    const ok = await k.api("POST", `/api/approvals/${approval.id}/approve`, { resolution: "delivered" });
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    const done = (await k.api("GET", `/api/runs/${run.runId}?wait=30`)).body;
    assert.equal(done.status, "succeeded", JSON.stringify(done));
    assert.equal(witness.of("lost").length, 1);
  }, 1500);
});

Deno.test("a financial intent is refused when another intent holds its idempotency key; nothing is sent", async () => {
  await withRetryKeel(async ({ k, witness }) => {
    const runId = "run_financial_dup";
    const key = `keel-${(await sha256Hex(`${runId}:1`)).slice(0, 32)}`;
    const gateway = (seq: number, tag: string, id = runId) =>
      k.keel.runtime.runPromiseExit(Effect.gen(function* () {
        const agent = yield* PluginHost.use((h) => h.get("caller"));
        return yield* Gateway.use((g) =>
          g.request({ runId: id, seq, agent, workflow: "flaky_call", effect: "flaky.pay", args: { tag } })
        );
      }));
    // Another executor (another host, a stale lease) recorded its intent for this key first.
    const claim = await k.keel.runtime.runPromise(Journal.use((j) =>
      j.claimIntent("run_elsewhere", {
        seq: 7,
        kind: "effect",
        name: "flaky.pay",
        status: "intent",
        idempotencyKey: key,
        startedAt: new Date().toISOString(),
      })
    ));
    assert.equal(claim.won, true);
    const exit = await gateway(1, "dup");
    assert.equal(exit._tag, "Failure");
    const error = Cause.squash((exit as any).cause) as any;
    assert.equal(error._tag, "ConflictError", String(error));
    assert.match(
      error.message,
      /an intent for idempotency key "keel-[0-9a-f]{32}" exists \(run "run_elsewhere", step 7\)/,
    );
    assert.equal(witness.of("dup").length, 0, "nothing left Keel");
    const step = await k.keel.runtime.runPromise(Journal.use((j) => j.getStep(runId, 1)));
    assert.equal(step, undefined, "the refused executor wrote no step");
    const events = (await k.api("GET", `/api/audit?runId=${runId}`)).body.events;
    assert.ok(events.some((e: any) => e.type === "effect.duplicate_intent"));

    // Executors of this Keel racing for one step: the payment leaves Keel once, and each gets its outcome.
    const racers = await Promise.all([1, 2, 3, 4].map(() => gateway(1, "race", "run_financial_race")));
    assert.equal(witness.of("race").length, 1);
    assert.ok(racers.every((e) => e._tag === "Success"), JSON.stringify(racers));
    assert.equal(new Set(racers.map((e) => JSON.stringify((e as any).value))).size, 1);
  });
});

Deno.test("a workflow's effect request numbered in undo's range is refused before anything runs", async () => {
  await withRetryKeel(async ({ k, witness }) => {
    const exit = await k.keel.runtime.runPromiseExit(Effect.gen(function* () {
      const agent = yield* PluginHost.use((h) => h.get("caller"));
      return yield* Gateway.use((g) =>
        g.request({
          runId: "run_forged",
          seq: UNDO_SEQ_BASE + 1,
          agent,
          workflow: "flaky_call",
          effect: "flaky.read",
          args: { tag: "forged" },
        })
      );
    }));
    assert.equal(exit._tag, "Failure");
    assert.equal((Cause.squash((exit as any).cause) as any)._tag, "InvalidInputError");
    assert.equal(witness.of("forged").length, 0);
  });
});

/** Start one of the caller's other workflows and wait for it to end or pause. */
const startWorkflow = async (k: TestKeel, workflow: string, input: unknown) => {
  const r = await k.api("POST", `/api/workflows/${workflow}/runs?wait=60`, { input });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  return r.body;
};

Deno.test("a 'retry' of an unknown outcome resends only the args that were sent: other args are a divergence, and nothing is sent", async () => {
  await withRetryKeel(async ({ k, witness, audit }) => {
    const run = await startWorkflow(k, "stamped_send", { tag: "stamped" });
    assert.equal(run.status, "waiting_approval", JSON.stringify(run));
    const sent = witness.of("stamped");
    assert.equal(sent.length, 1);
    const approvalId = run.waitingFor.approvalId;
    const ok = await k.api("POST", `/api/approvals/${approvalId}/approve`, { resolution: "retry" });
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    // The replayed workflow asks with a new stamp: not what the operator was shown, not what may have gone out.
    const done = (await k.api("GET", `/api/runs/${run.runId}?wait=30`)).body;
    assert.equal(done.status, "failed", JSON.stringify(done));
    assert.match(
      done.error.message,
      /diverged from its journal at step 1: effect "flaky.send" was sent with other args/,
    );
    assert.equal(witness.of("stamped").length, 1, "nothing was sent again");
    const step = effectStep(done);
    assert.equal(step.status, "unknown_outcome", "the step still says what may have gone out");
    assert.deepEqual(step.args, sent[0].args);
    assert.equal((await audit(run.runId, "effect.rejected")).length, 1);
  }, 1500);
});

Deno.test("a replayed workflow that asks another call where an unknown outcome stands fails with a divergence; the other call is not made", async () => {
  await withRetryKeel(async ({ k, witness, audit }) => {
    const asks = {
      read: 'effect "flaky.read"',
      model: 'model "model:switch"',
      sleep: 'timer "sleep"',
      approval: 'approval "approval"',
      child: 'child "child:flaky_call"',
      remember: 'memory "remember"',
    };
    for (const [then, asked] of Object.entries(asks)) {
      const tag = `switch-${then}`;
      const run = await startWorkflow(k, "switch_call", { tag, then });
      assert.equal(run.status, "waiting_approval", JSON.stringify(run));
      const ok = await k.api("POST", `/api/approvals/${run.waitingFor.approvalId}/approve`, {
        resolution: "delivered",
      });
      assert.equal(ok.status, 200, JSON.stringify(ok.body));
      const done = (await k.api("GET", `/api/runs/${run.runId}?wait=30`)).body;
      assert.equal(done.status, "failed", JSON.stringify(done));
      assert.ok(
        done.error.message.includes(
          `diverged from its journal at step 1: recorded effect "flaky.send", code asked for ${asked}`,
        ),
        done.error.message,
      );
      assert.deepEqual(witness.calls.filter((c) => c.args.tag.startsWith(tag)).map((c) => c.effect), ["flaky.send"]);
      assert.deepEqual(done.steps.map((s: any) => [s.seq, s.name, s.status]), [[1, "flaky.send", "unknown_outcome"]]);
      assert.equal((await audit(run.runId, "model.called")).length, 0, "no model was asked");
      assert.equal((await audit(run.runId, "approval.requested")).length, 0, "no gate was opened");
      assert.equal((await k.api("GET", `/api/runs/${run.runId}.c1`)).status, 404, "no child was started");
    }
  }, 1500);
});

Deno.test("a recorded failure is answered again under its own tag: a denial stays a PolicyDeniedError", async () => {
  const denyPost = POLICY + `  - id: no-post
    match: { effect: flaky.post }
    decision: deny
`;
  await withRetryKeel(
    async ({ k, witness }) => {
      const ask = () =>
        k.keel.runtime.runPromiseExit(Effect.gen(function* () {
          const agent = yield* PluginHost.use((h) => h.get("caller"));
          return yield* Gateway.use((g) =>
            g.request({
              runId: "run_denied",
              seq: 1,
              agent,
              workflow: "flaky_call",
              effect: "flaky.post",
              args: { tag: "d" },
            })
          );
        }));
      const tags: string[] = [];
      for (const exit of [await ask(), await ask()]) {
        assert.equal(exit._tag, "Failure");
        tags.push((Cause.squash((exit as any).cause) as any)._tag);
      }
      assert.deepEqual(tags, ["PolicyDeniedError", "PolicyDeniedError"]);
      assert.equal(witness.of("d").length, 0);
    },
    10_000,
    denyPost,
  );
});
