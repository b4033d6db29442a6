/**
 * @module
 * The offline provider: no model at all, so Keel's default run works on a
 * machine with nothing installed. It is honest about what it is: every answer
 * carries a note saying no language model was used, and the model name is
 * `offline-deterministic-v1`. What it does, deterministically (same input,
 * same output, byte for byte):
 *
 * - `route` / `classify`: keyword routing. It picks the label (from the
 *   schema's `enum`, else the tool names) sharing the most words with the
 *   last user message; ties go to the first label.
 * - `summarize` and anything else: an extractive summary, the highest-scoring
 *   sentences (by word frequency, stop words left out) in their original
 *   order.
 * - `draft`: a template that says it is a template, around that summary.
 * - a `schema`: a value built from the schema (enums by keyword routing,
 *   strings from the summary), so it always validates.
 *
 * It never calls tools. Token counts are estimates (4 characters a token).
 */
import type { ModelProvider, ProviderAnswer, ProviderCall } from "./Provider.ts";

/** The model name the offline provider answers with. */
export const OFFLINE_MODEL = "offline-deterministic-v1";

/** What every offline answer says about itself. */
export const OFFLINE_NOTE =
  "Offline deterministic provider: no language model was used. The answer is keyword routing, an extractive summary or a template computed from the input.";

const STOP = new Set(
  ("a an and are as at be but by for from has have i if in into is it its me my of on or our so that the their them " +
    "there these this to was we were what when which who will with you your not no do does did can could would should " +
    "about please just than then also been being").split(" "),
);

const words = (text: string): string[] =>
  (text.toLowerCase().normalize("NFKC").match(/[\p{L}\p{N}]+/gu) ?? []).filter((w) => !STOP.has(w));

/** Two words match when equal, or when one is a prefix (of at least 4 letters) of the other. */
const related = (a: string, b: string) =>
  a === b || (a.length >= 4 && b.length >= 4 && (a.startsWith(b.slice(0, Math.max(4, b.length - 2))) ||
    b.startsWith(a.slice(0, Math.max(4, a.length - 2)))));

/** The label sharing the most words with `text`; the first label on a tie. */
export const routeByKeywords = (text: string, labels: ReadonlyArray<string>): string | undefined => {
  const have = words(text);
  let best: string | undefined;
  let bestScore = -1;
  for (const label of labels) {
    const parts = words(label.replace(/[_\-./]+/g, " "));
    const score = parts.reduce((n, p) => n + (have.some((w) => related(w, p)) ? 1 : 0), 0) / (parts.length || 1);
    if (score > bestScore) {
      best = label;
      bestScore = score;
    }
  }
  return best;
};

/** The `count` highest-scoring sentences of `text`, in their original order. */
export const extractiveSummary = (text: string, count = 3, maxChars = 600): string => {
  const sentences = (text.replace(/\s+/g, " ").match(/[^.!?\n]+[.!?]*/g) ?? []).map((s) => s.trim()).filter(Boolean);
  if (sentences.length === 0) return "";
  const freq = new Map<string, number>();
  for (const w of words(text)) freq.set(w, (freq.get(w) ?? 0) + 1);
  const scored = sentences.map((s, i) => {
    const ws = words(s);
    const score = ws.reduce((n, w) => n + (freq.get(w) ?? 0), 0) / Math.sqrt(ws.length || 1);
    return { s, i, score };
  });
  const top = [...scored].sort((a, b) => b.score - a.score || a.i - b.i).slice(0, count).sort((a, b) => a.i - b.i);
  const joined = top.map((t) => t.s).join(" ");
  return joined.length > maxChars ? `${joined.slice(0, maxChars - 1).trimEnd()}…` : joined;
};

const firstEnum = (schema: unknown): string[] | undefined => {
  if (schema === null || typeof schema !== "object") return undefined;
  const s = schema as Record<string, unknown>;
  if (Array.isArray(s.enum) && s.enum.every((e) => typeof e === "string")) return s.enum as string[];
  for (const sub of Object.values((s.properties ?? {}) as Record<string, unknown>)) {
    const found = firstEnum(sub);
    if (found) return found;
  }
  return undefined;
};

/** A value that matches `schema`, built from the input text (deterministic). */
export const fillSchema = (schema: unknown, text: string, summary: string): unknown => {
  if (schema === null || typeof schema !== "object") return null;
  const s = schema as Record<string, any>;
  if ("const" in s) return s.const;
  if ("default" in s) return s.default;
  if (Array.isArray(s.enum)) {
    const strings = s.enum.filter((e: unknown) => typeof e === "string");
    return (strings.length ? routeByKeywords(text, strings) : undefined) ?? s.enum[0];
  }
  const type = Array.isArray(s.type) ? s.type.find((t: string) => t !== "null") ?? s.type[0] : s.type;
  switch (type) {
    case "object": {
      const out: Record<string, unknown> = {};
      for (const [key, sub] of Object.entries((s.properties ?? {}) as Record<string, unknown>)) {
        out[key] = fillSchema(sub, text, summary);
      }
      return out;
    }
    case "array": {
      const n = typeof s.minItems === "number" ? s.minItems : 0;
      return Array.from({ length: n }, () => fillSchema(s.items ?? {}, text, summary));
    }
    case "string": {
      let v = summary || "offline";
      if (typeof s.maxLength === "number") v = v.slice(0, s.maxLength);
      while (typeof s.minLength === "number" && v.length < s.minLength) v += " ";
      return v;
    }
    case "integer":
    case "number":
      return typeof s.minimum === "number"
        ? s.minimum
        : typeof s.exclusiveMinimum === "number"
        ? s.exclusiveMinimum + 1
        : 0;
    case "boolean":
      return false;
    case "null":
      return null;
    default:
      return summary;
  }
};

const estimateTokens = (text: string) => Math.ceil(text.length / 4);

/** Make the offline provider (always named `offline`). */
export const offlineProvider = (): ModelProvider => ({
  name: "offline",
  type: "offline",
  paid: false,
  timeoutMs: 60_000,
  generate(call: ProviderCall): Promise<ProviderAnswer> {
    const lastUser = [...call.messages].reverse().find((m) => m.role === "user");
    const text = (lastUser?.parts ?? []).map((
      p,
    ) => (p.type === "text" ? p.text : p.type === "tool_result" ? p.text : ""))
      .join("\n")
      // The delimiters are for models; the offline provider reads the data inside them.
      .replace(/<\/?untrusted[^>]*>/g, " ");
    const all = call.system + call.messages.flatMap((m) => m.parts.map((p) => JSON.stringify(p))).join("");
    const summary = extractiveSummary(text, 3, Math.max(40, call.maxTokens * 4));
    let answer: string;
    let structured: unknown = undefined;
    const purpose = call.purpose.toLowerCase();
    if (call.schema) {
      structured = fillSchema(call.schema, text, summary);
      answer = JSON.stringify(structured);
    } else if (purpose === "route" || purpose === "classify") {
      const labels = firstEnum(call.schema) ?? call.tools.map((t) => t.name);
      answer = routeByKeywords(text, labels) ?? summary;
    } else if (purpose === "draft") {
      answer = `[Offline draft from a template; no language model was used]\n\n${summary}`;
    } else {
      answer = summary;
    }
    return Promise.resolve({
      text: answer,
      toolCalls: [],
      ...(structured !== undefined ? { structured } : {}),
      stopReason: "end",
      usage: { inputTokens: estimateTokens(all), outputTokens: estimateTokens(answer) },
      model: OFFLINE_MODEL,
      note: OFFLINE_NOTE,
    });
  },
});
