/**
 * @module
 * Least privilege for records, through a real Keel (Deno KV, PGlite, plugin
 * Workers and processes): an agent reads only the collections its manifest
 * lists in `records.read` and writes only those in `records.write`. The
 * probe agent is adversarial: it writes what it may only read, reads what it
 * may only write, touches collections it never declared, and forges names
 * (case, spaces, control and zero-width characters, Unicode look-alikes,
 * paths, non-strings). Every refusal is a `PermissionDeniedError` made by
 * the host, recorded as the step's failure (a replay answers it the same
 * way) and audited as `records.denied`; nothing it was refused is read or
 * written. A manifest written before `records` existed gets no records
 * access, and an upgrade that adds a collection (or write to a collection it
 * only read) waits for the operator's grant while the old version serves.
 * `ctx.records.delete` needs `write`, is journaled (a replay is exact) and
 * leaves a tombstone version that undoing the run takes back.
 */
import assert from "node:assert/strict";
import { Records } from "../../core/memory/mod.ts";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { runCli } from "../_support/process.ts";
import { relativePath } from "../fixtures/lifecycle/variant.ts";
import { freshDataDir } from "./_pg_template.ts";

const PROBE = `${ROOT}/tests/memory/fixtures/records_probe`;

type Call = { op: "put" | "delete" | "get" | "query"; collection: unknown; id?: string; data?: unknown };
type Answer = { ok?: any; error?: { tag: string; message: string } };

/** A Keel over a fresh data dir with collections contacts, leads and invoices defined and two records in them. */
const withKeel = async (fn: (k: TestKeel) => Promise<void>) => {
  const dataDir = await freshDataDir();
  const k = await startTestKeel({ dataDir, policies: { "allow.yaml": "default: allow\nrules: []\n" } });
  try {
    for (const name of ["contacts", "leads", "invoices"]) {
      const res = await k.api("PUT", `/api/collections/${name}`, { schema: { type: "object" } });
      assert.equal(res.status, 200, JSON.stringify(res.body));
    }
    for (const [path, data] of [["contacts/ada", { name: "Ada" }], ["invoices/inv1", { amount: 300 }]] as const) {
      const res = await k.api("PUT", `/api/collections/${path}`.replace(/\/([^/]+)$/, "/records/$1"), { data });
      assert.equal(res.status, 200, JSON.stringify(res.body));
    }
    await fn(k);
  } finally {
    await k.close().catch(() => {});
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
  }
};

/** Run the probe workflow with `calls`; returns the run view (its output: one answer per call). */
const probe = async (k: TestKeel, calls: Call[]) => {
  const res = await k.api("POST", "/api/workflows/records_probe/runs?wait=60", { input: { calls } });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  assert.equal(res.body.status, "succeeded", JSON.stringify(res.body));
  return res.body as { runId: string; output: Answer[]; steps: any[]; pluginVersion: string };
};

/** Collection name → record count. */
const counts = async (k: TestKeel) =>
  Object.fromEntries(
    (await k.api("GET", "/api/collections")).body.collections.map((c: { name: string; records: number }) => [
      c.name,
      c.records,
    ]),
  );

/** A copy of the probe in a new temp folder with this version and `records` (none at all when undefined). */
const probeVersion = async (version: string, records: unknown) => {
  const dir = Deno.realPathSync(await Deno.makeTempDir({ prefix: "keel-records-probe-" }));
  const manifest = JSON.parse(await Deno.readTextFile(`${PROBE}/plugin.json`));
  manifest.version = version;
  if (records === undefined) delete manifest.records;
  else manifest.records = records;
  await Deno.writeTextFile(`${dir}/plugin.json`, JSON.stringify(manifest, null, 2));
  const sdk = `${relativePath(dir, `${ROOT}/core/sdk`)}/mod.ts`;
  await Deno.writeTextFile(
    `${dir}/mod.ts`,
    (await Deno.readTextFile(`${PROBE}/mod.ts`)).replace("../../../../core/sdk/mod.ts", sdk),
  );
  return dir;
};

/** Names that look like, contain or lead to a granted collection, and are none of them. */
const FORGED_WRITES: unknown[] = [
  "Leads",
  "LEADS",
  "leads ",
  " leads",
  "leads\u0000",
  "leads\u200b",
  "\uff4ceads", // fullwidth "l"
  "le\u0430ds", // Cyrillic "а"
  "leads/../invoices",
  "../invoices",
  "./leads",
  "leads/",
  "public.leads",
  "leads;invoices",
  "",
  ["leads"],
  { "0": "leads" },
  null,
  42,
];
const FORGED_READS: unknown[] = ["Contacts", "CONTACTS", "\uff43ontacts", "contacts/../invoices", "contacts\u0000", [
  "contacts",
]];

Deno.test("ctx.records refuses, on the host, any collection or access the agent's manifest does not declare: audited, journaled, nothing read or written", async () => {
  await withKeel(async (k) => {
    // Installed with the CLI, which shows the collections before it asks.
    const cli = await runCli(["plugin", "install", PROBE, "--yes"], { url: k.url });
    assert.equal(cli.code, 0, cli.stderr);
    assert.match(cli.stdout, /It reads records in: contacts\n/);
    assert.match(cli.stdout, /It writes records in: leads\n/);

    const allowed: Call[] = [
      { op: "get", collection: "contacts", id: "ada" },
      { op: "query", collection: "contacts" },
      { op: "put", collection: "leads", id: "l1", data: { name: "Lead" } },
    ];
    const refused: Call[] = [
      { op: "put", collection: "contacts", id: "ada", data: { name: "Mallory" } }, // declares read, writes
      { op: "get", collection: "leads", id: "l1" }, // declares write, reads
      { op: "query", collection: "leads" },
      { op: "get", collection: "invoices", id: "inv1" }, // never declared
      { op: "query", collection: "invoices" },
      { op: "put", collection: "invoices", id: "inv2", data: { amount: 1 } },
      { op: "delete", collection: "contacts", id: "ada" }, // a delete is a write
      { op: "delete", collection: "invoices", id: "inv1" },
      { op: "delete", collection: "Leads", id: "l1" },
      ...FORGED_WRITES.map((collection): Call => ({ op: "put", collection, id: "forged", data: { x: 1 } })),
      ...FORGED_READS.map((collection): Call => ({ op: "get", collection, id: "ada" })),
    ];
    const view = await probe(k, [...allowed, ...refused]);
    const out = view.output;

    assert.deepEqual(out[0].ok?.data, { name: "Ada" }, JSON.stringify(out[0]));
    assert.deepEqual(out[1].ok?.records.map((r: { id: string }) => r.id), ["ada"]);
    assert.equal(out[2].ok?.created, true, JSON.stringify(out[2]));
    const denials = out.slice(allowed.length);
    for (const [i, answer] of denials.entries()) {
      assert.equal(
        answer.error?.tag,
        "PermissionDeniedError",
        `${JSON.stringify(refused[i])}: ${JSON.stringify(answer)}`,
      );
      assert.doesNotMatch(answer.error!.message, /\n\s+at /, "a clear message, not a stack trace");
    }
    assert.equal(
      denials[0].error!.message,
      'Agent "records_probe" may not write records in collection "contacts": its manifest does not list it in "records.write" (declare it there and upgrade; the operator grants the new version)',
    );
    assert.match(denials[1].error!.message, /may not read records in collection "leads": .*"records\.read"/);
    assert.match(denials[3].error!.message, /may not read records in collection "invoices"/);

    // Nothing refused was written: Ada is still Ada, invoices holds only the operator's, leads only l1.
    const ada = await k.api("GET", "/api/collections/contacts/records/ada");
    assert.deepEqual([ada.body.record.data, ada.body.record.provenance.source], [{ name: "Ada" }, "operator"]);
    assert.deepEqual(await counts(k), { contacts: 1, invoices: 1, leads: 1 });

    // Each refusal is the step's recorded failure, so a replay answers it the same way.
    const failed = view.steps.filter((s) => s.status === "failed");
    assert.equal(failed.length, refused.length);
    assert.ok(failed.every((s) => s.kind === "memory" && s.error.tag === "PermissionDeniedError"));
    const replay = await k.api("POST", `/api/runs/${view.runId}/replay`, {});
    assert.equal(replay.status, 200, JSON.stringify(replay.body));
    assert.deepEqual(replay.body.divergences, []);
    assert.equal(replay.body.output.equal, true);

    // And each is audited, with what was asked and what the manifest declares.
    const events = (await k.api("GET", `/api/audit?runId=${view.runId}`)).body.events
      .filter((e: { type: string }) => e.type === "records.denied");
    assert.equal(events.length, refused.length);
    assert.ok(events.every((e: { actor: string }) => e.actor === "plugin:records_probe"));
    assert.deepEqual(events[0].data, {
      plugin: "records_probe",
      version: "1.0.0",
      workflow: "records_probe",
      seq: allowed.length + 1,
      op: "records.put",
      access: "write",
      collection: '"contacts"',
      declared: ["leads"],
    });
    const shownNames = events.map((e: { data: { collection: string } }) => e.data.collection);
    assert.ok(shownNames.includes('"leads\\u0000"') && shownNames.includes('["leads"]'), shownNames.join(" "));
  });
});

Deno.test("a manifest without records gets no records access; an upgrade adding a collection, or write to one it reads, waits for a grant", async () => {
  await withKeel(async (k) => {
    const legacy = await probeVersion("1.0.0", undefined);
    const installed = await k.api("POST", "/api/plugins", { path: legacy, grant: {} });
    assert.equal(installed.status, 201, JSON.stringify(installed.body));
    const getAda: Call = { op: "get", collection: "contacts", id: "ada" };
    const putAda: Call = { op: "put", collection: "contacts", id: "ada", data: { name: "Mallory" } };

    const [before] = (await probe(k, [getAda])).output;
    assert.equal(before.error?.tag, "PermissionDeniedError");
    assert.match(
      before.error!.message,
      /may not read records in collection "contacts": its manifest declares no "records"/,
    );

    // 1.1.0 reads contacts: the preview shows it, and the upgrade waits for a grant.
    const reads = await probeVersion("1.1.0", { read: ["contacts"] });
    const preview = await k.api("POST", "/api/plugins/preview", { path: reads });
    assert.equal(preview.status, 200, JSON.stringify(preview.body));
    assert.deepEqual(preview.body.manifest.records, { read: ["contacts"], write: [] });
    const up = await k.api("POST", "/api/plugins/records_probe/upgrade", { path: reads });
    assert.equal(up.status, 201, JSON.stringify(up.body));
    assert.equal(up.body.plugin.activation, "needs_grant");
    assert.equal(up.body.diff.escalates, true);
    assert.deepEqual(up.body.diff.records.added, { read: ["contacts"], write: [] });
    assert.deepEqual(up.body.diff.lines, ["asks to read records in collection contacts (new)"]);
    const held = (await k.api("GET", "/api/audit?limit=1000")).body.events.filter((e: { type: string }) =>
      e.type === "plugin.upgrade_held"
    );
    assert.deepEqual(held.at(-1).data.recordsAdded, { read: ["contacts"], write: [] });

    // Until the operator grants it, 1.0.0 serves, and still reads nothing.
    const waiting = await probe(k, [getAda]);
    assert.equal(waiting.pluginVersion, "1.0.0");
    assert.equal(waiting.output[0].error?.tag, "PermissionDeniedError");

    const granted = await k.api("POST", "/api/plugins/records_probe/versions/1.1.0/grant", { grant: {} });
    assert.equal(granted.status, 200, JSON.stringify(granted.body));
    const reading = await probe(k, [getAda, putAda]);
    assert.equal(reading.pluginVersion, "1.1.0");
    assert.deepEqual(reading.output[0].ok?.data, { name: "Ada" });
    assert.equal(reading.output[1].error?.tag, "PermissionDeniedError", "read does not imply write");

    // 1.2.0 also writes contacts: more power, so it waits too, and 1.1.0 still may not write.
    const writes = await probeVersion("1.2.0", { read: ["contacts"], write: ["contacts"] });
    const up2 = await k.api("POST", "/api/plugins/records_probe/upgrade", { path: writes });
    assert.equal(up2.body.plugin.activation, "needs_grant", JSON.stringify(up2.body));
    assert.deepEqual(up2.body.diff.lines, ["asks to write records in collection contacts (new)"]);
    assert.equal((await probe(k, [putAda])).output[0].error?.tag, "PermissionDeniedError");

    // Dropping a collection asks for nothing more: 1.3.0 is active at once, and has lost the read.
    const none = await probeVersion("1.3.0", {});
    const up3 = await k.api("POST", "/api/plugins/records_probe/upgrade", { path: none });
    assert.equal(up3.body.plugin.activation, "active", JSON.stringify(up3.body));
    assert.deepEqual(up3.body.diff.lines, ["no longer reads records in collection contacts"]);
    const dropped = await probe(k, [getAda]);
    assert.equal(dropped.pluginVersion, "1.3.0");
    assert.equal(dropped.output[0].error?.tag, "PermissionDeniedError");

    const ada = await k.api("GET", "/api/collections/contacts/records/ada");
    assert.deepEqual(ada.body.record.data, { name: "Ada" });
    for (const dir of [legacy, reads, writes, none]) await Deno.remove(dir, { recursive: true });
  });
});

Deno.test("ctx.records.delete removes a record it may write: journaled, replayed exactly, a tombstone in its history, and undoing the run puts it back", async () => {
  await withKeel(async (k) => {
    const installed = await k.api("POST", "/api/plugins", { path: PROBE, grant: {} });
    assert.equal(installed.status, 201, JSON.stringify(installed.body));
    const put = await k.api("PUT", "/api/collections/leads/records/l1", { data: { name: "Lead" } });
    assert.equal(put.status, 200, JSON.stringify(put.body));

    const view = await probe(k, [
      { op: "delete", collection: "leads", id: "l1" },
      { op: "delete", collection: "leads", id: "l1" },
      { op: "delete", collection: "leads", id: "nobody" },
      { op: "put", collection: "leads", id: "l1", data: { name: "Lead again" } },
      { op: "delete", collection: "leads", id: "l1" },
    ]);
    assert.deepEqual(view.output.map((a) => a.ok ?? a.error), [
      { deleted: true, version: 2 },
      { deleted: false },
      { deleted: false },
      view.output[3].ok,
      { deleted: true, version: 4 },
    ]);
    assert.deepEqual([view.output[3].ok.created, view.output[3].ok.record.version], [true, 3]);
    assert.deepEqual(
      view.steps.map((s) => `${s.kind} ${s.name} ${s.status}`),
      [
        "memory records.delete done",
        "memory records.delete done",
        "memory records.delete done",
        "memory records.put done",
        "memory records.delete done",
      ],
    );
    assert.equal((await k.api("GET", "/api/collections/leads/records/l1")).status, 404);
    assert.deepEqual(await counts(k), { contacts: 1, invoices: 1, leads: 0 });
    const replay = await k.api("POST", `/api/runs/${view.runId}/replay`, {});
    assert.deepEqual([replay.body.divergences, replay.body.output.equal], [[], true]);

    // The same call (run and step) made again after a crash gets the same answer; another run or step does not.
    const again = await k.keel.runtime.runPromise(
      Records.use((r) =>
        r.delete("leads", "l1", {
          runId: view.runId,
          seq: 5,
          plugin: "records_probe",
          source: "workflow:records_probe",
        })
      ),
    );
    assert.deepEqual(again, { deleted: true, version: 4 });
    for (const provenance of [{ runId: "run_other", seq: 5 }, { runId: view.runId, seq: 6 }]) {
      const other = await k.keel.runtime.runPromise(
        Records.use((r) => r.delete("leads", "l1", { ...provenance, source: "workflow:records_probe" })),
      );
      assert.deepEqual(other, { deleted: false }, JSON.stringify(provenance));
    }

    // Undo takes back every version the run wrote, its deletes too: the operator's record is back as it was.
    const undone = await k.api("POST", `/api/runs/${view.runId}/undo`, {});
    assert.equal(undone.status, 200, JSON.stringify(undone.body));
    assert.deepEqual(undone.body.memory.records.restored, [{ collection: "leads", id: "l1", version: 1 }]);
    const back = await k.api("GET", "/api/collections/leads/records/l1");
    assert.equal(back.status, 200, JSON.stringify(back.body));
    assert.deepEqual([back.body.record.data, back.body.record.version, back.body.record.provenance.source], [
      { name: "Lead" },
      1,
      "operator",
    ]);

    // The operator deletes over HTTP; a second delete is a 404.
    const del = await k.api("DELETE", "/api/collections/leads/records/l1");
    assert.equal(del.status, 200, JSON.stringify(del.body));
    assert.deepEqual(del.body, { deleted: true, version: 2 });
    const gone = await k.api("DELETE", "/api/collections/leads/records/l1");
    assert.equal(gone.status, 404);
    assert.match(gone.body.error.message, /No record "l1" in collection "leads"/);
    assert.equal((await k.api("DELETE", "/api/collections/nope/records/l1")).status, 404);
  });
});

Deno.test("the operator's collection and record changes over HTTP are audited, with names, versions and hashes, never the data", async () => {
  await withKeel(async (k) => {
    const secret = "card 4111-1111-1111-1111";
    const schema = { type: "object", properties: { note: { type: "string" } } };
    assert.equal((await k.api("PUT", "/api/collections/notes", { schema })).status, 200);
    // The same schema again changes nothing, and audits nothing.
    assert.equal((await k.api("PUT", "/api/collections/notes", { schema })).status, 200);
    const put = await k.api("PUT", "/api/collections/notes/records/n1", { data: { note: secret } });
    assert.equal(put.status, 200, JSON.stringify(put.body));
    // Written again unchanged: no new version, nothing audited.
    assert.equal((await k.api("PUT", "/api/collections/notes/records/n1", { data: { note: secret } })).status, 200);
    assert.equal((await k.api("DELETE", "/api/collections/notes/records/n1")).status, 200);
    const events = ((await k.api("GET", "/api/audit")).body.events as any[])
      .filter((e) => ["collection.defined", "record.written", "record.deleted"].includes(e.type))
      .filter((e) => e.data.collection === "notes");
    assert.deepEqual(events.map((e) => [e.type, e.actor, e.data.collection, e.data.id, e.data.version]), [
      ["collection.defined", "operator", "notes", undefined, undefined],
      ["record.written", "operator", "notes", "n1", 1],
      ["record.deleted", "operator", "notes", "n1", 2],
    ]);
    assert.equal(events[1].data.contentHash, put.body.record.provenance.contentHash);
    assert.ok(!JSON.stringify(events).includes("4111"), "the audit log never holds a record's data");
    assert.equal((await k.api("GET", "/api/audit/verify")).body.ok, true);
  });
});
