/**
 * @module
 * A loopback stand-in for Ollama's chat API, speaking its wire format closely
 * enough for the real `ollama` client: `POST /api/chat`, answering one JSON
 * object, or with `stream: true` one JSON object per line (NDJSON), the last
 * with `done: true`, `done_reason` and the token counts
 * (`prompt_eval_count`, `eval_count`); tool calls as `message.tool_calls`;
 * errors as `{error}` with an HTTP status. Tests script what it answers and
 * read every request it saw.
 */

/** What the fake does with one request. */
export type FakeOllamaStep =
  | {
    readonly content: string;
    readonly toolCalls?: ReadonlyArray<{ readonly name: string; readonly arguments: Record<string, unknown> }>;
    readonly doneReason?: "stop" | "length";
    readonly usage?: { readonly prompt: number; readonly eval: number };
  }
  | { readonly status: number; readonly headers?: Record<string, string>; readonly message?: string };

/** A running fake. */
export interface FakeOllama {
  /** Host URL for the client's `host`. */
  readonly url: string;
  readonly requests: Array<{ path: string; body: any }>;
  script(...steps: FakeOllamaStep[]): void;
  /** The answer when no scripted step is left (default: echo the last user message). */
  fallback: (body: any) => FakeOllamaStep;
  close(): Promise<void>;
}

/** Start the fake on 127.0.0.1 with an OS-chosen port. */
export const startFakeOllama = (): Promise<FakeOllama> => {
  const requests: Array<{ path: string; body: any }> = [];
  const queue: FakeOllamaStep[] = [];
  const fake: FakeOllama = {
    url: "",
    requests,
    script: (...steps) => void queue.push(...steps),
    fallback: (body) => {
      const last = [...(body.messages ?? [])].reverse().find((m: any) => m.role === "user");
      return { content: `local answer to: ${String(last?.content ?? "").slice(0, 60)}` };
    },
    close: () => server.shutdown(),
  };
  const ready = Promise.withResolvers<FakeOllama>();
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
    requests.push({ path: url.pathname, body });
    if (req.method !== "POST" || url.pathname !== "/api/chat") {
      return Response.json({ error: `no route ${url.pathname}` }, { status: 404 });
    }
    if (!body || typeof body.model !== "string" || !Array.isArray(body.messages)) {
      return Response.json({ error: "model and messages are required" }, { status: 400 });
    }
    const step = queue.shift() ?? fake.fallback(body);
    if ("status" in step) {
      return Response.json({ error: step.message ?? `scripted ${step.status}` }, {
        status: step.status,
        headers: step.headers,
      });
    }
    const created_at = "2025-01-01T00:00:00Z";
    const toolCalls = (step.toolCalls ?? []).map((t) => ({ function: { name: t.name, arguments: t.arguments } }));
    const final = {
      model: body.model,
      created_at,
      done: true,
      done_reason: step.doneReason ?? "stop",
      total_duration: 1000,
      load_duration: 10,
      prompt_eval_count: step.usage?.prompt ?? Math.ceil(JSON.stringify(body.messages).length / 4),
      prompt_eval_duration: 100,
      eval_count: step.usage?.eval ?? Math.ceil(step.content.length / 4),
      eval_duration: 100,
    };
    if (body.stream === false) {
      return Response.json({
        ...final,
        message: { role: "assistant", content: step.content, ...(toolCalls.length ? { tool_calls: toolCalls } : {}) },
      });
    }
    const lines: unknown[] = [];
    for (let i = 0; i < step.content.length; i += 6) {
      lines.push({
        model: body.model,
        created_at,
        message: { role: "assistant", content: step.content.slice(i, i + 6) },
        done: false,
      });
    }
    if (toolCalls.length) {
      lines.push({
        model: body.model,
        created_at,
        message: { role: "assistant", content: "", tool_calls: toolCalls },
        done: false,
      });
    }
    lines.push({ ...final, message: { role: "assistant", content: "" } });
    const bytes = new TextEncoder().encode(lines.map((l) => JSON.stringify(l)).join("\n") + "\n");
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        // Odd-sized pieces: lines arrive split across reads, as they do over a real socket.
        for (let i = 0; i < bytes.length; i += 41) controller.enqueue(bytes.slice(i, i + 41));
        controller.close();
      },
    });
    return new Response(stream, { headers: { "content-type": "application/x-ndjson" } });
  });
  return ready.promise;
};
