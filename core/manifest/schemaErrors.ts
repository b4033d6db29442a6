/**
 * @module
 * A JSON Schema validator's result as a few readable lines. Plain code with no
 * Effect, because the schema-check process (`_schema_check_entry.ts`) runs it
 * too and should start fast.
 */
import type { Validator } from "@cfworker/json-schema";

/** The first schema violations of a value, as `field: why` lines. */
export const schemaErrors = (validator: Validator, value: unknown, limit = 5): string[] => {
  const result = validator.validate(value);
  if (result.valid) return [];
  // cfworker reports the chain from the root; the deepest errors say the most (sort is stable).
  const seen = new Set<string>();
  const lines: string[] = [];
  const depth = (e: { instanceLocation: string }) => e.instanceLocation.split("/").length;
  for (const e of [...result.errors].sort((a, b) => depth(b) - depth(a))) {
    const at = e.instanceLocation.replace(/^#\/?/, "").replaceAll("/", ".");
    const missing = e.keyword === "required" ? /required property "([^"]+)"/.exec(e.error)?.[1] : undefined;
    const field = missing ? (at ? `${at}.${missing}` : missing) : at || "(root)";
    // A `false` schema (`additionalProperties: false`, say) reports "False boolean schema": say what it means.
    const line = missing
      ? `field "${field}" is required`
      : e.keyword === "false"
      ? `field "${field}" is not allowed`
      : `field "${field}" ${e.error.replace(/^Instance /, "").replace(/\.$/, "")}`;
    if (e.keyword === "properties" || e.keyword === "items" || seen.has(field)) continue;
    seen.add(field);
    lines.push(line);
    if (lines.length >= limit) break;
  }
  return lines.length ? lines : [`${result.errors[0]?.error ?? "invalid"}`];
};
