/**
 * @module
 * The policy tooling behind `/api/policy/*`: `explain` (which rule decides one
 * request, judged on the policy set in force and the installed manifests,
 * which say the effect's class and connector) and `simulate` (the decision
 * log replayed against a candidate set the caller sends as file texts).
 * `app.ts` routes to these; they validate their JSON body here. Explain
 * gives the request the context the Gateway would (the time now, or `at`),
 * so quiet hours and conditions on `context` count.
 */
import { Clock, Effect } from "effect";
import { InvalidInputError, NotFoundError } from "../errors/mod.ts";
import { EFFECT_CLASSES, type EffectClass } from "../manifest/mod.ts";
import {
  argsDepth,
  explainPolicy,
  limitName,
  Limits,
  manifestRateLimit,
  MAX_ARGS_DEPTH,
  Policy,
  policyContext,
  type PolicyExplanation,
  type PolicyRequest,
  policySetFromFiles,
  simulatePolicy,
  type SimulationResult,
} from "../policy/mod.ts";
import { PluginHost } from "../plugins/mod.ts";
import { Journal } from "../journal/mod.ts";

/** `POST /api/policy/explain`'s answer: the explanation plus what the installed manifests say. */
export interface ExplainAnswer extends PolicyExplanation {
  /** The connector and class the installed manifests give the effect, if any declares it. */
  readonly installed: { readonly plugin: string; readonly class: EffectClass } | null;
  /** Rate and budget limits the request would be counted against, with what the current window has used. */
  readonly limits: ReadonlyArray<
    { readonly name: string; readonly rule: string; readonly key: string; readonly used?: number }
  >;
  /** Things the operator should know: the Gateway would refuse earlier, a guessed value, a missing key. */
  readonly notes: ReadonlyArray<string>;
}

const optionalString = (b: Record<string, unknown>, key: string) =>
  b[key] === undefined || (typeof b[key] === "string" && b[key] !== "" && (b[key] as string).length <= 200)
    ? Effect.succeed(b[key] as string | undefined)
    : Effect.fail(new InvalidInputError({ message: `Field "${key}" must be a non-empty string` }));

/** Explain one hypothetical effect request against the policy set in force. */
export const explainRoute = Effect.fn("Http.policyExplain")(function* (b: Record<string, unknown>) {
  if (typeof b.effect !== "string" || b.effect === "" || b.effect.length > 200) {
    return yield* new InvalidInputError({ message: 'Field "effect" must be an effect name, e.g. "email.send"' });
  }
  const effect = b.effect;
  const plugin = yield* optionalString(b, "plugin");
  const agent = yield* optionalString(b, "agent");
  const workflow = yield* optionalString(b, "workflow");
  const cls = yield* optionalString(b, "class");
  if (cls !== undefined && !(EFFECT_CLASSES as ReadonlyArray<string>).includes(cls)) {
    return yield* new InvalidInputError({
      message: `Field "class" must be one of ${EFFECT_CLASSES.join(", ")}: got "${cls}"`,
    });
  }
  if (b.context !== undefined && (b.context === null || typeof b.context !== "object" || Array.isArray(b.context))) {
    return yield* new InvalidInputError({ message: 'Field "context" must be a JSON object' });
  }
  const at = yield* optionalString(b, "at");
  const atMs = at === undefined ? yield* Clock.currentTimeMillis : Date.parse(at);
  if (!Number.isFinite(atMs)) {
    return yield* new InvalidInputError({ message: `Field "at" must be a date and time, e.g. 2025-06-01T23:30:00Z` });
  }
  const args = b.args === undefined ? {} : b.args;
  const tooDeep = argsDepth(args, MAX_ARGS_DEPTH) > MAX_ARGS_DEPTH;

  const host = yield* PluginHost;
  const notes: string[] = [];
  const found = yield* Effect.result(host.findEffect(effect));
  let installed: ExplainAnswer["installed"] = null;
  if (found._tag === "Success") {
    const { plugin: connector, decl } = found.success;
    installed = { plugin: connector.name, class: decl.class };
    const problems = tooDeep ? [] : yield* host.validate(connector, `in:${decl.name}`, decl.input, args);
    if (problems.length) notes.push(`The Gateway would refuse these args before the policy: ${problems[0]}`);
    if (cls !== undefined && cls !== decl.class) {
      notes.push(`Effect "${effect}" is ${decl.class} in its manifest; explained as ${cls}, as asked`);
    }
    if (plugin !== undefined && plugin !== connector.name) {
      notes.push(
        `Effect "${effect}" comes from plugin "${connector.name}"; explained with plugin "${plugin}", as asked`,
      );
    }
  } else if (cls === undefined) {
    return yield* new NotFoundError({
      message: `No installed connector provides effect "${effect}": give "class" (and "plugin") to explain it anyway`,
      details: { effect },
    });
  } else {
    notes.push(`No installed connector provides effect "${effect}"; the Gateway would refuse it before the policy`);
  }
  if (agent !== undefined) {
    const a = yield* Effect.result(host.get(agent));
    if (a._tag === "Failure") notes.push(`No plugin named "${agent}" is installed`);
    else if (!a.success.manifest.uses.includes(effect)) {
      notes.push(`Agent "${agent}" does not list "${effect}" in its manifest's "uses"; the Gateway would refuse it`);
    }
  }

  if (tooDeep) {
    notes.push(
      `The Gateway would refuse these args before the policy: they nest deeper than ${MAX_ARGS_DEPTH} levels (a deny with rule fail-closed)`,
    );
  }
  const set = yield* Policy.use((p) => p.current);
  // The context the Gateway would give (the time, in the host's zone), with the caller's own facts on top.
  const request: PolicyRequest = {
    effect,
    effectClass: (cls ?? installed?.class) as EffectClass,
    plugin: plugin ?? installed?.plugin ?? "",
    agent,
    workflow,
    args,
    context: policyContext(atMs, (b.context ?? {}) as Record<string, unknown>),
  };
  for (const key of ["agent", "workflow"] as const) {
    if (request[key] !== undefined) continue;
    const skipped = set.rules.filter((r) => r.match[key] !== undefined).length;
    if (skipped) notes.push(`No ${key} given: ${skipped} rule(s) that match on ${key} cannot match`);
  }
  const explanation = explainPolicy(set, request);
  // What the rate and budget counters say now; the connector manifest's own rate limit counts too.
  const applied = [...explanation.decision.limits ?? []];
  if (found._tag === "Success" && explanation.decision.decision !== "deny") {
    const own = manifestRateLimit(found.success.plugin.name, found.success.decl);
    if (own) applied.push(own);
  }
  const counters = yield* Limits;
  const limits: Array<ExplainAnswer["limits"][number]> = [];
  for (const l of applied) {
    const used = yield* Effect.orElseSucceed(counters.used(l), () => undefined);
    limits.push({ name: limitName(l), rule: l.rule, key: l.key, ...(used === undefined ? {} : { used }) });
  }
  return { ...explanation, installed, limits, notes } satisfies ExplainAnswer;
});

/** Replay the decision log against a candidate policy set given as `{files: {name: yaml}}`. */
export const simulateRoute = Effect.fn("Http.policySimulate")(function* (b: Record<string, unknown>) {
  const files = b.files;
  if (files === null || typeof files !== "object" || Array.isArray(files)) {
    return yield* new InvalidInputError({
      message: 'Field "files" must map policy file names to their YAML text, e.g. {"default.yaml": "rules: []"}',
    });
  }
  const bad = Object.entries(files).find(([, text]) => typeof text !== "string");
  if (bad) return yield* new InvalidInputError({ message: `Policy file "${bad[0]}" must be given as text` });
  if (b.changedOnly !== undefined && typeof b.changedOnly !== "boolean") {
    return yield* new InvalidInputError({ message: 'Field "changedOnly" must be true or false' });
  }
  const candidate = yield* policySetFromFiles(files as Record<string, string>);
  const history = yield* Journal.use((j) => j.listDecisions({}));
  const result: SimulationResult = yield* simulatePolicy(candidate, history, { changedOnly: b.changedOnly === true });
  return result;
});
