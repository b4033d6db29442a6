/**
 * @module
 * Rate and budget counters in Deno KV. A policy decision lists the limits of
 * every matching rule (plus the connector manifest's own `rateLimit`); before
 * the effect runs, `consume` adds the call to each counter in one atomic
 * commit that checks every counter's version, retrying on conflict, so any
 * number of concurrent effects never spend past a budget: either all
 * counters take the call, or none does and the call is refused.
 *
 * Windows are fixed: a rate of `10 per 1h` counts calls in each clock hour
 * since the epoch; budgets count per calendar day or month in the budget's
 * time zone. Money is counted in micro-dollars, so sums are exact.
 */
import { Clock, Context, Effect, Layer } from "effect";
import type { StoreError } from "../errors/mod.ts";
import type { EffectDecl } from "../manifest/mod.ts";
import { Kv, kvTry } from "../store/mod.ts";
import { localTime } from "./LocalTime.ts";
import { parseDuration } from "./PolicySet.ts";
import { type AppliedLimit, limitName, type PolicyDecision } from "./Policy.ts";

/** What one call uses: how many calls (default 1), what it costs, how many model tokens. */
export interface Usage {
  readonly calls?: number;
  readonly usd?: number;
  readonly tokens?: number;
}

/** Whether a call fits its limits; when not, the limit it would break and how much was used. */
export type LimitVerdict =
  | { readonly ok: true }
  | {
    readonly ok: false;
    readonly limit: AppliedLimit;
    /** The limit's name, as decisions record it (`rate 10/1h`, `budget usdPerDay 5`). */
    readonly name: string;
    /** Already used in this window, in the limit's unit (calls, USD or tokens). */
    readonly used: number;
    readonly reason: string;
  };

/** How often a contended commit is retried before the call is refused as a store error (fail closed). */
const MAX_ATTEMPTS = 2000;
const MICRO = 1_000_000;
const DAY_MS = 86_400_000;

/** The limit a connector manifest declares on one effect, as the Gateway enforces it. */
export const manifestRateLimit = (plugin: string, decl: EffectDecl): AppliedLimit | undefined => {
  const r = decl.rateLimit;
  const perMs = r ? parseDuration(r.per) : undefined;
  if (!r || !perMs) return undefined;
  return { kind: "rate", rule: `manifest:${plugin}`, key: `effect:${decl.name}`, count: r.count, per: r.per, perMs };
};

/** The limits of a decision, or a list of them. */
const limitsOf = (d: PolicyDecision | ReadonlyArray<AppliedLimit>): ReadonlyArray<AppliedLimit> =>
  Array.isArray(d) ? d : (d as PolicyDecision).limits ?? [];

interface Counter {
  readonly limit: AppliedLimit;
  readonly key: Deno.KvKey;
  /** In counter units: calls, micro-dollars or tokens. */
  readonly amount: number;
  readonly max: number;
  readonly expireIn: number;
}

const counterOf = (l: AppliedLimit, usage: Usage, now: number): Counter => {
  if (l.kind === "rate") {
    return {
      limit: l,
      key: ["limit", l.rule, l.key, "rate", l.perMs, Math.floor(now / l.perMs)],
      amount: Math.max(0, Math.round(usage.calls ?? 1)),
      max: l.count,
      expireIn: 2 * l.perMs,
    };
  }
  const t = localTime(now, l.timezone);
  const micro = l.unit === "usd";
  return {
    limit: l,
    key: ["limit", l.rule, l.key, l.unit, l.period, l.period === "day" ? t.date : t.month],
    amount: Math.max(0, Math.round(micro ? (usage.usd ?? 0) * MICRO : usage.tokens ?? 0)),
    max: Math.round(micro ? l.max * MICRO : l.max),
    expireIn: (l.period === "day" ? 2 : 33) * DAY_MS,
  };
};

const unitValue = (
  c: Counter,
  raw: number,
) => (c.limit.kind === "budget" && c.limit.unit === "usd" ? raw / MICRO : raw);

const refusal = (c: Counter, used: number): LimitVerdict => {
  const l = c.limit;
  const name = limitName(l);
  const shown = unitValue(c, used);
  const reason = l.kind === "rate"
    ? `rate limit of ${l.count} per ${l.per} reached (${shown} used)`
    : `${l.unit === "usd" ? "money" : "token"} budget of ${l.max}${
      l.unit === "usd" ? " USD" : " tokens"
    } per ${l.period} would be exceeded (${shown} used)`;
  return { ok: false, limit: l, name, used: shown, reason: `${reason}; limit of rule "${l.rule}"` };
};

/** The rate and budget counters. */
export class Limits extends Context.Service<Limits, {
  /**
   * Count one call against every limit of `decision` (all or nothing). With
   * `dryRun`, only say whether it would fit. A contended or failing store is a
   * `StoreError`, which callers treat as a deny.
   */
  consume(
    decision: PolicyDecision | ReadonlyArray<AppliedLimit>,
    usage?: Usage,
    options?: { readonly dryRun?: boolean },
  ): Effect.Effect<LimitVerdict, StoreError>;
  /** Charge usage known only afterwards (a model call's tokens): never refuses, may go past a cap. */
  record(decision: PolicyDecision | ReadonlyArray<AppliedLimit>, usage: Usage): Effect.Effect<void, StoreError>;
  /** How much of a limit the current window has used, in its unit (calls, USD or tokens). */
  used(limit: AppliedLimit): Effect.Effect<number, StoreError>;
}>()("keel/policy/Limits") {
  /** Counters in Keel's Deno KV. */
  static readonly layer = Layer.effect(
    Limits,
    Effect.gen(function* () {
      const { kv } = yield* Kv;

      const read = async (counters: ReadonlyArray<Counter>) => {
        const out: Deno.KvEntryMaybe<number>[] = [];
        for (let i = 0; i < counters.length; i += 10) {
          out.push(...await kv.getMany<number[]>(counters.slice(i, i + 10).map((c) => c.key)));
        }
        return out;
      };

      const apply = (
        decision: PolicyDecision | ReadonlyArray<AppliedLimit>,
        usage: Usage,
        mode: "consume" | "dryRun" | "record",
      ) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) => {
          const counters = limitsOf(decision).map((l) => counterOf(l, usage, now)).filter((c) => c.amount > 0);
          if (!counters.length) return Effect.succeed<LimitVerdict>({ ok: true });
          return kvTry("Cannot count against policy limits", async (): Promise<LimitVerdict> => {
            for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
              const entries = await read(counters);
              if (mode !== "record") {
                for (let i = 0; i < counters.length; i++) {
                  const used = entries[i].value ?? 0;
                  if (used + counters[i].amount > counters[i].max) return refusal(counters[i], used);
                }
                if (mode === "dryRun") return { ok: true };
              }
              // Every counter is checked at the version just read: a concurrent writer makes this commit fail.
              const op = kv.atomic();
              counters.forEach((c, i) => {
                op.check(entries[i]).set(c.key, (entries[i].value ?? 0) + c.amount, { expireIn: c.expireIn });
              });
              const committed = await op.commit().catch((error) => {
                // Another handle on the same file holds SQLite's write lock: back off and read again.
                if (String(error).includes("database is locked")) return { ok: false } as const;
                throw error;
              });
              if (committed.ok) return { ok: true };
              if (attempt > 8) await new Promise((r) => setTimeout(r, Math.min(attempt, 20)));
            }
            throw new Error(`limit counters stayed contended for ${MAX_ATTEMPTS} attempts`);
          });
        });

      return Limits.of({
        consume: Effect.fn("Limits.consume")(function* (
          decision: PolicyDecision | ReadonlyArray<AppliedLimit>,
          usage: Usage = {},
          options: { readonly dryRun?: boolean } = {},
        ) {
          return yield* apply(decision, usage, options.dryRun ? "dryRun" : "consume");
        }),
        record: Effect.fn("Limits.record")(function* (
          decision: PolicyDecision | ReadonlyArray<AppliedLimit>,
          usage: Usage,
        ) {
          yield* apply(decision, usage, "record");
        }),
        used: Effect.fn("Limits.used")(function* (limit: AppliedLimit) {
          const c = counterOf(limit, { calls: 1, usd: 1, tokens: 1 }, yield* Clock.currentTimeMillis);
          return yield* kvTry(
            "Cannot read policy limits",
            async () => unitValue(c, (await kv.get<number>(c.key)).value ?? 0),
          );
        }),
      });
    }),
  );
}
