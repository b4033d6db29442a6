/**
 * @module
 * Periodic health checks of running plugins. Every plugin is asked the
 * protocol's `health` question on its manifest's schedule (`health:
 * {intervalSeconds, timeoutMs}`, or every 60 s with a 2 s timeout when the
 * manifest says nothing). A plugin that answers `false`, fails, times out or
 * is not running fails the check; after `FAILURES_BEFORE_RESTART` failures in
 * a row it is `unhealthy`: audited as `plugin.unhealthy` and restarted, and
 * restarted again after 2×, 4×, 8× … as many failures, so a plugin that stays
 * broken is not restarted in a tight loop. One success makes it healthy again
 * (audited as `plugin.healthy`).
 *
 * The checks run in one fiber forked in the plugin host's layer scope, on an
 * Effect `Schedule`: closing the layer interrupts it, so no timer outlives
 * the host (or a test).
 */
import { Clock, Duration, Effect, FiberSet, Option, Schedule, type Scope } from "effect";
import { Audit } from "../telemetry/mod.ts";

/** A plugin's last health check, as `GET /api/plugins` shows it. */
export interface HealthStatus {
  /** Whether the last check passed. */
  readonly ok: boolean;
  /** When the last check ended (ISO 8601). */
  readonly at: string;
  /** Why the last check failed. */
  readonly error?: string;
  /** Failed checks since the last one that passed. */
  readonly consecutiveFailures: number;
}

/** The schedule used for a plugin whose manifest has no `health` block. */
export const DEFAULT_HEALTH = { intervalSeconds: 60, timeoutMs: 2000 } as const;

/** Failed checks in a row after which a plugin is unhealthy and restarted. */
export const FAILURES_BEFORE_RESTART = 3;

/** One plugin the checker looks after, as the plugin host describes it. */
export interface HealthTarget {
  /** Stable key of this plugin version, e.g. `smtp@0.1.0`. */
  readonly key: string;
  readonly plugin: string;
  readonly version: string;
  readonly intervalSeconds: number;
  readonly timeoutMs: number;
  /** Ask the running plugin; fails if it is not running, failed or did not answer in time. */
  ping(timeoutMs: number): Effect.Effect<unknown, unknown>;
  /** Retire the plugin's Worker or process, if it still runs, and start a fresh one. */
  restart(reason: string): Effect.Effect<void>;
}

/** What the plugin host reads back. */
export interface HealthChecks {
  /** The last check of a plugin version, if it was checked yet. */
  status(key: string): HealthStatus | undefined;
  /** True while the plugin has failed `FAILURES_BEFORE_RESTART` checks or more in a row. */
  unhealthy(key: string): boolean;
  /** Forget a plugin version (removed or replaced). */
  forget(key: string): void;
}

/** Options for `startHealthChecks`; the defaults suit production. */
export interface HealthOptions {
  /** How often the checker looks for due checks, in milliseconds. */
  readonly tickMs?: number;
  readonly failuresBeforeRestart?: number;
}

/** What a plugin's `health` answer means: `true`, or `{ok: true}`; anything else fails. */
export const healthAnswer = (value: unknown): { ok: boolean; error?: string } => {
  if (value === true) return { ok: true };
  if (value !== null && typeof value === "object" && typeof (value as { ok?: unknown }).ok === "boolean") {
    const { ok, message } = value as { ok: boolean; message?: unknown };
    if (ok) return { ok: true };
    return {
      ok: false,
      error: typeof message === "string" && message !== ""
        ? `Plugin reported itself unhealthy: ${message.slice(0, 500)}`
        : "Plugin reported itself unhealthy",
    };
  }
  return { ok: false, error: "Plugin reported itself unhealthy" };
};

const failureMessage = (raw: unknown): string => {
  // `Effect.tryPromise` without a `catch` wraps the reason in an UnknownError: report the reason.
  const error = (raw as { _tag?: unknown })?._tag === "UnknownError" && (raw as Error).cause !== undefined
    ? (raw as Error).cause
    : raw;
  const message = error !== null && typeof error === "object" && typeof (error as Error).message === "string"
    ? (error as Error).message
    : String(error);
  return message.slice(0, 1000);
};

/** Restart at N, 2N, 4N … failures in a row: back off from a plugin that stays broken. */
const restartDue = (failures: number, n: number): boolean => {
  if (failures < n || failures % n !== 0) return false;
  const k = failures / n;
  return (k & (k - 1)) === 0;
};

/**
 * Start checking the plugins `targets` lists (read again on every tick, so
 * installs and removals are picked up), in a fiber of the current scope.
 */
export const startHealthChecks = (
  targets: Effect.Effect<ReadonlyArray<HealthTarget>>,
  options: HealthOptions = {},
): Effect.Effect<HealthChecks, never, Audit | Scope.Scope> =>
  Effect.gen(function* () {
    const audit = yield* Audit;
    const tickMs = options.tickMs ?? 500;
    const n = options.failuresBeforeRestart ?? FAILURES_BEFORE_RESTART;
    const statuses = new Map<string, HealthStatus>();
    const nextAt = new Map<string, number>();
    const inFlight = new Set<string>();
    const checks = yield* FiberSet.make<void, never>();

    const record = Effect.fn("Health.record")(function* (target: HealthTarget, ok: boolean, error?: string) {
      const millis = yield* Clock.currentTimeMillis;
      const before = statuses.get(target.key);
      const wasUnhealthy = (before?.consecutiveFailures ?? 0) >= n;
      const consecutiveFailures = ok ? 0 : (before?.consecutiveFailures ?? 0) + 1;
      statuses.set(target.key, {
        ok,
        at: new Date(millis).toISOString(),
        ...(error === undefined ? {} : { error }),
        consecutiveFailures,
      });
      const who = { plugin: target.plugin, version: target.version };
      if (ok && wasUnhealthy) {
        yield* Effect.ignore(audit.append({ type: "plugin.healthy", actor: "system", data: who }));
      }
      if (!ok && restartDue(consecutiveFailures, n)) {
        yield* Effect.ignore(audit.append({
          type: "plugin.unhealthy",
          actor: "system",
          data: { ...who, consecutiveFailures, error, action: "restart" },
        }));
        yield* target.restart(
          `Plugin "${target.plugin}" was restarted: ${consecutiveFailures} health checks failed in a row (${error})`,
        );
      }
    });

    const check = (target: HealthTarget) =>
      target.ping(target.timeoutMs).pipe(
        Effect.timeoutOption(Duration.millis(target.timeoutMs)),
        Effect.map((answer) =>
          Option.isSome(answer)
            ? healthAnswer(answer.value)
            : { ok: false, error: `Plugin did not answer "health" within ${target.timeoutMs} ms` }
        ),
        Effect.catch((error) => Effect.succeed({ ok: false, error: failureMessage(error) })),
        Effect.flatMap(({ ok, error }) => record(target, ok, error)),
        Effect.ensuring(Effect.sync(() => inFlight.delete(target.key))),
      );

    const tick = Effect.gen(function* () {
      const now = yield* Clock.currentTimeMillis;
      const list = yield* targets;
      const keys = new Set(list.map((t) => t.key));
      for (const key of nextAt.keys()) if (!keys.has(key)) nextAt.delete(key);
      for (const target of list) {
        const due = nextAt.get(target.key);
        if (due === undefined) {
          // First seen (installed, or Keel started): its first check is one interval away.
          nextAt.set(target.key, now + target.intervalSeconds * 1000);
          continue;
        }
        if (due > now || inFlight.has(target.key)) continue;
        nextAt.set(target.key, now + target.intervalSeconds * 1000);
        inFlight.add(target.key);
        yield* FiberSet.run(checks, check(target));
      }
    });

    yield* tick.pipe(
      Effect.catchCause((cause) => Effect.logWarning("Plugin health tick failed", cause)),
      Effect.repeat(Schedule.spaced(Duration.millis(tickMs))),
      Effect.forkScoped,
    );

    return {
      status: (key) => statuses.get(key),
      unhealthy: (key) => (statuses.get(key)?.consecutiveFailures ?? 0) >= n,
      forget: (key) => {
        statuses.delete(key);
        nextAt.delete(key);
      },
    };
  });
