/**
 * @module
 * `keel memory search QUERY`: the operator's recall over every agent's
 * memory, through the running Keel's API (`GET /api/memory`). Shows each
 * item's score, kind, text and provenance; the search is logged in the
 * retrieval log like an agent's.
 */
import { api, type Command, flagsOf, print, UsageError } from "./client.ts";

const HELP = `Usage: deno task keel memory search QUERY [--kind K]... [--tag T]... [--limit N]
                                  [--scope S] [--run RUN_ID] [--source S] [--json]

Recall memory items that match QUERY: vector search (the configured embedder)
and full-text search, fused by reciprocal rank. Filters: --kind (fact,
preference, note, summary, record-ref; repeat for any of several), --tag
(repeat: items carry every tag), --scope (agent:<name>), --run and --source
(provenance). --limit is 1 to 50 (default 10). --json prints the API answer.`;

/** `keel memory search QUERY [--kind K] [--tag T] [--limit N]`. */
export const memoryCommand: Command = {
  summary: ["memory search QUERY           Recall memory items with their provenance (--kind, --tag, --limit)"],
  help: HELP,
  async run(args) {
    const { values, positionals } = flagsOf(args, {
      kind: { type: "string", multiple: true },
      tag: { type: "string", multiple: true },
      limit: { type: "string" },
      scope: { type: "string" },
      run: { type: "string" },
      source: { type: "string" },
      json: { type: "boolean" },
    });
    if (positionals[0] !== "search") throw new UsageError(`Usage: memory search QUERY (see "memory --help")`);
    const query = positionals.slice(1).join(" ").trim();
    if (!query) throw new UsageError("memory search needs a QUERY");
    const q = new URLSearchParams({ q: query });
    for (const k of values.kind ?? []) q.append("kind", k);
    for (const t of values.tag ?? []) q.append("tag", t);
    if (values.limit !== undefined) q.set("limit", values.limit);
    if (values.scope !== undefined) q.set("scope", values.scope);
    if (values.run !== undefined) q.set("runId", values.run);
    if (values.source !== undefined) q.set("source", values.source);
    const result = await api("GET", `/api/memory?${q}`);
    if (values.json) return print(result);
    if (!result.items.length) return console.log(`No memory matches "${query}"`);
    for (const item of result.items) {
      const p = item.provenance;
      const from = [
        p.runId ? `run ${p.runId} step ${p.seq}` : undefined,
        p.plugin ? `plugin ${p.plugin}` : undefined,
        p.source,
        item.createdAt,
      ].filter(Boolean).join(" · ");
      console.log(`${item.score.toFixed(4)}  ${item.kind.padEnd(10)} ${item.id}  ${item.text}`);
      console.log(`        ${from}${item.tags.length ? `  tags: ${item.tags.join(", ")}` : ""}`);
    }
    console.log(`(recall ${result.recallId})`);
  },
};
