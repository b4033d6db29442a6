/**
 * @module
 * The orchestrator: starts runs, executes a coordinator's workflow in its
 * agent's Worker, answers the workflow's calls (checkpoints, effects through
 * the Gateway, memory), parks runs at approvals and resumes them, and recovers
 * running runs after a crash by replaying them against their journal. A run
 * executes in one place at a time; completed steps are never redone.
 */
import { Clock, Context, Effect, Layer } from "effect";
import { ConflictError, InvalidInputError, NotFoundError, type StoreError, toErrorBody } from "../errors/mod.ts";
import { type ApprovalRecord, Journal, type RunRecord, type RunTrigger, type StepRecord } from "../journal/mod.ts";
import { Gateway } from "../gateway/mod.ts";
import { type InstalledPlugin, PluginHost } from "../plugins/mod.ts";
import { Memory, type RecallLogEntry, Records } from "../memory/mod.ts";
import { answerMemoryCall } from "./memoryCall.ts";
import { ModelRouter } from "../models/mod.ts";
import { answerModelCall, makeRunTaint } from "./modelCall.ts";
import { Audit } from "../telemetry/mod.ts";
import type { HostCall, JournalEntry, WireError } from "../sdk/mod.ts";
import { SUSPENDED } from "../sdk/mod.ts";

/** A run with its steps, as the API shows it. */
export interface RunView extends RunRecord {
  readonly steps: ReadonlyArray<StepRecord>;
  /** What the run recalled from memory and why (from the retrieval log), when it recalled anything. */
  readonly recalls?: ReadonlyArray<RecallLogEntry>;
}

/** How an operator decides an approval. */
export interface Decision {
  readonly approve: boolean;
  readonly actor: string;
  readonly note?: string;
  /** Only for `unknown_outcome` approvals: did it happen, or send again? */
  readonly resolution?: "retry" | "delivered";
}

/** How a run is started (all optional). */
export interface StartOptions {
  /** 0–9, higher first when runs queue for a slot; default 5. */
  readonly priority?: number;
  /** Start no earlier than this time (epoch ms). */
  readonly notBefore?: number;
  /** Idempotent start: if a run with this id exists it is returned and nothing new starts. */
  readonly runId?: string;
  readonly trigger?: RunTrigger;
}

/** Largest step result Keel records (Deno KV values are capped at 64 KiB). */
export const MAX_STEP_BYTES = 60 * 1024;

/** The orchestrator service. */
export class Orchestrator extends Context.Service<Orchestrator, {
  start(
    workflow: string,
    input: unknown,
    actor: string,
    options?: StartOptions,
  ): Effect.Effect<RunRecord, NotFoundError | InvalidInputError | StoreError>;
  get(runId: string): Effect.Effect<RunView, NotFoundError | StoreError>;
  /** Wait up to `seconds` for the run to end or pause, then return it. */
  wait(runId: string, seconds: number): Effect.Effect<RunView, NotFoundError | StoreError>;
  decide(
    approvalId: string,
    decision: Decision,
  ): Effect.Effect<ApprovalRecord, NotFoundError | ConflictError | InvalidInputError | StoreError>;
  /** Resume every run that was running when the host stopped; returns how many. */
  readonly recover: Effect.Effect<number, StoreError>;
  /** Resolves when no run is executing (for tests and shutdown). */
  readonly idle: Effect.Effect<void>;
}>()("keel/orchestrator/Orchestrator") {
  /** The orchestrator over the journal, plugin host, gateway, memory and audit. */
  static readonly layer = Layer.effect(
    Orchestrator,
    Effect.gen(function* () {
      const journal = yield* Journal;
      const host = yield* PluginHost;
      const gateway = yield* Gateway;
      const memory = yield* Memory;
      const records = yield* Records;
      const models = yield* ModelRouter;
      const taint = makeRunTaint(journal);
      const audit = yield* Audit;

      const executing = new Map<string, { again: boolean }>();
      const waiters = new Map<string, Set<() => void>>();
      const idleWaiters = new Set<() => void>();
      const notify = (runId: string) => {
        for (const w of waiters.get(runId) ?? []) w();
        waiters.delete(runId);
      };
      const nowIso = Effect.map(Clock.currentTimeMillis, (ms) => new Date(ms).toISOString());

      const wire = (error: unknown): WireError => {
        const body = toErrorBody(error);
        return body.tag === "RunSuspendedError" ? { tag: SUSPENDED, message: body.message } : body;
      };

      /** Answer one call a running workflow makes of the host. */
      const handle = (run: RunRecord, agent: InstalledPlugin) => (call: HostCall): Promise<unknown> => {
        const program = Effect.gen(function* () {
          if (call.runId !== run.id || !Number.isInteger(call.seq) || call.seq < 1 || typeof call.name !== "string") {
            return yield* new InvalidInputError({ message: "Workflow call does not belong to this run" });
          }
          const payload = "value" in call
            ? call.value
            : "args" in call
            ? call.args
            : "item" in call
            ? call.item
            : call.request;
          const size = new TextEncoder().encode(JSON.stringify(payload) ?? "").length;
          if (size > MAX_STEP_BYTES) {
            return yield* new InvalidInputError({
              message: `Step ${call.seq} "${call.name}" is ${size} bytes; a step records at most ${MAX_STEP_BYTES}`,
            });
          }
          switch (call.op) {
            case "checkpoint": {
              const at = yield* nowIso;
              const won = yield* journal.checkpoint(run.id, {
                seq: call.seq,
                kind: "step",
                name: call.name,
                status: "done",
                value: call.value,
                startedAt: at,
                endedAt: at,
              });
              if (won.name !== call.name || won.kind !== "step") {
                return yield* new InvalidInputError({
                  message:
                    `Workflow diverged from its journal at step ${call.seq}: recorded ${won.kind} "${won.name}", code asked for step "${call.name}"`,
                  details: { seq: call.seq },
                });
              }
              // The workflow already holds the value; echoing it back would only copy it again.
              return null;
            }
            case "effect":
              return yield* gateway.request({
                runId: run.id,
                seq: call.seq,
                agent,
                workflow: run.workflow,
                effect: call.name,
                args: call.args,
                context: { tainted: yield* taint.before(run.id, call.seq) },
              });
            case "memory.remember": {
              const prior = yield* journal.getStep(run.id, call.seq);
              if (prior?.status === "done") return prior.value;
              const item = call.item;
              if (typeof item?.text !== "string" || typeof item.kind !== "string") {
                return yield* new InvalidInputError({ message: "A memory item needs text and kind" });
              }
              const result = yield* memory.remember({
                scope: `agent:${agent.name}`,
                kind: item.kind,
                text: item.text,
                tags: Array.isArray(item.tags) ? item.tags.filter((t) => typeof t === "string") : [],
                provenance: { runId: run.id, seq: call.seq, plugin: agent.name, source: `workflow:${run.workflow}` },
              });
              const at = yield* nowIso;
              yield* journal.checkpoint(run.id, {
                seq: call.seq,
                kind: "memory",
                name: call.name,
                status: "done",
                value: result,
                startedAt: at,
                endedAt: at,
              });
              return result;
            }
            case "memory.recall":
            case "memory.summarize":
            case "records.put":
            case "records.get":
            case "records.query":
              return yield* answerMemoryCall({ journal, memory, records }, run, agent, call, MAX_STEP_BYTES);
            case "model.generate":
              return yield* answerModelCall({ journal, host, models, audit, taint }, run, agent, call);
            default:
              return yield* new InvalidInputError({ message: "Unknown workflow call" });
          }
        });
        return Effect.runPromise(Effect.mapError(program, wire)).catch((e) => {
          throw (e !== null && typeof e === "object" && "tag" in e) ? e : wire(e);
        });
      };

      /** One pass of a run: replay against the journal until it ends or parks. */
      const pass = Effect.fn("Orchestrator.pass")(function* (runId: string) {
        const run = yield* journal.getRun(runId);
        if (!run || run.status !== "running") return;
        // A run is pinned to the agent version it started with, even after an upgrade activates another.
        const agent = yield* Effect.result(host.get(run.plugin, run.pluginVersion));
        if (agent._tag === "Failure") {
          yield* finish(run, { status: "failed", error: toErrorBody(agent.failure) });
          return;
        }
        const steps = yield* journal.steps(runId);
        const entries: JournalEntry[] = steps.filter((s) => s.status === "done").map((s) => ({
          seq: s.seq,
          kind: s.kind,
          name: s.name,
          value: s.value,
        }));
        const outcome = yield* Effect.result(
          host.runWorkflow(agent.success, run.workflow, runId, run.input, entries, handle(run, agent.success)),
        );
        if (outcome._tag === "Success") {
          // An output too large for the run record would leave the run "running" forever: fail it instead.
          const size = new TextEncoder().encode(JSON.stringify([outcome.success ?? null, run.input ?? null])).length;
          yield* finish(
            run,
            size <= MAX_STEP_BYTES ? { status: "succeeded", output: outcome.success } : {
              status: "failed",
              error: {
                tag: "PluginFailedError",
                message:
                  `Workflow "${run.workflow}" returned ${size} bytes with its input; a run records at most ${MAX_STEP_BYTES}`,
                details: { plugin: run.plugin, size, limit: MAX_STEP_BYTES },
              },
            },
          );
        } else if (outcome.failure._tag === "RunSuspendedError") {
          notify(runId);
        } else {
          yield* finish(run, { status: "failed", error: toErrorBody(outcome.failure) });
        }
      });

      const finish = Effect.fn("Orchestrator.finish")(function* (
        run: RunRecord,
        patch: Pick<RunRecord, "status" | "output" | "error">,
      ) {
        const done = yield* journal.updateRun(run.id, { ...patch, waitingFor: undefined }, ["running"]);
        if (done) {
          yield* audit.append({
            type: `run.${patch.status}`,
            actor: "system",
            runId: run.id,
            data: { workflow: run.workflow, ...(patch.error ? { error: patch.error } : {}) },
          });
        }
        notify(run.id);
      });

      const execute = (runId: string): void => {
        const slot = executing.get(runId);
        if (slot) {
          slot.again = true;
          return;
        }
        const mine = { again: true };
        executing.set(runId, mine);
        const loop: Effect.Effect<void> = Effect.gen(function* () {
          while (mine.again) {
            mine.again = false;
            yield* pass(runId).pipe(
              Effect.catchCause((cause) => Effect.logError(`Run ${runId} could not proceed`, cause)),
            );
          }
        }).pipe(Effect.ensuring(Effect.sync(() => {
          executing.delete(runId);
          if (executing.size === 0) { for (const w of idleWaiters) w(); }
        })));
        Effect.runFork(loop);
      };

      const view = (run: RunRecord) =>
        Effect.flatMap(journal.steps(run.id), (steps) =>
          // Only a run that recalled something opens memory to show it.
          steps.some((s) => s.kind === "memory" && s.name === "recall")
            ? Effect.map(memory.recalls(run.id), (recalls): RunView => ({ ...run, steps, recalls }))
            : Effect.succeed<RunView>({ ...run, steps }));
      const get = Effect.fn("Orchestrator.get")(function* (runId: string) {
        const run = yield* journal.getRun(runId);
        if (!run) return yield* new NotFoundError({ message: `No run with id "${runId}"` });
        return yield* view(run);
      });

      const start = Effect.fn("Orchestrator.start")(function* (
        workflow: string,
        input: unknown,
        actor: string,
        options: StartOptions = {},
      ) {
        if (options.runId !== undefined) {
          if (!/^[A-Za-z0-9_.:-]{1,200}$/.test(options.runId)) {
            return yield* new InvalidInputError({ message: `Run id "${options.runId}" is not a valid id` });
          }
          const existing = yield* journal.getRun(options.runId);
          if (existing) return existing;
        }
        const priority = options.priority ?? 5;
        if (!Number.isInteger(priority) || priority < 0 || priority > 9) {
          return yield* new InvalidInputError({ message: `Priority must be an integer from 0 to 9: got "${priority}"` });
        }
        const { plugin, decl } = yield* host.findWorkflow(workflow);
        const problems = host.validate(plugin, `wf:${workflow}`, decl.input, input);
        if (problems.length) {
          return yield* new InvalidInputError({
            message: `Input for workflow "${workflow}" is invalid: ${problems[0]}`,
            details: { errors: problems },
          });
        }
        const at = yield* nowIso;
        const run: RunRecord = {
          id: options.runId ?? `run_${crypto.randomUUID().replaceAll("-", "")}`,
          workflow,
          plugin: plugin.name,
          pluginVersion: plugin.version,
          input,
          status: "running",
          priority,
          ...(options.notBefore !== undefined ? { notBefore: options.notBefore } : {}),
          ...(options.trigger ? { trigger: options.trigger } : {}),
          createdAt: at,
          updatedAt: at,
        };
        yield* journal.createRun(run);
        yield* audit.append({
          type: "run.started",
          actor,
          runId: run.id,
          data: { workflow, plugin: plugin.name, version: plugin.version },
        });
        execute(run.id);
        return run;
      });

      const wait = Effect.fn("Orchestrator.wait")(function* (runId: string, seconds: number) {
        const deadline = (yield* Clock.currentTimeMillis) + Math.max(0, seconds) * 1000;
        for (;;) {
          const current = yield* get(runId);
          const left = deadline - (yield* Clock.currentTimeMillis);
          if (current.status !== "running" || left <= 0) return current;
          yield* Effect.callback<void>((resume) => {
            const wake = () => resume(Effect.void);
            const set = waiters.get(runId) ?? new Set();
            set.add(wake);
            waiters.set(runId, set);
            const timer = setTimeout(wake, Math.min(left, 1000));
            return Effect.sync(() => {
              clearTimeout(timer);
              set.delete(wake);
            });
          });
        }
      });

      const decide = Effect.fn("Orchestrator.decide")(function* (approvalId: string, d: Decision) {
        const approval = yield* journal.getApproval(approvalId);
        if (!approval) return yield* new NotFoundError({ message: `No approval with id "${approvalId}"` });
        if (approval.status !== "pending") {
          return yield* new ConflictError({
            message: `Approval "${approvalId}" is already ${approval.status}`,
            details: { status: approval.status },
          });
        }
        const now = yield* Clock.currentTimeMillis;
        const run = yield* journal.getRun(approval.runId);
        const resume = run?.status === "waiting_approval" && run.waitingFor?.approvalId === approvalId;
        const runPatch = resume
          ? { run: { id: approval.runId, patch: { status: "running" as const, waitingFor: undefined } } }
          : undefined;
        if (Date.parse(approval.expiresAt) <= now) {
          // Too late for this one; the resumed run asks for a fresh approval of the same action.
          yield* journal.transitionApproval({ ...approval, status: "expired" }, "pending", runPatch);
          yield* audit.append({
            type: "approval.expired",
            actor: "system",
            runId: approval.runId,
            data: { approvalId },
          });
          if (resume) execute(approval.runId);
          return yield* new ConflictError({
            message: `Approval "${approvalId}" expired at ${approval.expiresAt}; the run asks for a new one`,
            details: { status: "expired" },
          });
        }
        if (
          d.approve && approval.kind === "unknown_outcome" && d.resolution !== "retry" && d.resolution !== "delivered"
        ) {
          return yield* new InvalidInputError({
            message: `Approval "${approvalId}" is about an unknown outcome: say resolution "delivered" or "retry"`,
          });
        }
        const decided: ApprovalRecord = {
          ...approval,
          status: d.approve ? "approved" : "denied",
          decidedBy: d.actor,
          decidedAt: new Date(now).toISOString(),
          ...(d.note ? { note: d.note } : {}),
          ...(approval.kind === "unknown_outcome" && d.resolution ? { resolution: d.resolution } : {}),
        };
        const ok = yield* journal.transitionApproval(decided, "pending", runPatch);
        if (!ok) {
          return yield* new ConflictError({ message: `Approval "${approvalId}" was decided by someone else first` });
        }
        yield* audit.append({
          type: d.approve ? "approval.approved" : "approval.denied",
          actor: d.actor,
          runId: approval.runId,
          data: {
            approvalId,
            effect: approval.effect,
            rule: approval.rule,
            approver: d.actor,
            ...(d.note ? { note: d.note } : {}),
            ...(decided.resolution ? { resolution: decided.resolution } : {}),
          },
        });
        if (resume) execute(approval.runId);
        return decided;
      });

      const recover = Effect.map(journal.listRuns({ status: "running" }), (runs) => {
        for (const run of runs) execute(run.id);
        return runs.length;
      });

      const idle = Effect.callback<void>((resume) => {
        if (executing.size === 0) return resume(Effect.void);
        const w = () => {
          idleWaiters.delete(w);
          resume(Effect.void);
        };
        idleWaiters.add(w);
      });

      return Orchestrator.of({ start, get, wait, decide, recover, idle });
    }),
  );
}
