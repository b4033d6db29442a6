/**
 * @module
 * `keel replay RUN`: execute a finished run's coordinator again, with the
 * agent version active now (or a chosen one), against the run's journal,
 * and report where the code no longer does what the journal recorded — to
 * check a code change against history before it meets new runs.
 *
 * Nothing is performed and nothing is written. Recorded `step` results are
 * handed to the workflow as in a crash replay (their bodies do not run);
 * every other call (effects, memory, models) comes to the replay's handler,
 * which never reaches the Gateway: it checks the call against the journal
 * (same seq, kind and name; for effects the same arguments, as canonical
 * JSON) and answers with the recorded value or error. A call past the end
 * of the journal, a different call, different arguments, a non-determinism
 * error from the SDK, or a different final result is a divergence. A
 * divergence that changes the call stops the replay there (the workflow is
 * parked, as at an approval); different arguments are reported and the
 * replay continues with the recorded answer. A `step` the new code asks for
 * where the journal holds none runs its body inside the plugin's sandbox,
 * as it would in a real run, before it is reported. Compensations an undo
 * recorded in the run's journal are not the workflow's and are left out.
 */
import { Effect } from "effect";
import { ConflictError, type ErrorBody, NotFoundError, toErrorBody } from "../errors/mod.ts";
import { Journal, type RunRecord, type StepRecord } from "../journal/mod.ts";
import { UNDO_SEQ_BASE } from "../gateway/mod.ts";
import { PluginHost } from "../plugins/mod.ts";
import { Audit } from "../telemetry/mod.ts";
import type { HostCall, JournalEntry, WireError } from "../sdk/mod.ts";
import { SUSPENDED } from "../sdk/mod.ts";

/** A call as the journal recorded it or as the replayed code made it. */
export interface ReplayCall {
  readonly kind: string;
  readonly name: string;
  readonly args?: unknown;
}

/** One place where the code and the journal disagree. */
export interface Divergence {
  /** The step's sequence number; absent for the final result. */
  readonly seq?: number;
  readonly expected: ReplayCall | { readonly output: unknown } | null;
  readonly actual: ReplayCall | { readonly output: unknown } | null;
  readonly message: string;
}

/** What a replay found. */
export interface ReplayReport {
  readonly runId: string;
  readonly workflow: string;
  readonly agent: string;
  /** The agent version that replayed the run. */
  readonly agentVersion: string;
  /** The version the run was recorded with. */
  readonly recordedVersion: string;
  /** Steps in the journal. */
  readonly steps: number;
  readonly divergences: ReadonlyArray<Divergence>;
  readonly output: { readonly recorded: unknown; readonly replayed: unknown; readonly equal: boolean };
}

const FINISHED: ReadonlyArray<RunRecord["status"]> = ["succeeded", "failed", "cancelled"];

/** JSON with object keys sorted, so equal values compare equal. */
const canonical = (value: unknown): string =>
  JSON.stringify(
    value,
    (_key, v) =>
      v !== null && typeof v === "object" && !Array.isArray(v)
        ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, (v as Record<string, unknown>)[k]]))
        : v,
  ) ?? "null";

/** The journal kind a host call is recorded under. */
const kindOf = (op: string): string =>
  op === "checkpoint"
    ? "step"
    : op === "effect"
    ? "effect"
    : op.startsWith("model.")
    ? "model"
    : op.startsWith("memory.") || op.startsWith("records.")
    ? "memory"
    : op === "sleep"
    ? "timer"
    : op;

const argsOf = (call: HostCall): unknown =>
  "args" in call ? call.args : "item" in call ? call.item : "request" in call ? call.request : undefined;

/** The result of a run, as the replay compares it: the output, or the error's tag and message. */
const resultOf = (status: "succeeded" | "failed", output: unknown, error: ErrorBody | undefined) =>
  status === "succeeded" ? { status, output: output ?? null } : {
    status,
    error: error ? { tag: error.tag, message: error.message } : null,
  };

/**
 * Replay a finished run against its journal with the current (or the given)
 * version of its agent; performs nothing and writes nothing but one audit
 * event (`run.replayed`).
 */
export const replayRun = Effect.fn("Orchestrator.replay")(function* (
  runId: string,
  options: { readonly version?: string; readonly actor?: string } = {},
) {
  const journal = yield* Journal;
  const host = yield* PluginHost;
  const audit = yield* Audit;
  const run = yield* journal.getRun(runId);
  if (!run) return yield* new NotFoundError({ message: `No run with id "${runId}"` });
  if (!FINISHED.includes(run.status)) {
    return yield* new ConflictError({
      message: `Run "${runId}" is ${run.status}; only a finished run can be replayed`,
      details: { status: run.status },
    });
  }
  const agent = yield* host.get(run.plugin, options.version);
  // Compensations a later undo recorded (from `UNDO_SEQ_BASE` on) are not calls of the workflow.
  const steps = (yield* journal.steps(runId)).filter((s) => s.seq < UNDO_SEQ_BASE);
  const bySeq = new Map<number, StepRecord>(steps.map((s) => [s.seq, s]));
  // Recorded step results go to the workflow as in a crash replay; every other call comes to `answer`.
  const given: JournalEntry[] = steps.filter((s) => s.kind === "step" && s.status === "done").map((s) => ({
    seq: s.seq,
    kind: s.kind,
    name: s.name,
    value: s.value,
  }));
  const divergences: Divergence[] = [];
  const asked = new Set<number>();
  const stop = (message: string): Promise<never> => Promise.reject({ tag: SUSPENDED, message } satisfies WireError);

  const answer = (call: HostCall): Promise<unknown> => {
    if (call.op !== "checkpoints") return answerOne(call);
    // A batch of checkpoints is the same steps one by one; the first that diverges stops the replay.
    if (!Array.isArray(call.steps)) return stop("Replay call does not belong to this run");
    const answers: Promise<unknown>[] = [];
    for (const step of call.steps) {
      const before = divergences.length;
      answers.push(answerOne({ op: "checkpoint", runId: call.runId, ...step }));
      if (divergences.length > before) break;
    }
    return Promise.all(answers).then(() => null);
  };
  const answerOne = (call: HostCall): Promise<unknown> => {
    const kind = kindOf(call.op);
    const args = argsOf(call);
    const actual: ReplayCall = { kind, name: call.name, ...(args !== undefined ? { args } : {}) };
    if (call.runId !== runId || !Number.isInteger(call.seq)) return stop("Replay call does not belong to this run");
    asked.add(call.seq);
    const recorded = bySeq.get(call.seq);
    if (!recorded) {
      // A cancelled run's journal simply ends where the cancel caught it: that is not a divergence.
      if (run.status === "cancelled") return stop(`The recorded run was cancelled before step ${call.seq}`);
      divergences.push({
        seq: call.seq,
        expected: null,
        actual,
        message: `Step ${call.seq}: code asked for ${kind} "${call.name}" past the end of the journal`,
      });
      return stop("Replay diverged");
    }
    const expected: ReplayCall = {
      kind: recorded.kind,
      name: recorded.name,
      ...(recorded.args !== undefined ? { args: recorded.args } : {}),
    };
    if (recorded.kind !== kind || recorded.name !== call.name) {
      divergences.push({
        seq: call.seq,
        expected,
        actual,
        message:
          `Step ${call.seq}: recorded ${recorded.kind} "${recorded.name}", code asked for ${kind} "${call.name}"`,
      });
      return stop("Replay diverged");
    }
    if (kind === "effect" && recorded.args !== undefined && canonical(recorded.args) !== canonical(args)) {
      divergences.push({
        seq: call.seq,
        expected,
        actual,
        message: `Step ${call.seq}: effect "${call.name}" is asked with different arguments than recorded`,
      });
    }
    if (recorded.status === "done") return Promise.resolve(recorded.value ?? null);
    if (recorded.status === "failed" && recorded.error) {
      const { tag, message, details } = recorded.error;
      return Promise.reject({ tag, message, ...(details === undefined ? {} : { details }) } satisfies WireError);
    }
    // The run ended (cancelled, or failed while this step waited): the journal has no answer to give.
    return stop(`The recorded run stopped at step ${call.seq} (${recorded.status})`);
  };

  const outcome = yield* Effect.result(
    host.runWorkflow(agent, run.workflow, runId, run.input, given, answer),
  );
  let replayed: unknown;
  if (outcome._tag === "Success") {
    replayed = resultOf("succeeded", outcome.success, undefined);
  } else if (outcome.failure._tag === "RunSuspendedError") {
    replayed = { status: "stopped", reason: outcome.failure.message };
  } else {
    const error = toErrorBody(outcome.failure);
    const inner = error.details as { tag?: string; details?: Record<string, unknown> } | undefined;
    if (inner?.tag === "NonDeterminism") {
      const d = inner.details as { seq?: number; recorded?: ReplayCall; actual?: ReplayCall } | undefined;
      divergences.push({
        seq: d?.seq,
        expected: d?.recorded ?? null,
        actual: d?.actual ?? null,
        message: error.message.replace(/^Plugin "[^"]+" failed: /, ""),
      });
    }
    replayed = resultOf("failed", undefined, error);
  }
  const recordedResult = run.status === "cancelled"
    ? { status: "cancelled" }
    : resultOf(run.status as "succeeded" | "failed", run.output, run.error);
  const stoppedEarly = divergences.length > 0;
  const equal = canonical(recordedResult) === canonical(replayed);
  if (!equal && !stoppedEarly && run.status !== "cancelled") {
    divergences.push({
      expected: { output: recordedResult },
      actual: { output: replayed },
      message: "The replayed run ended differently than recorded",
    });
  }
  if (!stoppedEarly && outcome._tag === "Success") {
    // Calls the journal recorded that the new code never made (steps are answered inside the plugin, so only these show).
    const skipped = steps.filter((s) => s.kind !== "step" && !asked.has(s.seq));
    for (const s of skipped) {
      divergences.push({
        seq: s.seq,
        expected: { kind: s.kind, name: s.name, ...(s.args !== undefined ? { args: s.args } : {}) },
        actual: null,
        message: `Step ${s.seq}: recorded ${s.kind} "${s.name}", which the code no longer asks for`,
      });
    }
  }
  const report: ReplayReport = {
    runId,
    workflow: run.workflow,
    agent: agent.name,
    agentVersion: agent.version,
    recordedVersion: run.pluginVersion,
    steps: steps.length,
    divergences,
    output: { recorded: recordedResult, replayed, equal },
  };
  yield* audit.append({
    type: "run.replayed",
    actor: options.actor ?? "operator",
    runId,
    data: { agent: agent.name, version: agent.version, steps: steps.length, divergences: divergences.length },
  });
  return report;
});
