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
 *
 * A call whose usage is known only afterwards (a model call) is counted at
 * its worst case with a hold: a record of what was counted, where and when,
 * written in the same commit as the counters. `settle` then moves each
 * counter to the real usage (giving back the unused part, or adding what the
 * worst case missed) in the window it was counted in, and deletes the hold in
 * that same commit: a hold is settled at most once, whoever retries. A hold
 * that is never settled (Keel stopped while the call was out) leaves the
 * worst case counted, and expires with its counters. Holds are labelled by
 * their caller (`effect:<run>:<step>`, `model:<run>:<step>`): `reclaim`
 * gives back in full those of calls their caller knows were never made.
 */
import { Clock, Context, Effect, Layer, Random } from "effect";
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

/** What `consume` counted, so that `settle` can move it to the real usage, in the same windows. */
export interface Reservation {
  readonly limits: ReadonlyArray<AppliedLimit>;
  readonly usage: Usage;
  /** When it was counted: the windows its counters belong to. */
  readonly at: number;
  /** The key of its hold in Deno KV, when `consume` was asked for one. */
  readonly hold?: Deno.KvKey;
}

/** Whether a call fits its limits; when not, the limit it would break and how much was used. */
export type LimitVerdict =
  | { readonly ok: true; readonly reservation?: Reservation }
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

/** The durable record of a reservation, as `settle` reads it back. */
interface Hold {
  readonly label: string;
  readonly limits: ReadonlyArray<AppliedLimit>;
  readonly usage: Usage;
  readonly at: number;
}

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
   * Count one call against every limit of `decision` (all or nothing); the
   * verdict carries what was counted. With `dryRun`, only say whether it
   * would fit. With `hold` (a label: the run and step), a durable record of
   * the reservation commits with the counters, for `settle`. A contended or
   * failing store is a `StoreError`, which callers treat as a deny.
   */
  consume(
    decision: PolicyDecision | ReadonlyArray<AppliedLimit>,
    usage?: Usage,
    options?: { readonly dryRun?: boolean; readonly hold?: string },
  ): Effect.Effect<LimitVerdict, StoreError>;
  /**
   * Move a reservation's counters, in the windows it was counted in, to what
   * the call really used: the unused part is given back (never below zero),
   * a part the reservation missed is added (never refused, so it may go past
   * a cap). `{}` gives back everything but the call itself (budgets to zero);
   * `{ calls: 0 }` gives back the call too (it never ran). A reservation with
   * a hold is settled at most once: its hold goes in the same commit.
   */
  settle(reservation: Reservation, actual: Usage): Effect.Effect<void, StoreError>;
  /**
   * Give back in full (the call too) every hold still under `label`: for a
   * caller that knows the calls they stand for were never made (the Gateway,
   * asked again for a step whose intent was never journaled). Returns how
   * many were given back.
   */
  reclaim(label: string): Effect.Effect<number, StoreError>;
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

      /** Commit `op`; false on a conflict or a write lock held by another handle (read again and retry). */
      const commit = (op: Deno.AtomicOperation) =>
        op.commit().then((c) => c.ok, (error) => {
          // Another handle on the same file holds SQLite's write lock: back off and read again.
          if (String(error).includes("database is locked")) return false;
          throw error;
        });
      const backOff = (attempt: number) =>
        attempt > 8 ? new Promise((r) => setTimeout(r, Math.min(attempt, 20))) : Promise.resolve();
      const contended = () => new Error(`limit counters stayed contended for ${MAX_ATTEMPTS} attempts`);

      const apply = (
        decision: PolicyDecision | ReadonlyArray<AppliedLimit>,
        usage: Usage,
        mode: "consume" | "dryRun",
        label?: string,
      ) =>
        Effect.gen(function* () {
          const now = yield* Clock.currentTimeMillis;
          const all = limitsOf(decision);
          const counters = all.map((l) => counterOf(l, usage, now)).filter((c) => c.amount > 0);
          if (!counters.length) return { ok: true, reservation: { limits: all, usage, at: now } } as LimitVerdict;
          const hold: Deno.KvKey | undefined = label === undefined || mode === "dryRun"
            ? undefined
            : ["limit_hold", label, now, Math.floor((yield* Random.next) * 2 ** 48)];
          const reservation: Reservation = { limits: all, usage, at: now, ...(hold ? { hold } : {}) };
          return yield* kvTry("Cannot count against policy limits", async (): Promise<LimitVerdict> => {
            for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
              const entries = await read(counters);
              for (let i = 0; i < counters.length; i++) {
                const used = entries[i].value ?? 0;
                if (used + counters[i].amount > counters[i].max) return refusal(counters[i], used);
              }
              if (mode === "dryRun") return { ok: true };
              // Every counter is checked at the version just read: a concurrent writer makes this commit fail.
              const op = kv.atomic();
              counters.forEach((c, i) => {
                op.check(entries[i]).set(c.key, (entries[i].value ?? 0) + c.amount, { expireIn: c.expireIn });
              });
              if (hold) {
                const value: Hold = { label: label!, limits: all, usage, at: now };
                op.set(hold, value, { expireIn: Math.max(...counters.map((c) => c.expireIn)) });
              }
              if (await commit(op)) return { ok: true, reservation };
              await backOff(attempt);
            }
            throw contended();
          });
        });

      const settle = (reservation: Reservation, actual: Usage) =>
        kvTry("Cannot settle policy limits", async () => {
          const { limits: all, usage, at } = reservation;
          const moves = all.map((l) => {
            const reserved = counterOf(l, usage, at);
            return { counter: reserved, delta: counterOf(l, actual, at).amount - reserved.amount };
          }).filter((m) => m.delta !== 0);
          if (!moves.length && !reservation.hold) return;
          for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
            const held = reservation.hold ? await kv.get<Hold>(reservation.hold) : undefined;
            // Settled already (or expired with its counters): nothing is moved twice.
            if (held && held.value === null) return;
            const entries = await read(moves.map((m) => m.counter));
            const op = kv.atomic();
            if (held) op.check(held).delete(held.key);
            moves.forEach(({ counter, delta }, i) => {
              const before = entries[i].value;
              // A counter gone with its window has nothing left to give back.
              if (before === null && delta < 0) return;
              op.check(entries[i]).set(counter.key, Math.max(0, (before ?? 0) + delta), { expireIn: counter.expireIn });
            });
            if (await commit(op)) return;
            await backOff(attempt);
          }
          throw contended();
        });

      return Limits.of({
        consume: Effect.fn("Limits.consume")(function* (
          decision: PolicyDecision | ReadonlyArray<AppliedLimit>,
          usage: Usage = {},
          options: { readonly dryRun?: boolean; readonly hold?: string } = {},
        ) {
          return yield* apply(decision, usage, options.dryRun ? "dryRun" : "consume", options.hold);
        }),
        settle: Effect.fn("Limits.settle")(function* (reservation: Reservation, actual: Usage) {
          yield* settle(reservation, actual);
        }),
        reclaim: Effect.fn("Limits.reclaim")(function* (label: string) {
          const held = yield* kvTry(
            "Cannot read policy limit holds",
            () => Array.fromAsync(kv.list<Hold>({ prefix: ["limit_hold", label] })),
          );
          for (const h of held) {
            yield* settle({ limits: h.value.limits, usage: h.value.usage, at: h.value.at, hold: h.key }, { calls: 0 });
          }
          return held.length;
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
