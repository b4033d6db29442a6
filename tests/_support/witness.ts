/**
 * @module
 * A loopback peer for the flaky test connector (`tests/fixtures/retry/flaky`): it records every call (effect, args,
 * idempotency key) and answers with how many calls it has seen. `hold` keeps calls waiting until `release()`: none,
 * the first one, or all of them. (`tests/gateway/retry_test.ts` has its own, holding calls per tag.)
 */
import assert from "node:assert/strict";
import { ROOT, type TestKeel } from "./keel.ts";

/** One call the flaky connector made. */
export interface WitnessCall {
  readonly effect: string;
  readonly args: { tag: string };
  readonly key: string;
}

/** Start a witness on 127.0.0.1. Always `close()` it. */
export const startWitness = async (hold: "none" | "first" | "all" = "none") => {
  const calls: WitnessCall[] = [];
  const gate = Promise.withResolvers<void>();
  const arrived = Promise.withResolvers<void>();
  const ready = Promise.withResolvers<number>();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: ({ port }) => ready.resolve(port), onError: () => new Response() },
    async (req) => {
      calls.push(await req.json());
      arrived.resolve();
      if (hold === "all" || (hold === "first" && calls.length === 1)) await gate.promise;
      return Response.json({ n: calls.length });
    },
  );
  const port = await ready.promise;
  return {
    port,
    calls,
    /** Resolves when the first call has arrived. */
    arrived: arrived.promise,
    release: () => gate.resolve(),
    close: () => {
      gate.resolve();
      return server.shutdown();
    },
  };
};

/** A policy that allows every flaky effect (irreversible ones included). */
export const ALLOW_FLAKY = `default: allow
rules:
  - id: allow-flaky
    match: { effect: "flaky.*" }
    decision: allow
`;

/** Install the flaky connector, granted to reach `port`, and a test agent from `tests/fixtures/retry`. */
export const installFlaky = async (k: TestKeel, port: number, agent: "caller" | "crasher") => {
  const grants = { caller: {}, crasher: { read: ["."], write: ["."] } };
  for (
    const [path, body] of [
      ["flaky", { grant: { net: [`127.0.0.1:${port}`] }, config: { host: "127.0.0.1", port } }],
      [agent, { grant: grants[agent] }],
    ] as const
  ) {
    const r = await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/retry/${path}`, ...body });
    assert.equal(r.status, 201, JSON.stringify(r.body));
  }
};

/** A started witness. */
export type Witness = Awaited<ReturnType<typeof startWitness>>;

/**
 * Start `flaky_call` of `effect` (with `args.tag`), wait until the connector's call is with the witness (which holds
 * the first one), then close Keel under it and let the held call go: the call's outcome is for the next start to
 * settle. Returns the run's id.
 */
export const closeWhileInFlight = async (k: TestKeel, witness: Witness, effect: string, tag: string) => {
  const started = await k.api("POST", "/api/workflows/flaky_call/runs", { input: { effect, args: { tag } } });
  assert.equal(started.status, 202, JSON.stringify(started.body));
  await witness.arrived;
  await k.close();
  witness.release();
  return started.body.runId as string;
};
