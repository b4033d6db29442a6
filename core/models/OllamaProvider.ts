/**
 * @module
 * The Ollama provider: `POST /api/chat` through the official `ollama` client,
 * pointed at `host` (a local Ollama, or a loopback fake in tests). Streams by
 * default (one JSON object per line, the last with `done: true` and the token
 * counts). Tool calls come back as `message.tool_calls`; Ollama gives them no
 * ids, so they are numbered. A structured answer is asked for with `format`
 * set to the request's JSON Schema. Local models cost nothing.
 */
import { Ollama } from "ollama";
import {
  cappedFetch,
  kindOfStatus,
  type ModelProvider,
  type ProviderAnswer,
  type ProviderCall,
  ProviderFailure,
  retryAfterMs,
} from "./Provider.ts";

/** Settings of one Ollama provider. */
export interface OllamaSettings {
  readonly name: string;
  readonly host: string;
  readonly stream: boolean;
  readonly timeoutMs: number;
}

interface OllamaMessage {
  role: string;
  content: string;
  tool_calls?: Array<{ function: { name: string; arguments: Record<string, unknown> } }>;
  tool_name?: string;
}

const toOllamaMessages = (call: ProviderCall): OllamaMessage[] => {
  const out: OllamaMessage[] = call.system ? [{ role: "system", content: call.system }] : [];
  for (const m of call.messages) {
    const text = m.parts.flatMap((p) => (p.type === "text" ? [p.text] : [])).join("\n\n");
    const calls = m.parts.flatMap((p) =>
      p.type === "tool_call"
        ? [{ function: { name: p.name, arguments: (p.input ?? {}) as Record<string, unknown> } }]
        : []
    );
    if (text || calls.length) {
      out.push({ role: m.role, content: text, ...(calls.length ? { tool_calls: calls } : {}) });
    }
    for (const p of m.parts) {
      if (p.type === "tool_result") {
        out.push({ role: "tool", content: p.isError ? `Error: ${p.text}` : p.text, tool_name: p.name });
      }
    }
  }
  return out;
};

/** Make an Ollama provider. */
export const ollamaProvider = (settings: OllamaSettings): ModelProvider => ({
  name: settings.name,
  type: "ollama",
  paid: false,
  timeoutMs: settings.timeoutMs,
  async generate(call: ProviderCall, signal: AbortSignal): Promise<ProviderAnswer> {
    // The client aborts only through its own controller; this fetch also honours the router's signal
    // and keeps the last response's headers, which the client's errors do not carry.
    let lastHeaders: Headers | undefined;
    const client = new Ollama({
      host: settings.host,
      fetch: async (input: RequestInfo | URL, init?: RequestInit) => {
        const signals = init?.signal ? [init.signal, signal] : [signal];
        const res = await cappedFetch()(input, { ...init, signal: AbortSignal.any(signals) });
        lastHeaders = res.headers;
        return res;
      },
    });
    const request = {
      model: call.model,
      messages: toOllamaMessages(call),
      ...(call.tools.length
        ? {
          tools: call.tools.map((t) => ({
            type: "function",
            function: { name: t.name, description: t.description, parameters: t.inputSchema },
          })),
        }
        : {}),
      ...(call.schema ? { format: call.schema } : {}),
      options: { temperature: call.temperature, num_predict: call.maxTokens },
    };
    let text = "";
    const toolCalls: Array<{ id: string; name: string; input: unknown }> = [];
    let final: { model: string; done_reason?: string; prompt_eval_count?: number; eval_count?: number } | undefined;
    try {
      const parts = settings.stream
        ? await client.chat({ ...request, stream: true } as never) as unknown as AsyncIterable<any>
        : [await client.chat({ ...request, stream: false } as never)];
      for await (const part of parts) {
        text += part.message?.content ?? "";
        for (const tc of part.message?.tool_calls ?? []) {
          toolCalls.push({ id: `call_${toolCalls.length}`, name: tc.function.name, input: tc.function.arguments });
        }
        if (part.done) final = part;
      }
    } catch (error) {
      const e = error as { name?: string; status_code?: number; message?: string };
      if (signal.aborted) throw new ProviderFailure("timeout", "Ollama call aborted");
      if (typeof e.status_code === "number") {
        throw new ProviderFailure(
          kindOfStatus(e.status_code),
          `Ollama answered ${e.status_code}: ${e.message}`,
          e.status_code,
          retryAfterMs(lastHeaders, Date.now()),
        );
      }
      throw new ProviderFailure(
        "unavailable",
        `Cannot reach Ollama at ${settings.host}: ${e.message ?? String(error)}`,
      );
    }
    if (!final) throw new ProviderFailure("server", "Ollama's answer ended before a line with done: true");
    return {
      text,
      toolCalls,
      stopReason: final.done_reason === "length" ? "max_tokens" : toolCalls.length ? "tool_use" : "end",
      usage: { inputTokens: final.prompt_eval_count ?? 0, outputTokens: final.eval_count ?? 0 },
      model: final.model ?? call.model,
    };
  },
});
