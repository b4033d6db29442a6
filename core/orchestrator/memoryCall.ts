/**
 * @module
 * The orchestrator's answer to a workflow's memory and records calls
 * (`ctx.memory.recall`, `ctx.memory.summarize`, `ctx.records.*`). Each is
 * performed once and checkpointed as a `memory` step, done or failed, so a
 * replay returns the recorded answer (or failure) even if memory changed
 * since. A workflow reads and writes
 * only its own agent's memory scope; its run, step, plugin and workflow are
 * the provenance of everything it writes. A result too large for one journal
 * step drops items from its end and says `truncated`.
 *
 * Records are least privilege: an agent reads (`get`, `query`) only the
 * collections its manifest lists in `records.read`, and writes (`put`,
 * `delete`) only those in `records.write`, compared by exact name with what the operator
 * granted (the active version's manifest, recorded with its hash). Anything
 * else is refused here, on the host, before the records store is asked:
 * a `PermissionDeniedError` recorded as the step's failure (a replay answers
 * it the same way) and audited as `records.denied`.
 */
import { Clock, Effect, Result } from "effect";
import type { Context } from "effect";
import {
  type EmbeddingError,
  InvalidInputError,
  type KeelError,
  type NotFoundError,
  PermissionDeniedError,
  recordedError,
  type StoreError,
  toErrorBody,
} from "../errors/mod.ts";
import { divergence, type Journal, type RunRecord, type StepRecord } from "../journal/mod.ts";
import type { InstalledPlugin } from "../plugins/mod.ts";
import { type Memory, parseRecallOptions, type Records } from "../memory/mod.ts";
import { MEMORY_OPS, type MemoryOp } from "../sdk/mod.ts";
import type { Audit } from "../telemetry/mod.ts";

/** The services a memory call needs. */
export interface MemoryCallServices {
  readonly journal: Context.Service.Shape<typeof Journal>;
  readonly memory: Context.Service.Shape<typeof Memory>;
  readonly records: Context.Service.Shape<typeof Records>;
  readonly audit: Context.Service.Shape<typeof Audit>;
}

/** A records operation. */
type RecordsOp = Extract<MemoryOp, `records.${string}`>;
/** Which access each records operation needs: every one is listed (the type says so), so none goes unchecked. */
const RECORDS_ACCESS: Record<RecordsOp, "read" | "write"> = {
  "records.get": "read",
  "records.query": "read",
  "records.put": "write",
  "records.delete": "write",
};

/**
 * Whether the agent's manifest grants `access` to `collection`: an exact match of a string with a name it lists.
 * Case, Unicode look-alikes, paths and other values never match (declared names are plain lower-case ASCII).
 */
export const recordsAllowed = (agent: InstalledPlugin, access: "read" | "write", collection: unknown): boolean =>
  typeof collection === "string" && (agent.manifest.records?.[access] ?? []).includes(collection);

/** A bounded, printable form of what a workflow sent as a collection name (it may be anything). */
const shown = (value: unknown): string => {
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = "(not JSON)";
  }
  return text.length > 120 ? `${text.slice(0, 120)}…` : text;
};

/** A memory or records call as it arrives from the workflow. */
export interface MemoryCall {
  readonly op: MemoryOp;
  readonly seq: number;
  readonly name: string;
  readonly args: unknown;
}

const bad = (message: string) => new InvalidInputError({ message });

/** Drop items from the end of `value[key]` until the value fits in `maxBytes` of JSON. */
const fit = <T extends Record<string, unknown>>(value: T, key: keyof T & string, maxBytes: number): T => {
  const list = [...(value[key] as unknown[])];
  const size = (v: unknown) => new TextEncoder().encode(JSON.stringify(v)).length;
  let out: T = value;
  while (size(out) > maxBytes && list.length > 0) {
    list.pop();
    out = { ...value, [key]: [...list], truncated: true };
  }
  return out;
};

/** Perform one memory or records call for a run, once, and return what the journal recorded. */
export const answerMemoryCall = Effect.fn("Orchestrator.memoryCall")(function* (
  services: MemoryCallServices,
  run: RunRecord,
  agent: InstalledPlugin,
  call: MemoryCall,
  maxBytes: number,
): Effect.fn.Return<unknown, InvalidInputError | NotFoundError | StoreError | EmbeddingError | KeelError> {
  const { journal, memory, records, audit } = services;
  const name = MEMORY_OPS[call.op];
  if (call.name !== name) return yield* bad(`Workflow call "${call.op}" must be recorded as "${name}"`);
  const prior = yield* journal.getStep(run.id, call.seq);
  const diverged = divergence(prior, call.seq, "memory", name);
  if (diverged) return yield* diverged;
  const recorded = recordedOutcome(prior);
  if (recorded) return yield* recorded;
  const args = call.args;
  if (args === null || typeof args !== "object" || Array.isArray(args)) {
    return yield* bad(`Workflow call "${call.op}" needs an object of arguments`);
  }
  const a = args as Record<string, unknown>;
  const scope = `agent:${agent.name}`;
  const provenance = { runId: run.id, seq: call.seq, plugin: agent.name, source: `workflow:${run.workflow}` };
  const collection = a.collection as string;
  const access = call.op.startsWith("records.") ? RECORDS_ACCESS[call.op as RecordsOp] ?? "write" : undefined;
  if (access && !recordsAllowed(agent, access, a.collection)) {
    const declared = agent.manifest.records?.[access] ?? [];
    const denied = new PermissionDeniedError({
      message: `Agent "${agent.name}" may not ${access} records in collection ${shown(a.collection)}: ${
        agent.manifest.records === undefined
          ? `its manifest declares no "records"`
          : `its manifest does not list it in "records.${access}"`
      } (declare it there and upgrade; the operator grants the new version)`,
      details: { plugin: agent.name, op: call.op, access, collection: shown(a.collection), declared },
    });
    yield* audit.append({
      type: "records.denied",
      actor: `plugin:${agent.name}`,
      runId: run.id,
      data: {
        plugin: agent.name,
        version: agent.version,
        workflow: run.workflow,
        seq: call.seq,
        op: call.op,
        access,
        collection: shown(a.collection),
        declared,
      },
    });
    return yield* recordOutcome(journal, run.id, call.seq, name, Result.fail(denied));
  }
  const perform = Effect.gen(function* () {
    let value: unknown;
    switch (call.op) {
      case "memory.recall": {
        const { query, ...options } = a;
        if (options.scope !== undefined || options.plugin !== undefined) {
          return yield* bad(`A workflow recalls only its own agent's memory: drop "scope" and "plugin"`);
        }
        const parsed = yield* parseRecallOptions(query, options);
        const recall = yield* memory.recall(parsed.query, { ...parsed.options, scope }, {
          actor: scope,
          runId: run.id,
          seq: call.seq,
          plugin: agent.name,
        });
        value = fit({ recallId: recall.id, items: recall.items }, "items", maxBytes);
        break;
      }
      case "memory.summarize": {
        if (a.maxChars !== undefined && typeof a.maxChars !== "number") {
          return yield* bad('"maxChars" must be a number');
        }
        value = yield* memory.summarize({
          scope,
          entries: a.entries as never,
          maxChars: a.maxChars as number | undefined,
          tags: a.tags as string[] | undefined,
          provenance,
        });
        break;
      }
      case "records.put":
        value = yield* records.put(collection, a.id as string, a.data, provenance);
        break;
      case "records.delete":
        value = yield* records.delete(collection, a.id as string, provenance);
        break;
      case "records.get":
        value = (yield* records.get(collection, a.id as string)) ?? null;
        break;
      case "records.query": {
        const found = yield* records.query(collection, {
          where: a.where as Record<string, unknown> | undefined,
          after: a.after as string | undefined,
          limit: a.limit as number | undefined,
        });
        value = fit({ records: found }, "records", maxBytes);
        break;
      }
    }
    return value;
  });
  return yield* recordOutcome(journal, run.id, call.seq, name, yield* Effect.result(perform));
});

/**
 * Record a memory call's outcome at `seq`, done or failed, once, and answer what the journal holds there. A
 * workflow that caught a failure and went another way gets the same failure on replay, not a second attempt
 * (which could write what the first was refused).
 */
export const recordOutcome = Effect.fnUntraced(function* <E>(
  journal: Context.Service.Shape<typeof Journal>,
  runId: string,
  seq: number,
  name: string,
  outcome: Result.Result<unknown, E>,
) {
  // A store that failed (memory shutting down, say) is not an answer: not recorded, so a replay asks again.
  if (outcome._tag === "Failure" && (outcome.failure as { _tag?: string })._tag === "StoreError") {
    return yield* Effect.fail(outcome.failure);
  }
  const at = new Date(yield* Clock.currentTimeMillis).toISOString();
  const step: StepRecord = outcome._tag === "Success"
    ? { seq, kind: "memory", name, status: "done", value: outcome.success, startedAt: at, endedAt: at }
    : { seq, kind: "memory", name, status: "failed", error: toErrorBody(outcome.failure), startedAt: at, endedAt: at };
  const won = yield* journal.checkpoint(runId, step);
  return won.status === "failed" && won.error ? yield* Effect.fail(recordedError(won.error)) : won.value;
});

/** The answer recorded at a memory call's position, if any: its value, or its failure made again. */
export const recordedOutcome = (prior: StepRecord | undefined): Effect.Effect<unknown, KeelError> | undefined =>
  prior?.status === "done"
    ? Effect.succeed(prior.value)
    : prior?.status === "failed" && prior.error
    ? Effect.fail(recordedError(prior.error))
    : undefined;
