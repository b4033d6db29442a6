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
import type { HostCall, HostMessage, JournalEntry, PluginMessage, WireError } from "./protocol.ts";
import { SUSPENDED } from "./protocol.ts";
import { PluginError } from "./PluginError.ts";
import type { AnyEffects, EffectCaller, HealthCheck } from "./define.ts";

export { PluginError, type PluginErrorOptions } from "./PluginError.ts";
export * from "./define.ts";

export type { HostCall, HostMessage, JournalEntry, MemoryInput, PluginMessage, WireError } from "./protocol.ts";
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
  /** A checkpointed step: its result is recorded once and replayed after a crash. */
  step<T>(name: string, fn: () => T | Promise<T>): Promise<T>;
  /** Ask the host's gateway to perform a declared effect (policy-checked, journaled). */
  readonly effect: EffectCaller<Uses>;
  /** Long-term memory: remember, recall (logged), summarize; written by the host with this run as provenance. */
  readonly memory: WorkflowMemory;
  /** Structured records in collections the operator defined, validated on write, with this run as provenance. */
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

interface Port {
  postMessage(message: PluginMessage): void;
  onmessage: ((event: MessageEvent<HostMessage>) => void) | null;
}

const toWire = (error: unknown): WireError => {
  if (error instanceof PluginError) {
    const { tag, message, details, retryable } = error;
    return { tag, message, details, ...(retryable === undefined ? {} : { retryable }) };
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
  let nextCall = 1;
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: unknown) => void }>();

  const send = (message: PluginMessage) => port.postMessage(message);
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
  ): Promise<unknown> => {
    const recorded = new Map(journal.map((entry) => [entry.seq, entry]));
    let seq = 0;
    let suspended: Suspended | undefined;
    const guard = () => {
      if (suspended) throw suspended;
    };
    const replayed = (kind: JournalEntry["kind"], name: string): JournalEntry | undefined => {
      const entry = recorded.get(seq);
      if (entry === undefined) return undefined;
      if (entry.kind !== kind || entry.name !== name) {
        throw new PluginError(
          "NonDeterminism",
          `Workflow diverged from its journal at step ${seq}: recorded ${entry.kind} "${entry.name}", code asked for ${kind} "${name}"`,
          { seq, recorded: { kind: entry.kind, name: entry.name }, actual: { kind, name } },
        );
      }
      return entry;
    };
    const viaHost = async (call: HostCall) => {
      try {
        return await hostCall(call);
      } catch (error) {
        if (error instanceof Suspended) suspended = error;
        throw error;
      }
    };
    const ctx: WorkflowContext = {
      runId,
      async step(name, fn) {
        guard();
        const mySeq = ++seq;
        const entry = replayed("step", name);
        if (entry) return entry.value as never;
        const value = await fn();
        await viaHost({ op: "checkpoint", runId, seq: mySeq, name, value: value === undefined ? null : value });
        return value;
      },
      async effect(name, args) {
        guard();
        const mySeq = ++seq;
        const entry = replayed("effect", name);
        if (entry) return entry.value as never;
        return await viaHost({ op: "effect", runId, seq: mySeq, name, args }) as never;
      },
      ...workflowMemory(
        async (op, args) => {
          guard();
          const mySeq = ++seq;
          const entry = replayed("memory", MEMORY_OPS[op]);
          if (entry) return entry.value;
          return await viaHost({ op, runId, seq: mySeq, name: MEMORY_OPS[op], args });
        },
        async (item) => {
          guard();
          const mySeq = ++seq;
          const entry = replayed("memory", "remember");
          if (entry) return entry.value as never;
          return await viaHost({ op: "memory.remember", runId, seq: mySeq, name: "remember", item }) as never;
        },
      ),
      model: {
        async generate(request) {
          guard();
          const mySeq = ++seq;
          const name = `model:${request?.purpose}`;
          const entry = replayed("model", name);
          if (entry) return entry.value as never;
          return await viaHost({ op: "model.generate", runId, seq: mySeq, name, request }) as never;
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
    };
    const value = await handler(ctx, input).catch((error) => {
      throw suspended ?? error;
    });
    if (suspended) throw suspended;
    return value;
  };

  const answer = (id: number, work: () => Promise<unknown>) => {
    // A handler that throws before returning its promise fails its call, not the whole Worker.
    new Promise<unknown>((resolve) => resolve(work())).then(
      (value) => send({ t: "result", id, ok: true, value: value === undefined ? null : value }),
      (error) => send({ t: "result", id, ok: false, error: toWire(error) }),
    );
  };

  port.onmessage = (event) => {
    const message = event.data;
    switch (message.t) {
      case "init":
        config = message.config;
        send({ t: "ready", effects: Object.keys(def.effects ?? {}), workflows: Object.keys(def.workflows ?? {}) });
        return;
      case "effect": {
        const handler = def.effects?.[message.name];
        return answer(message.id, () => {
          if (!handler) {
            throw new PluginError("EffectNotImplemented", `Plugin does not implement effect "${message.name}"`);
          }
          return handler(message.args, { idempotencyKey: message.idempotencyKey, config });
        });
      }
      case "workflow": {
        const handler = def.workflows?.[message.name];
        return answer(message.id, () => {
          if (!handler) {
            throw new PluginError("WorkflowNotImplemented", `Plugin does not implement workflow "${message.name}"`);
          }
          return runWorkflow(handler, message.runId, message.input, message.journal);
        });
      }
      case "health":
        return answer(message.id, async () => (def.health ? await def.health({ config }) : true));
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
