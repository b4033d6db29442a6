/**
 * @module
 * An agent that dies while one of its effects is with the connector is replayed, and the replay asks for the same
 * effect at the same step while the first call is still out. That call is not lost and not made again: the replay
 * gets its outcome when it comes. An irreversible send is delivered once and the operator is not asked about an
 * outcome Keel is about to learn.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel } from "../_support/keel.ts";

/** A witness for the flaky connector that holds every call until released. */
const startWitness = async () => {
  const calls: Array<{ effect: string; key: string }> = [];
  const gate = Promise.withResolvers<void>();
  const arrived = Promise.withResolvers<void>();
  const ready = Promise.withResolvers<number>();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: ({ port }) => ready.resolve(port), onError: () => new Response() },
    async (req) => {
      const call = await req.json();
      calls.push(call);
      arrived.resolve();
      await gate.promise;
      return Response.json({ n: calls.length });
    },
  );
  const port = await ready.promise;
  return { port, calls, arrived: arrived.promise, release: () => gate.resolve(), close: () => server.shutdown() };
};

for (const effect of ["flaky.send", "flaky.note"]) {
  Deno.test(`an agent that dies while ${effect} is with the connector: the replay gets that call's outcome, sent once`, async () => {
    const witness = await startWitness();
    const k = await startTestKeel({
      policies: {
        "p.yaml":
          'default: allow\nrules:\n  - id: allow-flaky\n    match: { effect: "flaky.*" }\n    decision: allow\n',
      },
    });
    try {
      for (
        const [path, body] of [
          ["flaky", {
            grant: { net: [`127.0.0.1:${witness.port}`] },
            config: { host: "127.0.0.1", port: witness.port },
          }],
          ["crasher", { grant: { read: ["."], write: ["."] } }],
        ] as const
      ) {
        const r = await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/retry/${path}`, ...body });
        assert.equal(r.status, 201, JSON.stringify(r.body));
      }
      const dir = `${k.dataDir}/plugin-data/crasher`;
      await Deno.mkdir(dir, { recursive: true });
      const started = await k.api("POST", "/api/workflows/send_then_crash/runs", {
        input: { effect, tag: "once", counter: `${dir}/passes`, crashAfterMs: 100 },
      });
      assert.equal(started.status, 202, JSON.stringify(started.body));
      const runId = started.body.runId;
      await witness.arrived;
      // The agent dies 100 ms after sending; Keel replays it after a pause. The first call is still held.
      let replayed = false;
      for (let i = 0; i < 100 && !replayed; i++) {
        const events = (await k.api("GET", `/api/audit?runId=${runId}`)).body.events;
        replayed = events.some((e: { type: string }) => e.type === "run.agent_crashed");
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(replayed, "the agent died and the run was replayed");
      await new Promise((r) => setTimeout(r, 1000));
      witness.release();
      const done = (await k.api("GET", `/api/runs/${runId}?wait=30`)).body;
      assert.equal(done.status, "succeeded", JSON.stringify(done));
      assert.equal(done.output.passes, 2);
      assert.deepEqual(done.output.sent, { tag: "once", n: 1 });
      assert.equal(witness.calls.length, 1, `sent ${witness.calls.length} times`);
      const asked = (await k.api("GET", "/api/approvals")).body.approvals;
      assert.deepEqual(asked, [], "nobody was asked about an outcome Keel learnt");
    } finally {
      witness.release();
      await k.close();
      await witness.close();
    }
  });
}
