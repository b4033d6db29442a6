/**
 * @module
 * How the orchestrator answers a workflow's `ctx.model.generate`: the journal
 * first (a step already done returns its recorded answer, and one that failed
 * its recorded failure, so a replay never calls a provider again), then the
 * router. Effect tools are resolved from
 * the connectors' declarations, and only for effects the agent declares in
 * `uses`. What the run has read from connectors so far (and what tainted
 * answers said) is handed to the router, so text that carries it is treated
 * as untrusted even if the workflow forgot to label it. The call is journaled
 * as an intent before the provider is asked, and as done (or failed) after,
 * and audited with its provider, tokens, cost and taint.
 */
import { Clock, Context, Effect } from "effect";
import { EffectNotDeclaredError, ModelOutputError, recordedError, toErrorBody } from "../errors/mod.ts";
import { divergence, Journal, type RunRecord, type StepRecord } from "../journal/mod.ts";
import { type InstalledPlugin, PluginHost } from "../plugins/mod.ts";
import { ModelRouter, type ResolvedTool, snippetsOf, type TaintSnippet } from "../models/mod.ts";
import { Audit } from "../telemetry/mod.ts";
import type { HostCall, ModelResult } from "../sdk/mod.ts";

/** A workflow's model call, as it arrives from the plugin. */
export type ModelCall = Extract<HostCall, { op: "model.generate" }>;

/** The services a model call needs. */
export interface ModelCallDeps {
  readonly journal: Context.Service.Shape<typeof Journal>;
  readonly host: Context.Service.Shape<typeof PluginHost>;
  readonly models: Context.Service.Shape<typeof ModelRouter>;
  readonly audit: Context.Service.Shape<typeof Audit>;
  readonly taint: RunTaint;
}

/** Largest model answer Keel journals (Deno KV values are capped at 64 KiB). */
const MAX_MODEL_STEP_BYTES = 60 * 1024;

/** The step of a run's first tainted model answer, or `Infinity`. */
const firstTainted = (steps: ReadonlyArray<StepRecord>): number =>
  steps.reduce(
    (first, s) =>
      s.kind === "model" && s.status === "done" && (s.value as ModelResult | undefined)?.tainted === true
        ? Math.min(first, s.seq)
        : first,
    Infinity,
  );

/** Runs whose taint is known; bounded, since a run's taint can always be read again from its journal. */
const MAX_TRACKED_RUNS = 10_000;

/**
 * Which runs are tainted, and from which step on: a run is tainted once a
 * model answer in it derived from untrusted input. Kept in memory and read
 * from the journal the first time a run is asked about (after a restart).
 */
export const makeRunTaint = (journal: Context.Service.Shape<typeof Journal>) => {
  const first = new Map<string, number>();
  const remember = (runId: string, seq: number) => {
    if (first.size >= MAX_TRACKED_RUNS && !first.has(runId)) first.delete(first.keys().next().value!);
    first.set(runId, Math.min(seq, first.get(runId) ?? Infinity));
  };
  return {
    /** Did a tainted model answer come before step `seq` of the run? */
    before: (runId: string, seq: number) =>
      first.has(runId) ? Effect.succeed(first.get(runId)! < seq) : Effect.map(journal.steps(runId), (steps) => {
        remember(runId, firstTainted(steps));
        return first.get(runId)! < seq;
      }),
    /** A model answer at step `seq` of the run was tainted. */
    mark: (runId: string, seq: number) => Effect.sync(() => remember(runId, seq)),
  };
};

/** A run's taint tracker. */
export type RunTaint = ReturnType<typeof makeRunTaint>;

/** Connector output and tainted answers recorded before step `seq`. */
export const runSnippets = (steps: ReadonlyArray<StepRecord>, seq: number): TaintSnippet[] => {
  const out: TaintSnippet[] = [];
  for (const s of steps) {
    if (s.seq >= seq || s.status !== "done") continue;
    if (s.kind === "effect") snippetsOf(s.value, `effect:${s.name}`, out);
    else if (s.kind === "model" && (s.value as ModelResult | undefined)?.tainted) {
      const v = s.value as ModelResult;
      snippetsOf([v.text, v.data ?? null], `model:${s.seq}`, out);
    }
  }
  return out;
};

/** Answer one `model.generate` call of a running workflow. */
export const answerModelCall = Effect.fn("Orchestrator.modelCall")(function* (
  deps: ModelCallDeps,
  run: RunRecord,
  agent: InstalledPlugin,
  call: ModelCall,
) {
  const { journal, host, models, audit, taint } = deps;
  const prior = yield* journal.getStep(run.id, call.seq);
  // Whatever another call recorded here (an effect whose outcome is unknown, say) is not overwritten.
  const diverged = divergence(prior, call.seq, "model", call.name);
  if (diverged) return yield* diverged;
  if (prior?.status === "done") return prior.value as ModelResult;
  // The workflow saw this failure (and may have gone another way): it sees it again.
  if (prior?.status === "failed" && prior.error) return yield* Effect.fail(recordedError(prior.error));
  const request = call.request;
  const tools: ResolvedTool[] = [];
  for (const t of Array.isArray(request?.tools) ? request.tools : []) {
    if (typeof t !== "string") {
      if (t !== null && typeof t === "object") tools.push({ ...t, effect: false });
      continue;
    }
    if (!agent.manifest.uses.includes(t)) {
      return yield* new EffectNotDeclaredError({
        message:
          `Plugin "${agent.name}" offered effect "${t}" as a tool, which its manifest does not declare in "uses"`,
        details: { plugin: agent.name, effect: t },
      });
    }
    const found = yield* Effect.result(host.findEffect(t));
    if (found._tag === "Failure") {
      return yield* new EffectNotDeclaredError({ message: found.failure.message, details: { effect: t } });
    }
    const { decl } = found.success;
    tools.push({ name: t, description: decl.description, inputSchema: decl.input, effect: true });
  }
  const steps = yield* journal.steps(run.id);
  const startedMs = yield* Clock.currentTimeMillis;
  const intent: StepRecord = {
    seq: call.seq,
    kind: "model",
    name: call.name,
    status: "intent",
    args: { purpose: request?.purpose },
    startedAt: new Date(startedMs).toISOString(),
  };
  yield* journal.putStep(run.id, intent);
  const actor = `plugin:${agent.name}`;
  const outcome = yield* Effect.result(
    models.generate(request, {
      runId: run.id,
      seq: call.seq,
      agent: agent.name,
      workflow: run.workflow,
      tools,
      snippets: runSnippets(steps, call.seq),
    }).pipe(
      Effect.flatMap((result) => {
        const size = new TextEncoder().encode(JSON.stringify(result)).length;
        return size <= MAX_MODEL_STEP_BYTES ? Effect.succeed(result) : Effect.fail(
          new ModelOutputError({
            message:
              `Model answer for "${request.purpose}" is ${size} bytes; Keel journals at most ${MAX_MODEL_STEP_BYTES}: lower maxTokens`,
            details: { size, limit: MAX_MODEL_STEP_BYTES },
          }),
        );
      }),
    ),
  );
  const endedMs = yield* Clock.currentTimeMillis;
  const timing = { endedAt: new Date(endedMs).toISOString(), latencyMs: endedMs - startedMs };
  if (outcome._tag === "Failure") {
    const error = toErrorBody(outcome.failure);
    yield* journal.putStep(run.id, { ...intent, status: "failed", error, ...timing });
    yield* audit.append({
      type: "model.failed",
      actor,
      runId: run.id,
      data: { seq: call.seq, purpose: request?.purpose, error },
    });
    return yield* outcome.failure;
  }
  const result = outcome.success;
  yield* journal.putStep(run.id, { ...intent, status: "done", value: result, ...timing });
  if (result.tainted) yield* taint.mark(run.id, call.seq);
  yield* audit.append({
    type: "model.called",
    actor,
    runId: run.id,
    data: {
      seq: call.seq,
      purpose: request.purpose,
      provider: result.provider,
      model: result.model,
      inputTokens: result.usage.inputTokens,
      outputTokens: result.usage.outputTokens,
      costUsd: result.costUsd,
      cached: result.cached,
      tainted: result.tainted,
      taintSources: result.taintSources,
      attempts: result.attempts.length,
      latencyMs: timing.latencyMs,
    },
  });
  return result;
});
