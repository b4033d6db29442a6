/**
 * @module
 * The PGlite schema as ordered migrations. Each runs once, in a transaction,
 * and is recorded in `keel_migrations`; a published migration is never
 * edited, a change is a new version. A database that has a version this Keel
 * does not know was written by a newer Keel and is refused, never rewritten.
 *
 * Vectors are `vector(384)` (`EMBEDDING_DIM`): every embedder Keel uses must
 * produce 384 numbers (see `Embedder.ts`).
 */
import type { PGlite } from "@electric-sql/pglite";
import { EMBEDDING_DIM } from "./embed.ts";

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
        embedding vector(${EMBEDDING_DIM}) not null,
        run_id text, seq integer, plugin text, source text not null,
        created_at timestamptz not null default now(),
        unique (scope, content_hash)
      );
      create index memory_items_embedding on memory_items using hnsw (embedding vector_cosine_ops);
      create index memory_items_fts on memory_items using gin (to_tsvector('simple', text));
    `,
  },
  {
    // Every write of an item, so undoing one run keeps what another run also wrote; a stored
    // tsvector, so full-text ranking does not re-parse every matching text.
    version: 2,
    sql: `
      alter table memory_items add column cites jsonb;
      alter table memory_items add column tsv tsvector generated always as (to_tsvector('simple', text)) stored;
      create index memory_items_tsv on memory_items using gin (tsv);
      drop index memory_items_fts;
      create index memory_items_tags on memory_items using gin (tags);
      create index memory_items_run on memory_items (run_id);
      create index memory_items_created on memory_items (created_at);
      create table memory_writes (
        item_id text not null references memory_items (id) on delete cascade,
        run_id text, seq integer, plugin text, source text not null,
        at timestamptz not null default now()
      );
      create unique index memory_writes_once on memory_writes (item_id, coalesce(run_id, ''), coalesce(seq, -1));
      create index memory_writes_run on memory_writes (run_id);
      insert into memory_writes (item_id, run_id, seq, plugin, source, at)
        select id, run_id, seq, plugin, source, created_at from memory_items;
    `,
  },
  {
    // What was recalled, for whom and why: one row per recall.
    version: 3,
    sql: `
      create table recall_log (
        id text primary key,
        run_id text, seq integer, plugin text,
        actor text not null,
        scope text,
        query text not null,
        filters jsonb not null,
        results jsonb not null,
        embedder text not null,
        at timestamptz not null default now()
      );
      create unique index recall_log_step on recall_log (run_id, seq) where run_id is not null;
      create index recall_log_at on recall_log (at);
    `,
  },
  {
    // Structured records: a current row per (collection, id) and every version behind it.
    version: 4,
    sql: `
      create table collections (
        name text primary key,
        schema jsonb not null,
        schema_hash text not null,
        defined_by text not null,
        created_at timestamptz not null default now(),
        updated_at timestamptz not null default now()
      );
      create table records (
        collection text not null references collections (name),
        id text not null,
        data jsonb not null,
        version integer not null,
        content_hash text not null,
        schema_hash text not null,
        run_id text, seq integer, plugin text, source text not null,
        created_at timestamptz not null default now(),
        updated_at timestamptz not null default now(),
        primary key (collection, id)
      );
      create index records_data on records using gin (data jsonb_path_ops);
      create table record_versions (
        collection text not null,
        id text not null,
        version integer not null,
        data jsonb not null,
        content_hash text not null,
        schema_hash text not null,
        run_id text, seq integer, plugin text, source text not null,
        at timestamptz not null default now(),
        primary key (collection, id, version)
      );
      create index record_versions_run on record_versions (run_id);
    `,
  },
  {
    // Each write's tags: a second write of the same text adds its tags to the item, and undoing it takes them back.
    version: 5,
    sql: `
      alter table memory_writes add column tags text[] not null default '{}';
      update memory_writes w set tags = m.tags from memory_items m where m.id = w.item_id;
    `,
  },
  {
    // Record delete: a deleted record leaves a tombstone version, so undoing the run that deleted it puts it back.
    version: 6,
    sql: `alter table record_versions add column deleted boolean not null default false;`,
  },
];

/** Run pending migrations on a PGlite database; returns how many ran. */
export const migrate = async (db: PGlite): Promise<number> => {
  await db.exec(
    "create table if not exists keel_migrations (version integer primary key, applied_at timestamptz not null default now())",
  );
  const done = new Set(
    (await db.query<{ version: number }>("select version from keel_migrations")).rows.map((r) => r.version),
  );
  const known = Math.max(...MIGRATIONS.map((m) => m.version));
  const newer = [...done].filter((v) => v > known);
  if (newer.length) {
    throw new Error(
      `the memory database has schema version ${
        Math.max(...newer)
      }; this Keel understands up to ${known}: upgrade Keel`,
    );
  }
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
