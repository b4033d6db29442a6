/**
 * @module
 * A clock stopped at a chosen instant, for tests that must be at a given
 * time (a budget day, quiet hours, an approval's expiry) without waiting for
 * it. Sleeping still waits for real, so timeouts keep working.
 */
import { Clock, Duration, Effect } from "effect";

/** A `Clock` that always reads `ms` (Unix milliseconds). */
export const fixedClock = (ms: number): Clock.Clock => ({
  currentTimeMillisUnsafe: () => ms,
  currentTimeMillis: Effect.succeed(ms),
  currentTimeNanosUnsafe: () => BigInt(ms) * 1_000_000n,
  currentTimeNanos: Effect.succeed(BigInt(ms) * 1_000_000n),
  monotonicTimeNanosUnsafe: () => BigInt(Math.round(performance.now() * 1e6)),
  monotonicTimeNanos: Effect.sync(() => BigInt(Math.round(performance.now() * 1e6))),
  sleep: (d) =>
    Effect.callback<void>((resume) => {
      const timer = setTimeout(() => resume(Effect.void), Duration.toMillis(d));
      return Effect.sync(() => clearTimeout(timer));
    }),
});

/** Run `effect` as if it were `ms`. */
export const at = <A, E, R>(ms: number, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.provideService(effect, Clock.Clock, fixedClock(ms));
