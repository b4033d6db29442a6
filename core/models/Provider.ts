/**
 * @module
 * The contract between the router and a model provider. The router renders a
 * workflow's request once (system prompt, messages with untrusted content
 * wrapped, tools with provider-safe names) into a `ProviderCall`; a provider
 * turns it into its own wire format, calls, and answers a `ProviderAnswer`,
 * or throws a `ProviderFailure` whose `kind` tells the router whether to
 * retry (429, 5xx), fall back (down, timeout) or both. Providers are the edge
 * where an SDK's promises meet Keel, so they are plain async.
 */

/** One part of a rendered message: untrusted text is already wrapped in its delimited block. */
export type RenderedPart =
  | { readonly type: "text"; readonly text: string }
  | { readonly type: "tool_call"; readonly id: string; readonly name: string; readonly input: unknown }
  | {
    readonly type: "tool_result";
    readonly id: string;
    readonly name: string;
    readonly text: string;
    readonly isError: boolean;
  };

/** A rendered message; consecutive messages of one role are already merged. */
export interface RenderedMessage {
  readonly role: "user" | "assistant";
  readonly parts: ReadonlyArray<RenderedPart>;
}

/** A tool as providers see it: a name matching `^[a-zA-Z0-9_-]{1,64}$` and an object input schema. */
export interface ProviderTool {
  readonly name: string;
  readonly description: string;
  readonly inputSchema: Record<string, unknown>;
}

/** Everything one provider call needs. */
export interface ProviderCall {
  readonly model: string;
  readonly purpose: string;
  readonly system: string;
  readonly messages: ReadonlyArray<RenderedMessage>;
  readonly tools: ReadonlyArray<ProviderTool>;
  /** JSON Schema of a structured answer; the provider asks for it its own way. */
  readonly schema?: Record<string, unknown>;
  readonly maxTokens: number;
  readonly temperature: number;
}

/** What a provider answered. */
export interface ProviderAnswer {
  readonly text: string;
  readonly toolCalls: ReadonlyArray<{ readonly id: string; readonly name: string; readonly input: unknown }>;
  /** The structured answer, when the provider returned one apart from the text (a forced tool call). */
  readonly structured?: unknown;
  readonly stopReason: "end" | "tool_use" | "max_tokens";
  readonly usage: { readonly inputTokens: number; readonly outputTokens: number };
  /** The model that answered, as the provider names it. */
  readonly model: string;
  readonly note?: string;
}

/** Why a provider call failed, and so what the router does next. */
export type FailureKind =
  /** Connection refused or reset: the provider is down; fall back. */
  | "unavailable"
  /** No answer in time; fall back. */
  | "timeout"
  /** 429: retry after `retryAfterMs` or a backoff, then fall back. */
  | "rate_limited"
  /** 5xx: retry with backoff, then fall back. */
  | "server"
  /** Any other refusal (400, 401, 404 …): retrying will not help; fall back. */
  | "rejected";

/** A failed provider call. */
export class ProviderFailure extends Error {
  /** Build a failure; `retryAfterMs` comes from the provider's `retry-after` header. */
  constructor(
    readonly kind: FailureKind,
    message: string,
    readonly status?: number,
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = "ProviderFailure";
  }
}

/** A configured provider. */
export interface ModelProvider {
  /** The name routes refer to (`local`, `claude`, `offline` …). */
  readonly name: string;
  readonly type: "anthropic" | "ollama" | "offline";
  /** Calls cost money: policy and budget apply, and a price must be known. */
  readonly paid: boolean;
  /** Per-call time limit in ms. */
  readonly timeoutMs: number;
  generate(call: ProviderCall, signal: AbortSignal): Promise<ProviderAnswer>;
}

/** Parse `retry-after` (seconds or an HTTP date) or `retry-after-ms` into milliseconds. */
export const retryAfterMs = (headers: Headers | undefined, nowMs: number): number | undefined => {
  if (!headers) return undefined;
  const ms = headers.get("retry-after-ms");
  if (ms !== null && /^\d+(\.\d+)?$/.test(ms.trim())) return Math.ceil(Number(ms));
  const raw = headers.get("retry-after");
  if (raw === null) return undefined;
  if (/^\d+(\.\d+)?$/.test(raw.trim())) return Math.ceil(Number(raw) * 1000);
  const at = Date.parse(raw);
  return Number.isNaN(at) ? undefined : Math.max(0, at - nowMs);
};

/** The failure kind for an HTTP status. */
export const kindOfStatus = (status: number): FailureKind =>
  status === 429 ? "rate_limited" : status >= 500 ? "server" : status === 408 ? "timeout" : "rejected";

/** Most bytes Keel reads of one provider answer, on the wire (a whole answer is journaled in at most 60 KB). */
export const MAX_ANSWER_WIRE_BYTES = 8 * 1024 * 1024;

/**
 * `fetch`, with the answer's body cut off with an error past `limit` bytes: a provider (or whatever answers at its
 * address) that streams without end must not fill the host's memory before the call's timeout.
 */
export const cappedFetch = (limit = MAX_ANSWER_WIRE_BYTES) => async (input: RequestInfo | URL, init?: RequestInit) => {
  const res = await fetch(input, init);
  if (!res.body) return res;
  let read = 0;
  const counted = res.body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        read += chunk.length;
        if (read > limit) controller.error(new Error(`the answer is over ${limit} bytes; Keel stops reading it`));
        else controller.enqueue(chunk);
      },
    }),
  );
  return new Response(counted, { status: res.status, statusText: res.statusText, headers: res.headers });
};
