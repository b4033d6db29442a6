/**
 * @module
 * When a crashed plugin may start again. A plugin that keeps dying is not
 * restarted in a tight loop: the n-th crash in a row delays the next start by
 * 100 ms · 2^(n-1), at most 30 s. A plugin that proved itself healthy (it
 * answered a call, or stayed up for `healthyMs`) starts the count afresh.
 */

/** What the backoff needs to know about an instance that died. */
export interface DeadInstance {
  readonly startedAt: number;
  readonly diedAt: number | undefined;
  /** Calls it answered successfully before dying. */
  readonly answered: number;
}

/** Restart pacing for one plugin. */
export class RestartBackoff {
  #crashes = 0;
  #notBefore = 0;
  readonly #counted = new WeakSet<DeadInstance>();

  /** Backoff from `baseMs`, doubling up to `maxMs`; `healthyMs` of uptime resets it. */
  constructor(readonly baseMs = 100, readonly maxMs = 30_000, readonly healthyMs = 10_000) {}

  /** Milliseconds to wait at `now` before `dead` may be replaced (0: start now); counts each death once. */
  wait(dead: DeadInstance, now: number): number {
    if (!this.#counted.has(dead)) {
      this.#counted.add(dead);
      const diedAt = dead.diedAt ?? now;
      if (dead.answered > 0 || diedAt - dead.startedAt >= this.healthyMs) this.#crashes = 0;
      this.#crashes++;
      this.#notBefore = diedAt + Math.min(this.baseMs * 2 ** (this.#crashes - 1), this.maxMs);
    }
    return Math.max(0, this.#notBefore - now);
  }

  /** Crashes in a row so far. */
  get crashes(): number {
    return this.#crashes;
  }
}
