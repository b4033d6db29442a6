/**
 * @module
 * The Gateway: the only path to a side effect. For every effect request:
 * declared (the calling agent lists it, an installed connector provides it) →
 * valid (args match the input schema) → policy (allow, deny, or a durable
 * human gate) → intent journaled with an idempotency key → dispatch to the
 * connector → outcome journaled → audit event (what, who, which rule,
 * latency). The policy check yields an `Authorized` capability and `dispatch`
 * accepts nothing else, so no code path can skip the gate.
 *
 * The gate fails closed: a policy engine that throws, hangs past
 * `POLICY_TIMEOUT_MS` or answers nonsense, args nested too deep to inspect
 * safely, and limit counters that cannot be read all become a deny with rule
 * `fail-closed`, journaled and audited. Rates and budgets (the matching rules'
 * limits and the manifest's `rateLimit`) are counted atomically in Deno KV
 * just before dispatch, once per execution.
 *
 * One request at a time decides a step: a second request for the same run
 * and step (a replay while the first is still at the gate, two executors on
 * one approval) waits until the first's call is in flight or answered, then
 * joins that call or reads its outcome; one asking another call than the
 * one in flight is refused as diverged, even before that call's intent is
 * journaled. So a step is sent once and counted once. A call that loses its intent after being counted (another holder of
 * its idempotency key, an approval used meanwhile) gives the count back, and
 * so does the next request for a step whose count an execution took but
 * whose intent it never journaled (Keel stopped in between): the count's
 * hold (`Limits`) is deleted once the intent is journaled.
 *
 * A failed dispatch is retried by the effect's class (`retry.ts`): reads with
 * backoff, writes only under their idempotency key, irreversible and
 * financial effects never — an outcome Keel cannot know parks the run on an
 * `unknown_outcome` approval. The step shows `attempts`, `lastError` and
 * `nextAttemptAt` while it retries. A financial effect's intent is a
 * check-and-set on its idempotency key (`Journal.claimIntent`): strong
 * consistency here means at most one intent, hence at most one dispatch, per
 * key, whichever host or executor gets there second.
 *
 * Undo (`core/orchestrator/undo.ts`) sends compensations through here too, as
 * requests with `undo` set: declared by the connector's own `compensate`, not
 * by the agent's `uses`, journaled at `UNDO_SEQ_BASE + seq` as `undo:<effect>`.
 * A compensation that failed for certain (refused, or the connector said it
 * failed and did not run) is tried again by a later undo; any other recorded
 * failure is answered again as recorded, under its own tag.
 *
 * A step of the journal answers only the call it recorded: a replayed
 * workflow that asks another call at that position, or asks again for an
 * effect whose outcome is unknown with other args, gets a "diverged" error
 * and the step is left as it was.
 */
import { Cause, Clock, Context, Deferred, Effect, Fiber, Layer, Option, Random } from "effect";
import {
  ConflictError,
  EffectNotDeclaredError,
  type ErrorBody,
  InvalidInputError,
  PluginFailedError,
  PolicyDeniedError,
  recordedError,
  RunSuspendedError,
  type StoreError,
  toErrorBody,
} from "../errors/mod.ts";
import { canonicalJson, type EffectDecl, sha256Hex } from "../manifest/mod.ts";
import {
  type AppliedLimit,
  argsDepth,
  failClosed,
  Limits,
  manifestRateLimit,
  MAX_ARGS_DEPTH,
  Policy,
  policyContext,
  type PolicyDecision,
  type PolicyRequest,
  type Reservation,
  type Usage,
} from "../policy/mod.ts";
import {
  type ApprovalRecord,
  divergedAt,
  Journal,
  type RunStatus,
  type StepRecord,
  TERMINAL,
  timeOrderedId,
} from "../journal/mod.ts";
import { type CallError, type InstalledPlugin, PluginHost } from "../plugins/mod.ts";
import { Audit } from "../telemetry/mod.ts";
import { isShutdown, isUnknownOutcome, nextRetryDelay, retryModeOf } from "./retry.ts";

/** One effect request from a running workflow. */
export interface EffectRequest {
  readonly runId: string;
  readonly seq: number;
  readonly agent: InstalledPlugin;
  readonly workflow: string;
  readonly effect: string;
  readonly args: unknown;
  /** What this call costs in US dollars, when the caller knows better than the manifest's `cost.usdPerCall`. */
  readonly costUsd?: number;
  /** Model tokens this call uses, charged against token budgets. */
  readonly tokens?: number;
  /** Facts the orchestrator knows about the run, as `context.…` in conditions (`tainted`: a model read untrusted input). */
  readonly context?: Readonly<Record<string, unknown>>;
  /**
   * Set by undo only, never from a plugin's call: this request is the
   * compensation of the completed effect `effect` at step `seq`.
   */
  readonly undo?: { readonly effect: string; readonly seq: number };
  /**
   * The connector versions the run pinned at its start (connector name →
   * version): an effect goes to the pinned version even after an upgrade made
   * another one active. Absent: the active version serves.
   */
  readonly pins?: Readonly<Record<string, string>>;
}

/** Step numbers from here up belong to undo: the compensation of step `n` is step `UNDO_SEQ_BASE + n`. */
export const UNDO_SEQ_BASE = 1_000_000_000;

/** Statuses of a run that has not ended. */
const LIVE: ReadonlyArray<RunStatus> = ["queued", "running", "waiting_approval", "sleeping", "waiting_child"];

/** The journal name of a request's step: the effect, or `undo:<effect>` for a compensation. */
export const stepNameOf = (r: Pick<EffectRequest, "effect" | "undo">): string =>
  r.undo ? `undo:${r.undo.effect}` : r.effect;

/** How long the policy engine may take to decide before the request is denied. */
export const POLICY_TIMEOUT_MS = 1000;
/** How deep a JSON value nests, and the most the Gateway inspects (re-exported for the layers above). */
export { argsDepth, MAX_ARGS_DEPTH };

const DECISIONS = new Set(["allow", "approve", "deny"]);

/** Everything the Gateway can answer besides a result. */
export type GatewayError =
  | ConflictError
  | EffectNotDeclaredError
  | InvalidInputError
  | PolicyDeniedError
  | RunSuspendedError
  | CallError
  | StoreError;

declare const authorizedBrand: unique symbol;

/** Proof that one exact action passed the gate; only this module can make one. */
export interface Authorized {
  readonly [authorizedBrand]: true;
  readonly request: EffectRequest;
  readonly connector: InstalledPlugin;
  readonly decl: EffectDecl;
  readonly decision: PolicyDecision;
  readonly idempotencyKey: string;
  readonly approval?: ApprovalRecord;
  readonly usage?: Usage;
  /** What was counted against its limits, given back if the call is not sent after all. */
  readonly reservation?: Reservation;
}

const authorized = (
  request: EffectRequest,
  connector: InstalledPlugin,
  decl: EffectDecl,
  decision: PolicyDecision,
  idempotencyKey: string,
  approval?: ApprovalRecord,
  usage?: Usage,
  reservation?: Reservation,
): Authorized =>
  ({ request, connector, decl, decision, idempotencyKey, approval, usage, reservation }) as unknown as Authorized;

/** What an approval voided at use says happened to it, by the reason its audit event gives. */
const INVALIDATED = {
  "policy changed": "policy changed: the run asks again under the new policy",
  "action changed": "action changed: the run asks again for the action it requests now",
  "expired": "expired before the run could use it: the run asks again",
} as const;

/** The digest an approval is bound to: the exact effect, args, run, step and policy. */
export const actionDigest = (e: { effect: string; args: unknown; runId: string; seq: number; policyHash: string }) =>
  Effect.promise(() =>
    sha256Hex(canonicalJson({ effect: e.effect, args: e.args, runId: e.runId, seq: e.seq, policyHash: e.policyHash }))
  );

/** Largest effect step the journal can record, args and result together (Deno KV values are capped at 64 KiB). */
const MAX_EFFECT_RECORD = 60 * 1024;

/** A result too large to journal fails the effect, so it is still journaled and audited. */
const fitsJournal = (r: EffectRequest) => (value: unknown) => {
  // UTF-8 bytes of the JSON bound what Deno KV stores (it keeps strings as Latin-1 or UTF-16).
  const size = new TextEncoder().encode(JSON.stringify([value ?? null, r.args ?? null])).length;
  return size <= MAX_EFFECT_RECORD ? Effect.succeed(value) : Effect.fail(
    new PluginFailedError({
      message:
        `Effect "${r.effect}" ran, but its result and args are ${size} bytes; Keel records at most ${MAX_EFFECT_RECORD}`,
      details: { effect: r.effect, ran: true, size, limit: MAX_EFFECT_RECORD },
    }),
  );
};

/** The Gateway service. */
export class Gateway extends Context.Service<Gateway, {
  request(request: EffectRequest): Effect.Effect<unknown, GatewayError>;
  /** The hash of the policy set in force: an effect approval asked for under another one can never be used. */
  readonly policyHash: Effect.Effect<string>;
}>()("keel/gateway/Gateway") {
  /** The Gateway over the plugin host, policy engine, journal and audit log. */
  static readonly layer = Layer.effect(
    Gateway,
    Effect.gen(function* () {
      const host = yield* PluginHost;
      const policy = yield* Policy;
      const limits = yield* Limits;
      const journal = yield* Journal;
      const audit = yield* Audit;

      const now = Effect.map(Clock.currentTimeMillis, (ms) => new Date(ms).toISOString());
      const actorOf = (r: EffectRequest) => `plugin:${r.agent.name}`;
      /** The connector serving `effect` for this run: the version it pinned, else the active one. */
      const findConnector = (r: EffectRequest, effect: string) =>
        Effect.gen(function* () {
          for (const [name, version] of Object.entries(r.pins ?? {})) {
            const pinned = yield* Effect.result(host.get(name, version));
            if (pinned._tag === "Success") {
              const decl = pinned.success.manifest.effects.find((e) => e.name === effect);
              if (decl && pinned.success.activation !== "needs_grant") return { plugin: pinned.success, decl };
              continue;
            }
            // A pinned version removed by force: its runs fail rather than move to another version unseen.
            const active = yield* Effect.result(host.get(name));
            if (active._tag === "Success" && active.success.manifest.effects.some((e) => e.name === effect)) {
              return yield* pinned.failure;
            }
          }
          return yield* host.findEffect(effect);
        });

      /** Ask the engine, failing closed on a throw, a hang or a malformed answer. */
      const decideSafely = Effect.fn("Gateway.decideSafely")(function* (request: PolicyRequest) {
        const hash = (yield* policy.current).hash;
        const exit = yield* Effect.exit(Effect.timeoutOption(policy.decide(request), POLICY_TIMEOUT_MS));
        if (exit._tag === "Failure") {
          const error = Cause.squash(exit.cause);
          return failClosed(
            hash,
            `policy evaluation failed: ${error instanceof Error ? error.message : String(error)}`,
          );
        }
        if (Option.isNone(exit.value)) {
          return failClosed(hash, `policy evaluation timed out after ${POLICY_TIMEOUT_MS} ms`);
        }
        const d = exit.value.value as Partial<PolicyDecision> | null;
        if (
          d === null || typeof d !== "object" || !DECISIONS.has(d.decision as string) || typeof d.rule !== "string" ||
          typeof d.policyHash !== "string" || (d.limits !== undefined && !Array.isArray(d.limits))
        ) {
          return failClosed(hash, "policy engine returned a malformed decision");
        }
        return d as PolicyDecision;
      });

      /** The request the policy engine sees for an effect request, at time `nowMs`. */
      const policyRequest = (r: EffectRequest, connector: InstalledPlugin, decl: EffectDecl, nowMs: number) => ({
        effect: r.effect,
        effectClass: decl.class,
        plugin: connector.name,
        agent: r.agent.name,
        workflow: r.workflow,
        args: r.args,
        context: policyContext(nowMs, { ...r.context, runId: r.runId, seq: r.seq }),
      });

      /** The decision with the connector manifest's own rate limit added (it binds whatever the rules say). */
      const withManifestLimit = (d: PolicyDecision, connector: InstalledPlugin, decl: EffectDecl): PolicyDecision => {
        const own = manifestRateLimit(connector.name, decl);
        return own && d.decision !== "deny" ? { ...d, limits: [...(d.limits ?? []), own] } : d;
      };

      const usageOf = (r: EffectRequest, decl: EffectDecl): Usage => ({
        calls: 1,
        usd: r.costUsd ?? decl.cost?.usdPerCall,
        tokens: r.tokens,
      });

      /**
       * Count the call against its limits; a refusal (or a store that cannot count) turns the decision into a deny.
       * Counting for real takes `counting`: the label of the step's holds, whether holds left under it stand for calls
       * never made (no intent was ever journaled for the step), given back first; it receives what was counted.
       * `dryRun` (before asking the operator): gives those holds back all the same, but only says whether it fits.
       */
      const countLimits = Effect.fn("Gateway.countLimits")(function* (
        d: PolicyDecision,
        usage: Usage,
        counting?: { readonly hold: string; readonly reclaim: boolean; reservation?: Reservation },
        dryRun = false,
      ) {
        if (!d.limits?.length) return d;
        const verdict = yield* Effect.result(Effect.gen(function* () {
          // Counted by an execution that stopped before its intent (a crash): that call never went out. Given back
          // before a dry run too (the approval it was counted under expired meanwhile, say): it must not refuse this.
          if (counting?.reclaim) yield* limits.reclaim(counting.hold);
          return yield* limits.consume(d, usage, counting && !dryRun ? { hold: counting.hold } : { dryRun: true });
        }));
        if (verdict._tag === "Failure") {
          return failClosed(d.policyHash, `limits could not be counted: ${verdict.failure.message}`);
        }
        if (verdict.success.ok) {
          if (counting && !dryRun) counting.reservation = verdict.success.reservation;
          return d;
        }
        const hit: AppliedLimit = verdict.success.limit;
        return {
          ...d,
          decision: "deny",
          rule: hit.rule,
          ruleSource: hit.rule === d.rule ? d.ruleSource : undefined,
          reason: verdict.success.reason,
          approval: undefined,
          limit: verdict.success.name,
        } satisfies PolicyDecision;
      });

      const record = (
        r: EffectRequest,
        req: PolicyRequest,
        d: PolicyDecision,
        args: unknown = r.args,
        approval?: { id: string; status: "denied" },
      ) =>
        Effect.flatMap(now, (at) =>
          journal.recordDecision({
            at,
            runId: r.runId,
            seq: r.seq,
            effect: r.effect,
            effectClass: req.effectClass,
            plugin: req.plugin,
            agent: r.agent.name,
            workflow: r.workflow,
            args,
            decision: d.decision,
            rule: d.rule,
            policyHash: d.policyHash,
            ...(d.limit ? { limit: d.limit } : {}),
            ...(req.context ? { context: req.context } : {}),
            ...(approval ? { approval } : {}),
          }));

      const denied = (r: EffectRequest, d: PolicyDecision) =>
        reject(
          r,
          new PolicyDeniedError({
            message: `Policy denied effect "${r.effect}": ${d.reason} (rule "${d.rule}")`,
            details: { rule: d.rule, policyHash: d.policyHash, ...(d.limit ? { limit: d.limit } : {}) },
          }),
          {
            rule: d.rule,
            policyHash: d.policyHash,
            reason: d.reason,
            ...(d.ruleSource ? { ruleSource: d.ruleSource } : {}),
            ...(d.limit ? { limit: d.limit } : {}),
          },
        );

      /** Calls in flight per connector, and the calls waiting for a slot (its manifest's `concurrency`). */
      const slots = new Map<string, { used: number; waiting: Array<() => void> }>();
      /** Run `call` within the connector's concurrency limit: past it, calls wait their turn, in order. */
      const withConnectorSlot = <A, E>(connector: InstalledPlugin, call: Effect.Effect<A, E>) => {
        const limit = connector.manifest.concurrency;
        if (limit === undefined) return call;
        const slot = slots.get(connector.name) ?? { used: 0, waiting: [] };
        slots.set(connector.name, slot);
        const acquire = Effect.callback<void>((resume) => {
          if (slot.used < limit) {
            slot.used++;
            return resume(Effect.void);
          }
          const go = () => {
            slot.used++;
            resume(Effect.void);
          };
          slot.waiting.push(go);
          // Interrupted while waiting: leave the line without taking a slot.
          return Effect.sync(() => {
            const i = slot.waiting.indexOf(go);
            if (i >= 0) slot.waiting.splice(i, 1);
          });
        });
        const release = Effect.sync(() => {
          slot.used--;
          slot.waiting.shift()?.();
        });
        return Effect.acquireUseRelease(acquire, () => call, () => release);
      };

      const reject = Effect.fn("Gateway.reject")(function* (
        r: EffectRequest,
        error: EffectNotDeclaredError | InvalidInputError | PolicyDeniedError,
        extra: Record<string, unknown> = {},
      ) {
        const at = yield* now;
        yield* journal.putStep(r.runId, {
          seq: r.seq,
          kind: "effect",
          name: stepNameOf(r),
          status: "failed",
          error: toErrorBody(error),
          startedAt: at,
          endedAt: at,
        });
        yield* audit.append({
          type: "effect.rejected",
          actor: actorOf(r),
          runId: r.runId,
          data: { effect: r.effect, seq: r.seq, error: toErrorBody(error), ...extra },
        });
        return yield* error;
      });

      /** Park the run on an approval; an undo parks only itself (its run has ended and stays as it ended). */
      const park = (r: EffectRequest, approvalId: string, reason: string) =>
        r.undo ? Effect.void : Effect.asVoid(
          // Never an ended run: a detached call (see `dispatch`) may outlive its run's cancel.
          journal.updateRun(r.runId, { status: "waiting_approval", waitingFor: { approvalId, reason } }, LIVE),
        );
      /** Whether the request's run has ended (cancelled, say) while its call was out: an undo's never has. */
      const runEnded = (r: EffectRequest) =>
        r.undo ? Effect.succeed(false) : Effect.map(journal.getRun(r.runId), (run) => !run || TERMINAL.has(run.status));

      /** Steps 1–3: declared, valid, policy. Returns the capability, or parks the run. */
      const authorize = Effect.fn("Gateway.authorize")(function* (r: EffectRequest, prior: StepRecord | undefined) {
        if (r.undo) {
          // A compensation is declared by the connector of the effect it undoes, not by the agent.
          const original = yield* Effect.result(findConnector(r, r.undo.effect));
          if (original._tag === "Failure" || original.success.decl.compensate !== r.effect) {
            return yield* reject(
              r,
              new EffectNotDeclaredError({
                message: `Effect "${r.effect}" is not the declared compensation of "${r.undo.effect}"`,
                details: { effect: r.effect, undoes: r.undo.effect },
              }),
            );
          }
        } else if (!r.agent.manifest.uses.includes(r.effect)) {
          return yield* reject(
            r,
            new EffectNotDeclaredError({
              message:
                `Plugin "${r.agent.name}" asked for effect "${r.effect}", which its manifest does not declare in "uses"`,
              details: { plugin: r.agent.name, effect: r.effect },
            }),
          );
        }
        const found = yield* Effect.result(findConnector(r, r.effect));
        if (found._tag === "Failure") {
          return yield* reject(
            r,
            new EffectNotDeclaredError({ message: found.failure.message, details: { effect: r.effect } }),
          );
        }
        const { plugin: connector, decl } = found.success;
        if (argsDepth(r.args, MAX_ARGS_DEPTH) > MAX_ARGS_DEPTH) {
          // Malformed input fails closed before any validator or condition has to walk it.
          const hash = (yield* policy.current).hash;
          const d = failClosed(hash, `malformed input: args nest deeper than ${MAX_ARGS_DEPTH} levels`);
          // The log keeps no copy of args that are unsafe to walk.
          yield* record(r, { effect: r.effect, effectClass: decl.class, plugin: connector.name }, d, null);
          return yield* denied(r, d);
        }
        const problems = yield* host.validate(connector, `in:${decl.name}`, decl.input, r.args);
        if (problems.length) {
          return yield* reject(
            r,
            new InvalidInputError({
              message: `Effect "${r.effect}" args are invalid: ${problems[0]}`,
              details: { errors: problems },
            }),
          );
        }
        const req = policyRequest(r, connector, decl, yield* Clock.currentTimeMillis);
        const usage = usageOf(r, decl);
        const decision = withManifestLimit(yield* decideSafely(req), connector, decl);
        const key = `keel-${(yield* Effect.promise(() => sha256Hex(`${r.runId}:${r.seq}`))).slice(0, 32)}`;
        /** The approver refused this action: the log keeps the rule's decision (for `simulate`) and the approval. */
        const refusedBy = (approval: ApprovalRecord) =>
          Effect.gen(function* () {
            yield* record(r, req, decision, r.args, { id: approval.id, status: "denied" });
            return yield* reject(
              r,
              new PolicyDeniedError({
                message: `Effect "${r.effect}" was denied by ${approval.decidedBy ?? "the approver"}${
                  approval.note ? `: ${approval.note}` : ""
                }`,
                details: { approvalId: approval.id, rule: approval.rule },
              }),
              { rule: approval.rule, approvalId: approval.id, approver: approval.decidedBy },
            );
          });
        // The operator refused this exact action (effect, args, run, step): that stands under any policy set in force
        // now. A changed policy asks again for what was not decided; it does not turn a "no" into a "yes".
        const asked = prior?.approvalId ? yield* journal.getApproval(prior.approvalId) : undefined;
        const refused = decision.decision !== "deny" ? asked : undefined;
        if (
          refused?.kind === "effect" && refused.status === "denied" &&
          refused.digest === (yield* actionDigest({ ...r, policyHash: refused.policyHash }))
        ) {
          return yield* refusedBy(refused);
        }
        if (decision.decision === "deny") {
          yield* record(r, req, decision);
          return yield* denied(r, decision);
        }
        const taken: { hold: string; reclaim: boolean; reservation?: Reservation } = {
          hold: `effect:${r.runId}:${r.seq}`,
          // Only while no intent was ever journaled here: a hold of a call that did go out is never given back.
          reclaim: !prior || prior.status === "waiting_approval",
        };
        if (decision.decision === "allow") {
          const counted = yield* countLimits(decision, usage, taken);
          yield* record(r, req, counted);
          if (counted.decision === "deny") return yield* denied(r, counted);
          return authorized(r, connector, decl, counted, key, undefined, usage, taken.reservation);
        }

        // A human gate: the approval must be for this exact action under this policy, approved and unexpired.
        const digest = yield* actionDigest({ ...r, policyHash: decision.policyHash });
        if (prior?.approvalId) {
          const approval = asked;
          const at = yield* Clock.currentTimeMillis;
          const fresh = approval !== undefined && Date.parse(approval.expiresAt) > at;
          if (approval && approval.digest === digest && fresh) {
            if (approval.status === "pending") {
              yield* record(r, req, decision);
              return yield* new RunSuspendedError({ message: `Waiting for approval ${approval.id}` });
            }
            if (approval.status === "approved") {
              const counted = yield* countLimits(decision, usage, taken);
              yield* record(r, req, counted);
              if (counted.decision === "deny") return yield* denied(r, counted);
              return authorized(r, connector, decl, counted, key, approval, usage, taken.reservation);
            }
          }
          if (approval && approval.digest === digest && approval.status === "denied") {
            // The rule gated it; the approver refused it (the log keeps the rule's decision, for `simulate`).
            return yield* refusedBy(approval);
          }
          if (approval && (approval.status === "pending" || approval.status === "approved")) {
            // Args, policy or expiry changed: the old approval can never be used, and the operator sees why.
            const why = approval.digest !== digest
              ? approval.policyHash !== decision.policyHash ? "policy changed" : "action changed"
              : "expired";
            const voided: ApprovalRecord = {
              ...approval,
              status: why === "expired" ? "expired" : "invalidated",
              reason: INVALIDATED[why],
              invalidatedAt: new Date(at).toISOString(),
            };
            if (yield* journal.transitionApproval(voided, approval.status)) {
              yield* audit.append({
                type: "approval.invalidated",
                actor: "system",
                runId: r.runId,
                data: { approvalId: approval.id, was: approval.status, reason: why, effect: r.effect, seq: r.seq },
              });
            }
          }
        }
        // Do not ask the operator for something its limits would refuse anyway.
        const fits = yield* countLimits(decision, usage, taken, true);
        yield* record(r, req, fits);
        if (fits.decision === "deny") return yield* denied(r, fits);
        const createdAt = yield* Clock.currentTimeMillis;
        const approval: ApprovalRecord = {
          id: timeOrderedId("apr", createdAt),
          kind: "effect",
          runId: r.runId,
          seq: r.seq,
          effect: r.effect,
          plugin: connector.name,
          args: r.args,
          digest,
          policyHash: decision.policyHash,
          rule: decision.rule,
          approver: decision.approval?.approver ?? "operator",
          message: decision.approval?.message,
          status: "pending",
          createdAt: new Date(createdAt).toISOString(),
          expiresAt: new Date(createdAt + (decision.approval?.expiresInMs ?? 7 * 86_400_000)).toISOString(),
        };
        yield* journal.putStep(r.runId, {
          seq: r.seq,
          kind: "effect",
          name: stepNameOf(r),
          status: "waiting_approval",
          approvalId: approval.id,
          args: r.args,
          startedAt: approval.createdAt,
        }, approval);
        yield* park(r, approval.id, `Effect "${r.effect}" needs approval (rule "${decision.rule}")`);
        yield* audit.append({
          type: "approval.requested",
          actor: actorOf(r),
          runId: r.runId,
          data: {
            approvalId: approval.id,
            effect: r.effect,
            class: decl.class,
            rule: decision.rule,
            ruleSource: decision.ruleSource,
            policyHash: decision.policyHash,
            expiresAt: approval.expiresAt,
            ...(decision.limit ? { limit: decision.limit } : {}),
          },
        });
        return yield* new RunSuspendedError({ message: `Waiting for approval ${approval.id}` });
      });

      /**
       * Record the intent before dispatch; fails when another executor already holds this action, and then gives back
       * what was counted against the limits for this call, which is not sent.
       */
      const recordIntent = (auth: Authorized, intent: StepRecord) =>
        Effect.tapError(
          recordIntentOnce(auth, intent),
          (e) =>
            e._tag === "ConflictError" || e._tag === "RunSuspendedError"
              // Best effort: a store that cannot give it back leaves the call counted, as a crash here would.
              ? auth.reservation ? Effect.ignore(limits.settle(auth.reservation, { calls: 0 })) : Effect.void
              : Effect.void,
        );
      const recordIntentOnce = Effect.fn("Gateway.recordIntent")(function* (auth: Authorized, intent: StepRecord) {
        const r = auth.request;
        // The operator's "retry" after an unknown outcome re-sends under the same key, which its first intent holds.
        const resend = auth.approval?.kind === "unknown_outcome";
        if (auth.decl.class === "financial") {
          const { won, holder } = yield* journal.claimIntent(r.runId, {
            ...intent,
            idempotencyKey: auth.idempotencyKey,
          });
          if (!won && !(resend && holder.runId === r.runId && holder.seq === r.seq)) {
            const error = new ConflictError({
              message:
                `Effect "${r.effect}" was not sent: an intent for idempotency key "${auth.idempotencyKey}" exists (run "${holder.runId}", step ${holder.seq})`,
              details: { idempotencyKey: auth.idempotencyKey, holder },
            });
            // The step belongs to the executor that won; this one leaves it alone.
            yield* audit.append({
              type: "effect.duplicate_intent",
              actor: actorOf(r),
              runId: r.runId,
              data: { effect: r.effect, seq: r.seq, idempotencyKey: auth.idempotencyKey, holder },
            });
            return yield* error;
          }
        }
        if (auth.approval && auth.approval.status === "approved") {
          // Single use: consuming the approval and journaling the intent is one atomic write.
          const ok = yield* journal.transitionApproval({ ...auth.approval, status: "used" }, "approved", {
            step: { runId: r.runId, step: intent },
          });
          if (!ok) return yield* new RunSuspendedError({ message: `Approval ${auth.approval.id} was already used` });
        } else if (auth.decl.class !== "financial") {
          yield* journal.putStep(r.runId, intent);
        }
      });

      /** Steps 4–6: intent, dispatch (retried by class), outcome, audit. Accepts only a capability. */
      /**
       * Calls with their connector, by run and step. A call runs in its own fiber, not the caller's: if the agent
       * that asked dies (or its run is cancelled) the call goes on, and its outcome is journaled. A replay that asks
       * for the same step meanwhile gets that outcome (`request`) instead of an unknown outcome: an irreversible
       * effect is not put to the operator while Keel is about to learn what became of it, and nothing is sent twice.
       */
      const inFlight = new Map<
        string,
        { readonly name: string; readonly args: string; readonly fiber: Fiber.Fiber<unknown, unknown> }
      >();
      const dispatch = (auth: Authorized, before?: Pick<StepRecord, "attempts" | "lastError">) =>
        Effect.gen(function* () {
          const key = `${auth.request.runId}:${auth.request.seq}`;
          const fiber = yield* Effect.forkDetach(
            Effect.ensuring(dispatchHere(auth, before), Effect.sync(() => inFlight.delete(key))),
          );
          inFlight.set(key, { name: stepNameOf(auth.request), args: canonicalJson(auth.request.args ?? null), fiber });
          // The call is in flight: a request for the same step waiting its turn now joins it (see `request`).
          endTurn(key);
          return yield* Fiber.join(fiber);
        });

      /**
       * Requests deciding a step, by run and step, until their call is in flight or they have answered. A second
       * request for the same step (a replay while the first is still being authorized, two executors on one
       * approval) waits its turn, then finds the call in flight or its outcome journaled: it is never authorized
       * beside the first, so the step is sent once and its rates and budgets are counted once.
       */
      const deciding = new Map<string, Deferred.Deferred<void>>();
      /** Let the next request for the step go; `turn`: only if it is still that request's turn. */
      const endTurn = (key: string, turn?: Deferred.Deferred<void>) => {
        const current = deciding.get(key);
        if (!current || (turn && current !== turn)) return;
        deciding.delete(key);
        Deferred.doneUnsafe(current, Effect.void);
      };

      /** Call the connector, retrying by class; `before`: the attempts an earlier Keel made (they count too). */
      const dispatchHere = Effect.fn("Gateway.dispatch")(function* (
        auth: Authorized,
        before?: Pick<StepRecord, "attempts" | "lastError">,
      ) {
        const r = auth.request;
        const startedAt = yield* Clock.currentTimeMillis;
        const intent: StepRecord = {
          seq: r.seq,
          kind: "effect",
          name: stepNameOf(r),
          status: "intent",
          args: r.args,
          idempotencyKey: auth.idempotencyKey,
          approvalId: auth.approval?.id,
          startedAt: new Date(startedAt).toISOString(),
        };
        yield* recordIntent(auth, intent);
        if (auth.reservation?.hold) {
          // The intent is journaled: the count stands (its hold goes, off the call's path; lost in a crash, it stays).
          yield* Effect.forkDetach(Effect.ignore(limits.settle(auth.reservation, auth.reservation.usage)));
        }
        const base = {
          effect: r.effect,
          seq: r.seq,
          plugin: auth.connector.name,
          pluginVersion: auth.connector.version,
          agent: r.agent.name,
          class: auth.decl.class,
          rule: auth.decision.rule,
          ruleSource: auth.decision.ruleSource,
          policyHash: auth.decision.policyHash,
          idempotencyKey: auth.idempotencyKey,
          ...(r.undo ? { undoes: r.undo } : {}),
          ...(auth.usage?.usd !== undefined ? { costUsd: auth.usage.usd } : {}),
          ...(auth.usage?.tokens !== undefined ? { tokens: auth.usage.tokens } : {}),
          ...(auth.approval
            ? { approvalId: auth.approval.id, approver: auth.approval.decidedBy, approvedAt: auth.approval.decidedAt }
            : {}),
        };
        let attempts = (before?.attempts ?? 0) + 1;
        let sleptMs = 0;
        let lastError: ErrorBody | undefined = before?.lastError;
        for (;;) {
          // Every attempt carries the same idempotency key: a connector that honours it performs the effect once.
          const outcome = yield* Effect.result(
            Effect.flatMap(
              withConnectorSlot(
                auth.connector,
                host.callEffect(auth.connector, r.effect, r.args, auth.idempotencyKey),
              ),
              fitsJournal(r),
            ),
          );
          const endedAt = yield* Clock.currentTimeMillis;
          const latencyMs = endedAt - startedAt;
          const tried = { attempts, ...(lastError ? { lastError } : {}) };
          if (outcome._tag === "Success") {
            const value = outcome.success;
            const problems = auth.decl.output
              ? yield* host.validate(auth.connector, `out:${auth.decl.name}`, auth.decl.output, value)
              : [];
            const data = { ...base, latencyMs, ...(attempts > 1 ? { attempts } : {}) };
            // The outcome and its audit event commit together: a crash cannot keep one and lose the other.
            const { write } = yield* audit.prepare({
              type: "effect.succeeded",
              actor: actorOf(r),
              runId: r.runId,
              data: problems.length ? { ...data, outputWarnings: problems } : data,
            });
            yield* journal.recordStep(r.runId, {
              ...intent,
              ...tried,
              status: "done",
              value,
              endedAt: new Date(endedAt).toISOString(),
              latencyMs,
            }, [write]);
            return value;
          }
          if (isShutdown(outcome.failure)) {
            // Keel is closing: not an outcome. The intent stays as journaled, and the next start settles it by class
            // and by the policy of that time (a read or keyed write resent only if allowed, anything else asks).
            // Retrying here would send the call after this Keel closed, past the policy of the one that takes over.
            return yield* outcome.failure;
          }
          const error: ErrorBody = toErrorBody(outcome.failure);
          // A call that outlived its run (cancelled meanwhile): no operator prompt, no further attempt.
          const ended = yield* runEnded(r);
          if (ended && isUnknownOutcome(outcome.failure)) {
            // The intent stays, with what went wrong: an undo of the run treats it as an unknown outcome.
            yield* journal.putStep(r.runId, { ...intent, ...tried, lastError: error });
            return yield* outcome.failure;
          }
          if (retryModeOf(auth.decl) === "ask" && isUnknownOutcome(outcome.failure)) {
            // It may have happened: never send again blindly, ask the operator.
            const why = outcome.failure._tag === "PluginTimeoutError"
              ? "timeout"
              : outcome.failure._tag === "PluginCrashedError"
              ? "crash"
              : "lost reply";
            return yield* askOperator(r, auth.connector, { ...intent, ...tried, lastError: error }, why);
          }
          const delay = ended
            ? undefined
            : nextRetryDelay(auth.decl, outcome.failure, attempts, sleptMs, yield* Random.next);
          /** The step as it stands if this failure is the last. */
          const failedStep: StepRecord = {
            ...intent,
            ...tried,
            status: "failed",
            error,
            endedAt: new Date(endedAt).toISOString(),
            latencyMs,
          };
          if (delay === undefined) {
            const { write } = yield* audit.prepare({
              type: "effect.failed",
              actor: actorOf(r),
              runId: r.runId,
              data: { ...base, latencyMs, error, ...(attempts > 1 ? { attempts } : {}) },
            });
            yield* journal.recordStep(r.runId, failedStep, [write]);
            return yield* outcome.failure;
          }
          const nextAttemptAt = new Date(endedAt + delay).toISOString();
          // The run shows the retry while it waits; after a crash here the intent is resent (reads, keyed writes).
          yield* journal.putStep(r.runId, { ...intent, attempts, lastError: error, nextAttemptAt });
          yield* audit.append({
            type: "effect.retry",
            actor: "system",
            runId: r.runId,
            data: { ...base, attempt: attempts, error, delayMs: delay, nextAttemptAt },
          });
          yield* Effect.sleep(delay);
          if (yield* runEnded(r)) {
            // Cancelled during the backoff: the call is not sent again; its last failure stands.
            yield* journal.recordStep(r.runId, failedStep, []);
            return yield* outcome.failure;
          }
          sleptMs += delay;
          lastError = error;
          attempts++;
        }
      });

      /** Park the run on an `unknown_outcome` approval: the effect may have happened, and only the operator can tell. */
      const askOperator = Effect.fn("Gateway.askOperator")(function* (
        r: EffectRequest,
        connector: InstalledPlugin,
        prior: StepRecord,
        why: "restart" | "timeout" | "crash" | "lost reply",
      ) {
        const created = yield* Clock.currentTimeMillis;
        const policyHash = (yield* policy.current).hash;
        const what = why === "restart"
          ? `Keel stopped while "${r.effect}" was in flight`
          : why === "lost reply"
          ? `"${r.effect}" was sent, and the connector could not tell whether it went through`
          : `"${r.effect}" was sent, then the connector ${why === "timeout" ? "timed out" : "crashed"}`;
        const approval: ApprovalRecord = {
          id: timeOrderedId("apr", created),
          kind: "unknown_outcome",
          runId: r.runId,
          seq: r.seq,
          effect: r.effect,
          plugin: connector.name,
          args: r.args,
          digest: yield* actionDigest({ ...r, policyHash }),
          policyHash,
          rule: "unknown-outcome",
          approver: "operator",
          message:
            `${what}, and Keel cannot know whether it happened. Check the recipient, then approve with resolution "delivered" (it happened) or "retry" (send it again); deny to give up.`,
          status: "pending",
          createdAt: new Date(created).toISOString(),
          expiresAt: new Date(created + 30 * 86_400_000).toISOString(),
        };
        const { nextAttemptAt: _n, ...rest } = prior;
        yield* journal.putStep(r.runId, { ...rest, status: "unknown_outcome", approvalId: approval.id }, approval);
        yield* park(
          r,
          approval.id,
          `Outcome of "${r.effect}" is unknown after ${why === "restart" ? "a crash" : `a ${why}`}`,
        );
        yield* audit.append({
          type: "effect.outcome_unknown",
          actor: "system",
          runId: r.runId,
          data: {
            effect: r.effect,
            seq: r.seq,
            approvalId: approval.id,
            idempotencyKey: prior.idempotencyKey,
            cause: why,
            ...(prior.lastError ? { error: prior.lastError } : {}),
          },
        });
        return yield* new RunSuspendedError({ message: `Waiting for the operator on ${approval.id}` });
      });

      /** An intent with no outcome: for irreversible effects, ask the operator instead of guessing. */
      const unknownOutcome = Effect.fn("Gateway.unknownOutcome")(function* (r: EffectRequest, prior: StepRecord) {
        if (canonicalJson(prior.args ?? null) !== canonicalJson(r.args ?? null)) {
          // Sent (perhaps) with the recorded args: neither resending nor confirming may stand for other ones.
          return yield* diverged(r, `effect "${r.effect}" was sent with other args, and its outcome is not known`);
        }
        const { plugin: connector, decl } = yield* Effect.mapError(
          findConnector(r, r.effect),
          (e) => new EffectNotDeclaredError({ message: e.message }),
        );
        if (
          prior.status === "intent" && (decl.class === "read" || (decl.class === "write" && decl.idempotency === "key"))
        ) {
          // Safe to send again: reads change nothing, and the connector honours the key. Limits were counted once.
          // Not once the operator was asked (`unknown_outcome`): their answer decides, a denial above all.
          const decision = yield* decideSafely(policyRequest(r, connector, decl, yield* Clock.currentTimeMillis));
          if (decision.decision === "allow") {
            // The attempts made before the restart count against the effect's `maxAttempts`.
            return yield* dispatch(authorized(r, connector, decl, decision, prior.idempotencyKey!), prior);
          }
        }
        if (prior.status === "unknown_outcome" && prior.approvalId) {
          const approval = yield* journal.getApproval(prior.approvalId);
          if (approval?.status === "pending") {
            return yield* new RunSuspendedError({ message: `Waiting for the operator on ${approval.id}` });
          }
          if (approval?.status === "approved" && approval.resolution === "delivered") {
            const at = yield* now;
            const value = { assumedDelivered: true, confirmedBy: approval.decidedBy };
            yield* journal.transitionApproval({ ...approval, status: "used" }, "approved", {
              step: { runId: r.runId, step: { ...prior, status: "done", value, endedAt: at } },
            });
            yield* audit.append({
              type: "effect.confirmed",
              actor: approval.decidedBy ?? "operator",
              runId: r.runId,
              data: { effect: r.effect, seq: r.seq, approvalId: approval.id },
            });
            return value;
          }
          if (approval?.status === "approved" && approval.resolution === "retry") {
            const decision = yield* decideSafely(policyRequest(r, connector, decl, yield* Clock.currentTimeMillis));
            // The operator said "send again", but not past a policy that now forbids it.
            if (decision.decision === "deny") return yield* denied(r, decision);
            return yield* dispatch(authorized(r, connector, decl, decision, prior.idempotencyKey!, approval));
          }
          if (approval?.status === "denied") {
            return yield* reject(
              r,
              new PolicyDeniedError({ message: `Operator abandoned effect "${r.effect}" after an unknown outcome` }),
            );
          }
        }
        return yield* askOperator(r, connector, prior, "restart");
      });

      /** A replayed workflow asked another call than its journal holds at `r.seq`: refused, the step left alone. */
      const diverged = (r: EffectRequest, what: string) => refuse(r, divergedAt(r.seq, what));

      /** Refuse a request without touching its step (it is not this request's to write): audited. */
      const refuse = Effect.fn("Gateway.refuse")(function* (r: EffectRequest, error: InvalidInputError) {
        yield* audit.append({
          type: "effect.rejected",
          actor: actorOf(r),
          runId: r.runId,
          data: { effect: r.effect, seq: r.seq, error: toErrorBody(error) },
        });
        return yield* error;
      });

      /**
       * Whether a recorded failure left nothing behind: Keel refused it, or the connector said it failed. Not when
       * the connector crashed or timed out (it may have acted) or the call ran but its result could not be kept.
       */
      const failedForCertain = (prior: StepRecord) => {
        const e = prior.error;
        if (!e || isUnknownOutcome({ _tag: e.tag, details: e.details })) return false;
        const d = e.details as { ran?: unknown } | null | undefined;
        return !(typeof d === "object" && d !== null && d.ran === true);
      };

      /** A recorded failure, answered again under its own tag (a denial stays a denial on every replay). */
      const recordedFailure = (r: EffectRequest, prior: StepRecord) => {
        const again = prior.error ? recordedError(prior.error) : undefined;
        return Effect.fail(
          again && again._tag !== "RunSuspendedError" ? again : new PluginFailedError({
            message: prior.error?.message ?? `Effect "${r.effect}" failed`,
            details: prior.error,
          }),
        );
      };

      const request = Effect.fn("Gateway.request")(function* (r: EffectRequest) {
        if (!r.undo && r.seq >= UNDO_SEQ_BASE) {
          // Those steps are undo's; a workflow that numbers its calls that high is refused before it touches them.
          return yield* refuse(
            r,
            new InvalidInputError({
              message: `Step ${r.seq} is reserved for undo: a workflow's steps are numbered below ${UNDO_SEQ_BASE}`,
            }),
          );
        }
        const key = `${r.runId}:${r.seq}`;
        for (let turn = deciding.get(key); turn; turn = deciding.get(key)) yield* Deferred.await(turn);
        const running = inFlight.get(key);
        if (running && running.name === stepNameOf(r) && running.args === canonicalJson(r.args ?? null)) {
          // The same call, still with its connector (the agent that asked it died, and this is its replay).
          return yield* Fiber.join(running.fiber) as Effect.Effect<unknown, GatewayError>;
        }
        if (running) {
          // Another call holds the step, its intent perhaps not journaled yet: neither sent beside it nor counted again.
          return yield* diverged(
            r,
            `effect "${running.name}" is in flight with other args, code asked for "${r.effect}"`,
          );
        }
        // Taking the turn and arming its release are one uninterruptible step: an interrupt (the agent died, the run
        // was cancelled) landing between them would leave the turn taken, and every later request for the step
        // waiting forever. If the scheduler let another request take it meanwhile, this one waits again.
        return yield* Effect.uninterruptibleMask((restore): Effect.Effect<unknown, GatewayError> => {
          if (deciding.has(key)) return restore(request(r));
          const turn = Deferred.makeUnsafe<void>();
          deciding.set(key, turn);
          return Effect.ensuring(restore(decide(r)), Effect.sync(() => endTurn(key, turn)));
        });
      });

      /** A request in its turn: the journal's answer, or the gate and the call. */
      const decide = Effect.fn("Gateway.decide")(function* (r: EffectRequest) {
        const prior = yield* journal.getStep(r.runId, r.seq);
        if (prior && (prior.kind !== "effect" || prior.name !== stepNameOf(r))) {
          // Whatever stands there (an intent whose outcome is unknown, a gate) belongs to another call.
          return yield* diverged(r, `recorded ${prior.kind} "${prior.name}", code asked for effect "${r.effect}"`);
        }
        if (prior?.status === "done") return prior.value;
        if (prior?.status === "failed" && !(r.undo && failedForCertain(prior))) return yield* recordedFailure(r, prior);
        if (prior?.status === "intent" || prior?.status === "unknown_outcome") return yield* unknownOutcome(r, prior);
        const auth = yield* authorize(r, prior);
        return yield* dispatch(auth);
      });

      return Gateway.of({ request, policyHash: Effect.map(policy.current, (set) => set.hash) });
    }),
  );
}
