/**
 * @module
 * What a plugin's own test needs (and what `keel plugin new` scaffolds
 * against): a throw-away Keel with real Deno KV and real Workers
 * (`startTestKeel`), an install over the real API with an explicit grant,
 * a connector's effect called in its real Worker, and a workflow run through
 * the real orchestrator and Gateway.
 */
import { Cause, Effect } from "effect";
import { PluginHost } from "../../core/plugins/mod.ts";
import { startTestKeel, type TestKeel } from "./keel.ts";

export { startTestKeel, type TestKeel };

/** A failed call, with the tagged error Keel reported and, when a plugin failed, the plugin's own tag. */
export class CallError extends Error {
  /** The plugin's own tag (`InvalidInput`, `Unavailable` …), when Keel reports a `PluginFailedError`. */
  readonly pluginTag?: string;

  /** Keep Keel's error tag and details; the message reads `Tag (PluginTag): message`. */
  constructor(readonly tag: string, message: string, readonly details?: unknown) {
    const inner = (details as { tag?: unknown } | undefined)?.tag;
    const pluginTag = tag === "PluginFailedError" && typeof inner === "string" ? inner : undefined;
    super(`${tag}${pluginTag ? ` (${pluginTag})` : ""}: ${message}`);
    this.name = "CallError";
    if (pluginTag) this.pluginTag = pluginTag;
  }
}

/** Install the plugin folder at `path` with `grant` (default: nothing) and `config`; fails unless Keel answers 201. */
export const installPlugin = async (
  keel: TestKeel,
  path: string,
  options: { grant?: unknown; config?: unknown } = {},
): Promise<any> => {
  const res = await keel.api("POST", "/api/plugins", { path, grant: options.grant ?? {}, config: options.config });
  if (res.status !== 201) {
    const e = res.body?.error ?? {};
    throw new CallError(e.tag ?? `HTTP ${res.status}`, e.message ?? JSON.stringify(res.body), e.details);
  }
  return res.body.plugin;
};

/**
 * Call the installed connector's `effect` in its real Worker, with `args`
 * checked against the effect's input schema first, as the Gateway would.
 * The policy gate and the journal are left out: to test those, run a
 * workflow that asks for the effect (`runWorkflow`).
 */
export const callEffect = async (
  keel: TestKeel,
  effect: string,
  args: unknown,
  idempotencyKey: string = crypto.randomUUID(),
): Promise<any> => {
  const exit = await keel.keel.runtime.runPromiseExit(Effect.gen(function* () {
    const host = yield* PluginHost;
    const { plugin, decl } = yield* host.findEffect(effect);
    const problems = yield* host.validate(plugin, `test-kit:${effect}:input`, decl.input, args);
    if (problems.length) {
      return yield* Effect.fail({ _tag: "InvalidInputError", message: `Args of "${effect}": ${problems[0]}` });
    }
    return yield* host.callEffect(plugin, effect, args, idempotencyKey);
  }));
  if (exit._tag === "Success") return exit.value;
  const error = Cause.squash(exit.cause) as { _tag?: string; message?: string; details?: unknown };
  throw new CallError(error?._tag ?? "Error", error?.message ?? String(error), error?.details);
};

/** Start a run of `workflow` and wait for it (up to `waitSeconds`); returns the run as the API shows it. */
export const runWorkflow = async (keel: TestKeel, workflow: string, input: unknown, waitSeconds = 60): Promise<any> => {
  const res = await keel.api("POST", `/api/workflows/${workflow}/runs?wait=${waitSeconds}`, { input });
  if (res.status !== 202) {
    const e = res.body?.error ?? {};
    throw new CallError(e.tag ?? `HTTP ${res.status}`, e.message ?? JSON.stringify(res.body), e.details);
  }
  return res.body;
};
