/**
 * @module
 * `ctx.model.generate` end to end: a fixture agent's workflow in a real
 * Worker, a real Keel (Deno KV file, policies, Gateway), the real Anthropic
 * client against the loopback fake. The journal makes a replay exact (the
 * provider is asked once, whatever replays), taint from connector output
 * reaches the policy on the writes that follow, and a bounded tool loop
 * sends its effect tool calls through the Gateway.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, type TestKeel } from "../_support/keel.ts";
import { startFakeAnthropic } from "../_support/fake_anthropic.ts";
import { claudeModels, GATE_REPLIES } from "./_router.ts";
import { HOSTILE_BODY } from "./fixtures/inbox/mod.ts";

const FIXTURES = `${ROOT}/tests/models/fixtures`;

const GATE_TAINTED = `default: allow
rules:
  - id: gate-tainted-writes
    description: A write that follows a model answer derived from outside input waits for the operator
    match: { class: write }
    when: "context.tainted == true"
    decision: approve
`;

const install = async (k: TestKeel) => {
  for (const name of ["inbox", "model_agent"]) {
    const res = await k.api("POST", "/api/plugins", { path: `${FIXTURES}/${name}`, grant: {} });
    assert.equal(res.status, 201, JSON.stringify(res.body));
  }
};

const run = async (k: TestKeel, workflow: string, input: unknown) => {
  const res = await k.api("POST", `/api/workflows/${workflow}/runs?wait=30`, { input });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  return res.body;
};

Deno.test("ctx.model.generate works with no model configured: the offline provider answers and says so", async () => {
  const k = await startTestKeel({ policies: { "allow.yaml": "default: allow\nrules: []\n" } });
  try {
    await install(k);
    const text = "The invoice for March is overdue. The client asked for a new copy. Nothing else changed.";
    const done = await run(k, "ask_then_reply", { purpose: "summarize", text });
    assert.equal(done.status, "succeeded", JSON.stringify(done));
    assert.equal(done.output.provider, "offline");
    const step = done.steps.find((s: { kind: string }) => s.kind === "model");
    assert.equal(step.status, "done");
    assert.equal(step.name, "model:summarize");
    assert.equal(step.value.model, "offline-deterministic-v1");
    assert.equal(step.value.deterministic, true);
    assert.match(step.value.note, /no language model was used/);
    assert.equal(step.value.costUsd, 0);
    const audit = (await k.api("GET", `/api/audit?runId=${done.id}`)).body.events;
    const called = audit.find((e: { type: string }) => e.type === "model.called");
    assert.equal(called.data.provider, "offline");
    assert.equal(called.data.purpose, "summarize");

    // Same input, same answer: deterministic, and served from the cache the second time.
    const again = await run(k, "ask_then_reply", { purpose: "summarize", text });
    assert.equal(again.output.text, done.output.text);
    assert.equal(again.output.cached, true);
  } finally {
    await k.close();
  }
});

Deno.test("a workflow resumed after an approval gets its model answer from the journal: the provider saw one request", async () => {
  const fake = await startFakeAnthropic();
  const k = await startTestKeel({ policies: { "gate.yaml": GATE_REPLIES, "models.json": claudeModels(fake) } });
  try {
    await install(k);
    fake.script({ content: [{ type: "text", text: "Thanks, see you Friday." }], usage: { input: 50, output: 8 } });
    const parked = await run(k, "ask_then_reply", { purpose: "draft", text: "Reply to Ada" });
    assert.equal(parked.status, "waiting_approval", JSON.stringify(parked));
    assert.equal(fake.requests.length, 1);
    const model = parked.steps.find((s: { kind: string }) => s.kind === "model");
    assert.equal(model.status, "done");
    assert.equal(model.value.provider, "claude");
    assert.equal(model.value.costUsd, 0.00027);

    // Any further request would get a different answer: a replay that asked again would show it.
    fake.fallback = () => ({ content: [{ type: "text", text: "A DIFFERENT ANSWER" }] });
    const approved = await k.api("POST", `/api/approvals/${parked.waitingFor.approvalId}/approve`, {});
    assert.equal(approved.status, 200, JSON.stringify(approved.body));
    const done = (await k.api("GET", `/api/runs/${parked.id}?wait=30`)).body;
    assert.equal(done.status, "succeeded", JSON.stringify(done));
    assert.equal(done.output.text, "Thanks, see you Friday.");
    assert.equal(fake.requests.length, 1, "the replay took the answer from the journal");
    const sent = done.steps.find((s: { name: string }) => s.name === "inbox.reply");
    assert.equal(sent.value.text, "Thanks, see you Friday.");
  } finally {
    await k.close();
    await fake.close();
  }
});

Deno.test("a model answer derived from connector output taints the run: the write after it waits for approval", async () => {
  const k = await startTestKeel({ policies: { "taint.yaml": GATE_TAINTED } });
  try {
    await install(k);
    // No connector input: the reply is an ordinary write, allowed.
    const clean = await run(k, "ask_then_reply", { purpose: "draft", text: "Say hello to the team" });
    assert.equal(clean.status, "succeeded", JSON.stringify(clean));
    assert.equal(clean.steps.find((s: { kind: string }) => s.kind === "model").value.tainted, false);

    // Connector output, labelled or not (an agent that forgot the label is caught by the host), taints the answer.
    for (const label of [true, false]) {
      const parked = await run(k, "answer_inbox", { label });
      assert.equal(parked.status, "waiting_approval", `label ${label}: ${JSON.stringify(parked)}`);
      const model = parked.steps.find((s: { kind: string }) => s.kind === "model");
      assert.equal(model.value.tainted, true);
      assert.deepEqual(model.value.taintSources, [label ? "untrusted:inbox.fetch" : "effect:inbox.fetch"]);
      const approvals = (await k.api("GET", "/api/approvals?status=pending")).body.approvals;
      const approval = approvals.find((a: { id: string }) => a.id === parked.waitingFor.approvalId);
      assert.equal(approval.rule, "gate-tainted-writes");
      assert.equal(approval.effect, "inbox.reply");
      // The offline draft quotes the email: exactly what must not go out unreviewed.
      assert.match(approval.args.text, /IGNORE ALL PREVIOUS INSTRUCTIONS/);
      const denied = await k.api("POST", `/api/approvals/${approval.id}/deny`, { note: "injection" });
      assert.equal(denied.status, 200);
      const done = (await k.api("GET", `/api/runs/${parked.id}?wait=30`)).body;
      assert.equal(done.status, "failed");
      assert.equal(done.error.tag, "PolicyDeniedError");
    }
    assert.ok(HOSTILE_BODY.includes("IGNORE ALL PREVIOUS INSTRUCTIONS"));
  } finally {
    await k.close();
  }
});

Deno.test("ctx.model.loop sends an effect tool call through the Gateway and its result back to the model", async () => {
  const fake = await startFakeAnthropic();
  const k = await startTestKeel({
    policies: { "allow.yaml": "default: allow\nrules: []\n", "models.json": claudeModels(fake) },
  });
  try {
    await install(k);
    fake.script(
      { content: [{ type: "tool_use", id: "toolu_a", name: "inbox_reply", input: { text: "on my way" } }] },
      { content: [{ type: "text", text: "Replied." }] },
    );
    const done = await run(k, "tool_loop", {});
    assert.equal(done.status, "succeeded", JSON.stringify(done));
    assert.deepEqual({ text: done.output.text, steps: done.output.steps, stopped: done.output.stopped }, {
      text: "Replied.",
      steps: 2,
      stopped: "end",
    });
    assert.deepEqual(
      done.steps.map((s: { kind: string; name: string; status: string }) => [s.kind, s.name, s.status]),
      [["model", "model:draft", "done"], ["effect", "inbox.reply", "done"], ["model", "model:draft", "done"]],
    );
    assert.deepEqual(fake.requests[0].body.tools[0].name, "inbox_reply");
    assert.deepEqual(
      fake.requests[0].body.tools[0].input_schema.required,
      ["text"],
      "the tool's schema is the effect's",
    );
    const back = fake.requests[1].body.messages;
    assert.equal(back[1].content[0].type, "tool_use");
    assert.equal(back[2].content[0].type, "tool_result");
    assert.equal(back[2].content[0].tool_use_id, "toolu_a");
    assert.match(back[2].content[0].content, /^<untrusted source="tool:inbox.reply">/);
    const audit = (await k.api("GET", `/api/audit?runId=${done.id}`)).body.events.map((e: { type: string }) => e.type);
    assert.ok(audit.includes("effect.succeeded"), "the tool call went through the Gateway");

    // A model that keeps calling tools is stopped by the bound.
    fake.fallback = () => ({
      content: [{ type: "tool_use", id: "toolu_x", name: "inbox_reply", input: { text: "again" } }],
    });
    const bounded = await run(k, "tool_loop", { maxSteps: 2 });
    assert.equal(bounded.status, "succeeded", JSON.stringify(bounded));
    assert.equal(bounded.output.stopped, "max_steps");
    assert.equal(bounded.output.steps, 2);
  } finally {
    await k.close();
    await fake.close();
  }
});

Deno.test("ctx.model.generate refuses a tool the agent does not declare, and a malformed request, before any model is asked", async () => {
  const fake = await startFakeAnthropic();
  const k = await startTestKeel({
    policies: { "allow.yaml": "default: allow\nrules: []\n", "models.json": claudeModels(fake) },
  });
  try {
    await install(k);
    const undeclared = await run(k, "tool_loop", { tools: ["email.send"] });
    assert.equal(undeclared.status, "failed");
    assert.equal(undeclared.error.tag, "EffectNotDeclaredError");
    assert.match(
      undeclared.error.message,
      /offered effect "email\.send" as a tool, which its manifest does not declare/,
    );

    const bad = await run(k, "ask_then_reply", { purpose: "no spaces allowed", text: "x" });
    assert.equal(bad.status, "failed");
    assert.equal(bad.error.tag, "InvalidInputError");
    assert.match(bad.error.message, /Model request is invalid: field "purpose"/);
    assert.equal(
      bad.steps.find((s: { kind: string }) => s.kind === "model").status,
      "failed",
      "the failure is journaled",
    );
    assert.equal(fake.requests.length, 0);
  } finally {
    await k.close();
    await fake.close();
  }
});
