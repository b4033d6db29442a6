/**
 * @module
 * What a recall may ask for, and the one parser for it: a workflow's
 * arguments and the operator's query string both come through
 * `parseRecallOptions`, so both get the same limits and the same messages.
 */
import { Effect } from "effect";
import { InvalidInputError } from "../errors/mod.ts";

/** The first and last instants of the years 1 to 9999, what Postgres timestamps hold here. */
const FIRST_STORABLE_MS = Date.parse("0001-01-01T00:00:00Z");
const LAST_STORABLE_MS = Date.parse("9999-12-31T23:59:59.999Z");

/** The kinds of memory item. */
export const MEMORY_KINDS = ["fact", "preference", "note", "summary", "record-ref"] as const;
/** One kind of memory item. */
export type MemoryKind = typeof MEMORY_KINDS[number];

/** Filters on kind, tags, time and provenance; every one given must hold. */
export interface RecallFilters {
  /** Only this scope (`agent:<name>`); a workflow always recalls its own. */
  readonly scope?: string;
  /** Any of these kinds. */
  readonly kind?: ReadonlyArray<MemoryKind>;
  /** All of these tags. */
  readonly tags?: ReadonlyArray<string>;
  /** Created at or after (ISO 8601). */
  readonly since?: string;
  /** Created before (ISO 8601). */
  readonly until?: string;
  /** Provenance: written by this run, plugin, source. */
  readonly runId?: string;
  readonly plugin?: string;
  readonly source?: string;
}

/** A recall request: filters plus how many items to return. */
export interface RecallOptions extends RecallFilters {
  /** 1 to `MAX_RECALL_LIMIT`; default 10. */
  readonly limit?: number;
}

/** Most items one recall returns. */
export const MAX_RECALL_LIMIT = 50;
/** Longest recall query, in characters. */
export const MAX_QUERY_CHARS = 2000;

const TAG = /^[^\p{Cc}]{1,64}$/u;
const NAME = /^[\w.:@\/-]{1,200}$/;

/** A tag list, or the reason it is not one. */
export const tagProblem = (tags: unknown, field = "tags"): string | undefined => {
  if (!Array.isArray(tags)) return `Field "${field}" must be a list of strings`;
  if (tags.length > 32) return `Field "${field}" has ${tags.length} tags; at most 32`;
  const bad = tags.find((t) => typeof t !== "string" || !TAG.test(t));
  return bad === undefined
    ? undefined
    : `Field "${field}" has a tag that is not 1 to 64 printable characters: ${JSON.stringify(bad)?.slice(0, 80)}`;
};

const one = (v: unknown) => (Array.isArray(v) ? v : [v]);

/** Check a query and its options (from a workflow or the API); unknown fields are refused. */
export const parseRecallOptions = (
  query: unknown,
  raw: Readonly<Record<string, unknown>>,
): Effect.Effect<{ query: string; options: RecallOptions }, InvalidInputError> => {
  const fail = (message: string) => Effect.fail(new InvalidInputError({ message }));
  if (typeof query !== "string" || query.trim() === "") return fail('A recall needs a non-empty "query" string');
  if (query.length > MAX_QUERY_CHARS) {
    return fail(`The recall query is ${query.length} characters; at most ${MAX_QUERY_CHARS}`);
  }
  const known = ["scope", "kind", "tags", "since", "until", "runId", "plugin", "source", "limit"];
  const unknown = Object.keys(raw).find((k) => !known.includes(k) && raw[k] !== undefined);
  if (unknown) return fail(`Unknown recall option "${unknown}": use ${known.join(", ")}`);
  const options: Record<string, unknown> = {};
  if (raw.limit !== undefined) {
    const limit = typeof raw.limit === "string" && raw.limit.trim() !== "" ? Number(raw.limit) : raw.limit;
    if (typeof limit !== "number" || !Number.isInteger(limit) || limit < 1 || limit > MAX_RECALL_LIMIT) {
      return fail(`Option "limit" must be an integer from 1 to ${MAX_RECALL_LIMIT}: got ${JSON.stringify(raw.limit)}`);
    }
    options.limit = limit;
  }
  if (raw.kind !== undefined) {
    const kinds = one(raw.kind);
    const bad = kinds.find((k) => !MEMORY_KINDS.includes(k as MemoryKind));
    if (bad !== undefined || kinds.length === 0) {
      return fail(`Option "kind" must be one of ${MEMORY_KINDS.join(", ")}: got ${JSON.stringify(bad ?? raw.kind)}`);
    }
    options.kind = [...new Set(kinds)];
  }
  if (raw.tags !== undefined) {
    const tags = one(raw.tags);
    const problem = tagProblem(tags);
    if (problem) return fail(problem.replace('Field "tags"', 'Option "tags"'));
    options.tags = [...new Set(tags)];
  }
  for (const key of ["since", "until"] as const) {
    if (raw[key] === undefined) continue;
    const at = typeof raw[key] === "string" ? Date.parse(raw[key] as string) : NaN;
    // Postgres keeps years 1 to 9999 here; JavaScript parses more.
    if (!Number.isFinite(at) || at < FIRST_STORABLE_MS || at > LAST_STORABLE_MS) {
      return fail(
        `Option "${key}" must be an ISO 8601 time such as 2025-01-31T00:00:00Z: got ${JSON.stringify(raw[key])}`,
      );
    }
    options[key] = new Date(at).toISOString();
  }
  for (const key of ["scope", "runId", "plugin", "source"] as const) {
    if (raw[key] === undefined) continue;
    if (typeof raw[key] !== "string" || !NAME.test(raw[key] as string)) {
      return fail(
        `Option "${key}" must be a name of 1 to 200 letters, digits or ._:@/-: got ${JSON.stringify(raw[key])}`,
      );
    }
    options[key] = raw[key];
  }
  return Effect.succeed({ query, options: options as RecallOptions });
};
