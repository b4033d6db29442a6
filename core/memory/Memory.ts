/**
 * @module
 * Long-term memory: items with provenance, hybrid recall with a retrieval
 * log, deterministic summaries, and undoing a run's writes.
 *
 * - Every item carries provenance (run, step, plugin, source, time, content
 *   hash, embedder). Writes are idempotent by content hash per scope, and
 *   every write is kept (`memory_writes`), so undoing one run keeps an item
 *   another run also wrote.
 * - Recall fuses HNSW vector search and Postgres full-text search by
 *   reciprocal rank, filtered by kind, tags, time and provenance; every
 *   recall is logged (query, filters, returned ids, scores and ranks, run and
 *   step) in `recall_log`.
 * - `revertRun` removes what a run wrote to memory and to records.
 *
 * `Memory.layer` also provides `Records` and the `MemoryDb` they share.
 */
import { Context, Effect, Layer } from "effect";
import { type EmbeddingError, InvalidInputError, type StoreError } from "../errors/mod.ts";
import { KeelConfig } from "../config/mod.ts";
import { canonicalJson, sha256Hex } from "../manifest/mod.ts";
import { Embedder, embedderFromSetting } from "./Embedder.ts";
import { MemoryDb } from "./MemoryDb.ts";
import { Records } from "./Records.ts";
import { contentWords, storableProblem } from "./_text.ts";
import { fuseRanks } from "./fuse.ts";
import { MEMORY_KINDS, type MemoryKind, type RecallFilters, type RecallOptions, tagProblem } from "./recallOptions.ts";
import { type ContextEntry, summarizeContext, SUMMARY_DEFAULT_CHARS } from "./summarize.ts";

/** Where a memory came from. */
export interface Provenance {
  readonly runId?: string;
  readonly seq?: number;
  readonly plugin?: string;
  /** Which connector, input or actor: `workflow:onboard_client`, `operator` … */
  readonly source: string;
}

/** What a summary cites: the entries it covers and the step that made it. */
export interface Citation {
  readonly runId?: string;
  readonly seq?: number;
  readonly summarized: ReadonlyArray<string>;
  readonly quoted: ReadonlyArray<string>;
  /** SHA-256 of the summarized entries' canonical JSON. */
  readonly inputHash: string;
  readonly maxChars: number;
}

/** A stored memory item. */
export interface MemoryItem {
  readonly id: string;
  readonly scope: string;
  readonly kind: string;
  readonly text: string;
  readonly tags: string[];
  readonly provenance: Provenance & { readonly contentHash: string; readonly embedder: string };
  readonly cites?: Citation;
  readonly createdAt: string;
}

/** An item as a recall returns it, with why it was returned. */
export interface RecalledItem extends MemoryItem {
  /** Reciprocal-rank-fusion score. */
  readonly score: number;
  /** Cosine similarity to the query, when vector search found it. */
  readonly similarity?: number;
  /** 1-based rank in vector search and in full-text search, when found there. */
  readonly vectorRank?: number;
  readonly textRank?: number;
}

/** One recall's result; `id` is its retrieval-log entry. */
export interface Recall {
  readonly id: string;
  readonly items: RecalledItem[];
}

/** Who recalls: the operator, or a run's step. */
export interface RecallContext {
  readonly actor: string;
  readonly runId?: string;
  readonly seq?: number;
  readonly plugin?: string;
}

/** One retrieval-log entry, with the returned items' kind and text as they are now. */
export interface RecallLogEntry {
  readonly id: string;
  readonly runId?: string;
  readonly seq?: number;
  readonly plugin?: string;
  readonly actor: string;
  readonly query: string;
  readonly filters: RecallOptions;
  readonly embedder: string;
  readonly at: string;
  readonly results: ReadonlyArray<{
    readonly id: string;
    readonly score: number;
    readonly similarity?: number;
    readonly vectorRank?: number;
    readonly textRank?: number;
    readonly kind?: string;
    readonly text?: string;
    /** The item is gone (its run was undone). */
    readonly removed?: boolean;
  }>;
}

/** A memory item to write. */
export interface RememberInput {
  readonly scope: string;
  readonly kind: string;
  readonly text: string;
  readonly tags?: ReadonlyArray<string>;
  readonly provenance: Provenance;
  readonly cites?: Citation;
}

/** What `revertRun` undid. */
export interface RevertReport {
  readonly runId: string;
  /** Items removed, and items kept because another run or the operator also wrote them. */
  readonly memory: { readonly removed: string[]; readonly kept: string[] };
  /** Records removed (the run created them) and restored to their previous version. */
  readonly records: {
    readonly removed: Array<{ collection: string; id: string }>;
    readonly restored: Array<{ collection: string; id: string; version: number }>;
  };
}

/** Longest memory item, in characters. */
export const MAX_ITEM_CHARS = 16_000;
/** Most items a recall's any-word full-text search ranks (items holding every word are always ranked). */
export const TEXT_POOL = 2000;
/** Most entries one summary covers. */
export const MAX_SUMMARY_ENTRIES = 2000;

const ITEM_COLUMNS =
  "id, scope, kind, text, tags, content_hash, embedder, run_id, seq, plugin, source, cites, created_at";

const toItem = (r: Record<string, unknown>): MemoryItem => ({
  id: r.id as string,
  scope: r.scope as string,
  kind: r.kind as string,
  text: r.text as string,
  tags: r.tags as string[],
  provenance: {
    ...(r.run_id == null ? {} : { runId: r.run_id as string }),
    ...(r.seq == null ? {} : { seq: r.seq as number }),
    ...(r.plugin == null ? {} : { plugin: r.plugin as string }),
    source: r.source as string,
    contentHash: r.content_hash as string,
    embedder: r.embedder as string,
  },
  ...(r.cites == null ? {} : { cites: r.cites as Citation }),
  createdAt: new Date(r.created_at as string).toISOString(),
});

/** SQL conditions (and their parameters, appended to `params`) for recall filters. */
const whereOf = (f: RecallFilters, params: unknown[]): string[] => {
  const p = (v: unknown) => {
    params.push(v);
    return `$${params.length}`;
  };
  const c: string[] = [];
  if (f.scope) c.push(`scope = ${p(f.scope)}`);
  if (f.kind?.length) c.push(`kind = any(${p([...f.kind])}::text[])`);
  if (f.tags?.length) c.push(`tags @> ${p([...f.tags])}::text[]`);
  if (f.since) c.push(`created_at >= ${p(f.since)}::timestamptz`);
  if (f.until) c.push(`created_at < ${p(f.until)}::timestamptz`);
  if (f.runId) c.push(`run_id = ${p(f.runId)}`);
  if (f.plugin) c.push(`plugin = ${p(f.plugin)}`);
  if (f.source) c.push(`source = ${p(f.source)}`);
  return c;
};

const round6 = (x: number) => Math.round(x * 1e6) / 1e6;
const hex = (text: string) => Effect.promise(() => sha256Hex(text));

/** The memory service. */
export class Memory extends Context.Service<Memory, {
  /** Write one item (idempotent by content hash per scope); `created` is false when it was already there. */
  remember(
    item: RememberInput,
  ): Effect.Effect<{ id: string; created: boolean }, StoreError | InvalidInputError | EmbeddingError>;
  /** Write several items with one batch of embeddings. */
  rememberAll(
    items: ReadonlyArray<RememberInput>,
  ): Effect.Effect<Array<{ id: string; created: boolean }>, StoreError | InvalidInputError | EmbeddingError>;
  /** One item by id. */
  get(id: string): Effect.Effect<MemoryItem | undefined, StoreError>;
  /** Hybrid recall (vector + full text, fused by reciprocal rank), logged in the retrieval log. */
  recall(
    query: string,
    options: RecallOptions,
    context: RecallContext,
  ): Effect.Effect<Recall, StoreError | InvalidInputError | EmbeddingError>;
  /** What a run recalled, in step order. */
  recalls(runId: string): Effect.Effect<RecallLogEntry[], StoreError>;
  /** Summarize a working context deterministically and remember the summary (kind `summary`) with its citations. */
  summarize(input: {
    readonly scope: string;
    readonly entries: ReadonlyArray<ContextEntry>;
    readonly maxChars?: number;
    readonly tags?: ReadonlyArray<string>;
    readonly provenance: Provenance;
  }): Effect.Effect<
    { id: string; created: boolean; text: string; summarized: number; quoted: ReadonlyArray<string> },
    StoreError | InvalidInputError | EmbeddingError
  >;
  /** Undo a run's memory and record writes, keeping what others also wrote. */
  revertRun(runId: string): Effect.Effect<RevertReport, StoreError>;
}>()("keel/memory/Memory") {
  /** Memory and `Records` over PGlite with pgvector (`MemoryDb`), embedding with the `Embedder` reference. */
  static readonly layer: Layer.Layer<Memory | Records | MemoryDb, StoreError | InvalidInputError, KeelConfig> = Layer
    .mergeAll(
      Layer.effect(Memory, Effect.suspend(() => makeMemory)),
      Records.layer,
    ).pipe(Layer.provideMerge(MemoryDb.layer));
}

const makeMemory = Effect.gen(function* () {
  const db = yield* MemoryDb;
  const config = yield* KeelConfig;
  // The configured embedder (`KEEL_EMBEDDER`) wins; otherwise the `Embedder` reference (offline unless provided).
  const configured = config.embedder === undefined
    ? undefined
    : embedderFromSetting(config.embedder, config.ollamaHost ?? "http://127.0.0.1:11434");
  if (config.embedder !== undefined && !configured) {
    return yield* new InvalidInputError({
      message: `KEEL_EMBEDDER must be "offline", "ollama" or "ollama:MODEL": got "${config.embedder}"`,
    });
  }
  const embedder = configured ?? (yield* Embedder);

  const checkItem = (item: RememberInput): InvalidInputError | undefined => {
    const bad = (message: string) => new InvalidInputError({ message });
    if (!MEMORY_KINDS.includes(item.kind as MemoryKind)) {
      return bad(`A memory item's kind must be one of ${MEMORY_KINDS.join(", ")}: got ${JSON.stringify(item.kind)}`);
    }
    if (typeof item.text !== "string" || item.text.trim() === "") return bad("A memory item needs non-empty text");
    if (item.text.length > MAX_ITEM_CHARS) {
      return bad(`A memory item is ${item.text.length} characters; at most ${MAX_ITEM_CHARS}`);
    }
    const problem = item.tags === undefined ? undefined : tagProblem(item.tags);
    if (problem) return bad(problem);
    const unstorable = storableProblem([item.text, item.tags ?? [], item.cites ?? []]);
    return unstorable ? bad(`A memory item ${unstorable}`) : undefined;
  };

  const rememberAll = Effect.fn("Memory.rememberAll")(function* (items: ReadonlyArray<RememberInput>) {
    for (const item of items) {
      const problem = checkItem(item);
      if (problem) return yield* problem;
    }
    const prepared: Array<{ item: RememberInput; contentHash: string; id: string }> = [];
    for (const item of items) {
      const contentHash = yield* hex(`${item.kind}\n${item.text}`);
      const id = `mem_${(yield* hex(`${item.scope}\n${contentHash}`)).slice(0, 24)}`;
      prepared.push({ item, contentHash, id });
    }
    // Embed only what is new: with a model, every text costs a call.
    const existing = new Set(
      yield* db.run(
        "Cannot read memory",
        async (pg) =>
          (await pg.query<{ id: string }>("select id from memory_items where id = any($1::text[])", [
            prepared.map((p) => p.id),
          ])).rows.map((r) => r.id),
      ),
    );
    const fresh = [...new Map(prepared.filter((p) => !existing.has(p.id)).map((p) => [p.id, p])).values()];
    const vectors = fresh.length ? yield* embedder.embed(fresh.map((p) => p.item.text)) : [];
    const vectorOf = new Map(fresh.map((p, i) => [p.id, vectors[i]]));
    return yield* db.run("Cannot write memory", (pg) =>
      pg.transaction(async (tx) => {
        const out: Array<{ id: string; created: boolean }> = [];
        for (const { item, contentHash, id } of prepared) {
          const vector = vectorOf.get(id);
          let created = false;
          if (vector) {
            const res = await tx.query(
              `insert into memory_items (id, scope, kind, text, tags, content_hash, embedder, embedding, run_id, seq, plugin, source, cites)
               values ($1,$2,$3,$4,$5,$6,$7,$8::vector,$9,$10,$11,$12,$13::jsonb)
               on conflict (scope, content_hash) do nothing returning id`,
              [
                id,
                item.scope,
                item.kind,
                item.text,
                [...(item.tags ?? [])],
                contentHash,
                embedder.name,
                JSON.stringify(vector),
                item.provenance.runId ?? null,
                item.provenance.seq ?? null,
                item.provenance.plugin ?? null,
                item.provenance.source,
                item.cites ? JSON.stringify(item.cites) : null,
              ],
            );
            created = res.rows.length === 1;
            if (created) vectorOf.delete(id);
          }
          const tags = [...(item.tags ?? [])];
          await tx.query(
            `insert into memory_writes (item_id, run_id, seq, plugin, source, tags) values ($1,$2,$3,$4,$5,$6)
             on conflict do nothing`,
            [
              id,
              item.provenance.runId ?? null,
              item.provenance.seq ?? null,
              item.provenance.plugin ?? null,
              item.provenance.source,
              tags,
            ],
          );
          // The same text written again keeps one item, which carries every write's tags.
          if (!created && tags.length) {
            await tx.query(
              `update memory_items set tags = array(select distinct unnest(tags || $2::text[]) order by 1)
               where id = $1 and not tags @> $2::text[]`,
              [id, tags],
            );
          }
          out.push({ id, created });
        }
        return out;
      }));
  });

  const get = Effect.fn("Memory.get")(function* (id: string) {
    const rows = yield* db.run(
      "Cannot read memory",
      async (pg) =>
        (await pg.query<Record<string, unknown>>(`select ${ITEM_COLUMNS} from memory_items where id = $1`, [id])).rows,
    );
    return rows[0] ? toItem(rows[0]) : undefined;
  });

  const recall = Effect.fn("Memory.recall")(function* (query: string, options: RecallOptions, context: RecallContext) {
    if (typeof query !== "string" || query.trim() === "") {
      return yield* new InvalidInputError({ message: 'A recall needs a non-empty "query" string' });
    }
    // Recalls are logged (`recall_log`): a query Postgres cannot store is refused before it runs.
    const unstorable = storableProblem(query);
    if (unstorable) return yield* new InvalidInputError({ message: `A recall's query ${unstorable}` });
    const limit = options.limit ?? 10;
    const depth = Math.min(200, Math.max(50, limit * 5));
    const [vector] = yield* embedder.embed([query]);
    const terms = contentWords(query).slice(0, 32);
    const found = yield* db.run("Cannot recall memory", async (pg) => {
      const vp: unknown[] = [JSON.stringify(vector), embedder.name];
      const vWhere = ["embedder = $2", ...whereOf(options, vp)];
      vp.push(depth);
      const byVector = (await pg.query<{ id: string; distance: number }>(
        `select id, embedding <=> $1::vector as distance from memory_items where ${vWhere.join(" and ")}
         order by embedding <=> $1::vector limit $${vp.length}`,
        vp,
      )).rows.map((r) => ({ id: r.id, distance: Number(r.distance) }))
        // A query with no words embeds as the zero vector, whose cosine distance to anything is NaN: no match.
        .filter((r) => Number.isFinite(r.distance))
        // Iterative index scans return rows in relaxed order: put them in exact order.
        .sort((a, b) => a.distance - b.distance || (a.id < b.id ? -1 : 1));
      // Items holding every query word first (selective, so cheap), then items holding any of them: ranking
      // every item that shares one common word would cost a scan of the table, so that pool is capped.
      const byText: string[] = [];
      for (const [op, pool] of [[" & ", undefined], [" | ", TEXT_POOL]] as const) {
        if (terms.length === 0 || byText.length >= depth || (op === " | " && terms.length === 1)) break;
        const tp: unknown[] = [terms.join(op)];
        const tWhere = ["tsv @@ to_tsquery('simple', $1)", ...whereOf(options, tp)];
        tp.push(depth);
        const matches = `select id, tsv from memory_items where ${tWhere.join(" and ")}${pool ? ` limit ${pool}` : ""}`;
        const found = (await pg.query<{ id: string }>(
          `select id from (${matches}) m order by ts_rank(tsv, to_tsquery('simple', $1)) desc, id limit $${tp.length}`,
          tp,
        )).rows.map((r) => r.id);
        for (const id of found) if (!byText.includes(id) && byText.length < depth) byText.push(id);
      }
      const fused = fuseRanks([byVector.map((r) => r.id), byText]).slice(0, limit);
      const rows = fused.length
        ? (await pg.query<Record<string, unknown>>(
          `select ${ITEM_COLUMNS} from memory_items where id = any($1::text[])`,
          [fused.map((f) => f.id)],
        )).rows
        : [];
      return { byVector, fused, rows };
    });
    const rowOf = new Map(found.rows.map((r) => [r.id as string, r]));
    const distanceOf = new Map(found.byVector.map((r) => [r.id, r.distance]));
    const items: RecalledItem[] = found.fused.filter((f) => rowOf.has(f.id)).map((f) => {
      const distance = distanceOf.get(f.id);
      return {
        ...toItem(rowOf.get(f.id)!),
        score: f.score,
        ...(distance === undefined ? {} : { similarity: round6(1 - distance) }),
        ...(f.ranks[0] === undefined ? {} : { vectorRank: f.ranks[0] }),
        ...(f.ranks[1] === undefined ? {} : { textRank: f.ranks[1] }),
      };
    });
    const id = context.runId
      ? `rcl_${(yield* hex(`${context.runId}\n${context.seq ?? 0}`)).slice(0, 24)}`
      : `rcl_${crypto.randomUUID().replaceAll("-", "").slice(0, 24)}`;
    const results = items.map((i) => ({
      id: i.id,
      score: i.score,
      ...(i.similarity === undefined ? {} : { similarity: i.similarity }),
      ...(i.vectorRank === undefined ? {} : { vectorRank: i.vectorRank }),
      ...(i.textRank === undefined ? {} : { textRank: i.textRank }),
    }));
    // A step recalled again after a crash (before its journal entry) replaces its log entry.
    yield* db.run("Cannot log the recall", (pg) =>
      pg.query(
        `insert into recall_log (id, run_id, seq, plugin, actor, scope, query, filters, results, embedder)
         values ($1,$2,$3,$4,$5,$6,$7,$8::jsonb,$9::jsonb,$10)
         on conflict (id) do update set query = excluded.query, filters = excluded.filters,
           results = excluded.results, embedder = excluded.embedder, at = now()`,
        [
          id,
          context.runId ?? null,
          context.seq ?? null,
          context.plugin ?? null,
          context.actor,
          options.scope ?? null,
          query,
          JSON.stringify({ ...options, limit }),
          JSON.stringify(results),
          embedder.name,
        ],
      ));
    return { id, items };
  });

  const recalls = Effect.fn("Memory.recalls")(function* (runId: string) {
    const { log, items } = yield* db.run("Cannot read the recall log", async (pg) => {
      const log = (await pg.query<Record<string, unknown>>(
        `select id, run_id, seq, plugin, actor, query, filters, results, embedder, at
         from recall_log where run_id = $1 order by seq, at`,
        [runId],
      )).rows;
      const ids = [...new Set(log.flatMap((r) => (r.results as Array<{ id: string }>).map((x) => x.id)))];
      const items = ids.length
        ? (await pg.query<{ id: string; kind: string; text: string }>(
          "select id, kind, text from memory_items where id = any($1::text[])",
          [ids],
        )).rows
        : [];
      return { log, items };
    });
    const itemOf = new Map(items.map((i) => [i.id, i]));
    return log.map((r): RecallLogEntry => ({
      id: r.id as string,
      ...(r.run_id == null ? {} : { runId: r.run_id as string }),
      ...(r.seq == null ? {} : { seq: r.seq as number }),
      ...(r.plugin == null ? {} : { plugin: r.plugin as string }),
      actor: r.actor as string,
      query: r.query as string,
      filters: r.filters as RecallOptions,
      embedder: r.embedder as string,
      at: new Date(r.at as string).toISOString(),
      results: (r.results as RecallLogEntry["results"]).map((x) => {
        const item = itemOf.get(x.id);
        return item ? { ...x, kind: item.kind, text: item.text } : { ...x, removed: true };
      }),
    }));
  });

  const summarize = Effect.fn("Memory.summarize")(function* (input: {
    readonly scope: string;
    readonly entries: ReadonlyArray<ContextEntry>;
    readonly maxChars?: number;
    readonly tags?: ReadonlyArray<string>;
    readonly provenance: Provenance;
  }) {
    const bad = (message: string) => new InvalidInputError({ message });
    if (!Array.isArray(input.entries) || input.entries.length === 0) {
      return yield* bad('A summary needs "entries": a non-empty list of {text, role?, ref?}');
    }
    if (input.entries.length > MAX_SUMMARY_ENTRIES) {
      return yield* bad(`A summary covers at most ${MAX_SUMMARY_ENTRIES} entries: got ${input.entries.length}`);
    }
    const wrong = input.entries.findIndex((e) =>
      e === null || typeof e !== "object" || typeof e.text !== "string" ||
      (e.role !== undefined && (typeof e.role !== "string" || e.role.length > 64)) ||
      (e.ref !== undefined && (typeof e.ref !== "string" || e.ref.length > 200))
    );
    if (wrong >= 0) {
      return yield* bad(
        `Summary entry ${wrong + 1} must be {text: string, role?: string (≤ 64), ref?: string (≤ 200)}`,
      );
    }
    const maxChars = input.maxChars ?? SUMMARY_DEFAULT_CHARS;
    if (!Number.isInteger(maxChars) || maxChars < 200 || maxChars > MAX_ITEM_CHARS) {
      return yield* bad(`Option "maxChars" must be an integer from 200 to ${MAX_ITEM_CHARS}: got ${maxChars}`);
    }
    const entries = input.entries.map((e) => ({
      text: e.text,
      ...(e.role === undefined ? {} : { role: e.role }),
      ...(e.ref === undefined ? {} : { ref: e.ref }),
    }));
    const summary = summarizeContext(entries, maxChars);
    const cites: Citation = {
      ...(input.provenance.runId === undefined ? {} : { runId: input.provenance.runId }),
      ...(input.provenance.seq === undefined ? {} : { seq: input.provenance.seq }),
      summarized: summary.summarized,
      quoted: summary.quoted,
      inputHash: yield* hex(canonicalJson(entries)),
      maxChars,
    };
    const [written] = yield* rememberAll([{
      scope: input.scope,
      kind: "summary",
      text: summary.text,
      tags: input.tags,
      provenance: input.provenance,
      cites,
    }]);
    return {
      id: written.id,
      created: written.created,
      text: summary.text,
      summarized: entries.length,
      quoted: summary.quoted,
    };
  });

  const revertRun = Effect.fn("Memory.revertRun")(function* (runId: string) {
    return yield* db.run("Cannot revert the run's memory", (pg) =>
      pg.transaction(async (tx): Promise<RevertReport> => {
        const touched = (await tx.query<{ item_id: string }>(
          "select distinct item_id from memory_writes where run_id = $1 order by item_id",
          [runId],
        )).rows.map((r) => r.item_id);
        await tx.query("delete from memory_writes where run_id = $1", [runId]);
        const removed = (await tx.query<{ id: string }>(
          `delete from memory_items m where m.id = any($1::text[])
           and not exists (select 1 from memory_writes w where w.item_id = m.id) returning id`,
          [touched],
        )).rows.map((r) => r.id).sort();
        const kept = touched.filter((id) => !removed.includes(id));
        // A kept item keeps the tags its other writes gave it, not this run's.
        await tx.query(
          `update memory_items m set tags = array(
             select distinct t from memory_writes w, unnest(w.tags) t where w.item_id = m.id order by 1)
           where m.id = any($1::text[])`,
          [kept],
        );
        // A kept item that this run created now names its earliest other writer as its provenance.
        await tx.query(
          `update memory_items m set run_id = w.run_id, seq = w.seq, plugin = w.plugin, source = w.source
           from (select distinct on (item_id) item_id, run_id, seq, plugin, source from memory_writes
                 where item_id = any($1::text[]) order by item_id, at, run_id nulls first) w
           where m.id = w.item_id and m.run_id = $2`,
          [kept, runId],
        );
        const keys = (await tx.query<{ collection: string; id: string }>(
          "select distinct collection, id from record_versions where run_id = $1 order by collection, id",
          [runId],
        )).rows;
        await tx.query("delete from record_versions where run_id = $1", [runId]);
        const records: RevertReport["records"] = { removed: [], restored: [] };
        for (const { collection, id } of keys) {
          const latest = (await tx.query<Record<string, unknown>>(
            `select version, data, content_hash, schema_hash, run_id, seq, plugin, source, at, deleted
             from record_versions where collection = $1 and id = $2 order by version desc limit 1`,
            [collection, id],
          )).rows[0];
          // Nothing left, or deleted before this run wrote it: no current version.
          if (!latest || latest.deleted === true) {
            await tx.query("delete from records where collection = $1 and id = $2", [collection, id]);
            records.removed.push({ collection, id });
            continue;
          }
          // An upsert: a record this run deleted has no current row to update.
          await tx.query(
            `insert into records
               (collection, id, data, version, content_hash, schema_hash, run_id, seq, plugin, source, updated_at,
                created_at)
             values ($1, $2, $3::jsonb, $4, $5, $6, $7, $8, $9, $10, $11,
               (select min(at) from record_versions where collection = $1 and id = $2))
             on conflict (collection, id) do update set data = excluded.data, version = excluded.version,
               content_hash = excluded.content_hash, schema_hash = excluded.schema_hash, run_id = excluded.run_id,
               seq = excluded.seq, plugin = excluded.plugin, source = excluded.source, updated_at = excluded.updated_at`,
            [
              collection,
              id,
              JSON.stringify(latest.data),
              latest.version,
              latest.content_hash,
              latest.schema_hash,
              latest.run_id,
              latest.seq,
              latest.plugin,
              latest.source,
              latest.at,
            ],
          );
          records.restored.push({ collection, id, version: latest.version as number });
        }
        return { runId, memory: { removed, kept }, records };
      }));
  });

  return Memory.of({
    remember: (item) => Effect.map(rememberAll([item]), (out) => out[0]),
    rememberAll,
    get,
    recall,
    recalls,
    summarize,
    revertRun,
  });
});
