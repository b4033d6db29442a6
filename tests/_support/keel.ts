/**
 * @module
 * Start a real Keel for a test, in this process: a fresh data dir with a
 * real Deno KV file, real PGlite, real plugin Workers, and the HTTP API on
 * 127.0.0.1 with an OS-chosen port. `api()` calls it with the token.
 */
import { type Keel, startKeel } from "../../core/mod.ts";
import { type KeelConfigShape, keelRoot } from "../../core/config/mod.ts";

/** Keel's source root. */
export const ROOT = keelRoot();
/** The token every test host uses. */
export const TEST_TOKEN = "test-token";

/** A complete configuration for building core layers directly in a test. */
export const testConfig = (dataDir: string, overrides: Partial<KeelConfigShape> = {}): KeelConfigShape => ({
  dataDir,
  hostname: "127.0.0.1",
  port: 0,
  token: TEST_TOKEN,
  policiesDir: `${ROOT}/policies`,
  root: ROOT,
  rpcTimeoutMs: 1000,
  eagerMemory: false,
  ...overrides,
});

/** A started Keel plus helpers. */
export interface TestKeel {
  readonly keel: Keel;
  readonly url: string;
  readonly dataDir: string;
  readonly policiesDir: string;
  /** Call the API with the bearer token; returns status and parsed JSON. */
  api(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }>;
  close(): Promise<void>;
}

/** Options for `startTestKeel`. */
export interface TestKeelOptions {
  /** Policy files to write (name → YAML); default: Keel's shipped `policies/`. */
  readonly policies?: Record<string, string>;
  /** Reuse a data dir (to test restarts); default: a new temp dir. */
  readonly dataDir?: string;
  readonly rpcTimeoutMs?: number;
  /** Runs executing at once (default Keel's). */
  readonly maxRuns?: number;
  /** Runs the queue may hold before outside starts get a 429 (default Keel's). */
  readonly maxQueued?: number;
  /** How long a start may wait to share its run's first commit (default Keel's). */
  readonly startHoldMs?: number;
  /** How long a connection may idle and a body take to arrive (default Keel's). */
  readonly httpTimeoutMs?: number;
  /** HTTP connections open at once (default Keel's). */
  readonly maxConnections?: number;
}

/** Start Keel for a test. Always `close()` it (use try/finally). */
export const startTestKeel = async (options: TestKeelOptions = {}): Promise<TestKeel> => {
  const dataDir = options.dataDir ?? await Deno.makeTempDir({ prefix: "keel-test-" });
  let policiesDir = `${ROOT}/policies`;
  if (options.policies) {
    policiesDir = await Deno.makeTempDir({ prefix: "keel-policies-" });
    for (const [name, text] of Object.entries(options.policies)) {
      await Deno.writeTextFile(`${policiesDir}/${name}`, text);
    }
  }
  // Remove only what this helper made; a caller's own data dir is theirs to keep.
  const cleanUp = async () => {
    if (!options.dataDir) await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    if (options.policies) await Deno.remove(policiesDir, { recursive: true }).catch(() => {});
  };
  const keel = await startKeel(testConfig(dataDir, {
    policiesDir,
    rpcTimeoutMs: options.rpcTimeoutMs ?? 10_000,
    ...(options.maxRuns ? { maxRuns: options.maxRuns } : {}),
    ...(options.maxQueued ? { maxQueued: options.maxQueued } : {}),
    ...(options.startHoldMs ? { startHoldMs: options.startHoldMs } : {}),
    ...(options.httpTimeoutMs ? { httpTimeoutMs: options.httpTimeoutMs } : {}),
    ...(options.maxConnections ? { maxConnections: options.maxConnections } : {}),
  }))
    .catch(async (error) => {
      await cleanUp();
      throw error;
    });
  const url = keel.url!;
  return {
    keel,
    url,
    dataDir,
    policiesDir,
    async api(method, path, body) {
      const res = await fetch(`${url}${path}`, {
        method,
        headers: { authorization: `Bearer ${TEST_TOKEN}`, "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      return { status: res.status, body: await res.json() };
    },
    async close() {
      await keel.close();
      await cleanUp();
    },
  };
};

/** Install the shipped smtp connector (granted only its server) and onboarding agent. */
export const installOnboarding = async (k: TestKeel, smtp: { host: string; port: number }) => {
  const hostPort = `${smtp.host}:${smtp.port}`;
  const a = await k.api("POST", "/api/plugins", {
    path: `${ROOT}/plugins/smtp`,
    grant: { net: [hostPort] },
    config: { host: smtp.host, port: smtp.port, from: "Keel <keel@example.test>" },
  });
  if (a.status !== 201) throw new Error(`smtp install failed: ${JSON.stringify(a.body)}`);
  const b = await k.api("POST", "/api/plugins", { path: `${ROOT}/agents/onboarding`, grant: {} });
  if (b.status !== 201) throw new Error(`onboarding install failed: ${JSON.stringify(b.body)}`);
};
