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

Deno.test("forgive: a scope's new writer is accepted again; writes of the old one still queued are refused", async () => {
  const dir = await Deno.makeTempDir({ prefix: "keel-group-" });
  const kv = await Deno.openKv(`${dir}/kv`);
  try {
    const group = makeGroupCommitter(kv);
    const set = (key: string, value: unknown) => ({
      apply: (op: Deno.AtomicOperation) => void op.set(["run", key], value),
      mutations: 1,
      bytes: 64,
      scope: "r",
    });
    const lost = group.submit(set("huge", "x".repeat(70 * 1024)));
    await Promise.resolve();
    // While that commit is in flight: an exclusive task, and behind it another write of the same (old) writer.
    let release: (() => void) | undefined;
    const task = group.exclusive(() => new Promise<void>((r) => (release = r)));
    const old = group.submit(set("old", 1));
    await assert.rejects(lost);
    while (!release) await new Promise((r) => setTimeout(r, 1));
    await assert.rejects(group.submit(set("refused", 1)), /an earlier write of "r" failed/);
    // The run's next pass read its journal back: it writes again; what the old pass queued does not land.
    group.forgive("r");
    await assert.rejects(old, /an earlier write of "r" failed/);
    const fresh = group.submit(set("fresh", 2));
    release();
    await task;
    await fresh;
    assert.equal((await kv.get(["run", "fresh"])).value, 2);
    assert.equal((await kv.get(["run", "old"])).value, null);
    assert.equal((await kv.get(["run", "refused"])).value, null);
  } finally {
    kv.close();
    await Deno.remove(dir, { recursive: true });
  }
});
