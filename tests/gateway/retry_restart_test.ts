/**
 * @module
 * A keyed write that keeps failing is tried at most its `maxAttempts` times in all, across a restart of Keel in
 * the middle of its retries: the next Keel counts the attempts the first one made. (It used to start counting
 * again, so a restart during a backoff bought the effect a fresh set of attempts.)
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";

const POLICY = `default: allow
rules:
  - id: allow-flaky
    match: { effect: "flaky.*" }
    decision: allow
`;

/** A witness that answers every call at once with how many calls it has seen. */
const startWitness = async () => {
  const calls: Array<{ key: string }> = [];
  const ready = Promise.withResolvers<number>();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: ({ port }) => ready.resolve(port), onError: () => new Response() },
    async (req) => {
      calls.push(await req.json());
      return Response.json({ n: calls.length });
    },
  );
  return { port: await ready.promise, calls, close: () => server.shutdown() };
};

Deno.test("a keyed write's attempts before a restart count against its maxAttempts after it", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-test-" });
  const witness = await startWitness();
  let k: TestKeel | undefined;
  try {
    k = await startTestKeel({ dataDir, policies: { "p.yaml": POLICY } });
    const flaky = await k.api("POST", "/api/plugins", {
      path: `${ROOT}/tests/fixtures/retry/flaky`,
      grant: { net: [`127.0.0.1:${witness.port}`] },
      config: { host: "127.0.0.1", port: witness.port },
    });
    assert.equal(flaky.status, 201, JSON.stringify(flaky.body));
    const caller = await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/retry/caller`, grant: {} });
    assert.equal(caller.status, 201, JSON.stringify(caller.body));
    // Fails every time; up to 4 s between attempts, at most 5 attempts.
    const started = await k.api("POST", "/api/workflows/flaky_call/runs", {
      input: { effect: "flaky.slow_note", args: { tag: "never", failTimes: 1000 } },
    });
    assert.equal(started.status, 202, JSON.stringify(started.body));
    const runId = started.body.runId;
    for (let i = 0; i < 200 && witness.calls.length < 2; i++) await new Promise((r) => setTimeout(r, 50));
    assert.ok(witness.calls.length >= 2, "two attempts were made before the restart");
    await k.close();
    k = undefined;
    const beforeRestart = witness.calls.length;

    k = await startTestKeel({ dataDir, policies: { "p.yaml": POLICY } });
    const done = (await k.api("GET", `/api/runs/${runId}?wait=60`)).body;
    assert.equal(done.status, "failed", JSON.stringify(done));
    assert.ok(
      witness.calls.length <= 5,
      `${witness.calls.length} attempts in all (${beforeRestart} before the restart); maxAttempts is 5`,
    );
    assert.ok(new Set(witness.calls.map((c) => c.key)).size === 1, "every attempt carried the same key");
  } finally {
    await k?.close();
    await witness.close();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
});
