/**
 * @module
 * Memory on real PGlite with pgvector in a temp dir: provenance on every
 * item, writes idempotent per scope, hybrid recall with filters on kind,
 * tags, time, scope and provenance, the retrieval log, undoing a run's
 * memory and record writes, deterministic summaries, validated records,
 * schema migrations — with the database closed and opened again in between.
 */
import assert from "node:assert/strict";
import { Effect, Layer, ManagedRuntime } from "effect";
import { PGlite } from "@electric-sql/pglite";
import { vector } from "@electric-sql/pglite-pgvector";
import { KeelConfig } from "../../core/config/mod.ts";
import {
  embedOffline,
  Memory,
  MemoryDb,
  MIGRATIONS,
  OFFLINE_DIM,
  type Provenance,
  Records,
  summarizeContext,
} from "../../core/memory/mod.ts";
import { ROOT } from "../_support/keel.ts";
import { freshDataDir } from "./_pg_template.ts";

const configLayer = (dataDir: string) =>
  KeelConfig.layer({
    dataDir,
    hostname: "127.0.0.1",
    port: 0,
    token: "t",
    policiesDir: `${ROOT}/policies`,
    root: ROOT,
    rpcTimeoutMs: 1000,
    eagerMemory: true,
  });

/** Memory, Records and their database over `dataDir`. */
export const memoryRuntime = (dataDir: string, embedder: Layer.Layer<never> = Layer.empty) =>
  ManagedRuntime.make(Memory.layer.pipe(Layer.provide(embedder), Layer.provide(configLayer(dataDir))));

type Rt = ReturnType<typeof memoryRuntime>;

/** Run `fn` with a fresh temp dir; `open()` gives a runtime over it (closed at the end). */
const withDir = async (fn: (open: () => Rt, dir: string) => Promise<void>, options: { empty?: boolean } = {}) => {
  const dir = options.empty ? await Deno.makeTempDir({ prefix: "keel-memory-" }) : await freshDataDir();
  const opened: Rt[] = [];
  try {
    await fn(() => {
      const rt = memoryRuntime(dir);
      opened.push(rt);
      return rt;
    }, dir);
  } finally {
    for (const rt of opened) await rt.dispose().catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
};

const run = (id: string, seq = 1, plugin = "crm_agent"): Provenance => ({
  runId: id,
  seq,
  plugin,
  source: "workflow:follow_up",
});
const operator: Provenance = { source: "operator" };

Deno.test("`Memory.remember()` puts provenance on every item, writes once per scope, and keeps it all across a restart", async () => {
  await withDir(async (open) => {
    const first = open();
    const [a, b, c] = await first.runPromise(Effect.gen(function* () {
      const m = yield* Memory;
      const a = yield* m.remember({
        scope: "agent:x",
        kind: "fact",
        text: "Ada prefers email over calls",
        provenance: run("run_a"),
      });
      const b = yield* m.remember({
        scope: "agent:x",
        kind: "fact",
        text: "Ada prefers email over calls",
        provenance: run("run_b"),
      });
      const c = yield* m.remember({
        scope: "agent:y",
        kind: "fact",
        text: "Ada prefers email over calls",
        provenance: run("run_a"),
      });
      yield* m.remember({
        scope: "agent:x",
        kind: "note",
        text: "Invoices go out on the first Monday",
        tags: ["billing"],
        provenance: operator,
      });
      return [a, b, c];
    }));
    assert.equal(a.created, true);
    assert.deepEqual(b, { id: a.id, created: false }, "same text in the same scope is written once");
    assert.equal(c.created, true, "another scope keeps its own copy");
    assert.notEqual(c.id, a.id);
    await first.dispose();

    const again = open();
    const { hits, item } = await again.runPromise(Effect.gen(function* () {
      const m = yield* Memory;
      const hits = yield* m.recall("how does Ada like to be contacted? email", { scope: "agent:x" }, {
        actor: "operator",
      });
      return { hits: hits.items, item: yield* m.get(a.id) };
    }));
    assert.equal(hits.length, 2);
    assert.equal(hits[0].text, "Ada prefers email over calls");
    assert.ok(hits[0].score > hits[1].score);
    for (const h of hits) {
      assert.match(h.provenance.contentHash, /^[0-9a-f]{64}$/);
      assert.equal(h.provenance.embedder, "hash-ngram-384");
      assert.ok(h.provenance.source);
      assert.ok(!Number.isNaN(Date.parse(h.createdAt)));
    }
    assert.deepEqual(
      { ...item!.provenance, contentHash: "…" },
      {
        runId: "run_a",
        seq: 1,
        plugin: "crm_agent",
        source: "workflow:follow_up",
        contentHash: "…",
        embedder: "hash-ngram-384",
      },
      "the first writer is the item's provenance",
    );
    assert.deepEqual(hits[1].provenance.runId, undefined, "the operator's note has no run");
    assert.equal(hits[1].provenance.source, "operator");
  });
});

Deno.test("`Memory.remember()` refuses an unknown kind, empty or oversized text and bad tags, and writes nothing", async () => {
  await withDir(async (open) => {
    const rt = open();
    const bad = [
      { kind: "secret", text: "x" },
      { kind: "fact", text: "   " },
      { kind: "fact", text: "x".repeat(16_001) },
      { kind: "fact", text: "ok", tags: ["a\u0000b"] },
      { kind: "fact", text: "ok", tags: Array.from({ length: 33 }, (_, i) => `t${i}`) },
    ];
    for (const item of bad) {
      const exit = await rt.runPromiseExit(
        Memory.use((m) => m.remember({ scope: "s", ...item, provenance: operator })),
      );
      assert.equal(exit._tag, "Failure", JSON.stringify(item).slice(0, 60));
      assert.match(String(exit.cause), /InvalidInputError/);
    }
    const count = await rt.runPromise(
      MemoryDb.use((db) =>
        db.run("count", async (pg) => (await pg.query("select count(*)::int as n from memory_items")).rows[0])
      ),
    );
    assert.deepEqual(count, { n: 0 });
  });
});

Deno.test("`Memory.recall()` fuses vector and full-text search and filters on kind, tags, time, scope and provenance", async () => {
  await withDir(async (open) => {
    const rt = open();
    const recall = (query: string, options: Record<string, unknown> = {}) =>
      rt.runPromise(Memory.use((m) => m.recall(query, options, { actor: "operator" })));
    const early = await rt.runPromise(Memory.use((m) =>
      m.rememberAll([
        {
          scope: "agent:crm",
          kind: "fact",
          text: "Ada Lovelace pays invoices by bank transfer",
          tags: ["client", "billing"],
          provenance: run("run_1", 1),
        },
        {
          scope: "agent:crm",
          kind: "preference",
          text: "Ada prefers short emails in the morning",
          tags: ["client"],
          provenance: run("run_1", 2),
        },
        {
          scope: "agent:crm",
          kind: "note",
          text: "The quarterly VAT return is due in April",
          tags: ["billing"],
          provenance: run("run_2", 1, "tax_agent"),
        },
        {
          scope: "agent:ops",
          kind: "fact",
          text: "Ada's server runs in Frankfurt",
          tags: ["client"],
          provenance: operator,
        },
      ])
    ));
    assert.equal(early.length, 4);
    await new Promise((r) => setTimeout(r, 15)); // so the next items are strictly later
    await rt.runPromise(Memory.use((m) =>
      m.remember({
        scope: "agent:crm",
        kind: "fact",
        text: "Grace Hopper asked for a quote on invoices",
        tags: ["lead", "billing"],
        provenance: { source: "connector:imap", plugin: "imap" },
      })
    ));
    const late = await recall("Grace Hopper quote");
    const boundary = late.items.find((i) => i.text.startsWith("Grace"))!.createdAt;

    const all = await recall("invoices");
    assert.equal(all.items.length, 5, "every item is a vector candidate");
    assert.ok(all.items.every((i) => i.vectorRank !== undefined && i.similarity !== undefined));
    const textHits = all.items.filter((i) => i.textRank !== undefined).map((i) => i.text).sort();
    assert.deepEqual(textHits, [
      "Ada Lovelace pays invoices by bank transfer",
      "Grace Hopper asked for a quote on invoices",
    ]);
    assert.ok(all.items[0].text.includes("invoices"), "agreement of both searches ranks first");
    assert.ok(all.items.every((x, i, xs) => i === 0 || xs[i - 1].score >= x.score), "best first");

    const texts = async (q: string, o: Record<string, unknown>) => (await recall(q, o)).items.map((i) => i.text).sort();
    assert.deepEqual(await texts("Ada", { kind: ["preference"] }), ["Ada prefers short emails in the morning"]);
    assert.deepEqual(await texts("Ada", { kind: ["preference", "note"], scope: "agent:crm" }), [
      "Ada prefers short emails in the morning",
      "The quarterly VAT return is due in April",
    ]);
    assert.deepEqual(await texts("Ada", { tags: ["client", "billing"] }), [
      "Ada Lovelace pays invoices by bank transfer",
    ]);
    assert.deepEqual(await texts("Ada", { scope: "agent:ops" }), ["Ada's server runs in Frankfurt"]);
    assert.deepEqual(await texts("anything", { runId: "run_2" }), ["The quarterly VAT return is due in April"]);
    assert.deepEqual(await texts("anything", { plugin: "imap" }), ["Grace Hopper asked for a quote on invoices"]);
    assert.deepEqual(await texts("anything", { source: "operator" }), ["Ada's server runs in Frankfurt"]);
    assert.deepEqual(await texts("anything", { since: boundary }), ["Grace Hopper asked for a quote on invoices"]);
    assert.equal((await texts("anything", { until: boundary })).length, 4);
    assert.deepEqual(await texts("anything", { limit: 2 }).then((t) => t.length), 2);
    assert.deepEqual(await texts("Ada", { tags: ["nope"] }), [], "a filter nothing matches returns nothing");
  });
});

Deno.test("every recall is logged with its query, filters, returned ids and scores, run and step, and the log survives a restart", async () => {
  await withDir(async (open) => {
    const rt = open();
    const ctx = (seq: number) => ({ actor: "agent:crm", runId: "run_log", seq, plugin: "crm" });
    const { first, second } = await rt.runPromise(Effect.gen(function* () {
      const m = yield* Memory;
      yield* m.remember({ scope: "agent:crm", kind: "fact", text: "Ada pays by bank transfer", provenance: operator });
      yield* m.remember({ scope: "agent:crm", kind: "fact", text: "Bob pays by card", provenance: operator });
      const first = yield* m.recall("how does Ada pay", { scope: "agent:crm", limit: 1 }, ctx(2));
      // The same step recalled again (a crash before its journal entry) replaces its log entry.
      yield* m.recall("something else entirely", { scope: "agent:crm" }, ctx(4));
      const second = yield* m.recall("who pays by card", { scope: "agent:crm", kind: ["fact"] }, ctx(4));
      yield* m.recall("Ada", {}, { actor: "operator" });
      return { first, second };
    }));
    await rt.dispose();
    const log = await open().runPromise(Memory.use((m) => m.recalls("run_log")));
    assert.equal(log.length, 2, "one entry per step; the operator's search is not the run's");
    assert.deepEqual(log.map((e) => [e.id, e.seq, e.runId, e.plugin, e.actor]), [
      [first.id, 2, "run_log", "crm", "agent:crm"],
      [second.id, 4, "run_log", "crm", "agent:crm"],
    ]);
    assert.equal(log[0].query, "how does Ada pay");
    assert.deepEqual(log[0].filters, { scope: "agent:crm", limit: 1 });
    assert.equal(log[1].query, "who pays by card");
    assert.deepEqual(log[1].filters, { scope: "agent:crm", kind: ["fact"], limit: 10 });
    assert.deepEqual(
      log[1].results.map((r) => [r.id, r.score, r.text]),
      second.items.map((i) => [i.id, i.score, i.text]),
      "the log holds exactly what was returned, with its scores",
    );
    assert.equal(log[0].results.length, 1);
    assert.equal(log[0].results[0].text, "Ada pays by bank transfer");
    assert.equal(log[0].embedder, "hash-ngram-384");
  });
});

Deno.test("`Memory.revertRun()` undoes a run's memory and record writes, keeps what others also wrote, and restores replaced records — across a restart", async () => {
  await withDir(async (open) => {
    const rt = open();
    const ids = await rt.runPromise(Effect.gen(function* () {
      const m = yield* Memory;
      const r = yield* Records;
      yield* r.define("contacts", { type: "object", properties: { email: { type: "string" } } }, "operator");
      const mine = yield* m.remember({
        scope: "agent:crm",
        kind: "fact",
        text: "only run A said this",
        provenance: run("run_A", 1),
      });
      const shared = yield* m.remember({
        scope: "agent:crm",
        kind: "fact",
        text: "both runs said this",
        provenance: run("run_A", 2),
      });
      yield* m.remember({ scope: "agent:crm", kind: "fact", text: "both runs said this", provenance: run("run_B", 5) });
      const opNote = yield* m.remember({
        scope: "agent:crm",
        kind: "note",
        text: "the operator said this",
        provenance: operator,
      });
      yield* m.remember({
        scope: "agent:crm",
        kind: "note",
        text: "the operator said this",
        provenance: run("run_A", 3),
      });
      const theirs = yield* m.remember({
        scope: "agent:crm",
        kind: "fact",
        text: "only run B said this",
        provenance: run("run_B", 6),
      });
      yield* m.recall("what did run A say", { scope: "agent:crm" }, { actor: "agent:crm", runId: "run_A", seq: 4 });

      yield* r.put("contacts", "ada", { email: "ada@old.test" }, operator);
      yield* r.put("contacts", "ada", { email: "ada@new.test" }, run("run_A", 7));
      yield* r.put("contacts", "bob", { email: "bob@a.test" }, run("run_A", 8));
      yield* r.put("contacts", "carol", { email: "carol@b.test" }, run("run_B", 9));
      yield* r.put("contacts", "dan", { email: "dan@x.test" }, run("run_A", 10));
      const danB = yield* r.put("contacts", "dan", { email: "dan@x.test" }, run("run_B", 11));
      assert.deepEqual([danB.created, danB.changed], [false, false]);
      return { mine: mine.id, shared: shared.id, opNote: opNote.id, theirs: theirs.id };
    }));
    await rt.dispose();

    const rt2 = open();
    const report = await rt2.runPromise(Memory.use((m) => m.revertRun("run_A")));
    assert.deepEqual(report.memory.removed, [ids.mine]);
    assert.deepEqual(report.memory.kept.sort(), [ids.shared, ids.opNote].sort());
    assert.deepEqual(report.records.removed, [{ collection: "contacts", id: "bob" }]);
    assert.deepEqual(
      report.records.restored.map((r) => r.id).sort(),
      ["ada", "dan"],
    );
    await rt2.dispose();

    const rt3 = open();
    const after = await rt3.runPromise(Effect.gen(function* () {
      const m = yield* Memory;
      const r = yield* Records;
      return {
        mine: yield* m.get(ids.mine),
        shared: yield* m.get(ids.shared),
        opNote: yield* m.get(ids.opNote),
        theirs: yield* m.get(ids.theirs),
        ada: yield* r.get("contacts", "ada"),
        bob: yield* r.get("contacts", "bob"),
        carol: yield* r.get("contacts", "carol"),
        dan: yield* r.get("contacts", "dan"),
        log: yield* m.recalls("run_A"),
        again: yield* m.revertRun("run_A"),
      };
    }));
    assert.equal(after.mine, undefined, "the run's own item is gone");
    assert.equal(after.shared?.provenance.runId, "run_B", "an item another run also wrote stays, now citing that run");
    assert.equal(after.shared?.provenance.seq, 5);
    assert.equal(after.opNote?.provenance.source, "operator");
    assert.equal(after.opNote?.provenance.runId, undefined);
    assert.equal(after.theirs?.provenance.runId, "run_B");
    assert.deepEqual(
      after.ada?.data,
      { email: "ada@old.test" },
      "a record the run changed is back to its previous version",
    );
    assert.equal(after.ada?.provenance.source, "operator");
    assert.equal(after.ada?.version, 1);
    assert.equal(after.bob, undefined, "a record the run created is gone");
    assert.deepEqual(after.carol?.data, { email: "carol@b.test" });
    assert.equal(after.dan?.provenance.runId, "run_B", "a record another run also wrote stays");
    assert.equal(after.log.length, 1, "the retrieval log is history: it stays");
    assert.ok(after.log[0].results.some((x) => x.id === ids.mine && x.removed === true));
    assert.deepEqual(after.again.memory, { removed: [], kept: [] }, "reverting twice changes nothing");
    assert.deepEqual(after.again.records, { removed: [], restored: [] });
  });
});

Deno.test("summaries are deterministic: the same context gives the same text and the same memory item, also after a restart", async () => {
  const entries = [
    { role: "user", text: "Please send Ada the March invoice. She asked for it twice.", ref: "step:1" },
    { role: "tool:records.get", text: "Invoice 2025-03 for Ada Lovelace: 1,200 EUR, due April 15.", ref: "step:2" },
    {
      role: "assistant",
      text: "Drafted the email to Ada with invoice 2025-03 attached. Waiting for approval.",
      ref: "step:3",
    },
    { role: "user", text: "Also remind me about the VAT return.", ref: "step:4" },
  ];
  const a = summarizeContext(entries, 300);
  assert.deepEqual(summarizeContext(structuredClone(entries), 300), a);
  assert.ok(a.text.length <= 300, `${a.text.length} > 300`);
  assert.match(a.text, /^Summary of 4 entries \(step:1 … step:4\):/);
  assert.deepEqual(a.summarized, ["step:1", "step:2", "step:3", "step:4"]);
  const lines = a.text.split("\n").slice(1);
  const order = lines.map((l) => entries.findIndex((e) => l.includes(e.text.split(".")[0].slice(0, 20))));
  assert.deepEqual([...order].sort((x, y) => x - y), order, "quoted sentences keep their original order");

  await withDir(async (open) => {
    const rt = open();
    const input = { scope: "agent:crm", entries, maxChars: 300, tags: ["context"], provenance: run("run_S", 5) };
    const one = await rt.runPromise(Memory.use((m) => m.summarize(input)));
    assert.equal(one.created, true);
    assert.equal(one.text, a.text);
    assert.equal(one.summarized, 4);
    await rt.dispose();
    const rt2 = open();
    const { two, item } = await rt2.runPromise(Effect.gen(function* () {
      const m = yield* Memory;
      const two = yield* m.summarize(structuredClone(input));
      return { two, item: yield* m.get(one.id) };
    }));
    assert.deepEqual(two, { ...one, created: false }, "same inputs, same summary, same item");
    assert.equal(item?.kind, "summary");
    assert.deepEqual(item?.tags, ["context"]);
    assert.equal(item?.cites?.runId, "run_S");
    assert.equal(item?.cites?.seq, 5);
    assert.deepEqual(item?.cites?.summarized, ["step:1", "step:2", "step:3", "step:4"]);
    assert.deepEqual(item?.cites?.quoted, a.quoted);
    assert.match(item?.cites?.inputHash ?? "", /^[0-9a-f]{64}$/);
    const refused = await rt2.runPromiseExit(Memory.use((m) => m.summarize({ ...input, entries: [] })));
    assert.match(String(refused._tag === "Failure" && refused.cause), /non-empty list/);
  });
});

Deno.test("records are validated against their collection's schema on every write, versioned, and queried by containment", async () => {
  await withDir(async (open) => {
    const rt = open();
    const schema = {
      type: "object",
      required: ["number", "client", "amount"],
      additionalProperties: false,
      properties: {
        number: { type: "string", pattern: "^INV-\\d{4}$" },
        client: { type: "string" },
        amount: { type: "integer", minimum: 0 },
        status: { enum: ["open", "paid"] },
      },
    };
    const out = await rt.runPromise(Effect.gen(function* () {
      const r = yield* Records;
      const defined = yield* r.define("invoices", schema, "operator");
      const again = yield* r.define("invoices", structuredClone(schema), "operator");
      const put1 = yield* r.put("invoices", "INV-0001", {
        number: "INV-0001",
        client: "ada",
        amount: 1200,
        status: "open",
      }, run("run_R", 1));
      const same = yield* r.put("invoices", "INV-0001", {
        status: "open",
        amount: 1200,
        client: "ada",
        number: "INV-0001",
      }, run("run_R", 2));
      const paid = yield* r.put("invoices", "INV-0001", {
        number: "INV-0001",
        client: "ada",
        amount: 1200,
        status: "paid",
      }, run("run_R", 3));
      yield* r.put("invoices", "INV-0002", { number: "INV-0002", client: "bob", amount: 90, status: "open" }, operator);
      yield* r.put("invoices", "INV-0003", { number: "INV-0003", client: "ada", amount: 5, status: "open" }, operator);
      const open_ = yield* r.query("invoices", { where: { status: "open" } });
      const page = yield* r.query("invoices", { limit: 1, after: "INV-0001" });
      const list = yield* r.collections;
      return { defined, again, put1, same, paid, open_, page, list };
    }));
    assert.equal(out.defined.created, true);
    assert.deepEqual([out.again.created, out.again.changed], [false, false]);
    assert.deepEqual([out.put1.created, out.put1.changed, out.put1.record.version], [true, true, 1]);
    assert.deepEqual(
      [out.same.created, out.same.changed, out.same.record.version],
      [false, false, 1],
      "key order does not matter",
    );
    assert.deepEqual([out.paid.changed, out.paid.record.version], [true, 2]);
    assert.equal(out.paid.record.provenance.runId, "run_R");
    assert.equal(out.paid.record.provenance.seq, 3);
    assert.equal(out.paid.record.provenance.schemaHash, out.defined.collection.schemaHash);
    assert.deepEqual(out.open_.map((r) => r.id), ["INV-0002", "INV-0003"]);
    assert.deepEqual(out.page.map((r) => r.id), ["INV-0002"]);
    assert.deepEqual(out.list.map((c) => [c.name, c.records]), [["invoices", 3]]);

    const failure = async (e: Effect.Effect<unknown, unknown, Records>) => {
      const exit = await rt.runPromiseExit(e);
      assert.equal(exit._tag, "Failure");
      return exit._tag === "Failure" ? String(exit.cause) : "";
    };
    const put = (id: string, data: unknown) => Records.use((r) => r.put("invoices", id, data, operator));
    assert.match(await failure(put("INV-0009", { number: "INV-0009", client: "ada" })), /field "amount" is required/);
    assert.match(await failure(put("INV-0009", { number: "9", client: "ada", amount: 1 })), /field "number"/);
    assert.match(await failure(put("INV-0009", { number: "INV-0009", client: "ada", amount: -1 })), /field "amount"/);
    assert.match(await failure(put("bad id!", { number: "INV-0009", client: "ada", amount: 1 })), /record id/);
    assert.match(
      await failure(Records.use((r) => r.put("nope", "x", {}, operator))),
      /NotFoundError.*No collection "nope"/s,
    );
    assert.match(
      await failure(Records.use((r) => r.define("Bad Name", { type: "object" }, "operator"))),
      /collection name/,
    );
    assert.match(
      await failure(Records.use((r) => r.define("lists", { type: "array" }, "operator"))),
      /"type": "object"/,
    );
    assert.match(
      await failure(
        Records.use((r) => r.define("broken", { type: "object", properties: { a: { pattern: "([" } } }, "operator")),
      ),
      /not a usable JSON Schema/,
    );
    assert.match(
      await failure(
        Records.use((r) =>
          r.put("invoices", "INV-0009", { number: "INV-0009", client: "x".repeat(40_000), amount: 1 }, operator)
        ),
      ),
      /at most 32768/,
    );
    const still = await rt.runPromise(Records.use((r) => r.query("invoices")));
    assert.equal(still.length, 3, "refused writes leave nothing behind");
  });
});

Deno.test("a memory database made before migrations 2–6 is upgraded in place, and one from a newer Keel is refused", async () => {
  await withDir(async (open, dir) => {
    const old = await PGlite.create(`${dir}/pg`, { extensions: { vector } });
    await old.exec(
      "create table keel_migrations (version integer primary key, applied_at timestamptz not null default now())",
    );
    await old.exec(MIGRATIONS[0].sql);
    await old.query("insert into keel_migrations (version) values (1)");
    await old.query(
      `insert into memory_items (id, scope, kind, text, content_hash, embedder, embedding, run_id, seq, plugin, source)
       values ('mem_old', 'agent:x', 'fact', 'written by version one', 'h', 'hash-ngram-384', $1, 'run_old', 1, 'x', 'workflow:w')`,
      [JSON.stringify(embedOffline("written by version one"))],
    );
    await old.close();

    const rt = open();
    const { hits, report, versions } = await rt.runPromise(Effect.gen(function* () {
      const m = yield* Memory;
      const hits = yield* m.recall("version one", {}, { actor: "operator" });
      const report = yield* m.revertRun("run_old");
      const versions = yield* MemoryDb.use((db) =>
        db.run(
          "versions",
          async (pg) => (await pg.query<{ version: number }>("select version from keel_migrations order by 1")).rows,
        )
      );
      return { hits, report, versions };
    }));
    assert.equal(hits.items[0].id, "mem_old");
    assert.deepEqual(report.memory.removed, ["mem_old"], "old items got their write history, so undo works on them");
    assert.deepEqual(versions.map((v) => v.version), MIGRATIONS.map((m) => m.version));
    await rt.runPromise(
      MemoryDb.use((db) => db.run("bump", (pg) => pg.query("insert into keel_migrations (version) values (99)"))),
    );
    await rt.dispose();

    const newer = open();
    const exit = await newer.runPromiseExit(Memory.use((m) => m.get("x")));
    assert.equal(exit._tag, "Failure");
    assert.match(
      String(exit._tag === "Failure" && exit.cause),
      /schema version 99; this Keel understands up to 6: upgrade Keel/,
    );
  }, { empty: true });
});

Deno.test("`embedOffline()` is deterministic, unit length, and closer for overlapping texts", () => {
  const a = embedOffline("send the invoice to Ada");
  assert.deepEqual(a, embedOffline("send the invoice to Ada"));
  assert.equal(a.length, OFFLINE_DIM);
  const dot = (x: number[], y: number[]) => x.reduce((s, v, i) => s + v * y[i], 0);
  assert.ok(Math.abs(dot(a, a) - 1) < 1e-3);
  assert.ok(dot(a, embedOffline("invoice for Ada")) > dot(a, embedOffline("walk the dog at noon")));
});

Deno.test("the same text written again keeps one item with every write's tags; undoing a write takes its tags back", async () => {
  await withDir(async (open) => {
    const out = await open().runPromise(Effect.gen(function* () {
      const m = yield* Memory;
      const text = "Ada Lovelace is a client";
      const write = (runId: string, tags: string[]) =>
        m.remember({ scope: "agent:crm", kind: "fact", text, tags, provenance: run(runId, 1) });
      const first = yield* write("run_a", ["client"]);
      const second = yield* write("run_b", ["vip"]);
      const vip = yield* m.recall("Ada Lovelace", { scope: "agent:crm", tags: ["vip"] }, { actor: "operator" });
      const both = yield* m.recall("Ada Lovelace", { scope: "agent:crm" }, { actor: "operator" });
      yield* m.revertRun("run_a");
      const after = yield* m.recall("Ada Lovelace", { scope: "agent:crm" }, { actor: "operator" });
      return {
        created: [first.created, second.created],
        same: first.id === second.id,
        vip: vip.items.map((i) => i.id),
        both: both.items.map((i) => i.tags),
        after: after.items.map((i) => ({ run: i.provenance.runId, tags: i.tags })),
      };
    }));
    assert.deepEqual(out.created, [true, false]);
    assert.equal(out.same, true);
    assert.equal(out.vip.length, 1, "run_b's tag finds the item");
    assert.deepEqual(out.both, [["client", "vip"]]);
    assert.deepEqual(out.after, [{ run: "run_b", tags: ["vip"] }], "run_a's write is undone, with its tag");
  });
});
