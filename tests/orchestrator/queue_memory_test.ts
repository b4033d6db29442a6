/**
 * @module
 * Runs waiting in the queue do not keep their inputs in memory: the dispatcher keeps only what orders a run and
 * checks the limits, and reads the record back when it claims it. It used to keep whole records: 2,000 runs delayed
 * by a year with 46 KB inputs kept about 90 MiB of heap (10,000 took Keel's RSS from 125 to 933 MB).
 */
import assert from "node:assert/strict";
import { ROOT } from "../_support/keel.ts";

Deno.test("2,000 delayed runs with 46 KB inputs do not keep their inputs on the heap", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--v8-flags=--expose-gc", `${ROOT}/tests/orchestrator/_queue_memory_probe.ts`],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, `${stdout}${new TextDecoder().decode(out.stderr)}`);
  const { queued, grownMiB } = JSON.parse(stdout.trim().split("\n").at(-1)!);
  assert.equal(queued, 2000);
  // The inputs alone are 2,000 × 46 KB ≈ 88 MiB; what a queued run costs without its input is a few hundred bytes.
  assert.ok(grownMiB < 30, `the heap grew by ${grownMiB.toFixed(1)} MiB for 2,000 queued runs`);
});
