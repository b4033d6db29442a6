/**
 * @module
 * The model router: one `generate` for every model call a workflow makes.
 * It picks the route for the request's purpose (`models.json`), renders the
 * prompt once (untrusted content wrapped, taint noted), and tries the
 * route's targets in order:
 *
 * - a deterministic call (temperature 0, or the offline provider) is looked
 *   up in the content-addressed response cache first;
 * - a paid provider is an effect like any other: the policy decides
 *   (`effect: model.generate`, `plugin: model:<provider>`, with `args` and
 *   `context` for `when` conditions), and the call's worst case (estimated
 *   input plus `maxTokens` of output, at the model's price) is counted
 *   against the rule's budgets before the call, atomically, so concurrent
 *   calls never spend past a budget, and settled to the reported usage
 *   after it (`Limits.settle`: the unused part is given back once; a call
 *   the provider refused gives back its budgets, one that may have been
 *   billed stays counted); a model with no known price is refused;
 * - 429 and 5xx are retried with backoff, honouring `retry-after`, a bounded
 *   number of times; then, like a refused connection or a timeout, the
 *   router falls back to the next target.
 *
 * A `schema` answer is validated; an invalid one is retried once with the
 * validation errors, then fails with `ModelOutputError`. Tool calls come back
 * to the workflow: the router never runs a tool, so an effect tool still goes
 * through the Gateway when the workflow calls it. Journaling is the
 * orchestrator's: the router is called only for calls the journal has not
 * answered yet.
 */
import { Clock, Context, Effect, Layer, Option } from "effect";
import {
  InvalidInputError,
  type ModelConfigError,
  ModelOutputError,
  ModelUnavailableError,
  PolicyDeniedError,
  type StoreError,
} from "../errors/mod.ts";
import { KeelConfig } from "../config/mod.ts";
import { Kv } from "../store/mod.ts";
import { makeSchemaChecker, type PreparedSchema, type SchemaChecker } from "../manifest/mod.ts";
import { Limits, Policy, policyContext, type PolicyDecision, type Reservation } from "../policy/mod.ts";
import type { ModelAttempt, ModelRequest, ModelResult } from "../sdk/mod.ts";
import { anthropicProvider } from "./AnthropicProvider.ts";
import { ollamaProvider } from "./OllamaProvider.ts";
import { offlineProvider } from "./OfflineProvider.ts";
import { loadModelsConfig, type ModelsConfig, OFFLINE, purposeMatches } from "./ModelsConfig.ts";
import { type ModelProvider, type ProviderAnswer, type ProviderCall, ProviderFailure } from "./Provider.ts";
import { costMicroUsd, estimateTokens, type Price, priceOf, toUsd } from "./Pricing.ts";
import { cacheKey, kvResponseCache, type ResponseCache } from "./ResponseCache.ts";
import { providerTools, renderPrompt, type TaintSnippet, toolNameOf } from "./Untrusted.ts";
import { checkModelRequest } from "./checkModelRequest.ts";

/** A tool the orchestrator resolved: an effect (schema from its declaration) or the workflow's own. */
export interface ResolvedTool {
  readonly name: string;
  readonly description?: string;
  readonly inputSchema: Record<string, unknown>;
  readonly effect: boolean;
}

/** Who is calling, from where, with what the run has seen. */
export interface ModelCallContext {
  readonly runId: string;
  readonly seq: number;
  readonly agent: string;
  readonly workflow: string;
  readonly tools: ReadonlyArray<ResolvedTool>;
  /** Connector output (and tainted answers) earlier in the run: text containing one is untrusted. */
  readonly snippets: ReadonlyArray<TaintSnippet>;
}

/** Everything `generate` can fail with. */
export type ModelError = InvalidInputError | PolicyDeniedError | ModelUnavailableError | ModelOutputError | StoreError;

/** The effect name paid model calls are decided under. */
export const MODEL_EFFECT = "model.generate";

/** The model router service. */
export class ModelRouter extends Context.Service<ModelRouter, {
  generate(request: ModelRequest, context: ModelCallContext): Effect.Effect<ModelResult, ModelError>;
  /** The configuration in force. */
  readonly config: ModelsConfig;
}>()("keel/models/ModelRouter") {
  /** The router over `<policiesDir>/models.json`, the policy engine and its limits, and Deno KV for the cache. */
  static readonly layer: Layer.Layer<ModelRouter, ModelConfigError, KeelConfig | Kv | Policy | Limits> = Layer
    .effect(
      ModelRouter,
      Effect.gen(function* () {
        const { policiesDir } = yield* KeelConfig;
        const config = yield* loadModelsConfig(policiesDir);
        const { kv } = yield* Kv;
        const checker = yield* makeSchemaChecker();
        return makeRouter(config, kvResponseCache(kv), yield* Policy, yield* Limits, checker);
      }),
    );
}

/** A denial of one paid target, kept so an all-denied route fails as a denial. */
interface Denied {
  readonly denied: PolicyDeniedError;
}

/** One answer, and what it cost. */
interface Answered {
  readonly answer: ProviderAnswer;
  readonly cached: boolean;
  readonly costMicro: number;
}

const makeRouter = (
  config: ModelsConfig,
  cache: ResponseCache,
  policy: Context.Service.Shape<typeof Policy>,
  limits: Context.Service.Shape<typeof Limits>,
  checker: SchemaChecker,
) => {
  const providers = new Map<string, ModelProvider>([[OFFLINE, offlineProvider()]]);
  for (const [name, p] of Object.entries(config.providers)) {
    if (p.type === "ollama") {
      providers.set(name, ollamaProvider({ name, host: p.host, stream: p.stream, timeoutMs: p.timeoutMs }));
    } else {
      // The key is read once, from the variable the operator named; it never reaches a plugin.
      const apiKey = Deno.env.get(p.apiKeyEnv) ?? "";
      providers.set(
        name,
        anthropicProvider({ name, baseURL: p.baseURL, apiKey, stream: p.stream, timeoutMs: p.timeoutMs }),
      );
    }
  }

  /** One provider call, bounded by the provider's time limit. */
  const callOnce = (provider: ModelProvider, call: ProviderCall) =>
    Effect.tryPromise({
      try: (signal) => provider.generate(call, signal),
      catch: (e) =>
        e instanceof ProviderFailure ? e : new ProviderFailure("unavailable", String((e as Error)?.message ?? e)),
    }).pipe(
      Effect.timeoutOption(provider.timeoutMs),
      Effect.flatMap(Option.match({
        onNone: () =>
          Effect.fail(
            new ProviderFailure("timeout", `No answer from "${provider.name}" within ${provider.timeoutMs} ms`),
          ),
        onSome: Effect.succeed,
      })),
    );

  /** Policy and budget for a paid call: the decision whose limits to charge, or a denial. */
  /** The policy's word on a paid call (deny and approve both refuse); limits are counted by `authorize`. */
  const permitted = Effect.fn("ModelRouter.permitted")(function* (
    provider: ModelProvider,
    call: ProviderCall,
    ctx: ModelCallContext,
    tainted: boolean,
  ) {
    const now = yield* Clock.currentTimeMillis;
    const facts = {
      runId: ctx.runId,
      seq: ctx.seq,
      tainted,
      purpose: call.purpose,
      provider: provider.name,
      model: call.model,
    };
    const decision: PolicyDecision = yield* policy.decide({
      effect: MODEL_EFFECT,
      effectClass: "read",
      plugin: `model:${provider.name}`,
      agent: ctx.agent,
      workflow: ctx.workflow,
      args: { purpose: call.purpose, provider: provider.name, model: call.model, maxTokens: call.maxTokens },
      context: policyContext(now, facts),
    });
    const deny = (why: string, details: Record<string, unknown> = {}) =>
      Effect.succeed<Denied>({
        denied: new PolicyDeniedError({
          message: `Policy denied model call to "${provider.name}" (${call.model}): ${why}`,
          details: { rule: decision.rule, policyHash: decision.policyHash, provider: provider.name, ...details },
        }),
      });
    if (decision.decision === "deny") return yield* deny(`${decision.reason} (rule "${decision.rule}")`);
    if (decision.decision === "approve") {
      // A model call cannot park the run for a human yet: fail closed rather than call unapproved.
      return yield* deny(`rule "${decision.rule}" asks for approval, which model calls do not support yet`);
    }
    return { decision, deny };
  });

  const authorize = Effect.fn("ModelRouter.authorize")(function* (
    provider: ModelProvider,
    call: ProviderCall,
    price: Price,
    ctx: ModelCallContext,
    tainted: boolean,
  ) {
    const allowed = yield* permitted(provider, call, ctx, tainted);
    if ("denied" in allowed) return allowed;
    const { decision, deny } = allowed;
    const inputTokens = estimateTokens(call.system + JSON.stringify(call.messages) + JSON.stringify(call.tools));
    const worstTokens = inputTokens + call.maxTokens;
    const worstUsd = toUsd(costMicroUsd(price, { inputTokens, outputTokens: call.maxTokens }));
    // The worst case is counted before the call, atomically with every other caller, so concurrent
    // calls never spend past a budget. The hold lets `settle` move it to the real usage once, after the answer.
    const taken = yield* limits.consume(decision, { calls: 1, usd: worstUsd, tokens: worstTokens }, {
      hold: `model:${ctx.runId}:${ctx.seq}`,
    });
    if (!taken.ok) return yield* deny(taken.reason, { limit: taken.name, used: taken.used, worstCaseUsd: worstUsd });
    return { reservation: taken.reservation! };
  });

  /** Try one target: cache, then policy and budget, then the provider with retries. */
  const tryTarget = Effect.fn("ModelRouter.tryTarget")(function* (
    provider: ModelProvider,
    call: ProviderCall,
    ctx: ModelCallContext,
    tainted: boolean,
    attempts: ModelAttempt[],
  ) {
    const note = (a: Omit<ModelAttempt, "provider" | "model">) =>
      attempts.push({ provider: provider.name, model: call.model, ...a });
    const deterministic = provider.type === "offline" || call.temperature === 0;
    const key = config.cache.enabled && deterministic ? yield* cacheKey(provider.name, call) : undefined;
    if (key) {
      const hit = yield* cache.get(key);
      // A paid answer is served from the cache only to a caller the policy would let call for it (it costs nothing,
      // so no limit counts it).
      const refused = hit && provider.paid ? yield* permitted(provider, call, ctx, tainted) : undefined;
      if (refused && "denied" in refused) {
        note({ outcome: "denied", message: refused.denied.message });
        return refused;
      }
      if (hit) {
        note({ outcome: "cached" });
        return { answer: hit, cached: true, costMicro: 0 } satisfies Answered;
      }
    }
    let charged: { reservation: Reservation } | undefined;
    let price: Price | undefined;
    if (provider.paid) {
      price = priceOf(config.pricing, call.model);
      if (!price) {
        const denied = new PolicyDeniedError({
          message:
            `Model "${call.model}" of paid provider "${provider.name}" has no price: add it to "pricing" in models.json`,
          details: { provider: provider.name, model: call.model },
        });
        note({ outcome: "denied", message: denied.message });
        return { denied } satisfies Denied;
      }
      const auth = yield* authorize(provider, call, price, ctx, tainted);
      if ("denied" in auth) {
        note({ outcome: "denied", message: auth.denied.message });
        return auth;
      }
      charged = auth;
    }
    const { maxAttempts, baseDelayMs, maxDelayMs } = config.retry;
    /** Whether a failed attempt may have cost money (a timeout, a connection lost mid-answer). */
    let billable = false;
    for (let n = 1; n <= maxAttempts; n++) {
      const outcome = yield* Effect.result(callOnce(provider, call));
      if (outcome._tag === "Success") {
        const answer = outcome.success;
        note({ outcome: "ok" });
        let costMicro = 0;
        if (charged && price) {
          costMicro = costMicroUsd(price, answer.usage);
          // The worst case becomes the real cost: the unused part is given back, a part the estimate missed added.
          yield* limits.settle(charged.reservation, {
            calls: 1,
            usd: toUsd(costMicro),
            tokens: answer.usage.inputTokens + answer.usage.outputTokens,
          });
        }
        if (key) yield* cache.put(key, answer, config.cache.ttlHours * 3600_000);
        return { answer, cached: false, costMicro } satisfies Answered;
      }
      const f = outcome.failure;
      // Only an error status before any answer says the provider produced (and billed) nothing for this attempt.
      if (f.status === undefined || f.kind === "timeout") billable = true;
      const retriable = f.kind === "rate_limited" || f.kind === "server";
      if (!retriable || n === maxAttempts) {
        note({ outcome: f.kind, status: f.status, message: f.message });
        break;
      }
      const waitMs = f.retryAfterMs ?? Math.min(maxDelayMs, baseDelayMs * 2 ** (n - 1));
      if (waitMs > maxDelayMs) {
        note({
          outcome: f.kind,
          status: f.status,
          message: `${f.message}; retry-after ${waitMs} ms is longer than ${maxDelayMs} ms, moving on`,
        });
        break;
      }
      note({ outcome: f.kind, status: f.status, waitMs, message: f.message });
      yield* Effect.sleep(waitMs);
    }
    // The provider refused every attempt: the budgets get the worst case back, the rate keeps the call. One that
    // may have been billed stays counted at its worst case (settled as it is, so its hold goes).
    if (charged) yield* limits.settle(charged.reservation, billable ? charged.reservation.usage : { calls: 1 });
    return undefined;
  });

  const generate = Effect.fn("ModelRouter.generate")(function* (request: ModelRequest, ctx: ModelCallContext) {
    const problems = checkModelRequest(request);
    if (problems.length) {
      return yield* new InvalidInputError({
        message: `Model request is invalid: ${problems[0]}`,
        details: { errors: problems },
      });
    }
    let validator: PreparedSchema | undefined;
    if (request.schema) {
      const schema = request.schema;
      // The agent wrote the schema and the model wrote the answer: a pattern in it is checked off the main thread.
      validator = yield* Effect.try({
        try: () => checker.prepare(schema),
        catch: (e) => new InvalidInputError({ message: `Model request "schema" is not a JSON Schema: ${String(e)}` }),
      });
    }
    const { tools, back } = providerTools(ctx.tools);
    if (back.size !== ctx.tools.length) {
      return yield* new InvalidInputError({
        message: `Model request names tools that clash once made safe for providers: ${
          ctx.tools.map((t) => t.name).join(", ")
        }`,
      });
    }
    const effectTools = new Set(ctx.tools.filter((t) => t.effect).map((t) => t.name));
    const prompt = renderPrompt(request.messages, ctx.snippets, toolNameOf);
    const route = config.routes.find((r) => r.purpose.some((p) => purposeMatches(p, request.purpose)))!;
    const temperature = request.temperature ?? 0;
    const maxTokens = request.maxTokens ?? route.maxTokens ?? config.maxTokens;
    const attempts: ModelAttempt[] = [];
    const denials: PolicyDeniedError[] = [];

    for (const target of route.use) {
      const provider = providers.get(target.provider)!;
      const call: ProviderCall = {
        model: target.model,
        purpose: request.purpose,
        system: prompt.system,
        messages: prompt.messages,
        tools,
        ...(request.schema ? { schema: request.schema } : {}),
        maxTokens,
        temperature,
      };
      const first = yield* tryTarget(provider, call, ctx, prompt.tainted, attempts);
      if (first === undefined) continue;
      if ("denied" in first) {
        denials.push(first.denied);
        continue;
      }
      let got: Answered = first;
      let usage = got.answer.usage;
      let costMicro = got.costMicro;
      let data: unknown = undefined;
      if (validator) {
        let checked = yield* validate(validator, got.answer);
        if (!checked.ok) {
          // One retry, telling the model what was wrong.
          const retry: ProviderCall = {
            ...call,
            messages: [
              ...call.messages,
              { role: "assistant", parts: [{ type: "text", text: got.answer.text || "(no text)" }] },
              {
                role: "user",
                parts: [{
                  type: "text",
                  text: `Your answer does not match the required JSON Schema: ${
                    checked.errors.join("; ")
                  }. Answer again with JSON that matches the schema exactly.`,
                }],
              },
            ],
          };
          const second = yield* tryTarget(provider, retry, ctx, prompt.tainted, attempts);
          if (second === undefined || "denied" in second) continue;
          got = second;
          usage = {
            inputTokens: usage.inputTokens + second.answer.usage.inputTokens,
            outputTokens: usage.outputTokens + second.answer.usage.outputTokens,
          };
          costMicro += second.costMicro;
          checked = yield* validate(validator, second.answer);
          if (!checked.ok) {
            return yield* new ModelOutputError({
              message:
                `Model "${call.model}" of "${provider.name}" answered "${request.purpose}" twice without matching the schema: ${
                  checked.errors[0]
                }`,
              details: { errors: checked.errors, provider: provider.name, model: call.model, attempts },
            });
          }
        }
        data = checked.value;
      }
      const answer = got.answer;
      const result: ModelResult = {
        text: answer.text,
        toolCalls: answer.toolCalls.map((c) => {
          const name = back.get(c.name) ?? c.name;
          return { id: c.id, name, input: c.input ?? {}, effect: effectTools.has(name) };
        }),
        ...(validator ? { data } : {}),
        stopReason: answer.stopReason,
        provider: provider.name,
        model: answer.model,
        usage,
        costUsd: toUsd(costMicro),
        cached: got.cached,
        deterministic: provider.type === "offline" || temperature === 0,
        tainted: prompt.tainted,
        taintSources: prompt.taintSources,
        attempts,
        ...(answer.note ? { note: answer.note } : {}),
      };
      return result;
    }
    if (denials.length && denials.length === new Set(attempts.map((a) => a.provider)).size) {
      return yield* denials[0];
    }
    return yield* new ModelUnavailableError({
      message: `No model could answer "${request.purpose}": ${
        attempts.map((a) => `${a.provider} ${a.outcome}${a.status ? ` ${a.status}` : ""}`).join(", ")
      }`,
      details: { purpose: request.purpose, attempts },
    });
  });

  return ModelRouter.of({ generate, config });
};

/** Parse and validate a structured answer: the provider's structured value, else the text as JSON. */
const validate = (
  validator: PreparedSchema,
  answer: ProviderAnswer,
): Effect.Effect<{ ok: true; value: unknown } | { ok: false; errors: string[] }> => {
  let value = answer.structured;
  if (value === undefined) {
    // A code fence around the JSON is dropped. Without a regular expression that backtracks: `\s*```$` takes
    // seconds on a long run of spaces, and the model's text is not Keel's to trust.
    let raw = answer.text.trim();
    const fence = /^```(?:json)?/.exec(raw);
    if (fence) raw = raw.slice(fence[0].length).trimStart();
    if (raw.endsWith("```")) raw = raw.slice(0, -3).trimEnd();
    try {
      value = JSON.parse(raw);
    } catch {
      return Effect.succeed({ ok: false, errors: ["the answer is not JSON"] });
    }
  }
  return Effect.map(validator.check(value), (errors) => errors.length ? { ok: false, errors } : { ok: true, value });
};
