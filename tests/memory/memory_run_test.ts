/**
 * @module
 * Memory through a real Keel: a real agent Worker calls `ctx.memory` and
 * `ctx.records`, the orchestrator journals each call, the run view shows what
 * the run recalled and why, a replay after a restart returns the recorded
 * recall even though memory changed, and the operator searches memory and
 * reads records over HTTP and the CLI.
 */
import assert from "node:assert/strict";
import { Memory } from "../../core/memory/mod.ts";
import { ROOT, startTestKeel, TEST_TOKEN, type TestKeel } from "../_support/keel.ts";
import { runCli } from "../_support/process.ts";
import { freshDataDir } from "./_pg_template.ts";

const FIXTURES = `${ROOT}/tests/memory/fixtures`;
const POLICY = `default: allow
rules:
  - id: hold-memo
    match: { effect: "memo.*" }
    decision: approve
    approval: { approver: operator, expires: 72h }
`;

const start = (dataDir: string) => startTestKeel({ dataDir, policies: { "memo.yaml": POLICY } });

const install = async (k: TestKeel) => {
  for (const name of ["memo_gate", "memory_agent"]) {
    const res = await k.api("POST", "/api/plugins", { path: `${FIXTURES}/${name}`, grant: {} });
    assert.equal(res.status, 201, JSON.stringify(res.body));
  }
};

/** Run a workflow to its end (or first pause) and return the run view. */
const runWorkflow = async (k: TestKeel, workflow: string, input: unknown) => {
  const res = await k.api("POST", `/api/workflows/${workflow}/runs?wait=60`, { input });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  return res.body;
};

/** A Keel over a fresh data dir with the memory fixtures installed; closed and removed afterwards. */
const withKeel = async (fn: (k: TestKeel, dataDir: string) => Promise<TestKeel | void>) => {
  const dataDir = await freshDataDir();
  let k = await start(dataDir);
  try {
    await install(k);
    k = (await fn(k, dataDir)) ?? k;
  } finally {
    await k.close().catch(() => {});
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
};

const FACTS = [
  { text: "Ada Lovelace pays invoices by bank transfer", kind: "fact", tags: ["client", "billing"] },
  { text: "Ada prefers short emails in the morning", kind: "preference", tags: ["client"] },
  { text: "The VAT return is due in April", kind: "note", tags: ["tax"] },
];

Deno.test("a workflow's recall is journaled and shown in the run view; after a restart its replay returns the recorded answer", async () => {
  await withKeel(async (k, dataDir) => {
    const learned = await runWorkflow(k, "learn", { items: FACTS });
    assert.equal(learned.status, "succeeded", JSON.stringify(learned));
    assert.ok(learned.output.every((r: { created: boolean }) => r.created));

    const parked = await runWorkflow(k, "recall_hold_recall", { query: "how does Ada pay invoices", limit: 2 });
    assert.equal(parked.status, "waiting_approval", JSON.stringify(parked));
    const runId = parked.runId as string;
    assert.deepEqual(parked.steps.map((s: { kind: string; name: string }) => [s.kind, s.name]).slice(0, 1), [[
      "memory",
      "recall",
    ]]);
    const before = parked.steps[0].value;
    assert.equal(before.items.length, 2);
    assert.equal(before.items[0].text, "Ada Lovelace pays invoices by bank transfer");
    assert.equal(before.items[0].provenance.plugin, "memory_agent");
    assert.equal(parked.recalls.length, 1, "the run view shows what was recalled");
    const [entry] = parked.recalls;
    assert.deepEqual([entry.id, entry.runId, entry.seq, entry.query], [
      before.recallId,
      runId,
      1,
      "how does Ada pay invoices",
    ]);
    assert.deepEqual(entry.filters, { limit: 2, scope: "agent:memory_agent" });
    assert.deepEqual(
      entry.results.map((r: { id: string; score: number; text: string }) => [r.id, r.score, r.text]),
      before.items.map((i: { id: string; score: number; text: string }) => [i.id, i.score, i.text]),
    );
    assert.ok(entry.results.every((r: { vectorRank?: number; textRank?: number }) => r.vectorRank || r.textRank));

    // Memory changes while the run waits: a better match arrives.
    const more = await runWorkflow(k, "learn", {
      items: [{ text: "Ada pays invoices by bank transfer within 10 days, says Ada", kind: "fact" }],
    });
    assert.equal(more.status, "succeeded");

    await k.close();
    const k2 = await start(dataDir);
    const approvalId = parked.waitingFor.approvalId;
    assert.equal((await k2.api("POST", `/api/approvals/${approvalId}/approve`, {})).status, 200);
    const done = (await k2.api("GET", `/api/runs/${runId}?wait=60`)).body;
    assert.equal(done.status, "succeeded", JSON.stringify(done));
    assert.deepEqual(done.output.first, before, "the recorded recall is replayed exactly");
    assert.notDeepEqual(
      done.output.second.items.map((i: { id: string }) => i.id),
      before.items.map((i: { id: string }) => i.id),
    );
    assert.ok(done.output.second.items.some((i: { text: string }) => i.text.includes("within 10 days")));
    assert.deepEqual(done.recalls.map((r: { seq: number }) => r.seq), [1, 3]);
    return k2;
  });
});

Deno.test("ctx.records writes validated records with the run as provenance, and the operator reads and writes them over HTTP", async () => {
  await withKeel(async (k) => {
    const schema = {
      type: "object",
      required: ["name", "email"],
      properties: { name: { type: "string" }, email: { type: "string" }, vip: { type: "boolean" } },
    };
    const defined = await k.api("PUT", "/api/collections/contacts", { schema });
    assert.equal(defined.status, 200, JSON.stringify(defined.body));
    assert.equal(defined.body.created, true);

    const view = await runWorkflow(k, "contacts", {
      contacts: [
        { id: "ada", data: { name: "Ada", email: "ada@example.test", vip: true } },
        { id: "bob", data: { name: "Bob", email: "bob@example.test" } },
        { id: "eve", data: { name: "Eve" } },
      ],
    });
    assert.equal(view.status, "succeeded", JSON.stringify(view));
    const out = view.output;
    assert.deepEqual(out.written.slice(0, 2).map((w: { created: boolean }) => w.created), [true, true]);
    assert.equal(out.written[2].error.tag, "InvalidInputError");
    assert.match(out.written[2].error.message, /field "email" is required/);
    assert.deepEqual(out.first.data, { name: "Ada", email: "ada@example.test", vip: true });
    assert.deepEqual(
      { runId: out.first.provenance.runId, seq: out.first.provenance.seq, plugin: out.first.provenance.plugin },
      { runId: view.runId, seq: 1, plugin: "memory_agent" },
    );
    assert.equal(out.first.provenance.source, "workflow:contacts");
    assert.equal(out.missing, null);
    assert.deepEqual(out.vip.records.map((r: { id: string }) => r.id), ["ada"]);
    assert.equal(out.unknown.error.tag, "NotFoundError");
    assert.deepEqual(
      view.steps.map((s: { seq: number; kind: string; name: string; status: string }) =>
        `${s.seq} ${s.kind} ${s.name} ${s.status}`
      ),
      [
        "1 memory records.put done",
        "2 memory records.put done",
        "3 memory records.put failed",
        "4 memory records.get done",
        "5 memory records.get done",
        "6 memory records.query done",
        "7 memory records.get failed",
      ],
      "every records call is a step, a refused one recorded as failed (a replay answers it the same way)",
    );

    const ada = await k.api("GET", "/api/collections/contacts/records/ada");
    assert.equal(ada.status, 200);
    assert.equal(ada.body.record.provenance.runId, view.runId);
    const put = await k.api("PUT", "/api/collections/contacts/records/ada", {
      data: { name: "Ada", email: "ada@new.test", vip: true },
    });
    assert.equal(put.status, 200, JSON.stringify(put.body));
    assert.deepEqual([put.body.changed, put.body.record.version, put.body.record.provenance.source], [
      true,
      2,
      "operator",
    ]);
    const listed = await k.api("GET", `/api/collections/contacts/records?where=${encodeURIComponent('{"vip":true}')}`);
    assert.deepEqual(listed.body.records.map((r: { data: { email: string } }) => r.data.email), ["ada@new.test"]);
    const collections = await k.api("GET", "/api/collections");
    assert.deepEqual(collections.body.collections.map((c: { name: string; records: number }) => [c.name, c.records]), [[
      "contacts",
      2,
    ]]);

    const errors = [
      [
        await k.api("PUT", "/api/collections/contacts/records/eve", { data: { name: "Eve" } }),
        400,
        /"email" is required/,
      ],
      [await k.api("GET", "/api/collections/contacts/records/nobody"), 404, /No record "nobody"/],
      [await k.api("GET", "/api/collections/nope/records"), 404, /No collection "nope"/],
      [await k.api("GET", "/api/collections/contacts/records?where=%7Bnot"), 400, /"where" must be a JSON object/],
      [await k.api("GET", "/api/collections/contacts/records?limit=0"), 400, /"limit"/],
      [await k.api("PUT", "/api/collections/Bad-Name", { schema }), 400, /collection name/],
      [await k.api("PUT", "/api/collections/x", {}), 400, /"schema" is required/],
    ] as const;
    for (const [res, status, message] of errors) {
      assert.equal(res.status, status, JSON.stringify(res.body));
      assert.match(res.body.error.message, message);
    }

    // Undoing the run (what `keel undo` will call) removes the record it created and restores none it did not.
    const report = await k.keel.runtime.runPromise(Memory.use((m) => m.revertRun(view.runId)));
    assert.deepEqual(report.records.removed, [{ collection: "contacts", id: "bob" }]);
    assert.deepEqual(report.records.restored.map((r) => r.id), ["ada"], "the operator's later version stays current");
    assert.equal((await k.api("GET", "/api/collections/contacts/records/bob")).status, 404);
    assert.equal((await k.api("GET", "/api/collections/contacts/records/ada")).body.record.data.email, "ada@new.test");
  });
});

Deno.test("ctx.memory.compact summarizes a context past its budget into a summary item that cites its entries", async () => {
  await withKeel(async (k) => {
    const entries = Array.from({ length: 8 }, (_, i) => ({
      role: i % 2 ? "assistant" : "user",
      text: i % 2
        ? `Noted item ${i}: the invoice for client ${i} goes out on Monday.`
        : `Please prepare the invoice for client ${i + 1}. It is urgent for the March close.`,
      ref: `msg:${i + 1}`,
    }));
    const short = await runWorkflow(k, "compact", { entries: entries.slice(0, 2), budgetChars: 10_000 });
    assert.equal(short.status, "succeeded");
    assert.deepEqual(short.output, entries.slice(0, 2), "under budget nothing changes");
    assert.equal(short.steps.length, 0, "and nothing is journaled");

    const long = await runWorkflow(k, "compact", { entries, budgetChars: 200, keepLast: 2 });
    assert.equal(long.status, "succeeded", JSON.stringify(long));
    const [summary, ...tail] = long.output;
    assert.deepEqual(tail, entries.slice(6));
    assert.equal(summary.role, "summary");
    assert.match(summary.text, /^Summary of 6 entries \(msg:1 … msg:6\):/);
    assert.deepEqual(long.steps.map((s: { kind: string; name: string }) => [s.kind, s.name]), [[
      "memory",
      "summarize",
    ]]);

    const again = await runWorkflow(k, "compact", { entries, budgetChars: 200, keepLast: 2 });
    assert.deepEqual(again.output, long.output, "the same context gives the same summary");
    assert.equal(again.steps[0].value.created, false);

    const found = await k.api("GET", `/api/memory?q=${encodeURIComponent("invoice client")}&kind=summary`);
    assert.equal(found.status, 200, JSON.stringify(found.body));
    assert.equal(found.body.items.length, 1);
    const item = found.body.items[0];
    assert.equal(item.id, summary.ref);
    assert.equal(item.provenance.runId, long.runId, "the summary's provenance is the run that made it");
    assert.deepEqual(item.cites.summarized, ["msg:1", "msg:2", "msg:3", "msg:4", "msg:5", "msg:6"]);
    assert.equal(item.cites.seq, 1);
  });
});

Deno.test("GET /api/memory searches every scope with filters, and refuses bad queries with a clear 400", async () => {
  await withKeel(async (k) => {
    await runWorkflow(k, "learn", { items: FACTS });
    const q = (query: string) => k.api("GET", `/api/memory?${query}`);
    const all = await q("q=Ada");
    assert.equal(all.status, 200);
    assert.match(all.body.recallId, /^rcl_/);
    assert.equal(all.body.items[0].scope, "agent:memory_agent");
    const texts = async (query: string) => (await q(query)).body.items.map((i: { text: string }) => i.text).sort();
    assert.deepEqual(await texts("q=Ada&kind=preference"), ["Ada prefers short emails in the morning"]);
    assert.deepEqual(await texts("q=Ada&tag=client&tag=billing"), ["Ada Lovelace pays invoices by bank transfer"]);
    assert.deepEqual((await texts("q=Ada&kind=fact&kind=note")).length, 2);
    assert.deepEqual(await texts("q=Ada&scope=agent:other"), []);
    assert.equal((await texts("q=Ada&limit=1")).length, 1);

    const bad = [
      ["", /"q" is required/],
      ["q=%20", /"q" is required/],
      ["q=x&kind=secret", /"kind" must be one of fact, preference, note, summary, record-ref/],
      ["q=x&limit=0", /"limit" must be an integer from 1 to 50/],
      ["q=x&limit=many", /"limit"/],
      ["q=x&since=yesterday", /"since" must be an ISO 8601 time/],
      ["q=x&tags=client", /Unknown query parameter "tags"/],
      [`q=${"x".repeat(2001)}`, /at most 2000/],
    ] as const;
    for (const [query, message] of bad) {
      const res = await q(query);
      assert.equal(res.status, 400, `${query}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error.tag, "InvalidInputError");
      assert.match(res.body.error.message, message);
    }
    const denied = await fetch(`${k.url}/api/memory?q=Ada`);
    assert.equal(denied.status, 401);
    await denied.body?.cancel();
  });
});

Deno.test("a workflow may recall only its own agent's memory, with checked options", async () => {
  await withKeel(async (k) => {
    const tries = [
      [{ query: "x", scope: "agent:other" }, /own agent's memory/],
      [{ query: "x", plugin: "other" }, /own agent's memory/],
      [{ query: "" }, /non-empty "query"/],
      [{ query: "x", limit: 500 }, /"limit" must be an integer from 1 to 50/],
      [{ query: "x", colour: "red" }, /Unknown recall option "colour"/],
    ] as const;
    for (const [input, message] of tries) {
      const view = await runWorkflow(k, "recall", input);
      assert.equal(view.status, "succeeded", JSON.stringify(view));
      assert.equal(view.output.error?.tag, "InvalidInputError", JSON.stringify(view.output));
      assert.match(view.output.error.message, message);
    }
  });
});

Deno.test("`keel memory search` prints items with their provenance, and says how to use it", async () => {
  await withKeel(async (k) => {
    await runWorkflow(k, "learn", { items: FACTS });
    const res = await runCli(["memory", "search", "how", "does", "Ada", "pay", "--tag", "billing"], { url: k.url });
    assert.equal(res.code, 0, res.stderr);
    assert.match(res.stdout, /fact\s+mem_\w+\s+Ada Lovelace pays invoices by bank transfer/);
    assert.match(res.stdout, /run run_\w+ step 1 · plugin memory_agent · workflow:learn/);
    assert.match(res.stdout, /tags: client, billing/);
    assert.match(res.stdout, /\(recall rcl_\w+\)/);
    const none = await runCli(["memory", "search", "Ada", "--kind", "summary"], { url: k.url });
    assert.match(none.stdout, /No memory matches "Ada"/);
    const bad = await runCli(["memory", "search", "Ada", "--limit", "0"], { url: k.url });
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /error: InvalidInputError: Option "limit" must be an integer from 1 to 50/);
    const usage = await runCli(["memory", "find", "Ada"], { url: k.url });
    assert.equal(usage.code, 1);
    assert.match(usage.stderr, /Usage: memory search QUERY/);
    const help = await runCli(["memory", "--help"], { url: k.url });
    assert.match(help.stdout, /Usage: deno task keel memory search QUERY/);
  });
});

Deno.test("the memory and records routes answer what Postgres cannot store with a 400 naming it, and store nothing", async (t) => {
  const k = await start(await freshDataDir());
  try {
    const put = await k.api("PUT", "/api/collections/contacts", { schema: { type: "object" } });
    assert.equal(put.status, 200, JSON.stringify(put.body));
    const deep = 5000;
    const cases: Array<[string, () => Promise<{ status: number; body: any }>, RegExp]> = [
      ["a recall query with a NUL", () => k.api("GET", "/api/memory?q=ada%00lovelace"), /NUL character/],
      [
        "a since year Postgres cannot hold",
        () => k.api("GET", "/api/memory?q=ada&since=-010000-01-01T00:00:00Z"),
        /Option "since" must be an ISO 8601 time/,
      ],
      [
        "a record with a NUL",
        () => k.api("PUT", "/api/collections/contacts/records/a", { data: { name: "x\u0000y" } }),
        /NUL character/,
      ],
      [
        "a record with a lone surrogate",
        () => k.api("PUT", "/api/collections/contacts/records/b", { data: { name: "\ud800" } }),
        /lone UTF-16 surrogate/,
      ],
      [
        "a record key with a NUL",
        () => k.api("PUT", "/api/collections/contacts/records/c", { data: { "na\u0000me": "x" } }),
        /NUL character/,
      ],
      [
        "a schema with a NUL",
        () => k.api("PUT", "/api/collections/other", { schema: { type: "object", description: "a\u0000b" } }),
        /NUL character/,
      ],
      [
        "a where with a NUL",
        () => k.api("GET", `/api/collections/contacts/records?where=${encodeURIComponent('{"name":"\\u0000"}')}`),
        /NUL character/,
      ],
      ["an after with a NUL", () => k.api("GET", "/api/collections/contacts/records?after=%00"), /NUL character/],
      [
        "a record nested 5,000 deep (10 KB)",
        async () => {
          const res = await fetch(`${k.url}/api/collections/contacts/records/deep`, {
            method: "PUT",
            headers: { authorization: `Bearer ${TEST_TOKEN}`, "content-type": "application/json" },
            body: `{"data":{"a":${"[".repeat(deep)}${"]".repeat(deep)}}}`,
          });
          return { status: res.status, body: await res.json() };
        },
        /nests deeper than (64|128) levels/,
      ],
    ];
    for (const [name, call, message] of cases) {
      await t.step(name, async () => {
        const r = await call();
        assert.equal(r.status, 400, `${r.status} ${JSON.stringify(r.body).slice(0, 300)}`);
        assert.equal(r.body.error.tag, "InvalidInputError");
        assert.match(r.body.error.message, message);
      });
    }
    assert.deepEqual((await k.api("GET", "/api/collections/contacts/records")).body.records, []);
  } finally {
    await k.close();
  }
});
