/**
 * @module
 * The Anthropic provider: the Messages API through the official
 * `@anthropic-ai/sdk` client, pointed at `baseURL` (Anthropic's API, or a
 * loopback fake in tests). Streams by default (SSE: `message_start`,
 * `content_block_*`, `message_delta`, `message_stop`) and lets the SDK
 * assemble the final message, tool-use blocks included. A structured answer
 * is asked for as a forced `respond` tool whose input schema is the request's
 * schema. The SDK's own retries are off: the router retries and falls back,
 * the same way for every provider.
 */
import Anthropic from "@anthropic-ai/sdk";
import {
  cappedFetch,
  kindOfStatus,
  type ModelProvider,
  type ProviderAnswer,
  type ProviderCall,
  ProviderFailure,
  type RenderedMessage,
  retryAfterMs,
} from "./Provider.ts";

/** The tool name a structured answer comes back through. */
export const RESPOND_TOOL = "respond";

/** Settings of one Anthropic provider. */
export interface AnthropicSettings {
  readonly name: string;
  readonly baseURL: string;
  readonly apiKey: string;
  readonly stream: boolean;
  readonly timeoutMs: number;
}

const toAnthropicMessages = (messages: ReadonlyArray<RenderedMessage>) =>
  messages.map((m) => ({
    role: m.role,
    content: m.parts.map((p) =>
      p.type === "text"
        ? { type: "text", text: p.text }
        : p.type === "tool_call"
        ? { type: "tool_use", id: p.id, name: p.name, input: p.input ?? {} }
        : { type: "tool_result", tool_use_id: p.id, content: p.text, is_error: p.isError }
    ),
  }));

/** An object schema for the `respond` tool; a non-object schema is wrapped in `{ value }`. */
export const respondSchema = (schema: Record<string, unknown>): { schema: Record<string, unknown>; wrapped: boolean } =>
  schema.type === "object" ? { schema, wrapped: false } : {
    schema: { type: "object", properties: { value: schema }, required: ["value"], additionalProperties: false },
    wrapped: true,
  };

const failureOf = (error: unknown): ProviderFailure => {
  if (error instanceof ProviderFailure) return error;
  if (error instanceof Anthropic.APIConnectionTimeoutError) return new ProviderFailure("timeout", error.message);
  if (error instanceof Anthropic.APIUserAbortError) return new ProviderFailure("timeout", "Request aborted");
  if (error instanceof Anthropic.APIConnectionError) {
    return new ProviderFailure("unavailable", `Cannot reach Anthropic: ${error.message}`);
  }
  if (error instanceof Anthropic.APIError && typeof error.status === "number") {
    return new ProviderFailure(
      kindOfStatus(error.status),
      `Anthropic answered ${error.status}: ${error.message}`,
      error.status,
      retryAfterMs(error.headers, Date.parse(error.headers?.get("date") ?? "") || Date.now()),
    );
  }
  return new ProviderFailure("unavailable", `Anthropic call failed: ${String((error as Error)?.message ?? error)}`);
};

/** Make an Anthropic provider. */
export const anthropicProvider = (settings: AnthropicSettings): ModelProvider => {
  const client = new Anthropic({
    apiKey: settings.apiKey,
    baseURL: settings.baseURL,
    maxRetries: 0,
    timeout: settings.timeoutMs,
    fetch: cappedFetch(),
  });
  return {
    name: settings.name,
    type: "anthropic",
    paid: true,
    timeoutMs: settings.timeoutMs,
    async generate(call: ProviderCall, signal: AbortSignal): Promise<ProviderAnswer> {
      const tools: Array<Record<string, unknown>> = call.tools.map((t) => ({
        name: t.name,
        description: t.description,
        input_schema: t.inputSchema,
      }));
      let wrapped = false;
      let toolChoice: Record<string, unknown> | undefined;
      if (call.schema) {
        const respond = respondSchema(call.schema);
        wrapped = respond.wrapped;
        tools.push({
          name: RESPOND_TOOL,
          description: "Give your final answer as the input of this tool, matching its schema exactly.",
          input_schema: respond.schema,
        });
        toolChoice = call.tools.length ? { type: "any" } : { type: "tool", name: RESPOND_TOOL };
      }
      const params = {
        model: call.model,
        max_tokens: call.maxTokens,
        temperature: call.temperature,
        ...(call.system ? { system: call.system } : {}),
        messages: toAnthropicMessages(call.messages),
        ...(tools.length ? { tools } : {}),
        ...(toolChoice ? { tool_choice: toolChoice } : {}),
      } as unknown as Anthropic.MessageCreateParamsNonStreaming;
      let message: Anthropic.Message;
      try {
        message = settings.stream
          ? await client.messages.stream(params, { signal }).finalMessage()
          : await client.messages.create(params, { signal });
      } catch (error) {
        throw failureOf(error);
      }
      let text = "";
      let structured: unknown = undefined;
      const toolCalls: Array<{ id: string; name: string; input: unknown }> = [];
      for (const block of message.content) {
        if (block.type === "text") text += block.text;
        else if (block.type === "tool_use") {
          if (call.schema && block.name === RESPOND_TOOL) {
            const input = block.input as Record<string, unknown> | undefined;
            structured = wrapped ? input?.value : input;
          } else toolCalls.push({ id: block.id, name: block.name, input: block.input });
        }
      }
      const stopReason = message.stop_reason === "max_tokens" ? "max_tokens" : toolCalls.length ? "tool_use" : "end";
      return {
        text,
        toolCalls,
        ...(structured !== undefined ? { structured } : {}),
        stopReason,
        usage: { inputTokens: message.usage.input_tokens, outputTokens: message.usage.output_tokens },
        model: message.model,
      };
    },
  };
};
