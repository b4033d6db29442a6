/**
 * @module
 * The pure parts of memory: the deterministic extractive summary (same
 * inputs, same output; within budget; quotes only what was said, in order)
 * and reciprocal rank fusion.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { fuseRanks, RRF_K, summarizeContext } from "../../core/memory/mod.ts";

const entry = fc.record({
  role: fc.option(fc.constantFrom("user", "assistant", "tool:email.send"), { nil: undefined }),
  text: fc.array(
    fc.array(fc.constantFrom("invoice", "Ada", "March", "paid", "the", "client", "VAT", "email", "42", "überweisung"), {
      minLength: 1,
      maxLength: 12,
    }).map((ws) => `${ws.join(" ")}.`),
    { maxLength: 6 },
  ).map((ss) => ss.join(" ")),
}, { requiredKeys: ["text"] });

Deno.test("`summarizeContext()` gives the same summary for the same inputs, within budget, quoting only what was said", () => {
  fc.assert(
    fc.property(
      fc.array(entry, { minLength: 1, maxLength: 30 }),
      fc.integer({ min: 200, max: 3000 }),
      (entries, max) => {
        const a = summarizeContext(entries, max);
        assert.deepEqual(summarizeContext(structuredClone(entries), max), a);
        assert.ok(a.text.length <= max, `${a.text.length} > ${max}`);
        assert.equal(a.summarized.length, entries.length);
        for (const line of a.text.split("\n").slice(1)) {
          if (line === "- (nothing to summarize)") continue;
          const said = (e: { role?: string; text: string }) => {
            const prefix = `- ${e.role ? `${e.role}: ` : ""}`;
            return line.startsWith(prefix) && e.text.includes(line.slice(prefix.length).replace(/…$/, ""));
          };
          assert.ok(entries.some(said), `"${line}" was said`);
        }
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("`summarizeContext()` keeps the sentences that carry the context's frequent words, in their original order", () => {
  const s = summarizeContext([
    {
      role: "user",
      text:
        "Hello there, I hope you had a lovely weekend at the lake with the family. Please send the invoice to Ada today.",
    },
    { role: "assistant", text: "The invoice for Ada is ready. The weather is nice." },
    { role: "tool:records.get", text: "Invoice 7 for Ada: 300 EUR." },
  ], 200);
  assert.equal(
    s.text,
    [
      "Summary of 3 entries (#1 … #3):",
      "- user: Please send the invoice to Ada today.",
      "- assistant: The invoice for Ada is ready.",
      "- tool:records.get: Invoice 7 for Ada: 300 EUR.",
    ].join("\n"),
  );
  assert.deepEqual(s.quoted, ["#1", "#2", "#3"]);
  assert.equal(summarizeContext([{ text: "   " }]).text, "Summary of 1 entry (#1 … #1):\n- (nothing to summarize)");
});

Deno.test("`fuseRanks()` scores by reciprocal rank, rewards agreement, and orders ties totally", () => {
  const fused = fuseRanks([["a", "b", "c"], ["c", "d"]]);
  assert.deepEqual(fused.map((f) => f.id), ["c", "a", "b", "d"]);
  const c = fused[0];
  assert.deepEqual(c.ranks, [3, 1]);
  assert.equal(c.score, Math.round((1 / (RRF_K + 3) + 1 / (RRF_K + 1)) * 1e6) / 1e6);
  assert.deepEqual(fused.find((f) => f.id === "d")?.ranks, [undefined, 2]);
  assert.deepEqual(
    fuseRanks([["x", "y"], ["y", "x"]]).map((f) => f.id),
    ["x", "y"],
    "a tie goes to the better best rank, then the id",
  );
  assert.deepEqual(fuseRanks([["a", "a"]]).map((f) => f.ranks), [[1]], "an id counts once per list");
  assert.deepEqual(fuseRanks([[], []]), []);
});
