/**
 * @module
 * Test helpers for the workflow-context edge cases (`tests/fixtures/ctx_edges`): an in-process Keel with the fixture
 * installed, starting a run, and waiting for it to reach a status.
 */
import assert from "node:assert/strict";
import { ROOT, startTestKeel, type TestKeel, type TestKeelOptions } from "../_support/keel.ts";
import { Orchestrator, type StartOptions } from "../../core/orchestrator/mod.ts";

export { assert, ROOT, startTestKeel, type TestKeel };

export const install = async (k: TestKeel, path = "tests/fixtures/ctx_edges") => {
  const res = await k.api("POST", "/api/plugins", { path: `${ROOT}/${path}`, grant: {} });
  assert.equal(res.status, 201, JSON.stringify(res.body));
};
export const start = (k: TestKeel, workflow: string, input: unknown, options: StartOptions = {}) =>
  k.keel.runtime.runPromise(Orchestrator.use((o) => o.start(workflow, input, "test", options)));
export const get = async (k: TestKeel, runId: string) => (await k.api("GET", `/api/runs/${runId}`)).body;
export const until = async (k: TestKeel, runId: string, statuses: string[], seconds = 30) => {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const run = (await k.api("GET", `/api/runs/${runId}?wait=1`)).body;
    if (statuses.includes(run.status)) return run;
    if (Date.now() > deadline) {
      assert.fail(`run ${runId} is ${run.status}, not ${statuses.join("|")}: ${JSON.stringify(run).slice(0, 800)}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
};
export const ENDED = ["succeeded", "failed", "cancelled"];
export const withKeel = async (f: (k: TestKeel) => Promise<void>, options: TestKeelOptions = {}) => {
  const k = await startTestKeel(options);
  try {
    await install(k);
    await f(k);
  } finally {
    await k.close();
  }
};
