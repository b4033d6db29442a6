/**
 * @module
 * Inbound webhooks against a real Keel: a hook's secret is shown once and
 * never listed; a signed delivery starts its workflow with the body as
 * input; every forged, replayed, oversized or misdirected delivery is
 * refused with its own status, starts nothing, and is audited without its
 * body. A captured delivery sent again starts nothing, and one sent later
 * than the timestamp's tolerance is refused.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { HOOK_TOLERANCE_SECONDS, signHook, signHookDelivery } from "../../core/triggers/mod.ts";

const AGENT = `${ROOT}/tests/fixtures/triggers/tr_hooks`;
const MARKER = "body-marker-7f3a";

/** POST a delivery to `/hooks/{id}` with no bearer token. */
const deliver = async (
  k: TestKeel,
  id: string,
  body: string | Uint8Array,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: any }> => {
  const res = await fetch(`${k.url}/hooks/${id}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: body as BodyInit,
  });
  return { status: res.status, body: await res.json() };
};

/** The headers of a delivery signed now: `X-Keel-Timestamp`, and the signature over timestamp and body. */
const signed = (secret: string, body: string, deliveryId?: string) =>
  signHookDelivery(secret, body, undefined, deliveryId);

const setUp = async () => {
  const k = await startTestKeel();
  const installed = await k.api("POST", "/api/plugins", { path: AGENT, grant: {} });
  assert.equal(installed.status, 201, JSON.stringify(installed.body));
  const a = await k.api("POST", "/api/hooks", { workflow: "tr_order", name: "shop orders" });
  assert.equal(a.status, 201, JSON.stringify(a.body));
  const b = await k.api("POST", "/api/hooks", { workflow: "tr_order" });
  assert.equal(b.status, 201);
  return { k, hook: a.body.hook, secret: a.body.secret as string, other: b.body };
};

const audit = async (k: TestKeel, type: string) =>
  ((await k.api("GET", "/api/audit?limit=10000")).body.events as any[]).filter((e) => e.type === type);

Deno.test("a webhook's secret is returned once and never listed; a signed delivery starts its workflow with the body as input", async () => {
  const { k, hook, secret } = await setUp();
  try {
    assert.match(hook.id, /^hk_[0-9a-f]{24}$/);
    assert.equal(hook.path, `/hooks/${hook.id}`);
    assert.match(secret, /^[0-9a-f]{64}$/);
    const listed = await k.api("GET", "/api/hooks");
    assert.equal(listed.status, 200);
    assert.equal(listed.body.hooks.length, 2);
    assert.ok(!JSON.stringify(listed.body).includes(secret), "the secret is never listed");
    assert.ok(listed.body.hooks.every((h: object) => !("secret" in h)));

    const body = JSON.stringify({ count: 3, note: MARKER });
    const res = await deliver(k, hook.id, body, await signed(secret, body));
    assert.equal(res.status, 202, JSON.stringify(res.body));
    assert.equal(res.body.duplicate, false);
    const run = await k.api("GET", `/api/runs/${res.body.runId}?wait=30`);
    assert.equal(run.body.status, "succeeded", JSON.stringify(run.body));
    assert.deepEqual(run.body.input, { count: 3, note: MARKER });
    assert.deepEqual(run.body.output, { accepted: 3, note: MARKER });
    assert.deepEqual(run.body.trigger, { kind: "webhook", id: hook.id });

    const delivered = await audit(k, "webhook.delivered");
    assert.equal(delivered.length, 1);
    assert.equal(delivered[0].data.hookId, hook.id);
    assert.equal(delivered[0].runId, res.body.runId);
    assert.ok(!JSON.stringify(delivered).includes(MARKER), "the audit event does not carry the body");

    // Managing hooks needs the token; delivering does not.
    const noToken = await fetch(`${k.url}/api/hooks`);
    assert.equal(noToken.status, 401);
    await noToken.body?.cancel();
  } finally {
    await k.close();
  }
});

Deno.test("a repeated delivery id maps to the same run and starts nothing new", async () => {
  const { k, hook, secret } = await setUp();
  try {
    const body = JSON.stringify({ count: 1 });
    const headers = await signed(secret, body, "evt_42");
    const first = await deliver(k, hook.id, body, headers);
    assert.equal(first.status, 202, JSON.stringify(first.body));
    assert.equal(first.body.runId, `hook_${hook.id}_evt_42`);
    const again = await Promise.all([deliver(k, hook.id, body, headers), deliver(k, hook.id, body, headers)]);
    for (const r of again) {
      assert.equal(r.status, 202, JSON.stringify(r.body));
      assert.equal(r.body.runId, first.body.runId);
      assert.equal(r.body.duplicate, true);
    }
    const started = (await audit(k, "run.started")).filter((e) => e.runId === first.body.runId);
    assert.equal(started.length, 1, "one run for one delivery id");
    const other = await deliver(k, hook.id, body, await signed(secret, body, "evt_43"));
    assert.equal(other.body.duplicate, false);
    assert.notEqual(other.body.runId, first.body.runId);
    const bad = await deliver(k, hook.id, body, await signed(secret, body, "../../x"));
    assert.equal(bad.status, 400);
  } finally {
    await k.close();
  }
});

Deno.test("forged deliveries are refused: wrong secret, another body's signature, another hook's secret, no or malformed header", async () => {
  const { k, hook, secret, other } = await setUp();
  try {
    const body = JSON.stringify({ count: 2 });
    const now = Math.floor(Date.now() / 1000);
    const ts = { "x-keel-timestamp": String(now) };
    const mac = await signHook(secret, `${now}.${body}`);
    const late = now - HOOK_TOLERANCE_SECONDS - 60;
    const cases: Array<[string, Record<string, string>, string]> = [
      ["wrong secret", await signed("0".repeat(64), body), "bad_signature"],
      [
        "signature of a different body",
        { ...ts, "x-keel-signature": (await signed(secret, "{}"))["x-keel-signature"] },
        "bad_signature",
      ],
      ["another hook's secret", await signed(other.secret, body), "bad_signature"],
      ["missing header", {}, "missing_signature"],
      ["bare hex without sha256=", { ...ts, "x-keel-signature": mac }, "bad_signature"],
      ["truncated signature", { ...ts, "x-keel-signature": `sha256=${mac.slice(0, 63)}` }, "bad_signature"],
      ["sha1 scheme", { ...ts, "x-keel-signature": `sha1=${mac}` }, "bad_signature"],
      // The timestamp is signed: moved after signing (to pass the tolerance), it no longer matches.
      [
        "timestamp changed after signing",
        { ...(await signed(secret, body)), "x-keel-timestamp": String(now + 1) },
        "bad_signature",
      ],
      // The delivery id is signed: a captured request dressed up as a new delivery does not verify.
      [
        "delivery id changed after signing",
        { ...(await signed(secret, body, "evt_1")), "x-keel-delivery": "evt_2" },
        "bad_signature",
      ],
      ["delivery id added to a request signed without one", {
        ...(await signed(secret, body)),
        "x-keel-delivery": "evt_3",
      }, "bad_signature"],
      ["delivery id taken off a request signed with one", {
        ...ts,
        "x-keel-signature": (await signed(secret, body, "evt_4"))["x-keel-signature"],
      }, "bad_signature"],
      [
        "body-only signature to a timestamped hook",
        { "x-keel-signature": `sha256=${await signHook(secret, body)}` },
        "missing_timestamp",
      ],
      ["timestamp not a number", { "x-keel-timestamp": "soon", "x-keel-signature": `sha256=${mac}` }, "bad_timestamp"],
      ["signed 6 minutes ago (a replay)", await signHookDelivery(secret, body, late), "stale_timestamp"],
      [
        "signed 6 minutes ahead",
        await signHookDelivery(secret, body, now + HOOK_TOLERANCE_SECONDS + 60),
        "stale_timestamp",
      ],
    ];
    for (const [what, headers, reason] of cases) {
      const res = await deliver(k, hook.id, body, headers);
      assert.equal(res.status, 401, `${what}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error.tag, "UnauthorizedError", what);
      const rejected = (await audit(k, "webhook.rejected")).at(-1);
      assert.equal(rejected.data.reason, reason, what);
      assert.equal(rejected.data.hookId, hook.id);
    }
    // A signature made for one hook does not open another.
    const forOther = await deliver(k, other.hook.id, body, await signed(secret, body));
    assert.equal(forOther.status, 401);
    assert.equal((await audit(k, "run.started")).length, 0, "no forged delivery started a run");
    assert.equal((await audit(k, "webhook.delivered")).length, 0);
  } finally {
    await k.close();
  }
});

Deno.test("unknown hooks, oversized bodies, bad input and removed workflows are refused and audited without the body", async () => {
  const { k, hook, secret } = await setUp();
  try {
    const body = JSON.stringify({ count: 1, note: MARKER });
    const unknown = await deliver(k, "hk_000000000000000000000000", body, await signed(secret, body));
    assert.equal(unknown.status, 404);
    const garbage = await deliver(k, "not-a-hook", body, await signed(secret, body));
    assert.equal(garbage.status, 404);

    const big = JSON.stringify({ count: 1, note: "x".repeat(300 * 1024) });
    const tooLarge = await deliver(k, hook.id, big, await signed(secret, big));
    assert.equal(tooLarge.status, 413, JSON.stringify(tooLarge.body));
    assert.equal(tooLarge.body.error.tag, "PayloadTooLargeError");
    // Over what a run's input may be (48 KiB): refused as it arrives, not when the run is recorded.
    const mid = JSON.stringify({ count: 1, note: "x".repeat(60 * 1024) });
    const overInput = await deliver(k, hook.id, mid, await signed(secret, mid));
    assert.equal(overInput.status, 413, JSON.stringify(overInput.body));
    // A body streamed without a length is cut off at the cap too.
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        for (let i = 0; i < 40; i++) c.enqueue(new Uint8Array(10 * 1024).fill(32));
        c.close();
      },
    });
    const streamed = await fetch(`${k.url}/hooks/${hook.id}`, {
      method: "POST",
      headers: await signed(secret, "x"),
      body: stream,
    });
    assert.equal(streamed.status, 413);
    await streamed.body?.cancel();

    const wrongType = JSON.stringify({ count: "three", note: MARKER });
    const invalid = await deliver(k, hook.id, wrongType, await signed(secret, wrongType));
    assert.equal(invalid.status, 400);
    assert.match(invalid.body.error.message, /"count"/);
    // The sender is told the value it sent; the audit log is not (a card number in the wrong field, say).
    const leaky = JSON.stringify({ count: -4111111111111111 });
    const refused = await deliver(k, hook.id, leaky, await signed(secret, leaky));
    assert.equal(refused.status, 400);
    assert.match(refused.body.error.message, /"count" -4111111111111111/);
    const notJson = "{count: 1";
    assert.equal((await deliver(k, hook.id, notJson, await signed(secret, notJson))).status, 400);
    const array = "[1,2]";
    assert.equal((await deliver(k, hook.id, array, await signed(secret, array))).status, 400);

    // The workflow goes away with its plugin: the hook stays, its deliveries are refused.
    assert.equal((await k.api("DELETE", "/api/plugins/tr_hooks")).status, 200);
    const orphan = await deliver(k, hook.id, body, await signed(secret, body));
    assert.equal(orphan.status, 404);
    assert.match(orphan.body.error.message, /tr_order/);
    // A deleted hook is unknown.
    assert.equal((await k.api("DELETE", `/api/hooks/${hook.id}`)).status, 200);
    assert.equal((await k.api("DELETE", `/api/hooks/${hook.id}`)).status, 404);
    assert.equal((await deliver(k, hook.id, body, await signed(secret, body))).status, 404);

    const rejected = await audit(k, "webhook.rejected");
    assert.deepEqual(
      rejected.map((e) => e.data.reason),
      [
        "unknown_hook",
        "unknown_hook",
        "too_large",
        "too_large",
        "too_large",
        "invalid_input",
        "invalid_input",
        "invalid_json",
        "invalid_json",
        "workflow_unavailable",
        "unknown_hook",
      ],
    );
    assert.equal(rejected[1].data.hookId, null, "a malformed id is not copied into the audit log");
    assert.ok(!JSON.stringify(rejected).includes(MARKER), "no rejected body reaches the audit log");
    assert.ok(!JSON.stringify(rejected).includes("4111111111111111"), "nor a value the schema refused");
    assert.deepEqual(rejected[6].data.fields, ["count"], "only which field was refused");
    assert.equal((await audit(k, "run.started")).length, 0);
  } finally {
    await k.close();
  }
});

Deno.test("a captured timestamped delivery sent again, without a delivery id, finds its run and starts nothing", async () => {
  const { k, hook, secret } = await setUp();
  try {
    assert.equal(hook.signing, "timestamped", "new hooks need timestamps");
    const body = JSON.stringify({ count: 5 });
    const headers = await signed(secret, body);
    const first = await deliver(k, hook.id, body, headers);
    assert.equal(first.status, 202, JSON.stringify(first.body));
    assert.equal(first.body.duplicate, false);
    const replays = await Promise.all([1, 2, 3].map(() => deliver(k, hook.id, body, headers)));
    for (const r of replays) {
      assert.equal(r.status, 202, JSON.stringify(r.body));
      assert.equal(r.body.runId, first.body.runId);
      assert.equal(r.body.duplicate, true);
    }
    // The same body signed at another second is another delivery.
    const later = await deliver(
      k,
      hook.id,
      body,
      await signHookDelivery(secret, body, Number(headers["x-keel-timestamp"]) + 1),
    );
    assert.equal(later.body.duplicate, false);
    const started = (await audit(k, "run.started")).map((e) => e.runId);
    assert.deepEqual(started.sort(), [first.body.runId, later.body.runId].sort());
    const delivered = await audit(k, "webhook.delivered");
    assert.equal(delivered[0].data.timestamp, Number(headers["x-keel-timestamp"]));
  } finally {
    await k.close();
  }
});

Deno.test("a body-only hook takes a signature over the body alone, and a timestamped one too", async () => {
  const { k } = await setUp();
  try {
    const made = await k.api("POST", "/api/hooks", { workflow: "tr_order", signing: "body" });
    assert.equal(made.status, 201, JSON.stringify(made.body));
    assert.equal(made.body.hook.signing, "body");
    const { hook, secret } = made.body;
    const body = JSON.stringify({ count: 1 });
    const plain = await deliver(k, hook.id, body, { "x-keel-signature": `sha256=${await signHook(secret, body)}` });
    assert.equal(plain.status, 202, JSON.stringify(plain.body));
    // Without a timestamp or delivery id nothing tells a replay from a new delivery: that is what "body" gives up.
    const again = await deliver(k, hook.id, body, { "x-keel-signature": `sha256=${await signHook(secret, body)}` });
    assert.equal(again.body.duplicate, false);
    // A timestamp the sender adds is still checked.
    const stamped = await deliver(k, hook.id, body, await signed(secret, body));
    assert.equal(stamped.status, 202);
    const stale = await deliver(k, hook.id, body, await signHookDelivery(secret, body, 1_000_000_000));
    assert.equal(stale.status, 401);
    assert.match(stale.body.error.message, /Webhook timestamp is \d+ s old; Keel takes deliveries within 300 s/);
    const bad = await k.api("POST", "/api/hooks", { workflow: "tr_order", signing: "none" });
    assert.equal(bad.status, 400);
    assert.match(bad.body.error.message, /Field "signing" must be "timestamped" or "body": got "none"/);
  } finally {
    await k.close();
  }
});

Deno.test("a hook recorded before timestamps existed keeps taking body-only signatures, and is listed as body", async () => {
  const { k, hook, secret } = await setUp();
  try {
    // As an older Keel wrote it: no "signing" field.
    const kv = await Deno.openKv(`${k.dataDir}/keel.kv`);
    try {
      const { signing: _s, ...old } = (await kv.get<Record<string, unknown>>(["hook", hook.id])).value!;
      await kv.set(["hook", hook.id], old);
    } finally {
      kv.close();
    }
    const listed = (await k.api("GET", "/api/hooks")).body.hooks.find((h: any) => h.id === hook.id);
    assert.equal(listed.signing, "body");
    const body = JSON.stringify({ count: 1 });
    const res = await deliver(k, hook.id, body, { "x-keel-signature": `sha256=${await signHook(secret, body)}` });
    assert.equal(res.status, 202, JSON.stringify(res.body));
  } finally {
    await k.close();
  }
});

Deno.test("a hook needs an installed workflow and a JSON body naming it", async () => {
  const k = await startTestKeel();
  try {
    const missing = await k.api("POST", "/api/hooks", { workflow: "no_such_flow" });
    assert.equal(missing.status, 404);
    assert.equal((await k.api("POST", "/api/hooks", {})).status, 400);
    assert.equal((await k.api("POST", "/api/hooks", { workflow: "x", name: 5 })).status, 400);
  } finally {
    await k.close();
  }
});

Deno.test("junk deliveries cannot fill the audit log: at most 10 a minute per hook and reason are audited", async () => {
  const { k, hook, other } = await setUp();
  try {
    const body = JSON.stringify({ orderId: "o-1" });
    // 300 deliveries to hooks that do not exist (no token, no secret needed), 20 at a time.
    let sent = 0;
    const junk = async () => {
      while (sent < 300) {
        sent++;
        const id = `hk_${crypto.randomUUID().replaceAll("-", "").slice(0, 24)}`;
        assert.equal((await deliver(k, id, body)).status, 404);
      }
    };
    await Promise.all(Array.from({ length: 20 }, junk));
    // And 30 badly signed ones to each of two real hooks: each hook has its own allowance.
    for (const id of [hook.id, other.hook.id]) {
      for (let i = 0; i < 30; i++) {
        const reply = await deliver(k, id, body, {
          "x-keel-timestamp": String(Math.floor(Date.now() / 1000)),
          "x-keel-signature": `sha256=${"0".repeat(64)}`,
        });
        assert.equal(reply.status, 401);
      }
    }
    const rejected = await audit(k, "webhook.rejected");
    const count = (reason: string, hookId: string | null) =>
      rejected.filter((e) => e.data.reason === reason && (hookId === null || e.data.hookId === hookId)).length;
    assert.equal(count("unknown_hook", null), 10, "unknown hooks: 10 a minute");
    assert.equal(count("bad_signature", hook.id), 10);
    assert.equal(count("bad_signature", other.hook.id), 10);
    assert.equal(rejected.length, 30);
  } finally {
    await k.close();
  }
});

Deno.test("junk to unknown hooks cannot silence the audit of a real hook's too-large delivery", async () => {
  const { k, hook } = await setUp();
  try {
    const big = "x".repeat(64 * 1024);
    // An outsider: 10 oversized deliveries to hook ids that do not exist use up the unknown hooks' allowance.
    for (let i = 0; i < 10; i++) assert.equal((await deliver(k, `hk_${"0".repeat(23)}${i}`, big)).status, 413);
    // The real hook's own oversized delivery is still audited.
    assert.equal((await deliver(k, hook.id, big)).status, 413);
    const mine = (await audit(k, "webhook.rejected")).filter((e) => e.data.hookId === hook.id);
    assert.deepEqual(mine.map((e) => e.data.reason), ["too_large"]);
  } finally {
    await k.close();
  }
});
