/**
 * @module
 * How `keel plugin list` shows a plugin's last health check: one line,
 * `ok` or `failing` with how many checks in a row failed and why.
 */

/** A plugin's `health` field as `GET /api/plugins` returns it. */
export interface HealthView {
  readonly ok: boolean;
  readonly at: string;
  readonly error?: string;
  readonly consecutiveFailures: number;
}

/** One line for a plugin's health, e.g. `ok (checked 2025-01-01T10:00:00.000Z)`. */
export const describeHealth = (health: HealthView | undefined): string => {
  if (!health) return "not checked yet";
  if (health.ok) return `ok (checked ${health.at})`;
  const times = health.consecutiveFailures === 1 ? "once" : `${health.consecutiveFailures} times in a row`;
  return `failing, ${times} (checked ${health.at}): ${health.error ?? "no reason given"}`;
};
