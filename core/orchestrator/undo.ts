/**
 * @module
 * Undo a run: run the declared compensations of its completed effects, last
 * first, then take back what it wrote to memory.
 *
 * A connector declares an effect's undo in its manifest (`compensate:
 * "calendar.delete"` on `calendar.create`); the compensation is called with
 * `{ original: <args>, result: <recorded result> }`. Each compensation goes
 * through the Gateway like any effect — policy-checked, journaled, audited —
 * as a step of the same run numbered `UNDO_SEQ_BASE + seq` and named
 * `undo:<effect>`. So undo is idempotent and resumable: a compensation that
 * completed returns its recorded result and is not sent again, and an undo
 * cut short by a crash picks up where it stopped. A compensation the policy
 * gates waits for its approval (the report lists it under `waiting`); undo it
 * again once approved. Reads change nothing and are skipped; an effect with
 * no compensation is reported as not undoable. Memory and records the run
 * wrote are reverted with `Memory.revertRun`. Undos of one run take turns
 * (two operators, or a client retrying after a timeout): the second finds the
 * first one's compensations done and sends nothing again. A compensation that
 * failed for certain (refused, or the connector said so) is tried again by the
 * next undo.
 */
import { Clock, Effect } from "effect";
import { ConflictError, type ErrorBody, NotFoundError, type StoreError, toErrorBody } from "../errors/mod.ts";
import { Journal, type StepRecord } from "../journal/mod.ts";
import { Gateway, stepNameOf, UNDO_SEQ_BASE } from "../gateway/mod.ts";
import { PluginHost } from "../plugins/mod.ts";
import { Memory, type RevertReport } from "../memory/mod.ts";
import { Audit } from "../telemetry/mod.ts";

/** The services undo runs on. */
export type UndoServices = Journal | Gateway | PluginHost | Memory | Audit;

/** One effect of the run, as undo treated it. */
export interface UndoEntry {
  /** The original effect's step and name. */
  readonly seq: number;
  readonly effect: string;
  /** The compensation, and the step it is journaled as. */
  readonly compensation?: string;
  readonly undoSeq?: number;
  /** What the compensation returned. */
  readonly result?: unknown;
  /** True if an earlier undo already completed this compensation (nothing was sent this time). */
  readonly previously?: boolean;
  readonly approvalId?: string;
  readonly reason?: string;
  readonly error?: ErrorBody;
}

/** What `undoRun` did. */
export interface UndoReport {
  readonly runId: string;
  /** Compensations that completed, last effect first. */
  readonly compensated: ReadonlyArray<UndoEntry>;
  /** Effects undo left alone: reads, and effects with no declared compensation ("not undoable"). */
  readonly skipped: ReadonlyArray<UndoEntry>;
  readonly failed: ReadonlyArray<UndoEntry>;
  /** Compensations waiting for an approval; undo again once decided. */
  readonly waiting: ReadonlyArray<UndoEntry>;
  readonly memory: RevertReport["memory"] & { readonly records: RevertReport["records"] };
}

const ENDED = new Set(["succeeded", "failed", "cancelled"]);

/** The last undo of each run in flight, per journal (one per Keel): the next one waits for it. */
const undoing = new WeakMap<object, Map<string, Promise<void>>>();

/** Run `body` after every undo of `runId` begun before it has ended. */
const inTurn = <A, E, R>(owner: object, runId: string, body: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> => {
  let turns = undoing.get(owner);
  if (!turns) undoing.set(owner, turns = new Map());
  const line = turns;
  return Effect.acquireUseRelease(
    Effect.promise(async () => {
      let done!: () => void;
      const mine = new Promise<void>((resolve) => (done = resolve));
      const before = line.get(runId);
      line.set(runId, mine);
      await before;
      return () => {
        done();
        if (line.get(runId) === mine) line.delete(runId);
      };
    }),
    () => body,
    (release) => Effect.sync(release),
  );
};

/** Undo a finished or cancelled run (`ConflictError` otherwise): compensations in reverse order, then memory. */
export const undoRun = Effect.fn("undoRun")(function* (
  runId: string,
  actor: string,
): Effect.fn.Return<UndoReport, NotFoundError | ConflictError | StoreError, UndoServices> {
  const journal = yield* Journal;
  return yield* inTurn(journal, runId, undoNow(runId, actor));
});

const undoNow = Effect.fnUntraced(function* (
  runId: string,
  actor: string,
): Effect.fn.Return<UndoReport, NotFoundError | ConflictError | StoreError, UndoServices> {
  const journal = yield* Journal;
  const gateway = yield* Gateway;
  const host = yield* PluginHost;
  const memory = yield* Memory;
  const audit = yield* Audit;

  const run = yield* journal.getRun(runId);
  if (!run) return yield* new NotFoundError({ message: `No run with id "${runId}"` });
  if (!ENDED.has(run.status)) {
    return yield* new ConflictError({
      message: `Run "${runId}" is ${run.status}: only a finished or cancelled run can be undone`,
      details: { status: run.status },
    });
  }
  // The agent the run is pinned to speaks for its compensations (policy sees its name); its active version if removed.
  const agent = yield* Effect.catch(host.get(run.plugin, run.pluginVersion), () => host.get(run.plugin));
  // The declaration of the connector version the run pinned, as the Gateway will resolve it; else the active one.
  const declOf = (effect: string) =>
    Effect.gen(function* () {
      for (const [name, version] of Object.entries(run.pins ?? {})) {
        const pinned = yield* Effect.result(host.get(name, version));
        const decl = pinned._tag === "Success"
          ? pinned.success.manifest.effects.find((e) => e.name === effect)
          : undefined;
        if (decl) return { decl };
      }
      return yield* host.findEffect(effect);
    });
  const steps = yield* journal.steps(runId);
  const bySeq = new Map(steps.map((s) => [s.seq, s]));
  const done = steps
    .filter((s) => s.kind === "effect" && s.status === "done" && s.seq < UNDO_SEQ_BASE)
    .sort((a, b) => b.seq - a.seq);
  yield* audit.append({ type: "run.undo_started", actor, runId, data: { effects: done.length } });

  const compensated: UndoEntry[] = [];
  const skipped: UndoEntry[] = [];
  const failed: UndoEntry[] = [];
  const waiting: UndoEntry[] = [];
  for (const step of done) {
    const base = { seq: step.seq, effect: step.name };
    const found = yield* Effect.result(declOf(step.name));
    if (found._tag === "Failure") {
      failed.push({ ...base, reason: "no installed connector provides it", error: toErrorBody(found.failure) });
      continue;
    }
    const { decl } = found.success;
    if (decl.class === "read") {
      skipped.push({ ...base, reason: "read: it changed nothing" });
      continue;
    }
    if (!decl.compensate) {
      skipped.push({ ...base, reason: "not undoable: the connector declares no compensation" });
      continue;
    }
    const request = {
      runId,
      seq: UNDO_SEQ_BASE + step.seq,
      agent,
      workflow: run.workflow,
      effect: decl.compensate,
      args: { original: step.args ?? null, result: step.value ?? null },
      undo: { effect: step.name, seq: step.seq },
      ...(run.pins ? { pins: run.pins } : {}),
    };
    const entry = { ...base, compensation: decl.compensate, undoSeq: request.seq };
    const prior: StepRecord | undefined = bySeq.get(request.seq);
    if (prior && (prior.kind !== "effect" || prior.name !== stepNameOf(request))) {
      // Only undo writes these steps; one recorded by anything else is not ours to overwrite.
      failed.push({ ...entry, reason: `step ${request.seq} holds ${prior.kind} "${prior.name}"` });
      continue;
    }
    const outcome = yield* Effect.result(gateway.request(request));
    if (outcome._tag === "Success") {
      compensated.push({
        ...entry,
        result: outcome.success,
        ...(prior?.status === "done" ? { previously: true } : {}),
      });
      continue;
    }
    if (outcome.failure._tag === "RunSuspendedError") {
      const parked = yield* journal.getStep(runId, request.seq);
      waiting.push({ ...entry, approvalId: parked?.approvalId, reason: outcome.failure.message });
      // Later compensations ran already; earlier ones wait their turn, so the order holds.
      break;
    }
    failed.push({ ...entry, error: toErrorBody(outcome.failure) });
  }

  const reverted = yield* memory.revertRun(runId);
  const report: UndoReport = {
    runId,
    compensated,
    skipped,
    failed,
    waiting,
    memory: { ...reverted.memory, records: reverted.records },
  };
  yield* audit.append({
    type: "run.undone",
    actor,
    runId,
    data: {
      at: new Date(yield* Clock.currentTimeMillis).toISOString(),
      compensated: compensated.map((e) => ({ seq: e.seq, effect: e.effect, previously: e.previously === true })),
      skipped: skipped.map((e) => ({ seq: e.seq, effect: e.effect })),
      failed: failed.map((e) => ({ seq: e.seq, effect: e.effect, error: e.error, reason: e.reason })),
      waiting: waiting.map((e) => ({ seq: e.seq, effect: e.effect, approvalId: e.approvalId })),
      memoryRemoved: reverted.memory.removed.length,
    },
  });
  return report;
});
