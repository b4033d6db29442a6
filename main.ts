/**
 * @module
 * Keel's entry point: the CLI and the server. `serve` starts the host (HTTP
 * API on 127.0.0.1, state in the data dir); every other command is a client
 * of a running host's HTTP API, so the data dir keeps exactly one owner.
 *
 * Environment: KEEL_DATA_DIR (default ./.keel), KEEL_PORT (default 8787),
 * KEEL_HOST (default 127.0.0.1), KEEL_TOKEN (default: generated on first start
 * and kept in <data dir>/token), KEEL_POLICIES (default ./policies),
 * KEEL_URL (client commands; default http://127.0.0.1:$KEEL_PORT).
 */
import { parseArgs } from "node:util";
import { keelRoot, parsePort } from "./core/config/mod.ts";
import { KeelStartError, startKeel } from "./core/mod.ts";
import { describePermissions, readManifest, resolveRequested, validateConfig } from "./core/manifest/mod.ts";
import { Effect } from "effect";

const HELP: Record<string, string> = {
  main: `Keel — a governed operations host for a one-person company

Usage: deno task keel <command> [options]

Commands:
  serve                         Start Keel (HTTP API on 127.0.0.1:$KEEL_PORT)
  plugin install PATH           Install a plugin folder with an explicit grant
  plugin list                   List installed plugins, their grants and state
  run WORKFLOW --input JSON     Start a run (add --wait to wait for it)
  runs show ID                  Show a run: status, steps, output, error
  approvals                     List pending approvals
  approve ID [--note TEXT]      Approve a pending action; the run resumes
  deny ID [--note TEXT]         Deny a pending action
  audit [--run ID]              Show the audit trail (add --verify to check the hash chain)

Options for every command: --help
Environment: KEEL_DATA_DIR, KEEL_PORT, KEEL_HOST, KEEL_TOKEN, KEEL_POLICIES, KEEL_URL`,
  serve: `Usage: deno task keel serve

Start Keel: open the data dir ($KEEL_DATA_DIR, default ./.keel), load policies
($KEEL_POLICIES, default ./policies), resume interrupted runs and serve the
HTTP API on $KEEL_HOST:$KEEL_PORT (default 127.0.0.1:8787). The API token is
$KEEL_TOKEN, or generated on first start and kept in <data dir>/token.`,
  plugin: `Usage:
  deno task keel plugin install PATH [--config JSON] [--grant JSON] [--yes]
  deno task keel plugin list

install shows the permissions and effects the plugin requests and asks before
granting them. --grant gives a subset explicitly (e.g. '{"net":["127.0.0.1:2525"]}');
--yes grants what is requested without asking (for scripts).`,
  run: `Usage: deno task keel run WORKFLOW --input JSON [--wait [SECONDS]]

Start a run of WORKFLOW with the given input. With --wait, wait (default 30 s)
until the run ends or pauses for an approval, and print it.`,
  runs: `Usage: deno task keel runs show RUN_ID`,
  approvals: `Usage: deno task keel approvals [--status pending|approved|denied|used|expired]`,
  approve: `Usage: deno task keel approve APPROVAL_ID [--note TEXT] [--resolution retry|delivered]

--resolution is needed when Keel could not tell whether an effect happened
(after a crash): "delivered" if it did, "retry" to perform it again.`,
  deny: `Usage: deno task keel deny APPROVAL_ID [--note TEXT]`,
  audit: `Usage: deno task keel audit [--run RUN_ID] [--limit N] [--verify]`,
};

class UsageError extends Error {}

const env = (name: string): string | undefined => Deno.env.get(name) || undefined;
const dataDir = () => env("KEEL_DATA_DIR") ?? "./.keel";

const readToken = (): string | undefined => {
  if (env("KEEL_TOKEN")) return env("KEEL_TOKEN");
  try {
    return Deno.readTextFileSync(`${dataDir()}/token`).trim();
  } catch {
    return undefined;
  }
};

const ensureToken = (): { token: string; generated: boolean } => {
  const given = env("KEEL_TOKEN");
  if (given) return { token: given, generated: false };
  const dir = dataDir();
  Deno.mkdirSync(dir, { recursive: true });
  const existing = readToken();
  if (existing) return { token: existing, generated: false };
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  const token = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  Deno.writeTextFileSync(`${dir}/token`, `${token}\n`, { mode: 0o600 });
  return { token, generated: true };
};

const serve = async () => {
  const { token, generated } = ensureToken();
  const root = keelRoot();
  const config = {
    dataDir: dataDir(),
    hostname: env("KEEL_HOST") ?? "127.0.0.1",
    port: parsePort(env("KEEL_PORT"), 8787),
    token,
    policiesDir: env("KEEL_POLICIES") ?? `${root}/policies`,
    root,
    rpcTimeoutMs: Number(env("KEEL_RPC_TIMEOUT_MS") ?? 30_000),
    eagerMemory: false,
  };
  const keel = await startKeel(config);
  console.log(`Keel is listening on ${keel.url} (data dir ${config.dataDir}, policies ${config.policiesDir})`);
  if (generated) console.log(`API token (also saved in ${config.dataDir}/token): ${token}`);
  if (keel.recovered) console.log(`Resumed ${keel.recovered} interrupted run(s)`);
  const stop = async () => {
    console.log("Keel is stopping");
    await keel.close();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
};

const api = async (method: string, path: string, body?: unknown): Promise<any> => {
  const base = env("KEEL_URL") ?? `http://127.0.0.1:${parsePort(env("KEEL_PORT"), 8787)}`;
  const token = readToken();
  let res: Response;
  try {
    res = await fetch(`${base}${path}`, {
      method,
      headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new UsageError(`Keel is not running at ${base}: start it with "deno task start"`);
  }
  const json = await res.json().catch(() => ({}));
  if (!res.ok) {
    const e = json?.error ?? { tag: `HTTP ${res.status}`, message: res.statusText };
    throw new UsageError(`${e.tag}: ${e.message}`);
  }
  return json;
};

const parseJson = (flag: string, text: string | undefined): unknown => {
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new UsageError(`--${flag} must be JSON: ${(error as Error).message}`);
  }
};

const print = (value: unknown) => console.log(JSON.stringify(value, null, 2));

const confirm = (question: string): boolean => {
  if (!Deno.stdin.isTerminal()) return false;
  const answer = prompt(`${question} [y/N]`);
  return answer !== null && /^y(es)?$/i.test(answer.trim());
};

const pluginInstall = async (path: string | undefined, flags: Record<string, unknown>) => {
  if (!path) throw new UsageError("plugin install needs a PATH to the plugin folder");
  const config = parseJson("config", flags.config as string | undefined);
  const preview = await Effect.runPromise(
    Effect.gen(function* () {
      const manifest = yield* readManifest(path);
      const cfg = yield* validateConfig(manifest, config);
      const requested = yield* resolveRequested(manifest, cfg);
      return { manifest, requested };
    }).pipe(Effect.mapError((e) => new UsageError(e.message))),
  ).catch((e) => {
    throw e instanceof UsageError ? e : new UsageError(String(e?.message ?? e));
  });
  const { manifest, requested } = preview;
  const grant = flags.grant !== undefined ? parseJson("grant", flags.grant as string) : requested;
  console.log(`Plugin ${manifest.name} ${manifest.version} (${manifest.kind}): ${manifest.description}`);
  console.log("It asks to:");
  for (const line of describePermissions(requested)) console.log(`  - ${line}`);
  if (manifest.effects.length) {
    console.log("It performs these effects:");
    for (const e of manifest.effects) console.log(`  - ${e.name} (${e.class}): ${e.description}`);
  }
  if (manifest.uses.length) console.log(`It asks Keel for these effects: ${manifest.uses.join(", ")}`);
  if (manifest.workflows.length) {
    console.log(`It offers workflows: ${manifest.workflows.map((w) => w.name).join(", ")}`);
  }
  if (flags.grant !== undefined) console.log(`You grant: ${JSON.stringify(grant)}`);
  if (!flags.yes && !confirm("Install and grant this?")) {
    throw new UsageError("Not installed (answer y, or pass --yes in scripts)");
  }
  const { plugin } = await api("POST", "/api/plugins", { path: Deno.realPathSync(path), grant, config });
  console.log(`Installed ${plugin.name} ${plugin.version} (manifest ${String(plugin.manifestHash).slice(0, 12)})`);
};

const main = async (argv: string[]) => {
  const { values: flags, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      help: { type: "boolean", short: "h" },
      yes: { type: "boolean", short: "y" },
      input: { type: "string" },
      config: { type: "string" },
      grant: { type: "string" },
      wait: { type: "string" },
      note: { type: "string" },
      resolution: { type: "string" },
      run: { type: "string" },
      limit: { type: "string" },
      status: { type: "string" },
      verify: { type: "boolean" },
    },
  });
  // `--wait` without a number means 30 seconds.
  const [command, ...rest] = positionals;
  if (!command) {
    console.log(HELP.main);
    return;
  }
  if (flags.help) {
    console.log(HELP[command] ?? HELP.main);
    return;
  }
  switch (command) {
    case "serve":
      return await serve();
    case "plugin": {
      if (rest[0] === "install") return await pluginInstall(rest[1], flags);
      if (rest[0] === "list") {
        const { plugins } = await api("GET", "/api/plugins");
        if (!plugins.length) return console.log("No plugins installed");
        for (const p of plugins) {
          console.log(
            `${p.name} ${p.version} ${p.manifest.kind} — ${p.state}${p.restarts ? ` (${p.restarts} restarts)` : ""}`,
          );
          for (const line of describePermissions(p.grant)) console.log(`    grant: ${line}`);
        }
        return;
      }
      throw new UsageError(`Unknown plugin command "${rest[0] ?? ""}": use install or list`);
    }
    case "run": {
      const workflow = rest[0];
      if (!workflow) throw new UsageError("run needs a WORKFLOW name");
      const input = parseJson("input", flags.input) ?? {};
      const wait = flags.wait === undefined ? "" : `?wait=${Number(flags.wait) || 30}`;
      const result = await api("POST", `/api/workflows/${encodeURIComponent(workflow)}/runs${wait}`, { input });
      if (!wait) return console.log(`Started ${result.runId}`);
      print(result);
      if (result.status === "waiting_approval") {
        console.log(`Waiting for approval: deno task keel approve ${result.waitingFor?.approvalId}`);
      }
      return;
    }
    case "runs": {
      if (rest[0] !== "show" || !rest[1]) throw new UsageError("Usage: runs show RUN_ID");
      return print(await api("GET", `/api/runs/${encodeURIComponent(rest[1])}`));
    }
    case "approvals": {
      const { approvals } = await api("GET", `/api/approvals?status=${encodeURIComponent(flags.status ?? "pending")}`);
      if (!approvals.length) return console.log(`No ${flags.status ?? "pending"} approvals`);
      for (const a of approvals) {
        console.log(`${a.id}  ${a.effect}  run ${a.runId}  rule ${a.rule}  expires ${a.expiresAt}`);
        console.log(`    args: ${JSON.stringify(a.args)}`);
        if (a.message) console.log(`    ${a.message}`);
      }
      return;
    }
    case "approve":
    case "deny": {
      if (!rest[0]) throw new UsageError(`${command} needs an APPROVAL_ID`);
      const { approval } = await api("POST", `/api/approvals/${encodeURIComponent(rest[0])}/${command}`, {
        note: flags.note,
        resolution: flags.resolution,
      });
      return console.log(`${approval.id} ${approval.status} by ${approval.decidedBy}`);
    }
    case "audit": {
      if (flags.verify) return print(await api("GET", "/api/audit/verify"));
      const q = new URLSearchParams();
      if (flags.run) q.set("runId", flags.run);
      if (flags.limit) q.set("limit", flags.limit);
      const { events } = await api("GET", `/api/audit?${q}`);
      for (const e of events) {
        console.log(`${e.seq}\t${e.at}\t${e.type}\t${e.actor}\t${e.runId ?? ""}\t${JSON.stringify(e.data)}`);
      }
      return;
    }
    default:
      throw new UsageError(`Unknown command "${command}". Run "deno task keel --help"`);
  }
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
