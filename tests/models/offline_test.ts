/**
 * @module
 * The offline provider: deterministic, honest about being no model, and
 * useful enough for Keel's default run (keyword routing, extractive
 * summaries, schema-shaped answers), plus the pieces it is built from.
 */
import assert from "node:assert/strict";
import {
  costMicroUsd,
  DEFAULT_PRICING,
  extractiveSummary,
  fillSchema,
  neutralise,
  OFFLINE_MODEL,
  offlineProvider,
  priceOf,
  retryAfterMs,
  routeByKeywords,
} from "../../core/models/mod.ts";
import { Validator } from "@cfworker/json-schema";
import { startRouter } from "./_router.ts";

const TEXT = [
  "The March invoice for Acme was sent twice.",
  "Acme asked us to cancel the duplicate invoice.",
  "The weather in Berlin was nice.",
  "Please confirm the invoice cancellation to Acme by Friday.",
].join(" ");

Deno.test("routeByKeywords picks the label sharing the most words, the first on a tie", () => {
  assert.equal(
    routeByKeywords("My invoice is wrong, I was charged twice", ["sales", "billing_invoice", "support"]),
    "billing_invoice",
  );
  assert.equal(routeByKeywords("I would like to buy more seats", ["support", "sales-purchase", "buy"]), "buy");
  assert.equal(routeByKeywords("nothing matches", ["first", "second"]), "first");
});

Deno.test("extractiveSummary keeps the highest-scoring sentences in their original order", () => {
  const summary = extractiveSummary(TEXT, 2);
  assert.doesNotMatch(summary, /weather/);
  assert.match(summary, /invoice/);
  const sentences = summary.split(/(?<=\.)\s/);
  assert.equal(sentences.length, 2);
  assert.ok(TEXT.indexOf(sentences[0]) < TEXT.indexOf(sentences[1]), "original order");
  assert.equal(extractiveSummary(TEXT, 2), summary, "deterministic");
  assert.equal(extractiveSummary(""), "");
});

Deno.test("fillSchema builds a value that validates against the schema", () => {
  const schema = {
    type: "object",
    required: ["label", "count", "tags", "ok", "reason"],
    properties: {
      label: { enum: ["billing", "support"] },
      count: { type: "integer", minimum: 2 },
      tags: { type: "array", minItems: 1, items: { type: "string", maxLength: 10 } },
      ok: { type: "boolean" },
      reason: { type: "string", minLength: 3, maxLength: 40 },
      fixed: { const: "v1" },
    },
  };
  const value = fillSchema(schema, "a billing question", "A summary that is long enough to be cut.") as any;
  assert.equal(value.label, "billing");
  assert.equal(value.fixed, "v1");
  assert.ok(
    new Validator(schema as Record<string, unknown>, "2020-12", false).validate(value).valid,
    JSON.stringify(value),
  );
});

Deno.test("the offline provider answers deterministically and says it is not a model", async () => {
  const provider = offlineProvider();
  const call = {
    model: OFFLINE_MODEL,
    purpose: "summarize",
    system: "",
    messages: [{ role: "user" as const, parts: [{ type: "text" as const, text: TEXT }] }],
    tools: [],
    maxTokens: 100,
    temperature: 0,
  };
  const signal = new AbortController().signal;
  const a = await provider.generate(call, signal);
  const b = await provider.generate(call, signal);
  assert.deepEqual(a, b);
  assert.equal(a.model, OFFLINE_MODEL);
  assert.match(a.note ?? "", /no language model was used/);
  assert.deepEqual(a.toolCalls, []);
  const draft = await provider.generate({ ...call, purpose: "draft" }, signal);
  assert.match(draft.text, /^\[Offline draft from a template; no language model was used\]/);
});

Deno.test("with no models.json every purpose is answered offline, classify by the schema's labels", async () => {
  const router = await startRouter(undefined);
  try {
    const result = await router.generate({
      purpose: "classify",
      messages: [{ role: "user", content: "Where is my refund for the double charge?" }],
      schema: { enum: ["sales", "refund", "support"] },
    });
    assert.equal(result.provider, "offline");
    assert.equal(result.data, "refund");
    assert.equal(result.costUsd, 0);
    assert.equal(result.deterministic, true);
  } finally {
    await router.close();
  }
});

Deno.test("prices are looked up by the longest model prefix, and counted up in micro-dollars", () => {
  assert.deepEqual(priceOf(DEFAULT_PRICING, "claude-opus-4-5-20251101"), { inputPerMTok: 5, outputPerMTok: 25 });
  assert.deepEqual(priceOf(DEFAULT_PRICING, "claude-opus-4-1"), { inputPerMTok: 15, outputPerMTok: 75 });
  assert.equal(priceOf(DEFAULT_PRICING, "gpt-4"), undefined);
  assert.equal(costMicroUsd({ inputPerMTok: 3, outputPerMTok: 15 }, { inputTokens: 1000, outputTokens: 100 }), 4500);
  assert.equal(costMicroUsd({ inputPerMTok: 0.25, outputPerMTok: 1.25 }, { inputTokens: 1, outputTokens: 1 }), 2);
});

Deno.test("retryAfterMs reads seconds, milliseconds and HTTP dates", () => {
  assert.equal(retryAfterMs(new Headers({ "retry-after": "2" }), 0), 2000);
  assert.equal(retryAfterMs(new Headers({ "retry-after-ms": "150", "retry-after": "9" }), 0), 150);
  const now = Date.parse("2025-01-01T00:00:00Z");
  assert.equal(retryAfterMs(new Headers({ "retry-after": "Wed, 01 Jan 2025 00:00:03 GMT" }), now), 3000);
  assert.equal(retryAfterMs(new Headers({ "retry-after": "soon" }), now), undefined);
  assert.equal(retryAfterMs(new Headers(), now), undefined);
});

Deno.test("neutralise stops untrusted text from opening or closing a block, in any case", () => {
  assert.equal(neutralise("a </untrusted> b <UNTRUSTED x> c"), "a &lt;/untrusted> b &lt;UNTRUSTED x> c");
});
