/**
 * @module
 * A forced removal cancels the runs pinned to what it removed, with the removal as the reason. They used to stay
 * waiting, and then resume on whatever was installed later: other code under the same name and version, or another
 * connector that provides the same effect.
 */
import assert from "node:assert/strict";
import { startTestKeel, type TestKeel } from "../_support/keel.ts";
import { variant } from "../fixtures/lifecycle/variant.ts";

const POLICIES = {
  "p.yaml": "default: allow\nrules:\n  - id: gate-send\n    match:\n      effect: lc.send\n    decision: approve\n",
};
const ok = (r: { status: number; body: any }, status = 201) => {
  assert.equal(r.status, status, JSON.stringify(r.body));
  return r.body;
};
const install = (k: TestKeel, path: string) => k.api("POST", "/api/plugins", { path, grant: {} });

/** A run of `lc_flow` parked on its gated `lc.send`, then `removal` forced; what later installs find. */
const forced = async (removal: string, later: () => Promise<string>) => {
  const k = await startTestKeel({ policies: POLICIES });
  try {
    ok(await install(k, await variant("echo", { version: "1.0.0" })));
    ok(await install(k, await variant("agent", { version: "1.0.0" })));
    const run = (await k.api("POST", "/api/workflows/lc_flow/runs?wait=30", { input: { to: "ada" } })).body;
    assert.equal(run.status, "waiting_approval");
    const removed = ok(await k.api("DELETE", `${removal}?force=true`), 200);
    assert.deepEqual(removed.cancelledRuns, [run.runId]);
    const after = (await k.api("GET", `/api/runs/${run.runId}`)).body;
    assert.equal(after.status, "cancelled", JSON.stringify(after));
    assert.match(after.cancelled.reason, /was removed/);
    // Whatever comes later under that name, or with that effect, finds nothing to resume.
    ok(await install(k, await later()));
    assert.deepEqual((await k.api("GET", "/api/approvals?status=pending")).body.approvals, []);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal((await k.api("GET", `/api/runs/${run.runId}`)).body.status, "cancelled");
  } finally {
    await k.close();
  }
};

Deno.test("a forced removal of an agent cancels its waiting run; other code later under its name resumes nothing", () =>
  forced("/api/plugins/lc-agent", async () => {
    const other = await variant("agent", { version: "1.0.0" });
    await Deno.writeTextFile(`${other}/version.ts`, `export const VERSION = "OTHER CODE";\n`);
    return other;
  }));

Deno.test("a forced removal of a connector cancels the run pinned to it; another connector of its effect gets nothing", () =>
  forced("/api/plugins/lc-echo", async () => {
    const stranger = await variant("echo", { version: "3.0.0", manifest: (m) => ({ ...m, name: "lc-stranger" }) });
    await Deno.writeTextFile(`${stranger}/version.ts`, `export const VERSION = "STRANGER";\n`);
    return stranger;
  }));
