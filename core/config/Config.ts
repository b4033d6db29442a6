/**
 * @module
 * Keel's configuration as a service: where state lives, where to listen, the
 * API token, and where policy files are. `main.ts` reads it once from the
 * environment (with the parsers here); tests build it directly
 * (`KeelConfig.layer`).
 */
import { Context, Layer } from "effect";

/** Resolved configuration for one Keel host. */
export interface KeelConfigShape {
  /** Data directory, or `:memory:` for an in-memory host (tests). */
  readonly dataDir: string;
  /** Interface the HTTP API binds to; 127.0.0.1 unless the operator says otherwise. */
  readonly hostname: string;
  /** TCP port of the HTTP API. */
  readonly port: number;
  /** Bearer token required by every state-changing API call. */
  readonly token: string;
  /** Folder of `*.yaml` policy files. */
  readonly policiesDir: string;
  /** Keel's own source root: `core/sdk` lives here, and the shipped plugins. */
  readonly root: string;
  /** Milliseconds a plugin gets to answer one call. */
  readonly rpcTimeoutMs: number;
  /** Open PGlite (memory) at start-up instead of on first use. */
  readonly eagerMemory: boolean;
  /** Memory's embedder: `offline` (default, no model), `ollama` or `ollama:MODEL` (`KEEL_EMBEDDER`). */
  readonly embedder?: string;
  /** Runs executing at once across all workflows (`KEEL_MAX_RUNS`); others wait in the run queue. Default 32. */
  readonly maxRuns?: number;
  /**
   * Runs the run queue may hold before a start from outside (`POST /api/workflows/{name}/runs`, a webhook) is refused
   * with a 429 (`KEEL_MAX_QUEUED`); children, schedules and recovered runs are never refused. Default 10,000.
   */
  readonly maxQueued?: number;
  /**
   * Milliseconds a run that starts (or resumes) at once may hold its start back to share its first write's commit;
   * default 5. Longer trades the start's latency for fewer commits; tests set it long to make "one commit" exact.
   */
  readonly startHoldMs?: number;
  /**
   * Milliseconds an HTTP connection may stay open without a request in flight (from its accept, or its last answer),
   * and a request body may take to arrive (`KEEL_HTTP_TIMEOUT_MS`). Default 30,000.
   */
  readonly httpTimeoutMs?: number;
  /** HTTP connections open at once (`KEEL_MAX_CONNECTIONS`); past it, the longest idle one is closed. Default 256. */
  readonly maxConnections?: number;
  /** Ollama's base URL for the embedder (`OLLAMA_HOST`); default http://127.0.0.1:11434. */
  readonly ollamaHost?: string;
}

/** The configuration service. */
export class KeelConfig extends Context.Service<KeelConfig, KeelConfigShape>()("keel/config/KeelConfig") {
  /** A layer from an already resolved configuration. */
  static readonly layer = (config: KeelConfigShape) => Layer.succeed(KeelConfig, KeelConfig.of(config));
}

/** Keel's source root, derived from this file's location. */
export const keelRoot = (): string => new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

/**
 * Parse an integer setting from the environment: `fallback` when unset, else an integer from `min` to `max`, or an
 * error naming the variable and its range (Keel refuses to start rather than run with a value it cannot use).
 */
export const parseIntSetting = (
  name: string,
  raw: string | undefined,
  fallback: number,
  min: number,
  max: number,
): number => {
  if (raw === undefined || raw === "") return fallback;
  // Plain digits only: `Number()` reads "0x10" as 16, "1e3" as 1000, " 5 " as 5.
  const n = /^\d{1,16}$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new Error(`${name} must be an integer between ${min} and ${max}: got "${raw}"`);
  }
  return n;
};

/** Parse `KEEL_PORT`. */
export const parsePort = (raw: string | undefined, fallback: number): number =>
  parseIntSetting("KEEL_PORT", raw, fallback, 0, 65535);

/** Parse `KEEL_MAX_RUNS`: how many runs execute at once (default 32). */
export const parseMaxRuns = (raw: string | undefined): number => parseIntSetting("KEEL_MAX_RUNS", raw, 32, 1, 10_000);
/** The longest delay a run's start may ask for: a year, in seconds. */
export const MAX_DELAY_SECONDS = 365 * 24 * 3600;

/** How far a webhook delivery's `X-Keel-Timestamp` may be from Keel's clock, either way (seconds). */
export const HOOK_TOLERANCE_SECONDS = 300;

/** Parse `KEEL_MAX_QUEUED`: how many runs may queue before outside starts get a 429 (default 10,000). */
export const parseMaxQueued = (raw: string | undefined): number =>
  parseIntSetting("KEEL_MAX_QUEUED", raw, 10_000, 1, 10_000_000);

/** Parse `KEEL_HTTP_TIMEOUT_MS`: how long a connection may idle and a request body take to arrive (default 30 s). */
export const parseHttpTimeout = (raw: string | undefined): number =>
  parseIntSetting("KEEL_HTTP_TIMEOUT_MS", raw, DEFAULT_HTTP_TIMEOUT_MS, 100, 3_600_000);
/** Parse `KEEL_MAX_CONNECTIONS`: how many HTTP connections Keel holds at once (default 256). */
export const parseMaxConnections = (raw: string | undefined): number =>
  parseIntSetting("KEEL_MAX_CONNECTIONS", raw, DEFAULT_MAX_CONNECTIONS, 1, 100_000);
/** The HTTP timeout when `KEEL_HTTP_TIMEOUT_MS` is unset. */
export const DEFAULT_HTTP_TIMEOUT_MS = 30_000;
/** The connection cap when `KEEL_MAX_CONNECTIONS` is unset. */
export const DEFAULT_MAX_CONNECTIONS = 256;

/** Parse `KEEL_RPC_TIMEOUT_MS`: how long a plugin may take to start or answer a call (default 30 s, at most 1 h). */
export const parseRpcTimeout = (raw: string | undefined): number =>
  parseIntSetting("KEEL_RPC_TIMEOUT_MS", raw, 30_000, 100, 3_600_000);
