/**
 * @module
 * The group committer's scopes (`core/store/GroupCommit.ts`), against a real
 * KV file: once a commit carrying a scope (a run) failed, no later write of
 * that scope lands, even one submitted while that commit was in flight. A
 * run's end must never be recorded after one of its writes was lost (a
 * decision held for the run's first write, say).
 */
import assert from "node:assert/strict";
import { makeGroupCommitter } from "../../core/store/mod.ts";

Deno.test("a write of a scope queued behind that scope's failing commit is refused, not committed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "keel-group-" });
  const kv = await Deno.openKv(`${dir}/kv`);
  try {
    const group = makeGroupCommitter(kv);
    const tooBig = "x".repeat(70 * 1024); // over Deno KV's 64 KiB value limit: the commit throws
    const first = group.submit({
      apply: (op) => void op.set(["run", "huge"], tooBig),
      mutations: 1,
      bytes: 100,
      scope: "r",
    });
    // Let the committer take `first` and send its commit, then queue two more behind it.
    await Promise.resolve();
    const settled: boolean[] = [];
    const later = group.submit({
      apply: (op) => void op.set(["run", "end"], "succeeded"),
      mutations: 1,
      bytes: 32,
      scope: "r",
      settled: (ok) => settled.push(ok),
    });
    const other = group.submit({ apply: (op) => void op.set(["other"], 1), mutations: 1, bytes: 32, scope: "s" });
    const results = await Promise.allSettled([first, later, other]);
    assert.deepEqual(results.map((r) => r.status), ["rejected", "rejected", "fulfilled"]);
    assert.match(String((results[1] as PromiseRejectedResult).reason), /an earlier write of "r" failed/);
    assert.deepEqual(settled, [false], "told once that it was not committed");
    assert.equal((await kv.get(["run", "end"])).value, null, "the refused write never landed");
    assert.equal((await kv.get(["other"])).value, 1, "other scopes go on");
    assert.equal(group.stats().failedCommits, 1);
  } finally {
    kv.close();
    await Deno.remove(dir, { recursive: true });
  }
});
