/**
 * @module
 * The run journal on Deno KV: runs, their steps, approvals, and the run queue
 * and active-runs indexes. The journal is the source of truth for a run:
 * after a crash the coordinator is replayed against it and completed steps
 * return their recorded results. State changes that others may race (a run
 * parking, a decision, an intent's claim) are compare-and-set; checkpoints
 * of the run this host executes are blind writes shared in a grouped commit
 * (`GroupCommit`), since this host is their only writer.
 */
import { Context, Effect, Layer } from "effect";
import { type GroupWrite, Kv, kvTry } from "../store/mod.ts";

/** A write to carry in a grouped commit (what `runWrite`, `stepsWrite` and `approvalWrite` make). */
export type { GroupWrite };
import { StoreError } from "../errors/mod.ts";
import type { ErrorBody } from "../errors/mod.ts";
import type { DecisionRecord } from "../policy/mod.ts";

export type { DecisionRecord } from "../policy/mod.ts";

/** Where a run is in its life. */
export type RunStatus =
  /** Waiting for a worker slot (or for its `notBefore` time). */
  | "queued"
  | "running"
  | "waiting_approval"
  /** Parked on a durable timer (`ctx.sleep`), resumed at `wakeAt`. */
  | "sleeping"
  /** Parked until a child workflow it started ends. */
  | "waiting_child"
  | "succeeded"
  | "failed"
  | "cancelled";

/** What started a run. */
export interface RunTrigger {
  readonly kind: "http" | "cli" | "cron" | "webhook" | "child" | "api";
  /** The schedule, hook or parent run that started it. */
  readonly id?: string;
}

/** One run of a workflow. */
export interface RunRecord {
  readonly id: string;
  readonly workflow: string;
  /** The agent plugin and the version the run is pinned to. */
  readonly plugin: string;
  readonly pluginVersion: string;
  readonly input: unknown;
  readonly status: RunStatus;
  readonly output?: unknown;
  readonly error?: ErrorBody;
  readonly waitingFor?: { readonly approvalId: string; readonly reason: string };
  /** Higher runs first among queued runs (0–9, default 5). */
  readonly priority?: number;
  /** Do not start before this time (epoch ms): delayed start. */
  readonly notBefore?: number;
  /** When a sleeping run wakes (epoch ms). */
  readonly wakeAt?: number;
  readonly trigger?: RunTrigger;
  /** The run that started this one as a child workflow, and the step of the parent that waits for it. */
  readonly parentRunId?: string;
  readonly parentSeq?: number;
  /** Connector versions this run is pinned to (connector name → version), fixed at start. */
  readonly pins?: Readonly<Record<string, string>>;
  /** Where it sits in the run queue (epoch ms it became ready) while `queued` or `sleeping`. */
  readonly queuedAt?: number;
  /** The host executing it and until when that claim holds (renewed while it runs). */
  readonly lease?: { readonly owner: string; readonly until: number };
  /** How often its agent crashed or hung under it (it is replayed a few times, then fails). */
  readonly agentCrashes?: number;
  /** Who cancelled it and why. */
  readonly cancelled?: { readonly by: string; readonly reason?: string; readonly at: string };
  readonly createdAt: string;
  readonly updatedAt: string;
}

/** One recorded step. An effect step moves intent → done (or waiting/unknown). */
export interface StepRecord {
  readonly seq: number;
  readonly kind: "step" | "effect" | "memory" | "model" | "timer" | "approval" | "child";
  readonly name: string;
  /** `waiting`: a timer or child workflow not yet done. */
  readonly status: "done" | "failed" | "waiting_approval" | "intent" | "unknown_outcome" | "waiting";
  readonly value?: unknown;
  readonly error?: ErrorBody;
  readonly approvalId?: string;
  readonly idempotencyKey?: string;
  readonly args?: unknown;
  readonly startedAt: string;
  readonly endedAt?: string;
  readonly latencyMs?: number;
  /** Calls of this effect made so far (retries included). */
  readonly attempts?: number;
  /** The last failed attempt's error, while the host retries (kept once it succeeds). */
  readonly lastError?: ErrorBody;
  /** When the next attempt starts (ISO time), while the host waits to retry. */
  readonly nextAttemptAt?: string;
}

/** Who holds an idempotency key: the first intent recorded for it (see `Journal.claimIntent`). */
export interface IntentClaim {
  readonly runId: string;
  readonly seq: number;
  readonly effect: string;
  readonly at: string;
}

/** A human gate on one exact action. */
export interface ApprovalRecord {
  readonly id: string;
  /** `effect`: a policy gate on an effect; `unknown_outcome`: did it happen?; `gate`: the workflow's own `ctx.approval`. */
  readonly kind: "effect" | "unknown_outcome" | "gate";
  readonly runId: string;
  readonly seq: number;
  readonly effect: string;
  readonly plugin: string;
  readonly args: unknown;
  /** SHA-256 of (effect, args, run, step, policy hash): the approval is only good for this action. */
  readonly digest: string;
  readonly policyHash: string;
  readonly rule: string;
  readonly approver: string;
  readonly message?: string;
  /** `invalidated`: Keel voided it before it was used (see `reason`); the run asks again for what it needs now. */
  readonly status: ApprovalStatus;
  readonly createdAt: string;
  readonly expiresAt: string;
  readonly decidedBy?: string;
  readonly decidedAt?: string;
  readonly note?: string;
  /** For `unknown_outcome`: what the operator chose. */
  readonly resolution?: "retry" | "delivered";
  /** Why Keel voided it (`invalidated`, or `expired` when found out of date at use): what happened and what comes next. */
  readonly reason?: string;
  /** When Keel voided it. */
  readonly invalidatedAt?: string;
}

/** Where an approval is in its life. */
export type ApprovalStatus = "pending" | "approved" | "denied" | "used" | "expired" | "invalidated";

/** Every approval status, as `GET /api/approvals?status=` accepts them. */
export const APPROVAL_STATUSES: ReadonlyArray<ApprovalStatus> = [
  "pending",
  "approved",
  "denied",
  "used",
  "expired",
  "invalidated",
];

const runKey = (id: string) => ["run", id];
/** Runs that have not ended, for recovery without scanning history (the value: when the run was created, ms). */
const activeKey = (id: string) => ["run_active", id];
/** Every run by when it was created: the run list's order (ids given by webhooks and schedules are not time-ordered). */
const createdKey = (run: Pick<RunRecord, "id" | "createdAt">) => ["run_created", Date.parse(run.createdAt), run.id];
/** Set once every run written before `createdKey` existed has its entry. */
const CREATED_INDEXED = ["meta", "run_created_index"];
/** The run queue: higher priority first, then the earliest ready time. */
const queueKey = (run: RunRecord) => ["runq", 9 - (run.priority ?? 5), run.queuedAt ?? 0, run.id];

/**
 * A fresh id: `<prefix>_`, 12 hex digits of `millis`, then 20 random ones. Time-ordered ids keep new
 * records (runs, approvals) next to the newest ones in the KV B-tree, so a commit of new records touches
 * few pages, and listing by id lists in creation order.
 */
export const timeOrderedId = (prefix: string, millis: number): string => {
  const random = crypto.getRandomValues(new Uint8Array(10));
  let hex = "";
  for (const byte of random) hex += byte.toString(16).padStart(2, "0");
  return `${prefix}_${Math.floor(millis).toString(16).padStart(12, "0").slice(-12)}${hex}`;
};

/** Runs `browseRuns` reads at most in one call when it cannot use an index. */
export const RUN_SCAN = 5000;

/** Every run status. */
export const RUN_STATUSES: ReadonlyArray<RunStatus> = [
  "queued",
  "running",
  "waiting_approval",
  "sleeping",
  "waiting_child",
  "succeeded",
  "failed",
  "cancelled",
];

/** Statuses a run never leaves. */
export const TERMINAL: ReadonlySet<RunStatus> = new Set(["succeeded", "failed", "cancelled"]);
const inQueue = (run: RunRecord | undefined) =>
  run !== undefined && (run.status === "queued" || run.status === "sleeping") && run.queuedAt !== undefined;

/**
 * Add the writes that store `next` (replacing `prev`) and keep its indexes right. An ended run leaves the
 * active-runs index through `ride` when it can (a later commit: `activeRuns` skips ended runs meanwhile).
 */
const writeRun = (
  op: Deno.AtomicOperation,
  prev: RunRecord | undefined,
  next: RunRecord,
  ride: (write: GroupWrite) => boolean,
) => {
  op.set(runKey(next.id), next);
  if (!prev) op.set(createdKey(next), true);
  if (inQueue(prev) && !(inQueue(next) && queueKey(prev!).join() === queueKey(next).join())) {
    op.delete(queueKey(prev!));
  }
  if (inQueue(next)) op.set(queueKey(next), true);
  // A run created already ended (its start and end in one commit) never had an active-run entry.
  if (TERMINAL.has(next.status)) {
    if (prev) {
      const key = activeKey(next.id);
      const leave: GroupWrite = { apply: (o) => o.delete(key), mutations: 1, bytes: 64 };
      if (!ride(leave)) leave.apply(op);
    }
  } else if (!prev || TERMINAL.has(prev.status)) op.set(activeKey(next.id), Date.parse(next.createdAt));
};

/** A queued run as the queue index holds it. */
export interface QueueEntry {
  readonly runId: string;
  readonly priority: number;
  readonly readyAt: number;
}
const stepKey = (runId: string, seq: number) => ["run_step", runId, seq];
/**
 * Completed checkpoints written together are stored as one record, an array,
 * under their first step's key plus `"steps"` (KV layout 2): a ten-step run is
 * one KV row, not ten. `getStep` reads own-key records only; checkpoints are
 * read back through `steps`.
 */
const chunkKey = (runId: string, firstSeq: number) => ["run_step", runId, firstSeq, "steps"];
/** Characters of JSON a step chunk carries at most (a Deno KV value holds 64 KiB; a single larger step goes alone). */
const STEP_CHUNK_CHARS = 24 * 1024;
const approvalKey = (id: string) => ["approval", id];
const intentKey = (idempotencyKey: string) => ["intent_claim", idempotencyKey];

/**
 * A watch on an approval and its run (`Journal.watchGate`). One host owns a
 * data dir and every write of a run or approval record goes through this
 * Journal, so while `unchanged()` holds, what `watchGate` read is what the
 * store holds: a caller may act on it without reading again. A write counts
 * from the moment it is built, committed or not (a failed one too).
 */
export interface GateWatch {
  unchanged(): boolean;
  /** Stop watching (idempotent). */
  close(): void;
}

/** The journal service. */
export class Journal extends Context.Service<Journal, {
  createRun(run: RunRecord): Effect.Effect<void, StoreError>;
  getRun(id: string): Effect.Effect<RunRecord | undefined, StoreError>;
  /** Several runs, read ten at a time (`undefined` where there is none), in the order of `ids`. */
  getRuns(ids: ReadonlyArray<string>): Effect.Effect<ReadonlyArray<RunRecord | undefined>, StoreError>;
  listRuns(filter: { status?: RunStatus; limit?: number }): Effect.Effect<RunRecord[], StoreError>;
  /**
   * Runs for an operator to look through, newest first (by creation time, then id: ids given by webhooks and
   * schedules are not time-ordered), up to `limit`, with `status` and `workflow` if given, from just after the run
   * `before` in that order (none if there is no such run). A status a run can still leave is read through the
   * active-runs index; otherwise at most `RUN_SCAN` runs are read per call, and `next` (the last run read) says where
   * to go on when the list may not be complete.
   */
  browseRuns(filter: {
    status?: RunStatus;
    workflow?: string;
    limit: number;
    before?: string;
  }): Effect.Effect<{ runs: RunRecord[]; next?: string }, StoreError>;
  /** Update a run; `expect` guards against racing writers (false when the status moved). */
  updateRun(
    id: string,
    patch: Partial<RunRecord>,
    expect?: ReadonlyArray<RunStatus>,
  ): Effect.Effect<RunRecord | undefined, StoreError>;
  /**
   * Store a run record through the group committer (no compare-and-set): only
   * for the host that executes the run. `prev` is what it replaces, for the indexes.
   */
  saveRun(
    prev: RunRecord | undefined,
    next: RunRecord,
    also?: ReadonlyArray<GroupWrite>,
  ): Effect.Effect<void, StoreError>;
  /** Record a step through the group committer (no compare-and-set): only for the run's executing host. */
  recordStep(runId: string, step: StepRecord, also?: ReadonlyArray<GroupWrite>): Effect.Effect<void, StoreError>;
  /** A run record's write (with its queue and active-run indexes), to carry in a grouped commit. */
  runWrite(prev: RunRecord | undefined, next: RunRecord): GroupWrite;
  /** Step records' write, to carry in a grouped commit (completed checkpoints are chunked: see `chunkKey`). */
  stepsWrite(runId: string, steps: ReadonlyArray<StepRecord>): GroupWrite;
  /**
   * Reserve an approval for a decision whose write is held back (it rides on
   * the resumed run's first write): until released, `transitionApproval`
   * refuses it, so that blind write cannot race another decision. False if
   * it is reserved already. One host owns a data dir, so this is the lock.
   * `decided` is what the held decision says (`reservedAs` answers it).
   */
  reserveApproval(id: string, decided: ApprovalRecord["status"]): boolean;
  releaseApproval(id: string): void;
  /** What the decision holding this approval's reservation decided, if one does. */
  reservedAs(id: string): ApprovalRecord["status"] | undefined;
  /** An approval record's write (and its pending index), to carry in a grouped commit. */
  approvalWrite(approval: ApprovalRecord): GroupWrite;
  /**
   * The hot path of a run's executing host, without an Effect per call: carry
   * `writes` in the next grouped commit, as one unit of the run `scope`.
   * Submitted synchronously, so later submissions commit after it; rejects
   * with a `StoreError`.
   */
  submit(scope: string, writes: ReadonlyArray<GroupWrite>): Promise<void>;
  /**
   * A pass of run `runId` starts from the journal it read back from the store: its writes are accepted again
   * after one of an earlier pass failed (which refuses the rest of that pass's writes; see `GroupCommit`).
   */
  startOver(runId: string): void;
  /** Runs that have not ended (queued, running, waiting or sleeping); drops index entries of ended runs. */
  readonly activeRuns: Effect.Effect<RunRecord[], StoreError>;
  /**
   * At start: drop entries a crash left in the pending-approvals index (a decided approval's removal rides on
   * a later commit). Returns how many. `activeRuns` drops the active-runs index's own stale entries.
   */
  readonly sweepIndexes: Effect.Effect<number, StoreError>;
  /** The run queue, in dispatch order. */
  readonly queue: Effect.Effect<QueueEntry[], StoreError>;
  steps(runId: string): Effect.Effect<StepRecord[], StoreError>;
  getStep(runId: string, seq: number): Effect.Effect<StepRecord | undefined, StoreError>;
  /** Record a completed step once; returns the record that won (an earlier one if it exists). */
  checkpoint(runId: string, step: StepRecord): Effect.Effect<StepRecord, StoreError>;
  /** Overwrite a step record (effect state transitions), optionally with its approval. */
  putStep(runId: string, step: StepRecord, approval?: ApprovalRecord): Effect.Effect<void, StoreError>;
  /**
   * Record an effect's intent only if no intent holds its idempotency key yet:
   * one atomic check-and-set of the key's claim and the step. Returns whether
   * this claim won, and the claim that holds the key.
   */
  claimIntent(
    runId: string,
    step: StepRecord & { idempotencyKey: string },
  ): Effect.Effect<{ won: boolean; holder: IntentClaim }, StoreError>;
  getApproval(id: string): Effect.Effect<ApprovalRecord | undefined, StoreError>;
  /**
   * Read a parked gate's approval and run, in order with the grouped writes,
   * and watch both records: the watch's `unchanged()` stays true until this
   * host writes either of them again (see `GateWatch`).
   */
  watchGate(
    approvalId: string,
    runId: string,
  ): Effect.Effect<
    { approval: ApprovalRecord | undefined; run: RunRecord | undefined; watch: GateWatch },
    StoreError
  >;
  /** An approval and a run in one read (when the caller knows which run it belongs to). */
  getApprovalAndRun(
    approvalId: string,
    runId: string,
  ): Effect.Effect<{ approval: ApprovalRecord | undefined; run: RunRecord | undefined }, StoreError>;
  /**
   * Park a running run on an approval, atomically with the approval still
   * pending: "parked"; the approval was decided meanwhile: "decided" (the run
   * is left running); the run is not running any more: "moved".
   */
  parkOnApproval(runId: string, approvalId: string, reason: string): Effect.Effect<
    "parked" | "decided" | "moved",
    StoreError
  >;
  /** Append a policy decision to the decision log (ordered by time). */
  recordDecision(decision: DecisionRecord): Effect.Effect<void, StoreError>;
  /** The decision log, oldest first. */
  listDecisions(filter: { limit?: number }): Effect.Effect<DecisionRecord[], StoreError>;
  /** Approvals, oldest first: at most `limit` (default 1000) of them, with `status` if given. */
  listApprovals(
    filter: { status?: ApprovalRecord["status"]; limit?: number },
  ): Effect.Effect<ApprovalRecord[], StoreError>;
  /** Move an approval from `from` to its new state atomically; false if someone else moved it first. */
  transitionApproval(
    approval: ApprovalRecord,
    from: ApprovalRecord["status"],
    also?: {
      run?: { id: string; patch: Partial<RunRecord> };
      step?: { runId: string; step: StepRecord };
      /** More writes for the same commit, made only once the checks passed (an audit event). */
      writes?: () => ReadonlyArray<GroupWrite>;
    },
  ): Effect.Effect<boolean, StoreError>;
}>()("keel/journal/Journal") {
  /** Journal on Deno KV. */
  static readonly layer = Layer.effect(
    Journal,
    Effect.gen(function* () {
      const { kv, group } = yield* Kv;
      const sizeOf = (value: unknown) => (JSON.stringify(value)?.length ?? 0) + 256;
      /** Live gate watches by record ("r:" + run id, "a:" + approval id). */
      const watches = new Map<string, Set<{ changed: boolean }>>();
      const touch = (key: string) => {
        const set = watches.size ? watches.get(key) : undefined;
        if (set) { for (const w of set) w.changed = true; }
      };
      /** `writeRun`, noted by the watches. */
      const putRun = (op: Deno.AtomicOperation, prev: RunRecord | undefined, next: RunRecord) => {
        touch(`r:${next.id}`);
        writeRun(op, prev, next, group.ride);
      };
      const runWrite = (prev: RunRecord | undefined, next: RunRecord): GroupWrite => {
        touch(`r:${next.id}`);
        return {
          apply: (op) => putRun(op, prev, next),
          mutations: 4,
          bytes: sizeOf(next),
        };
      };
      const stepsWrite = (runId: string, steps: ReadonlyArray<StepRecord>): GroupWrite => {
        // Completed checkpoints (written once, never changed) share chunk records; anything else has its own key.
        const chunks: StepRecord[][] = [];
        const singles: StepRecord[] = [];
        let chunk: StepRecord[] = [];
        let chunkChars = 0;
        let bytes = 0;
        for (const step of steps) {
          const size = sizeOf(step);
          bytes += size;
          if (step.kind !== "step" || step.status !== "done") {
            singles.push(step);
            continue;
          }
          if (chunk.length && chunkChars + size > STEP_CHUNK_CHARS) {
            chunks.push(chunk);
            chunk = [];
            chunkChars = 0;
          }
          chunk.push(step);
          chunkChars += size;
        }
        if (chunk.length) chunks.push(chunk);
        return {
          apply: (op) => {
            for (const c of chunks) op.set(chunkKey(runId, c[0].seq), c);
            for (const step of singles) op.set(stepKey(runId, step.seq), step);
          },
          mutations: chunks.length + singles.length,
          bytes,
        };
      };
      /** Tell each write whether the commit that carried it succeeded. */
      const settleAll = (writes: ReadonlyArray<GroupWrite>) => (ok: boolean) => {
        for (const w of writes) w.settled?.(ok);
      };
      const submit = (scope: string, writes: ReadonlyArray<GroupWrite>) =>
        group.submit({
          apply: (op) => {
            for (const w of writes) w.apply(op);
          },
          mutations: writes.reduce((n, w) => n + w.mutations, 0),
          bytes: writes.reduce((n, w) => n + w.bytes, 0),
          scope,
          settled: settleAll(writes),
        }).catch((cause) => {
          throw new StoreError({ message: `Cannot record run ${scope}: ${String(cause)}` });
        });
      const approvalWrite = (approval: ApprovalRecord): GroupWrite => {
        touch(`a:${approval.id}`);
        return {
          apply: (op) => {
            touch(`a:${approval.id}`);
            op.set(approvalKey(approval.id), approval);
            if (approval.status !== "pending") {
              // Out of the pending index, in a later commit when it can (`listApprovals` checks the status).
              const key = ["approval_pending", approval.id];
              const leave: GroupWrite = { apply: (o) => o.delete(key), mutations: 1, bytes: 64 };
              if (!group.ride(leave)) leave.apply(op);
            }
          },
          mutations: 2,
          bytes: sizeOf(approval),
        };
      };
      const reserved = new Map<string, ApprovalRecord["status"]>();
      /** Delete keys, 500 to a commit (index entries only: nothing checks them). */
      // Runs written before the creation-time index existed get their entries, once.
      yield* kvTry("Cannot index runs by creation time", async () => {
        if ((await kv.get(CREATED_INDEXED)).value) return;
        let op = kv.atomic();
        let n = 0;
        for await (const e of kv.list<RunRecord>({ prefix: ["run"] })) {
          op.set(createdKey(e.value), true);
          if (++n % 500 === 0) {
            await op.commit();
            op = kv.atomic();
          }
        }
        await op.set(CREATED_INDEXED, true).commit();
      });
      const deleteKeys = async (keys: ReadonlyArray<Deno.KvKey>) => {
        for (let i = 0; i < keys.length; i += 500) {
          const op = kv.atomic();
          for (const key of keys.slice(i, i + 500)) op.delete(key);
          await op.commit();
        }
      };
      return Journal.of({
        reserveApproval: (id, decided) => {
          if (reserved.has(id)) return false;
          reserved.set(id, decided);
          return true;
        },
        releaseApproval: (id) => void reserved.delete(id),
        reservedAs: (id) => reserved.get(id),
        approvalWrite,
        runWrite,
        stepsWrite,
        submit,
        startOver: (runId) => group.forgive(runId),
        createRun: (run) =>
          kvTry("Cannot record run", async () => {
            const op = kv.atomic().check({ key: runKey(run.id), versionstamp: null });
            putRun(op, undefined, run);
            if (!(await op.commit()).ok) throw new Error(`run "${run.id}" exists`);
          }),
        saveRun: (prev, next, also = []) =>
          kvTry("Cannot record run", () =>
            group.submit({
              apply: (op) => {
                putRun(op, prev, next);
                for (const w of also) w.apply(op);
              },
              mutations: 4 + also.reduce((n, w) => n + w.mutations, 0),
              bytes: sizeOf(next) + also.reduce((n, w) => n + w.bytes, 0),
              scope: next.id,
              settled: settleAll(also),
            })),
        recordStep: (runId, step, also = []) =>
          kvTry("Cannot checkpoint step", () =>
            group.submit({
              apply: (op) => {
                op.set(stepKey(runId, step.seq), step);
                for (const w of also) w.apply(op);
              },
              mutations: 1 + also.reduce((n, w) => n + w.mutations, 0),
              bytes: sizeOf(step) + also.reduce((n, w) => n + w.bytes, 0),
              scope: runId,
              settled: settleAll(also),
            })),
        activeRuns: kvTry("Cannot list runs", async () => {
          const ids: string[] = [];
          for await (const e of kv.list({ prefix: ["run_active"] })) ids.push(e.key[1] as string);
          const out: RunRecord[] = [];
          const stale: Deno.KvKey[] = [];
          for (let i = 0; i < ids.length; i += 10) {
            const got = await kv.getMany<RunRecord[]>(ids.slice(i, i + 10).map(runKey));
            got.forEach((g, j) => {
              if (g.value && !TERMINAL.has(g.value.status)) out.push(g.value);
              // An ended run's entry whose removal a crash lost (it rides on a later commit: see `writeRun`).
              // One still riding is removed twice, which changes nothing.
              else stale.push(activeKey(ids[i + j]));
            });
          }
          await deleteKeys(stale);
          return out;
        }),
        sweepIndexes: kvTry("Cannot sweep the indexes", async () => {
          // The active-runs index is repaired by `activeRuns`, which reads every entry's run anyway.
          const ids: string[] = [];
          for await (const e of kv.list({ prefix: ["approval_pending"] })) ids.push(e.key[1] as string);
          const stale: Deno.KvKey[] = [];
          for (let i = 0; i < ids.length; i += 10) {
            const got = await kv.getMany<ApprovalRecord[]>(ids.slice(i, i + 10).map(approvalKey));
            got.forEach((g, j) => g.value?.status !== "pending" && stale.push(["approval_pending", ids[i + j]]));
          }
          await deleteKeys(stale);
          return stale.length;
        }),
        queue: kvTry("Cannot read the run queue", async () => {
          const out: QueueEntry[] = [];
          for await (const e of kv.list({ prefix: ["runq"] })) {
            const [, inverted, readyAt, runId] = e.key as [string, number, number, string];
            out.push({ runId, priority: 9 - inverted, readyAt });
          }
          return out;
        }),
        getRun: (id) => kvTry("Cannot read run", async () => (await kv.get<RunRecord>(runKey(id))).value ?? undefined),
        getRuns: (ids) =>
          kvTry("Cannot read runs", async () => {
            const out: Array<RunRecord | undefined> = [];
            for (let i = 0; i < ids.length; i += 10) {
              for (const g of await kv.getMany<RunRecord[]>(ids.slice(i, i + 10).map(runKey))) {
                out.push(g.value ?? undefined);
              }
            }
            return out;
          }),
        listRuns: ({ status, limit }) =>
          kvTry("Cannot list runs", async () => {
            const out: RunRecord[] = [];
            for await (const e of kv.list<RunRecord>({ prefix: ["run"] })) {
              if (!status || e.value.status === status) out.push(e.value);
              if (limit && out.length >= limit) break;
            }
            return out;
          }),
        browseRuns: ({ status, workflow, limit, before }) =>
          kvTry("Cannot list runs", async () => {
            const wanted = (run: RunRecord | null | undefined): run is RunRecord =>
              !!run && (!status || run.status === status) && (!workflow || run.workflow === workflow);
            // Newest first by creation time, then id: where `before` was created is where the page starts.
            let from: [number, string] | undefined;
            if (before !== undefined) {
              const at = (await kv.get<RunRecord>(runKey(before))).value;
              if (!at) return { runs: [] };
              from = [Date.parse(at.createdAt), before];
            }
            const older = ([ms, id]: [number, string]) => !from || ms < from[0] || (ms === from[0] && id < from[1]);
            const runs: RunRecord[] = [];
            /** Read the runs of `ids` in order, ten at a time, at most `cap` of them. */
            const read = async (ids: AsyncIterable<string> | Iterable<string>, cap: number) => {
              let batch: string[] = [];
              let count = 0;
              const flush = async () => {
                const got = await kv.getMany<RunRecord[]>(batch.map(runKey));
                for (let j = 0; j < got.length; j++) {
                  if (wanted(got[j].value)) {
                    // One more than asked for says whether there is a next page.
                    if (runs.length === limit) return { runs, next: runs[limit - 1].id };
                    runs.push(got[j].value!);
                  }
                  if (++count >= cap) return { runs, next: batch[j] };
                }
                batch = [];
                return undefined;
              };
              for await (const id of ids) {
                batch.push(id);
                if (batch.length === 10) {
                  const done = await flush();
                  if (done) return done;
                }
              }
              return (batch.length ? await flush() : undefined) ?? { runs };
            };
            if (status && !TERMINAL.has(status)) {
              const entries: Array<[number, string]> = [];
              const unknown: string[] = [];
              for await (const e of kv.list<number | boolean>({ prefix: ["run_active"] })) {
                const id = e.key[1] as string;
                if (typeof e.value === "number") entries.push([e.value, id]);
                else unknown.push(id); // written before the entry held the run's creation time
              }
              for (let i = 0; i < unknown.length; i += 10) {
                const got = await kv.getMany<RunRecord[]>(unknown.slice(i, i + 10).map(runKey));
                got.forEach((g) => g.value && entries.push([Date.parse(g.value.createdAt), g.value.id]));
              }
              const ordered = entries.filter(older).sort((a, b) =>
                b[0] - a[0] || (a[1] < b[1] ? 1 : a[1] > b[1] ? -1 : 0)
              );
              return await read(ordered.map(([, id]) => id), Infinity);
            }
            const selector = from === undefined
              ? { prefix: ["run_created"] }
              : { prefix: ["run_created"], end: ["run_created", ...from] };
            async function* ids() {
              for await (const e of kv.list(selector, { reverse: true, batchSize: 100 })) yield e.key[2] as string;
            }
            return await read(ids(), RUN_SCAN);
          }),
        updateRun: (id, patch, expect) =>
          // In order with the grouped writes: it reads the run after every write submitted before it (a run's
          // end included), and no grouped write lands between its read and its commit.
          kvTry("Cannot update run", () =>
            group.exclusive(async () => {
              for (;;) {
                const cur = await kv.get<RunRecord>(runKey(id));
                if (!cur.value) return undefined;
                if (expect && !expect.includes(cur.value.status)) return undefined;
                const next = { ...cur.value, ...patch, updatedAt: new Date().toISOString() };
                const op = kv.atomic().check(cur);
                putRun(op, cur.value, next);
                if ((await op.commit()).ok) return next;
              }
            })),
        steps: (runId) =>
          kvTry("Cannot read steps", async () => {
            // One list finds both: a chunk's key extends its first step's key.
            const bySeq = new Map<number, StepRecord>();
            const chunked: StepRecord[] = [];
            for await (const e of kv.list<StepRecord | StepRecord[]>({ prefix: ["run_step", runId] })) {
              if (Array.isArray(e.value)) chunked.push(...e.value);
              else bySeq.set(e.value.seq, e.value);
            }
            // A step's own record wins over a chunk's copy (none is written twice today).
            for (const step of chunked) if (!bySeq.has(step.seq)) bySeq.set(step.seq, step);
            return [...bySeq.values()].sort((a, b) => a.seq - b.seq);
          }),
        getStep: (runId, seq) =>
          kvTry("Cannot read step", async () => (await kv.get<StepRecord>(stepKey(runId, seq))).value ?? undefined),
        checkpoint: (runId, step) =>
          kvTry("Cannot checkpoint step", async () => {
            const key = stepKey(runId, step.seq);
            const res = await kv.atomic().check({ key, versionstamp: null }).set(key, step).commit();
            if (res.ok) return step;
            return (await kv.get<StepRecord>(key)).value ?? step;
          }),
        putStep: (runId, step, approval) =>
          kvTry("Cannot record step", async () => {
            const op = kv.atomic().set(stepKey(runId, step.seq), step);
            if (approval) {
              touch(`a:${approval.id}`);
              op.set(approvalKey(approval.id), approval);
              if (approval.status === "pending") op.set(["approval_pending", approval.id], true);
            }
            await op.commit();
          }),
        claimIntent: (runId, step) =>
          kvTry("Cannot record intent", async () => {
            const key = intentKey(step.idempotencyKey);
            const claim: IntentClaim = { runId, seq: step.seq, effect: step.name, at: step.startedAt };
            const res = await kv.atomic().check({ key, versionstamp: null }).set(key, claim)
              .set(stepKey(runId, step.seq), step).commit();
            if (res.ok) return { won: true, holder: claim };
            const holder = (await kv.get<IntentClaim>(key)).value;
            if (!holder) throw new Error(`claim of idempotency key "${step.idempotencyKey}" vanished`);
            return { won: false, holder };
          }),
        recordDecision: (decision) =>
          kvTry("Cannot record decision", async () => {
            // Time first, then a random suffix: ordered, and never colliding across hosts.
            await kv.set(["decision", `${decision.at}#${crypto.randomUUID().slice(0, 8)}`], decision);
          }),
        listDecisions: ({ limit }) =>
          kvTry("Cannot list decisions", async () => {
            const out: DecisionRecord[] = [];
            for await (const e of kv.list<DecisionRecord>({ prefix: ["decision"] }, { limit: limit ?? 100_000 })) {
              out.push(e.value);
            }
            return out;
          }),
        parkOnApproval: (runId, approvalId, reason) =>
          kvTry("Cannot park run", async () => {
            for (;;) {
              const [run, approval] = await kv.getMany<[RunRecord, ApprovalRecord]>([
                runKey(runId),
                approvalKey(approvalId),
              ]);
              if (!run.value || run.value.status !== "running") return "moved";
              if (!approval.value || approval.value.status !== "pending") return "decided";
              const op = kv.atomic().check(run).check(approval);
              putRun(op, run.value, {
                ...run.value,
                status: "waiting_approval",
                lease: undefined,
                waitingFor: { approvalId, reason },
                updatedAt: new Date().toISOString(),
              });
              if ((await op.commit()).ok) return "parked";
            }
          }),
        watchGate: (approvalId, runId) =>
          kvTry("Cannot read approval", () =>
            // Alone, in order with the grouped writes: none is being committed while the watch starts and the
            // records are read, and every write built after this point is seen by the watch.
            group.exclusive(async () => {
              const flag = { changed: false };
              const keys = [`a:${approvalId}`, `r:${runId}`];
              for (const key of keys) {
                let set = watches.get(key);
                if (!set) watches.set(key, set = new Set());
                set.add(flag);
              }
              const watch: GateWatch = {
                unchanged: () => !flag.changed,
                close: () => {
                  for (const key of keys) {
                    const set = watches.get(key);
                    if (set?.delete(flag) && set.size === 0) watches.delete(key);
                  }
                },
              };
              try {
                const [approval, run] = await kv.getMany<[ApprovalRecord, RunRecord]>([
                  approvalKey(approvalId),
                  runKey(runId),
                ]);
                return { approval: approval.value ?? undefined, run: run.value ?? undefined, watch };
              } catch (error) {
                watch.close();
                throw error;
              }
            })),
        getApprovalAndRun: (approvalId, runId) =>
          kvTry("Cannot read approval", async () => {
            const [approval, run] = await kv.getMany<[ApprovalRecord, RunRecord]>([
              approvalKey(approvalId),
              runKey(runId),
            ]);
            return { approval: approval.value ?? undefined, run: run.value ?? undefined };
          }),
        getApproval: (id) =>
          kvTry("Cannot read approval", async () => (await kv.get<ApprovalRecord>(approvalKey(id))).value ?? undefined),
        listApprovals: ({ status, limit = 1000 }) =>
          kvTry("Cannot list approvals", async () => {
            const out: ApprovalRecord[] = [];
            if (status === "pending") {
              // The pending index may hold entries that a later commit takes out: read ten at a time until enough.
              const ids: string[] = [];
              for await (const e of kv.list({ prefix: ["approval_pending"] })) ids.push(e.key[1] as string);
              for (let i = 0; i < ids.length && out.length < limit; i += 10) {
                const got = await kv.getMany<ApprovalRecord[]>(ids.slice(i, i + 10).map(approvalKey));
                for (const g of got) if (g.value?.status === "pending" && out.length < limit) out.push(g.value);
              }
              return out;
            }
            for await (const e of kv.list<ApprovalRecord>({ prefix: ["approval"] })) {
              if (!status || e.value.status === status) out.push(e.value);
              if (out.length >= limit) break;
            }
            return out;
          }),
        transitionApproval: (approval, from, also) =>
          // In order with the grouped writes, so an audit event it carries keeps its place.
          kvTry("Cannot decide approval", () =>
            group.exclusive(async () => {
              // A decision held back for its resumed run's write has this approval (see `reserveApproval`).
              if (reserved.has(approval.id)) return false;
              // One read for both records.
              const [cur, run] = await kv.getMany<[ApprovalRecord, RunRecord]>([
                approvalKey(approval.id),
                runKey(also?.run?.id ?? approval.runId),
              ]);
              if (!cur.value || cur.value.status !== from) return false;
              // Again after the read: a decision may have reserved it meanwhile. From here to the commit nothing
              // awaits, so none can reserve it after this check without seeing this write (`watchGate`).
              if (reserved.has(approval.id)) return false;
              const op = kv.atomic().check(cur);
              approvalWrite(approval).apply(op);
              if (also?.run) {
                // Only a run still parked on this approval is resumed by it (a cancel may have ended it meanwhile).
                if (run.value?.status !== "waiting_approval" || run.value.waitingFor?.approvalId !== approval.id) {
                  return false;
                }
                putRun(op.check(run), run.value, {
                  ...run.value,
                  ...also.run.patch,
                  updatedAt: new Date().toISOString(),
                });
              }
              if (also?.step) op.set(stepKey(also.step.runId, also.step.step.seq), also.step.step);
              const writes = also?.writes?.() ?? [];
              for (const w of writes) w.apply(op);
              let ok = false;
              try {
                ok = (await op.commit()).ok;
              } finally {
                settleAll(writes)(ok);
              }
              return ok;
            })),
      });
    }),
  );
}
