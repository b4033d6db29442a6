/**
 * @module
 * Riders: index entries that go in a commit after the records they index
 * (`core/store/GroupCommit.ts`). Against a real KV file: a rider never lands
 * in its record's commit nor before it, one made by a failed commit never
 * lands, one carried by a failed commit lands with the next, and a restart
 * repairs what a crash left between a record and its rider (a stale
 * active-run or pending-approval entry, audit events missing from the by-run
 * index).
 */
import assert from "node:assert/strict";
import { Effect } from "effect";
import { makeGroupCommitter, RIDE_MS } from "../../core/store/mod.ts";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { Orchestrator } from "../../core/orchestrator/mod.ts";
import { Journal } from "../../core/journal/mod.ts";
import { Audit } from "../../core/telemetry/mod.ts";

const withKv = async (f: (kv: Deno.Kv) => Promise<void>) => {
  const dir = await Deno.makeTempDir({ prefix: "keel-riders-" });
  const kv = await Deno.openKv(`${dir}/kv`);
  try {
    await f(kv);
  } finally {
    kv.close();
    await Deno.remove(dir, { recursive: true });
  }
};

/** A write of `key` that makes a rider writing `riderKey`. */
const withRider = (group: ReturnType<typeof makeGroupCommitter>, key: Deno.KvKey, riderKey: Deno.KvKey) => ({
  apply: (op: Deno.AtomicOperation) => {
    op.set(key, "record");
    const rider = { apply: (o: Deno.AtomicOperation) => void o.set(riderKey, "index"), mutations: 1, bytes: 16 };
    if (!group.ride(rider)) rider.apply(op);
  },
  mutations: 2,
  bytes: 32,
});

Deno.test("a rider commits after its record, never with it; a shared commit or flushRiders carries it, a lone write does not", async () => {
  await withKv(async (kv) => {
    // Riders' own timer is set far off: on a loaded machine it could carry the rider between two steps here.
    const group = makeGroupCommitter(kv, { rideMs: 60_000 });
    await group.submit(withRider(group, ["rec", 1], ["idx", 1]));
    assert.equal((await kv.get(["rec", 1])).value, "record");
    assert.equal((await kv.get(["idx", 1])).value, null, "the rider is not in its record's commit");
    assert.equal(group.riders(), 1);
    // A lone write (someone waits on it) goes as small as it is: the rider does not ride on it.
    await group.submit({ apply: (op) => void op.set(["lone"], 1), mutations: 1, bytes: 8 });
    assert.equal((await kv.get(["idx", 1])).value, null);
    assert.equal(group.riders(), 1);
    // A commit shared by several writes carries it.
    await Promise.all([
      group.submit({ apply: (op) => void op.set(["other", 1], 1), mutations: 1, bytes: 8 }),
      group.submit({ apply: (op) => void op.set(["other", 2], 1), mutations: 1, bytes: 8 }),
    ]);
    assert.equal((await kv.get(["idx", 1])).value, "index");
    assert.equal(group.riders(), 0);
    // Or an explicit flush, counted as a riders-only commit.
    await group.submit(withRider(group, ["rec", 2], ["idx", 2]));
    const before = group.stats().riderCommits;
    await group.flushRiders();
    assert.equal((await kv.get(["idx", 2])).value, "index");
    assert.equal(group.stats().riderCommits - before, 1);
    // Outside a grouped commit there is nothing to ride on: the caller writes the entry itself.
    assert.equal(group.ride({ apply: () => {}, mutations: 1, bytes: 1 }), false);
  });
});

Deno.test("riders wait at most RIDE_MS for another commit, then go alone", async () => {
  await withKv(async (kv) => {
    const group = makeGroupCommitter(kv);
    await group.submit(withRider(group, ["rec", 1], ["idx", 1]));
    assert.equal((await kv.get(["idx", 1])).value, null);
    const deadline = Date.now() + 50 * RIDE_MS;
    while ((await kv.get(["idx", 1])).value === null) {
      assert.ok(Date.now() < deadline, "the rider never went alone");
      await new Promise((r) => setTimeout(r, RIDE_MS));
    }
    assert.equal(group.riders(), 0);
  });
});

Deno.test("a rider made by a failed commit never lands; one carried by a failed commit lands with the next", async () => {
  await withKv(async (kv) => {
    const group = makeGroupCommitter(kv);
    // A record whose rider waits, then a commit that fails while carrying that rider and making its own.
    await group.submit(withRider(group, ["rec", 1], ["idx", 1]));
    const tooBig = "x".repeat(70 * 1024); // over Deno KV's 64 KiB value limit: the commit throws
    const failing = withRider(group, ["rec", 2], ["idx", 2]);
    // Two writes in one commit (a shared commit carries riders); the second makes it fail.
    const results = await Promise.allSettled([
      group.submit(failing),
      group.submit({ apply: (op) => void op.set(["huge"], tooBig), mutations: 1, bytes: 100 }),
    ]);
    assert.deepEqual(results.map((r) => r.status), ["rejected", "rejected"]);
    assert.equal((await kv.get(["rec", 2])).value, null);
    assert.equal((await kv.get(["idx", 1])).value, null, "the failed commit did not carry it");
    await group.flushRiders();
    assert.equal((await kv.get(["idx", 1])).value, "index", "the carried rider lands with the next commit");
    assert.equal((await kv.get(["idx", 2])).value, null, "the rider of the failed record never lands");
    assert.equal(group.riders(), 0);
  });
});

const install = async (k: TestKeel) => {
  const res = await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/bench_workflows`, grant: {} });
  assert.equal(res.status, 201, JSON.stringify(res.body));
};

Deno.test("a restart repairs what a crash left between records and their riders", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-riders-restart-" });
  try {
    // A gate decided and its run ended, with every rider committed (close flushes them).
    let runId = "";
    let approvalId = "";
    {
      const k = await startTestKeel({ dataDir });
      try {
        await install(k);
        const o = (f: (o: Orchestrator["Service"]) => Effect.Effect<any, any>) =>
          k.keel.runtime.runPromise(Orchestrator.use(f));
        const started = await o((o) => o.start("bench_w2", { bytes: 10 }, "test"));
        const parked = await o((o) => o.wait(started.id, 10));
        runId = parked.id;
        approvalId = parked.waitingFor!.approvalId!;
        await o((o) => o.decide(approvalId, { approve: true, actor: "ops" }));
        assert.equal((await o((o) => o.wait(runId, 10))).status, "succeeded");
        // The ended run is not active, whether or not its entry has left the index yet.
        const active = await k.keel.runtime.runPromise(Journal.use((j) => j.activeRuns));
        assert.deepEqual(active.map((r) => r.id), []);
      } finally {
        await k.close();
      }
    }
    // What a kill -9 between the end's commit and its riders' leaves: the entries back, the by-run index
    // of the run's events gone and its mark before them.
    const events: number[] = [];
    {
      const kv = await Deno.openKv(`${dataDir}/keel.kv`);
      for await (const e of kv.list<number>({ prefix: ["audit_by_run", runId] })) events.push(e.value);
      assert.ok(events.length >= 4, `events of the run: ${events}`);
      const op = kv.atomic().set(["run_active", runId], true).set(["approval_pending", approvalId], true)
        .set(["audit_indexed"], events[0] - 1);
      for (const seq of events) op.delete(["audit_by_run", runId, seq]);
      await op.commit();
      kv.close();
    }
    const k = await startTestKeel({ dataDir });
    try {
      const kv = await Deno.openKv(`${dataDir}/keel.kv`);
      try {
        assert.equal((await kv.get(["run_active", runId])).value, null, "the stale active-run entry is swept");
        assert.equal((await kv.get(["approval_pending", approvalId])).value, null, "the stale pending entry too");
        const indexed: number[] = [];
        for await (const e of kv.list<number>({ prefix: ["audit_by_run", runId] })) indexed.push(e.value);
        assert.deepEqual(indexed, events, "the run's events are indexed again");
        assert.ok(((await kv.get<number>(["audit_indexed"])).value ?? 0) >= events.at(-1)!);
      } finally {
        kv.close();
      }
      const listed = await k.keel.runtime.runPromise(Audit.use((a) => a.list({ runId })));
      assert.deepEqual(listed.map((e) => e.seq), events);
      assert.equal((await k.keel.runtime.runPromise(Audit.use((a) => a.verify()))).ok, true);
      assert.equal((await k.api("GET", "/api/approvals?status=pending")).body.approvals.length, 0);
    } finally {
      await k.close();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("riders whose timer fires after the store closed fail quietly: no unhandled rejection", async () => {
  const dir = await Deno.makeTempDir({ prefix: "keel-riders-closed-" });
  try {
    const kv = await Deno.openKv(`${dir}/kv`);
    const group = makeGroupCommitter(kv);
    await group.submit(withRider(group, ["rec", 1], ["idx", 1]));
    assert.equal(group.riders(), 1);
    kv.close();
    // The ride timer fires on a closed store; the flush it starts must settle, not escape.
    await new Promise((r) => setTimeout(r, 4 * RIDE_MS));
    await assert.rejects(group.flushRiders());
    // Once closed (as the Kv layer does after its last flush), nothing retries and writes are refused.
    group.close();
    const attempts = () => group.stats().commits + group.stats().failedCommits;
    const before = attempts();
    await new Promise((r) => setTimeout(r, 8 * RIDE_MS));
    assert.equal(attempts(), before, "no commit is tried after close");
    await assert.rejects(
      group.submit({ apply: (op) => void op.set(["x"], 1), mutations: 1, bytes: 8 }),
      /the store is closed/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
