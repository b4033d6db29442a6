/**
 * @module
 * The journal makes model calls exact across crashes: Keel runs as a real
 * child process and is killed with SIGKILL, once while the model call is in
 * flight (the journal holds only its intent, so the restarted host asks
 * again, and records that answer) and once after the answer is journaled
 * (the restarted host replays the workflow and never asks the provider
 * again). The fake Anthropic server lives in the test process and counts
 * every request across the restarts.
 */
import assert from "node:assert/strict";
import { eventually, type KeelProcess, startKeelProcess } from "../_support/process.ts";
import { ROOT } from "../_support/keel.ts";
import { startFakeAnthropic } from "../_support/fake_anthropic.ts";
import { claudeModels, GATE_REPLIES, KEY_ENV } from "./_router.ts";

Deno.test("kill -9 during and after a model call: the provider answers once per completed call, and replay asks nothing", async () => {
  const fake = await startFakeAnthropic();
  const dataDir = await Deno.makeTempDir({ prefix: "keel-model-crash-" });
  const policiesDir = await Deno.makeTempDir({ prefix: "keel-model-crash-policies-" });
  await Deno.writeTextFile(`${policiesDir}/gate.yaml`, GATE_REPLIES);
  await Deno.writeTextFile(`${policiesDir}/models.json`, claudeModels(fake));
  const processes: KeelProcess[] = [];
  const start = async () => {
    const keel = await startKeelProcess({
      dataDir,
      env: { KEEL_POLICIES: policiesDir, [KEY_ENV]: "sk-ant-crash-test" },
    });
    processes.push(keel);
    return keel;
  };
  try {
    const first = await start();
    for (const name of ["inbox", "model_agent"]) {
      const res = await first.api("POST", "/api/plugins", { path: `${ROOT}/tests/models/fixtures/${name}`, grant: {} });
      assert.equal(res.status, 201, JSON.stringify(res.body));
    }
    // The provider takes the request and never answers: Keel dies with the call in flight.
    fake.script({ hang: true });
    const started = await first.api("POST", "/api/workflows/ask_then_reply/runs", {
      input: { purpose: "draft", text: "Reply to Grace" },
    });
    assert.equal(started.status, 202, JSON.stringify(started.body));
    const runId = started.body.runId as string;
    await eventually(
      () => Promise.resolve(fake.requests.length === 1 || undefined),
      () => "the model request never arrived",
    );
    const inFlight = (await first.api("GET", `/api/runs/${runId}`)).body;
    assert.equal(inFlight.steps[0].kind, "model");
    assert.equal(inFlight.steps[0].status, "intent", "the call is journaled as an intent before the provider answers");
    await first.kill();

    // Restarted, the run is recovered: the intent has no answer, so the model is asked again, once.
    fake.script({ content: [{ type: "text", text: "See you Friday, Grace." }], usage: { input: 40, output: 7 } });
    const second = await start();
    const parked = (await second.api("GET", `/api/runs/${runId}?wait=60`)).body;
    assert.equal(parked.status, "waiting_approval", JSON.stringify(parked));
    assert.equal(fake.requests.length, 2);
    const model = parked.steps.find((s: { kind: string }) => s.kind === "model");
    assert.equal(model.status, "done");
    assert.equal(model.value.text, "See you Friday, Grace.");
    await second.kill();

    // From here on any request would get another answer; none may come.
    fake.fallback = () => ({ content: [{ type: "text", text: "A DIFFERENT ANSWER" }] });
    const third = await start();
    const approved = await third.api("POST", `/api/approvals/${parked.waitingFor.approvalId}/approve`, {});
    assert.equal(approved.status, 200, JSON.stringify(approved.body));
    const done = (await third.api("GET", `/api/runs/${runId}?wait=60`)).body;
    assert.equal(done.status, "succeeded", JSON.stringify(done));
    assert.equal(done.output.text, "See you Friday, Grace.");
    assert.equal(
      done.steps.find((s: { name: string }) => s.name === "inbox.reply").value.text,
      "See you Friday, Grace.",
    );
    assert.equal(fake.requests.length, 2, "the replays after the answer was journaled never asked the provider");
    const events = (await third.api("GET", `/api/audit?runId=${runId}`)).body.events;
    assert.equal(events.filter((e: { type: string }) => e.type === "model.called").length, 1);
  } catch (error) {
    processes.forEach((p, i) => console.error(`--- Keel process ${i + 1} (pid ${p.pid}) ---\n${p.output()}`));
    throw error;
  } finally {
    for (const p of processes) await p.kill();
    await fake.close();
    await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    await Deno.remove(policiesDir, { recursive: true }).catch(() => {});
  }
});
