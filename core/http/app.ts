/**
 * @module
 * The HTTP API: Hono routes over the core services, run through a
 * `ManagedRuntime`. JSON throughout; every `/api` route needs the bearer
 * token; errors come out of `errorResponse` only. Served by `Deno.serve`
 * (JSR's `@std/http` is not reachable from Keel's build machines, and
 * `Deno.serve` is what it wraps).
 */
import { Effect, type ManagedRuntime } from "effect";
import { Hono } from "hono";
import type { Context as HonoContext } from "hono";
import { InvalidInputError, PayloadTooLargeError, UnauthorizedError } from "../errors/mod.ts";
import { PluginHost } from "../plugins/mod.ts";
import { MAX_NOTE_CHARS, Orchestrator, undoRun, type UndoServices } from "../orchestrator/mod.ts";
import {
  APPROVAL_STATUSES,
  type ApprovalStatus,
  Journal,
  RUN_STATUSES,
  type RunRecord,
  type RunStatus,
} from "../journal/mod.ts";
import { Audit } from "../telemetry/mod.ts";
import { argsDepth, type Limits, type Policy } from "../policy/mod.ts";
import { errorResponse, RETRY_AFTER_SECONDS } from "./errors.ts";
import { openApiDocument } from "./openapi.ts";
import { grantRoute, previewRoute, removeRoute, upgradeRoute } from "./pluginRoutes.ts";
import { explainRoute, simulateRoute } from "./policyRoutes.ts";
import { registerTriggerRoutes, startOptions } from "./triggerRoutes.ts";
import { BodyDeadlines, bodyTimeout, queryLimit, querySeconds } from "./params.ts";
import { DEFAULT_HTTP_TIMEOUT_MS } from "../config/mod.ts";
import type { Hooks, Scheduler } from "../triggers/mod.ts";
import type { Memory, Records } from "../memory/mod.ts";
import {
  collectionsRoute,
  defineCollectionRoute,
  deleteRecordRoute,
  memorySearchRoute,
  putRecordRoute,
  recordRoute,
  recordsRoute,
} from "./memoryRoutes.ts";

/** The services the API needs from the runtime. */
export type ApiServices =
  | PluginHost
  | Orchestrator
  | Journal
  | Audit
  | Policy
  | Limits
  | Memory
  | Records
  | Scheduler
  | Hooks
  | UndoServices;

/** The longest `?wait=` of a start or a run read, in seconds. */
const MAX_WAIT_SECONDS = 300;
/** The largest request body the API reads (a run's input is at most 48 KiB; a policy simulation's files 1 MiB). */
export const MAX_API_BODY_BYTES = 4 * 1024 * 1024;
/** How deep a request body may nest (routes check their own fields tighter: a run's input, 64). */
export const MAX_BODY_DEPTH = 128;

/** Keel's version, reported by `/healthz` and the OpenAPI document. */
export const KEEL_VERSION = "0.1.0";

const equalTokens = (a: string, b: string): boolean => {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
};

/** What any run, approval or webhook id looks like (generated ids, and those from webhooks and schedules). */
const ID = /^[\w.:-]{1,200}$/;
/** An audit head, `SEQ:HASH`, as `GET /api/audit/verify` reports it. */
const AUDIT_ANCHOR = /^([1-9][0-9]{0,15}):([0-9a-fA-F]{64})$/;

/** The fields of a run's start (`POST /api/workflows/{name}/runs`). */
const RUN_START_FIELDS = ["input", "startAt", "priority"];

/** A run as the run list shows it: what it is and where it stands, without its input and output. */
const runSummary = (run: RunRecord) => {
  const { input: _i, output: _o, pins: _p, lease: _l, queuedAt: _q, agentCrashes: _a, ...summary } = run;
  return summary;
};

/** The decoded path segment right after `prefix`, if there is one. */
const pathSegment = (path: string, prefix: string): string | undefined => {
  const raw = path.slice(prefix.length).split("/")[0];
  if (!raw) return undefined;
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
};

/**
 * Build the Hono app over a runtime that provides the core services. `bodies` tracks the request bodies being read;
 * the HTTP server stops those that take longer than its timeout (without a server, nothing does).
 */
export const makeApp = (
  runtime: ManagedRuntime.ManagedRuntime<ApiServices, unknown>,
  token: string,
  bodies: BodyDeadlines = new BodyDeadlines(DEFAULT_HTTP_TIMEOUT_MS),
): Hono => {
  const app = new Hono();
  const started = performance.now();

  const respond = async <A>(c: HonoContext, effect: Effect.Effect<A, unknown, ApiServices>, status = 200) => {
    const exit = await runtime.runPromiseExit(effect);
    if (exit._tag === "Success") return c.json(exit.value as never, status as 200);
    const failure = exit.cause.reasons.find((r) => r._tag === "Fail");
    const { status: code, body } = errorResponse(failure && "error" in failure ? failure.error : exit.cause);
    if (code === 429) c.header("Retry-After", String(RETRY_AFTER_SECONDS));
    return c.json(body, code as 500);
  };
  /**
   * A request's JSON object body: at most `MAX_API_BODY_BYTES` (the rest is not read), `MAX_BODY_DEPTH` deep, and
   * arrived within the HTTP timeout (else 408).
   */
  const body = (c: HonoContext) =>
    Effect.gen(function* () {
      const raw = yield* Effect.tryPromise({
        try: () => bodies.read(c.req.raw, MAX_API_BODY_BYTES),
        catch: () => new InvalidInputError({ message: "Cannot read the request body" }),
      });
      if (raw === "timed_out") return yield* bodyTimeout(bodies);
      if (raw === "too_large") {
        return yield* new PayloadTooLargeError({
          message: `Request body is over ${MAX_API_BODY_BYTES} bytes`,
          details: { limit: MAX_API_BODY_BYTES },
        });
      }
      const value = yield* Effect.try({
        try: () => {
          const text = new TextDecoder("utf-8", { fatal: true }).decode(raw);
          return text.trim() === "" ? {} : JSON.parse(text);
        },
        catch: () => new InvalidInputError({ message: "Request body must be a JSON object" }),
      });
      if (value === null || typeof value !== "object" || Array.isArray(value)) {
        return yield* new InvalidInputError({ message: "Request body must be a JSON object" });
      }
      // Checked without recursion: every route may then walk the body recursively.
      if (argsDepth(value, MAX_BODY_DEPTH) > MAX_BODY_DEPTH) {
        return yield* new InvalidInputError({ message: `Request body nests deeper than ${MAX_BODY_DEPTH} levels` });
      }
      return value as Record<string, unknown>;
    });

  app.onError((error, c) => {
    const { status, body } = errorResponse(error);
    return c.json(body, status as 500);
  });
  app.notFound((c) =>
    c.json({ error: { tag: "NotFoundError", message: `No route for ${c.req.method} ${c.req.path}` } }, 404)
  );

  app.get(
    "/healthz",
    (c) => c.json({ ok: true, version: KEEL_VERSION, uptimeMs: Math.round(performance.now() - started) }),
  );
  app.get("/openapi.json", (c) => c.json(openApiDocument));

  app.use("/api/*", async (c, next) => {
    const header = c.req.header("authorization") ?? "";
    // The auth scheme is case-insensitive (RFC 9110 §11.1): "bearer …" is the same credential as "Bearer …".
    const given = /^bearer /i.test(header) ? header.slice(7) : "";
    if (!equalTokens(given, token)) {
      const { status, body } = errorResponse(
        new UnauthorizedError({ message: "Missing or wrong bearer token (see KEEL_TOKEN or <data dir>/token)" }),
      );
      return c.json(body, status as 401);
    }
    await next();
  });
  // An id no record can have (Keel's ids are short, of letters, digits and "_.:-") names nothing: 404 before any
  // store read, where a key that long is an error.
  for (const [prefix, what] of [["/api/runs/", "run"], ["/api/approvals/", "approval"], ["/api/hooks/", "webhook"]]) {
    app.use(`${prefix}*`, async (c, next) => {
      const id = pathSegment(c.req.path, prefix);
      if (id !== undefined && !ID.test(id)) {
        const message = `No ${what} with id "${id.length > 80 ? `${id.slice(0, 80)}…` : id}"`;
        return c.json({ error: { tag: "NotFoundError", message } }, 404);
      }
      await next();
    });
  }
  registerTriggerRoutes(app, runtime, respond, body, bodies);

  app.get("/api/plugins", (c) => respond(c, Effect.map(PluginHost.use((h) => h.list), (plugins) => ({ plugins }))));
  app.post("/api/plugins", (c) =>
    respond(
      c,
      Effect.gen(function* () {
        const b = yield* body(c);
        if (typeof b.path !== "string" || b.path === "") {
          return yield* new InvalidInputError({
            message: 'Field "path" must be the plugin\'s folder or .tar.gz archive',
          });
        }
        if (b.grant === undefined) {
          return yield* new InvalidInputError({
            message: 'Field "grant" is required: the permissions you give the plugin, e.g. {"net": ["127.0.0.1:2525"]}',
          });
        }
        const host = yield* PluginHost;
        const plugin = yield* host.install(
          { path: b.path, grant: b.grant, config: b.config, isolation: b.isolation, override: b.override },
          "operator",
        );
        const { config: _c, ...shown } = plugin;
        return { plugin: shown };
      }),
      201,
    ));
  app.post("/api/plugins/preview", (c) => respond(c, Effect.flatMap(body(c), previewRoute)));
  app.post(
    "/api/plugins/:name/upgrade",
    (c) => respond(c, Effect.flatMap(body(c), (b) => upgradeRoute(c.req.param("name"), b)), 201),
  );
  app.post(
    "/api/plugins/:name/versions/:version/grant",
    (c) => respond(c, Effect.flatMap(body(c), (b) => grantRoute(c.req.param("name"), c.req.param("version"), b))),
  );
  app.delete(
    "/api/plugins/:name",
    (c) => respond(c, removeRoute(c.req.param("name"), c.req.query("version"), c.req.query("force"))),
  );
  app.delete(
    "/api/plugins/:name/versions/:version",
    (c) => respond(c, removeRoute(c.req.param("name"), c.req.param("version"), c.req.query("force"))),
  );

  app.post("/api/workflows/:name/runs", (c) =>
    respond(
      c,
      Effect.gen(function* () {
        const b = yield* body(c);
        // A field the start does not know (a "delay" meant for the query, a typo) is refused, not ignored.
        const unknown = Object.keys(b).find((key) => !RUN_START_FIELDS.includes(key));
        if (unknown !== undefined) {
          return yield* new InvalidInputError({
            message: `Unknown field "${
              unknown.length > 80 ? `${unknown.slice(0, 80)}…` : unknown
            }": a run's start takes ${RUN_START_FIELDS.join(", ")} (delay and priority can also be queries)`,
          });
        }
        const wait = yield* querySeconds(c.req.query("wait"), "wait", MAX_WAIT_SECONDS);
        const orchestrator = yield* Orchestrator;
        const options = yield* startOptions(b, c.req.query());
        const run = yield* orchestrator.start(c.req.param("name"), b.input ?? {}, "operator", {
          ...options,
          capped: true,
        });
        if (wait === undefined) return { runId: run.id, status: run.status };
        return { runId: run.id, ...(yield* orchestrator.wait(run.id, wait)) };
      }),
      202,
    ));

  app.get("/api/runs", (c) =>
    respond(
      c,
      Effect.gen(function* () {
        const { status, workflow, before } = c.req.query();
        if (status !== undefined && !RUN_STATUSES.includes(status as RunStatus)) {
          return yield* new InvalidInputError({
            message: `Query "status" must be one of ${RUN_STATUSES.join(", ")}: got "${status}"`,
          });
        }
        if (workflow !== undefined && !ID.test(workflow)) {
          return yield* new InvalidInputError({
            message: `Query "workflow" must be a workflow name: got "${workflow}"`,
          });
        }
        if (before !== undefined && !ID.test(before)) {
          return yield* new InvalidInputError({ message: `Query "before" must be a run id: got "${before}"` });
        }
        const limit = yield* queryLimit(c.req.query("limit"), 50, 1000);
        const journal = yield* Journal;
        // The page starts where that run was created: it must be one.
        if (before !== undefined && !(yield* journal.getRun(before))) {
          return yield* new InvalidInputError({ message: `Query "before" must be the id of a run: got "${before}"` });
        }
        const page = yield* journal.browseRuns({ status: status as RunStatus | undefined, workflow, limit, before });
        return { runs: page.runs.map(runSummary), ...(page.next ? { next: page.next } : {}) };
      }),
    ));

  app.get("/api/runs/:id", (c) =>
    respond(
      c,
      Effect.gen(function* () {
        const orchestrator = yield* Orchestrator;
        const wait = yield* querySeconds(c.req.query("wait"), "wait", MAX_WAIT_SECONDS);
        return yield* orchestrator.wait(c.req.param("id"), wait ?? 0);
      }),
    ));

  app.post(
    "/api/runs/:id/undo",
    (c) => respond(c, Effect.flatMap(body(c), () => undoRun(c.req.param("id"), "operator"))),
  );

  app.post("/api/runs/:id/cancel", (c) =>
    respond(
      c,
      Effect.gen(function* () {
        const b = yield* body(c);
        const reason = b.reason;
        if (reason !== undefined && (typeof reason !== "string" || reason.length > 1000)) {
          return yield* new InvalidInputError({
            message: 'Field "reason" must be a string of at most 1000 characters',
          });
        }
        const orchestrator = yield* Orchestrator;
        return yield* orchestrator.cancel(c.req.param("id"), "operator", reason);
      }),
    ));

  app.get("/api/approvals", (c) =>
    respond(
      c,
      Effect.gen(function* () {
        const status = c.req.query("status");
        if (status !== undefined && !APPROVAL_STATUSES.includes(status as ApprovalStatus)) {
          return yield* new InvalidInputError({
            message: `Query "status" must be one of ${APPROVAL_STATUSES.join(", ")}: got "${status}"`,
          });
        }
        const limit = yield* queryLimit(c.req.query("limit"), 1000, 10_000);
        const journal = yield* Journal;
        return { approvals: yield* journal.listApprovals({ status: status as ApprovalStatus | undefined, limit }) };
      }),
    ));

  for (const verb of ["approve", "deny"] as const) {
    app.post(`/api/approvals/:id/${verb}`, (c) =>
      respond(
        c,
        Effect.gen(function* () {
          const b = yield* body(c);
          if (b.note !== undefined && (typeof b.note !== "string" || b.note.length > MAX_NOTE_CHARS)) {
            return yield* new InvalidInputError({
              message: `Field "note" must be a string of at most ${MAX_NOTE_CHARS} characters`,
            });
          }
          if (b.resolution !== undefined && b.resolution !== "retry" && b.resolution !== "delivered") {
            return yield* new InvalidInputError({ message: 'Field "resolution" must be "retry" or "delivered"' });
          }
          if (b.by !== undefined && (typeof b.by !== "string" || !/^[\w.@ -]{1,64}$/.test(b.by))) {
            return yield* new InvalidInputError({ message: 'Field "by" must be a short name' });
          }
          const orchestrator = yield* Orchestrator;
          const approval = yield* orchestrator.decide(c.req.param("id"), {
            approve: verb === "approve",
            actor: typeof b.by === "string" ? `operator:${b.by}` : "operator",
            note: b.note as string | undefined,
            resolution: b.resolution as "retry" | "delivered" | undefined,
          });
          return { approval };
        }),
      ));
  }

  app.get("/api/audit", (c) =>
    respond(
      c,
      Effect.gen(function* () {
        const limit = yield* queryLimit(c.req.query("limit"), 1000, 10_000);
        const runId = c.req.query("runId");
        if (runId !== undefined && !ID.test(runId)) {
          return yield* new InvalidInputError({ message: 'Query "runId" must be a run id like "run_0123…"' });
        }
        const audit = yield* Audit;
        return { events: yield* audit.list({ runId, limit }) };
      }),
    ));
  app.get("/api/audit/verify", (c) =>
    respond(
      c,
      Effect.gen(function* () {
        const anchor = c.req.query("anchor");
        if (anchor === undefined) return yield* Audit.use((a) => a.verify());
        const m = AUDIT_ANCHOR.exec(anchor);
        if (!m || !Number.isSafeInteger(Number(m[1]))) {
          return yield* new InvalidInputError({
            message: 'Query "anchor" must be an audit head as `verify` reports it, "SEQ:HASH" (64 hex digits)',
          });
        }
        return yield* Audit.use((a) => a.verify({ seq: Number(m[1]), hash: m[2].toLowerCase() }));
      }),
    ));

  app.post("/api/policy/explain", (c) => respond(c, Effect.flatMap(body(c), explainRoute)));
  app.post("/api/policy/simulate", (c) => respond(c, Effect.flatMap(body(c), simulateRoute)));

  app.get("/api/memory", (c) => respond(c, memorySearchRoute(c.req.queries())));
  app.get("/api/collections", (c) => respond(c, collectionsRoute));
  app.put(
    "/api/collections/:name",
    (c) => respond(c, Effect.flatMap(body(c), (b) => defineCollectionRoute(c.req.param("name"), b))),
  );
  app.get("/api/collections/:name/records", (c) => respond(c, recordsRoute(c.req.param("name"), c.req.queries())));
  app.get("/api/collections/:name/records/:id", (c) => respond(c, recordRoute(c.req.param("name"), c.req.param("id"))));
  app.put(
    "/api/collections/:name/records/:id",
    (c) => respond(c, Effect.flatMap(body(c), (b) => putRecordRoute(c.req.param("name"), c.req.param("id"), b))),
  );
  app.delete(
    "/api/collections/:name/records/:id",
    (c) => respond(c, deleteRecordRoute(c.req.param("name"), c.req.param("id"))),
  );

  return app;
};
