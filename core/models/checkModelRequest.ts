/**
 * @module
 * The shape a `ctx.model.generate` request must have. A workflow is plugin
 * code, so its request is checked like any input from outside: against a
 * JSON Schema, with a message naming the first offending field.
 */
import { Validator } from "@cfworker/json-schema";
import { schemaErrors } from "../manifest/mod.ts";

const text = { type: "string", maxLength: 200_000 };
const part = {
  oneOf: [
    {
      type: "object",
      required: ["type", "text"],
      additionalProperties: false,
      properties: { type: { const: "text" }, text },
    },
    {
      type: "object",
      required: ["type", "text", "source"],
      additionalProperties: false,
      properties: { type: { const: "untrusted" }, text, source: { type: "string", minLength: 1, maxLength: 200 } },
    },
    {
      type: "object",
      required: ["type", "id", "name", "input"],
      additionalProperties: false,
      properties: {
        type: { const: "tool_call" },
        id: { type: "string", minLength: 1, maxLength: 200 },
        name: { type: "string", minLength: 1, maxLength: 200 },
        input: {},
      },
    },
    {
      type: "object",
      required: ["type", "id", "name", "content"],
      additionalProperties: false,
      properties: {
        type: { const: "tool_result" },
        id: { type: "string", minLength: 1, maxLength: 200 },
        name: { type: "string", minLength: 1, maxLength: 200 },
        content: {},
        isError: { type: "boolean" },
      },
    },
  ],
};

/** The JSON Schema of a model request. */
export const MODEL_REQUEST_SCHEMA: Record<string, unknown> = {
  type: "object",
  required: ["purpose", "messages"],
  additionalProperties: false,
  properties: {
    purpose: { type: "string", pattern: "^[A-Za-z0-9_.:-]{1,64}$" },
    messages: {
      type: "array",
      minItems: 1,
      maxItems: 500,
      items: {
        type: "object",
        required: ["role", "content"],
        additionalProperties: false,
        properties: {
          role: { enum: ["system", "user", "assistant"] },
          content: { oneOf: [text, { type: "array", maxItems: 500, items: part }] },
        },
      },
    },
    tools: {
      type: "array",
      maxItems: 64,
      items: {
        oneOf: [
          { type: "string", minLength: 1, maxLength: 200 },
          {
            type: "object",
            required: ["name", "inputSchema"],
            additionalProperties: false,
            properties: {
              name: { type: "string", pattern: "^[A-Za-z0-9_-]{1,64}$" },
              description: { type: "string", maxLength: 4000 },
              inputSchema: { type: "object" },
            },
          },
        ],
      },
    },
    schema: { type: "object" },
    maxTokens: { type: "integer", minimum: 1, maximum: 200_000 },
    temperature: { type: "number", minimum: 0, maximum: 2 },
  },
};

const validator = new Validator(MODEL_REQUEST_SCHEMA, "2020-12", false);

/** What is wrong with a model request, as `field "…" …` lines; empty when it is fine. */
export const checkModelRequest = (request: unknown): string[] => schemaErrors(validator, request);
