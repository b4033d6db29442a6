/**
 * @module
 * Semantic retries: what the Gateway does when a dispatched effect fails
 * depends on the effect's class, not on guesswork.
 *
 * - `read` changes nothing, so a failed call is tried again with exponential
 *   backoff and full jitter — unless the plugin said `retryable: false`, or
 *   the effect declares `retry: "none"`.
 * - `write` is tried again only when the connector honours an idempotency key
 *   (`idempotency: "key"`), always with the same key; without one a failure
 *   fails the step.
 * - `irreversible` and `financial` are never tried again by the host. A
 *   definite answer from the plugin fails the step; an outcome Keel cannot
 *   know (the plugin crashed or timed out after the call was sent) pauses the
 *   run with an `unknown_outcome` approval.
 *
 * Timing is data: `DEFAULT_BACKOFF` unless the manifest's effect sets
 * `backoff: { baseMs, capMs, maxAttempts }`, and every retry of one dispatch
 * together sleeps at most `RETRY_BUDGET_MS`. So the longest a retried effect
 * can take is `maxAttempts` calls (each bounded by the host's RPC timeout)
 * plus that budget.
 */
import type { EffectDecl } from "../manifest/mod.ts";

/** Backoff timing for one effect. */
export interface BackoffSchedule {
  /** Ceiling of the first retry's delay. */
  readonly baseMs: number;
  /** Largest ceiling any retry's delay may have. */
  readonly capMs: number;
  /** Calls in all, the first included. */
  readonly maxAttempts: number;
}

/** The timing used when a manifest does not set its own. */
export const DEFAULT_BACKOFF: BackoffSchedule = { baseMs: 200, capMs: 5_000, maxAttempts: 4 };

/** Most time all retries of one dispatch may spend sleeping between attempts. */
export const RETRY_BUDGET_MS = 30_000;

/** What the host may do after a failed call of an effect. */
export type RetryMode =
  /** Try again with backoff (reads; writes that honour an idempotency key, with the same key). */
  | "retry"
  /** Fail the step. */
  | "fail"
  /** Irreversible or financial: fail on a definite answer, ask the operator when the outcome is unknown. */
  | "ask";

/** How the host treats failures of this effect, by its class (and its own `retry` field, which can only narrow it). */
export const retryModeOf = (decl: Pick<EffectDecl, "class" | "idempotency" | "retry">): RetryMode => {
  if (decl.class === "irreversible" || decl.class === "financial") return "ask";
  if (decl.retry === "none") return "fail";
  if (decl.class === "read") return "retry";
  return decl.idempotency === "key" ? "retry" : "fail";
};

/** The effect's backoff timing: the manifest's fields over the defaults. */
export const scheduleOf = (decl: Pick<EffectDecl, "backoff">): BackoffSchedule => ({
  ...DEFAULT_BACKOFF,
  ...decl.backoff,
});

/** A failure as the Gateway sees it: a tag, and a plugin failure's own `details`. */
interface Failure {
  readonly _tag: string;
  readonly details?: unknown;
}

/**
 * True if the call may have happened though Keel got no answer: the plugin
 * crashed or timed out while the call was with it, or it failed saying it
 * cannot tell (`PluginError`'s `outcomeUnknown`: its server took the request,
 * then went silent).
 */
export const isUnknownOutcome = (error: Failure): boolean => {
  if (error._tag === "PluginCrashedError" || error._tag === "PluginTimeoutError") return true;
  if (error._tag !== "PluginFailedError") return false;
  const d = error.details as { outcomeUnknown?: unknown } | null | undefined;
  return typeof d === "object" && d !== null && d.outcomeUnknown === true;
};

/**
 * True if the call was cut off because Keel is shutting down (the plugin host
 * stopped its plugins; only the host sets this). Such a failure is no outcome:
 * the closing Keel neither retries it nor records it, and the intent is left
 * for the next start to settle (resent only if policy still allows it, else
 * the operator is asked).
 */
export const isShutdown = (error: Failure): boolean => {
  if (error._tag !== "PluginCrashedError") return false;
  const d = error.details as { shutdown?: unknown } | null | undefined;
  return typeof d === "object" && d !== null && d.shutdown === true;
};

/**
 * True if trying the same call again may help: crashes, timeouts, a busy
 * plugin, and a plugin's own failure unless it said `retryable: false` (or the
 * call ran but its result could not be recorded). Keel's own refusals are final.
 */
export const isRetryable = (error: Failure): boolean => {
  if (error._tag === "PluginCrashedError" || error._tag === "PluginTimeoutError" || error._tag === "PluginBusyError") {
    return true;
  }
  if (error._tag !== "PluginFailedError") return false;
  // A plugin's own failure: retried unless it said no (`retryable: false`, even with `outcomeUnknown`) or it ran.
  const d = error.details as { retryable?: unknown; ran?: unknown } | null | undefined;
  return !(typeof d === "object" && d !== null && (d.retryable === false || d.ran === true));
};

/**
 * Full jitter: a delay drawn uniformly from [0, min(cap, base · 2^(n-1))) for
 * the retry after the n-th failed attempt. `random` is in [0, 1).
 */
export const backoffDelay = (schedule: BackoffSchedule, failedAttempts: number, random: number): number =>
  Math.floor(random * Math.min(schedule.capMs, schedule.baseMs * 2 ** (failedAttempts - 1)));

/**
 * The delay before the next attempt, or undefined when the call must not be
 * tried again: the class forbids it, the error is final, the attempts are
 * used up, or the sleep would overrun `RETRY_BUDGET_MS`.
 */
export const nextRetryDelay = (
  decl: Pick<EffectDecl, "class" | "idempotency" | "retry" | "backoff">,
  error: Failure,
  failedAttempts: number,
  sleptMs: number,
  random: number,
): number | undefined => {
  if (retryModeOf(decl) !== "retry" || !isRetryable(error) || isShutdown(error)) return undefined;
  const schedule = scheduleOf(decl);
  if (failedAttempts >= schedule.maxAttempts) return undefined;
  const delay = backoffDelay(schedule, failedAttempts, random);
  return sleptMs + delay > RETRY_BUDGET_MS ? undefined : delay;
};
