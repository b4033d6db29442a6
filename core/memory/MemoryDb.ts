/**
 * @module
 * The PGlite database behind memory and records, opened by the host process
 * only (two processes on one directory silently lose writes; the data-dir
 * lock in `core/store` keeps it to one). A new directory takes seconds to
 * initialise, so it opens on first use unless `eagerMemory` is set, and the
 * rest of Keel does not wait for it. PGlite does not fsync
 * (electric-sql/pglite#1107): memory is as durable as the OS page cache.
 */
import { Context, Effect, Layer } from "effect";
import { PGlite } from "@electric-sql/pglite";
import { vector } from "@electric-sql/pglite-pgvector";
import { KeelConfig } from "../config/mod.ts";
import { StoreError } from "../errors/mod.ts";
import { migrate } from "./migrations.ts";

/** HNSW candidates per vector search (pgvector's `hnsw.ef_search`). */
export const HNSW_EF_SEARCH = 100;

/** The memory database handle. */
export class MemoryDb extends Context.Service<MemoryDb, {
  /** `<dataDir>/pg`, or `memory://` for an in-memory host. */
  readonly location: string;
  /** Run `f` on the open database; a failure becomes a `StoreError` that starts with `what`. */
  run<A>(what: string, f: (db: PGlite) => Promise<A>): Effect.Effect<A, StoreError>;
}>()("keel/memory/MemoryDb") {
  /** PGlite with pgvector in `<dataDir>/pg`, migrated on open. */
  static readonly layer = Layer.effect(
    MemoryDb,
    Effect.gen(function* () {
      const config = yield* KeelConfig;
      const location = config.dataDir === ":memory:" ? "memory://" : `${config.dataDir}/pg`;
      let opened: Promise<PGlite> | undefined;
      const open = () =>
        opened ??= PGlite.create(location, { extensions: { vector } }).then(async (db) => {
          try {
            await migrate(db);
            // PGlite runs without autovacuum, so planner statistics are refreshed here, once per start.
            await db.exec("analyze");
            // Filtered vector searches keep scanning the graph until they have enough rows (pgvector 0.8).
            await db.exec(`set hnsw.ef_search = ${HNSW_EF_SEARCH}; set hnsw.iterative_scan = relaxed_order;`);
            return db;
          } catch (error) {
            await db.close().catch(() => {});
            throw error;
          }
        });
      yield* Effect.addFinalizer(() =>
        opened ? Effect.promise(() => opened!.then((db) => db.close()).catch(() => undefined)) : Effect.void
      );
      const run = <A>(what: string, f: (db: PGlite) => Promise<A>) =>
        Effect.tryPromise({
          try: () =>
            open().catch((cause) => {
              throw new Error(`Cannot open memory at "${location}": ${messageOf(cause)}`);
            }).then(f),
          catch: (cause) => new StoreError({ message: `${what}: ${messageOf(cause)}` }),
        });
      if (config.eagerMemory) yield* run("Cannot open memory", () => Promise.resolve());
      return MemoryDb.of({ location, run });
    }),
  );
}

const messageOf = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause));
