/**
 * @module
 * Keel's entry point: the CLI and the server. `serve` starts the host (HTTP
 * API on 127.0.0.1, state in the data dir); every other command is a client
 * of a running host's HTTP API, so the data dir keeps exactly one owner.
 *
 * Environment: KEEL_DATA_DIR (default ./.keel), KEEL_PORT (default 8787),
 * KEEL_HOST (default 127.0.0.1), KEEL_TOKEN (default: generated on first start
 * and kept in <data dir>/token), KEEL_POLICIES (default: policies/ in Keel's
 * folder), KEEL_URL (client commands; default http://127.0.0.1:$KEEL_PORT),
 * KEEL_CLIENT_TIMEOUT (client commands: seconds to wait for an answer beyond a
 * --wait, 1 to 86,400; default 120),
 * KEEL_RPC_TIMEOUT_MS (100 to 3,600,000; default 30,000), KEEL_MAX_RUNS (1 to
 * 10,000; default 32), KEEL_MAX_QUEUED (1 to 10,000,000; default 10,000), KEEL_EMBEDDER (memory's embedder: offline, ollama or
 * ollama:MODEL), OLLAMA_HOST (default http://127.0.0.1:11434), KEEL_HTTP_TIMEOUT_MS (100 to 3,600,000; default
 * 30,000) and KEEL_MAX_CONNECTIONS (1 to 100,000; default 256).
 */
import {
  keelRoot,
  parseHttpTimeout,
  parseMaxConnections,
  parseMaxQueued,
  parseMaxRuns,
  parsePort,
  parseRpcTimeout,
} from "./core/config/mod.ts";
import { KeelStartError, startKeel } from "./core/mod.ts";
import { COMMANDS, dataDir, env, readToken, UsageError } from "./core/cli/mod.ts";

const SERVE_HELP = `Usage: deno task keel serve

Start Keel: open the data dir ($KEEL_DATA_DIR, default ./.keel), load policies
($KEEL_POLICIES, default policies/ in Keel's folder), resume interrupted runs and serve the
HTTP API on $KEEL_HOST:$KEEL_PORT (default 127.0.0.1:8787). The API token is
$KEEL_TOKEN, or generated on first start and kept in <data dir>/token. At most
$KEEL_MAX_RUNS runs (default 32) execute at once; others wait in the run queue.
Once $KEEL_MAX_QUEUED runs (default 10,000) are queued, starts over the API and
webhooks are refused with 429 until the queue drains. An HTTP connection with no
request in flight for $KEEL_HTTP_TIMEOUT_MS (default 30,000) is closed, a request
body slower than that gets a 408, and at most $KEEL_MAX_CONNECTIONS (default 256)
connections are open at once.`;

const mainHelp = () =>
  [
    "Keel — a governed operations host for a one-person company",
    "",
    "Usage: deno task keel <command> [options]",
    "",
    "Commands:",
    "  serve                         Start Keel (HTTP API on 127.0.0.1:$KEEL_PORT)",
    ...Object.values(COMMANDS).flatMap((c) => c.summary.map((line) => `  ${line}`)),
    "",
    "Options for every command: --help",
    "Environment: KEEL_DATA_DIR, KEEL_PORT, KEEL_HOST, KEEL_TOKEN, KEEL_POLICIES, KEEL_URL,",
    "             KEEL_RPC_TIMEOUT_MS, KEEL_MAX_RUNS, KEEL_MAX_QUEUED, KEEL_EMBEDDER, OLLAMA_HOST,",
    "             KEEL_HTTP_TIMEOUT_MS, KEEL_MAX_CONNECTIONS, KEEL_CLIENT_TIMEOUT",
  ].join("\n");

/** `KEEL_TOKEN`, the data dir's saved token, or a new one (saved only once Keel has started: see `serve`). */
const ensureToken = (): { token: string; generated: boolean } => {
  const given = env("KEEL_TOKEN");
  if (given) return { token: given, generated: false };
  const existing = readToken();
  if (existing) return { token: existing, generated: false };
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  const token = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return { token, generated: true };
};

const serve = async () => {
  // Settings first: a bad one stops Keel before it touches the data dir.
  const port = parsePort(env("KEEL_PORT"), 8787);
  const rpcTimeoutMs = parseRpcTimeout(env("KEEL_RPC_TIMEOUT_MS"));
  const maxRuns = parseMaxRuns(env("KEEL_MAX_RUNS"));
  const maxQueued = parseMaxQueued(env("KEEL_MAX_QUEUED"));
  const httpTimeoutMs = parseHttpTimeout(env("KEEL_HTTP_TIMEOUT_MS"));
  const maxConnections = parseMaxConnections(env("KEEL_MAX_CONNECTIONS"));
  const dir = dataDir();
  const kind = (() => {
    try {
      return Deno.statSync(dir).isDirectory ? "folder" : "other";
    } catch {
      return "none";
    }
  })();
  if (kind === "other") throw new UsageError(`KEEL_DATA_DIR "${dir}" is not a folder`);
  const { token, generated } = ensureToken();
  const root = keelRoot();
  const config = {
    dataDir: dataDir(),
    hostname: env("KEEL_HOST") ?? "127.0.0.1",
    port,
    token,
    policiesDir: env("KEEL_POLICIES") ?? `${root}/policies`,
    root,
    rpcTimeoutMs,
    eagerMemory: false,
    embedder: env("KEEL_EMBEDDER"),
    ollamaHost: env("OLLAMA_HOST"),
    maxRuns,
    maxQueued,
    httpTimeoutMs,
    maxConnections,
  };
  const keel = await startKeel(config).catch((error) => {
    if (error instanceof KeelStartError && error.body.tag === "ListenError") {
      throw new KeelStartError({ ...error.body, message: `${error.message} (set KEEL_PORT or KEEL_HOST)` });
    }
    throw error;
  });
  // A new token is saved once Keel owns the data dir (its lock is held): a start that failed, or another Keel that
  // owns the dir, never has its token replaced or removed, and the token saved is the one shown.
  const saved = generated && config.dataDir !== ":memory:"; // an in-memory Keel (tests) has no folder to keep it in
  if (saved) Deno.writeTextFileSync(`${config.dataDir}/token`, `${token}\n`, { mode: 0o600 });
  console.log(`Keel is listening on ${keel.url} (data dir ${config.dataDir}, policies ${config.policiesDir})`);
  if (generated) console.log(`API token${saved ? ` (also saved in ${config.dataDir}/token)` : ""}: ${token}`);
  if (keel.recovered) console.log(`Resumed ${keel.recovered} interrupted run(s)`);
  const stop = async () => {
    console.log("Keel is stopping");
    await keel.close();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
};

const main = async (argv: string[]) => {
  const [command, ...rest] = argv;
  if (command === undefined || command === "--help" || command === "-h") return console.log(mainHelp());
  if (command === "serve") {
    if (rest.includes("--help") || rest.includes("-h")) return console.log(SERVE_HELP);
    if (rest.length) throw new UsageError(`serve takes no arguments: got "${rest[0]}"`);
    return await serve();
  }
  const handler = COMMANDS[command];
  if (!handler) throw new UsageError(`Unknown command "${command}". Run "deno task keel --help"`);
  if (rest.includes("--help") || rest.includes("-h")) return console.log(handler.help);
  await handler.run(rest);
};

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (error) {
    if (error instanceof KeelStartError) {
      console.error(`Keel cannot start: ${error.message}`);
    } else if (error instanceof UsageError || (error as { code?: string })?.code?.startsWith("ERR_PARSE_ARGS")) {
      console.error(`error: ${(error as Error).message}`);
    } else {
      console.error(`error: ${error instanceof Error ? error.message : String(error)}`);
    }
    Deno.exit(1);
  }
}
