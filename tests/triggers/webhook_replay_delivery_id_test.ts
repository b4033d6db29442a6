/**
 * @module
 * A captured timestamped delivery cannot be turned into a new one by changing
 * or adding the unsigned `X-Keel-Delivery` header: the signature is the same
 * request, so it finds the run it started.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { signHookDelivery } from "../../core/triggers/mod.ts";

const AGENT = `${ROOT}/tests/fixtures/triggers/tr_hooks`;

const deliver = async (k: TestKeel, id: string, body: string, headers: Record<string, string>) => {
  const res = await fetch(`${k.url}/hooks/${id}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body,
  });
  return { status: res.status, body: await res.json() };
};

Deno.test("a captured timestamped delivery sent again with another or no delivery id starts nothing new", async () => {
  const k = await startTestKeel();
  try {
    assert.equal((await k.api("POST", "/api/plugins", { path: AGENT, grant: {} })).status, 201);
    const made = await k.api("POST", "/api/hooks", { workflow: "tr_order" });
    assert.equal(made.status, 201);
    const { hook, secret } = made.body;
    assert.equal(hook.signing, "timestamped");
    const body = JSON.stringify({ count: 7 });
    const headers = await signHookDelivery(secret, body);

    // Sent by the sender without a delivery id; an attacker replays it with ids of its own.
    const first = await deliver(k, hook.id, body, headers);
    assert.equal(first.status, 202, JSON.stringify(first.body));
    for (const id of ["evil-1", "evil-2"]) {
      const replay = await deliver(k, hook.id, body, { ...headers, "x-keel-delivery": id });
      assert.equal(replay.status, 202, JSON.stringify(replay.body));
      assert.equal(replay.body.runId, first.body.runId, `replay with delivery id ${id} started another run`);
      assert.equal(replay.body.duplicate, true);
    }

    // Sent by the sender with a delivery id; an attacker replays it without one, or with another.
    const body2 = JSON.stringify({ count: 8 });
    const headers2 = { ...(await signHookDelivery(secret, body2)), "x-keel-delivery": "d-1" };
    const second = await deliver(k, hook.id, body2, headers2);
    assert.equal(second.status, 202, JSON.stringify(second.body));
    const { "x-keel-delivery": _, ...bare } = headers2;
    for (const h of [bare, { ...bare, "x-keel-delivery": "d-2" }]) {
      const replay = await deliver(k, hook.id, body2, h);
      assert.equal(replay.status, 202, JSON.stringify(replay.body));
      assert.equal(replay.body.runId, second.body.runId, "a replay with its delivery id changed started another run");
    }
    const runs = await k.api("GET", "/api/runs?limit=100");
    assert.equal(runs.body.runs.length, 2, JSON.stringify(runs.body.runs.map((r: any) => r.id)));
  } finally {
    await k.close();
  }
});
