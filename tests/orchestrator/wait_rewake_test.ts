/**
 * Review: a `?wait=` caller woken by `notify` while its run goes on (an agent crash requeues it) must still be woken
 * when the run ends. `notify` wakes listeners synchronously: the waiter registers again (a new set) before `notify`
 * deletes the run's entry, which then deletes the new set and orphans the waiter until its deadline.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel } from "../_support/keel.ts";

Deno.test("a waiter of a run whose agent crashed and was replayed hears the run's end, not its own deadline", async () => {
  const ready = Promise.withResolvers<number>();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: ({ port }) => ready.resolve(port), onError: () => new Response() },
    async (req) => {
      await req.json();
      return Response.json({ n: 1 });
    },
  );
  const port = await ready.promise;
  const k = await startTestKeel({
    policies: {
      "p.yaml": 'default: allow\nrules:\n  - id: allow-flaky\n    match: { effect: "flaky.*" }\n    decision: allow\n',
    },
  });
  try {
    for (
      const [path, body] of [
        ["flaky", { grant: { net: [`127.0.0.1:${port}`] }, config: { host: "127.0.0.1", port } }],
        ["crasher", { grant: { read: ["."], write: ["."] } }],
      ] as const
    ) {
      const r = await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/retry/${path}`, ...body });
      assert.equal(r.status, 201, JSON.stringify(r.body));
    }
    const dir = `${k.dataDir}/plugin-data/crasher`;
    await Deno.mkdir(dir, { recursive: true });
    const t0 = Date.now();
    const res = await k.api("POST", "/api/workflows/send_then_crash/runs?wait=25", {
      input: { effect: "flaky.note", tag: "x", counter: `${dir}/passes`, crashAfterMs: 100 },
    });
    const took = Date.now() - t0;
    assert.equal(res.body.status, "succeeded", JSON.stringify(res.body));
    assert.ok(took < 10_000, `the waiter returned after ${took} ms (its deadline), not at the run's end`);
  } finally {
    await k.close();
    await server.shutdown();
  }
});
