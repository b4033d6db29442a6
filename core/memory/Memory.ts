/**
 * @module
 * Long-term memory in embedded PGlite with pgvector, opened by the host
 * process only. Every item carries provenance (run, step, plugin, source,
 * time, content hash); writes are idempotent by content hash per scope.
 * PGlite's first start in a new directory takes seconds (initdb), so it is
 * opened on first use unless `eagerMemory` is set, and the rest of Keel does
 * not wait for it. Note: PGlite does not fsync (electric-sql/pglite#1107);
 * memory is as durable as the OS page cache, the journal in KV is fsynced.
 */
import { Context, Effect, Layer } from "effect";
import { PGlite } from "@electric-sql/pglite";
import { vector } from "@electric-sql/pglite-pgvector";
import { KeelConfig } from "../config/mod.ts";
import { StoreError } from "../errors/mod.ts";
import { sha256Hex } from "../manifest/mod.ts";
import { embedOffline, OFFLINE_DIM, OFFLINE_EMBEDDER } from "./embed.ts";

/** Where a memory came from. */
export interface Provenance {
  readonly runId?: string;
  readonly seq?: number;
  readonly plugin?: string;
  readonly source: string;
}

/** A stored memory item. */
export interface MemoryItem {
  readonly id: string;
  readonly scope: string;
  readonly kind: string;
  readonly text: string;
  readonly tags: string[];
  readonly provenance: Provenance & { readonly contentHash: string; readonly embedder: string };
  readonly createdAt: string;
}

/** Ordered schema migrations; each runs once, recorded in `keel_migrations`. */
export const MIGRATIONS: ReadonlyArray<{ version: number; sql: string }> = [
  {
    version: 1,
    sql: `
      create extension if not exists vector;
      create table memory_items (
        id text primary key,
        scope text not null,
        kind text not null,
        text text not null,
        tags text[] not null default '{}',
        content_hash text not null,
        embedder text not null,
        embedding vector(${OFFLINE_DIM}) not null,
        run_id text, seq integer, plugin text, source text not null,
        created_at timestamptz not null default now(),
        unique (scope, content_hash)
      );
      create index memory_items_embedding on memory_items using hnsw (embedding vector_cosine_ops);
      create index memory_items_fts on memory_items using gin (to_tsvector('simple', text));
    `,
  },
];

/** Run pending migrations on a PGlite database. */
export const migrate = async (db: PGlite): Promise<number> => {
  await db.exec(
    "create table if not exists keel_migrations (version integer primary key, applied_at timestamptz not null default now())",
  );
  const done = new Set(
    (await db.query<{ version: number }>("select version from keel_migrations")).rows.map((r) => r.version),
  );
  let applied = 0;
  for (const m of MIGRATIONS) {
    if (done.has(m.version)) continue;
    await db.transaction(async (tx) => {
      await tx.exec(m.sql);
      await tx.query("insert into keel_migrations (version) values ($1)", [m.version]);
    });
    applied++;
  }
  return applied;
};

/** The memory service. */
export class Memory extends Context.Service<Memory, {
  remember(
    item: { scope: string; kind: string; text: string; tags?: ReadonlyArray<string>; provenance: Provenance },
  ): Effect.Effect<{ id: string; created: boolean }, StoreError>;
  search(
    query: string,
    options?: { scope?: string; limit?: number },
  ): Effect.Effect<Array<MemoryItem & { score: number }>, StoreError>;
}>()("keel/memory/Memory") {
  /** PGlite with pgvector in `<dataDir>/pg` (in memory for `:memory:`). */
  static readonly layer = Layer.effect(
    Memory,
    Effect.gen(function* () {
      const config = yield* KeelConfig;
      let opened: Promise<PGlite> | undefined;
      const open = () =>
        opened ??= (async () => {
          const db = await PGlite.create(config.dataDir === ":memory:" ? "memory://" : `${config.dataDir}/pg`, {
            extensions: { vector },
          });
          await migrate(db);
          return db;
        })();
      yield* Effect.addFinalizer(() =>
        opened ? Effect.promise(() => opened!.then((db) => db.close()).catch(() => undefined)) : Effect.void
      );
      if (config.eagerMemory) {
        yield* Effect.tryPromise({
          try: open,
          catch: (c) => new StoreError({ message: `Cannot open memory: ${String(c)}` }),
        });
      }
      const db = (what: string, f: (db: PGlite) => Promise<unknown>) =>
        Effect.tryPromise({
          try: () => open().then(f),
          catch: (cause) => new StoreError({ message: `${what}: ${String(cause)}` }),
        });
      return Memory.of({
        remember: (item) =>
          Effect.gen(function* () {
            const contentHash = yield* Effect.promise(() => sha256Hex(`${item.kind}\n${item.text}`));
            const id = `mem_${(yield* Effect.promise(() => sha256Hex(`${item.scope}\n${contentHash}`))).slice(0, 24)}`;
            const rows = (yield* db("Cannot write memory", (pg) =>
              pg.query(
                `insert into memory_items (id, scope, kind, text, tags, content_hash, embedder, embedding, run_id, seq, plugin, source)
                 values ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12) on conflict (scope, content_hash) do nothing returning id`,
                [
                  id,
                  item.scope,
                  item.kind,
                  item.text,
                  [...(item.tags ?? [])],
                  contentHash,
                  OFFLINE_EMBEDDER,
                  JSON.stringify(embedOffline(item.text)),
                  item.provenance.runId ?? null,
                  item.provenance.seq ?? null,
                  item.provenance.plugin ?? null,
                  item.provenance.source,
                ],
              ))) as { rows: unknown[] };
            return { id, created: rows.rows.length === 1 };
          }),
        search: (query, options) =>
          db("Cannot search memory", (pg) =>
            pg.query(
              `select id, scope, kind, text, tags, content_hash, embedder, run_id, seq, plugin, source, created_at,
                      1 - (embedding <=> $1) as score
               from memory_items where ($2::text is null or scope = $2) order by embedding <=> $1 limit $3`,
              [JSON.stringify(embedOffline(query)), options?.scope ?? null, options?.limit ?? 10],
            )).pipe(
              Effect.map((res) =>
                (res as { rows: Array<Record<string, unknown>> }).rows.map((r) => ({
                  id: r.id as string,
                  scope: r.scope as string,
                  kind: r.kind as string,
                  text: r.text as string,
                  tags: r.tags as string[],
                  provenance: {
                    runId: (r.run_id as string) ?? undefined,
                    seq: (r.seq as number) ?? undefined,
                    plugin: (r.plugin as string) ?? undefined,
                    source: r.source as string,
                    contentHash: r.content_hash as string,
                    embedder: r.embedder as string,
                  },
                  createdAt: new Date(r.created_at as string).toISOString(),
                  score: Number(r.score),
                }))
              ),
            ),
      });
    }),
  );
}
