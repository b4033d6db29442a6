/**
 * @module
 * The memory and records routes: `GET /api/memory?q=` (the operator's
 * recall, logged like any other) and `/api/collections/…` (define a
 * collection's schema, list, read, write and delete records). `app.ts` routes to
 * these; they check their query strings and bodies here. The operator's
 * changes are audited (`collection.defined`, `record.written`,
 * `record.deleted`: names, versions and hashes, never a record's data); a
 * workflow's are journaled with its run.
 */
import { Effect } from "effect";
import { InvalidInputError, NotFoundError } from "../errors/mod.ts";
import { MAX_QUERY_LIMIT, MAX_RECALL_LIMIT, Memory, parseRecallOptions, Records } from "../memory/mod.ts";
import { Audit } from "../telemetry/mod.ts";

type Query = Readonly<Record<string, ReadonlyArray<string>>>;

const SEARCH_PARAMS: Readonly<Record<string, string>> = {
  q: "query",
  kind: "kind",
  tag: "tags",
  scope: "scope",
  runId: "runId",
  plugin: "plugin",
  source: "source",
  since: "since",
  until: "until",
  limit: "limit",
};

/** A query's `limit` must be plain digits, as every other `?limit=` (`Number` takes "0x10", "1e1", " 5"). */
const plainLimit = (query: Query, max: number) => {
  const raw = query.limit?.[0];
  return raw === undefined || /^\d{1,6}$/.test(raw) ? undefined : new InvalidInputError({
    message: `Option "limit" must be an integer from 1 to ${max}: got ${JSON.stringify(raw)}`,
  });
};

const unknownParam = (query: Query, allowed: ReadonlyArray<string>) => {
  const extra = Object.keys(query).find((k) => !allowed.includes(k));
  return extra === undefined ? undefined : new InvalidInputError({
    message: `Unknown query parameter "${extra}": use ${allowed.join(", ")}`,
  });
};

/** `GET /api/memory?q=…&kind=…&tag=…&limit=…`: hybrid recall over every scope, logged with actor `operator`. */
export const memorySearchRoute = Effect.fn("Http.memorySearch")(function* (query: Query) {
  const extra = unknownParam(query, Object.keys(SEARCH_PARAMS)) ?? plainLimit(query, MAX_RECALL_LIMIT);
  if (extra) return yield* extra;
  const raw: Record<string, unknown> = {};
  for (const [param, option] of Object.entries(SEARCH_PARAMS)) {
    const values = query[param];
    if (!values?.length || param === "q") continue;
    raw[option] = param === "kind" || param === "tag" ? values : values[0];
  }
  const q = query.q?.[0];
  if (q === undefined || q.trim() === "") {
    return yield* new InvalidInputError({ message: 'Query "q" is required: what to recall, e.g. ?q=invoice+for+Ada' });
  }
  const { query: text, options } = yield* parseRecallOptions(q, raw);
  const recall = yield* Memory.use((m) => m.recall(text, options, { actor: "operator" }));
  return { recallId: recall.id, items: recall.items };
});

/** `GET /api/collections`. */
export const collectionsRoute = Effect.map(Records.use((r) => r.collections), (collections) => ({ collections }));

/** `PUT /api/collections/{name}` with `{schema}`: create or replace a collection's JSON Schema. */
export const defineCollectionRoute = Effect.fn("Http.defineCollection")(function* (
  name: string,
  body: Record<string, unknown>,
) {
  if (body.schema === undefined) {
    return yield* new InvalidInputError({
      message: 'Field "schema" is required: a JSON Schema with "type": "object" for the records',
    });
  }
  const result = yield* Records.use((r) => r.define(name, body.schema, "operator"));
  if (result.changed) {
    yield* Audit.use((a) =>
      a.append({
        type: "collection.defined",
        actor: "operator",
        data: { collection: name, schemaHash: result.collection.schemaHash, created: result.created },
      })
    );
  }
  return result;
});

/** `GET /api/collections/{name}/records?where=JSON&after=ID&limit=N`. */
export const recordsRoute = Effect.fn("Http.records")(function* (name: string, query: Query) {
  const extra = unknownParam(query, ["where", "after", "limit"]) ?? plainLimit(query, MAX_QUERY_LIMIT);
  if (extra) return yield* extra;
  let where: Record<string, unknown> | undefined;
  if (query.where?.[0] !== undefined) {
    where = yield* Effect.try({
      try: () => JSON.parse(query.where[0]) as Record<string, unknown>,
      catch: (e) => new InvalidInputError({ message: `Query "where" must be a JSON object: ${(e as Error).message}` }),
    });
  }
  const limitRaw = query.limit?.[0];
  const limit = limitRaw === undefined ? undefined : Number(limitRaw);
  const records = yield* Records.use((r) => r.query(name, { where, after: query.after?.[0], limit }));
  return { records };
});

/** `GET /api/collections/{name}/records/{id}`. */
export const recordRoute = Effect.fn("Http.record")(function* (name: string, id: string) {
  const record = yield* Records.use((r) => r.get(name, id));
  if (!record) return yield* new NotFoundError({ message: `No record "${id}" in collection "${name}"` });
  return { record };
});

/** `PUT /api/collections/{name}/records/{id}` with `{data}`: the operator writes a record (source `operator`). */
export const putRecordRoute = Effect.fn("Http.putRecord")(function* (
  name: string,
  id: string,
  body: Record<string, unknown>,
) {
  if (body.data === undefined) return yield* new InvalidInputError({ message: 'Field "data" is required' });
  const result = yield* Records.use((r) => r.put(name, id, body.data, { source: "operator" }));
  if (result.changed) {
    yield* Audit.use((a) =>
      a.append({
        type: "record.written",
        actor: "operator",
        data: {
          collection: name,
          id,
          version: result.record.version,
          created: result.created,
          contentHash: result.record.provenance.contentHash,
        },
      })
    );
  }
  return result;
});

/** `DELETE /api/collections/{name}/records/{id}`: the operator deletes a record (a tombstone version, source `operator`). */
export const deleteRecordRoute = Effect.fn("Http.deleteRecord")(function* (name: string, id: string) {
  const result = yield* Records.use((r) => r.delete(name, id, { source: "operator" }));
  if (!result.deleted) return yield* new NotFoundError({ message: `No record "${id}" in collection "${name}"` });
  yield* Audit.use((a) =>
    a.append({ type: "record.deleted", actor: "operator", data: { collection: name, id, version: result.version } })
  );
  return result;
});
