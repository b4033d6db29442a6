/**
 * @module
 * A Keel for Gateway tests: real Deno KV, real Workers, the HTTP API on
 * 127.0.0.1, the `ledger` connector and the `spender` agent from
 * `fixtures/` installed, and a witness HTTP peer that records every call the
 * connector really makes — the test's independent view of what left Keel.
 * The policy engine can be replaced (`policyLayer`) to break it on purpose.
 */
import { Cause, Effect } from "effect";
import { startKeel } from "../../core/mod.ts";
import { type AppliedLimit, Limits, type Policy } from "../../core/policy/mod.ts";
import type { EffectRequest } from "../../core/gateway/mod.ts";
import { Gateway } from "../../core/gateway/mod.ts";
import { PluginHost } from "../../core/plugins/mod.ts";
import { Journal, type StepRecord } from "../../core/journal/mod.ts";
import { ROOT, TEST_TOKEN, type TestKeel } from "../_support/keel.ts";
import { at } from "../policy/_clock.ts";

/** One call the ledger connector made. */
export interface WitnessedCall {
  readonly effect: string;
  readonly args: Record<string, unknown>;
  readonly key: string;
}

/** The witness peer. */
export interface Witness {
  readonly host: string;
  readonly port: number;
  readonly calls: WitnessedCall[];
  close(): Promise<void>;
}

/** Start a witness on 127.0.0.1 that records each POSTed call and answers `{ ok: true, n }`. */
export const startWitness = async (): Promise<Witness> => {
  const calls: WitnessedCall[] = [];
  const ready = Promise.withResolvers<number>();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: ({ port }) => ready.resolve(port) },
    async (req) => {
      calls.push(await req.json());
      return Response.json({ ok: true, n: calls.length });
    },
  );
  const port = await ready.promise;
  return { host: "127.0.0.1", port, calls, close: () => server.shutdown() };
};

/** A test Keel with the ledger fixtures installed and a witness. */
export interface LedgerKeel extends TestKeel {
  readonly witness: Witness;
  /** Start a run of a spender workflow; with `wait`, wait for it to end or pause. */
  start(workflow: string, input: unknown, wait?: number): Promise<any>;
  /** Wait up to 60 s for a run to end or pause. */
  run(runId: string): Promise<any>;
  /** Audit events of a run (or all), optionally of one type. */
  audit(type?: string, runId?: string): Promise<any[]>;
  /** Call the Gateway directly for a run's effect step, as the orchestrator would (optionally as if at `atMs`). */
  gateway(
    request: Omit<EffectRequest, "agent">,
    options?: { agent?: string; atMs?: number },
  ): Promise<GatewayAnswer>;
  /** A run's effect step. */
  effectStep(runId: string): Promise<StepRecord>;
  /** Approve a pending approval in the journal, as a decision would, without resuming its run; whether it moved. */
  approveInJournal(approvalId: string): Promise<boolean>;
  /** What a limit's counter holds now. */
  used(limit: AppliedLimit): Promise<number>;
  /**
   * Start a `read` run that waits for an approval, approve it in the journal without resuming the run, then play two
   * executors: two Gateway requests for its effect step at once.
   */
  raceApprovedRead(input: unknown): Promise<{ runId: string; approvalId: string; answers: GatewayAnswer[] }>;
}

/** What `LedgerKeel.gateway` answers. */
export type GatewayAnswer = { ok: boolean; value?: any; error?: any };

/** Options for `withLedgerKeel`. */
export interface LedgerKeelOptions {
  readonly policies: Record<string, string>;
  /** Replace the policy engine (e.g. `Policy.layerTest({ evaluate })`). */
  readonly policyLayer?: typeof Policy.layer;
}

const FIXTURES = `${ROOT}/tests/gateway/fixtures`;

/** Start everything, run `fn`, and always tear it down. */
export const withLedgerKeel = async (options: LedgerKeelOptions, fn: (k: LedgerKeel) => Promise<void>) => {
  const witness = await startWitness();
  const dataDir = await Deno.makeTempDir({ prefix: "keel-gw-" });
  const policiesDir = await Deno.makeTempDir({ prefix: "keel-gw-policies-" });
  try {
    for (const [name, text] of Object.entries(options.policies)) {
      await Deno.writeTextFile(`${policiesDir}/${name}`, text);
    }
    const keel = await startKeel({
      dataDir,
      hostname: "127.0.0.1",
      port: 0,
      token: TEST_TOKEN,
      policiesDir,
      root: ROOT,
      rpcTimeoutMs: 20_000,
      eagerMemory: false,
    }, { policy: options.policyLayer });
    try {
      const url = keel.url!;
      const api = async (method: string, path: string, body?: unknown) => {
        const res = await fetch(`${url}${path}`, {
          method,
          headers: { authorization: `Bearer ${TEST_TOKEN}`, "content-type": "application/json" },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        return { status: res.status, body: await res.json() };
      };
      const ledger = await api("POST", "/api/plugins", {
        path: `${FIXTURES}/ledger`,
        grant: { net: [`${witness.host}:${witness.port}`] },
        config: { host: witness.host, port: witness.port },
      });
      if (ledger.status !== 201) throw new Error(`ledger install failed: ${JSON.stringify(ledger.body)}`);
      const spender = await api("POST", "/api/plugins", { path: `${FIXTURES}/spender`, grant: {} });
      if (spender.status !== 201) throw new Error(`spender install failed: ${JSON.stringify(spender.body)}`);
      const run = async (runId: string) => (await api("GET", `/api/runs/${runId}?wait=60`)).body;
      const k: LedgerKeel = {
        keel,
        url,
        dataDir,
        policiesDir,
        api,
        close: () => keel.close(),
        witness,
        async start(workflow, input, wait) {
          const r = await api("POST", `/api/workflows/${workflow}/runs${wait ? `?wait=${wait}` : ""}`, { input });
          if (r.status !== 202) throw new Error(`cannot start ${workflow}: ${JSON.stringify(r.body)}`);
          return r.body;
        },
        run,
        async audit(type, runId) {
          const events = (await api("GET", `/api/audit${runId ? `?runId=${runId}` : "?limit=10000"}`)).body.events;
          return type ? events.filter((e: { type: string }) => e.type === type) : events;
        },
        gateway: async (request, options = {}) => {
          const call = Effect.gen(function* () {
            const plugin = yield* PluginHost.use((h) => h.get(options.agent ?? "spender"));
            return yield* Gateway.use((g) => g.request({ ...request, agent: plugin }));
          });
          const exit = await keel.runtime.runPromiseExit(options.atMs === undefined ? call : at(options.atMs, call));
          if (exit._tag === "Success") return { ok: true, value: exit.value };
          return { ok: false, error: Cause.squash(exit.cause) };
        },
        effectStep: async (runId) => {
          const steps = await keel.runtime.runPromise(Journal.use((j) => j.steps(runId)));
          const step = steps.find((s) => s.kind === "effect");
          if (!step) throw new Error(`run ${runId} has no effect step`);
          return step;
        },
        approveInJournal: (approvalId) =>
          keel.runtime.runPromise(Journal.use((j) =>
            Effect.gen(function* () {
              const pending = yield* j.getApproval(approvalId);
              if (!pending) throw new Error(`no approval ${approvalId}`);
              return yield* j.transitionApproval({ ...pending, status: "approved", decidedBy: "operator" }, "pending");
            })
          )),
        used: (limit) => keel.runtime.runPromise(Limits.use((l) => l.used(limit))),
        async raceApprovedRead(input) {
          const r = await k.start("read", input, 30);
          if (r.status !== "waiting_approval") throw new Error(`not waiting for an approval: ${JSON.stringify(r)}`);
          const approvalId: string = r.waitingFor.approvalId;
          if (!(await k.approveInJournal(approvalId))) throw new Error(`approval ${approvalId} was not pending`);
          const step = await k.effectStep(r.runId);
          const request = () =>
            k.gateway({ runId: r.runId, seq: step.seq, workflow: "read", effect: "ledger.read", args: step.args });
          return { runId: r.runId, approvalId, answers: await Promise.all([request(), request()]) };
        },
      };
      await fn(k);
    } finally {
      await keel.close();
    }
  } finally {
    await witness.close();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    await Deno.remove(policiesDir, { recursive: true }).catch(() => {});
  }
};
