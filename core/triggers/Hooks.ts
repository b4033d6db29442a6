/**
 * @module
 * Inbound webhooks. The operator creates a hook for a workflow and gets its
 * secret once; Keel keeps the secret in Deno KV (`["hook", id]`), because
 * checking a signature needs it, and never shows it again. A delivery to
 * `POST /hooks/{id}` needs no bearer token but must carry
 * `X-Keel-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`, compared in
 * constant time; its JSON body is the run's input. `X-Keel-Delivery` makes a
 * delivery idempotent: the same delivery id always maps to the same run
 * (`hook_<id>_<delivery>`). An unknown hook costs the same HMAC as a known
 * one. Every delivery is audited, accepted (`webhook.delivered`) or rejected
 * (`webhook.rejected`, with the reason), never with its body; rejections at
 * most `REJECTED_PER_MINUTE` times a minute per hook and reason, the next one
 * counting those left out, so junk from anyone who can reach the port cannot
 * fill the log.
 *
 * Against replays of a captured request, a hook made with `signing:
 * "timestamped"` (the default; hooks made before the field are `body`)
 * needs `X-Keel-Timestamp: <unix seconds>`, and the signature covers
 * `<timestamp>.<X-Keel-Delivery, or nothing>.<raw body>`. A timestamp more than
 * `HOOK_TOLERANCE_SECONDS` from Keel's clock is refused (`stale_timestamp`),
 * and a timestamped delivery without a delivery id starts the run
 * `hook_<id>_t<timestamp>.<first 32 hex of its signature>`, so the same
 * request sent again within the window finds its run and starts nothing.
 * A `body` hook takes either form; its body-only signature does not stop a
 * replay unless the sender puts a unique id in the body or the delivery id.
 */
import { Clock, Context, Effect, Layer } from "effect";
import {
  InvalidInputError,
  NotFoundError,
  PayloadTooLargeError,
  QueueFullError,
  type StoreError,
  UnauthorizedError,
} from "../errors/mod.ts";
import { Kv, kvTry } from "../store/mod.ts";
import { HOOK_TOLERANCE_SECONDS } from "../config/mod.ts";
import { Journal } from "../journal/mod.ts";
import { PluginHost } from "../plugins/mod.ts";
import { MAX_RUN_INPUT_BYTES, Orchestrator } from "../orchestrator/mod.ts";
import { Audit } from "../telemetry/mod.ts";

export { HOOK_TOLERANCE_SECONDS };

/** Largest delivery body Keel reads (bytes): the body is the run's input, which is bounded so. */
export const MAX_HOOK_BODY_BYTES = MAX_RUN_INPUT_BYTES;
/** How a hook's deliveries are signed: over timestamp, delivery id and body (replays refused), or the body alone. */
export type HookSigning = "timestamped" | "body";
/** Rejected deliveries audited per minute, per hook and reason (all unknown hooks count as one). */
export const REJECTED_PER_MINUTE = 10;

/** A hook as the API lists it: never with its secret. */
export interface HookView {
  readonly id: string;
  readonly workflow: string;
  readonly name?: string;
  /** Where senders post: `/hooks/<id>`. */
  readonly path: string;
  /** `timestamped`: deliveries need `X-Keel-Timestamp`, signed with the body. Hooks made before the field: `body`. */
  readonly signing: HookSigning;
  readonly createdAt: string;
  readonly createdBy: string;
}

interface HookRecord extends HookView {
  readonly secret: string;
}

/** One inbound delivery, as the HTTP route read it. */
export interface Delivery {
  readonly hookId: string;
  /** The raw body, or undefined when it was larger than `MAX_HOOK_BODY_BYTES`. */
  readonly body: Uint8Array | undefined;
  /** The `X-Keel-Signature` header. */
  readonly signature?: string;
  /** The `X-Keel-Delivery` header. */
  readonly deliveryId?: string;
  /** The `X-Keel-Timestamp` header. */
  readonly timestamp?: string;
}

/** What an accepted delivery started (or had already started, for a repeated delivery id). */
export interface DeliveryResult {
  readonly runId: string;
  readonly status: string;
  readonly duplicate: boolean;
}

const HOOK_ID = /^hk_[0-9a-f]{24}$/;
const DELIVERY_ID = /^[A-Za-z0-9_.:-]{1,100}$/;
const HOOK_NAME = /^[\w .:-]{1,64}$/;
const TIMESTAMP = /^[0-9]{1,12}$/;

const hex = (bytes: Uint8Array) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
const randomHex = (n: number) => hex(crypto.getRandomValues(new Uint8Array(n)));

/** Hex HMAC-SHA256 of `body` under `secret` (the secret's UTF-8 bytes are the key). */
export const signHook = async (secret: string, body: Uint8Array | string): Promise<string> => {
  const key = await crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const data = typeof body === "string" ? new TextEncoder().encode(body) : body;
  return hex(new Uint8Array(await crypto.subtle.sign("HMAC", key, data as Uint8Array<ArrayBuffer>)));
};

/**
 * The headers that sign one delivery to a `timestamped` hook at `seconds` (default now): `X-Keel-Timestamp` and
 * `X-Keel-Signature` over `<seconds>.<body>`.
 */
export const signHookDelivery = async (
  secret: string,
  body: Uint8Array | string,
  seconds = Math.floor(Date.now() / 1000),
  deliveryId?: string,
): Promise<Record<string, string>> => {
  const bytes = typeof body === "string" ? new TextEncoder().encode(body) : body;
  const signature = await signHook(secret, signedMessage(String(seconds), deliveryId, bytes));
  return {
    "x-keel-timestamp": String(seconds),
    "x-keel-signature": `sha256=${signature}`,
    ...(deliveryId !== undefined ? { "x-keel-delivery": deliveryId } : {}),
  };
};

/** What a timestamped delivery's signature covers: `<timestamp>.<delivery id, or nothing>.<raw body>`. */
const signedMessage = (timestamp: string, deliveryId: string | undefined, body: Uint8Array): Uint8Array => {
  const prefix = new TextEncoder().encode(`${timestamp}.${deliveryId ?? ""}.`);
  const message = new Uint8Array(prefix.length + body.length);
  message.set(prefix);
  message.set(body, prefix.length);
  return message;
};

/** Compare two strings in time that depends only on their lengths. */
const equalConstantTime = (a: string, b: string): boolean => {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
};

type DeliveryError =
  | NotFoundError
  | UnauthorizedError
  | InvalidInputError
  | PayloadTooLargeError
  | QueueFullError
  | StoreError;

/** The webhook service. */
export class Hooks extends Context.Service<Hooks, {
  /** Create a hook for a workflow; the secret is returned here and never again. */
  create(
    workflow: string,
    name: string | undefined,
    actor: string,
    signing?: HookSigning,
  ): Effect.Effect<{ hook: HookView; secret: string }, NotFoundError | InvalidInputError | StoreError>;
  readonly list: Effect.Effect<HookView[], StoreError>;
  remove(id: string, actor: string): Effect.Effect<HookView, NotFoundError | StoreError>;
  /** Check and accept one delivery: verify, start (or find) the run, audit either way. */
  deliver(delivery: Delivery): Effect.Effect<DeliveryResult, DeliveryError>;
}>()("keel/triggers/Hooks") {
  /** Hooks in Deno KV. */
  static readonly layer = Layer.effect(
    Hooks,
    Effect.gen(function* () {
      const { kv } = yield* Kv;
      const journal = yield* Journal;
      const host = yield* PluginHost;
      const orchestrator = yield* Orchestrator;
      const audit = yield* Audit;
      // An unknown hook is checked against this, so it costs the same HMAC as a known one.
      const decoySecret = randomHex(32);

      const read = (id: string) =>
        HOOK_ID.test(id)
          ? kvTry("Cannot read hook", async () => (await kv.get<HookRecord>(["hook", id])).value ?? undefined)
          : Effect.succeed(undefined);
      // Hooks recorded before `signing` existed took body-only signatures; they keep doing so.
      const view = ({ secret: _s, ...shown }: HookRecord): HookView => ({ ...shown, signing: shown.signing ?? "body" });

      const create = Effect.fn("Hooks.create")(function* (
        workflow: string,
        name: string | undefined,
        actor: string,
        signing: HookSigning = "timestamped",
      ) {
        if (name !== undefined && !HOOK_NAME.test(name)) {
          return yield* new InvalidInputError({ message: `Field "name" must be a short label: got "${name}"` });
        }
        if (signing !== "timestamped" && signing !== "body") {
          return yield* new InvalidInputError({
            message: `Field "signing" must be "timestamped" or "body": got ${JSON.stringify(signing)}`,
          });
        }
        yield* host.findWorkflow(workflow);
        const id = `hk_${randomHex(12)}`;
        const record: HookRecord = {
          id,
          workflow,
          ...(name !== undefined ? { name } : {}),
          path: `/hooks/${id}`,
          signing,
          createdAt: new Date(yield* Clock.currentTimeMillis).toISOString(),
          createdBy: actor,
          secret: randomHex(32),
        };
        yield* kvTry("Cannot record hook", async () => {
          const res = await kv.atomic().check({ key: ["hook", id], versionstamp: null }).set(["hook", id], record)
            .commit();
          if (!res.ok) throw new Error(`hook "${id}" exists`);
        });
        yield* audit.append({ type: "webhook.created", actor, data: { hookId: id, workflow, name, signing } });
        return { hook: view(record), secret: record.secret };
      });

      const list = kvTry("Cannot list hooks", async () => {
        const out: HookView[] = [];
        for await (const e of kv.list<HookRecord>({ prefix: ["hook"] })) out.push(view(e.value));
        return out;
      });

      const remove = Effect.fn("Hooks.remove")(function* (id: string, actor: string) {
        const hook = yield* read(id);
        if (!hook) return yield* new NotFoundError({ message: `No webhook with id "${id}"` });
        yield* kvTry("Cannot remove hook", () => kv.delete(["hook", id]));
        yield* audit.append({ type: "webhook.deleted", actor, data: { hookId: id, workflow: hook.workflow } });
        return view(hook);
      });

      /**
       * Rejected deliveries are audited at most `REJECTED_PER_MINUTE` times a minute per hook and reason (all unknown
       * hooks count as one): anyone who can reach the port can send junk, and it must not fill the log. The rest are
       * counted, and the next event of that kind says how many were left out (`suppressed`).
       */
      const rejections = new Map<string, { since: number; written: number; suppressed: number }>();
      const auditRejection = (key: string, now: number): { write: boolean; suppressed: number } => {
        let r = rejections.get(key);
        if (!r || now - r.since >= 60_000) {
          r = { since: now, written: 0, suppressed: r?.suppressed ?? 0 };
          rejections.set(key, r);
        }
        if (r.written >= REJECTED_PER_MINUTE) {
          r.suppressed++;
          return { write: false, suppressed: 0 };
        }
        r.written++;
        const suppressed = r.suppressed;
        r.suppressed = 0;
        return { write: true, suppressed };
      };

      const deliver = Effect.fn("Hooks.deliver")(function* (d: Delivery) {
        const hookId = HOOK_ID.test(d.hookId) ? d.hookId : undefined;
        const deliveryId = d.deliveryId !== undefined && DELIVERY_ID.test(d.deliveryId) ? d.deliveryId : undefined;
        /** Refuse the delivery; `of` is the hook it is for once it is known to exist (else all unknown ones). */
        const reject = <E extends DeliveryError>(
          reason: string,
          error: E,
          extra: Record<string, unknown> = {},
          of = "*",
        ) => {
          const gate = auditRejection(`${of}:${reason}`, Date.now());
          return gate.write
            ? Effect.andThen(
              audit.append({
                type: "webhook.rejected",
                actor: hookId ? `webhook:${hookId}` : "webhook",
                data: {
                  hookId: hookId ?? null,
                  reason,
                  ...(d.body ? { bytes: d.body.length } : {}),
                  ...(deliveryId ? { deliveryId } : {}),
                  ...(gate.suppressed ? { suppressed: gate.suppressed } : {}),
                  ...extra,
                },
              }),
              Effect.fail(error),
            )
            : Effect.fail(error);
        };
        if (d.body === undefined) {
          // Counted against the hook it is for, when there is one: junk to unknown hooks must not hide it.
          const known = hookId ? yield* read(hookId) : undefined;
          return yield* reject(
            "too_large",
            new PayloadTooLargeError({
              message: `Webhook body is larger than ${MAX_HOOK_BODY_BYTES} bytes`,
              details: { limit: MAX_HOOK_BODY_BYTES },
            }),
            {},
            known?.id,
          );
        }
        const body = d.body;
        const hook = yield* read(d.hookId);
        // A timestamp the header gives is signed with the body; one that is not a number signs nothing.
        const timestamp = d.timestamp === undefined ? undefined : d.timestamp.trim();
        const stamped = timestamp !== undefined && TIMESTAMP.test(timestamp);
        // The delivery id is signed too: a captured request sent again under another id (or none) does not verify.
        const message = stamped ? signedMessage(timestamp, d.deliveryId, body) : body;
        // The same work whether or not the hook exists: one HMAC, one constant-time compare.
        const expected = yield* Effect.promise(() => signHook(hook?.secret ?? decoySecret, message));
        const given = /^sha256=([0-9a-fA-F]{64})$/.exec(d.signature?.trim() ?? "")?.[1]?.toLowerCase() ?? "";
        const signed = equalConstantTime(`sha256=${expected}`, `sha256=${given}`);
        if (!hook) {
          return yield* reject(
            "unknown_hook",
            new NotFoundError({ message: hookId ? `No webhook with id "${hookId}"` : "No webhook with that id" }),
          );
        }
        if (d.signature === undefined || d.signature === "") {
          return yield* reject(
            "missing_signature",
            new UnauthorizedError({ message: 'Webhook delivery needs header "X-Keel-Signature: sha256=<hex>"' }),
            {},
            hook.id,
          );
        }
        if (timestamp !== undefined && !stamped) {
          return yield* reject(
            "bad_timestamp",
            new UnauthorizedError({ message: 'Header "X-Keel-Timestamp" must be the Unix time in whole seconds' }),
            {},
            hook.id,
          );
        }
        if (timestamp === undefined && hook.signing === "timestamped") {
          return yield* reject(
            "missing_timestamp",
            new UnauthorizedError({
              message: 'Webhook delivery needs header "X-Keel-Timestamp: <unix seconds>", and "X-Keel-Signature" ' +
                'over "<timestamp>.<X-Keel-Delivery, or nothing>.<body>"',
            }),
            {},
            hook.id,
          );
        }
        if (!signed || given === "") {
          return yield* reject(
            "bad_signature",
            new UnauthorizedError({
              message: stamped
                ? "Webhook signature does not match the timestamp, delivery id and body"
                : "Webhook signature does not match the body",
            }),
            {},
            hook.id,
          );
        }
        if (stamped) {
          const skew = Math.round((yield* Clock.currentTimeMillis) / 1000) - Number(timestamp);
          if (Math.abs(skew) > HOOK_TOLERANCE_SECONDS) {
            return yield* reject(
              "stale_timestamp",
              new UnauthorizedError({
                message: `Webhook timestamp is ${Math.abs(skew)} s ${skew > 0 ? "old" : "ahead"}; Keel takes ` +
                  `deliveries within ${HOOK_TOLERANCE_SECONDS} s of its clock (sign each delivery when it is sent)`,
              }),
              { skew },
              hook.id,
            );
          }
        }
        if (d.deliveryId !== undefined && deliveryId === undefined) {
          return yield* reject(
            "bad_delivery_id",
            new InvalidInputError({
              message: 'Header "X-Keel-Delivery" must be 1 to 100 letters, digits or "_.:-"',
            }),
            {},
            hook.id,
          );
        }
        const text = new TextDecoder().decode(body);
        const input = text.trim() === "" ? {} : yield* Effect.try({
          try: () => JSON.parse(text) as unknown,
          catch: () => new InvalidInputError({ message: "Webhook body must be JSON" }),
        }).pipe(Effect.catch((error) => reject("invalid_json", error, {}, hook.id)));
        if (input === null || typeof input !== "object" || Array.isArray(input)) {
          return yield* reject(
            "invalid_json",
            new InvalidInputError({ message: "Webhook body must be a JSON object" }),
            {},
            hook.id,
          );
        }
        // A signed timestamp makes a request its own delivery id: sent again, it finds its run.
        const runId = deliveryId
          ? `hook_${hook.id}_${deliveryId}`
          : stamped
          ? `hook_${hook.id}_t${timestamp}.${given.slice(0, 32)}`
          : undefined;
        const accepted = (result: DeliveryResult) =>
          Effect.as(
            audit.append({
              type: "webhook.delivered",
              actor: `webhook:${hook.id}`,
              runId: result.runId,
              data: {
                hookId: hook.id,
                workflow: hook.workflow,
                bytes: body.length,
                duplicate: result.duplicate,
                ...(deliveryId ? { deliveryId } : {}),
                ...(stamped ? { timestamp: Number(timestamp) } : {}),
              },
            }),
            result,
          );
        const existing = runId ? yield* journal.getRun(runId) : undefined;
        if (existing) return yield* accepted({ runId: existing.id, status: existing.status, duplicate: true });
        const started = yield* Effect.result(
          orchestrator.start(hook.workflow, input, `webhook:${hook.id}`, {
            ...(runId ? { runId } : {}),
            trigger: { kind: "webhook", id: hook.id },
            capped: true,
          }),
        );
        if (started._tag === "Success") {
          return yield* accepted({ runId: started.success.id, status: started.success.status, duplicate: false });
        }
        const error = started.failure;
        if (error._tag === "StoreError" && runId) {
          // Two deliveries with one id raced; the one that lost sees the winner's run.
          const won = yield* journal.getRun(runId);
          if (won) return yield* accepted({ runId: won.id, status: won.status, duplicate: true });
        }
        if (error._tag === "NotFoundError") {
          return yield* reject(
            "workflow_unavailable",
            new NotFoundError({
              message: `Webhook "${hook.id}" starts workflow "${hook.workflow}", which no active agent offers`,
            }),
            { workflow: hook.workflow },
            hook.id,
          );
        }
        if (error._tag === "QueueFullError") {
          // The sender hears 429 and delivers again later (with its delivery id, the retry cannot start it twice).
          return yield* reject("queue_full", error, { workflow: hook.workflow }, hook.id);
        }
        if (error._tag === "InvalidInputError") {
          // The sender hears what was wrong; the audit log, which never holds the body, only which fields.
          const problems = (error.details as { errors?: unknown } | undefined)?.errors;
          const fields = Array.isArray(problems)
            ? problems.map((p) => /^field "([^"]{1,200})"/.exec(String(p))?.[1] ?? "(body)")
            : ["(body)"];
          return yield* reject("invalid_input", error, { workflow: hook.workflow, fields }, hook.id);
        }
        return yield* error;
      });

      return Hooks.of({ create, list, remove, deliver });
    }),
  );
}
