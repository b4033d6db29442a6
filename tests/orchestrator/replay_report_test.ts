/**
 * @module
 * `keel replay RUN` against a real Keel: replaying a finished run with the
 * code that recorded it finds no divergence; a new agent version that
 * renames a step or changes an effect's arguments is reported naming the
 * step; replay performs nothing (the witness peer sees no new call) and
 * writes nothing to the run's journal; an unfinished run is a 409, an
 * unknown one a 404; the CLI exits 0 or 1 accordingly.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, TEST_TOKEN, type TestKeel } from "../_support/keel.ts";
import { startWitness } from "../gateway/_ledger.ts";
import { cliRunner } from "../_support/cli.ts";

const FIXTURES = `${ROOT}/tests/fixtures/replay_v2`;
const cli = await cliRunner("keel-replay-cli-");

const journalOf = async (k: TestKeel, runId: string) => {
  const { body } = await k.api("GET", `/api/runs/${runId}`);
  const { recalls: _r, ...run } = body;
  return run;
};

/** The ledger connector, granted to reach the witness, and version 1.0.0 of the replay test agent. */
const installLedgerAndAgent = async (k: TestKeel, witness: { host: string; port: number }) => {
  const ledger = await k.api("POST", "/api/plugins", {
    path: `${ROOT}/tests/gateway/fixtures/ledger`,
    grant: { net: [`${witness.host}:${witness.port}`] },
    config: { host: witness.host, port: witness.port },
  });
  assert.equal(ledger.status, 201, JSON.stringify(ledger.body));
  assert.equal((await k.api("POST", "/api/plugins", { path: `${FIXTURES}/agent_v1`, grant: {} })).status, 201);
};

Deno.test("replay reports no divergence for the code that recorded the run, and names the step a new version changes", async () => {
  const witness = await startWitness();
  const k = await startTestKeel();
  try {
    await installLedgerAndAgent(k, witness);
    const run = await k.api("POST", "/api/workflows/rp_flow/runs?wait=30", { input: { account: "acme" } });
    assert.equal(run.body.status, "succeeded", JSON.stringify(run.body));
    assert.equal(witness.calls.length, 1);
    const runId = run.body.runId;
    const recorded = await journalOf(k, runId);

    const same = await k.api("POST", `/api/runs/${runId}/replay`, {});
    assert.equal(same.status, 200, JSON.stringify(same.body));
    assert.deepEqual(same.body.divergences, []);
    assert.equal(same.body.agentVersion, "1.0.0");
    assert.equal(same.body.steps, 3);
    assert.equal(same.body.output.equal, true);
    assert.deepEqual(same.body.output.replayed, { status: "succeeded", output: run.body.output });
    const ok = await cli.keel(["replay", runId], { KEEL_URL: k.url, KEEL_TOKEN: TEST_TOKEN });
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, /No divergence/);

    // 1.1.0 renames the first step.
    const v2 = await k.api("POST", "/api/plugins/rp_agent/upgrade", { path: `${FIXTURES}/agent_v2` });
    assert.equal(v2.status, 201, JSON.stringify(v2.body));
    const renamed = await k.api("POST", `/api/runs/${runId}/replay`, {});
    assert.equal(renamed.status, 200, JSON.stringify(renamed.body));
    assert.equal(renamed.body.agentVersion, "1.1.0");
    assert.equal(renamed.body.recordedVersion, "1.0.0");
    assert.equal(renamed.body.divergences.length, 1, JSON.stringify(renamed.body));
    const [d] = renamed.body.divergences;
    assert.equal(d.seq, 1);
    assert.deepEqual(d.expected, { kind: "step", name: "plan" });
    assert.deepEqual(d.actual, { kind: "step", name: "prepare" });
    assert.match(d.message, /step 1: recorded step "plan", code asked for step "prepare"/);
    const bad = await cli.keel(["replay", runId], { KEEL_URL: k.url, KEEL_TOKEN: TEST_TOKEN });
    assert.equal(bad.code, 1, bad.stdout + bad.stderr);
    assert.match(bad.stdout, /step 1: .*"plan".*"prepare"/);
    assert.match(bad.stdout, /- recorded: \{"kind":"step","name":"plan"\}/);
    assert.match(bad.stdout, /\+ replayed: \{"kind":"step","name":"prepare"\}/);

    // The old version still replays clean when asked for.
    const pinned = await k.api("POST", `/api/runs/${runId}/replay`, { version: "1.0.0" });
    assert.deepEqual(pinned.body.divergences, []);
    assert.equal(pinned.body.agentVersion, "1.0.0");

    // 1.2.0 keeps the steps but asks the effect with other arguments.
    assert.equal((await k.api("POST", "/api/plugins/rp_agent/upgrade", { path: `${FIXTURES}/agent_v3` })).status, 201);
    const changed = await k.api("POST", `/api/runs/${runId}/replay`, {});
    assert.equal(changed.body.agentVersion, "1.2.0");
    assert.equal(changed.body.divergences.length, 1, JSON.stringify(changed.body));
    const [e] = changed.body.divergences;
    assert.equal(e.seq, 2);
    assert.match(e.message, /effect "ledger\.read" is asked with different arguments/);
    assert.deepEqual(e.expected.args, { account: "acme" });
    assert.deepEqual(e.actual.args, { account: "ACME" });

    assert.equal(witness.calls.length, 1, "no replay reached the outside world");
    assert.deepEqual(await journalOf(k, runId), recorded, "no replay wrote to the run or its journal");
    const replayed = ((await k.api("GET", `/api/audit?runId=${runId}`)).body.events as any[])
      .filter((ev) => ev.type === "run.replayed");
    assert.equal(replayed.length, 6, "each replay (four by API, two by CLI) is audited");
  } finally {
    await k.close();
    await witness.close();
  }
});

Deno.test("replay refuses an unfinished run (409), an unknown run or version (404)", async () => {
  const k = await startTestKeel();
  try {
    for (const base of ["echo", "agent"]) {
      const res = await k.api("POST", "/api/plugins", { path: `${ROOT}/tests/fixtures/lifecycle/${base}`, grant: {} });
      assert.equal(res.status, 201, JSON.stringify(res.body));
    }
    const waiting = await k.api("POST", "/api/workflows/lc_flow/runs?wait=30", { input: { to: "ada" } });
    assert.equal(waiting.body.status, "waiting_approval", JSON.stringify(waiting.body));
    const busy = await k.api("POST", `/api/runs/${waiting.body.runId}/replay`, {});
    assert.equal(busy.status, 409);
    assert.match(busy.body.error.message, /is waiting_approval; only a finished run can be replayed/);
    const unknown = await k.api("POST", "/api/runs/run_nothing/replay", {});
    assert.equal(unknown.status, 404);

    const done = await k.api("POST", "/api/workflows/lc_echo/runs?wait=30", { input: { value: "v" } });
    assert.equal(done.body.status, "succeeded");
    const noVersion = await k.api("POST", `/api/runs/${done.body.runId}/replay`, { version: "9.9.9" });
    assert.equal(noVersion.status, 404);
    assert.equal((await k.api("POST", `/api/runs/${done.body.runId}/replay`, { version: 5 })).status, 400);
    assert.deepEqual((await k.api("POST", `/api/runs/${done.body.runId}/replay`, {})).body.divergences, []);
  } finally {
    await k.close();
  }
});

Deno.test("replay of a run cancelled before its first step finds no divergence: its journal just ends there", async () => {
  const witness = await startWitness();
  const k = await startTestKeel();
  try {
    await installLedgerAndAgent(k, witness);
    const queued = await k.api("POST", "/api/workflows/rp_flow/runs?delay=3600", { input: { account: "acme" } });
    assert.equal(queued.body.status, "queued", JSON.stringify(queued.body));
    const runId = queued.body.runId;
    assert.equal((await k.api("POST", `/api/runs/${runId}/cancel`, {})).body.status, "cancelled");
    const replayed = await k.api("POST", `/api/runs/${runId}/replay`, {});
    assert.equal(replayed.status, 200, JSON.stringify(replayed.body));
    assert.deepEqual(replayed.body.divergences, [], JSON.stringify(replayed.body));
    const cli = await cliReplay(k, runId);
    assert.equal(cli.code, 0, cli.stdout + cli.stderr);
    assert.match(cli.stdout, /No divergence/);
    assert.equal(witness.calls.length, 0, "replay performed an effect");
  } finally {
    await k.close();
    await witness.close();
  }
});

const cliReplay = (k: TestKeel, runId: string) =>
  cli.keel(["replay", runId], { KEEL_URL: k.url, KEEL_TOKEN: TEST_TOKEN });
