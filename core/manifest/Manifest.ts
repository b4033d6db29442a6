/**
 * @module
 * The plugin manifest (`plugin.json`): what a plugin is, what it asks for and
 * what it declares. Parsing returns either a typed manifest or a
 * `ManifestError` naming the file, the field and why.
 */
import { Cron, Effect } from "effect";
import { Validator } from "@cfworker/json-schema";
import { ManifestError } from "../errors/mod.ts";
import { schemaErrors } from "./schemaErrors.ts";
import type { SchemaChecker } from "./SchemaChecker.ts";

export { schemaErrors };

/** A JSON Schema document (draft 2020-12 subset, validated without `eval`). */
export type JsonSchema = Record<string, unknown>;

/** Effect classes, in rising order of care. */
export const EFFECT_CLASSES = ["read", "write", "irreversible", "financial"] as const;
/** The class of an effect decides policy defaults and retry behaviour. */
export type EffectClass = typeof EFFECT_CLASSES[number];

/** One side effect a connector can perform. */
export interface EffectDecl {
  readonly name: string;
  readonly class: EffectClass;
  readonly description: string;
  readonly idempotency: "none" | "key";
  readonly input: JsonSchema;
  readonly output?: JsonSchema;
  readonly compensate?: string;
  /** How the host may retry a failed call: never, with backoff (reads), or only with the idempotency key. */
  readonly retry: "none" | "backoff" | "idempotent-key";
  /** Retry timing for an effect the host retries (see `core/gateway/retry.ts`); absent: the host's defaults. */
  readonly backoff?: { readonly baseMs?: number; readonly capMs?: number; readonly maxAttempts?: number };
  /** At most `count` calls per `per` (a duration like `1m`), enforced at the Gateway. */
  readonly rateLimit?: { readonly count: number; readonly per: string };
  /** What one call costs, charged against budgets. */
  readonly cost?: { readonly usdPerCall: number };
}

/** One workflow entry point an agent offers. */
export interface WorkflowDecl {
  readonly name: string;
  readonly description: string;
  readonly input: JsonSchema;
  /** At most this many runs of the workflow execute at once (others queue); default: no limit of its own. */
  readonly concurrency?: number;
  /** Start this workflow on a cron schedule (checked with effect's `Cron` at install; `tz` defaults to UTC). */
  readonly schedule?: WorkflowSchedule;
}

/** A cron schedule on a workflow: five fields, or six with seconds first. */
export interface WorkflowSchedule {
  readonly cron: string;
  /** An IANA time zone such as `Europe/Berlin`; default `UTC`. */
  readonly tz?: string;
  /** The input of every scheduled run (checked against the workflow's input schema); default `{}`. */
  readonly input?: Record<string, unknown>;
}

/** Permissions a plugin requests; templates like `{host}:{port}` refer to its config. */
export interface Permissions {
  readonly net: ReadonlyArray<string>;
  readonly env: ReadonlyArray<string>;
  readonly read: ReadonlyArray<string>;
  readonly write: ReadonlyArray<string>;
  /** Powers granted only with an operator override (see `Grant.ts`): `true` for all, or a list. */
  readonly run?: true | ReadonlyArray<string>;
  readonly ffi?: true | ReadonlyArray<string>;
  readonly sys?: true | ReadonlyArray<string>;
  readonly all?: true;
  /** In a resolved request only: the items Keel grants only with an operator override (`run:git`, `net:*` …). */
  readonly needsOverride?: ReadonlyArray<string>;
}

/** Record collections an agent declares, by exact name; writing does not imply reading. */
export interface RecordsAccess {
  readonly read: ReadonlyArray<string>;
  readonly write: ReadonlyArray<string>;
}

/** A validated `plugin.json`. */
export interface Manifest {
  readonly name: string;
  readonly version: string;
  readonly kind: "connector" | "agent";
  readonly description: string;
  readonly config?: JsonSchema;
  readonly permissions: Permissions;
  readonly effects: ReadonlyArray<EffectDecl>;
  readonly uses: ReadonlyArray<string>;
  /**
   * For agents: at most this many runs of its workflows execute at once (others queue). For connectors: at most
   * this many of its effect calls are in flight at once (others wait their turn at the Gateway).
   */
  readonly concurrency?: number;
  /** For agents: other agents' workflows it may start as child workflows (its own it always may). */
  readonly children?: ReadonlyArray<string>;
  /**
   * For agents: the record collections its workflows may read (`get`, `query`) and write (`put`). Absent (a
   * manifest written before this field): no records access at all.
   */
  readonly records?: RecordsAccess;
  readonly workflows: ReadonlyArray<WorkflowDecl>;
  /** `worker` (in-process Worker) or `process` (a sandboxed child); absent: the host decides. */
  readonly isolation?: "worker" | "process";
  /** Periodic health check the host runs. */
  readonly health?: { readonly intervalSeconds: number; readonly timeoutMs: number };
  /** npm packages the plugin may import, as `name@version`. */
  readonly npm: ReadonlyArray<string>;
}

const NAME = "^[a-z][a-z0-9_-]{0,63}$";
const EFFECT_NAME = "^[a-z][a-z0-9_]*(\\.[a-z][a-z0-9_]*)+$";
const SEMVER = "^(0|[1-9]\\d*)\\.(0|[1-9]\\d*)\\.(0|[1-9]\\d*)(?:-[0-9A-Za-z.-]+)?(?:\\+[0-9A-Za-z.-]+)?$";
const strings = { type: "array", items: { type: "string", minLength: 1 }, uniqueItems: true };
/** A record collection's name, as `Records` defines it: no wildcard, no other spelling. */
export const COLLECTION_NAME = "^[a-z][a-z0-9_]{0,62}$";
const collections = { type: "array", items: { type: "string", pattern: COLLECTION_NAME }, uniqueItems: true };

/** The JSON Schema every `plugin.json` must satisfy. */
export const MANIFEST_SCHEMA: JsonSchema = {
  type: "object",
  required: ["name", "version", "kind", "description"],
  additionalProperties: false,
  properties: {
    $schema: { type: "string" },
    name: { type: "string", pattern: NAME },
    // As long as the API takes in a path (`/api/plugins/{name}/versions/{version}`).
    version: { type: "string", pattern: SEMVER, maxLength: 64 },
    kind: { enum: ["connector", "agent"] },
    description: { type: "string", minLength: 1 },
    config: { type: "object" },
    permissions: {
      type: "object",
      additionalProperties: false,
      properties: {
        net: strings,
        env: strings,
        read: strings,
        write: strings,
        // Refused unless the operator overrides them at install (Grant.ts), so they can be requested.
        run: { anyOf: [{ const: true }, strings] },
        ffi: { anyOf: [{ const: true }, strings] },
        sys: { anyOf: [{ const: true }, strings] },
        all: { const: true },
      },
    },
    effects: {
      type: "array",
      items: {
        type: "object",
        required: ["name", "class", "description", "input"],
        additionalProperties: false,
        properties: {
          name: { type: "string", pattern: EFFECT_NAME },
          class: { enum: [...EFFECT_CLASSES] },
          description: { type: "string" },
          idempotency: { enum: ["none", "key"] },
          input: { type: "object" },
          output: { type: "object" },
          compensate: { type: "string", pattern: EFFECT_NAME },
          retry: { enum: ["none", "backoff", "idempotent-key"] },
          backoff: {
            type: "object",
            additionalProperties: false,
            properties: {
              baseMs: { type: "integer", minimum: 1, maximum: 60000 },
              capMs: { type: "integer", minimum: 1, maximum: 300000 },
              maxAttempts: { type: "integer", minimum: 1, maximum: 10 },
            },
          },
          rateLimit: {
            type: "object",
            required: ["count", "per"],
            additionalProperties: false,
            properties: {
              count: { type: "integer", minimum: 1 },
              per: { type: "string", pattern: "^[1-9][0-9]*(s|m|h|d)$" },
            },
          },
          cost: {
            type: "object",
            required: ["usdPerCall"],
            additionalProperties: false,
            properties: { usdPerCall: { type: "number", minimum: 0 } },
          },
        },
      },
    },
    uses: { type: "array", items: { type: "string", pattern: EFFECT_NAME }, uniqueItems: true },
    concurrency: { type: "integer", minimum: 1, maximum: 1000 },
    children: { type: "array", items: { type: "string", pattern: "^[a-z][a-z0-9_]{0,63}$" }, uniqueItems: true },
    records: {
      type: "object",
      additionalProperties: false,
      properties: { read: collections, write: collections },
    },
    isolation: { enum: ["worker", "process"] },
    health: {
      type: "object",
      additionalProperties: false,
      properties: {
        intervalSeconds: { type: "integer", minimum: 1, maximum: 86400 },
        timeoutMs: { type: "integer", minimum: 10, maximum: 60000 },
      },
    },
    npm: {
      type: "array",
      items: { type: "string", pattern: "^(@[a-z0-9._-]+/)?[a-z0-9._-]+@[0-9][0-9A-Za-z.+-]*$" },
      uniqueItems: true,
    },
    workflows: {
      type: "array",
      items: {
        type: "object",
        required: ["name", "description", "input"],
        additionalProperties: false,
        properties: {
          name: { type: "string", pattern: "^[a-z][a-z0-9_]{0,63}$" },
          description: { type: "string" },
          input: { type: "object" },
          schedule: {
            type: "object",
            required: ["cron"],
            additionalProperties: false,
            properties: {
              cron: { type: "string", minLength: 1, maxLength: 200 },
              tz: { type: "string", minLength: 1, maxLength: 64 },
              input: { type: "object" },
            },
          },
          concurrency: { type: "integer", minimum: 1, maximum: 1000 },
        },
      },
    },
  },
};

/** Never granted, not even with an override (`run`, `ffi`, `sys`, `all` need one: see `Grant.ts`). */
const FORBIDDEN_PERMISSIONS = ["import", "hrtime"];
const manifestValidator = new Validator(MANIFEST_SCHEMA, "2020-12", false);

/**
 * Whether a parsed cron ever fires: `Cron.parse` accepts "0 0 31 2 *" (31 February), for which `Cron.next` and
 * `Cron.prev` throw.
 */
export const cronMatches = (cron: Cron.Cron): boolean => {
  try {
    Cron.next(cron, new Date(0));
    return true;
  } catch {
    return false;
  }
};

/**
 * Validate a parsed `plugin.json`; `file` is only used in messages. With a `checker` (the host's), a schedule's input
 * is checked against a workflow input schema with patterns off the main thread, under its deadline.
 */
export const validateManifest = (
  raw: unknown,
  file: string,
  checker?: SchemaChecker,
): Effect.Effect<Manifest, ManifestError> =>
  Effect.gen(function* () {
    if (raw !== null && typeof raw === "object" && "permissions" in raw) {
      const perms = (raw as { permissions: unknown }).permissions;
      if (perms !== null && typeof perms === "object") {
        const bad = Object.keys(perms).filter((key) => FORBIDDEN_PERMISSIONS.includes(key));
        if (bad.length) {
          return yield* new ManifestError({
            message: `Invalid manifest "${file}": field "permissions.${bad[0]}" is never granted to a plugin`,
            details: { file, field: `permissions.${bad[0]}` },
          });
        }
      }
    }
    const errors = schemaErrors(manifestValidator, raw);
    if (errors.length) {
      return yield* new ManifestError({
        message: `Invalid manifest "${file}": ${errors[0]}`,
        details: { file, errors },
      });
    }
    const m = raw as Partial<Manifest> & Pick<Manifest, "name" | "version" | "kind" | "description">;
    const manifest: Manifest = {
      name: m.name,
      version: m.version,
      kind: m.kind,
      description: m.description,
      config: m.config,
      permissions: {
        net: m.permissions?.net ?? [],
        env: m.permissions?.env ?? [],
        read: m.permissions?.read ?? [],
        write: m.permissions?.write ?? [],
        ...Object.fromEntries(
          (["run", "ffi", "sys", "all"] as const).flatMap((k) =>
            m.permissions?.[k] === undefined ? [] : [[k, m.permissions[k]]]
          ),
        ),
      },
      effects: (m.effects ?? []).map((e) => ({
        ...e,
        idempotency: e.idempotency ?? "none",
        retry: e.retry ?? (e.class === "read" ? "backoff" : e.idempotency === "key" ? "idempotent-key" : "none"),
      })),
      uses: m.uses ?? [],
      ...(m.concurrency !== undefined ? { concurrency: m.concurrency } : {}),
      ...(m.children !== undefined ? { children: m.children } : {}),
      // Only when present: the manifest hash of a plugin installed before this field stays what it was.
      ...(m.records !== undefined ? { records: { read: m.records.read ?? [], write: m.records.write ?? [] } } : {}),
      workflows: m.workflows ?? [],
      ...(m.isolation ? { isolation: m.isolation } : {}),
      ...(m.health
        ? { health: { intervalSeconds: m.health.intervalSeconds ?? 60, timeoutMs: m.health.timeoutMs ?? 2000 } }
        : {}),
      npm: m.npm ?? [],
    };
    if (manifest.kind === "connector" && manifest.workflows.length) {
      return yield* invalid(file, "workflows", "is only for agents");
    }
    if (manifest.kind === "connector" && manifest.records) {
      return yield* invalid(file, "records", "is only for agents (a connector has no workflows to read or write them)");
    }
    if (manifest.kind === "agent" && manifest.effects.length) {
      return yield* invalid(file, "effects", 'is only for connectors (agents list what they call in "uses")');
    }
    const names = new Set<string>();
    for (const [i, e] of manifest.effects.entries()) {
      if (names.has(e.name)) return yield* invalid(file, `effects.${i}.name`, `repeats "${e.name}"`);
      names.add(e.name);
      if (e.retry === "idempotent-key" && e.idempotency !== "key") {
        return yield* invalid(
          file,
          `effects.${i}.retry`,
          `is "idempotent-key" but the effect does not honour an idempotency key`,
        );
      }
      if (e.retry === "backoff" && e.class !== "read") {
        return yield* invalid(file, `effects.${i}.retry`, `"backoff" retries blindly, which only a read effect allows`);
      }
      const retried = e.retry !== "none" && (e.class === "read" || (e.class === "write" && e.idempotency === "key"));
      if (e.backoff && !retried) {
        return yield* invalid(file, `effects.${i}.backoff`, "is set, but Keel never retries this effect");
      }
      if (e.compensate !== undefined && !manifest.effects.some((other) => other.name === e.compensate)) {
        return yield* invalid(
          file,
          `effects.${i}.compensate`,
          `names "${e.compensate}", which this plugin does not declare`,
        );
      }
      for (const key of ["input", "output"] as const) {
        const schema = e[key];
        if (schema === undefined) continue;
        const problem = schemaProblem(schema);
        if (problem) return yield* invalid(file, `effects.${i}.${key}`, `is not a usable JSON Schema: ${problem}`);
      }
    }
    for (const [i, w] of manifest.workflows.entries()) {
      const problem = schemaProblem(w.input);
      if (problem) return yield* invalid(file, `workflows.${i}.input`, `is not a usable JSON Schema: ${problem}`);
      if (w.schedule) {
        const parsed = Cron.parse(w.schedule.cron, w.schedule.tz ?? "UTC");
        if (parsed._tag === "Failure") {
          const field = /time zone/i.test(parsed.failure.message) ? "tz" : "cron";
          return yield* invalid(
            file,
            `workflows.${i}.schedule.${field}`,
            `is not a valid ${field === "tz" ? "time zone" : "cron expression"}: "${
              field === "tz" ? w.schedule.tz : w.schedule.cron
            }"`,
          );
        }
        if (!cronMatches(parsed.success)) {
          return yield* invalid(
            file,
            `workflows.${i}.schedule.cron`,
            `never matches a date (a day the month does not have?): "${w.schedule.cron}"`,
          );
        }
        // The plugin wrote both: a pattern in the input schema is checked off the main thread when Keel can.
        const wrong = checker
          ? yield* checker.prepare(w.input).check(w.schedule.input ?? {})
          : schemaErrors(new Validator(w.input, "2020-12", false), w.schedule.input ?? {}, 1);
        if (wrong.length) {
          return yield* invalid(
            file,
            `workflows.${i}.schedule.input`,
            `does not match the workflow's input: ${wrong[0]}`,
          );
        }
      }
    }
    if (manifest.config) {
      const problem = schemaProblem(manifest.config);
      if (problem) return yield* invalid(file, "config", `is not a usable JSON Schema: ${problem}`);
    }
    return manifest;
  });

const invalid = (file: string, field: string, why: string) =>
  new ManifestError({ message: `Invalid manifest "${file}": field "${field}" ${why}`, details: { file, field } });

/** Why a JSON Schema cannot be used to validate anything, or undefined when it can. */
export const schemaProblem = (schema: JsonSchema): string | undefined => {
  try {
    new Validator(schema, "2020-12", false).validate(null);
    return shapeProblem(schema, "", schema);
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
};

/**
 * Why a schema pattern could take exponential time to match, or undefined. JavaScript's regular expressions
 * backtrack, so a pattern such as `^(a+)+$` can take forever on a value that a plugin sends. Values are checked
 * against schemas with patterns in a separate process under a deadline (`SchemaChecker.ts`), which bounds what any
 * pattern costs Keel; these are refused at install all the same, as a schema that would refuse long values by
 * timing out. Conservatively: a backreference, and a group repeated more than once (`*`, `+`, `{2,}` …) whose body
 * itself repeats or has alternatives. A pattern with neither can still backtrack polynomially (`^\d*\d*x$` on a
 * long run of digits): the deadline stops that one.
 */
export const patternRisk = (pattern: string): string | undefined => {
  /** Per open group: does its body repeat something, or alternate? */
  const groups: Array<{ repeats: boolean; alternates: boolean }> = [{ repeats: false, alternates: false }];
  /** What the next quantifier applies to: a closed group's findings, or a single atom. */
  let last: { repeats: boolean; alternates: boolean } | "atom" | undefined;
  const quantifierAt = (i: number): { max: number; end: number } | undefined => {
    const c = pattern[i];
    if (c === "*" || c === "+") return { max: Infinity, end: i + 1 };
    if (c === "?") return { max: 1, end: i + 1 };
    const m = c === "{" ? /^\{(\d+)(,(\d*))?\}/.exec(pattern.slice(i)) : null;
    if (!m) return undefined;
    return { max: m[2] === undefined ? Number(m[1]) : m[3] === "" ? Infinity : Number(m[3]), end: i + m[0].length };
  };
  for (let i = 0; i < pattern.length;) {
    const c = pattern[i];
    const top = groups[groups.length - 1];
    const q = quantifierAt(i);
    if (q && last !== undefined) {
      let end = q.end;
      if (pattern[end] === "?") end++; // lazy: the same backtracking
      if (q.max > 1) {
        if (last !== "atom" && (last.repeats || last.alternates)) {
          return "repeats a group that itself repeats or has alternatives: matching it can take exponential time";
        }
        top.repeats = true;
      }
      last = undefined;
      i = end;
      continue;
    }
    if (c === "\\") {
      if (/[1-9k]/.test(pattern[i + 1] ?? "")) return "uses a backreference: matching it can take exponential time";
      last = "atom";
      i += 2;
      continue;
    }
    if (c === "[") {
      // A character class is one atom: skip to its closing bracket (escapes included).
      let j = i + 1;
      if (pattern[j] === "^") j++;
      if (pattern[j] === "]") j++;
      while (j < pattern.length && pattern[j] !== "]") j += pattern[j] === "\\" ? 2 : 1;
      last = "atom";
      i = j + 1;
      continue;
    }
    if (c === "(") {
      groups.push({ repeats: false, alternates: false });
      last = undefined;
      // `(?:`, `(?=`, `(?!`, `(?<name>` open a group as `(` does; `(?<=`, `(?<!` are one longer.
      i += pattern[i + 1] !== "?" ? 1 : pattern[i + 2] === "<" && "=!".includes(pattern[i + 3]) ? 4 : 3;
      continue;
    }
    if (c === ")") {
      const closed = groups.length > 1 ? groups.pop()! : top;
      // What the group's body does counts for the groups around it too.
      const outer = groups[groups.length - 1];
      outer.repeats ||= closed.repeats;
      last = closed;
      i++;
      continue;
    }
    if (c === "|") top.alternates = true;
    last = c === "|" || c === "^" || c === "$" ? undefined : "atom";
    i++;
  }
  return undefined;
};

// cfworker accepts these silently, then rejects every value (`type: "objekt"`)
// or throws while validating one (`pattern: "(["`, a nested `$ref` to nowhere),
// so check them up front.
const JSON_TYPES = ["null", "boolean", "object", "array", "number", "integer", "string"];
const SUB_SCHEMA = ["items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames"];
const SUB_SCHEMAS = ["allOf", "anyOf", "oneOf", "prefixItems"];
const SCHEMA_MAPS = ["properties", "patternProperties", "$defs", "definitions", "dependentSchemas"];
const shapeProblem = (schema: unknown, at: string, root: JsonSchema): string | undefined => {
  if (typeof schema === "boolean") return undefined;
  if (schema === null || typeof schema !== "object" || Array.isArray(schema)) return `"${at || "/"}" is not a schema`;
  const s = schema as Record<string, unknown>;
  const bad = (Array.isArray(s.type) ? s.type : s.type === undefined ? [] : [s.type])
    .find((t) => !JSON_TYPES.includes(t as string));
  if (bad !== undefined) return `"${at}/type" ${JSON.stringify(bad)} is not a JSON type`;
  if (typeof s.$ref === "string" && s.$ref.startsWith("#/")) {
    let target: unknown = root;
    for (const part of s.$ref.slice(2).split("/")) {
      const key = decodeURIComponent(part).replaceAll("~1", "/").replaceAll("~0", "~");
      target = target !== null && typeof target === "object" ? (target as Record<string, unknown>)[key] : undefined;
    }
    if (target === undefined) return `"${at}/$ref" ${JSON.stringify(s.$ref)} points at nothing in this schema`;
  }
  for (const p of [...(s.pattern === undefined ? [] : [s.pattern]), ...Object.keys(s.patternProperties ?? {})]) {
    try {
      new RegExp(p as string, "u");
    } catch {
      return `"${at}/pattern" ${JSON.stringify(p)} is not a valid regular expression`;
    }
    const risk = patternRisk(p as string);
    if (risk) return `"${at}/pattern" ${JSON.stringify(p)} ${risk}`;
  }
  for (const k of [...SUB_SCHEMA, ...SUB_SCHEMAS, ...SCHEMA_MAPS]) {
    const v = s[k];
    if (v === undefined) continue;
    const one = SUB_SCHEMA.includes(k) && !Array.isArray(v);
    const children = one ? [["", v]] : v !== null && typeof v === "object" ? Object.entries(v) : [["", v]];
    for (const [i, child] of children) {
      const problem = shapeProblem(child, i === "" ? `${at}/${k}` : `${at}/${k}/${i}`, root);
      if (problem) return problem;
    }
  }
  return undefined;
};

/** Read and validate `<dir>/plugin.json`. */
export const readManifest = (dir: string, checker?: SchemaChecker): Effect.Effect<Manifest, ManifestError> =>
  Effect.gen(function* () {
    const file = `${dir}/plugin.json`;
    const text = yield* Effect.tryPromise({
      try: () => Deno.readTextFile(file),
      catch: (cause) =>
        new ManifestError({
          message: cause instanceof Deno.errors.NotFound
            ? `Cannot install plugin from "${dir}": no plugin.json there`
            : `Cannot read "${file}": ${String(cause)}`,
          details: { file },
        }),
    });
    const raw = yield* Effect.try({
      try: () => JSON.parse(text) as unknown,
      catch: (cause) =>
        new ManifestError({
          message: `Invalid manifest "${file}": not JSON: ${(cause as Error).message}`,
          details: { file },
        }),
    });
    return yield* validateManifest(raw, file, checker);
  });

/** A stable SHA-256 of the manifest's canonical JSON, recorded with the grant. */
export const manifestHash = (manifest: Manifest): Effect.Effect<string> =>
  Effect.promise(() => sha256Hex(canonicalJson(manifest)));

/**
 * JSON with object keys sorted, so equal values hash equally: `JSON.stringify`'s output (the same
 * `toJSON`, omitted `undefined` and functions, `null` for them in arrays) with every object's keys in
 * `sort()` order, integer-like keys first in numeric order (as JavaScript orders an object's keys). Written out rather than as a `JSON.stringify` replacer, which rebuilds every object:
 * audit events are hashed with it on the hot path.
 */
export const canonicalJson = (value: unknown): string => canonical(value, "") as string;

/** A key JavaScript orders as an array index (before every other key of an object). */
const isIndexKey = (k: string) => /^(0|[1-9][0-9]*)$/.test(k) && Number(k) < 4_294_967_295;

const canonical = (value: unknown, key: string): string | undefined => {
  if (value !== null && typeof value === "object" && typeof (value as { toJSON?: unknown }).toJSON === "function") {
    value = (value as { toJSON: (key: string) => unknown }).toJSON(key);
  }
  if (value === null || typeof value !== "object") return JSON.stringify(value);
  if (Array.isArray(value)) {
    let out = "[";
    for (let i = 0; i < value.length; i++) {
      if (i) out += ",";
      out += canonical(value[i], String(i)) ?? "null";
    }
    return out + "]";
  }
  let keys = Object.keys(value).sort();
  // As the definition this replaced built a sorted object: integer-like keys come first, in numeric order.
  if (keys.some(isIndexKey)) {
    keys = [...keys.filter(isIndexKey).sort((a, b) => Number(a) - Number(b)), ...keys.filter((k) => !isIndexKey(k))];
  }
  let out = "{";
  let first = true;
  for (const k of keys) {
    const text = canonical((value as Record<string, unknown>)[k], k);
    if (text === undefined) continue;
    out += `${first ? "" : ","}${JSON.stringify(k)}:${text}`;
    first = false;
  }
  return out + "}";
};

/** Hex SHA-256 of a string. */
export const sha256Hex = async (text: string): Promise<string> => {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
};
