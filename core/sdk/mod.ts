/**
 * @module
 * What plugin authors import, and the only Keel module a plugin may import.
 * `definePlugin` turns a plain object of async handlers into the plugin side
 * of the host ⇄ plugin protocol. Plugin authors do not need Effect.
 *
 * ```ts
 * import { definePlugin } from "../../core/sdk/mod.ts";
 * definePlugin({
 *   effects: { "echo.say": async (args) => ({ said: args }) },
 * });
 * ```
 */
import type {
  ApprovalAnswer,
  ApprovalRequest,
  Checkpoint,
  HostCall,
  HostMessage,
  JournalEntry,
  PluginMessage,
  WireError,
} from "./protocol.ts";
import { SUSPENDED } from "./protocol.ts";
import { PluginError } from "./PluginError.ts";
import type { AnyEffects, EffectCaller, HealthCheck } from "./define.ts";

export { PluginError, type PluginErrorOptions } from "./PluginError.ts";
export * from "./define.ts";

export type {
  ApprovalAnswer,
  ApprovalRequest,
  Checkpoint,
  HostCall,
  HostMessage,
  JournalEntry,
  MemoryInput,
  PluginMessage,
  WireError,
} from "./protocol.ts";
export { SUSPENDED } from "./protocol.ts";
import { type ModelRequest, type ModelResult, runToolLoop, type ToolLoopLimits, type ToolLoopResult } from "./model.ts";
export * from "./model.ts";
import { MEMORY_OPS, type WorkflowMemory, workflowMemory, type WorkflowRecords } from "./memory.ts";
export * from "./memory.ts";

/** What an effect handler learns about the call it serves; `Config` types the plugin's config. */
export interface EffectContext<Config = Readonly<Record<string, unknown>>> {
  /** Stable for every attempt of the same effect in the same run step. */
  readonly idempotencyKey: string;
  /** The operator's configuration for this plugin, as installed. */
  readonly config: Config;
  /**
   * The plugin's own folder, `<Keel data dir>/plugin-data/<name>/`: its `read` and `write` grants are relative to
   * it. It is kept across restarts and upgrades and deleted when the plugin is removed.
   */
  readonly dataDir: string;
}

/** A connector's implementation of one declared effect. */
export type EffectHandler = (args: any, ctx: EffectContext) => Promise<unknown>;

/**
 * What a coordinator workflow may do: everything goes through the host.
 * `Uses` (see `defineAgent`) limits `ctx.effect` to the effects the agent
 * declares, with their types; the default allows any name, untyped.
 */
export interface WorkflowContext<Uses = AnyEffects> {
  /** The run this execution belongs to. */
  readonly runId: string;
  /**
   * A checkpointed step: its result is recorded once and replayed after a crash.
   * Checkpoints are pipelined: the workflow goes on while the host writes them.
   * Those made in one turn of the event loop travel as one message and one
   * write, and those still held when the workflow returns ride on its result,
   * recorded in the same commit as the run's end. Every one is durable before
   * the next effect, approval, timer or child workflow is asked for, and
   * before the run's end is recorded. A crash before that point re-runs only
   * steps whose results nobody outside the run saw.
   */
  step<T>(name: string, fn: () => T | Promise<T>): Promise<T>;
  /** A durable timer: the run is parked (no Worker, no polling) and resumes after `ms`, across restarts. */
  sleep(ms: number): Promise<void>;
  /** A durable timer until a point in time. */
  sleepUntil(when: Date | number): Promise<void>;
  /** An explicit human gate: the run waits for the operator's decision (API, CLI), durably. */
  approval(request: ApprovalRequest): Promise<ApprovalAnswer>;
  /** Start a child workflow (exactly once) and wait for its output; its failure is thrown here. */
  child<T = unknown>(workflow: string, input: unknown): Promise<T>;
  /**
   * Run branches concurrently, at most `limit` at a time (default 8, at most 16), and return
   * their results in order. Each branch gets its own context with its own
   * deterministic journal positions (up to 999 operations per branch); a branch
   * cannot itself call `parallel` (start a child workflow instead). If branches
   * fail, all are awaited and the first failure in branch order is thrown.
   */
  parallel<T>(
    branches: ReadonlyArray<(ctx: WorkflowContext<Uses>) => Promise<T>>,
    options?: { readonly limit?: number },
  ): Promise<T[]>;
  /** The current time, recorded: a replay sees the same value (epoch ms). */
  now(): Promise<number>;
  /** A pseudo-random number in [0, 1) seeded by the run (and branch): the same sequence on every replay. */
  random(): number;
  /** Ask the host's gateway to perform a declared effect (policy-checked, journaled). */
  readonly effect: EffectCaller<Uses>;
  /** Long-term memory: remember, recall (logged), summarize; written by the host with this run as provenance. */
  readonly memory: WorkflowMemory;
  /** Records in collections the operator defined and the manifest's `records` lists, validated on write. */
  readonly records: WorkflowRecords;
  /** Language models through Keel's router: routed, budgeted, cached, journaled (a replay gets the recorded answer). */
  readonly model: {
    generate(request: ModelRequest): Promise<ModelResult>;
    /** A bounded tool loop: effect tool calls go through `ctx.effect`, others to `handlers`. */
    loop(
      request: ModelRequest,
      limits?: ToolLoopLimits,
      handlers?: Readonly<Record<string, (input: unknown) => unknown>>,
    ): Promise<ToolLoopResult>;
  };
}

/** A coordinator workflow: deterministic code whose I/O goes through `ctx`. */
export type WorkflowHandler = (ctx: WorkflowContext, input: any) => Promise<unknown>;

/** A plugin's implementation: handlers keyed by the names its manifest declares. */
export interface PluginDefinition {
  readonly effects?: Readonly<Record<string, EffectHandler>>;
  readonly workflows?: Readonly<Record<string, WorkflowHandler>>;
  readonly health?: HealthCheck;
}

/** Thrown inside a workflow when the host parks the run; never catch it. */
export class Suspended extends Error {
  /** The reason the host gave. */
  constructor(message: string) {
    super(message);
    this.name = SUSPENDED;
  }
}

/** Checkpoints a workflow may have unrecorded (held or in flight) before `ctx.step` waits for the host. */
const CHECKPOINT_WINDOW = 32;
/** Characters of JSON a workflow holds back before it sends its checkpoints. */
const CHECKPOINT_HOLD_CHARS = 256 * 1024;
/** Journal positions reserved for each branch of `ctx.parallel`. */
const BRANCH_SEQS = 1000;
/** The latest time a `Date` holds (ms since 1970): a timer wakes by then, and sleeps at most that long. */
const MAX_TIME_MS = 8.64e15;

/** A small seeded generator (FNV-1a seed, mulberry32 steps): deterministic per run and branch. */
const seededRandom = (seed: string): () => number => {
  let h = 0x811c9dc5;
  for (let i = 0; i < seed.length; i++) h = Math.imul(h ^ seed.charCodeAt(i), 0x01000193);
  let state = h >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
};

interface Port {
  postMessage(message: PluginMessage): void;
  onmessage: ((event: MessageEvent<HostMessage>) => void) | null;
}

const toWire = (error: unknown): WireError => {
  if (error instanceof PluginError) {
    const { tag, message, details, retryable, outcomeUnknown } = error;
    return {
      tag,
      message,
      details,
      ...(retryable === undefined ? {} : { retryable }),
      ...(outcomeUnknown ? { outcomeUnknown } : {}),
    };
  }
  if (error instanceof Error) {
    // Deno reports a denied dynamic import as a TypeError "Requires read access to …".
    const denied = error.name === "NotCapable" || error.name === "PermissionDenied" ||
      /^Requires \w+ access\b/.test(error.message);
    const tag = denied ? "PermissionDenied" : error.name;
    return { tag: tag || "PluginError", message: error.message };
  }
  return { tag: "PluginError", message: String(error) };
};

/**
 * Register a plugin's handlers and serve the host's requests. Call it once,
 * at the top level of `mod.ts`.
 */
export function definePlugin(def: PluginDefinition, port: Port = self as unknown as Port): void {
  let config: Record<string, unknown> = {};
  let dataDir = "";
  let nextCall = 1;
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: unknown) => void }>();

  const send = (message: PluginMessage) => port.postMessage(message);
  /**
   * Work to run once the current turn of the event loop ends (after its microtasks), for every run of
   * this plugin: one message on a private channel. A timer would do too, but in a Worker `setTimeout(0)`
   * waits about a millisecond, and creating and clearing one cost 50–60 µs when measured after an idle
   * moment, on every run's last step.
   */
  let turnChannel: MessageChannel | undefined;
  const turnEnd = new Set<() => void>();
  const atTurnEnd = (f: () => void) => {
    if (!turnChannel) {
      turnChannel = new MessageChannel();
      turnChannel.port1.onmessage = () => {
        const due = [...turnEnd];
        turnEnd.clear();
        for (const g of due) g();
      };
    }
    if (turnEnd.size === 0) turnChannel.port2.postMessage(null);
    turnEnd.add(f);
  };
  const hostCall = (call: HostCall): Promise<unknown> =>
    new Promise((resolve, reject) => {
      const id = nextCall++;
      pending.set(id, { resolve, reject });
      send({ t: "call", id, ...call });
    });

  const runWorkflow = async (
    handler: WorkflowHandler,
    runId: string,
    input: unknown,
    journal: ReadonlyArray<JournalEntry>,
    /** Set when the workflow ends: the checkpoints it still held, to ride on its result. */
    out: { trailing?: Checkpoint[] },
  ): Promise<unknown> => {
    const recorded = new Map(journal.map((entry) => [entry.seq, entry]));
    let suspended: Suspended | undefined;
    // Checkpoints are held briefly and sent together: those made in one turn of the event loop go as one
    // message (and one write), and the last ones ride on the workflow's result (see `step`).
    let held: Checkpoint[] = [];
    let heldChars = 0;
    let flushDue = false;
    // Batches sent and not yet recorded; `unrecorded` counts the checkpoints held or in them.
    const inFlight = new Set<Promise<void>>();
    let unrecorded = 0;
    let checkpointFailure: unknown;
    /** A divergence from the journal, once seen, is the pass's answer: every later call and the result fail with it. */
    let diverged: PluginError | undefined;
    const guard = () => {
      if (suspended) throw suspended;
      if (diverged) throw diverged;
      if (checkpointFailure) throw checkpointFailure;
    };
    /** Keep a divergence the host found (its error says so in `details.diverged`). */
    const noteDivergence = (error: unknown) => {
      if (error instanceof PluginError && (error.details as { diverged?: unknown } | undefined)?.diverged === true) {
        diverged ??= error;
      }
    };
    /** Send the held checkpoints as one call. */
    const flush = () => {
      if (flushDue) {
        turnEnd.delete(flush);
        flushDue = false;
      }
      if (!held.length) return;
      const steps = held;
      held = [];
      heldChars = 0;
      const sent = hostCall({ op: "checkpoints", runId, seq: steps[0].seq, name: steps[0].name, steps })
        .then(() => {}, (error) => {
          if (error instanceof Suspended) suspended ??= error;
          else checkpointFailure ??= error;
          noteDivergence(error);
        })
        .finally(() => {
          inFlight.delete(sent);
          unrecorded -= steps.length;
        });
      inFlight.add(sent);
    };
    /** Wait until every checkpoint made so far is durable. */
    const settle = async () => {
      flush();
      while (inFlight.size) await Promise.all([...inFlight]);
      guard();
    };
    const viaHost = async (call: HostCall) => {
      await settle();
      try {
        return await hostCall(call);
      } catch (error) {
        if (error instanceof Suspended) suspended = error;
        noteDivergence(error);
        throw error;
      }
    };

    /** A context whose journal positions come from `next` (the run's, or a parallel branch's block). */
    const makeContext = (next: () => number, seed: string, branch: boolean): WorkflowContext => {
      const replayed = (seq: number, kind: JournalEntry["kind"], name: string): JournalEntry | undefined => {
        const entry = recorded.get(seq);
        if (entry === undefined) return undefined;
        if (entry.kind !== kind || entry.name !== name) {
          throw diverged ??= new PluginError(
            "NonDeterminism",
            `Workflow diverged from its journal at step ${seq}: recorded ${entry.kind} "${entry.name}", code asked for ${kind} "${name}"`,
            { seq, diverged: true, recorded: { kind: entry.kind, name: entry.name }, actual: { kind, name } },
          );
        }
        return entry;
      };
      /** One journaled call: replayed from the journal, or asked of the host. */
      const journaled = async (kind: JournalEntry["kind"], name: string, ask: (seq: number) => HostCall) => {
        guard();
        const seq = next();
        const entry = replayed(seq, kind, name);
        if (entry) return entry.value;
        return await viaHost(ask(seq));
      };
      const random = seededRandom(seed);
      const ctx: WorkflowContext = {
        runId,
        async step(name, fn) {
          guard();
          const seq = next();
          const entry = replayed(seq, "step", name);
          if (entry) return entry.value as never;
          const value = await fn();
          guard();
          const recordedValue = value === undefined ? null : value;
          held.push({ seq, name, value: recordedValue });
          unrecorded++;
          // Sizes are estimated only to bound what is held; the host checks each step exactly.
          heldChars += typeof recordedValue === "string"
            ? recordedValue.length
            : (JSON.stringify(recordedValue)?.length ?? 4);
          if (heldChars >= CHECKPOINT_HOLD_CHARS || held.length >= CHECKPOINT_WINDOW) flush();
          else if (!flushDue) {
            flushDue = true;
            atTurnEnd(flush);
          }
          // A bounded window keeps a fast loop of steps from queueing without limit.
          while (unrecorded >= CHECKPOINT_WINDOW && inFlight.size) await Promise.race(inFlight);
          guard();
          return value;
        },
        async effect(name, args) {
          return await journaled("effect", name, (seq) => ({ op: "effect", runId, seq, name, args })) as never;
        },
        ...workflowMemory(
          (op, args) => journaled("memory", MEMORY_OPS[op], (seq) => ({ op, runId, seq, name: MEMORY_OPS[op], args })),
          async (item) =>
            await journaled("memory", "remember", (seq) => ({
              op: "memory.remember",
              runId,
              seq,
              name: "remember",
              item,
            })) as never,
        ),
        model: {
          async generate(request) {
            const name = `model:${request?.purpose}`;
            return await journaled(
              "model",
              name,
              (seq) => ({ op: "model.generate", runId, seq, name, request }),
            ) as never;
          },
          loop: (request, limits, handlers) =>
            runToolLoop(
              {
                generate: (r) => ctx.model.generate(r),
                effect: (n, a) => ctx.effect(n, a),
                step: (n, f) => ctx.step(n, f),
              },
              request,
              limits,
              handlers,
            ),
        },
        async sleep(ms) {
          if (!Number.isFinite(ms) || ms < 0 || ms > MAX_TIME_MS) {
            throw new PluginError("InvalidInput", `Cannot sleep for "${ms}" ms`);
          }
          await journaled("timer", "sleep", (seq) => ({ op: "sleep", runId, seq, name: "sleep", ms }));
        },
        async sleepUntil(when) {
          const until = when instanceof Date ? when.getTime() : when;
          if (!Number.isFinite(until) || Math.abs(until) > MAX_TIME_MS) {
            throw new PluginError("InvalidInput", `Cannot sleep until "${String(when)}"`);
          }
          await journaled("timer", "sleep", (seq) => ({ op: "sleep", runId, seq, name: "sleep", until }));
        },
        async approval(request) {
          return await journaled(
            "approval",
            "approval",
            (seq) => ({ op: "approval", runId, seq, name: "approval", request }),
          ) as ApprovalAnswer;
        },
        async child(workflow, childInput) {
          const name = `child:${workflow}`;
          const answer = await journaled("child", name, (seq) => ({
            op: "child",
            runId,
            seq,
            name,
            workflow,
            input: childInput === undefined ? null : childInput,
          })) as { ok: boolean; output?: unknown; error?: WireError };
          if (!answer.ok) {
            const e = answer.error ?? { tag: "ChildFailed", message: `Child workflow "${workflow}" failed` };
            throw new PluginError(e.tag, e.message, e.details);
          }
          return answer.output as never;
        },
        async parallel(branches, options) {
          guard();
          if (branch) {
            throw new PluginError(
              "InvalidInput",
              "A parallel branch cannot itself run ctx.parallel: start a child workflow from the branch instead",
            );
          }
          const asked = options?.limit ?? 8;
          if (typeof asked !== "number" || Number.isNaN(asked)) {
            throw new PluginError(
              "InvalidInput",
              `ctx.parallel's limit must be a number (1 to 16), not ${String(asked)}`,
            );
          }
          const limit = Math.max(1, Math.min(16, Math.floor(asked)));
          // Reserve a block of journal positions per branch, in program order, so replay finds the same ones.
          const base = next() - 1;
          for (let i = 1; i < branches.length * BRANCH_SEQS; i++) next();
          const results = new Array(branches.length);
          const failures: Array<{ index: number; error: unknown }> = [];
          let cursor = 0;
          const lane = async () => {
            while (cursor < branches.length) {
              const index = cursor++;
              let used = 0;
              const first = base + index * BRANCH_SEQS + 1;
              const branchNext = () => {
                if (++used >= BRANCH_SEQS) {
                  throw new PluginError(
                    "InvalidInput",
                    `Parallel branch ${index} made more than ${
                      BRANCH_SEQS - 1
                    } journaled calls; split it into a child workflow`,
                  );
                }
                return first + used - 1;
              };
              try {
                results[index] = await branches[index](makeContext(branchNext, `${seed}/${index}`, true));
              } catch (error) {
                failures.push({ index, error });
              }
            }
          };
          await Promise.all(Array.from({ length: Math.min(limit, branches.length) }, lane));
          guard();
          if (failures.length) throw failures.sort((a, b) => a.index - b.index)[0].error;
          return results;
        },
        now: () => ctx.step("keel:now", () => Date.now()),
        random,
      };
      return ctx;
    };

    let seq = 0;
    const ctx = makeContext(() => ++seq, runId, false);
    /** What the workflow still holds goes with its result (success or failure), recorded with the run's end. */
    const handOver = () => {
      if (flushDue) turnEnd.delete(flush);
      flushDue = false;
      out.trailing = held;
      held = [];
    };
    const value = await handler(ctx, input).catch((error) => {
      handOver();
      throw suspended ?? diverged ?? error;
    });
    handOver();
    // Checkpoints still in flight need not hold up the result either: the host records the run's end
    // after them, in the same or a later commit, and refuses it if one of them failed.
    guard();
    return value;
  };

  const answer = (id: number, work: () => Promise<unknown>, out: { trailing?: Checkpoint[] } = {}) => {
    const extra = () => (out.trailing?.length ? { checkpoints: out.trailing } : {});
    // A handler that throws before returning its promise fails its call, not the whole Worker.
    new Promise<unknown>((resolve) => resolve(work())).then(
      (value) => send({ t: "result", id, ok: true, value: value === undefined ? null : value, ...extra() }),
      (error) => send({ t: "result", id, ok: false, error: toWire(error), ...extra() }),
    );
  };

  port.onmessage = (event) => {
    const message = event.data;
    switch (message.t) {
      case "init":
        config = message.config;
        dataDir = message.dataDir ?? "";
        send({ t: "ready", effects: Object.keys(def.effects ?? {}), workflows: Object.keys(def.workflows ?? {}) });
        return;
      case "effect": {
        const handler = def.effects?.[message.name];
        return answer(message.id, () => {
          if (!handler) {
            throw new PluginError("EffectNotImplemented", `Plugin does not implement effect "${message.name}"`);
          }
          return handler(message.args, { idempotencyKey: message.idempotencyKey, config, dataDir });
        });
      }
      case "workflow": {
        const handler = def.workflows?.[message.name];
        const out: { trailing?: Checkpoint[] } = {};
        return answer(message.id, () => {
          if (!handler) {
            throw new PluginError("WorkflowNotImplemented", `Plugin does not implement workflow "${message.name}"`);
          }
          return runWorkflow(handler, message.runId, message.input, message.journal, out);
        }, out);
      }
      case "health":
        return answer(message.id, async () => (def.health ? await def.health({ config, dataDir }) : true));
      case "reply": {
        const waiter = pending.get(message.id);
        if (!waiter) return;
        pending.delete(message.id);
        if (message.ok) waiter.resolve(message.value);
        else if (message.error.tag === SUSPENDED) waiter.reject(new Suspended(message.error.message));
        else waiter.reject(new PluginError(message.error.tag, message.error.message, message.error.details));
        return;
      }
    }
  };
}
