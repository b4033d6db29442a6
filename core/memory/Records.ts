/**
 * @module
 * Structured records: named collections, each with a JSON Schema (contacts,
 * invoices …), whose records are validated on every write and stored in
 * relational tables with the same provenance as memory items. The
 * authoritative store for money and clients, so nothing is overwritten in
 * place: `records` holds the current version and `record_versions` every
 * version behind it, which is what lets `Memory.revertRun` put back the
 * version a run replaced. A delete removes the current version and leaves a
 * tombstone version (`deleted`), so undoing it puts the record back. Collections are defined by the operator (API or
 * this service); workflows read and write records in those their agent's
 * manifest declares (checked by the orchestrator, `memoryCall.ts`).
 */
import { Context, Effect, Layer } from "effect";
import { Validator } from "@cfworker/json-schema";
import { InvalidInputError, NotFoundError, type StoreError } from "../errors/mod.ts";
import {
  canonicalJson,
  COLLECTION_NAME,
  type JsonSchema,
  schemaErrors,
  schemaProblem,
  sha256Hex,
} from "../manifest/mod.ts";
import { MemoryDb } from "./MemoryDb.ts";
import type { Provenance } from "./Memory.ts";
import { storableProblem } from "./_text.ts";

/** A collection and its schema. */
export interface CollectionInfo {
  readonly name: string;
  readonly schema: JsonSchema;
  readonly schemaHash: string;
  readonly definedBy: string;
  readonly records: number;
  readonly createdAt: string;
  readonly updatedAt: string;
}

/** One record, current version. */
export interface RecordItem {
  readonly collection: string;
  readonly id: string;
  readonly data: unknown;
  readonly version: number;
  readonly provenance: Provenance & { readonly contentHash: string; readonly schemaHash: string };
  readonly createdAt: string;
  readonly updatedAt: string;
}

/** Which records to list: `where` is matched by JSON containment (`{"status": "open"}`). */
export interface RecordsQuery {
  readonly where?: Readonly<Record<string, unknown>>;
  /** Records with ids after this one (pages are ordered by id). */
  readonly after?: string;
  /** 1 to `MAX_QUERY_LIMIT`; default 50. */
  readonly limit?: number;
}

/** Largest record, as JSON bytes (records travel through the run journal). */
export const MAX_RECORD_BYTES = 32 * 1024;
/** Most records one query returns. */
export const MAX_QUERY_LIMIT = 200;

const COLLECTION = new RegExp(COLLECTION_NAME);
const RECORD_ID = /^[\w.@:+-]{1,200}$/;
const RECORD_COLUMNS =
  "collection, id, data, version, content_hash, schema_hash, run_id, seq, plugin, source, created_at, updated_at";

const toRecord = (r: Record<string, unknown>): RecordItem => ({
  collection: r.collection as string,
  id: r.id as string,
  data: r.data,
  version: r.version as number,
  provenance: {
    ...(r.run_id == null ? {} : { runId: r.run_id as string }),
    ...(r.seq == null ? {} : { seq: r.seq as number }),
    ...(r.plugin == null ? {} : { plugin: r.plugin as string }),
    source: r.source as string,
    contentHash: r.content_hash as string,
    schemaHash: r.schema_hash as string,
  },
  createdAt: new Date(r.created_at as string).toISOString(),
  updatedAt: new Date(r.updated_at as string).toISOString(),
});

const toCollection = (r: Record<string, unknown>): CollectionInfo => ({
  name: r.name as string,
  schema: r.schema as JsonSchema,
  schemaHash: r.schema_hash as string,
  definedBy: r.defined_by as string,
  records: Number(r.records ?? 0),
  createdAt: new Date(r.created_at as string).toISOString(),
  updatedAt: new Date(r.updated_at as string).toISOString(),
});

const invalid = (message: string, details?: unknown) => new InvalidInputError({ message, details });
const checkName = (name: unknown) =>
  typeof name === "string" && COLLECTION.test(name) ? undefined : invalid(
    `A collection name is a lower-case letter then up to 62 letters, digits or _: got ${
      JSON.stringify(name)?.slice(0, 80)
    }`,
  );

/** The records service. */
export class Records extends Context.Service<Records, {
  /** Create or replace a collection's schema; `changed` is false when the schema was already this one. */
  define(
    name: string,
    schema: unknown,
    actor: string,
  ): Effect.Effect<{ collection: CollectionInfo; created: boolean; changed: boolean }, StoreError | InvalidInputError>;
  /** Every collection, by name. */
  readonly collections: Effect.Effect<CollectionInfo[], StoreError>;
  /** Validate and write a record; a write equal to the current version by the same run is a no-op. */
  put(
    collection: string,
    id: string,
    data: unknown,
    provenance: Provenance,
  ): Effect.Effect<
    { record: RecordItem; created: boolean; changed: boolean },
    StoreError | InvalidInputError | NotFoundError
  >;
  /**
   * Delete a record: its current version goes, and a tombstone version records who deleted it. A record that is not
   * there is `deleted: false`, unless this very call (run and step) deleted it already and is made again after a
   * crash: the same answer then.
   */
  delete(
    collection: string,
    id: string,
    provenance: Provenance,
  ): Effect.Effect<{ deleted: boolean; version?: number }, StoreError | InvalidInputError | NotFoundError>;
  /** A record's current version, or undefined. */
  get(
    collection: string,
    id: string,
  ): Effect.Effect<RecordItem | undefined, StoreError | InvalidInputError | NotFoundError>;
  /** Records matching a query, ordered by id. */
  query(
    collection: string,
    query?: RecordsQuery,
  ): Effect.Effect<RecordItem[], StoreError | InvalidInputError | NotFoundError>;
}>()("keel/memory/Records") {
  /** Records in the memory database. */
  static readonly layer = Layer.effect(
    Records,
    Effect.gen(function* () {
      const db = yield* MemoryDb;
      const validators = new Map<string, Validator>();
      const validatorFor = (hash: string, schema: JsonSchema) => {
        let v = validators.get(hash);
        if (!v) validators.set(hash, v = new Validator(schema, "2020-12", false));
        return v;
      };

      const collectionRow = (name: string) =>
        db.run("Cannot read the collection", async (pg) =>
          (await pg.query<Record<string, unknown>>(
            `select c.*, (select count(*) from records r where r.collection = c.name) as records
             from collections c where c.name = $1`,
            [name],
          )).rows[0]);

      const known = Effect.fn("Records.known")(function* (name: string) {
        const problem = checkName(name);
        if (problem) return yield* problem;
        const row = yield* collectionRow(name);
        if (!row) {
          return yield* new NotFoundError({
            message: `No collection "${name}": define it first (PUT /api/collections/${name})`,
          });
        }
        return toCollection(row);
      });

      const define = Effect.fn("Records.define")(function* (name: string, schema: unknown, actor: string) {
        const problem = checkName(name);
        if (problem) return yield* problem;
        if (schema === null || typeof schema !== "object" || Array.isArray(schema)) {
          return yield* invalid(`The schema of collection "${name}" must be a JSON Schema object`);
        }
        if ((schema as JsonSchema).type !== "object") {
          return yield* invalid(`The schema of collection "${name}" must have "type": "object" (records are objects)`);
        }
        const unstorable = storableProblem(schema);
        if (unstorable) return yield* invalid(`The schema of collection "${name}" ${unstorable}`);
        const why = schemaProblem(schema as JsonSchema);
        if (why) return yield* invalid(`The schema of collection "${name}" is not a usable JSON Schema: ${why}`);
        const schemaHash = yield* Effect.promise(() => sha256Hex(canonicalJson(schema)));
        const before = yield* collectionRow(name);
        if (before?.schema_hash === schemaHash) {
          return { collection: toCollection(before), created: false, changed: false };
        }
        yield* db.run("Cannot define the collection", (pg) =>
          pg.query(
            `insert into collections (name, schema, schema_hash, defined_by) values ($1, $2::jsonb, $3, $4)
             on conflict (name) do update set schema = excluded.schema, schema_hash = excluded.schema_hash,
               defined_by = excluded.defined_by, updated_at = now()`,
            [name, JSON.stringify(schema), schemaHash, actor],
          ));
        const after = yield* collectionRow(name);
        return { collection: toCollection(after!), created: !before, changed: true };
      });

      const collections = db.run("Cannot list collections", async (pg) =>
        (await pg.query<Record<string, unknown>>(
          `select c.*, (select count(*) from records r where r.collection = c.name) as records
           from collections c order by c.name`,
        )).rows.map(toCollection));

      const put = Effect.fn("Records.put")(function* (
        collection: string,
        id: string,
        data: unknown,
        provenance: Provenance,
      ) {
        const info = yield* known(collection);
        if (typeof id !== "string" || !RECORD_ID.test(id)) {
          return yield* invalid(
            `A record id is 1 to 200 letters, digits or _.@:+-: got ${JSON.stringify(id)?.slice(0, 80)}`,
          );
        }
        // Checked before anything walks it: JSON of a value nested thousands deep overflows the stack.
        const unstorable = storableProblem(data);
        if (unstorable) return yield* invalid(`Record "${collection}/${id}" ${unstorable}`);
        const json = JSON.stringify(data ?? null);
        const bytes = new TextEncoder().encode(json).length;
        if (bytes > MAX_RECORD_BYTES) {
          return yield* invalid(
            `Record "${collection}/${id}" is ${bytes} bytes; a record is at most ${MAX_RECORD_BYTES}`,
          );
        }
        const errors = schemaErrors(validatorFor(info.schemaHash, info.schema), data);
        if (errors.length) {
          return yield* invalid(`Record "${collection}/${id}" does not match the collection's schema: ${errors[0]}`, {
            errors,
          });
        }
        const contentHash = yield* Effect.promise(() => sha256Hex(canonicalJson(data)));
        return yield* db.run("Cannot write the record", (pg) =>
          pg.transaction(async (tx) => {
            const current = (await tx.query<Record<string, unknown>>(
              `select ${RECORD_COLUMNS} from records where collection = $1 and id = $2 for update`,
              [collection, id],
            )).rows[0];
            if (
              current && current.content_hash === contentHash && (current.run_id ?? null) === (provenance.runId ?? null)
            ) {
              return { record: toRecord(current), created: false, changed: false };
            }
            const last = (await tx.query<{ v: number }>(
              "select coalesce(max(version), 0) as v from record_versions where collection = $1 and id = $2",
              [collection, id],
            )).rows[0].v;
            const version = Math.max(Number(last), Number(current?.version ?? 0)) + 1;
            const values = [
              collection,
              id,
              json,
              version,
              contentHash,
              info.schemaHash,
              provenance.runId ?? null,
              provenance.seq ?? null,
              provenance.plugin ?? null,
              provenance.source,
            ];
            await tx.query(
              `insert into record_versions (collection, id, data, version, content_hash, schema_hash, run_id, seq, plugin, source)
               values ($1,$2,$3::jsonb,$4,$5,$6,$7,$8,$9,$10)`,
              values,
            );
            const row = (await tx.query<Record<string, unknown>>(
              `insert into records (collection, id, data, version, content_hash, schema_hash, run_id, seq, plugin, source)
               values ($1,$2,$3::jsonb,$4,$5,$6,$7,$8,$9,$10)
               on conflict (collection, id) do update set data = excluded.data, version = excluded.version,
                 content_hash = excluded.content_hash, schema_hash = excluded.schema_hash, run_id = excluded.run_id,
                 seq = excluded.seq, plugin = excluded.plugin, source = excluded.source, updated_at = now()
               returning ${RECORD_COLUMNS}`,
              values,
            )).rows[0];
            return { record: toRecord(row), created: !current, changed: current?.content_hash !== contentHash };
          }));
      });

      const remove = Effect.fn("Records.delete")(function* (collection: string, id: string, provenance: Provenance) {
        yield* known(collection);
        if (typeof id !== "string" || !RECORD_ID.test(id)) {
          return yield* invalid(
            `A record id is 1 to 200 letters, digits or _.@:+-: got ${JSON.stringify(id)?.slice(0, 80)}`,
          );
        }
        return yield* db.run(
          "Cannot delete the record",
          (pg) =>
            pg.transaction(async (tx): Promise<{ deleted: boolean; version?: number }> => {
              const current = (await tx.query<Record<string, unknown>>(
                "select version, schema_hash from records where collection = $1 and id = $2 for update",
                [collection, id],
              )).rows[0];
              const last = (await tx.query<Record<string, unknown>>(
                `select version, deleted, run_id, seq from record_versions where collection = $1 and id = $2
               order by version desc limit 1`,
                [collection, id],
              )).rows[0];
              if (!current) {
                const again = last?.deleted === true && provenance.runId !== undefined &&
                  last.run_id === provenance.runId && (last.seq ?? undefined) === provenance.seq;
                return again ? { deleted: true, version: last.version as number } : { deleted: false };
              }
              const version = Math.max(Number(last?.version ?? 0), Number(current.version)) + 1;
              await tx.query(
                `insert into record_versions
                 (collection, id, data, version, content_hash, schema_hash, run_id, seq, plugin, source, deleted)
               values ($1, $2, 'null'::jsonb, $3, 'deleted', $4, $5, $6, $7, $8, true)`,
                [
                  collection,
                  id,
                  version,
                  current.schema_hash,
                  provenance.runId ?? null,
                  provenance.seq ?? null,
                  provenance.plugin ?? null,
                  provenance.source,
                ],
              );
              await tx.query("delete from records where collection = $1 and id = $2", [collection, id]);
              return { deleted: true, version };
            }),
        );
      });

      const get = Effect.fn("Records.get")(function* (collection: string, id: string) {
        yield* known(collection);
        if (typeof id !== "string" || !RECORD_ID.test(id)) {
          return yield* invalid(
            `A record id is 1 to 200 letters, digits or _.@:+-: got ${JSON.stringify(id)?.slice(0, 80)}`,
          );
        }
        const row = yield* db.run("Cannot read the record", async (pg) =>
          (await pg.query<Record<string, unknown>>(
            `select ${RECORD_COLUMNS} from records where collection = $1 and id = $2`,
            [collection, id],
          )).rows[0]);
        return row ? toRecord(row) : undefined;
      });

      const query = Effect.fn("Records.query")(function* (collection: string, q: RecordsQuery = {}) {
        yield* known(collection);
        const limit = q.limit ?? 50;
        if (!Number.isInteger(limit) || limit < 1 || limit > MAX_QUERY_LIMIT) {
          return yield* invalid(`Option "limit" must be an integer from 1 to ${MAX_QUERY_LIMIT}: got ${q.limit}`);
        }
        if (q.where !== undefined && (q.where === null || typeof q.where !== "object" || Array.isArray(q.where))) {
          return yield* invalid('Option "where" must be an object of field values, e.g. {"status": "open"}');
        }
        if (q.after !== undefined && typeof q.after !== "string") {
          return yield* invalid('Option "after" must be a record id');
        }
        const unstorable = storableProblem([q.where ?? {}, q.after ?? ""]);
        if (unstorable) return yield* invalid(`A records query ${unstorable}`);
        const rows = yield* db.run("Cannot query records", async (pg) =>
          (await pg.query<Record<string, unknown>>(
            `select ${RECORD_COLUMNS} from records where collection = $1 and data @> $2::jsonb
             and ($3::text is null or id > $3) order by id limit $4`,
            [collection, JSON.stringify(q.where ?? {}), q.after ?? null, limit],
          )).rows);
        return rows.map(toRecord);
      });

      return Records.of({ define, collections, put, delete: remove, get, query });
    }),
  );
}
