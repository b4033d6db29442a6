/**
 * @module
 * Cron schedules against a real Keel and real Deno KV: a bad expression is
 * refused at install naming the field; a schedule every second starts one
 * run per slot with the slot's idempotent id; removing the plugin stops it;
 * after downtime only the most recent missed slot runs; a restart between
 * starting a run and recording the fire does not start that slot twice.
 */
import assert from "node:assert/strict";
import { Cron, Effect } from "effect";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { validateManifest } from "../../core/manifest/mod.ts";

const TICK = `${ROOT}/tests/fixtures/triggers/tr_tick`;
const DAILY = `${ROOT}/tests/fixtures/triggers/tr_daily`;

const manifest = (schedule: unknown) => ({
  name: "sched",
  version: "1.0.0",
  kind: "agent",
  description: "x",
  workflows: [{
    name: "flow",
    description: "x",
    input: { type: "object", required: ["n"], properties: { n: { type: "integer" } } },
    schedule,
  }],
});

const manifestError = async (schedule: unknown) => {
  const error = await Effect.runPromise(Effect.flip(validateManifest(manifest(schedule), "plugin.json")));
  assert.equal(error._tag, "ManifestError");
  return error.message;
};

Deno.test("validateManifest() refuses a bad cron expression, time zone or input, naming the field", async () => {
  assert.match(
    await manifestError({ cron: "61 * * * *" }),
    /field "workflows\.0\.schedule\.cron" is not a valid cron/,
  );
  assert.match(await manifestError({ cron: "* * *" }), /workflows\.0\.schedule\.cron/);
  assert.match(
    await manifestError({ cron: "0 9 * * 1", tz: "Mars/Olympus", input: { n: 1 } }),
    /field "workflows\.0\.schedule\.tz" is not a valid time zone: "Mars\/Olympus"/,
  );
  // Parses, but no month has a 31 February (or a 31 April): the scheduler could never compute its next fire.
  for (const cron of ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4 *"]) {
    assert.match(
      await manifestError({ cron, input: { n: 1 } }),
      /field "workflows\.0\.schedule\.cron" never matches a date/,
    );
  }
  const leap = await Effect.runPromise(
    validateManifest(manifest({ cron: "0 0 29 2 *", input: { n: 1 } }), "plugin.json"),
  );
  assert.equal(leap.workflows[0].schedule?.cron, "0 0 29 2 *", "29 February comes every four years");
  assert.match(await manifestError({ cron: "0 9 * * 1", input: { n: "x" } }), /workflows\.0\.schedule\.input/);
  assert.match(await manifestError({ cron: "0 9 * * 1" }), /workflows\.0\.schedule\.input.*"n"/);
  assert.match(await manifestError({ cron: "0 9 * * 1", every: 5, input: { n: 1 } }), /schedule/);
  const ok = await Effect.runPromise(
    validateManifest(manifest({ cron: "0 9 * * 1", tz: "Europe/Berlin", input: { n: 1 } }), "plugin.json"),
  );
  assert.deepEqual(ok.workflows[0].schedule, { cron: "0 9 * * 1", tz: "Europe/Berlin", input: { n: 1 } });
});

Deno.test("installing a plugin with a bad schedule is a ManifestError naming the field", async () => {
  const k = await startTestKeel();
  const dir = await Deno.makeTempDir({ prefix: "keel-badcron-" });
  try {
    await Deno.writeTextFile(`${dir}/plugin.json`, JSON.stringify(manifest({ cron: "0 25 * * *", input: { n: 1 } })));
    await Deno.writeTextFile(`${dir}/mod.ts`, "");
    const res = await k.api("POST", "/api/plugins", { path: dir, grant: {} });
    assert.equal(res.status, 400);
    assert.equal(res.body.error.tag, "ManifestError");
    assert.match(res.body.error.message, /"workflows\.0\.schedule\.cron"/);
  } finally {
    await k.close();
    await Deno.remove(dir, { recursive: true });
  }
});

const fired = async (k: TestKeel) =>
  ((await k.api("GET", "/api/audit?limit=10000")).body.events as any[]).filter((e) => e.type === "schedule.fired");

/** Poll (without asserting on time) until `check` holds, or fail after `seconds`. */
const until = async <T>(what: string, seconds: number, check: () => Promise<T | undefined>): Promise<T> => {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
};

Deno.test("a schedule every second starts one run per slot, with the slot's idempotent id, until its plugin is removed", async () => {
  const k = await startTestKeel();
  try {
    assert.equal((await k.api("POST", "/api/plugins", { path: TICK, grant: {} })).status, 201);
    const events = await until("three fires", 20, async () => {
      const e = await fired(k);
      return e.length >= 3 ? e : undefined;
    });
    const slots = events.map((e) => Date.parse(e.data.slot));
    assert.equal(new Set(slots).size, slots.length, "each slot fires once");
    for (const [i, e] of events.entries()) {
      assert.equal(slots[i] % 1000, 0, "slots are whole seconds");
      assert.equal(e.runId, `cron_tr_tick_${slots[i]}`);
      assert.equal(e.actor, "schedule:tr_tick");
    }
    const run = await k.api("GET", `/api/runs/${events[0].runId}?wait=30`);
    assert.equal(run.body.status, "succeeded", JSON.stringify(run.body));
    assert.deepEqual(run.body.input, { source: "cron" });
    assert.deepEqual(run.body.trigger, { kind: "cron", id: "tr_tick" });

    const listed = await k.api("GET", "/api/schedules");
    assert.equal(listed.status, 200);
    const [s] = listed.body.schedules;
    assert.equal(s.workflow, "tr_tick");
    assert.equal(s.cron, "* * * * * *");
    assert.equal(s.tz, "UTC");
    assert.equal(s.plugin, "tr_tick");
    assert.ok(Date.parse(s.nextFireAt) > Date.parse(s.lastFireAt));
    assert.match(s.lastRunId, /^cron_tr_tick_\d+000$/);

    assert.equal((await k.api("DELETE", "/api/plugins/tr_tick?force=true")).status, 200);
    assert.deepEqual((await k.api("GET", "/api/schedules")).body.schedules, []);
    const after = (await fired(k)).length;
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal((await fired(k)).length, after, "a removed plugin's schedule does not fire");
  } finally {
    await k.close();
  }
});

/** Rewrite the scheduler's record of a schedule while Keel is stopped. */
const editRecord = async (dataDir: string, workflow: string, edit: (r: any) => any) => {
  const kv = await Deno.openKv(`${dataDir}/keel.kv`);
  try {
    const cur = await kv.get<any>(["schedule", workflow]);
    assert.ok(cur.value, `a record for ${workflow}`);
    await kv.set(["schedule", workflow], edit(cur.value));
  } finally {
    kv.close();
  }
};

Deno.test("after downtime only the most recent missed slot runs, and a restart before the fire is recorded starts nothing twice", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-catchup-" });
  const daily = Cron.parseUnsafe("0 3 * * *", "UTC");
  try {
    let k = await startTestKeel({ dataDir });
    try {
      assert.equal((await k.api("POST", "/api/plugins", { path: DAILY, grant: {} })).status, 201);
      const [s] = await until("the schedule", 10, async () => {
        const list = (await k.api("GET", "/api/schedules")).body.schedules;
        return list.length ? list : undefined;
      });
      assert.equal(s.lastFireAt, undefined, "a new schedule does not fire for slots before it was installed");
      assert.equal(s.nextFireAt, Cron.next(daily, new Date()).toISOString());
    } finally {
      await k.close();
    }
    // As if Keel had been down for four days since the last fire.
    const day = 24 * 3600_000;
    const lastFire = Cron.prev(daily, new Date(Date.now() - 4 * day)).getTime();
    await editRecord(dataDir, "tr_daily", (r) => ({ ...r, since: lastFire - day, lastFireMs: lastFire }));

    k = await startTestKeel({ dataDir });
    let runId: string;
    try {
      const events = await until("the catch-up", 15, async () => {
        const e = await fired(k);
        return e.length ? e : undefined;
      });
      const slot = Cron.prev(daily, new Date(Date.now() + 1)).getTime();
      assert.equal(events.length, 1, "four missed slots, one catch-up");
      runId = events[0].runId;
      assert.equal(runId, `cron_tr_daily_${slot}`);
      assert.ok(events[0].data.lateMs >= 0);
      const run = await k.api("GET", `/api/runs/${runId}?wait=30`);
      assert.equal(run.body.status, "succeeded", JSON.stringify(run.body));
      assert.deepEqual(run.body.output, { report: "daily" });
    } finally {
      await k.close();
    }
    // As if Keel had crashed after starting that run but before recording the fire.
    await editRecord(dataDir, "tr_daily", (r) => ({ ...r, lastFireMs: lastFire, lastRunId: undefined }));
    k = await startTestKeel({ dataDir });
    try {
      await until("the repeated fire", 15, async () => ((await fired(k)).length >= 2 ? true : undefined));
      const events = await fired(k);
      assert.equal(events.length, 2);
      assert.equal(events[1].runId, runId, "the same slot maps to the same run id");
      const starts = ((await k.api("GET", `/api/audit?runId=${runId}`)).body.events as any[])
        .filter((e) => e.type === "run.started");
      assert.equal(starts.length, 1, "the slot's run was started once");
      const [s] = (await k.api("GET", "/api/schedules")).body.schedules;
      assert.equal(s.lastRunId, runId);
    } finally {
      await k.close();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("a stored schedule that never fires (from before install refused it) is skipped: other schedules fire, the list answers", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "keel-feb31-" });
  try {
    let k = await startTestKeel({ dataDir });
    try {
      assert.equal((await k.api("POST", "/api/plugins", { path: DAILY, grant: {} })).status, 201);
    } finally {
      await k.close();
    }
    // As an older Keel, which checked only that the expression parses, would have stored it.
    const kv = await Deno.openKv(`${dataDir}/keel.kv`);
    try {
      for await (const e of kv.list<any>({ prefix: ["plugin", "tr_daily"] })) {
        e.value.manifest.workflows[0].schedule.cron = "0 0 31 2 *";
        await kv.set(e.key, e.value);
      }
    } finally {
      kv.close();
    }
    k = await startTestKeel({ dataDir });
    try {
      assert.equal((await k.api("POST", "/api/plugins", { path: TICK, grant: {} })).status, 201);
      await until("tr_tick fires twice", 10, async () => {
        const tick = (await fired(k)).filter((e) => e.data.workflow === "tr_tick");
        return tick.length >= 2 ? tick : undefined;
      });
      const listed = await k.api("GET", "/api/schedules");
      assert.equal(listed.status, 200, JSON.stringify(listed.body));
      assert.deepEqual(listed.body.schedules.map((s: any) => s.workflow), ["tr_tick"]);
    } finally {
      await k.close();
    }
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});
