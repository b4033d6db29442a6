/**
 * @module
 * What a workflow may ask of memory and records (`ctx.memory`, `ctx.records`)
 * and what it gets back. Every call is one journaled step: the host answers
 * it once, and a replay after a crash gets the recorded answer, so a recall
 * replays exactly even if memory changed since. `compact` keeps a working
 * context under a budget by summarizing its older entries (deterministically,
 * on the host) and is itself only a step when it summarizes.
 */
import type { MemoryInput } from "./protocol.ts";
import { PluginError } from "./PluginError.ts";

/** The memory and records operations a workflow sends to the host, by the journal name each is recorded under. */
export const MEMORY_OPS = {
  "memory.recall": "recall",
  "memory.summarize": "summarize",
  "records.put": "records.put",
  "records.delete": "records.delete",
  "records.get": "records.get",
  "records.query": "records.query",
} as const;
/** One memory or records operation. */
export type MemoryOp = keyof typeof MEMORY_OPS;

/** Filters for `ctx.memory.recall`; the workflow always recalls its own agent's memory. */
export interface RecallOptions {
  readonly kind?: MemoryInput["kind"] | ReadonlyArray<MemoryInput["kind"]>;
  /** Items carrying all of these tags. */
  readonly tags?: ReadonlyArray<string>;
  /** 1 to 50; default 10. */
  readonly limit?: number;
  /** Created at or after / before (ISO 8601). */
  readonly since?: string;
  readonly until?: string;
  /** Provenance: written by this run, or from this source. */
  readonly runId?: string;
  readonly source?: string;
}

/** A recalled item, with its provenance and why it was returned. */
export interface RecalledMemory {
  readonly id: string;
  readonly kind: string;
  readonly text: string;
  readonly tags: ReadonlyArray<string>;
  readonly provenance: {
    readonly runId?: string;
    readonly seq?: number;
    readonly plugin?: string;
    readonly source: string;
    readonly contentHash: string;
    readonly embedder: string;
  };
  readonly createdAt: string;
  /** Reciprocal-rank-fusion score of vector and full-text search. */
  readonly score: number;
  readonly similarity?: number;
  readonly vectorRank?: number;
  readonly textRank?: number;
}

/** What `ctx.memory.recall` returns; `recallId` is its entry in the retrieval log. */
export interface RecallResult {
  readonly recallId: string;
  readonly items: ReadonlyArray<RecalledMemory>;
  /** Items were dropped from the end to fit the journal's step size. */
  readonly truncated?: boolean;
}

/** One entry of a working context: a message or a tool result. */
export interface ContextEntry {
  readonly role?: string;
  readonly text: string;
  /** What the entry is, cited by the summary (`step:4`, a message id …). */
  readonly ref?: string;
}

/** A summary, remembered as a memory item of kind `summary`. */
export interface SummaryResult {
  readonly id: string;
  readonly created: boolean;
  readonly text: string;
  /** How many entries it covers, and the refs of those it quotes. */
  readonly summarized: number;
  readonly quoted: ReadonlyArray<string>;
}

/** One structured record as stored: data, version and provenance. */
export interface RecordView<T = unknown> {
  readonly collection: string;
  readonly id: string;
  readonly data: T;
  readonly version: number;
  readonly provenance: {
    readonly runId?: string;
    readonly seq?: number;
    readonly plugin?: string;
    readonly source: string;
    readonly contentHash: string;
    readonly schemaHash: string;
  };
  readonly createdAt: string;
  readonly updatedAt: string;
}

/** `ctx.memory`. */
export interface WorkflowMemory {
  /** Remember an item (idempotent by content per agent), with this run and step as provenance. */
  remember(item: MemoryInput): Promise<{ id: string; created: boolean }>;
  /** Hybrid recall (vector + full text), logged with this run and step. */
  recall(query: string, options?: RecallOptions): Promise<RecallResult>;
  /** Summarize entries deterministically; the summary is remembered (kind `summary`) citing them. */
  summarize(
    entries: ReadonlyArray<ContextEntry>,
    options?: { readonly maxChars?: number; readonly tags?: ReadonlyArray<string> },
  ): Promise<SummaryResult>;
  /**
   * Keep a working context under `budgetChars`: if it is longer, summarize all
   * but the last `keepLast` entries and return the summary followed by them.
   */
  compact(
    entries: ReadonlyArray<ContextEntry>,
    options: {
      readonly budgetChars: number;
      readonly keepLast?: number;
      readonly maxChars?: number;
      readonly tags?: ReadonlyArray<string>;
    },
  ): Promise<ContextEntry[]>;
}

/**
 * `ctx.records`: collections the operator defined, validated against their schema on write. Only those the manifest
 * lists in `records` (`get`/`query` need `read`, `put`/`delete` need `write`): Keel refuses others with
 * `PermissionDeniedError`.
 */
export interface WorkflowRecords {
  put<T = unknown>(
    collection: string,
    id: string,
    data: T,
  ): Promise<{ record: RecordView<T>; created: boolean; changed: boolean }>;
  /**
   * Delete a record (needs `write`). `deleted` is false when there was none; `version` is the deletion's own
   * version: undoing the run puts the record back.
   */
  delete(collection: string, id: string): Promise<{ deleted: boolean; version?: number }>;
  get<T = unknown>(collection: string, id: string): Promise<RecordView<T> | null>;
  query<T = unknown>(
    collection: string,
    query?: { readonly where?: Readonly<Record<string, unknown>>; readonly after?: string; readonly limit?: number },
  ): Promise<{ records: ReadonlyArray<RecordView<T>>; truncated?: boolean }>;
}

/** Send one journaled memory or records call (replayed from the journal when recorded). */
export type MemoryCaller = (op: MemoryOp, args: unknown) => Promise<unknown>;

/** Build `ctx.memory` and `ctx.records` over the host call `call`; `remember` keeps its own wire shape. */
export const workflowMemory = (
  call: MemoryCaller,
  remember: WorkflowMemory["remember"],
): { memory: WorkflowMemory; records: WorkflowRecords } => {
  const memory: WorkflowMemory = {
    remember,
    recall: (query, options) => call("memory.recall", { query, ...options }) as Promise<RecallResult>,
    summarize: (entries, options) => call("memory.summarize", { entries, ...options }) as Promise<SummaryResult>,
    async compact(entries, options) {
      if (!Array.isArray(entries) || !(Number(options?.budgetChars) > 0)) {
        throw new PluginError("InvalidInputError", "compact needs a list of entries and options.budgetChars > 0");
      }
      const size = entries.reduce((n, e) => n + e.text.length, 0);
      if (size <= options.budgetChars) return [...entries];
      const keep = Math.max(0, Math.min(entries.length, options.keepLast ?? 4));
      const older = entries.slice(0, entries.length - keep);
      if (older.length === 0) return [...entries];
      const summary = await memory.summarize(older, { maxChars: options.maxChars, tags: options.tags });
      return [{ role: "summary", text: summary.text, ref: summary.id }, ...entries.slice(entries.length - keep)];
    },
  };
  const records: WorkflowRecords = {
    put: (collection, id, data) => call("records.put", { collection, id, data }) as never,
    delete: (collection, id) => call("records.delete", { collection, id }) as never,
    get: (collection, id) => call("records.get", { collection, id }) as never,
    query: (collection, query) => call("records.query", { collection, ...query }) as never,
  };
  return { memory, records };
};
