/**
 * @module
 * Limit counters that cannot be read fail closed. A charge under a rule with
 * a rate limit is counted in Deno KV before it is sent; when the counters
 * cannot be read (the store fails), the Gateway cannot know whether the call
 * fits, so it is denied with rule `fail-closed`, journaled and audited, and
 * nothing reaches the connector. Once the store answers again, the same
 * charge goes through. The store is broken by wrapping `Deno.Kv.getMany` for
 * counter keys only, in this process, where the test Keel runs.
 */
import assert from "node:assert/strict";
import { Journal } from "../../core/journal/mod.ts";
import { withLedgerKeel } from "./_ledger.ts";

const POLICY = `rules:
  - id: charges
    match: { effect: ledger.charge }
    decision: allow
    limits:
      rate: { count: 100, per: 1h }
`;

Deno.test("a charge whose limit counters cannot be read is denied as fail-closed, and nothing is sent", async () => {
  const proto = Deno.Kv.prototype as unknown as { getMany: (...args: unknown[]) => Promise<unknown> };
  const getMany = proto.getMany;
  let broken = true;
  proto.getMany = function (this: unknown, ...args: unknown[]) {
    const keys = args[0] as Deno.KvKey[];
    if (broken && keys.some((key) => key[0] === "limit")) return Promise.reject(new Error("disk I/O error"));
    return getMany.apply(this, args);
  };
  try {
    await withLedgerKeel({ policies: { "p.yaml": POLICY } }, async (k) => {
      const r = await k.start("charge", { amount: 5 }, 30);
      assert.equal(r.status, "failed", JSON.stringify(r));
      assert.equal(r.error.tag, "PolicyDeniedError");
      assert.equal(r.error.details.rule, "fail-closed");
      assert.match(r.error.message, /limits could not be counted/);
      const [rejected] = await k.audit("effect.rejected", r.runId);
      assert.equal(rejected.data.rule, "fail-closed");
      const logged = (await k.keel.runtime.runPromise(Journal.use((j) => j.listDecisions({}))))
        .filter((d) => d.runId === r.runId);
      assert.deepEqual(logged.map((d) => [d.decision, d.rule]), [["deny", "fail-closed"]]);
      assert.equal(k.witness.calls.length, 0, "a charge that could not be counted must not be sent");

      broken = false;
      const again = await k.start("charge", { amount: 5 }, 30);
      assert.equal(again.status, "succeeded", JSON.stringify(again));
      assert.equal(k.witness.calls.length, 1);
    });
  } finally {
    proto.getMany = getMany;
  }
});
