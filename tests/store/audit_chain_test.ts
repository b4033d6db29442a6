/**
 * @module
 * The audit chain against a real KV file, when events are prepared in one
 * order and committed in another, and when a commit carrying an event fails.
 * An event takes its sequence number when its commit is built, so the chain
 * follows commit order, a failed commit leaves no gap, and the by-run index
 * mark never claims an event whose index entry is not in the store.
 */
import assert from "node:assert/strict";
import { Effect, Layer, ManagedRuntime } from "effect";
import { Kv, makeGroupCommitter } from "../../core/store/mod.ts";
import { Audit, type AuditEvent } from "../../core/telemetry/mod.ts";

const withAudit = async (
  body: (
    run: <A, E>(e: Effect.Effect<A, E, Audit>) => Promise<A>,
    group: ReturnType<typeof makeGroupCommitter>,
    kv: Deno.Kv,
  ) => Promise<void>,
) => {
  const dir = await Deno.makeTempDir({ prefix: "keel-audit-chain-" });
  const kv = await Deno.openKv(`${dir}/keel.kv`);
  const group = makeGroupCommitter(kv);
  const rt = ManagedRuntime.make(Audit.layer.pipe(Layer.provide(Layer.succeed(Kv, { kv, group }))));
  try {
    await body((e) => rt.runPromise(e), group, kv);
  } finally {
    await rt.dispose();
    group.close();
    kv.close();
    await Deno.remove(dir, { recursive: true });
  }
};

/** Every event up to the `audit_indexed` mark has its by-run entry in the store. */
const assertMarkHonest = async (kv: Deno.Kv) => {
  const mark = (await kv.get<number>(["audit_indexed"])).value ?? 0;
  for await (const e of kv.list<AuditEvent>({ prefix: ["audit"] })) {
    if (e.value.seq > mark || !e.value.runId) continue;
    const entry = await kv.get(["audit_by_run", e.value.runId, e.value.seq]);
    assert.notEqual(entry.value, null, `event ${e.value.seq} is under the mark ${mark} but not indexed`);
  }
  return mark;
};

const ev = (runId: string, type: string) => ({ type, actor: "test", runId, data: { n: 1 } });

Deno.test("an event prepared before another but committed after it is chained after it; the mark stays honest", async () => {
  await withAudit(async (run, group, kv) => {
    // A is prepared first but held back (as a run's held start is); B is appended and committed meanwhile.
    const a = await run(Audit.use((audit) => audit.prepare(ev("run_a", "held"))));
    const b = await run(Audit.use((audit) => audit.append(ev("run_b", "appended"))));
    await assertMarkHonest(kv);
    // A goes in a shared commit (which carries B's riding index entry) and makes its own rider.
    await Promise.all([
      group.submit(a.write),
      group.submit({ apply: (op) => void op.set(["other"], 1), mutations: 1, bytes: 8 }),
    ]);
    assert.ok(b.seq < a.write.event().seq, `B committed first, so it comes first: ${b.seq}, ${a.write.event().seq}`);
    assert.equal(a.write.event().prevHash, b.hash);
    await assertMarkHonest(kv);
    assert.equal((await run(Audit.use((audit) => audit.verify()))).ok, true);
    await group.flushRiders();
    assert.equal(await assertMarkHonest(kv), a.write.event().seq);
  });
});

Deno.test("a failed commit carrying audit events leaves no gap: the next event takes their place in the chain", async () => {
  await withAudit(async (run, group, kv) => {
    await run(Audit.use((audit) => audit.append(ev("run_a", "first"))));
    const lost1 = await run(Audit.use((audit) => audit.prepare(ev("run_a", "lost"))));
    const lost2 = await run(Audit.use((audit) => audit.prepare(ev("run_a", "lost too"))));
    const tooBig = "x".repeat(70 * 1024); // over Deno KV's 64 KiB value limit: the commit fails
    await assert.rejects(group.submit({
      apply: (op) => {
        lost1.write.apply(op);
        lost2.write.apply(op);
        op.set(["huge"], tooBig);
      },
      mutations: 7,
      bytes: 100,
      settled: (ok) => {
        lost1.write.settled?.(ok);
        lost2.write.settled?.(ok);
      },
    }));
    const next = await run(Audit.use((audit) => audit.append(ev("run_a", "next"))));
    assert.equal(next.seq, 2, "the lost events' sequence numbers are taken again");
    const events: AuditEvent[] = [];
    for await (const e of kv.list<AuditEvent>({ prefix: ["audit"] })) events.push(e.value);
    assert.deepEqual(events.map((e) => [e.seq, e.type]), [[1, "first"], [2, "next"]]);
    assert.equal((await run(Audit.use((audit) => audit.verify()))).ok, true);
    const listed = await run(Audit.use((audit) => audit.list({ runId: "run_a" })));
    assert.deepEqual(listed.map((e) => e.type), ["first", "next"]);
    await assertMarkHonest(kv);
  });
});

Deno.test("a listing with a limit gives the newest events, oldest first, for the whole log and for one run", async () => {
  await withAudit(async (run) => {
    for (let i = 0; i < 5; i++) {
      await run(Audit.use((audit) => audit.append(ev("run_a", `a${i}`))));
      await run(Audit.use((audit) => audit.append(ev("run_b", `b${i}`))));
    }
    const all = await run(Audit.use((audit) => audit.list({ limit: 3 })));
    assert.deepEqual(all.map((e) => e.type), ["b3", "a4", "b4"]);
    const runA = await run(Audit.use((audit) => audit.list({ runId: "run_a", limit: 2 })));
    assert.deepEqual(runA.map((e) => e.type), ["a3", "a4"]);
  });
});
