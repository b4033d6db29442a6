/**
 * A model or records call that FAILED in the first pass must replay as that failure (like an effect's recorded
 * failure, Gateway.ts `recordedFailure`), not be asked again: re-asking pays the provider twice and, when the
 * second attempt succeeds, makes a deterministic workflow diverge from its own journal.
 */
import { assert, ENDED, install, start, startTestKeel, until } from "./_ctx_edges.ts";
import { startFakeAnthropic } from "../_support/fake_anthropic.ts";
import { claudeModels } from "../models/_router.ts";

Deno.test("a failed model call is replayed from the journal, not sent to the provider again", async () => {
  const fake = await startFakeAnthropic();
  const k = await startTestKeel({
    policies: { "allow.yaml": "default: allow\nrules: []\n", "models.json": claudeModels(fake) },
  });
  try {
    await install(k);
    // The first request fails (400, not retried); any later one would succeed.
    fake.script({ status: 400, message: "bad request" }, {
      content: [{ type: "text", text: "hi" }],
      usage: { input: 5, output: 1 },
    });
    const run = await start(k, "model_fallback", {});
    const done = await until(k, run.id, ENDED);
    assert.equal(fake.requests.length, 1, "the provider was asked again on replay");
    assert.equal(done.status, "succeeded", JSON.stringify(done.error));
    assert.deepEqual(done.output, { used: "fallback" });
  } finally {
    await k.close();
    await fake.close();
  }
});

Deno.test("a failed records.put is replayed as failed: the replay does not write the record the first pass was refused", async () => {
  const k = await startTestKeel();
  try {
    await install(k);
    const run = await start(k, "records_fallback", { ms: 1000 });
    const parked = await until(k, run.id, ["sleeping", ...ENDED]);
    assert.equal(parked.status, "sleeping");
    // While the run sleeps, the operator defines the collection the first pass could not write to.
    const def = await k.api("PUT", "/api/collections/rev_leads", { schema: { type: "object" } });
    assert.ok(def.status < 300, JSON.stringify(def.body));
    const done = await until(k, run.id, ENDED);
    const stored = await k.api("GET", "/api/collections/rev_leads/records/lead-1");
    assert.equal(stored.status, 404, `the replay wrote a record: ${JSON.stringify(stored.body)}`);
    assert.equal(done.status, "succeeded", JSON.stringify(done.error));
    assert.deepEqual(done.output, { used: "not_stored" });
  } finally {
    await k.close();
  }
});
