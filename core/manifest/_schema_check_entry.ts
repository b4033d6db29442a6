/**
 * @module
 * The schema-check process's main module (see `SchemaChecker.ts`): checks
 * values against JSON Schemas that hold regular expressions, away from Keel's
 * main thread, so a pattern that backtracks for seconds on a long string
 * stalls only this process, which Keel kills at its deadline. Started with no
 * permissions. One JSON message per line: `{ id, schema, value }` in,
 * `{ id, errors }` (the lines of `schemaErrors`) or `{ id, failed }` out; it
 * says `{ ready: true }` once it can take checks.
 */
import { Validator } from "@cfworker/json-schema";
import { schemaErrors } from "./schemaErrors.ts";

/** Compiled schemas by the id Keel gave them, the most recently used last. */
const validators = new Map<number, Validator>();
const KEEP = 256;

const out = Deno.stdout.writable.getWriter();
const encoder = new TextEncoder();
const send = (message: unknown) => out.write(encoder.encode(JSON.stringify(message) + "\n"));

const answer = (line: string) => {
  let id = -1;
  try {
    const m = JSON.parse(line) as { id: number; schema: Record<string, unknown>; value: unknown };
    id = m.id;
    let v = validators.get(id);
    if (v) validators.delete(id);
    else v = new Validator(m.schema, "2020-12", false);
    validators.set(id, v);
    if (validators.size > KEEP) validators.delete(validators.keys().next().value!);
    return { id, errors: schemaErrors(v, m.value) };
  } catch (error) {
    return { id, failed: error instanceof Error ? error.message : String(error) };
  }
};

await send({ ready: true });
// Lines can be megabytes long: keep the chunks of one and join them once.
let parts: string[] = [];
for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
  let from = 0;
  for (let nl = chunk.indexOf("\n"); nl !== -1; nl = chunk.indexOf("\n", from)) {
    parts.push(chunk.slice(from, nl));
    const line = parts.join("");
    parts = [];
    from = nl + 1;
    if (line) await send(answer(line));
  }
  if (from < chunk.length) parts.push(chunk.slice(from));
}
