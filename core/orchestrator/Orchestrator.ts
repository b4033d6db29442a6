/**
 * @module
 * The orchestrator: starts runs, executes a coordinator's workflow in its
 * agent's Worker, answers the workflow's calls (checkpoints, effects through
 * the Gateway, memory, models, timers, approvals, child workflows), parks runs
 * and resumes them, and recovers after a crash by replaying runs against their
 * journal. A run executes in one place at a time; completed steps are never
 * redone.
 *
 * Scheduling: runs are work items in Deno KV. A run that cannot start at once
 * (no free slot, a concurrency limit, a delayed start, a sleeping timer) sits
 * in the run queue index `["runq", 9 - priority, readyAt, id]`; this host
 * keeps a copy in memory and sets one timer for the earliest future item, so
 * nothing polls and a parked run costs only its KV record. A claimed run
 * carries a lease (owner, until) that this host renews while it runs; after a
 * crash, a run whose lease names another host is taken back at start (the
 * data-dir lock guarantees that host is gone).
 *
 * Durability: checkpoints, run records and audit events go through the group
 * committer (`store/GroupCommit.ts`), so many share one KV commit. Writes that
 * must compare-and-set (approvals, parking a run) commit on their own.
 *
 * Fast paths (measured in `tests/bench/workflows.ts`): checkpoints are answered
 * in plain code, not an Effect per call, and those that ride on a workflow's
 * result are recorded with the run's end; a run that starts (or whose gate is
 * decided) while it can execute at once has its start (or the decision) held
 * back to share its first write (`HeldStart`); a run's view at its end is kept
 * briefly for the first `wait`, and a run parked on its gate keeps its journal,
 * run record and approval here, watched (`Journal.watchGate`), so `decide`
 * resumes it without a read: it posts the workflow call first
 * (`PluginHost.runWorkflowNow`), prepares the decision's writes (its audit
 * event hashed ahead) while the Worker runs, and a workflow that then returns
 * with nothing in the way has its run ended on the spot in plain code
 * (`endRun`), no fiber woken between the Worker's answer and the commit. Hot
 * internal steps and the hot API calls (`start`,
 * `get`, `wait`, `decide`) use `Effect.fnUntraced`: a traced call captures a
 * stack and opens a span, about a tenth of the host's time per run when
 * measured.
 */
import { Clock, Context, Effect, Layer, Result } from "effect";
import { KeelConfig } from "../config/mod.ts";
import {
  ConflictError,
  InvalidInputError,
  NotFoundError,
  PayloadTooLargeError,
  QueueFullError,
  RunSuspendedError,
  type StoreError,
  toErrorBody,
} from "../errors/mod.ts";
import {
  type ApprovalRecord,
  divergence,
  type GateWatch,
  type GroupWrite,
  isDivergence,
  Journal,
  type RunRecord,
  type RunTrigger,
  type StepRecord,
  TERMINAL,
  timeOrderedId,
} from "../journal/mod.ts";
import { argsDepth, Gateway, MAX_ARGS_DEPTH, UNDO_SEQ_BASE } from "../gateway/mod.ts";
import { type CallError, type InstalledPlugin, MAX_IN_FLIGHT, PluginHost } from "../plugins/mod.ts";
import { Memory, type RecallLogEntry, Records } from "../memory/mod.ts";
import { answerMemoryCall, recordedOutcome, recordOutcome } from "./memoryCall.ts";
import { ModelRouter } from "../models/mod.ts";
import { answerModelCall, makeRunTaint } from "./modelCall.ts";
import { Audit, pathMarks } from "../telemetry/mod.ts";
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
  /**
   * A start from outside (the API, a webhook): refused with `QueueFullError` while the run queue holds
   * `maxQueued` runs. Children, schedules and recovery are not capped: refusing them would lose work.
   */
  readonly capped?: boolean;
}

/** Largest step result Keel records (Deno KV values are capped at 64 KiB). */
export const MAX_STEP_BYTES = 60 * 1024;
/**
 * Largest run input, in bytes of JSON: the run record holds its input and, once it ends, its output, together at
 * most `MAX_STEP_BYTES`. A larger input is refused when the run is started (413), not when it is recorded.
 */
export const MAX_RUN_INPUT_BYTES = 48 * 1024;
/** Longest note an approval decision may carry, in characters (it is journaled and audited). */
export const MAX_NOTE_CHARS = 2000;
/** The latest time a `Date` holds (ms since 1970): a timer must wake by then. */
const MAX_TIME_MS = 8.64e15;
/** Most checkpoints one call (or one workflow result) may carry. */
const MAX_CHECKPOINTS_PER_CALL = 1000;

/** What one pass of a run learns while its workflow executes. */
interface PassState {
  /**
   * A checkpoint the workflow did not wait for failed, or the workflow diverged from its journal (`isDivergence`:
   * every later call is refused): the run must not end as if it held.
   */
  checkpointFailure?: unknown;
  /** Checkpoints that came with the workflow's result: recorded in the commit that ends the run. */
  readonly trailing: StepRecord[];
  /** The run's own start, not yet written: see `HeldStart`. (Set after the call for a resumption begun at once.) */
  held?: HeldStart;
  /** The pass's view of the journal (what it loaded and the checkpoints it recorded). */
  readonly known?: Map<number, StepRecord>;
  /** Set once the pass answered a call other than a checkpoint or gate: `known` may then miss what it wrote. */
  partial?: boolean;
  /** The workflow's gate the run parked on in this pass, and the run as parked. */
  parkedOn?: { readonly approvalId: string; readonly run: RunRecord };
}

/** A pass whose workflow call was posted before the pass began (a decided gate's quick resumption). */
interface BegunPass {
  readonly state: PassState;
  /**
   * The call's result (`value`), or the run's end when it was recorded on the spot (`ended`, in plain code: a
   * workflow that returned, with nothing in the way), or the failure of that record (`lost`). Fails with what
   * `PluginHost.runWorkflow` fails with.
   */
  readonly outcome: Promise<
    { readonly value: unknown } | { readonly ended: RunRecord } | { readonly lost: StoreError }
  >;
}

/** How many parked runs' journals are kept for a quick resume when their gate is decided. */
const PARKED_JOURNALS = 1024;

/** How long, and how many, ended runs' views are kept for the first `wait` after the end. */
const ENDED_VIEW_MS = 1000;
const ENDED_VIEWS = 1024;
/** How often the runs that callers `wait` for are read again, in case a wake-up was missed. */
const WAIT_SWEEP_MS = 1000;

/**
 * A run's start (or its resumption by a decision) that is not written at once.
 * A run started free to execute at once has its record and `run.started`
 * event wait (at most `START_HOLD_MS`, or config `startHoldMs`) for the run's first durable write and
 * share its commit; a workflow's gate decided while its run can resume at once
 * has its decision written the same way. A quick run's start (or decision),
 * steps and end then cost one commit, and its record is written once. Nothing
 * leaves the run before what is held is durable (a call other than a
 * checkpoint writes it first and waits for it), and whoever started the run
 * (or decided) hears back only once it is durable: a crash before that loses
 * a start nobody was told of, or a decision nobody was told was recorded.
 */
interface HeldStart {
  /** The run as it is recorded if what is held is written alone, and what it replaces in the store. */
  readonly run: RunRecord;
  readonly prev: RunRecord | undefined;
  /** The other writes (made when taken, so an audit event takes its place in the chain then). */
  readonly writes: () => ReadonlyArray<GroupWrite>;
  /** Whether it was handed to a write (or failed to be). */
  taken: boolean;
  readonly timer: ReturnType<typeof setTimeout>;
  /** Resolves once it is durable. */
  readonly durable: Promise<void>;
  /** Tie `durable` to the commit that carries it. */
  readonly carriedBy: (commit: Promise<void>) => void;
}

/** A fresh run id (time-ordered: see `timeOrderedId`). */
const runIdAt = (millis: number): string => timeOrderedId("run", millis);

/** How long a run's start may wait for the run's first write to share its commit. */
const START_HOLD_MS = 5;

/** The orchestrator service. */
export class Orchestrator extends Context.Service<Orchestrator, {
  readonly start: OrchestratorStart;
  get(runId: string): Effect.Effect<RunView, NotFoundError | StoreError>;
  /** Wait up to `seconds` for the run to end or pause, then return it. */
  wait(runId: string, seconds: number): Effect.Effect<RunView, NotFoundError | StoreError>;
  decide(
    approvalId: string,
    decision: Decision,
  ): Effect.Effect<ApprovalRecord, NotFoundError | ConflictError | InvalidInputError | StoreError>;
  /** Resume every run that was running when the host stopped; returns how many. */
  readonly recover: Effect.Effect<number, StoreError>;
  /**
   * Cancel a run that has not ended: a parked or queued run at once; a running
   * one at its workflow's next call to the host. Its pending approvals are
   * denied and its child runs cancelled.
   */
  cancel(
    runId: string,
    actor: string,
    reason?: string,
  ): Effect.Effect<RunRecord, NotFoundError | ConflictError | StoreError>;
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

      const config = yield* KeelConfig;
      const maxRuns = config.maxRuns ?? 32;
      const maxQueued = config.maxQueued ?? 10_000;
      const startHoldMs = config.startHoldMs ?? START_HOLD_MS;
      const hostId = `host_${crypto.randomUUID().slice(0, 8)}`;
      const queue = makeRunQueue();
      /** Runs executing (or being claimed) in this host. */
      /** Runs executing here, and slots held for runs about to (`claiming`): what the limits count. */
      const executing = new Map<
        string,
        { again: boolean; run: Pick<RunRecord, "id" | "workflow" | "plugin">; claiming?: boolean }
      >();
      /** Runs created running by `start` whose first pass has not begun: their journal is empty. */
      const isNew = new Set<string>();
      /** Runs cancelled while their workflow executes: who and why. */
      const cancelling = new Map<string, NonNullable<RunRecord["cancelled"]>>();
      /** Concurrency limits by workflow, from the manifests (filled when a run of it starts or is recovered). */
      const limits = new Map<string, { workflow?: number; plugin?: number }>();
      const waiters = new Map<string, Set<() => void>>();
      /**
       * Views of runs that just ended, built from what their pass knew, for the first `wait` after the end
       * (taken once, kept a second): a caller waiting for a quick run needs no read of what was just written.
       */
      const ended = new Map<string, { view: RunView; at: number }>();
      /** Runs executing whose start or resumption is held back (`HeldStart`): the store does not show them running yet. */
      const holding = new Set<string>();
      /**
       * Runs parked on their workflow's gate, with the journal their pass knew and their records, watched
       * (`Journal.watchGate`): `decide` resumes them without a read (`decideQuickly`).
       */
      const parkedJournals = new Map<
        string,
        {
          /** The run and its gate's approval as the store holds them while `watch` says unchanged. */
          readonly run: RunRecord;
          readonly approval: ApprovalRecord;
          readonly watch: GateWatch;
          readonly steps: Map<number, StepRecord>;
        }
      >();
      /** Cancels in flight: a quick resumption (`decideQuickly`) is taken only while there are none. */
      let cancelsInFlight = 0;
      /** The run parked on each gate in `parkedJournals`. */
      const parkedGates = new Map<string, string>();
      const forgetParked = (runId: string) => {
        const entry = parkedJournals.get(runId);
        if (!entry) return;
        entry.watch.close();
        parkedGates.delete(entry.approval.id);
        parkedJournals.delete(runId);
      };
      const takeEnded = (runId: string): RunView | undefined => {
        const hit = ended.get(runId);
        if (!hit) return undefined;
        ended.delete(runId);
        return Date.now() - hit.at <= ENDED_VIEW_MS ? hit.view : undefined;
      };
      const idleWaiters = new Set<() => void>();
      /**
       * The waiters' safety net. `notify` wakes a run's waiters when it ends or parks; once a second, while anyone
       * waits, the waited runs are also read together (ten to a read) and the waiters of any that is neither queued
       * nor running are woken. One timer and a read per ten runs, however many wait. A run queued or executing here
       * changes only through this host, which wakes its waiters: it is read every tenth sweep only.
       */
      let sweepTimer: ReturnType<typeof setTimeout> | undefined;
      let sweeps = 0;
      const armSweep = () => {
        if (sweepTimer === undefined && waiters.size > 0 && !stopping) sweepTimer = setTimeout(sweep, WAIT_SWEEP_MS);
      };
      const sweep = () => {
        const all = ++sweeps % 10 === 0;
        const ids = [...waiters.keys()].filter((id) => all || !(queue.has(id) || executing.has(id)));
        Effect.runPromise(journal.getRuns(ids)).then(
          (runs) =>
            runs.forEach((run, i) => {
              if (!run || (run.status !== "running" && run.status !== "queued" && !holding.has(ids[i]))) {
                notify(ids[i]);
              }
            }),
          // A read that failed: the waiters look again themselves, and say so if the store is gone.
          () => ids.forEach(notify),
        ).finally(() => {
          sweepTimer = undefined;
          if (!stopping) armSweep();
        });
      };
      const notify = (runId: string) => {
        // Taken out of the map before any is woken: a waiter resumes synchronously and may listen again at once (a
        // run that goes on, requeued after its agent crashed); that new listener must outlive this notify.
        const set = waiters.get(runId);
        waiters.delete(runId);
        for (const w of set ?? []) w();
      };
      const nowIso = Effect.map(Clock.currentTimeMillis, (ms) => new Date(ms).toISOString());

      const wire = (error: unknown): WireError => {
        const body = toErrorBody(error);
        return body.tag === "RunSuspendedError" ? { tag: SUSPENDED, message: body.message } : body;
      };

      /**
       * What is held, once: the run's record write and the others (an audit event takes its seq now). The
       * caller submits them, then `dropTimer`s: its timer, firing meanwhile, finds them taken and does nothing.
       */
      const takeStart = (
        held: HeldStart | undefined,
      ): { run: GroupWrite; rest: ReadonlyArray<GroupWrite> } | undefined => {
        if (!held || held.taken) return undefined;
        held.taken = true;
        return { run: journal.runWrite(held.prev, held.run), rest: held.writes() };
      };
      /**
       * Clear a taken start's timer once the commit that carries it is under way: a timer cleared after an idle
       * moment costs tens of µs, and the main thread waits for the commit anyway (this runs after the grouped
       * commit's batch is built and sent, which was queued first).
       */
      const dropTimer = (held: HeldStart) => queueMicrotask(() => clearTimeout(held.timer));
      /** Write what is held alone (the run is about to do something that must follow it); resolves once durable. */
      const writeStart = (held: HeldStart | undefined): Promise<void> => {
        if (!held) return Promise.resolve();
        const taken = takeStart(held);
        if (taken) {
          held.carriedBy(journal.submit(held.run.id, [taken.run, ...taken.rest]));
          dropTimer(held);
        }
        return held.durable;
      };
      const holdStart = (
        run: RunRecord,
        prev: RunRecord | undefined,
        writes: () => ReadonlyArray<GroupWrite>,
      ): HeldStart => {
        let carriedBy!: (commit: Promise<void>) => void;
        const durable = new Promise<void>((resolve, reject) => {
          carriedBy = (commit) => commit.then(resolve, reject);
        });
        // Handled where it is awaited; this keeps an early failure from being reported as unhandled.
        durable.catch(() => {});
        holding.add(run.id);
        durable.then(() => holding.delete(run.id), () => holding.delete(run.id));
        const held: HeldStart = {
          run,
          prev,
          writes,
          taken: false,
          timer: setTimeout(() => writeStart(held), startHoldMs),
          durable,
          carriedBy,
        };
        return held;
      };

      /**
       * Record a workflow's checkpoints: the hot path, in plain code (no Effect per call). This host runs the
       * only pass of this run, so the journal it loaded is the journal: no read, no compare-and-set, and the
       * write shares a commit with others. Checkpoints that came with the workflow's result (`trailing`) are
       * only checked here and kept for the commit that records the run's end.
       */
      const checkpoints = (
        run: RunRecord,
        known: Map<number, StepRecord>,
        state: PassState,
        call: Extract<HostCall, { op: "checkpoint" | "checkpoints" }>,
        trailing: boolean,
      ): Promise<unknown> => {
        /** A checkpoint the workflow will not wait for failed: the run must not end as if it held. */
        const lost = (error: unknown) => {
          state.checkpointFailure ??= error;
          return Promise.reject(wire(error));
        };
        // Checkpoints that came with the result get no reply: a refusal of them fails the run instead.
        const refuse = (message: string) =>
          trailing
            ? lost(new InvalidInputError({ message }))
            : Promise.reject(wire(new InvalidInputError({ message })));
        if (call.runId !== run.id) return refuse("Workflow call does not belong to this run");
        if (cancelling.has(run.id)) {
          return Promise.reject(wire(new RunSuspendedError({ message: "The run was cancelled" })));
        }
        const items: ReadonlyArray<unknown> = call.op === "checkpoint" ? [call] : call.steps;
        if (!Array.isArray(items) || items.length === 0 || items.length > MAX_CHECKPOINTS_PER_CALL) {
          return refuse(`A workflow sends 1 to ${MAX_CHECKPOINTS_PER_CALL} checkpoints at a time`);
        }
        const at = new Date().toISOString();
        const fresh: StepRecord[] = [];
        for (const item of items as ReadonlyArray<{ seq?: unknown; name?: unknown; value?: unknown }>) {
          if (
            item === null || typeof item !== "object" || !Number.isInteger(item.seq) || (item.seq as number) < 1 ||
            (item.seq as number) >= UNDO_SEQ_BASE || typeof item.name !== "string"
          ) {
            return refuse("Workflow call does not belong to this run");
          }
          const seq = item.seq as number;
          const json = JSON.stringify(item.value ?? null) ?? "null";
          // UTF-8 takes at most 3 bytes per UTF-16 unit: encode only when that bound is over the limit.
          const size = json.length * 3 <= MAX_STEP_BYTES ? json.length : new TextEncoder().encode(json).length;
          if (size > MAX_STEP_BYTES) {
            return lost(
              new InvalidInputError({
                message: `Step ${seq} "${item.name}" is ${size} bytes; a step records at most ${MAX_STEP_BYTES}`,
              }),
            );
          }
          if (fresh.some((f) => f.seq === seq)) return refuse(`Step ${seq} is checkpointed twice in one batch`);
          const prior = known.get(seq);
          if (prior) {
            const diverged = divergence(prior, seq, "step", item.name);
            if (diverged) return lost(diverged);
            continue;
          }
          const step: StepRecord = {
            seq,
            kind: "step",
            name: item.name,
            status: "done",
            value: item.value ?? null,
            startedAt: at,
            endedAt: at,
          };
          fresh.push(step);
        }
        // Only a batch that passed whole is known (and recorded): a refused one leaves nothing behind.
        for (const step of fresh) known.set(step.seq, step);
        if (trailing) {
          state.trailing.push(...fresh);
          return Promise.resolve(null);
        }
        if (!fresh.length) return Promise.resolve(null);
        // The workflow already holds the values; echoing them back would only copy them again.
        const start = takeStart(state.held);
        const steps = journal.stepsWrite(run.id, fresh);
        const commit = journal.submit(run.id, start ? [start.run, ...start.rest, steps] : [steps]);
        if (start) {
          state.held!.carriedBy(commit);
          dropTimer(state.held!);
        }
        return commit.then(() => null, lost);
      };

      /** Answer one call a running workflow makes of the host. */
      const handle = (
        run: RunRecord,
        agent: InstalledPlugin,
        known: Map<number, StepRecord>,
        state: PassState,
      ) =>
      (
        call: HostCall,
        trailing?: boolean,
      ): Promise<unknown> => {
        // A run that diverged from its journal goes no further, whatever its workflow made of the error.
        if (isDivergence(state.checkpointFailure)) return Promise.reject(wire(state.checkpointFailure));
        if (call.op === "checkpoints" || call.op === "checkpoint") {
          return checkpoints(run, known, state, call, trailing === true);
        }
        if (trailing) return Promise.resolve(null);
        if (call.op !== "approval") state.partial = true;
        const program = Effect.gen(function* () {
          // Nothing leaves a run before its start is durable.
          if (state.held) {
            yield* Effect.tryPromise({
              try: () => writeStart(state.held),
              catch: (e) => e as StoreError,
            });
          }
          if (
            call.runId !== run.id || !Number.isInteger(call.seq) || call.seq < 1 || call.seq >= UNDO_SEQ_BASE ||
            typeof call.name !== "string"
          ) {
            return yield* new InvalidInputError({ message: "Workflow call does not belong to this run" });
          }
          if (cancelling.has(run.id)) return yield* new RunSuspendedError({ message: "The run was cancelled" });
          // (Checkpoints never come here: `checkpoints` above checks their size.)
          const payload = "args" in call
            ? call.args
            : "item" in call
            ? call.item
            : "request" in call
            ? call.request
            : "input" in call
            ? call.input
            : null;
          const size = new TextEncoder().encode(JSON.stringify(payload) ?? "").length;
          if (size > MAX_STEP_BYTES) {
            return yield* new InvalidInputError({
              message: `Step ${call.seq} "${call.name}" is ${size} bytes; a step records at most ${MAX_STEP_BYTES}`,
            });
          }
          switch (call.op) {
            case "sleep":
              return yield* sleepCall(run, call, known.get(call.seq));
            case "approval":
              return yield* approvalCall(run, agent, call, known, state);
            case "child":
              return yield* childCall(run, agent, call, known.get(call.seq));
            case "effect":
              if (known.get(call.seq)?.status === "done") return known.get(call.seq)!.value;
              return yield* gateway.request({
                ...(run.pins ? { pins: run.pins } : {}),
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
              const diverged = divergence(prior, call.seq, "memory", call.name);
              if (diverged) return yield* diverged;
              const recorded = recordedOutcome(prior);
              if (recorded) return yield* recorded;
              const item = call.item;
              if (typeof item?.text !== "string" || typeof item.kind !== "string") {
                return yield* new InvalidInputError({ message: "A memory item needs text and kind" });
              }
              const outcome = yield* Effect.result(memory.remember({
                scope: `agent:${agent.name}`,
                kind: item.kind,
                text: item.text,
                tags: Array.isArray(item.tags) ? item.tags.filter((t) => typeof t === "string") : [],
                provenance: { runId: run.id, seq: call.seq, plugin: agent.name, source: `workflow:${run.workflow}` },
              }));
              return yield* recordOutcome(journal, run.id, call.seq, call.name, outcome);
            }
            case "memory.recall":
            case "memory.summarize":
            case "records.put":
            case "records.delete":
            case "records.get":
            case "records.query":
              return yield* answerMemoryCall({ journal, memory, records, audit }, run, agent, call, MAX_STEP_BYTES);
            case "model.generate":
              return yield* answerModelCall({ journal, host, models, audit, taint }, run, agent, call);
            default:
              return yield* new InvalidInputError({ message: "Unknown workflow call" });
          }
        });
        const noted = Effect.tapError(program, (error) =>
          Effect.sync(() => {
            if (isDivergence(error)) state.checkpointFailure ??= error;
          }));
        return Effect.runPromise(Effect.mapError(noted, wire)).catch((e) => {
          throw (e !== null && typeof e === "object" && "tag" in e) ? e : wire(e);
        });
      };

      // ---- Timers, approvals and child workflows (calls from a running workflow) ----

      /** Park the run (compare-and-set: only a running run parks) and put it in the queue if it wakes by time. */
      const park = Effect.fn("Orchestrator.park")(function* (
        run: RunRecord,
        patch: Partial<RunRecord>,
        state?: PassState,
      ) {
        const parked = yield* journal.updateRun(run.id, { ...patch, lease: undefined }, ["running"]);
        if (parked?.queuedAt !== undefined && parked.status === "sleeping") queue.add(parked);
        if (state && parked?.status === "waiting_approval" && parked.waitingFor?.approvalId) {
          state.parkedOn = { approvalId: parked.waitingFor.approvalId, run: parked };
        }
        return yield* new RunSuspendedError({ message: parked?.waitingFor?.reason ?? `Run is ${patch.status}` });
      });

      const sleepCall = Effect.fn("Orchestrator.sleep")(function* (
        run: RunRecord,
        call: Extract<HostCall, { op: "sleep" }>,
        prior: StepRecord | undefined,
      ) {
        const diverged = divergence(prior, call.seq, "timer", call.name);
        if (diverged) return yield* diverged;
        if (prior?.status === "done") return null;
        const now = yield* Clock.currentTimeMillis;
        const recordedWake = (prior?.value as { wakeAt?: number } | undefined)?.wakeAt;
        const wakeAt = recordedWake ??
          (typeof call.until === "number" ? call.until : now + Math.max(0, Number(call.ms) || 0));
        if (!Number.isFinite(wakeAt)) return yield* new InvalidInputError({ message: "A timer needs a finite time" });
        if (Math.abs(wakeAt) > MAX_TIME_MS) {
          return yield* new InvalidInputError({
            message: `Step ${call.seq}: a timer wakes by ${new Date(MAX_TIME_MS).toISOString()} at the latest`,
          });
        }
        const at = new Date(now).toISOString();
        if (wakeAt <= now) {
          yield* journal.recordStep(run.id, {
            seq: call.seq,
            kind: "timer",
            name: call.name,
            status: "done",
            value: { wakeAt },
            startedAt: prior?.startedAt ?? at,
            endedAt: at,
          });
          return null;
        }
        if (!prior) {
          yield* journal.putStep(run.id, {
            seq: call.seq,
            kind: "timer",
            name: call.name,
            status: "waiting",
            value: { wakeAt },
            startedAt: at,
          });
        }
        return yield* park(run, {
          status: "sleeping",
          wakeAt,
          queuedAt: wakeAt,
          waitingFor: { approvalId: "", reason: `Sleeping until ${new Date(wakeAt).toISOString()}` },
        });
      });

      const approvalCall = Effect.fn("Orchestrator.approval")(function* (
        run: RunRecord,
        agent: InstalledPlugin,
        call: Extract<HostCall, { op: "approval" }>,
        known: Map<number, StepRecord>,
        state: PassState,
      ) {
        const prior = known.get(call.seq);
        const diverged = divergence(prior, call.seq, "approval", call.name);
        if (diverged) return yield* diverged;
        if (prior?.status === "done") return prior.value;
        const request = call.request;
        if (typeof request?.message !== "string" || !request.message.trim() || request.message.length > 2000) {
          return yield* new InvalidInputError({ message: "ctx.approval needs a message of 1 to 2000 characters" });
        }
        const timeout = request.timeoutSeconds ?? 86_400;
        if (!Number.isFinite(timeout) || timeout <= 0 || timeout > 30 * 86_400) {
          return yield* new InvalidInputError({
            message: `ctx.approval timeoutSeconds must be between 1 and ${30 * 86_400}: got "${timeout}"`,
          });
        }
        if (prior?.approvalId) {
          const existing = yield* journal.getApproval(prior.approvalId);
          if (existing?.status === "pending") {
            return yield* park(run, {
              status: "waiting_approval",
              waitingFor: { approvalId: existing.id, reason: existing.message ?? "Waiting for approval" },
            }, state);
          }
          // Expired (or decided while the answer was being recorded): ask again below.
        }
        const now = yield* Clock.currentTimeMillis;
        const digest = yield* Effect.promise(() =>
          digestOf({ gate: request.message, details: request.details ?? null, runId: run.id, seq: call.seq })
        );
        const approval: ApprovalRecord = {
          id: timeOrderedId("apr", now),
          kind: "gate",
          runId: run.id,
          seq: call.seq,
          effect: "workflow.approval",
          plugin: agent.name,
          args: { message: request.message, ...(request.details === undefined ? {} : { details: request.details }) },
          digest,
          policyHash: "",
          rule: `workflow:${run.workflow}`,
          approver: typeof request.approver === "string" && request.approver ? request.approver : "operator",
          message: request.message,
          status: "pending",
          createdAt: new Date(now).toISOString(),
          expiresAt: new Date(now + timeout * 1000).toISOString(),
        };
        const waiting: StepRecord = {
          seq: call.seq,
          kind: "approval",
          name: call.name,
          status: "waiting_approval",
          approvalId: approval.id,
          startedAt: approval.createdAt,
        };
        yield* journal.putStep(run.id, waiting, approval);
        known.set(call.seq, waiting);
        yield* audit.append({
          type: "approval.requested",
          actor: "system",
          runId: run.id,
          data: { approvalId: approval.id, kind: "gate", message: request.message, approver: approval.approver },
        });
        return yield* park(run, {
          status: "waiting_approval",
          waitingFor: { approvalId: approval.id, reason: request.message },
        }, state);
      });

      const childCall = Effect.fn("Orchestrator.child")(function* (
        run: RunRecord,
        agent: InstalledPlugin,
        call: Extract<HostCall, { op: "child" }>,
        prior: StepRecord | undefined,
      ) {
        const diverged = divergence(prior, call.seq, "child", call.name);
        if (diverged) return yield* diverged;
        if (prior?.status === "done") return prior.value;
        const childId = `${run.id}.c${call.seq}`;
        let child = yield* journal.getRun(childId);
        if (!child && !prior) {
          // Least privilege: an agent starts its own workflows, or those its manifest lists in `children`.
          const own = agent.manifest.workflows.some((w) => w.name === call.workflow);
          if (!own && !(agent.manifest.children ?? []).includes(call.workflow)) {
            return yield* new InvalidInputError({
              message:
                `Agent "${agent.name}" cannot start workflow "${call.workflow}" as a child: it is not its own and its manifest does not list it in "children"`,
            });
          }
          if ((childId.match(/\.c\d+/g)?.length ?? 0) > MAX_CHILD_DEPTH) {
            return yield* new InvalidInputError({
              message: `Child workflows nest at most ${MAX_CHILD_DEPTH} deep: run "${run.id}" is already that deep`,
            });
          }
        }
        const at = yield* nowIso;
        if (!child) {
          if (!prior) {
            yield* journal.putStep(run.id, {
              seq: call.seq,
              kind: "child",
              name: call.name,
              status: "waiting",
              args: { workflow: call.workflow, runId: childId },
              startedAt: at,
            });
          }
          const started = yield* Effect.result(
            start(call.workflow, call.input, `run:${run.id}`, {
              runId: childId,
              priority: run.priority,
              trigger: { kind: "child", id: run.id },
              parent: { runId: run.id, seq: call.seq },
            }),
          );
          if (started._tag === "Failure") {
            // A child that cannot start is a failed child: the parent decides what to do about it.
            const value = { ok: false, error: toErrorBody(started.failure) };
            yield* journal.recordStep(run.id, {
              seq: call.seq,
              kind: "child",
              name: call.name,
              status: "done",
              value,
              startedAt: at,
              endedAt: at,
            });
            return value;
          }
          child = started.success;
        }
        if (TERMINAL.has(child.status)) return yield* childDone(run.id, call.seq, call.name, child);
        const parked = yield* Effect.flip(park(run, {
          status: "waiting_child",
          waitingFor: { approvalId: "", reason: `Waiting for child run ${childId} (${call.workflow})` },
        }));
        // The child may have ended between the look above and the park: then wake the parent now.
        const again = yield* journal.getRun(childId);
        if (again && TERMINAL.has(again.status)) yield* resumeParent(again);
        return yield* Effect.fail(parked);
      });

      /** Record a finished child's outcome in its parent's step (idempotent). */
      const childDone = Effect.fn("Orchestrator.childDone")(function* (
        parentId: string,
        seq: number,
        name: string,
        child: RunRecord,
      ) {
        const value = child.status === "succeeded" ? { ok: true, output: child.output ?? null } : {
          ok: false,
          error: child.error ??
            { tag: "ChildCancelled", message: `Child run ${child.id} was ${child.status}` },
        };
        const at = yield* nowIso;
        yield* journal.recordStep(parentId, {
          seq,
          kind: "child",
          name,
          status: "done",
          value,
          startedAt: child.createdAt,
          endedAt: at,
        });
        return value;
      });

      /**
       * Put a run back in the queue (compare-and-set: only if it is still `from`), ready at `readyAt` (default
       * now), and let the dispatcher see it. Returns the queued record, or undefined if the run moved meanwhile.
       */
      const requeue = Effect.fn("Orchestrator.requeue")(function* (
        runId: string,
        from: RunRecord["status"],
        options: { readyAt?: number; patch?: Partial<RunRecord> } = {},
      ) {
        const readyAt = options.readyAt ?? (yield* Clock.currentTimeMillis);
        const queued = yield* journal.updateRun(runId, {
          ...options.patch,
          status: "queued",
          queuedAt: readyAt,
          waitingFor: undefined,
          lease: undefined,
        }, [from]);
        if (queued) {
          queue.add(queued);
          pump();
        }
        return queued;
      });

      /** A child ended: record it in the parent and queue the parent if it waits for it. */
      const resumeParent = Effect.fn("Orchestrator.resumeParent")(function* (child: RunRecord) {
        if (!child.parentRunId || child.parentSeq === undefined) return;
        const step = yield* journal.getStep(child.parentRunId, child.parentSeq);
        if (step?.status !== "done") {
          yield* childDone(child.parentRunId, child.parentSeq, step?.name ?? `child:${child.workflow}`, child);
        }
        yield* requeue(child.parentRunId, "waiting_child");
      });

      // ---- Executing runs ----

      /** The agent itself died under the run (not an effect's connector whose failure the workflow passed on). */
      const isAgentCrash = (run: RunRecord, failure: { _tag: string; details?: unknown }) =>
        (failure._tag === "PluginCrashedError" || failure._tag === "PluginTimeoutError") &&
        (failure.details as { plugin?: unknown } | undefined)?.plugin === run.plugin &&
        (run.agentCrashes ?? 0) < MAX_AGENT_CRASHES;

      /** One pass of a run: replay against the journal until it ends or parks. (Untraced: once per run, hot.) */
      const pass = Effect.fnUntraced(function* (
        runId: string,
        fresh: RunRecord | undefined,
        held: HeldStart | undefined,
        /** The run's journal when this host knows it (a run resumed from `parkedJournals`). */
        given: Map<number, StepRecord> | undefined,
        /** Its workflow call, when it was posted already (`fresh` is then the run). */
        begun: BegunPass | undefined,
      ) {
        if (begun && fresh) {
          const outcome = yield* Effect.result(
            Effect.tryPromise({
              try: () => begun.outcome,
              catch: (error) => error as CallError | RunSuspendedError,
            }),
          );
          if (outcome._tag === "Failure") return yield* conclude(fresh, held, begun.state, outcome);
          const answer = outcome.success;
          if ("lost" in answer) return yield* Effect.fail(answer.lost);
          if ("value" in answer) return yield* conclude(fresh, held, begun.state, Result.succeed(answer.value));
          // Ended on the spot: what comes after the end.
          if (answer.ended.parentRunId) yield* resumeParent(answer.ended);
          notify(runId);
          return;
        }
        // A run this host just created or claimed is known; a run woken again is read back.
        const run = fresh ?? (yield* journal.getRun(runId));
        if (!run || run.status !== "running") return;
        // A run is pinned to the agent version it started with, even after an upgrade activates another.
        const agent = yield* Effect.result(host.get(run.plugin, run.pluginVersion));
        if (agent._tag === "Failure") {
          yield* finish(run, { trailing: [], ...(held ? { held } : {}) }, {
            status: "failed",
            error: toErrorBody(agent.failure),
          });
          return;
        }
        // A run that never ran has no journal yet: no need to read one. One read back is this pass's own: a write
        // an earlier pass lost (which refused that pass's later ones) no longer stands in its way.
        const steps = given
          ? [...given.values()]
          : fresh?.status === "running" && isNew.delete(runId)
          ? []
          : yield* Effect.tap(journal.steps(runId), () => Effect.sync(() => journal.startOver(runId)));
        const known = given ?? new Map(steps.map((s) => [s.seq, s]));
        const entries = workflowEntries(steps);
        const state: PassState = { trailing: [], known, ...(held ? { held } : {}) };
        const outcome = yield* Effect.result(
          host.runWorkflow(
            agent.success,
            run.workflow,
            runId,
            run.input,
            entries,
            handle(run, agent.success, known, state),
          ),
        );
        yield* conclude(run, held, state, outcome);
      });

      /** The journal a workflow call carries: its steps that are done. */
      const workflowEntries = (steps: Iterable<StepRecord>): JournalEntry[] => {
        const entries: JournalEntry[] = [];
        for (const s of steps) {
          if (s.status === "done") entries.push({ seq: s.seq, kind: s.kind, name: s.name, value: s.value });
        }
        return entries;
      };

      /** How a run whose workflow returned `output` ends. */
      const returned = (run: RunRecord, output: unknown): Pick<RunRecord, "status" | "output" | "error"> => {
        // An output too large for the run record would leave the run "running" forever: fail it instead.
        // (UTF-8 takes at most 3 bytes per UTF-16 unit: encode only when that bound is over the limit.)
        const json = JSON.stringify([output ?? null, run.input ?? null]);
        const size = json.length * 3 <= MAX_STEP_BYTES ? json.length : new TextEncoder().encode(json).length;
        return size <= MAX_STEP_BYTES ? { status: "succeeded", output } : {
          status: "failed",
          error: {
            tag: "PluginFailedError",
            message:
              `Workflow "${run.workflow}" returned ${size} bytes with its input; a run records at most ${MAX_STEP_BYTES}`,
            details: { plugin: run.plugin, size, limit: MAX_STEP_BYTES },
          },
        };
      };

      /** What a pass does once its workflow call answered: end the run, park it, or try it again later. */
      const conclude = Effect.fnUntraced(function* (
        run: RunRecord,
        held: HeldStart | undefined,
        state: PassState,
        outcome: Result.Result<unknown, CallError | RunSuspendedError>,
      ) {
        const runId = run.id;
        // A pass that does not end its run leaves it recorded, started (a run that ends shares that commit).
        const ends = !(stopping && outcome._tag === "Failure") && !cancelling.has(runId) &&
          !(outcome._tag === "Failure" && outcome.failure._tag === "RunSuspendedError") &&
          !(outcome._tag === "Failure" && isAgentCrash(run, outcome.failure));
        if (!ends) yield* Effect.tryPromise({ try: () => writeStart(held), catch: (e) => e as StoreError });
        if (stopping && outcome._tag === "Failure") {
          notify(runId);
        } else if (cancelling.has(runId)) {
          yield* finish(run, state, {
            status: "cancelled",
            cancelled: cancelling.get(runId),
            error: { tag: "RunCancelledError", message: "The run was cancelled" },
          });
        } else if (
          state.checkpointFailure !== undefined &&
          (outcome._tag === "Success" || (ends && isDivergence(state.checkpointFailure)))
        ) {
          // A checkpoint lost, or a divergence: the run fails with it, even if its workflow caught it.
          yield* finish(run, state, { status: "failed", error: toErrorBody(state.checkpointFailure) });
        } else if (outcome._tag === "Success") {
          yield* finish(run, state, returned(run, outcome.success));
        } else if (outcome.failure._tag === "RunSuspendedError") {
          // Parked on its gate, with a journal this pass knows whole: keep it, with the run and the approval
          // read once more and watched, for a quick resume (see `decideQuickly`).
          const on = state.parkedOn;
          const known = state.known;
          const gate = on && known && !state.partial && !cancelling.has(runId)
            ? yield* journal.watchGate(on.approvalId, runId)
            : undefined;
          if (
            known && gate?.approval?.status === "pending" && gate.run?.status === "waiting_approval" &&
            gate.run.waitingFor?.approvalId === on!.approvalId
          ) {
            forgetParked(runId);
            if (parkedJournals.size >= PARKED_JOURNALS) forgetParked(parkedJournals.keys().next().value!);
            parkedJournals.set(runId, {
              run: gate.run,
              approval: gate.approval,
              watch: gate.watch,
              steps: known,
            });
            parkedGates.set(on!.approvalId, runId);
          } else {
            gate?.watch.close();
            yield* ensureParked(runId);
          }
          notify(runId);
        } else if (isAgentCrash(run, outcome.failure)) {
          // The agent died under the run (its own bug, a neighbour's, or a restart): like a host crash, the
          // journal holds everything it did, so replay it after a pause — a few times, then give up.
          const crashes = (run.agentCrashes ?? 0) + 1;
          const now = yield* Clock.currentTimeMillis;
          yield* requeue(runId, "running", {
            readyAt: now + AGENT_CRASH_BACKOFF_MS * 4 ** (crashes - 1),
            patch: { agentCrashes: crashes },
          });
          yield* audit.append({
            type: "run.agent_crashed",
            actor: "system",
            runId,
            data: { error: toErrorBody(outcome.failure), attempt: crashes, of: MAX_AGENT_CRASHES },
          });
          notify(runId);
        } else {
          yield* finish(run, state, { status: "failed", error: toErrorBody(outcome.failure) });
        }
      });

      /**
       * A pass that suspended must leave its run parked. The Gateway writes an
       * approval and parks the run in two commits; if the host died between
       * them, the run comes back "running" with a pending approval and its
       * pass suspends again without parking. Park it here, on that approval.
       */
      const ensureParked = Effect.fn("Orchestrator.ensureParked")(function* (runId: string) {
        if (cancelling.has(runId)) return;
        const run = yield* journal.getRun(runId);
        if (!run) return;
        if (run.status === "waiting_approval" && run.waitingFor?.approvalId) {
          // Parked on an approval the operator decided while the run was still being parked: go on.
          const approval = yield* journal.getApproval(run.waitingFor.approvalId);
          if (approval && approval.status !== "pending") yield* requeue(runId, "waiting_approval");
          return;
        }
        if (run.status !== "running") return;
        const steps = yield* journal.steps(runId);
        for (const step of steps.reverse()) {
          if (!step.approvalId || (step.status !== "waiting_approval" && step.status !== "unknown_outcome")) continue;
          const approval = yield* journal.getApproval(step.approvalId);
          if (!approval) continue;
          const parked = approval.status === "pending"
            ? yield* journal.parkOnApproval(
              runId,
              approval.id,
              approval.message ?? `Waiting for approval ${approval.id}`,
            )
            : "decided";
          // Decided before the run could park on it: nothing will wake it, so run it again now.
          if (parked === "decided") yield* requeue(runId, "running");
          return;
        }
      });

      // Untraced: once per run, on the hot path (a traced call captures a stack and opens a span).
      const finish = Effect.fnUntraced(function* (
        run: RunRecord,
        /** What the pass holds back: its start, and checkpoints that came with the workflow's result. */
        state: PassState,
        patch: Pick<RunRecord, "status" | "output" | "error" | "cancelled">,
      ) {
        const { done, durable } = endRun(run, state, patch);
        yield* Effect.tryPromise({ try: () => durable, catch: (e) => e as StoreError });
        if (done.parentRunId) yield* resumeParent(done);
        notify(run.id);
      });

      /**
       * Record a run's end, in plain code (the run's end is on every run's critical path): `durable` resolves
       * once it is, with the view the next `wait` answers kept. What comes after (a parent's resumption,
       * waking the waiters) is the caller's.
       */
      const endRun = (
        run: RunRecord,
        state: PassState,
        patch: Pick<RunRecord, "status" | "output" | "error" | "cancelled">,
      ): { done: RunRecord; durable: Promise<void> } => {
        // This host holds the run's lease and is its only writer while it executes: a blind, grouped write.
        // (Parking and cancelling go through compare-and-set and end the pass without coming here.)
        const current = run;
        const now = Date.now();
        const done: RunRecord = {
          ...current,
          ...patch,
          waitingFor: undefined,
          lease: undefined,
          updatedAt: new Date(now).toISOString(),
        };
        // A start still held shares this commit: the run's record is then written once, in its final state.
        const start = takeStart(state.held);
        const { write } = audit.prepareNow({
          type: `run.${patch.status}`,
          actor: patch.cancelled?.by ?? "system",
          runId: run.id,
          data: { workflow: run.workflow, ...(patch.error ? { error: patch.error } : {}) },
        }, now);
        const steps = state.trailing.length ? [journal.stepsWrite(run.id, state.trailing)] : [];
        const commit = journal.submit(run.id, [
          // What was held but its run record: the one written below replaces it.
          ...(start?.rest ?? []),
          ...steps,
          journal.runWrite(start ? state.held!.prev : current, done),
          write,
        ]);
        pathMarks.at?.("submitted");
        if (start) {
          state.held!.carriedBy(commit);
          dropTimer(state.held!);
        }
        // The view `wait` will answer is built while the commit is in flight (after its batch was sent, which was
        // queued first); it is offered once durable.
        let view: RunView | undefined;
        const known = state.partial ? undefined : state.known;
        if (known) queueMicrotask(() => (view = { ...done, steps: [...known.values()].sort((a, b) => a.seq - b.seq) }));
        const durable = commit.then(() => {
          pathMarks.at?.("durable");
          if (!view) return;
          if (ended.size >= ENDED_VIEWS) ended.delete(ended.keys().next().value!);
          ended.set(run.id, { view, at: Date.now() });
        });
        return { done, durable };
      };

      /** Execute a claimed run until it ends or parks; runs again if it was woken meanwhile. */
      const execute = (
        run: RunRecord,
        held?: HeldStart,
        given?: Map<number, StepRecord>,
        begun?: BegunPass,
      ): void => {
        const slot = executing.get(run.id);
        if (slot) {
          slot.again = true;
          return;
        }
        const mine = { again: true, run };
        executing.set(run.id, mine);
        const loop: Effect.Effect<void> = Effect.gen(function* () {
          let fresh: RunRecord | undefined = run;
          let starting = held;
          let knownJournal = given;
          let call = begun;
          while (mine.again) {
            mine.again = false;
            const known = fresh;
            fresh = undefined;
            const first = starting;
            const journalGiven = knownJournal;
            const posted = call;
            starting = undefined;
            knownJournal = undefined;
            call = undefined;
            yield* pass(run.id, known, first, journalGiven, posted).pipe(
              Effect.catchCause((cause) => Effect.logError(`Run ${run.id} could not proceed`, cause)),
            );
          }
        }).pipe(Effect.ensuring(Effect.sync(() => {
          executing.delete(run.id);
          cancelling.delete(run.id);
          pump();
          if (executing.size === 0 && !queue.hasReady(Date.now())) { for (const w of idleWaiters) w(); }
        })));
        Effect.runFork(loop);
      };

      // ---- The run queue and dispatcher ----

      const limitOf = (run: Pick<RunRecord, "workflow">) => limits.get(run.workflow) ?? {};
      const learnLimits = (plugin: InstalledPlugin, decl: { name: string; concurrency?: number }) =>
        limits.set(decl.name, { workflow: decl.concurrency, plugin: plugin.manifest.concurrency });
      const countRunning = (pred: (r: Pick<RunRecord, "workflow" | "plugin">) => boolean) => {
        let n = 0;
        for (const e of executing.values()) if (pred(e.run)) n++;
        return n;
      };
      /** Whether limits let `run` start now (global, per workflow, per agent plugin). */
      const mayStart = (run: Pick<RunRecord, "workflow" | "plugin">) => {
        if (executing.size >= maxRuns) return false;
        const limits = limitOf(run);
        if (limits.workflow !== undefined && countRunning((r) => r.workflow === run.workflow) >= limits.workflow) {
          return false;
        }
        // A running workflow is a call in flight to its agent, which takes at most MAX_IN_FLIGHT at once.
        const perAgent = Math.min(limits.plugin ?? MAX_IN_FLIGHT, MAX_IN_FLIGHT);
        if (countRunning((r) => r.plugin === run.plugin) >= perAgent) return false;
        return true;
      };
      const lease = (now: number) => ({ owner: hostId, until: now + LEASE_MS });

      let stopping = false;
      let timer: ReturnType<typeof setTimeout> | undefined;
      let timerAt = Infinity;
      let pumping = false;
      /** Start every ready run the limits allow; set one timer for the next future one. */
      /**
       * Hold a slot for a run the limits let start, from that check until it executes (`executeReserved`) or the
       * write that starts it fails (`unreserve`): starts and decisions made meanwhile see the slot taken. `pump` holds
       * one the same way while its claim commits.
       */
      const reserve = (run: RunRecord) => executing.set(run.id, { again: false, run, claiming: true });
      /** Give back a slot `reserve` held, if the run did not execute (a no-op once it did). */
      const unreserve = (runId: string) => {
        if (!executing.get(runId)?.claiming) return;
        executing.delete(runId);
        pump();
      };
      /** Execute a run in the slot `reserve` held for it. */
      const executeReserved = (run: RunRecord) => {
        executing.delete(run.id);
        execute(run);
      };

      const pump = (): void => {
        if (pumping) return;
        pumping = true;
        if (stopping) return;
        const now = Date.now();
        const picks: QueueItem[] = [];
        for (const item of queue.ready(now)) {
          if (executing.has(item.run.id)) continue;
          if (!mayStart(item.run)) continue;
          queue.remove(item.run.id);
          picks.push(item);
          // Reserve the slot before the claim commits, so the limits see it.
          executing.set(item.run.id, { again: false, run: item.run, claiming: true });
        }
        pumping = false;
        for (const item of picks) claim(item);
        const next = queue.nextTime(now);
        if (next < timerAt) {
          if (timer !== undefined) clearTimeout(timer);
          timerAt = next;
          if (Number.isFinite(next)) {
            timer = setTimeout(() => {
              timer = undefined;
              timerAt = Infinity;
              pump();
            }, Math.min(Math.max(0, next - Date.now()), 2 ** 31 - 1));
          }
        }
      };

      /** Take a queued run: mark it running under this host's lease, then execute it. */
      const claim = (item: QueueItem) => {
        const program = Effect.gen(function* () {
          const current = yield* journal.getRun(item.run.id);
          if (!current || (current.status !== "queued" && current.status !== "sleeping")) return undefined;
          const now = yield* Clock.currentTimeMillis;
          const running: RunRecord = {
            ...current,
            status: "running",
            queuedAt: undefined,
            wakeAt: undefined,
            waitingFor: undefined,
            lease: lease(now),
            updatedAt: new Date(now).toISOString(),
          };
          yield* journal.saveRun(current, running);
          return running;
        });
        Effect.runPromise(program).then(
          (running) => {
            executing.delete(item.run.id);
            if (running) execute(running);
            else pump();
          },
          (error) => {
            executing.delete(item.run.id);
            console.error(`Keel could not claim run ${item.run.id}: ${String(error)}`);
            queue.add(item.run);
            pump();
          },
        );
      };

      // Renew the leases of executing runs (compare-and-set, so a run that parked meanwhile is left alone).
      const renew = setInterval(() => {
        const now = Date.now();
        for (const e of executing.values()) {
          if (e.claiming) continue;
          Effect.runPromise(Effect.ignore(journal.updateRun(e.run.id, { lease: lease(now) }, ["running"])));
        }
      }, LEASE_MS / 3);
      Deno.unrefTimer(renew);
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          // Plugins stop after this: a run cut off now is left running, for the next start to take back.
          stopping = true;
          clearInterval(renew);
          if (timer !== undefined) clearTimeout(timer);
          if (sweepTimer !== undefined) clearTimeout(sweepTimer);
        })
      );

      // ---- The service ----

      const view = (run: RunRecord) =>
        Effect.flatMap(journal.steps(run.id), (steps) =>
          // Only a run that recalled something opens memory to show it.
          steps.some((s) => s.kind === "memory" && s.name === "recall")
            ? Effect.map(memory.recalls(run.id), (recalls): RunView => ({ ...run, steps, recalls }))
            : Effect.succeed<RunView>({ ...run, steps }));
      const get = Effect.fnUntraced(function* (runId: string) {
        const run = yield* journal.getRun(runId);
        if (!run) return yield* new NotFoundError({ message: `No run with id "${runId}"` });
        return yield* view(run);
      });

      /** The connector version each effect the agent uses resolves to now: the run keeps them. */
      const pinsFor = (agent: InstalledPlugin) =>
        Effect.gen(function* () {
          const pins: Record<string, string> = {};
          for (const effect of agent.manifest.uses) {
            const found = yield* Effect.result(host.findEffect(effect));
            if (found._tag === "Success") pins[found.success.plugin.name] = found.success.plugin.version;
          }
          return pins;
        });

      /** Capped starts past the queue check whose run is not in the queue yet (see `start`). */
      let admitting = 0;
      const start: OrchestratorStart = Effect.fnUntraced(function* (
        workflow: string,
        input: unknown,
        actor: string,
        options: StartOptions & { parent?: { runId: string; seq: number } } = {},
      ) {
        if (options.runId !== undefined) {
          if (!/^[A-Za-z0-9_.:-]{1,200}$/.test(options.runId)) {
            return yield* new InvalidInputError({ message: `Run id "${options.runId}" is not a valid id` });
          }
          const existing = yield* journal.getRun(options.runId);
          if (existing) return existing;
        }
        // Checked before anything walks it: JSON of a value nested thousands deep overflows the stack.
        if (argsDepth(input, MAX_ARGS_DEPTH) > MAX_ARGS_DEPTH) {
          return yield* new InvalidInputError({
            message: `Input for workflow "${workflow}" nests deeper than ${MAX_ARGS_DEPTH} levels`,
          });
        }
        const inputBytes = jsonBytes(input);
        if (inputBytes === undefined) {
          return yield* new InvalidInputError({ message: `Input for workflow "${workflow}" must be JSON` });
        }
        if (inputBytes > MAX_RUN_INPUT_BYTES) {
          return yield* new PayloadTooLargeError({
            message:
              `Input for workflow "${workflow}" is ${inputBytes} bytes of JSON; a run takes at most ${MAX_RUN_INPUT_BYTES}`,
            details: { size: inputBytes, limit: MAX_RUN_INPUT_BYTES },
          });
        }
        const priority = options.priority ?? 5;
        if (!Number.isInteger(priority) || priority < 0 || priority > 9) {
          return yield* new InvalidInputError({
            message: `Priority must be an integer from 0 to 9: got "${priority}"`,
          });
        }
        if (options.notBefore !== undefined && !Number.isFinite(options.notBefore)) {
          return yield* new InvalidInputError({
            message: `Start time must be a finite time: got "${options.notBefore}"`,
          });
        }
        const { plugin, decl } = yield* host.findWorkflow(workflow);
        learnLimits(plugin, decl);
        const problems = yield* host.validate(plugin, `wf:${workflow}`, decl.input, input);
        if (problems.length) {
          return yield* new InvalidInputError({
            message: `Input for workflow "${workflow}" is invalid: ${problems[0]}`,
            details: { errors: problems },
          });
        }
        // After the checks a retry cannot fix: a start that is wrong hears why, not "try again later". Starts
        // admitted but not queued yet (their write is on its way) count too, so starts at once cannot overfill it.
        if (!options.capped) return yield* create(workflow, input, actor, options, plugin, priority);
        const queued = queue.waiting() + admitting;
        if (queued >= maxQueued) {
          return yield* new QueueFullError({
            message: `${queued} runs are queued (KEEL_MAX_QUEUED is ${maxQueued}); try again later`,
            details: { queued, limit: maxQueued },
          });
        }
        admitting++;
        // Counted until its run is in the queue, or until it takes a free slot at once: that run is never queued.
        let counted = true;
        const settle = () => {
          if (counted) {
            counted = false;
            admitting--;
          }
        };
        return yield* create(workflow, input, actor, options, plugin, priority, settle).pipe(
          Effect.ensuring(Effect.sync(settle)),
        );
      });

      /** `start` once its checks passed: the run is written, then executed or queued. */
      const create = Effect.fnUntraced(function* (
        workflow: string,
        input: unknown,
        actor: string,
        options: StartOptions & { parent?: { runId: string; seq: number } },
        plugin: InstalledPlugin,
        priority: number,
        /** Called once the run takes a free slot at once (it will not be queued). */
        runsAtOnce?: () => void,
      ) {
        const now = yield* Clock.currentTimeMillis;
        const at = new Date(now).toISOString();
        const base = {
          id: options.runId ?? runIdAt(now),
          workflow,
          plugin: plugin.name,
          pluginVersion: plugin.version,
          pins: yield* pinsFor(plugin),
          input,
          priority,
          ...(options.notBefore !== undefined ? { notBefore: options.notBefore } : {}),
          ...(options.trigger ? { trigger: options.trigger } : {}),
          ...(options.parent ? { parentRunId: options.parent.runId, parentSeq: options.parent.seq } : {}),
          createdAt: at,
          updatedAt: at,
        };
        const readyAt = Math.max(now, options.notBefore ?? now);
        // A free slot and no delay: start at once, claimed in the same write.
        const direct = readyAt <= now && !queue.size() && !executing.has(base.id) && mayStart(base as RunRecord);
        // Its slot is taken below before anything else runs (`execute`, `reserve`): it no longer counts as queued.
        if (direct) runsAtOnce?.();
        const run: RunRecord = direct
          ? { ...base, status: "running", lease: lease(now) }
          : { ...base, status: "queued", queuedAt: readyAt };
        const startedEvent = {
          type: "run.started",
          actor,
          runId: run.id,
          data: {
            workflow,
            plugin: plugin.name,
            version: plugin.version,
            ...(options.trigger ? { trigger: options.trigger } : {}),
            ...(options.notBefore !== undefined ? { notBefore: new Date(options.notBefore).toISOString() } : {}),
          },
        };
        if (options.runId === undefined) {
          // A fresh id cannot collide: the run and its audit event share one grouped commit — for a run that
          // executes at once, the commit of its first write (`HeldStart`). The caller hears back once it is durable.
          if (direct) {
            const held = holdStart(run, undefined, () => [audit.prepareNow(startedEvent, Date.now()).write]);
            isNew.add(run.id);
            execute(run, held);
            yield* Effect.tryPromise({ try: () => held.durable, catch: (e) => e as StoreError });
            return run;
          }
          const { write } = yield* audit.prepare(startedEvent);
          yield* journal.saveRun(undefined, run, [write]);
          queue.add(run);
          pump();
          return run;
        }
        // A given id may be taken: the run is created (compare-and-set) before it starts, its slot held meanwhile.
        if (direct) reserve(run);
        return yield* Effect.gen(function* () {
          const created = yield* Effect.result(journal.createRun(run));
          if (created._tag === "Failure") {
            // Two starts with the same run id raced: the other one won, and that run is the answer.
            const existing = yield* journal.getRun(options.runId!);
            if (existing) return existing;
            return yield* created.failure;
          }
          yield* audit.append(startedEvent);
          if (direct) {
            isNew.add(run.id);
            executeReserved(run);
          } else {
            queue.add(run);
            pump();
          }
          return run;
        }).pipe(Effect.ensuring(Effect.sync(() => direct && unreserve(run.id))));
      });

      /** Take a waiter's listener off its run; a run nobody waits for leaves `waiters` (and the sweep). */
      const unlisten = (runId: string, listener: () => void) => {
        const set = waiters.get(runId);
        if (!set) return;
        set.delete(listener);
        if (set.size === 0) waiters.delete(runId);
      };

      const wait = Effect.fnUntraced(function* (runId: string, seconds: number) {
        // A run that just ended here: its view, with no read and no clock.
        const ended = takeEnded(runId);
        if (ended) return ended;
        const deadline = (yield* Clock.currentTimeMillis) + Math.max(0, seconds) * 1000;
        for (;;) {
          // Listen before looking, so a run that ends between the look and the wait still wakes us.
          let woken = false;
          let wake = () => {
            woken = true;
          };
          const listener = () => wake();
          const justEnded = takeEnded(runId);
          if (justEnded) return justEnded;
          const set = waiters.get(runId) ?? new Set();
          set.add(listener);
          waiters.set(runId, set);
          armSweep();
          const looked = yield* Effect.result(get(runId));
          if (looked._tag === "Failure") {
            unlisten(runId, listener);
            return yield* Effect.fail(looked.failure);
          }
          const current = looked.success;
          const left = deadline - (yield* Clock.currentTimeMillis);
          // A run whose resumption is held (`HeldStart`) executes while the store still shows it parked.
          if ((current.status !== "running" && current.status !== "queued" && !holding.has(runId)) || left <= 0) {
            unlisten(runId, listener);
            return current;
          }
          if (woken) {
            unlisten(runId, listener);
            continue;
          }
          // Woken by `notify` (the run ended or parked, or the sweep saw it so) or by this wait's deadline.
          yield* Effect.callback<void>((resume) => {
            wake = () => resume(Effect.void);
            const timer = setTimeout(wake, left);
            return Effect.sync(() => {
              clearTimeout(timer);
              unlisten(runId, listener);
            });
          });
          // Woken by the deadline rather than by `notify`: this round's listener is still registered.
          unlisten(runId, listener);
        }
      });

      /** What a decision records: the decided approval, a workflow gate's answer in its journal, its audit event. */
      const decisionOf = (approval: ApprovalRecord, d: Decision, now: number) => {
        const decided: ApprovalRecord = {
          ...approval,
          status: d.approve ? "approved" : "denied",
          decidedBy: d.actor,
          decidedAt: new Date(now).toISOString(),
          ...(d.note ? { note: d.note } : {}),
          ...(approval.kind === "unknown_outcome" && d.resolution ? { resolution: d.resolution } : {}),
        };
        // A workflow's own gate is answered in its journal in the same write: the resumed run reads the answer.
        const answer: StepRecord | undefined = approval.kind === "gate"
          ? {
            seq: approval.seq,
            kind: "approval",
            name: "approval",
            status: "done",
            approvalId: approval.id,
            value: { approved: d.approve, actor: d.actor, ...(d.note ? { note: d.note } : {}), at: decided.decidedAt },
            startedAt: approval.createdAt,
            endedAt: decided.decidedAt,
          }
          : undefined;
        // Made when needed: a quick resumption calls the workflow first.
        const event = () => ({
          type: d.approve ? "approval.approved" : "approval.denied",
          actor: d.actor,
          runId: approval.runId,
          data: {
            approvalId: approval.id,
            effect: approval.effect,
            rule: approval.rule,
            approver: d.actor,
            ...(d.note ? { note: d.note } : {}),
            ...(decided.resolution ? { resolution: decided.resolution } : {}),
          },
        });
        return { decided, answer, event };
      };

      /**
       * `decide`'s quick path, in plain code: a workflow's own gate whose run parked here, its approval and run
       * watched and unchanged since (`Journal.watchGate`), pending, not expired, and the run free to execute at
       * once. The run goes on now from the journal its pass left here, and the decision rides on its first write
       * (`HeldStart`; the approval is reserved until it is durable). Anything else, or a cancel in flight: undefined,
       * and `decide` takes its checked path. `now` is `decide`'s clock.
       */
      const decideQuickly = (
        approvalId: string,
        d: Decision,
        now: number,
      ): { decided: ApprovalRecord; durable: Promise<void> } | undefined => {
        if (d.resolution !== undefined) return undefined; // refused on the checked path
        const runId = parkedGates.get(approvalId);
        const parked = runId === undefined ? undefined : parkedJournals.get(runId);
        if (!parked || !parked.watch.unchanged() || cancelsInFlight !== 0 || executing.has(parked.run.id)) {
          return undefined;
        }
        const { approval, run } = parked;
        if (
          approval.id !== approvalId || approval.status !== "pending" || approval.kind !== "gate" ||
          Date.parse(approval.expiresAt) <= now || run.status !== "waiting_approval" ||
          run.waitingFor?.approvalId !== approvalId || queue.size() > 0 || !mayStart(run) ||
          !journal.reserveApproval(approvalId, d.approve ? "approved" : "denied")
        ) {
          return undefined;
        }
        const { decided, answer, event } = decisionOf(approval, d, now);
        const answered = answer!;
        const resumedRun: RunRecord = {
          ...run,
          status: "running",
          waitingFor: undefined,
          lease: lease(now),
          updatedAt: decided.decidedAt!,
        };
        const known = new Map(parked.steps).set(answered.seq, answered);
        // The workflow is called first, when its agent is live: the rest is done while the Worker runs it.
        // (Nothing here awaits, so the pass's state is whole before the Worker can call.)
        const state: PassState = { trailing: [], known };
        const call = host.runWorkflowNow(
          resumedRun.plugin,
          resumedRun.pluginVersion,
          resumedRun.workflow,
          resumedRun.id,
          resumedRun.input,
          workflowEntries(known.values()),
          (agent) => handle(resumedRun, agent, known, state),
        );
        pathMarks.at?.("posted");
        forgetParked(run.id);
        // What the decision writes is prepared while the Worker runs the workflow (after the Worker's answer
        // this thread would start cold), its audit event hashed too. The event's place in the chain is taken
        // when it is written; its hash is made again then if another event took that place first.
        let prepared: ReadonlyArray<GroupWrite> | undefined;
        const prepare = () => {
          if (prepared) return prepared;
          const { write } = audit.seal(audit.draft(event()), now);
          write.ahead();
          return prepared = [journal.approvalWrite(decided), journal.stepsWrite(run.id, [answered]), write];
        };
        const held = holdStart(resumedRun, run, prepare);
        state.held = held;
        execute(
          resumedRun,
          held,
          known,
          call && {
            state,
            // A workflow that returned, with nothing in the way, ends its run here (what `conclude` would do):
            // the pass's fiber is not woken between the Worker's answer and the commit.
            outcome: call.then((value): BegunPass["outcome"] | { value: unknown } => {
              pathMarks.at?.("answered");
              if (cancelling.has(resumedRun.id) || state.checkpointFailure !== undefined) return { value };
              const { done, durable } = endRun(resumedRun, state, returned(resumedRun, value));
              return durable.then(() => ({ ended: done }), (error: StoreError) => ({ lost: error }));
            }),
          },
        );
        prepare();
        // Released once the decision is durable or lost, whatever becomes of the caller.
        const release = () => journal.releaseApproval(approvalId);
        held.durable.then(release, release);
        return { decided, durable: held.durable };
      };

      const decide = Effect.fnUntraced(function* (approvalId: string, d: Decision) {
        pathMarks.at?.("decide");
        if (d.note !== undefined && (typeof d.note !== "string" || d.note.length > MAX_NOTE_CHARS)) {
          return yield* new InvalidInputError({
            message: `A decision's note must be a string of at most ${MAX_NOTE_CHARS} characters`,
          });
        }
        const quick = decideQuickly(approvalId, d, yield* Clock.currentTimeMillis);
        if (quick) {
          // Answered as soon as the decision is durable: resumed from the commit's own callback, not through
          // further promise hops (the run's end, finished in the same commit, is handled after it).
          yield* Effect.callback<void, StoreError>((resume) => {
            quick.durable.then(() => resume(Effect.void), (error: StoreError) => resume(Effect.fail(error)));
          });
          return quick.decided;
        }
        // Decided by a quick decision whose write is on its way (the store still says pending).
        const other = journal.reservedAs(approvalId);
        if (other) {
          return yield* new ConflictError({
            message: `Approval "${approvalId}" is already ${other}`,
            details: { status: other },
          });
        }
        // A gate whose run parked here: its approval and run as watched since (no read), or in one read.
        const parkedRunId = parkedGates.get(approvalId);
        const cached = parkedRunId ? parkedJournals.get(parkedRunId) : undefined;
        const both = cached?.watch.unchanged()
          ? { approval: cached.approval, run: cached.run }
          : parkedRunId
          ? yield* journal.getApprovalAndRun(approvalId, parkedRunId)
          : undefined;
        const approval = both ? both.approval : yield* journal.getApproval(approvalId);
        if (!approval) return yield* new NotFoundError({ message: `No approval with id "${approvalId}"` });
        if (approval.status !== "pending") {
          return yield* new ConflictError({
            message: `Approval "${approvalId}" is already ${approval.status}`,
            details: { status: approval.status },
          });
        }
        const now = yield* Clock.currentTimeMillis;
        const run = both && approval.runId === parkedRunId ? both.run : yield* journal.getRun(approval.runId);
        const resume = run?.status === "waiting_approval" && run.waitingFor?.approvalId === approvalId;
        // Resume straight into a free slot (claimed in the same write), else through the queue.
        const direct = resume && !queue.size() && !executing.has(run!.id) && mayStart(run!);
        // Its slot is held until it executes, so decisions and starts made while this one commits see it taken.
        if (direct) reserve(run!);
        const runPatch = resume
          ? {
            run: {
              id: approval.runId,
              patch: direct
                ? { status: "running" as const, waitingFor: undefined, lease: lease(now) }
                : { status: "queued" as const, waitingFor: undefined, queuedAt: now },
            },
          }
          : undefined;
        const resumed = () => {
          if (!resume) return;
          if (direct) executeReserved({ ...run!, status: "running" });
          else {
            queue.add({ ...run!, queuedAt: now });
            pump();
          }
        };
        /** An undo's compensation: `keel undo` asks for it again, not the run, which has ended. */
        const compensation = approval.seq >= UNDO_SEQ_BASE;
        return yield* Effect.gen(function* () {
          if (Date.parse(approval.expiresAt) <= now) {
            // Too late for this one; the resumed run asks for a fresh approval of the same action.
            // Only if this call expired it (a cancel or another call may have moved the approval or its run first).
            if (yield* journal.transitionApproval({ ...approval, status: "expired" }, "pending", runPatch)) {
              yield* audit.append({
                type: "approval.expired",
                actor: "system",
                runId: approval.runId,
                data: { approvalId },
              });
              resumed();
            }
            return yield* new ConflictError({
              message: `Approval "${approvalId}" expired at ${approval.expiresAt}; ${
                compensation ? "undo the run again to ask for a new one" : "the run asks for a new one"
              }`,
              details: { status: "expired" },
            });
          }
          // A deny is always taken: it releases nothing, and the Gateway keeps it for this exact action under any
          // policy set (voiding it would let the run perform what the operator refused, if the new set allows it).
          const policyHash = approval.kind === "effect" && d.approve ? yield* gateway.policyHash : approval.policyHash;
          if (policyHash !== approval.policyHash) {
            // Bound to a policy set no longer in force, it could never release the effect (the Gateway would void
            // it when the run resumed): void it now and say so, rather than answer "approved" for nothing.
            // An undo's compensation is asked for by `keel undo`, not by the run (which has ended).
            const reason = compensation
              ? "policy changed: undo the run again to check the compensation under the new policy"
              : "policy changed: the run checks the action again under the new policy";
            const voided: ApprovalRecord = {
              ...approval,
              status: "invalidated",
              reason,
              invalidatedAt: new Date(now).toISOString(),
            };
            if (yield* journal.transitionApproval(voided, "pending", runPatch)) {
              yield* audit.append({
                type: "approval.invalidated",
                actor: "system",
                runId: approval.runId,
                data: {
                  approvalId,
                  was: "pending",
                  reason: "policy changed",
                  effect: approval.effect,
                  seq: approval.seq,
                  policyHash: approval.policyHash,
                  newPolicyHash: policyHash,
                },
              });
              resumed();
            }
            return yield* new ConflictError({
              message: `Approval "${approvalId}" was asked for under a policy that has changed since: ${
                compensation
                  ? "undo the run again: it checks the compensation under the new policy"
                  : "the run checks the action again under the new policy"
              } (and asks for a new approval if it still gates it)`,
              details: { status: "invalidated", reason },
            });
          }
          // A resolution says what became of an effect whose outcome is unknown: anywhere else it is a mix-up.
          if (d.resolution !== undefined && (!d.approve || approval.kind !== "unknown_outcome")) {
            return yield* new InvalidInputError({
              message: `A resolution is given only when approving an unknown outcome: approval "${approvalId}" is ${
                approval.kind === "unknown_outcome"
                  ? "being denied"
                  : `${approval.kind === "effect" ? "an effect" : "a gate"} approval`
              }`,
            });
          }
          if (
            d.approve && approval.kind === "unknown_outcome" && d.resolution !== "retry" && d.resolution !== "delivered"
          ) {
            return yield* new InvalidInputError({
              message: `Approval "${approvalId}" is about an unknown outcome: say resolution "delivered" or "retry"`,
            });
          }
          const { decided, answer, event } = decisionOf(approval, d, now);
          // The decision, the resumed run, the workflow's answer and the audit event: one commit.
          const ok = yield* journal.transitionApproval(decided, "pending", {
            ...runPatch,
            ...(answer ? { step: { runId: approval.runId, step: answer } } : {}),
            writes: () => [audit.prepareNow(event(), now).write],
          });
          if (!ok) {
            const now = yield* journal.getApprovalAndRun(approvalId, approval.runId);
            const quick = journal.reservedAs(approvalId);
            return yield* new ConflictError(
              quick
                ? { message: `Approval "${approvalId}" was decided by someone else first`, details: { status: quick } }
                : now.approval?.status === "pending" && now.run
                ? {
                  message:
                    `Run "${approval.runId}" is ${now.run.status} now: approval "${approvalId}" cannot resume it`,
                  details: { status: "pending", run: now.run.status },
                }
                : {
                  message: `Approval "${approvalId}" was decided by someone else first`,
                  details: { status: now.approval?.status },
                },
            );
          }
          resumed();
          return decided;
        }).pipe(Effect.ensuring(Effect.sync(() => direct && unreserve(run!.id))));
      });

      const cancel = (
        runId: string,
        actor: string,
        reason?: string,
      ): Effect.Effect<RunRecord, NotFoundError | ConflictError | StoreError> =>
        Effect.suspend(() => {
          // A decided gate's quick resumption writes its run blind: it must not start while a cancel reads or
          // writes that run (see `decideQuickly`).
          cancelsInFlight++;
          return cancelOnce(runId, actor, reason).pipe(Effect.ensuring(Effect.sync(() => cancelsInFlight--)));
        });
      const cancelOnce = Effect.fn("Orchestrator.cancel")(function* (runId: string, actor: string, reason?: string) {
        const run = yield* journal.getRun(runId);
        if (!run) return yield* new NotFoundError({ message: `No run with id "${runId}"` });
        if (TERMINAL.has(run.status)) {
          return yield* new ConflictError({
            message: `Run "${runId}" has already ended (${run.status})`,
            details: { status: run.status },
          });
        }
        const at = yield* nowIso;
        const cancelled = { by: actor, at, ...(reason ? { reason } : {}) };
        if (executing.has(runId) && (run.status === "running" || holding.has(runId))) {
          // Its workflow is in a Worker right now: its next call to the host stops it, and the pass records it.
          cancelling.set(runId, cancelled);
          yield* wait(runId, 10);
          // A workflow that returned without another call ended its run as it was: the cancel came too late.
          const after = yield* journal.getRun(runId);
          if (after && TERMINAL.has(after.status) && after.status !== "cancelled") {
            return yield* new ConflictError({
              message: `Run "${runId}" ${after.status} before the cancel took effect`,
              details: { status: after.status },
            });
          }
        } else {
          const done = yield* journal.updateRun(runId, {
            status: "cancelled",
            cancelled,
            waitingFor: undefined,
            lease: undefined,
            error: { tag: "RunCancelledError", message: "The run was cancelled" },
          }, [run.status]);
          if (!done) return yield* cancel(runId, actor, reason);
          queue.remove(runId);
          yield* audit.append({ type: "run.cancelled", actor, runId, data: { workflow: run.workflow, reason } });
          if (done.parentRunId) yield* resumeParent(done);
          notify(runId);
        }
        // Pending approvals of the run can no longer release anything.
        // Every pending one, however many there are (the API's list stops at its limit).
        for (const a of yield* journal.listApprovals({ status: "pending", limit: Infinity })) {
          if (a.runId !== runId) continue;
          yield* journal.transitionApproval(
            { ...a, status: "denied", decidedBy: actor, decidedAt: at, note: "The run was cancelled" },
            "pending",
          );
        }
        // Children die with their parent.
        for (const child of yield* journal.activeRuns) {
          if (child.parentRunId === runId) {
            yield* Effect.ignore(cancel(child.id, actor, `Parent run ${runId} was cancelled`));
          }
        }
        return (yield* journal.getRun(runId))!;
      });

      const recover = Effect.gen(function* () {
        let n = 0;
        yield* journal.sweepIndexes;
        for (const run of yield* journal.activeRuns) {
          const found = yield* Effect.result(host.findWorkflow(run.workflow));
          if (found._tag === "Success") learnLimits(found.success.plugin, found.success.decl);
          if (run.status === "running") {
            // Its lease belongs to a host that is gone (this one holds the data-dir lock now): take it back.
            yield* requeue(run.id, "running");
            n++;
          } else if (run.status === "queued" || run.status === "sleeping") {
            queue.add(run);
            if (run.status === "queued") n++;
          } else if (run.status === "waiting_child") {
            // A child's end and its parent's wake-up are two commits: a crash between them left the parent
            // waiting for a child that has ended. Wake it now, as the child's end would have.
            for (const step of yield* journal.steps(run.id)) {
              const childId = (step.args as { runId?: unknown } | undefined)?.runId;
              if (step.kind !== "child" || step.status === "done" || typeof childId !== "string") continue;
              const child = yield* journal.getRun(childId);
              if (child && TERMINAL.has(child.status)) yield* resumeParent(child);
            }
          }
        }
        pump();
        return n;
      });

      const idle = Effect.callback<void>((resume) => {
        if (executing.size === 0 && !queue.hasReady(Date.now())) return resume(Effect.void);
        const w = () => {
          idleWaiters.delete(w);
          resume(Effect.void);
        };
        idleWaiters.add(w);
      });

      return Orchestrator.of({ start, get, wait, decide, cancel, recover, idle });
    }),
  );
}

type OrchestratorStart = (
  workflow: string,
  input: unknown,
  actor: string,
  options?: StartOptions & { parent?: { runId: string; seq: number } },
) => Effect.Effect<
  RunRecord,
  NotFoundError | InvalidInputError | PayloadTooLargeError | QueueFullError | StoreError
>;

/** Bytes of `value`'s JSON in UTF-8, or undefined if it is not JSON (a cycle, a BigInt). */
const jsonBytes = (value: unknown): number | undefined => {
  let json: string;
  try {
    json = JSON.stringify(value ?? null);
  } catch {
    return undefined;
  }
  // UTF-8 takes at most 3 bytes per UTF-16 unit: encode only when that bound is over the limit.
  return json.length * 3 <= MAX_RUN_INPUT_BYTES ? json.length : new TextEncoder().encode(json).length;
};

/** SHA-256 (hex) of a value's JSON. */
const digestOf = async (value: unknown) =>
  Array.from(
    new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(JSON.stringify(value)))),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");

/** How often a run is replayed after its agent crashed or hung under it, before the run fails. */
const MAX_AGENT_CRASHES = 3;
/** The first pause before such a replay (then 4×, 16×). */
const AGENT_CRASH_BACKOFF_MS = 500;

/** How deep child workflows may nest. */
const MAX_CHILD_DEPTH = 8;

/** How long a claim on a run holds without renewal. */
const LEASE_MS = 30_000;

/**
 * What the dispatcher keeps of a queued run: enough to order it and check the limits. Its record (with its input, up
 * to 48 KiB) is read back when it is claimed, so thousands of delayed runs cost little memory.
 */
type QueuedRun = Pick<RunRecord, "id" | "workflow" | "plugin" | "priority" | "queuedAt"> & {
  readonly status?: RunRecord["status"];
};

interface QueueItem {
  readonly run: QueuedRun;
  readonly readyAt: number;
  readonly priority: number;
}

/**
 * This host's copy of the run queue (the KV index is the truth; this is what the dispatcher scans). Exported for its
 * test only.
 */
export const makeRunQueue = () => {
  const items = new Map<string, QueueItem>();
  /**
   * Per priority, the items in order of `readyAt` (then of arrival): `ready` takes a prefix of each, so a pass of the
   * dispatcher sorts nothing (with 20,000 queued runs, sorting them all on every start took 27–62 ms).
   */
  const buckets = new Map<number, QueueItem[]>();
  /** The first position in `list` whose item is ready after `at`. */
  const after = (list: ReadonlyArray<QueueItem>, at: number) => {
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (list[mid].readyAt <= at) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
  const drop = (item: QueueItem) => {
    const list = buckets.get(item.priority)!;
    let i = after(list, item.readyAt) - 1;
    while (list[i] !== item) i--;
    list.splice(i, 1);
    if (!list.length) buckets.delete(item.priority);
  };
  /** Runs held only as timers (`sleeping`): they wait for their time, not for a slot. */
  let sleepers = 0;
  const remove = (runId: string) => {
    const item = items.get(runId);
    if (!item) return;
    items.delete(runId);
    if (item.run.status === "sleeping") sleepers--;
    drop(item);
  };
  return {
    add(run: QueuedRun) {
      remove(run.id);
      const { id, workflow, plugin, priority, queuedAt, status } = run;
      if (status === "sleeping") sleepers++;
      const item: QueueItem = {
        run: { id, workflow, plugin, priority, queuedAt, ...(status === "sleeping" ? { status } : {}) },
        // A time that is not a number would break the order every lookup relies on: such a run is ready now.
        readyAt: Number.isFinite(queuedAt) ? queuedAt! : 0,
        priority: Number.isFinite(priority) ? priority! : 5,
      };
      items.set(id, item);
      const list = buckets.get(item.priority) ?? [];
      list.splice(after(list, item.readyAt), 0, item);
      buckets.set(item.priority, list);
    },
    remove,
    has: (runId: string) => items.has(runId),
    size: () => items.size,
    /** Runs that wait for a slot (or their start time): what `KEEL_MAX_QUEUED` caps. Sleeping runs are not counted. */
    waiting: () => items.size - sleepers,
    /** Items ready at `now`, best first: higher priority, then earlier, then first queued. */
    ready(now: number): QueueItem[] {
      const out: QueueItem[] = [];
      for (const p of [...buckets.keys()].sort((a, b) => b - a)) {
        const list = buckets.get(p)!;
        const n = after(list, now);
        for (let i = 0; i < n; i++) out.push(list[i]);
      }
      return out;
    },
    hasReady(now: number) {
      for (const list of buckets.values()) if (list[0].readyAt <= now) return true;
      return false;
    },
    /** The earliest ready time still in the future. */
    nextTime(now: number) {
      let next = Infinity;
      for (const list of buckets.values()) {
        const i = after(list, now);
        if (i < list.length && list[i].readyAt < next) next = list[i].readyAt;
      }
      return next;
    },
  };
};
