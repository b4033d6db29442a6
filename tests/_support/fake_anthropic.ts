/**
 * @module
 * A loopback stand-in for Anthropic's Messages API, speaking its wire format
 * closely enough for the real `@anthropic-ai/sdk` client: `POST /v1/messages`
 * with the API key and `anthropic-version` headers, a JSON `message` answer,
 * or with `stream: true` the SSE events `message_start`,
 * `content_block_start`, `content_block_delta` (`text_delta`,
 * `input_json_delta`), `content_block_stop`, `message_delta`, `message_stop`;
 * errors as `{type: "error", error: {type, message}}` with `retry-after`
 * when asked. Tests script what it answers and read every request it saw.
 */

/** A content block the fake answers with. */
export type FakeBlock =
  | { readonly type: "text"; readonly text: string }
  | { readonly type: "tool_use"; readonly id: string; readonly name: string; readonly input: unknown };

/** What the fake does with one request. */
export type FakeAnthropicStep =
  | {
    readonly content: ReadonlyArray<FakeBlock>;
    readonly stopReason?: "end_turn" | "tool_use" | "max_tokens";
    readonly usage?: { readonly input: number; readonly output: number };
  }
  | { readonly status: number; readonly headers?: Record<string, string>; readonly message?: string }
  /** Never answer (until the client gives up or the fake closes). */
  | { readonly hang: true };

/** One request the fake received. */
export interface SeenRequest {
  readonly path: string;
  readonly headers: Record<string, string>;
  readonly body: any;
}

/** A running fake. */
export interface FakeAnthropic {
  /** Base URL for the SDK's `baseURL`. */
  readonly url: string;
  readonly requests: SeenRequest[];
  /** Answers for the next requests, in order; when none is left, `fallback` answers. */
  script(...steps: FakeAnthropicStep[]): void;
  /** The answer when no scripted step is left (default: a short text echoing the last user message). */
  fallback: (body: any) => FakeAnthropicStep;
  close(): Promise<void>;
}

const ERROR_TYPES: Record<number, string> = {
  400: "invalid_request_error",
  401: "authentication_error",
  403: "permission_error",
  404: "not_found_error",
  429: "rate_limit_error",
  500: "api_error",
  529: "overloaded_error",
};

const lastUserText = (body: any): string => {
  const last = [...(body.messages ?? [])].reverse().find((m: any) => m.role === "user");
  if (!last) return "";
  if (typeof last.content === "string") return last.content;
  return last.content.map((b: any) => (b.type === "text" ? b.text : b.type === "tool_result" ? b.content : ""))
    .join(" ");
};

/** Split a string into a few pieces, as a streaming API would send it. */
const chunks = (text: string, size = 7): string[] => {
  const out: string[] = [];
  for (let i = 0; i < text.length; i += size) out.push(text.slice(i, i + size));
  return out.length ? out : [""];
};

/** Start the fake on 127.0.0.1 with an OS-chosen port. */
export const startFakeAnthropic = (): Promise<FakeAnthropic> => {
  const requests: SeenRequest[] = [];
  const queue: FakeAnthropicStep[] = [];
  const hanging = new Set<() => void>();
  let counter = 0;
  const fake: FakeAnthropic = {
    url: "",
    requests,
    script: (...steps) => void queue.push(...steps),
    fallback: (body) => ({ content: [{ type: "text", text: `fake answer to: ${lastUserText(body).slice(0, 60)}` }] }),
    close: async () => {
      for (const h of hanging) h();
      await server.shutdown();
    },
  };
  const ready = Promise.withResolvers<FakeAnthropic>();
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen: ({ port }) => {
      (fake as { url: string }).url = `http://127.0.0.1:${port}`;
      ready.resolve(fake);
    },
  }, async (req) => {
    const url = new URL(req.url);
    const body = await req.json().catch(() => null);
    requests.push({ path: url.pathname, headers: Object.fromEntries(req.headers), body });
    const error = (status: number, message: string, headers: Record<string, string> = {}) =>
      Response.json({ type: "error", error: { type: ERROR_TYPES[status] ?? "api_error", message } }, {
        status,
        headers: { "request-id": `req_${++counter}`, ...headers },
      });
    if (req.method !== "POST" || url.pathname !== "/v1/messages") return error(404, `No route ${url.pathname}`);
    if (!req.headers.get("x-api-key") && !req.headers.get("authorization")) return error(401, "x-api-key missing");
    if (!req.headers.get("anthropic-version")) return error(400, "anthropic-version header is required");
    if (!body || typeof body.model !== "string" || !Array.isArray(body.messages) || !body.max_tokens) {
      return error(400, "model, messages and max_tokens are required");
    }
    const step = queue.shift() ?? fake.fallback(body);
    if ("hang" in step) {
      await new Promise<void>((resolve) => {
        const done = () => {
          hanging.delete(done);
          resolve();
        };
        // Released by close(): the client gives up on its own, as it would with a real stalled server.
        hanging.add(done);
      });
      return error(500, "hung request released");
    }
    if ("status" in step) return error(step.status, step.message ?? `scripted ${step.status}`, step.headers);
    const id = `msg_fake_${++counter}`;
    const inputTokens = step.usage?.input ?? Math.ceil(JSON.stringify(body.messages).length / 4);
    const outputTokens = step.usage?.output ??
      Math.ceil(step.content.map((b) => (b.type === "text" ? b.text : JSON.stringify(b.input))).join("").length / 4);
    const stopReason = step.stopReason ?? (step.content.some((b) => b.type === "tool_use") ? "tool_use" : "end_turn");
    const message = {
      id,
      type: "message",
      role: "assistant",
      model: body.model,
      content: step.content,
      stop_reason: stopReason,
      stop_sequence: null,
      usage: { input_tokens: inputTokens, output_tokens: outputTokens },
    };
    if (!body.stream) return Response.json(message, { headers: { "request-id": `req_${counter}` } });

    const events: Array<[string, unknown]> = [
      ["message_start", {
        type: "message_start",
        message: { ...message, content: [], stop_reason: null, usage: { input_tokens: inputTokens, output_tokens: 1 } },
      }],
      ["ping", { type: "ping" }],
    ];
    step.content.forEach((block, index) => {
      if (block.type === "text") {
        events.push(["content_block_start", {
          type: "content_block_start",
          index,
          content_block: { type: "text", text: "" },
        }]);
        for (const text of chunks(block.text)) {
          events.push(["content_block_delta", {
            type: "content_block_delta",
            index,
            delta: { type: "text_delta", text },
          }]);
        }
      } else {
        events.push(["content_block_start", {
          type: "content_block_start",
          index,
          content_block: { type: "tool_use", id: block.id, name: block.name, input: {} },
        }]);
        for (const partial_json of chunks(JSON.stringify(block.input), 5)) {
          events.push(["content_block_delta", {
            type: "content_block_delta",
            index,
            delta: { type: "input_json_delta", partial_json },
          }]);
        }
      }
      events.push(["content_block_stop", { type: "content_block_stop", index }]);
    });
    events.push(
      ["message_delta", {
        type: "message_delta",
        delta: { stop_reason: stopReason, stop_sequence: null },
        usage: { output_tokens: outputTokens },
      }],
      ["message_stop", { type: "message_stop" }],
    );
    const text = events.map(([event, data]) => `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`).join("");
    // Sent in small pieces, so the client's SSE parser has to join frames split across reads.
    const bytes = new TextEncoder().encode(text);
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        for (let i = 0; i < bytes.length; i += 97) controller.enqueue(bytes.slice(i, i + 97));
        controller.close();
      },
    });
    return new Response(stream, {
      headers: { "content-type": "text/event-stream", "cache-control": "no-cache", "request-id": `req_${counter}` },
    });
  });
  return ready.promise;
};
