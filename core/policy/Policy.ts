/**
 * @module
 * The policy engine: given an effect request, which rule decides and what it
 * decides. A rule matches on effect-name globs, plugin, agent, workflow,
 * effect class and an optional `when` condition. Most restrictive wins (deny
 * > approve > allow; among equals the first rule in file order); quiet hours
 * can raise a rule's allow to approve or deny; with no matching rule,
 * `irreversible` and `financial` effects are denied and the others get the
 * policy set's default. `evaluate` is pure; the rate and budget limits it
 * returns are counted by `Limits` (Deno KV) before the effect runs.
 *
 * The `Policy` service holds the set in force, fails closed (an evaluation
 * that throws is a deny with rule `fail-closed`), and reloads atomically when
 * a file in the policy folder changes: the whole new set or, if any file does
 * not parse, the old one, audited either way.
 */
import { Cause, Context, Effect, Layer, Option, Queue, Ref, Semaphore } from "effect";
import type { PolicyFileError } from "../errors/mod.ts";
import { KeelConfig } from "../config/mod.ts";
import { EFFECT_CLASSES, type EffectClass } from "../manifest/mod.ts";
import { Audit } from "../telemetry/mod.ts";
import { type Compiled, compileExpr, compileGlob, type ExprEnv } from "./Expr.ts";
import { hostTimeZone, inWindow, localTime, minuteOfDay } from "./LocalTime.ts";
import {
  type ApprovalSpec,
  type Decision,
  DEFAULT_APPROVAL_MS,
  loadPolicySet,
  type PolicySet,
  type Rule,
} from "./PolicySet.ts";

/** Everything a rule can match on. */
export interface PolicyRequest {
  readonly effect: string;
  readonly effectClass: EffectClass;
  readonly plugin: string;
  readonly agent?: string;
  readonly workflow?: string;
  /** The effect's arguments, as `args.…` in conditions. */
  readonly args?: unknown;
  /** Facts about the request (`context.hour`, `context.runId` …); see `policyContext`. */
  readonly context?: Readonly<Record<string, unknown>>;
}

/** A rate or budget that must hold before the effect runs; `key` names whose calls one counter counts. */
export type AppliedLimit =
  | {
    readonly kind: "rate";
    readonly rule: string;
    readonly key: string;
    readonly count: number;
    readonly per: string;
    readonly perMs: number;
  }
  | {
    readonly kind: "budget";
    readonly rule: string;
    readonly key: string;
    readonly unit: "usd" | "tokens";
    readonly period: "day" | "month";
    readonly max: number;
    readonly timezone: string;
  };

/** The engine's answer, with what it was based on. */
export interface PolicyDecision {
  readonly decision: Decision;
  /** The deciding rule's id, or `default` / `default-deny-<class>` / `fail-closed`. */
  readonly rule: string;
  readonly ruleSource?: string;
  readonly policyHash: string;
  readonly reason: string;
  readonly approval?: ApprovalSpec;
  /** Rates and budgets of every matching rule; the Gateway counts them (`Limits.consume`) before dispatch. */
  readonly limits?: ReadonlyArray<AppliedLimit>;
  /** The limit that decided, when one did: `quietHours 22:00-07:00 Europe/Berlin`, `rate 10/1h`, `budget usdPerDay 5`. */
  readonly limit?: string;
}

/** How a limit is named in decisions, audit events and the decision log. */
export const limitName = (l: AppliedLimit): string =>
  l.kind === "rate"
    ? `rate ${l.count}/${l.per}`
    : `budget ${l.unit}Per${l.period === "day" ? "Day" : "Month"} ${l.max}`;

/** The context the Gateway gives a request: the time (in the host's zone), the run and the step. */
export const policyContext = (
  nowMs: number,
  extra: Readonly<Record<string, unknown>> = {},
  timeZone: string = hostTimeZone(),
): Record<string, unknown> => {
  const t = localTime(nowMs, timeZone);
  return {
    now: nowMs,
    timezone: timeZone,
    date: t.date,
    hour: t.hour,
    minute: t.minute,
    weekday: t.weekday,
    ...extra,
  };
};

const RANK: Record<Decision, number> = { allow: 0, approve: 1, deny: 2 };
const BY_RANK: ReadonlyArray<Decision> = ["allow", "approve", "deny"];

// --------------------------------------------------------------- compiled set

interface CompiledRule {
  readonly rule: Rule;
  readonly rank: number;
  readonly effect?: (s: string) => boolean;
  readonly plugin?: (s: string) => boolean;
  readonly agent?: (s: string) => boolean;
  readonly workflow?: (s: string) => boolean;
  readonly classes?: ReadonlySet<string>;
  readonly when?: Compiled;
  readonly hasCounters: boolean;
}

/** Candidate rules, in set order, for one effect class. */
type ByClass = Readonly<Record<EffectClass, ReadonlyArray<CompiledRule>>>;

interface CompiledSet {
  /** Rules that can match an effect whose name starts with this segment (with the always-candidates), by class. */
  readonly byHead: ReadonlyMap<string, ByClass>;
  /** Rules whose effect patterns do not pin the first segment, by class. */
  readonly always: ByClass;
}

const anyOf = (patterns: ReadonlyArray<string> | undefined): ((s: string) => boolean) | undefined => {
  if (patterns === undefined) return undefined;
  const fs = patterns.map(compileGlob);
  return fs.length === 1 ? fs[0] : (s) => fs.some((f) => f(s));
};

/** The first segment of effect names a glob can match, if the glob pins it (`email.*` → `email`). */
const headOf = (pattern: string): string | undefined => {
  const literal = pattern.split("*")[0];
  const dot = literal.indexOf(".");
  return dot > 0 ? literal.slice(0, dot) : undefined;
};

const compiled = new WeakMap<PolicySet, CompiledSet>();

const compileSet = (set: PolicySet): CompiledSet => {
  const all: CompiledRule[] = set.rules.map((rule) => ({
    rule,
    rank: RANK[rule.decision],
    effect: anyOf(rule.match.effect),
    plugin: anyOf(rule.match.plugin),
    agent: anyOf(rule.match.agent),
    workflow: anyOf(rule.match.workflow),
    classes: rule.match.class ? new Set(rule.match.class) : undefined,
    when: rule.when ? compileExpr(rule.when.expr) : undefined,
    hasCounters: rule.limits?.rate !== undefined || rule.limits?.budget !== undefined,
  }));
  const heads = all.map((c) => {
    const patterns = c.rule.match.effect;
    if (!patterns) return undefined;
    const hs = patterns.map(headOf);
    return hs.every((h) => h !== undefined) ? new Set(hs as string[]) : undefined;
  });
  // Index: by the first segment of the effect name, then by class; one pass, so each list keeps the set's order.
  const empty = (): Record<EffectClass, CompiledRule[]> => ({ read: [], write: [], irreversible: [], financial: [] });
  const always = empty();
  const byHead = new Map<string, Record<EffectClass, CompiledRule[]>>();
  for (const hs of heads) for (const h of hs ?? []) if (!byHead.has(h)) byHead.set(h, empty());
  all.forEach((c, i) => {
    const lists = heads[i] === undefined ? [always, ...byHead.values()] : [...heads[i]!].map((h) => byHead.get(h)!);
    for (const cls of c.rule.match.class ?? EFFECT_CLASSES) for (const l of lists) l[cls].push(c);
  });
  return { byHead, always };
};

const compiledOf = (set: PolicySet): CompiledSet => {
  let c = compiled.get(set);
  if (!c) {
    c = compileSet(set);
    compiled.set(set, c);
  }
  return c;
};

const matches = (c: CompiledRule, r: PolicyRequest, env: () => ExprEnv): boolean =>
  (c.classes === undefined || c.classes.has(r.effectClass)) &&
  (c.effect === undefined || c.effect(r.effect)) &&
  (c.plugin === undefined || c.plugin(r.plugin)) &&
  (c.agent === undefined || (r.agent !== undefined && c.agent(r.agent))) &&
  (c.workflow === undefined || (r.workflow !== undefined && c.workflow(r.workflow))) &&
  (c.when === undefined || c.when(env()) === true);

/** Is it quiet time for this rule? With no `context.now` to tell, it is (fail closed). */
const isQuiet = (rule: Rule, request: PolicyRequest): boolean => {
  const q = rule.limits!.quietHours!;
  const now = request.context?.now;
  if (typeof now !== "number" || !Number.isFinite(now)) return true;
  return inWindow(minuteOfDay(now, q.timezone), q.fromMinute, q.toMinute);
};

const scopeKey = (rule: Rule, r: PolicyRequest): string => {
  switch (rule.limits?.scope ?? "global") {
    case "global":
      return "global";
    case "effect":
      return `effect:${r.effect}`;
    case "plugin":
      return `plugin:${r.plugin}`;
    case "agent":
      return `agent:${r.agent ?? "-"}`;
    case "workflow":
      return `workflow:${r.workflow ?? "-"}`;
    case "run":
      return `run:${String(r.context?.runId ?? "-")}`;
  }
};

const countersOf = (rule: Rule, r: PolicyRequest, out: AppliedLimit[]) => {
  const l = rule.limits!;
  const key = scopeKey(rule, r);
  if (l.rate) out.push({ kind: "rate", rule: rule.id, key, count: l.rate.count, per: l.rate.per, perMs: l.rate.perMs });
  const b = l.budget;
  if (!b) return;
  const caps: Array<[number | undefined, "usd" | "tokens", "day" | "month"]> = [
    [b.usdPerDay, "usd", "day"],
    [b.usdPerMonth, "usd", "month"],
    [b.tokensPerDay, "tokens", "day"],
    [b.tokensPerMonth, "tokens", "month"],
  ];
  for (const [max, unit, period] of caps) {
    if (max !== undefined) out.push({ kind: "budget", rule: rule.id, key, unit, period, max, timezone: b.timezone });
  }
};

/**
 * Decide one request against a policy set. Pure: the answer depends only on
 * the set and the request (quiet hours read `request.context.now`; without it
 * every quiet-hours window counts as in force). Throws only on a bug, which
 * the `Policy` service turns into a `fail-closed` deny.
 */
export const evaluate = (set: PolicySet, request: PolicyRequest): PolicyDecision => {
  const c = compiledOf(set);
  const byClass = c.byHead.get(request.effect.slice(0, Math.max(0, request.effect.indexOf(".")))) ?? c.always;
  const candidates = Object.hasOwn(byClass, request.effectClass) ? byClass[request.effectClass] : undefined;
  if (candidates === undefined) {
    // Not one of the four classes: malformed input, which no default may allow.
    return failClosed(set.hash, `malformed input: unknown effect class "${String(request.effectClass)}"`);
  }
  let memo: ExprEnv | undefined;
  const env = () =>
    memo ??= {
      args: request.args,
      context: request.context,
      effect: request.effect,
      plugin: request.plugin,
      agent: request.agent,
      workflow: request.workflow,
      class: request.effectClass,
    };
  let best: CompiledRule | undefined;
  let bestRank = -1;
  let bestQuiet = false;
  let counted: CompiledRule[] | undefined;
  for (const cr of candidates) {
    if (!matches(cr, request, env)) continue;
    let rank = cr.rank;
    let quiet = false;
    const q = cr.rule.limits?.quietHours;
    if (q && rank < RANK[q.decision] && isQuiet(cr.rule, request)) {
      rank = RANK[q.decision];
      quiet = true;
    }
    if (rank > bestRank) {
      best = cr;
      bestRank = rank;
      bestQuiet = quiet;
      // Nothing beats a deny, and the first deny in order is the one that decides.
      if (rank === 2) break;
    }
    if (cr.hasCounters) (counted ??= []).push(cr);
  }
  if (best) {
    const rule = best.rule;
    const decision = BY_RANK[bestRank];
    const base = rule.description ?? `rule "${rule.id}" matched`;
    const q = rule.limits?.quietHours;
    let limits: AppliedLimit[] | undefined;
    if (decision !== "deny" && counted) {
      limits = [];
      for (const cr of counted) countersOf(cr.rule, request, limits);
    }
    const out: PolicyDecision = {
      decision,
      rule: rule.id,
      ruleSource: `${rule.file}:${rule.line}`,
      policyHash: set.hash,
      reason: bestQuiet && q ? `quiet hours ${q.from}-${q.to} (${q.timezone}): ${base}` : base,
      approval: decision !== "approve" ? undefined : rule.approval ?? {
        approver: "operator",
        expiresInMs: DEFAULT_APPROVAL_MS,
        message: q ? `Asked during quiet hours (${q.from}-${q.to} ${q.timezone})` : undefined,
      },
      ...(limits?.length ? { limits } : {}),
      ...(bestQuiet && q ? { limit: `quietHours ${q.from}-${q.to} ${q.timezone}` } : {}),
    };
    return out;
  }
  if (request.effectClass === "irreversible" || request.effectClass === "financial") {
    return {
      decision: "deny",
      rule: `default-deny-${request.effectClass}`,
      policyHash: set.hash,
      reason: `no rule allows this ${request.effectClass} effect`,
    };
  }
  return {
    decision: set.defaultDecision,
    rule: "default",
    policyHash: set.hash,
    reason: "no rule matched",
    ...(set.defaultDecision === "approve"
      ? { approval: { approver: "operator", expiresInMs: DEFAULT_APPROVAL_MS } }
      : {}),
  };
};

/** The deny every failure of the engine turns into. */
export const failClosed = (policyHash: string, reason: string): PolicyDecision => ({
  decision: "deny",
  rule: "fail-closed",
  policyHash,
  reason,
});

/** How long after the last change in the policy folder a reload starts. */
export const RELOAD_DEBOUNCE_MS = 100;

/** Deepest args the Gateway inspects; deeper args are refused before any schema or policy sees them. */
export const MAX_ARGS_DEPTH = 64;

/** How deep a JSON value nests (iteratively, so hostile input cannot exhaust the stack). */
export const argsDepth = (value: unknown, limit: number): number => {
  let deepest = 0;
  const stack: Array<[unknown, number]> = [[value, 1]];
  while (stack.length) {
    const [v, d] = stack.pop()!;
    if (v === null || typeof v !== "object") continue;
    deepest = Math.max(deepest, d);
    if (deepest > limit) return deepest;
    for (const child of Array.isArray(v) ? v : Object.values(v)) stack.push([child, d + 1]);
  }
  return deepest;
};

/** Ways to break the engine on purpose, for tests of fail-closed behaviour. */
export interface PolicyFaults {
  /** Replaces `evaluate` (e.g. one that throws). */
  readonly evaluate?: (set: PolicySet, request: PolicyRequest) => PolicyDecision;
  /** Replaces `decide` entirely (e.g. one that never answers, or answers nonsense). */
  readonly decide?: (request: PolicyRequest, set: PolicySet) => Effect.Effect<PolicyDecision>;
}

const make = (options: { readonly watch: boolean; readonly faults?: PolicyFaults }) =>
  Effect.gen(function* () {
    const config = yield* KeelConfig;
    const audit = yield* Effect.serviceOption(Audit);
    const dir = config.policiesDir;
    const ref = yield* Ref.make(yield* loadPolicySet(dir));
    const lock = yield* Semaphore.make(1);
    const run = options.faults?.evaluate ?? evaluate;

    const record = (type: string, data: Record<string, unknown>) =>
      Option.match(audit, {
        onNone: () => Effect.void,
        onSome: (a) => a.append({ type, actor: "system", data }).pipe(Effect.ignore),
      });

    const reloadFrom = (trigger: "watch" | "request") =>
      lock.withPermit(
        Effect.gen(function* () {
          const old = yield* Ref.get(ref);
          const loaded = yield* Effect.result(loadPolicySet(dir));
          if (loaded._tag === "Failure") {
            const e = loaded.failure;
            const details = (e.details ?? {}) as { file?: string; line?: number; column?: number };
            yield* Effect.logWarning(`Policy reload failed; the policy in force stays: ${e.message}`);
            yield* record("policy.reload_failed", {
              trigger,
              file: details.file,
              line: details.line,
              ...(details.column ? { column: details.column } : {}),
              reason: e.message,
              keptHash: old.hash,
            });
            return yield* e;
          }
          const next = loaded.success;
          if (next.hash !== old.hash) {
            yield* Ref.set(ref, next);
            yield* Effect.logInfo(`Policy reloaded: ${next.rules.length} rules, hash ${next.hash.slice(0, 12)}`);
            yield* record("policy.reloaded", {
              trigger,
              oldHash: old.hash,
              newHash: next.hash,
              files: next.files,
              rules: next.rules.length,
            });
          }
          return next;
        }),
      );

    // A failed reload is audited above; nothing a reload does may stop the watcher (later edits must still load).
    if (options.watch) {
      yield* watchFolder(
        dir,
        reloadFrom("watch").pipe(
          Effect.catchCause((cause) =>
            Cause.hasFails(cause) ? Effect.void : Effect.logError("Policy reload failed unexpectedly", cause)
          ),
        ),
      );
    }

    const decide = options.faults?.decide;
    return Policy.of({
      decide: (request) =>
        Effect.flatMap(Ref.get(ref), (set) => {
          if (decide) return decide(request, set);
          return Effect.try({ try: () => run(set, request), catch: (error) => error }).pipe(
            Effect.orElseSucceed((error) => failClosed(set.hash, `policy evaluation failed: ${String(error)}`)),
          );
        }),
      current: Ref.get(ref),
      reload: reloadFrom("request"),
    });
  });

/** Watch the folder for the life of the layer; after `RELOAD_DEBOUNCE_MS` of quiet, run `reload`. */
const watchFolder = (dir: string, reload: Effect.Effect<void>) =>
  Effect.gen(function* () {
    const opened = yield* Effect.result(Effect.try(() => Deno.watchFs(dir, { recursive: false })));
    if (opened._tag === "Failure") {
      yield* Effect.logWarning(`Cannot watch policy folder "${dir}"; edits need a restart: ${opened.failure}`);
      return;
    }
    const changes = yield* Queue.unbounded<void>();
    let pending: Promise<IteratorResult<Deno.FsEvent>> | undefined;
    const watcher = yield* Effect.acquireRelease(
      Effect.succeed(opened.success),
      (w) =>
        Effect.andThen(
          Effect.ignore(Effect.try(() => w.close())),
          // The last read resolves once the watcher is closed; wait for it so no operation outlives the layer.
          Effect.promise(() => pending?.then(() => {}, () => {}) ?? Promise.resolve()),
        ),
    );
    const events = watcher[Symbol.asyncIterator]();
    const pump = Effect.gen(function* () {
      for (;;) {
        const next = yield* Effect.tryPromise(() => (pending = events.next()));
        if (next.done) return;
        if (next.value.paths.some((p) => /\.ya?ml$/.test(p))) yield* Queue.offer(changes, undefined);
      }
    }).pipe(Effect.catchCause((cause) => Effect.logWarning("Policy folder watcher stopped", cause)));
    const debounce = Effect.gen(function* () {
      for (;;) {
        yield* Queue.take(changes);
        while (Option.isSome(yield* Effect.timeoutOption(Queue.take(changes), RELOAD_DEBOUNCE_MS))) {
          // keep waiting until the folder has been quiet for a moment
        }
        yield* reload;
      }
    });
    yield* Effect.forkScoped(pump);
    yield* Effect.forkScoped(debounce);
  });

/** The policy engine service. */
export class Policy extends Context.Service<Policy, {
  /** Decide a request; never fails: errors become an audited deny. */
  decide(request: PolicyRequest): Effect.Effect<PolicyDecision>;
  /** The policy set in force. */
  readonly current: Effect.Effect<PolicySet>;
  /** Re-read the policy folder; on error the old set stays in force. Audited either way. */
  readonly reload: Effect.Effect<PolicySet, PolicyFileError>;
}>()("keel/policy/Policy") {
  /**
   * Loads `config.policiesDir` (a bad file fails the layer, so Keel refuses to
   * start) and watches it for changes until the layer is released. Audits
   * reloads when an `Audit` service is in the context.
   */
  static readonly layer = Layer.effect(Policy, make({ watch: true }));
  /** The engine without the folder watcher, optionally broken on purpose (`faults`). */
  static readonly layerTest = (faults: PolicyFaults = {}) => Layer.effect(Policy, make({ watch: false, faults }));
}
