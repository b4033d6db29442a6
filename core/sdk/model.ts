/**
 * @module
 * What a workflow may ask of Keel's model router, and what it gets back: the
 * wire shapes of `ctx.model.generate`, plus `runToolLoop`, the bounded tool
 * loop that feeds a model's tool calls to `ctx.effect` (so every tool call
 * that is an effect still goes through the Gateway) and their results back to
 * the model. Plain data, so it crosses the plugin boundary as JSON.
 */

/** One piece of a message. */
export type ModelPart =
  /** The workflow's own words. */
  | { readonly type: "text"; readonly text: string }
  /** Text from outside (an email, a web page): wrapped as data in the prompt, and it taints the answer. */
  | { readonly type: "untrusted"; readonly text: string; readonly source: string }
  /** A tool call the model made (in an assistant message). */
  | { readonly type: "tool_call"; readonly id: string; readonly name: string; readonly input: unknown }
  /** What a tool call returned; always treated as untrusted. */
  | {
    readonly type: "tool_result";
    readonly id: string;
    readonly name: string;
    readonly content: unknown;
    readonly isError?: boolean;
  };

/** One message of a conversation. `system` messages are joined into the system prompt. */
export interface ModelMessage {
  readonly role: "system" | "user" | "assistant";
  readonly content: string | ReadonlyArray<ModelPart>;
}

/** A tool the model may call: a JSON Schema for its input. */
export interface ToolSpec {
  readonly name: string;
  readonly description?: string;
  readonly inputSchema: Record<string, unknown>;
}

/** What `ctx.model.generate` takes. */
export interface ModelRequest {
  /** What the call is for (`route`, `classify`, `summarize`, `draft`, `plan` …): the router picks a model by it. */
  readonly purpose: string;
  readonly messages: ReadonlyArray<ModelMessage>;
  /**
   * Tools: an effect name the agent declares in `uses` (its input schema becomes
   * the tool's), or a spec of the workflow's own. Tool calls come back in the
   * result; Keel never runs them on its own.
   */
  readonly tools?: ReadonlyArray<string | ToolSpec>;
  /** JSON Schema the answer must match: the parsed answer is in `data`. */
  readonly schema?: Record<string, unknown>;
  /** Most tokens the answer may use (default from the route). */
  readonly maxTokens?: number;
  /** Sampling temperature; default 0 (deterministic calls are cached). */
  readonly temperature?: number;
}

/** A tool call the model asked for; `name` is the effect name for effect tools. */
export interface ToolCall {
  readonly id: string;
  readonly name: string;
  readonly input: unknown;
  /** True when `name` is an effect: run it with `ctx.effect`, through the Gateway. */
  readonly effect: boolean;
}

/** One try at one provider, as the router saw it. */
export interface ModelAttempt {
  readonly provider: string;
  readonly model: string;
  /** `ok`, or why the router moved on (`rate_limited`, `server`, `unavailable`, `timeout`, `denied` …). */
  readonly outcome: string;
  readonly status?: number;
  /** How long the router waited before the next try, from `retry-after` or its backoff. */
  readonly waitMs?: number;
  readonly message?: string;
}

/** What `ctx.model.generate` returns (and what the journal records). */
export interface ModelResult {
  readonly text: string;
  readonly toolCalls: ReadonlyArray<ToolCall>;
  /** The answer parsed and validated against `schema`, when one was given. */
  readonly data?: unknown;
  readonly stopReason: "end" | "tool_use" | "max_tokens";
  readonly provider: string;
  readonly model: string;
  readonly usage: { readonly inputTokens: number; readonly outputTokens: number };
  /** What this call cost in USD (0 when served from the cache or by a free provider). */
  readonly costUsd: number;
  readonly cached: boolean;
  /** True when the same request always gets the same answer (offline provider, or temperature 0 and cached). */
  readonly deterministic: boolean;
  /** True when the answer derives from untrusted input; policies can gate what follows. */
  readonly tainted: boolean;
  /** Where the taint came from (effect names, `untrusted:<source>`, `tool_result:<name>`). */
  readonly taintSources: ReadonlyArray<string>;
  readonly attempts: ReadonlyArray<ModelAttempt>;
  /** Anything the provider wants the reader to know (the offline provider says it is not a model). */
  readonly note?: string;
}

/** Bounds of a tool loop. */
export interface ToolLoopLimits {
  /** Model calls at most (default 8). */
  readonly maxSteps?: number;
  /** Input plus output tokens over all calls at most. */
  readonly maxTotalTokens?: number;
  /** USD over all calls at most. */
  readonly maxUsd?: number;
}

/** How a tool loop ended. */
export interface ToolLoopResult {
  readonly final: ModelResult;
  readonly steps: number;
  readonly usage: { readonly inputTokens: number; readonly outputTokens: number };
  readonly costUsd: number;
  readonly tainted: boolean;
  /** `end` when the model stopped asking for tools; otherwise the bound that stopped the loop. */
  readonly stopped: "end" | "max_steps" | "max_tokens" | "max_cost";
}

/** What the loop needs from the workflow context. */
export interface ToolLoopHost {
  generate(request: ModelRequest): Promise<ModelResult>;
  effect(name: string, args: unknown): Promise<unknown>;
  step<T>(name: string, fn: () => T | Promise<T>): Promise<T>;
}

/** Thrown by the host when the run must park; the loop never catches it. */
const isSuspension = (error: unknown) => error instanceof Error && error.name === "RunSuspended";

/**
 * Call the model, run the tool calls it asks for, give it the results, and
 * repeat until it answers without tools or a bound is hit. Effect tools go
 * through `ctx.effect` (policy, journal, audit); other tools go to
 * `handlers`, each as a checkpointed step. A tool's failure (a policy denial,
 * say) goes back to the model as an error result; a parked run stays parked.
 */
export const runToolLoop = async (
  host: ToolLoopHost,
  request: ModelRequest,
  limits: ToolLoopLimits = {},
  handlers: Readonly<Record<string, (input: unknown) => unknown>> = {},
): Promise<ToolLoopResult> => {
  const maxSteps = limits.maxSteps ?? 8;
  const messages: ModelMessage[] = [...request.messages];
  const usage = { inputTokens: 0, outputTokens: 0 };
  let costUsd = 0;
  let tainted = false;
  for (let steps = 1;; steps++) {
    const result = await host.generate({ ...request, messages });
    usage.inputTokens += result.usage.inputTokens;
    usage.outputTokens += result.usage.outputTokens;
    costUsd += result.costUsd;
    tainted ||= result.tainted;
    const done = (stopped: ToolLoopResult["stopped"]): ToolLoopResult => ({
      final: result,
      steps,
      usage: { ...usage },
      costUsd,
      tainted,
      stopped,
    });
    if (result.toolCalls.length === 0) return done("end");
    if (steps >= maxSteps) return done("max_steps");
    if (limits.maxTotalTokens !== undefined && usage.inputTokens + usage.outputTokens >= limits.maxTotalTokens) {
      return done("max_tokens");
    }
    if (limits.maxUsd !== undefined && costUsd >= limits.maxUsd) return done("max_cost");
    const results: ModelPart[] = [];
    for (const call of result.toolCalls) {
      try {
        const content = call.effect
          ? await host.effect(call.name, call.input)
          : handlers[call.name]
          ? await host.step(`tool:${call.name}`, () => handlers[call.name](call.input))
          : { error: `No handler for tool "${call.name}"` };
        results.push({ type: "tool_result", id: call.id, name: call.name, content: content ?? null });
      } catch (error) {
        if (isSuspension(error)) throw error;
        const message = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
        results.push({ type: "tool_result", id: call.id, name: call.name, content: message, isError: true });
      }
    }
    const calls: ModelPart[] = result.toolCalls.map((c) => ({
      type: "tool_call",
      id: c.id,
      name: c.name,
      input: c.input,
    }));
    if (result.text) calls.unshift({ type: "text", text: result.text });
    messages.push({ role: "assistant", content: calls }, { role: "user", content: results });
  }
};
