/**
 * @module
 * The trigger and replay routes: delayed and prioritised start options for
 * `POST /api/workflows/{name}/runs`, cron schedules (`GET /api/schedules`),
 * webhook management (`/api/hooks`), the public, signature-checked webhook
 * endpoint (`POST /hooks/{id}`, no bearer token), and `POST
 * /api/runs/{id}/replay`. `app.ts` registers them with `registerTriggerRoutes`.
 */
import { Clock, Effect, type ManagedRuntime } from "effect";
import type { Context as HonoContext, Hono } from "hono";
import { MAX_DELAY_SECONDS } from "../config/mod.ts";
import { InvalidInputError, type PayloadTooLargeError, type RequestTimeoutError } from "../errors/mod.ts";
import { replayRun, type StartOptions } from "../orchestrator/mod.ts";
import { Hooks, MAX_HOOK_BODY_BYTES, Scheduler } from "../triggers/mod.ts";
import type { ApiServices } from "./app.ts";
import { type BodyDeadlines, bodyTimeout, parseIsoTime, querySeconds } from "./params.ts";

/** The longest delayed start Keel accepts: one year. */

/**
 * Start options from `POST /api/workflows/{name}/runs`: `?delay=SECONDS` or
 * body `startAt` (ISO time) for a delayed start, `priority` (0–9) from the
 * body or the query.
 */
export const startOptions = Effect.fn("Http.startOptions")(function* (
  b: Record<string, unknown>,
  query: Record<string, string>,
) {
  const now = yield* Clock.currentTimeMillis;
  const delay = yield* querySeconds(query.delay, "delay", MAX_DELAY_SECONDS);
  let notBefore = delay === undefined ? undefined : now + Math.round(delay * 1000);
  if (b.startAt !== undefined) {
    const at = parseIsoTime(b.startAt);
    if (!Number.isFinite(at)) {
      return yield* new InvalidInputError({
        message:
          `Field "startAt" must be an ISO time with a zone, like 2030-01-01T09:00:00Z, on a date that exists: got ${
            JSON.stringify(b.startAt)
          }`,
      });
    }
    if (notBefore !== undefined) {
      return yield* new InvalidInputError({ message: 'Give either query "delay" or field "startAt", not both' });
    }
    notBefore = at;
  }
  const rawPriority = b.priority ?? query.priority;
  let priority: number | undefined;
  if (rawPriority !== undefined) {
    // The query carries text; the body must carry a number.
    priority = b.priority === undefined && /^\d$/.test(rawPriority as string)
      ? Number(rawPriority)
      : rawPriority as number;
    if (!Number.isInteger(priority) || priority < 0 || priority > 9) {
      return yield* new InvalidInputError({
        message: `"priority" must be an integer from 0 to 9: got ${
          typeof rawPriority === "string" ? JSON.stringify(rawPriority) : String(rawPriority)
        }`,
      });
    }
  }
  const options: StartOptions = {
    ...(priority !== undefined ? { priority } : {}),
    ...(notBefore !== undefined ? { notBefore } : {}),
    trigger: { kind: "http" },
  };
  return options;
});

type Respond = <A>(
  c: HonoContext,
  effect: Effect.Effect<A, unknown, ApiServices>,
  status?: number,
) => Promise<Response>;
type Body = (
  c: HonoContext,
) => Effect.Effect<Record<string, unknown>, InvalidInputError | PayloadTooLargeError | RequestTimeoutError>;

/** Register the trigger routes, and re-arm the scheduler after every plugin change made through the API. */
export const registerTriggerRoutes = (
  app: Hono,
  runtime: ManagedRuntime.ManagedRuntime<ApiServices, unknown>,
  respond: Respond,
  body: Body,
  bodies: BodyDeadlines,
): void => {
  // Installing, upgrading, granting or removing a plugin can add, change or drop schedules.
  app.use("/api/plugins/*", async (c, next) => {
    await next();
    if (c.req.method !== "GET" && c.res.status < 300) runtime.runFork(Scheduler.use((s) => s.refresh));
  });

  app.get(
    "/api/schedules",
    (c) => respond(c, Effect.map(Scheduler.use((s) => s.list), (schedules) => ({ schedules }))),
  );

  app.post("/api/hooks", (c) =>
    respond(
      c,
      Effect.gen(function* () {
        const b = yield* body(c);
        if (typeof b.workflow !== "string" || b.workflow === "") {
          return yield* new InvalidInputError({ message: 'Field "workflow" must name the workflow the hook starts' });
        }
        if (b.name !== undefined && typeof b.name !== "string") {
          return yield* new InvalidInputError({ message: 'Field "name" must be a string' });
        }
        if (b.signing !== undefined && b.signing !== "timestamped" && b.signing !== "body") {
          return yield* new InvalidInputError({
            message: `Field "signing" must be "timestamped" or "body": got ${JSON.stringify(b.signing)}`,
          });
        }
        const hooks = yield* Hooks;
        return yield* hooks.create(b.workflow, b.name as string | undefined, "operator", b.signing);
      }),
      201,
    ));
  app.get("/api/hooks", (c) => respond(c, Effect.map(Hooks.use((h) => h.list), (hooks) => ({ hooks }))));
  app.delete(
    "/api/hooks/:id",
    (c) => respond(c, Effect.map(Hooks.use((h) => h.remove(c.req.param("id"), "operator")), (hook) => ({ hook }))),
  );

  // Public: no bearer token; the hook's signature is the credential.
  app.post("/hooks/:id", (c) =>
    respond(
      c,
      Effect.gen(function* () {
        const raw = yield* Effect.tryPromise({
          try: () => bodies.read(c.req.raw, MAX_HOOK_BODY_BYTES),
          catch: () => new InvalidInputError({ message: "Cannot read the webhook body" }),
        });
        if (raw === "timed_out") return yield* bodyTimeout(bodies);
        const hooks = yield* Hooks;
        return yield* hooks.deliver({
          hookId: c.req.param("id"),
          body: raw === "too_large" ? undefined : raw,
          signature: c.req.header("x-keel-signature"),
          deliveryId: c.req.header("x-keel-delivery"),
          timestamp: c.req.header("x-keel-timestamp"),
        });
      }),
      202,
    ));

  app.post("/api/runs/:id/replay", (c) =>
    respond(
      c,
      Effect.gen(function* () {
        const b = yield* body(c);
        if (b.version !== undefined && (typeof b.version !== "string" || !/^[0-9A-Za-z.+-]{1,64}$/.test(b.version))) {
          return yield* new InvalidInputError({ message: 'Field "version" must be a version like "1.2.0"' });
        }
        return yield* replayRun(c.req.param("id"), { version: b.version as string | undefined, actor: "operator" });
      }),
    ));
};
