/**
 * @module
 * `Audit.verify` against edits that keep every event's own hash right: an
 * event taken out of the middle of the log, and events swapped. Each event
 * is still internally consistent, so only the link to the one before it
 * (`prevHash`) can tell; a verify that checked hashes alone would call these
 * logs whole. And the edit the chain alone cannot show, its newest events
 * removed (or removed and written again), against a head saved earlier:
 * the anchor.
 */
import assert from "node:assert/strict";
import { Effect, Layer, ManagedRuntime } from "effect";
import { Kv, makeGroupCommitter } from "../../core/store/mod.ts";
import { Audit, type AuditEvent } from "../../core/telemetry/mod.ts";
import { canonicalJson } from "../../core/manifest/mod.ts";
import { createHash } from "node:crypto";

const withAudit = async (
  body: (run: <A, E>(e: Effect.Effect<A, E, Audit>) => Promise<A>, kv: Deno.Kv) => Promise<void>,
) => {
  const dir = await Deno.makeTempDir({ prefix: "keel-audit-tamper-" });
  const kv = await Deno.openKv(`${dir}/keel.kv`);
  const group = makeGroupCommitter(kv);
  const rt = ManagedRuntime.make(Audit.layer.pipe(Layer.provide(Layer.succeed(Kv, { kv, group }))));
  try {
    await body((e) => rt.runPromise(e), kv);
  } finally {
    await rt.dispose();
    group.close();
    kv.close();
    await Deno.remove(dir, { recursive: true });
  }
};

const appendFour = (run: <A, E>(e: Effect.Effect<A, E, Audit>) => Promise<A>) =>
  run(Effect.forEach(
    ["effect.succeeded", "approval.denied", "effect.rejected", "plugin.installed"],
    (type) => Audit.use((audit) => audit.append({ type, actor: "operator", runId: "run_t", data: { type } })),
  ));

Deno.test("an audit event deleted from the middle of the log breaks the chain where it was", async () => {
  await withAudit(async (run, kv) => {
    await appendFour(run);
    const whole = await run(Audit.use((a) => a.verify()));
    assert.deepEqual({ ...whole, head: undefined }, { ok: true, checked: 4, head: undefined });
    assert.equal(whole.head?.seq, 4);
    // Every event left is untouched, hash included: only the next one's link to it is gone.
    await kv.delete(["audit", 2]);
    assert.deepEqual(await run(Audit.use((a) => a.verify())), {
      ok: false,
      checked: 1,
      brokenAt: 3,
      head: { seq: 1, hash: (await kv.get<AuditEvent>(["audit", 1])).value!.hash },
    });
  });
});

Deno.test("two audit events swapped, each with its own valid hash, break the chain", async () => {
  await withAudit(async (run, kv) => {
    await appendFour(run);
    const second = (await kv.get<AuditEvent>(["audit", 2])).value!;
    const third = (await kv.get<AuditEvent>(["audit", 3])).value!;
    // Renumbered and rehashed as a careless forger would: each event alone verifies, the order does not.
    const rehash = (e: AuditEvent, seq: number): AuditEvent => {
      const { hash: _h, ...rest } = { ...e, seq };
      return { ...rest, hash: createHash("sha256").update(canonicalJson(rest)).digest("hex") };
    };
    await kv.set(["audit", 2], rehash(third, 2));
    await kv.set(["audit", 3], rehash(second, 3));
    const verdict = await run(Audit.use((a) => a.verify()));
    assert.equal(verdict.ok, false, JSON.stringify(verdict));
    assert.equal(verdict.brokenAt, 2);
  });
});

Deno.test("the newest events removed: the chain still verifies, the anchor saved earlier does not", async () => {
  await withAudit(async (run, kv) => {
    await appendFour(run);
    const { head } = await run(Audit.use((a) => a.verify()));
    assert.deepEqual(head, { seq: 4, hash: (await kv.get<AuditEvent>(["audit", 4])).value!.hash });
    const held = await run(Audit.use((a) => a.verify(head)));
    assert.deepEqual(held.anchor, { ...head, held: true });
    assert.equal(held.ok, true);
    // An older anchor holds too: the chain only grew since.
    const older = { seq: 2, hash: (await kv.get<AuditEvent>(["audit", 2])).value!.hash };
    assert.equal((await run(Audit.use((a) => a.verify(older)))).ok, true);
    // The forger removes the two newest events: every link left holds.
    await kv.delete(["audit", 4]);
    await kv.delete(["audit", 3]);
    assert.equal((await run(Audit.use((a) => a.verify()))).ok, true, "the chain alone cannot tell");
    const verdict = await run(Audit.use((a) => a.verify(head)));
    assert.equal(verdict.ok, false, JSON.stringify(verdict));
    assert.equal(verdict.anchor?.held, false);
    assert.match(verdict.anchor?.problem ?? "", /event 4 is gone: the log ends at event 2/);
  });
});

Deno.test("the newest events replaced by others with valid links: the anchor's hash no longer matches", async () => {
  await withAudit(async (run, kv) => {
    await appendFour(run);
    const { head } = await run(Audit.use((a) => a.verify()));
    // Event 4 rewritten with other data, rehashed and linked as a careful forger would.
    const fourth = (await kv.get<AuditEvent>(["audit", 4])).value!;
    const { hash: _h, ...rest } = { ...fourth, data: { type: "plugin.removed" } };
    await kv.set(["audit", 4], { ...rest, hash: createHash("sha256").update(canonicalJson(rest)).digest("hex") });
    assert.equal((await run(Audit.use((a) => a.verify()))).ok, true, "the chain alone cannot tell");
    const verdict = await run(Audit.use((a) => a.verify(head)));
    assert.equal(verdict.ok, false);
    assert.match(verdict.anchor?.problem ?? "", /event 4 has another hash/);
    // A chain broken before the anchor says so, rather than that the anchor's event is gone.
    await kv.delete(["audit", 2]);
    const broken = await run(Audit.use((a) => a.verify(head)));
    assert.equal(broken.brokenAt, 3);
    assert.match(broken.anchor?.problem ?? "", /the chain breaks at event 3, at or before the anchor's event 4/);
  });
});
